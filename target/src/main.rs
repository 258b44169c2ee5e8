//! `iser-target`: serves the configured targets' LUNs over iSCSI/TCP, and reports the
//! running daemon's sessions and counters (`iser-target status`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use target::control;
use target::daemon::{Daemon, Termination};

/// Large command buffers come and go per command; mimalloc keeps them mapped
/// instead of returning them to the kernel (page faults, TLB shootdowns) each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// iSCSI target with end-to-end T10 protection information.
#[derive(Debug, Parser)]
#[command(name = "iser-target", version)]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded default: one 64 MiB RAM LUN
    /// with Type 1 PI on 127.0.0.1:3260.
    #[arg(long, short, env = "ISER_TARGET_CONFIG")]
    config: Option<PathBuf>,

    /// Validate the configuration, print the effective configuration (secrets masked)
    /// and exit; exits with 78 when the configuration is invalid.
    #[arg(long)]
    check_config: bool,

    /// UNIX socket where the daemon answers `iser-target status`.
    #[arg(long, env = "ISER_TARGET_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the running daemon's sessions, LUNs and counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config {
        return conf::cli::check_config(cli.config.as_deref(), conf::Kind::Target);
    }
    if let Some(Command::Status { json }) = cli.command {
        return match control::query_status(&cli.control_socket) {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", report.to_text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "iser-target status: {e}\n(is the daemon running with --control-socket {}?)",
                    cli.control_socket.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    match serve(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iser-target: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> anyhow::Result<conf::target::TargetConfig> {
    match &cli.config {
        Some(path) => conf::target::TargetConfig::load(path).map_err(|e| {
            anyhow::anyhow!("{e}").context(format!(
                "invalid configuration {}; run `iser-target --check-config --config {}` to list every problem",
                path.display(),
                path.display()
            ))
        }),
        None => Ok(conf::target::TargetConfig::embedded_default()),
    }
}

fn serve(cli: &Cli) -> anyhow::Result<()> {
    let cfg = load(cli)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.log.level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let workers = cfg.effective_worker_threads().max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads((workers * 2).max(4))
        .thread_name("iser-target")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    runtime.block_on(async {
        let stop = Termination::install().context("cannot install the SIGINT/SIGTERM handlers")?;
        let daemon = Daemon::bind(&cfg, Some(cli.control_socket.clone())).await?;
        // Tests and scripts read this line to learn the bound portals.
        for p in &daemon.portals {
            println!("listening {p}");
        }
        daemon.run(stop.wait()).await
    })
}
