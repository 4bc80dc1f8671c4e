//! The `ai-api` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: request handling is many small, short-lived allocations across threads, where it
/// is markedly faster than the system allocator (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ai_api::cli::Cli::parse();
    ai_api::telemetry::init();
    ai_api::cli::run(cli).await
}
