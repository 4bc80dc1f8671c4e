//! The `ai-api` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ai_api::cli::Cli::parse();
    ai_api::telemetry::init();
    ai_api::cli::run(cli).await
}
