//! The command line (`ai-api [--config PATH] [--host H] [--port P] [--grpc-port G]` and
//! `ai-api check --config PATH`), the contract's defaults, and startup: load the config, report
//! its warnings once, bind, serve until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::config::{self, Loaded};
use crate::server::{ServeOptions, serve};

/// The config used when none is named and `config/config.yaml` does not exist.
pub const EMBEDDED_DEMO: &str = include_str!("../config/demo.yaml");
/// The default config path.
pub const DEFAULT_CONFIG: &str = "config/config.yaml";
/// How long in-flight requests may finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "ai-api",
    version,
    about = "A self-hosted AI gateway: gRPC and the OpenAI REST API in front of OpenAI, Anthropic, Gemini and OpenAI-compatible providers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// LiteLLM-format config file [default: config/config.yaml, else the embedded demo config].
    #[arg(long, env = "AI_API_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "AI_API_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// HTTP (OpenAI REST) port.
    #[arg(long, env = "PORT", default_value_t = 10200)]
    pub port: u16,
    /// gRPC port.
    #[arg(long, env = "GRPC_PORT", default_value_t = 10201)]
    pub grpc_port: u16,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config file: a one-line summary and exit 0, or every problem and exit 1.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Runs the command line; the exit code is the process's.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        None => run_server(cli).await,
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load_file(path) {
        Ok(Loaded { config, warnings }) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let providers: Vec<&str> = config.providers().iter().map(|p| p.name()).collect();
            println!(
                "{}: ok: {} models ({} deployments), providers: {}",
                path.display(),
                config.model_names().len(),
                config.deployments.len(),
                if providers.is_empty() {
                    "none".to_string()
                } else {
                    providers.join(", ")
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Loaded, config::ConfigError> {
    match &cli.config {
        Some(path) => config::load_file(path),
        None if Path::new(DEFAULT_CONFIG).exists() => config::load_file(Path::new(DEFAULT_CONFIG)),
        None => {
            tracing::warn!(
                "no --config given and {DEFAULT_CONFIG} does not exist: serving the embedded demo config (mock models, no provider key needed)"
            );
            config::load_str(EMBEDDED_DEMO, "embedded config/demo.yaml", &|k| {
                std::env::var(k).ok()
            })
        }
    }
}

async fn run_server(cli: Cli) -> ExitCode {
    let shutdown = shutdown_signal();
    let loaded = match load(&cli) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let config = loaded.config;
    if config.master_key.is_none() {
        tracing::warn!(
            "no general_settings.master_key: every route is open to anyone who can reach it"
        );
    }
    let root_path = std::env::var("SERVER_ROOT_PATH")
        .ok()
        .or_else(|| config.server_root_path.clone())
        .unwrap_or_else(|| config::DEFAULT_ROOT_PATH.to_string());
    let bind = |port: u16| {
        let host = cli.host.clone();
        async move {
            let addr: SocketAddr = format!("{host}:{port}")
                .parse()
                .or_else(|_| format!("[{host}]:{port}").parse())
                .map_err(|e| format!("bad listen address {host}:{port}: {e}"))?;
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        }
    };
    let (http, grpc) = match (bind(cli.port).await, bind(cli.grpc_port).await) {
        (Ok(h), Ok(g)) => (h, g),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        http = %format!("{}:{}", cli.host, cli.port),
        grpc = %format!("{}:{}", cli.host, cli.grpc_port),
        root_path = %crate::http::normalize_root(&root_path),
        models = config.model_names().len(),
        "ai-api listening"
    );
    let mut opts = ServeOptions::new(root_path, SHUTDOWN_GRACE);
    opts.database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| config.database_url.clone());
    if let Ok(dir) = std::env::var("AI_API_DATA_DIR")
        && !dir.trim().is_empty()
    {
        opts.data_dir = dir.into();
    }
    match serve(&config, http, grpc, opts, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called (not
/// when first polled), so a signal that arrives during startup is not lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
