//! `iser-initiator`: the daemon (log into every configured session, keep it up, serve
//! the LUN exports, answer its control socket) and the scripting CLI (discover, login,
//! logout, sessions, read, write) on the same session core. Exit status: 0 GOOD,
//! 3 CHECK CONDITION, 4 another SCSI status, 1 any other failure, 2 usage, 78 invalid
//! configuration.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use conf::initiator::InitiatorConfig;
use conf::protection::{ProtectionMode, ProtectionPolicy};
use initiator::block::{report_luns, status_name, IoOutcome};
use initiator::iser::IserConfig;
use initiator::{BlockDevice, Error, Link, Session, SessionConfig, TransportChoice};
use serde_json::json;

/// Large command buffers come and go per command; mimalloc keeps them mapped
/// instead of returning them to the kernel (page faults, TLB shootdowns) each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// iSCSI/iSER initiator with end-to-end T10 protection information.
#[derive(Debug, Parser)]
#[command(name = "iser-initiator", version)]
struct Cli {
    /// Configuration file (default: the embedded loopback configuration).
    #[arg(long, short = 'c', global = true, env = "ISER_INITIATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (exit 0) or every error (exit 78), then exit.
    #[arg(long)]
    check_config: bool,
    /// The daemon's control socket (login --daemon, logout, sessions).
    #[arg(
        long,
        global = true,
        env = "ISER_INITIATOR_CONTROL_SOCKET",
        default_value = "/run/iser-initiator.sock"
    )]
    control_socket: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ask a portal for its targets (SendTargets=All over a discovery session).
    Discover(DiscoverArgs),
    /// Log in, report the session parameters and every LUN's capabilities, log out;
    /// with --daemon, ask the running daemon to log in and keep the session.
    Login(LoginArgs),
    /// Ask the running daemon to log a session out.
    Logout(LogoutArgs),
    /// List the running daemon's sessions.
    Sessions(SessionsArgs),
    /// Read blocks: data to stdout or --out, PI (pass/strip modes) to --pi.
    Read(ReadArgs),
    /// Write blocks: data from stdin or --in, PI (pass/strip modes) from --pi.
    Write(WriteArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Tcp,
    Iser,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Off,
    Insert,
    Pass,
    Strip,
}

#[derive(Debug, Args)]
struct DiscoverArgs {
    /// Portal to ask, ip:port.
    #[arg(long)]
    portal: SocketAddr,
    /// Our InitiatorName (default: the configuration's iqn).
    #[arg(long)]
    initiator: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// TargetName.
    #[arg(long)]
    target: String,
    /// The target's iSCSI/TCP portal, ip:port.
    #[arg(long)]
    portal: SocketAddr,
    /// Our InitiatorName (default: the configuration's iqn).
    #[arg(long)]
    initiator: Option<String>,
    /// Transport: tcp, iser or auto (iSER first, then TCP).
    #[arg(long, value_enum, default_value = "auto")]
    transport: Transport,
    /// The target's iSER portal on the soft fabric: ip:port or unix:/path (default: the
    /// configured session's iser_portal, else the portal's IP with port 3261).
    #[arg(long)]
    iser_portal: Option<String>,
    /// Protection mode (default: the configured session's policy; without one, insert
    /// on a LUN with PI and off on a LUN without).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Application tag to generate and expect.
    #[arg(long)]
    app_tag: Option<u16>,
    /// HeaderDigest=CRC32C.
    #[arg(long)]
    header_digest: bool,
    /// DataDigest=CRC32C.
    #[arg(long)]
    data_digest: bool,
    /// CHAP user name (the secret comes from --chap-secret-file).
    #[arg(long, requires = "chap_secret_file")]
    chap_user: Option<String>,
    /// File holding our CHAP secret.
    #[arg(long)]
    chap_secret_file: Option<PathBuf>,
    /// File holding the secret the target must answer with (mutual CHAP).
    #[arg(long, requires = "chap_user")]
    mutual_secret_file: Option<PathBuf>,
    /// Seconds before a command is aborted.
    #[arg(long, default_value_t = 30)]
    timeout: u32,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LoginArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// Ask the daemon (at --control-socket) to log in and keep the session up.
    #[arg(long)]
    daemon: bool,
}

#[derive(Debug, Args)]
struct LogoutArgs {
    /// TargetName of the session to log out.
    #[arg(long)]
    target: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SessionsArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReadArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    lun: u16,
    /// First logical block.
    #[arg(long)]
    lba: u64,
    /// Number of blocks.
    #[arg(long)]
    blocks: u64,
    /// Where to write the data (default stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to write the DIX PI (8 bytes per block) in pass and strip modes.
    #[arg(long)]
    pi: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WriteArgs {
    #[command(flatten)]
    t: TargetArgs,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    lun: u16,
    /// First logical block.
    #[arg(long)]
    lba: u64,
    /// Number of blocks (default: all of the input).
    #[arg(long)]
    blocks: Option<u64>,
    /// Data to write (default stdin).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// DIX PI to write (pass and strip modes; default: generated from the data).
    #[arg(long)]
    pi: Option<PathBuf>,
}

/// A failure of the CLI with its exit status.
struct Failure {
    code: u8,
    msg: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: 1,
            msg: e.to_string(),
        }
    }
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        msg: msg.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config {
        return conf::cli::check_config(cli.config.as_deref(), conf::Kind::Initiator);
    }
    let config = match &cli.config {
        Some(p) => match InitiatorConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(conf::cli::EXIT_CONFIG);
            }
        },
        None => InitiatorConfig::embedded_default(),
    };
    init_logging(&config, cli.cmd.is_none());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            None => initiator::daemon::run(config, Some(cli.control_socket.clone()))
                .await
                .map(|()| 0)
                .map_err(Failure::from),
            Some(Cmd::Discover(a)) => discover(&config, a).await,
            Some(Cmd::Login(a)) if a.daemon => daemon_login(&cli.control_socket, a.t).await,
            Some(Cmd::Login(a)) => login(&config, a.t).await,
            Some(Cmd::Logout(a)) => {
                let req = json!({"op": "logout", "target": a.target});
                control(&cli.control_socket, &req, a.json).await
            }
            Some(Cmd::Sessions(a)) => {
                control(&cli.control_socket, &json!({"op": "sessions"}), a.json).await
            }
            Some(Cmd::Read(a)) => read(&config, a).await,
            Some(Cmd::Write(a)) => write(&config, a).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("iser-initiator: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(config: &InitiatorConfig, daemon: bool) {
    let default = if daemon {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn initiator_name(config: &InitiatorConfig, arg: &Option<String>) -> String {
    arg.clone()
        .unwrap_or_else(|| config.iqn.as_str().to_owned())
}

async fn discover(config: &InitiatorConfig, a: DiscoverArgs) -> Result<u8, Failure> {
    let cfg = SessionConfig::new(initiator_name(config, &a.initiator), None, a.portal);
    let s = Session::connect(cfg).await?;
    let targets = s.send_targets().await;
    let _ = s.logout().await;
    let targets = targets?;
    if a.json {
        println!(
            "{}",
            json!({ "portal": a.portal.to_string(), "targets": targets })
        );
    } else {
        for t in &targets {
            if t.portals.is_empty() {
                println!("{} {}", a.portal, t.name);
            }
            for p in &t.portals {
                let tpgt = p.tpgt.map(|t| format!(",{t}")).unwrap_or_default();
                println!("{}:{}{tpgt} {}", p.address, p.port, t.name);
            }
        }
    }
    Ok(0)
}

fn read_secret(path: &PathBuf) -> Result<Vec<u8>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).as_bytes().to_vec())
}

/// The session configuration and policy for a one-shot command: the configured session
/// for this target when there is one, with the command line's overrides.
fn session_for(
    config: &InitiatorConfig,
    a: &TargetArgs,
) -> Result<(SessionConfig, Option<ProtectionPolicy>), Failure> {
    if a.transport == Transport::Iser
        && a.iser_portal.is_none()
        && !config
            .sessions
            .iter()
            .any(|s| s.target.as_str() == a.target)
    {
        tracing::info!("no --iser-portal: using the portal's address with port 3261");
    }
    let configured = config
        .sessions
        .iter()
        .find(|s| s.target.as_str() == a.target);
    let mut cfg = match configured {
        Some(s) => {
            let mut c = SessionConfig::from_conf(&config.iqn, s)?;
            c.portal = a.portal;
            c
        }
        None => SessionConfig::new(
            initiator_name(config, &a.initiator),
            Some(a.target.clone()),
            a.portal,
        ),
    };
    if let Some(i) = &a.initiator {
        cfg.initiator_name = i.clone();
    }
    cfg.header_digest |= a.header_digest;
    cfg.data_digest |= a.data_digest;
    cfg.command_timeout = Duration::from_secs(u64::from(a.timeout.max(1)));
    cfg.nop_interval = Duration::ZERO;
    if let (Some(user), Some(file)) = (&a.chap_user, &a.chap_secret_file) {
        let target_secret = match &a.mutual_secret_file {
            Some(f) => Some(read_secret(f)?),
            None => None,
        };
        cfg.chap = Some(initiator::login::ChapConfig {
            username: user.clone(),
            secret: read_secret(file)?,
            target_secret,
        });
    }
    let policy = configured.map(|s| s.protection.clone());
    Ok((cfg, policy))
}

fn policy_for(
    a: &TargetArgs,
    configured: Option<ProtectionPolicy>,
    lun: u16,
    pi_type: Option<u8>,
    config: &InitiatorConfig,
) -> ProtectionPolicy {
    let mut p = config
        .sessions
        .iter()
        .find(|s| s.target.as_str() == a.target)
        .map(|s| s.policy_for_lun(lun))
        .or(configured)
        .unwrap_or_else(|| ProtectionPolicy {
            mode: if pi_type.is_some() {
                ProtectionMode::Insert
            } else {
                ProtectionMode::Off
            },
            ..ProtectionPolicy::default()
        });
    if let Some(m) = a.mode {
        p.mode = match m {
            Mode::Off => ProtectionMode::Off,
            Mode::Insert => ProtectionMode::Insert,
            Mode::Pass => ProtectionMode::Pass,
            Mode::Strip => ProtectionMode::Strip,
        };
    }
    if let Some(t) = a.app_tag {
        p.app_tag = t;
    }
    p
}

/// Connect by `--transport`: iSER at `--iser-portal` (or the configured session's
/// `iser_portal`, or the portal's IP with port 3261), TCP at `--portal`.
async fn connect(
    config: &InitiatorConfig,
    a: &TargetArgs,
    cfg: SessionConfig,
) -> Result<Link, Failure> {
    let fabric = match &a.iser_portal {
        Some(f) => f
            .parse::<verbs::cm::CmAddr>()
            .map_err(|e| fail(format!("--iser-portal: {e}")))?,
        None => match config
            .sessions
            .iter()
            .find(|s| s.target.as_str() == a.target)
        {
            Some(s) => IserConfig::fabric_for(s),
            None => verbs::cm::CmAddr::Tcp(
                SocketAddr::new(a.portal.ip(), conf::initiator::DEFAULT_ISER_PORT).to_string(),
            ),
        },
    };
    let choice = match a.transport {
        Transport::Tcp => TransportChoice::Tcp,
        Transport::Iser => TransportChoice::Iser,
        Transport::Auto => TransportChoice::Auto,
    };
    Ok(Link::connect(cfg, Some(fabric), choice).await?)
}

async fn open(config: &InitiatorConfig, a: &TargetArgs, lun: u16) -> Result<BlockDevice, Failure> {
    let (cfg, configured) = session_for(config, a)?;
    let s = connect(config, a, cfg).await?;
    let info = match initiator::block::probe(&s, lun).await {
        Ok(i) => i,
        Err(e) => {
            let _ = s.logout().await;
            return Err(e.into());
        }
    };
    let policy = policy_for(a, configured, lun, info.pi_type, config);
    match BlockDevice::open(s.clone(), lun, policy).await {
        Ok(d) => Ok(d),
        Err(e) => {
            let _ = s.logout().await;
            Err(e.into())
        }
    }
}

async fn daemon_login(socket: &std::path::Path, a: TargetArgs) -> Result<u8, Failure> {
    let transport = match a.transport {
        Transport::Tcp => "tcp",
        Transport::Iser => "iser",
        Transport::Auto => "auto",
    };
    let req = json!({"op": "login", "target": a.target, "portal": a.portal.to_string(), "iser_portal": a.iser_portal, "transport": transport});
    control(socket, &req, a.json).await
}

/// One request to the daemon; prints the answer and exits 0 when it says ok.
async fn control(
    socket: &std::path::Path,
    req: &serde_json::Value,
    json_mode: bool,
) -> Result<u8, Failure> {
    let v = initiator::daemon::control_request(socket, req).await?;
    let ok = v["ok"].as_bool().unwrap_or(false);
    if json_mode {
        println!("{v}");
    } else if let Some(list) = v["sessions"].as_array() {
        for s in list {
            println!(
                "{} {} {}",
                s["target"].as_str().unwrap_or("?"),
                s["portal"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?")
            );
        }
    } else if ok {
        println!(
            "{}: {}",
            v["target"].as_str().unwrap_or("?"),
            v["state"].as_str().unwrap_or("ok")
        );
    }
    if ok {
        Ok(0)
    } else {
        Err(fail(
            v["error"]
                .as_str()
                .or(v["state"].as_str())
                .unwrap_or("the daemon refused")
                .to_owned(),
        ))
    }
}

async fn login(config: &InitiatorConfig, a: TargetArgs) -> Result<u8, Failure> {
    let (cfg, _) = session_for(config, &a)?;
    let s = connect(config, &a, cfg).await?;
    let mut luns = Vec::new();
    let result: Result<(), Error> = async {
        for lun in report_luns(&s).await? {
            match initiator::block::probe(&s, lun).await {
                Ok(info) => luns.push(info),
                Err(e) => tracing::info!(lun, "skipped: {e}"),
            }
        }
        Ok(())
    }
    .await;
    let p = s
        .params()
        .cloned()
        .ok_or_else(|| fail("no negotiated parameters"))?;
    let transport = s.transport_name();
    s.logout().await?;
    result?;
    if a.json {
        let luns: Vec<_> = luns
            .iter()
            .map(|l| json!({"lun": l.lun, "blocks": l.blocks, "block_size": l.block_size, "pi_type": l.pi_type, "protect": l.protect, "vendor": l.vendor, "product": l.product}))
            .collect();
        println!(
            "{}",
            json!({
                "target": a.target, "portal": a.portal.to_string(), "transport": transport,
                "header_digest": p.header_digest, "data_digest": p.data_digest,
                "max_burst_length": p.max_burst_length, "first_burst_length": p.first_burst_length,
                "immediate_data": p.immediate_data, "initial_r2t": p.initial_r2t,
                "target_max_recv_data_segment_length": p.target_max_recv_data_segment_length,
                "luns": luns,
            })
        );
    } else {
        println!(
            "logged in to {} at {} over {transport} (logged out again)",
            a.target, a.portal
        );
        println!(
            "  digests header={} data={}, ImmediateData={}, InitialR2T={}, FirstBurstLength={}, MaxBurstLength={}, target MaxRecvDataSegmentLength={}",
            p.header_digest, p.data_digest, p.immediate_data, p.initial_r2t, p.first_burst_length, p.max_burst_length, p.target_max_recv_data_segment_length
        );
        for l in &luns {
            println!("  LUN {}: {} {}: {l}", l.lun, l.vendor, l.product);
        }
    }
    Ok(0)
}

fn report(out: &IoOutcome, json_mode: bool, extra: serde_json::Value) -> u8 {
    let code = if out.is_good() {
        0
    } else if out.status == scsi::Status::CHECK_CONDITION {
        3
    } else {
        4
    };
    let sense = out.sense.as_ref().map(|s| {
        json!({
            "key": s.key.0, "key_name": s.key.name(), "asc": s.asc, "ascq": s.ascq,
            "asc_name": scsi::asc::name(s.asc, s.ascq), "information": s.information,
            "origin": out.origin, "text": s.to_string(),
        })
    });
    if json_mode {
        let mut v =
            json!({ "status": out.status.0, "status_name": out.status.name(), "sense": sense });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        println!("{v}");
    } else if !out.is_good() {
        eprintln!("status: {}", status_name(out.status));
        if let Some(s) = &out.sense {
            let origin = match out.origin {
                Some(initiator::block::SenseOrigin::Initiator) => " (detected by the initiator)",
                _ => "",
            };
            eprintln!("sense: {s}{origin}");
        } else if !out.sense_bytes.is_empty() {
            eprintln!("sense bytes: {:02x?}", out.sense_bytes);
        }
    }
    code
}

async fn read(config: &InitiatorConfig, a: ReadArgs) -> Result<u8, Failure> {
    let dev = open(config, &a.t, a.lun).await?;
    let r = dev.read_range(a.lba, a.blocks).await;
    let _ = dev.session().logout().await;
    let out = r?;
    if out.is_good() {
        match &a.out {
            Some(p) => std::fs::write(p, &out.data)
                .map_err(|e| fail(format!("writing {}: {e}", p.display())))?,
            None if !a.t.json => std::io::stdout()
                .write_all(&out.data)
                .map_err(|e| fail(format!("writing stdout: {e}")))?,
            None => {}
        }
        if let (Some(p), Some(pi)) = (&a.pi, &out.pi) {
            std::fs::write(p, pi).map_err(|e| fail(format!("writing {}: {e}", p.display())))?;
        }
    }
    let mode = dev.policy().mode.as_str();
    Ok(report(
        &out,
        a.t.json,
        json!({"lba": a.lba, "blocks": a.blocks, "bytes": out.data.len(), "mode": mode}),
    ))
}

async fn write(config: &InitiatorConfig, a: WriteArgs) -> Result<u8, Failure> {
    let mut data = Vec::new();
    match &a.input {
        Some(p) => {
            data = std::fs::read(p).map_err(|e| fail(format!("reading {}: {e}", p.display())))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| fail(format!("reading stdin: {e}")))?;
        }
    }
    let pi = match &a.pi {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| fail(format!("reading {}: {e}", p.display())))?)
        }
        None => None,
    };
    let dev = open(config, &a.t, a.lun).await?;
    let bs = dev.info().block_size as usize;
    if let Some(b) = a.blocks {
        let want = usize::try_from(b).unwrap_or(usize::MAX).saturating_mul(bs);
        if data.len() < want {
            let _ = dev.session().logout().await;
            return Err(fail(format!(
                "input has {} bytes; {b} blocks need {want}",
                data.len()
            )));
        }
        data.truncate(want);
    }
    if data.is_empty() || data.len() % bs != 0 {
        let _ = dev.session().logout().await;
        return Err(fail(format!(
            "input of {} bytes is not a whole number of {bs}-byte blocks",
            data.len()
        )));
    }
    let blocks = data.len() / bs;
    let r = dev.write_range(a.lba, &data, pi.as_deref()).await;
    let _ = dev.session().logout().await;
    let out = r?;
    let mode = dev.policy().mode.as_str();
    Ok(report(
        &out,
        a.t.json,
        json!({"lba": a.lba, "blocks": blocks, "bytes": data.len(), "mode": mode}),
    ))
}
