//! `iser-bench`: a bounded load generator on the initiator library, for
//! `scripts/bench-iser` (`run`: sequential or random I/O at a queue depth for a fixed
//! time over iSER or iSCSI/TCP, one JSON line of results) and for the end-to-end
//! tests (`read-sense`: one READ whose raw sense bytes are printed, to check the
//! sense format the CLI does not show).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use conf::protection::{PiCheck, ProtectionMode, ProtectionPolicy};
use initiator::block::SenseOrigin;
use initiator::{BlockDevice, Link, SessionConfig, TransportChoice};
use serde_json::json;

/// Large command buffers come and go per command; mimalloc keeps them mapped
/// instead of returning them to the kernel (page faults, TLB shootdowns) each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator and sense probe on the iser-initiator library.
#[derive(Debug, Parser)]
#[command(name = "iser-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one workload for a fixed time; print one JSON line.
    Run(RunArgs),
    /// One READ; print status, raw sense bytes (hex) and who produced them.
    ReadSense(SenseArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Iser,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Off,
    Insert,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    SeqWrite,
    SeqRead,
    RandRead,
}

#[derive(Debug, Args)]
struct Conn {
    /// TargetName.
    #[arg(long)]
    target: String,
    /// iSCSI/TCP portal, ip:port.
    #[arg(long)]
    portal: SocketAddr,
    /// iSER portal on the soft fabric: ip:port or unix:/path.
    #[arg(long)]
    fabric: String,
    /// Transport.
    #[arg(long, value_enum)]
    transport: Transport,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    lun: u16,
    /// Protection mode.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Checks (guard, ref, app) asked of the target and the HCA.
    #[arg(long, value_delimiter = ',', default_value = "guard,ref")]
    checks: Vec<String>,
    /// Application tag to generate and expect.
    #[arg(long, default_value_t = 0)]
    app_tag: u16,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    c: Conn,
    /// Workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Bytes per command.
    #[arg(long, default_value_t = 131_072)]
    io_size: u32,
    /// Commands in flight.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

#[derive(Debug, Args)]
struct SenseArgs {
    #[command(flatten)]
    c: Conn,
    /// First block.
    #[arg(long)]
    lba: u64,
    /// Blocks.
    #[arg(long)]
    blocks: u32,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iser-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::ReadSense(a) => read_sense(a).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iser-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn open(c: &Conn) -> anyhow::Result<BlockDevice> {
    let mut cfg = SessionConfig::new(
        "iqn.2026-11.io.iser-pi:bench-host",
        Some(c.target.clone()),
        c.portal,
    );
    cfg.nop_interval = Duration::ZERO;
    cfg.command_timeout = Duration::from_secs(30);
    let fabric: verbs::cm::CmAddr = c
        .fabric
        .parse()
        .map_err(|e| anyhow::anyhow!("--fabric: {e}"))?;
    let choice = match c.transport {
        Transport::Iser => TransportChoice::Iser,
        Transport::Tcp => TransportChoice::Tcp,
    };
    let link = Link::connect(cfg, Some(fabric), choice)
        .await
        .context("connecting")?;
    let mut checks = Vec::new();
    for s in &c.checks {
        checks.push(match s.as_str() {
            "guard" => PiCheck::Guard,
            "ref" => PiCheck::Ref,
            "app" => PiCheck::App,
            other => bail!("unknown check {other:?} (guard, ref, app)"),
        });
    }
    let policy = ProtectionPolicy {
        mode: match c.mode {
            Mode::Off => ProtectionMode::Off,
            Mode::Insert => ProtectionMode::Insert,
            Mode::Pass => ProtectionMode::Pass,
        },
        checks,
        app_tag: c.app_tag,
        ..ProtectionPolicy::default()
    };
    match BlockDevice::open(link.clone(), c.lun, policy).await {
        Ok(d) => Ok(d),
        Err(e) => {
            let _ = link.logout().await;
            Err(e).context("opening the LUN")
        }
    }
}

/// A small xorshift generator per worker (no shared state on the hot path).
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let dev = open(&a.c).await?;
    let bs = dev.info().block_size;
    if a.io_size == 0 || !a.io_size.is_multiple_of(bs) {
        bail!(
            "--io-size {} is not a multiple of the block size {bs}",
            a.io_size
        );
    }
    let per_io = u64::from(a.io_size / bs);
    let slots = dev.info().blocks / per_io;
    if slots == 0 {
        bail!("the LUN is smaller than one I/O");
    }
    let seconds = a.seconds.clamp(0.1, 600.0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cursor = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let payload = Arc::new(tests::random_bytes(a.io_size as usize));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..a.qd.max(1) {
        let dev = dev.clone();
        let cursor = cursor.clone();
        let failed = failed.clone();
        let payload = payload.clone();
        let workload = a.workload;
        workers.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (u64::from(w) + 1).wrapping_mul(0xD1B5);
            let mut ops = 0u64;
            while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                let slot = match workload {
                    Workload::RandRead => next_random(&mut seed) % slots,
                    _ => cursor.fetch_add(1, Ordering::Relaxed) % slots,
                };
                let lba = slot * per_io;
                let out = match workload {
                    Workload::SeqWrite => dev.write(lba, &payload, None).await,
                    _ => dev.read(lba, per_io as u32).await,
                };
                match out {
                    Ok(o) if o.is_good() => ops += 1,
                    Ok(o) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(anyhow::anyhow!(
                            "LBA {lba}: status {:?}, sense {:?}",
                            o.status,
                            o.sense
                        ));
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(anyhow::anyhow!("LBA {lba}: {e}"));
                    }
                }
            }
            Ok(ops)
        }));
    }
    let mut ops = 0u64;
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(n)) => ops += n,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("worker: {e}"));
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let transport = dev.session().transport_name();
    let _ = dev.session().logout().await;
    if let Some(e) = first_error {
        return Err(e);
    }
    let bytes = ops * u64::from(a.io_size);
    println!(
        "{}",
        json!({
            "transport": transport,
            "workload": format!("{:?}", a.workload),
            "mode": format!("{:?}", a.c.mode).to_lowercase(),
            "io_size": a.io_size, "qd": a.qd, "ops": ops, "bytes": bytes,
            "seconds": elapsed,
            "iops": ops as f64 / elapsed,
            "mb_s": bytes as f64 / elapsed / 1e6,
        })
    );
    Ok(())
}

async fn read_sense(a: SenseArgs) -> anyhow::Result<()> {
    let dev = open(&a.c).await?;
    let out = dev.read(a.lba, a.blocks).await;
    let _ = dev.session().logout().await;
    let out = out.context("READ")?;
    let hex: String = out.sense_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let origin = out.origin.map(|o| match o {
        SenseOrigin::Target => "target",
        SenseOrigin::Initiator => "initiator",
    });
    println!(
        "{}",
        json!({"status": out.status.0, "sense_hex": hex, "origin": origin, "bytes": out.data.len()})
    );
    Ok(())
}
