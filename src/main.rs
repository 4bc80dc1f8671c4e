//! The `ai-api` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc (without transparent huge pages; see Cargo.toml): malloc and free were ~15 % of a
/// request's instructions with glibc's allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ai_api::cli::Cli::parse();
    // Held to the end: dropping it writes the last log lines.
    let _log = ai_api::telemetry::init();
    ai_api::cli::run(cli).await
}
