//! `oauth-refresh-proxy`: the sidecar's command line (SPEC 4.1).

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use oauth_refresh_proxy::proxy::config::Config;
use oauth_refresh_proxy::proxy::sidecar::{Sidecar, DRAIN_TIMEOUT};
use oauth_refresh_proxy::proxy::walkthrough;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "oauth-refresh-proxy",
    version,
    about = "Keeps Google and GitHub API calls authenticated: injects OAuth tokens, refreshes them ahead of expiry, replays once after a 401."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Proxy listener address (overrides `listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listener address (overrides `admin_listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a configuration, print a summary, exit 0 (valid) or 1.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the embedded demo: in-process fakes, the real proxy, a scripted scenario.
    Demo {
        /// Keep the demo running and print curl commands to try.
        #[arg(long)]
        serve: bool,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
}

/// Logs to stderr at `default` (or `RUST_LOG`). redis-rs's own records are kept to errors by
/// default: the store reports connection trouble itself, once, in its own words (redis-rs
/// logs one line per cluster node and attempt).
fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},redis=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    // One line, no backtrace.
    let msg = msg.to_string().replace('\n', " ");
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => match oauth_refresh_proxy::proxy::sidecar::refresher(&cfg).map(|_| ()) {
                Ok(()) => {
                    println!("{}", cfg.summary());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{}: {e}", config.display())),
            },
            Err(e) => fail(e),
        },
        Command::Serve {
            config,
            listen,
            admin_listen,
            log_format,
        } => {
            let mut cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(a) = admin_listen {
                cfg.admin_listen = Some(a);
            }
            if let Err(e) = cfg.validate(&config.display().to_string()) {
                return fail(e);
            }
            init_logs(log_format, "info");
            runtime.block_on(serve(cfg, &config.display().to_string()))
        }
        Command::Demo { serve, log_format } => {
            init_logs(log_format, "error");
            runtime.block_on(async {
                match walkthrough::run(serve, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                }
            })
        }
    }
}

async fn serve(cfg: Config, source: &str) -> ExitCode {
    let sidecar = match Sidecar::new(&cfg).await {
        Ok(s) => s,
        Err(e) => return fail(format!("{source}: {e}")),
    };
    let (proxy, admin) = match Sidecar::bind(&cfg).await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    // Stable lines on stdout for scripts and tests (ports may be 0 in the config).
    if let Ok(addr) = proxy.local_addr() {
        println!("proxy listening on http://{addr}");
    }
    if let Some(Ok(addr)) = admin.as_ref().map(|a| a.local_addr()) {
        println!("admin listening on http://{addr}");
    }
    tracing::info!(
        routes = cfg.routes.len(),
        accounts = cfg.accounts.len(),
        "serving"
    );
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = tx.send(true);
    });
    sidecar.run(proxy, admin, rx, DRAIN_TIMEOUT).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
