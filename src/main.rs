//! The `regmirror` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regmirror::config::Config;

/// A pull-through caching mirror for container registries.
#[derive(Parser)]
#[command(name = "regmirror", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mirror (Docker Hub on 0.0.0.0:5000, cache in ./data, when no config is given).
    Serve {
        /// Config file (see mirror.toml for every key and its default).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address; overrides `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Never contact any upstream: serve only what is cached (`[server] offline = true`).
        #[arg(long)]
        offline: bool,
    },
    /// Check a config file and print the effective settings.
    CheckConfig {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve {
            config,
            listen,
            offline,
        } => {
            let mut config = match load(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            config.server.offline |= offline;
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("regmirror: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(config))
        }
        Command::CheckConfig { config } => match load(Some(&config)) {
            Ok(config) => {
                println!("{config:#?}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    loaded.map_err(|e| {
        eprintln!("regmirror: {e}");
        ExitCode::from(2)
    })
}

async fn serve(config: Config) -> ExitCode {
    let server = match regmirror::start(&config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("regmirror: {e}");
            return ExitCode::FAILURE;
        }
    };
    let upstreams: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| {
            format!(
                "{}={}{}",
                u.name,
                u.url,
                if u.default { " (default)" } else { "" }
            )
        })
        .collect();
    tracing::info!(
        addr = %server.addr,
        storage = %config.storage.path.display(),
        upstreams = ?upstreams,
        offline = config.server.offline,
        "regmirror listening"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("REGMIRROR_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
