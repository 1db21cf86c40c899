//! `garrison-gateway`: every garrison layer in front of HTTP services you cannot change.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use garrison_gateway::{Gateway, GatewayConfig, DEFAULT_CONFIG};

/// A proxy allocates and frees a few small buffers per request on every worker thread:
/// mimalloc's per-thread free lists serve them without the system allocator's arenas.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rate limits, circuit breakers, RED metrics, traces and deep health in front of any HTTP
/// upstream, from one TOML file.
#[derive(Debug, Parser)]
#[command(name = "garrison-gateway", version)]
struct Cli {
    /// The configuration file (TOML). Without it: the embedded defaults, a demo upstream.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        env = "GARRISON_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Check the configuration (every problem, with its path) and exit: 0 valid, 2 not.
    #[arg(long)]
    check: bool,
    /// Print the embedded default configuration, every [gateway] key explained, and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log lines as JSON (with trace_id, span_id and request_id) or for people.
    #[arg(
        long,
        value_enum,
        default_value = "pretty",
        env = "GARRISON_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Files for operating the service behind the configuration.
    Ops {
        #[command(subcommand)]
        what: Ops,
    },
}

#[derive(Debug, Subcommand)]
enum Ops {
    /// Prometheus recording and alert rules (YAML) for the configuration's [ops] SLO targets
    /// and thresholds, its routes' own SLOs, its histogram buckets and its health routes.
    Rules {
        /// Write the rules to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    let config = match &cli.config {
        Some(path) => GatewayConfig::from_file(path),
        None => GatewayConfig::from_toml(DEFAULT_CONFIG),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Ops {
        what: Ops::Rules { out },
    }) = &cli.command
    {
        let rules = garrison::ops::rules(&config.garrison);
        return match out {
            None => {
                print!("{rules}");
                ExitCode::SUCCESS
            }
            Some(path) => match std::fs::write(path, rules) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            },
        };
    }
    if cli.check {
        let what = cli
            .config
            .as_ref()
            .map_or("the embedded defaults".to_owned(), |p| {
                p.display().to_string()
            });
        println!(
            "{what}: valid ({} upstreams, {} routes)",
            config.gateway.upstreams.len(),
            config.gateway.routes.len()
        );
        return ExitCode::SUCCESS;
    }
    logs(cli.log_format, config.garrison.trace.redaction());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.config, config))
}

/// The process's log lines; JSON ones redact what `[trace]` says (read at start: a reload
/// does not change it).
fn logs(format: LogFormat, redaction: garrison::garrison_trace::Redaction) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(garrison::garrison_trace::json_logs().redaction(redaction))
            .init(),
        LogFormat::Pretty => {
            use std::io::IsTerminal;
            let ansi = std::io::stdout().is_terminal();
            registry
                .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
                .init()
        }
    }
}

async fn run(path: Option<PathBuf>, config: GatewayConfig) -> ExitCode {
    // the system clock's counter is calibrated (up to 200 ms, once per process) before the
    // gateway listens, so that no connection waits on it
    let _ = garrison::garrison_core::SharedClock::system();
    let (main, admin) = match garrison_gateway::bind(&config.gateway).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = main.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(address = %addr, "garrison gateway listening on http://{addr}");
    let gateway = match path {
        Some(p) => Gateway::with_file(config, p).await,
        None => Gateway::new(config).await,
    };
    let gateway = match gateway {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(a) = admin.as_ref().and_then(|a| a.local_addr().ok()) {
        let chosen = !gateway.current().config().gateway.admin_token.is_empty()
            || std::env::var("GARRISON_ADMIN_TOKEN").is_ok_and(|t| !t.is_empty());
        if chosen {
            tracing::info!(address = %a, "admin API on http://{a}/admin");
        } else {
            // never in a log line: written once to a file only this user can read
            match write_token_file(&gateway.admin_token()) {
                Ok(path) => tracing::info!(
                    address = %a,
                    token_file = %path.display(),
                    "admin API on http://{a}/admin; its random bearer token is in token_file (set admin_token or GARRISON_ADMIN_TOKEN to choose one)"
                ),
                Err(e) => tracing::warn!(
                    address = %a,
                    error = %e,
                    "admin API on http://{a}/admin with a random token that could not be written to a file: set admin_token or GARRISON_ADMIN_TOKEN to use the API"
                ),
            }
        }
    }
    signals(gateway.clone());
    match gateway.serve(main, admin).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "the gateway failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reloads the file; SIGTERM and SIGINT start a graceful shutdown.
fn signals(gateway: Gateway) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("signal handlers could not be installed");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(e) = gateway.reload().await {
                        tracing::warn!(error = %e, "reload refused: the configuration in force stays");
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("shutting down: finishing the requests in flight");
        gateway.shutdown();
    });
}

/// Writes the admin token to a new file that only this user can read (mode 0600), in
/// `$XDG_RUNTIME_DIR` or the temporary directory; returns its path.
fn write_token_file(token: &str) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("garrison-gateway-{}.token", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    writeln!(f, "{token}")?;
    Ok(path)
}
