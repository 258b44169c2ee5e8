//! mlx5-perf: perftest-style bandwidth and latency of the soft HCA between two
//! processes (`server` / `client`), with and without a signature MR doing INSERT
//! (client memory plain, wire T10-DIF Type 1, 512), plus the anchor: raw TCP and
//! UNIX stream throughput of this machine (`anchor`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::{Parser, Subcommand};
use mlx5::Mlx5Device;
use verbs::cm::{self, CmAddr, CmListener, ConnParam};
use verbs::sig::{check_mask, GuardType, SigAttrs, SigDomain, T10DifDomain};
use verbs::{AccessFlags, QpInitAttr, RecvWr, SendWr, Sge, WcOpcode, WcStatus};

const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);
const MAX: usize = 1 << 20;
const T: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "Bandwidth and latency of the soft mlx5 HCA")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve one client: expose a buffer for RDMA WRITE/READ.
    Server {
        /// Listen address (tcp:HOST:PORT or unix:PATH).
        #[arg(long, default_value = "tcp:127.0.0.1:18515")]
        addr: String,
    },
    /// Run the cases against a server.
    Client {
        /// Server address.
        #[arg(long, default_value = "tcp:127.0.0.1:18515")]
        addr: String,
        /// Iterations per bandwidth case (bounded by --seconds too).
        #[arg(long, default_value_t = 2000)]
        iters: u32,
        /// Time limit per case.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Outstanding requests.
        #[arg(long, default_value_t = 16)]
        depth: u32,
        /// Runs per case, alternating plain and signature; the median is reported.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Message sizes (default 4 KiB, 8 KiB, ... 1 MiB).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// CPU cost of the signature engine alone (no network): gather of a plain MR
    /// versus INSERT and STRIP through a signature MR, and the frame ICRC, per
    /// message size.
    Engine {
        /// Message sizes in data bytes.
        #[arg(long, value_delimiter = ',', default_value = "4096,131072,1048576")]
        sizes: Vec<usize>,
        /// Time per case.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Raw TCP and UNIX stream throughput on this machine.
    Anchor {
        /// Bytes to move per transport.
        #[arg(long, default_value_t = 2 << 30)]
        bytes: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn server(addr: &str) -> Result<()> {
    let dev = Mlx5Device::new("mlx5_perf_server");
    let ctx = dev.context();
    let pd = ctx.alloc_pd()?;
    let cq = ctx.create_cq(4096)?;
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default())?;
    let buf = pd.reg_mr(2 * MAX, RW)?;
    let addr: CmAddr = addr.parse()?;
    let mut l = CmListener::bind(&ctx, &addr)?;
    eprintln!("listening on {}", l.local_addr());
    let req = l
        .next_request_blocking(Duration::from_secs(3600))
        .ok_or_else(|| anyhow!("no client"))?;
    let mut pdata = buf.addr().to_be_bytes().to_vec();
    pdata.extend_from_slice(&buf.rkey().to_be_bytes());
    let rbuf = pd.reg_mr(MAX + MAX / 512 * 8, RW)?;
    for i in 0..32 {
        qp.post_recv_one(RecvWr::new(i, rbuf.sge_all()))?;
    }
    let conn = req.accept(&qp, &pdata)?;
    // Echo every SEND back (SEND latency), until the client disconnects.
    let mut wcs = Vec::with_capacity(64);
    while conn.disconnect_reason().is_none() {
        wcs.clear();
        cq.wait_blocking(&mut wcs, 64, Duration::from_millis(200))?;
        for wc in &wcs {
            if wc.opcode == WcOpcode::Recv && wc.status == WcStatus::Success {
                qp.post_recv_one(RecvWr::new(wc.wr_id, rbuf.sge_all()))?;
                qp.post_send_one(SendWr::send(u64::MAX, rbuf.sge(0, wc.byte_len)))?;
            }
        }
    }
    Ok(())
}

struct Line {
    test: &'static str,
    sig: bool,
    size: usize,
    iters: u32,
    secs: f64,
    cpu: f64,
}

impl Line {
    fn rate(&self) -> f64 {
        f64::from(self.iters) / self.secs
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a `rusage` into the pointer, which points to a
    // zeroed, properly aligned `rusage` that lives for the whole call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: zero-initialised and, on success, filled in by the kernel; every bit
    // pattern is a valid `rusage` (plain integers).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn report(l: &Line, json: bool) {
    let gbps = (l.size as f64 * f64::from(l.iters)) / l.secs / 1e9 * 8.0;
    // Ping-pong latency is reported one way (half the round trip), as perftest does.
    let rtt_div = if l.test == "send_lat" { 2.0 } else { 1.0 };
    let lat_us = l.secs / f64::from(l.iters) * 1e6 / rtt_div;
    let cpu_us = l.cpu / f64::from(l.iters) * 1e6;
    if json {
        println!(
            "{}",
            serde_json::json!({"test": l.test, "sig": if l.sig {"insert_t1_512"} else {"none"}, "size": l.size, "iters": l.iters, "gbit_s": gbps, "avg_us": lat_us, "client_cpu_us_per_op": cpu_us})
        );
    } else {
        println!(
            "{:<10} sig={:<5} size={:>8} iters={:>6} {:>8.2} Gbit/s {:>9.2} us/op {:>8.2} client-cpu-us/op",
            l.test, l.sig, l.size, l.iters, gbps, lat_us, cpu_us
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn client(
    addr: &str,
    iters: u32,
    seconds: f64,
    depth: u32,
    repeat: u32,
    sizes: &[usize],
    json: bool,
) -> Result<()> {
    let dev = Mlx5Device::new("mlx5_perf_client");
    let ctx = dev.context();
    let pd = ctx.alloc_pd()?;
    let cq = ctx.create_cq(8192)?;
    let attr = QpInitAttr {
        max_send_wr: 1024,
        ..QpInitAttr::default()
    };
    let qp = pd.create_qp(&cq, &cq, &attr)?;
    let addr: CmAddr = addr.parse()?;
    let conn = cm::connect_blocking(&ctx, &qp, &addr, &ConnParam::default()).context("connect")?;
    let p = conn.peer_private_data();
    if p.len() < 12 {
        return Err(anyhow!("server sent no buffer"));
    }
    let raddr = u64::from_be_bytes(p[..8].try_into()?);
    let rkey = u32::from_be_bytes(p[8..12].try_into()?);
    let local = pd.reg_mr(2 * MAX, RW)?;
    let sig = pd.alloc_mr_integrity(1, 1)?;
    let wire = T10DifDomain::type1(GuardType::Crc, 512, 0);
    let attrs = SigAttrs {
        check_mask: check_mask::ALL,
        mem: SigDomain::None,
        wire: SigDomain::T10Dif(wire),
    };
    let mut wcs = Vec::with_capacity(64);
    let mut sig_errors = 0u32;
    let sizes: Vec<usize> = if sizes.is_empty() {
        (12..=20).map(|s| 1usize << s).collect()
    } else {
        sizes.to_vec()
    };
    if let Some(bad) = sizes.iter().find(|&&s| s == 0 || s > MAX || s % 512 != 0) {
        return Err(anyhow!("size {bad} must be a multiple of 512 up to {MAX}"));
    }
    for &size in &sizes {
        for test in ["write_bw", "read_bw", "write_lat", "read_lat", "send_lat"] {
            let mut runs: [Vec<Line>; 2] = [Vec::new(), Vec::new()];
            for use_sig in (0..repeat.max(1)).flat_map(|_| [false, true]) {
                let sge = if use_sig {
                    if sig.check_status()?.is_some() {
                        sig_errors += 1;
                    }
                    qp.post_send_one(SendWr::reg_mr_integrity(
                        0,
                        sig.lkey(),
                        local.sge(0, size as u32),
                        None,
                        attrs,
                        RW,
                    ))?;
                    let wc = cq
                        .next_blocking(T)?
                        .ok_or_else(|| anyhow!("registration timed out"))?;
                    if wc.status != WcStatus::Success {
                        return Err(anyhow!("registration failed: {:?}", wc.status));
                    }
                    Sge {
                        addr: local.addr(),
                        length: (size / 512 * 520) as u32,
                        lkey: sig.lkey(),
                    }
                } else {
                    local.sge(0, size as u32)
                };
                let cpu0 = cpu_seconds();
                if test == "send_lat" {
                    let start = Instant::now();
                    let limit = Duration::from_secs_f64(seconds);
                    let mut n = 0;
                    while n < iters && start.elapsed() < limit {
                        qp.post_recv_one(RecvWr::new(1, sge))?;
                        qp.post_send_one(SendWr::send(2, sge))?;
                        let mut got = 0;
                        while got < 2 {
                            wcs.clear();
                            if cq.wait_blocking(&mut wcs, 2, T)? == 0 {
                                return Err(anyhow!("send_lat timed out"));
                            }
                            if let Some(bad) = wcs.iter().find(|w| w.status != WcStatus::Success) {
                                return Err(anyhow!("send_lat: {:?}", bad.status));
                            }
                            got += wcs.len();
                        }
                        n += 1;
                    }
                    runs[usize::from(use_sig)].push(Line {
                        test,
                        sig: use_sig,
                        size,
                        iters: n,
                        secs: start.elapsed().as_secs_f64(),
                        cpu: cpu_seconds() - cpu0,
                    });
                    continue;
                }
                let d = if test.ends_with("_lat") { 1 } else { depth };
                let mk = |i: u64| {
                    if test.starts_with("read") {
                        SendWr::rdma_read(i, sge, raddr, rkey)
                    } else {
                        SendWr::rdma_write(i, sge, raddr, rkey)
                    }
                };
                let start = Instant::now();
                let limit = Duration::from_secs_f64(seconds);
                let (mut posted, mut done) = (0u32, 0u32);
                while done < iters {
                    while posted < iters && posted - done < d && start.elapsed() < limit {
                        qp.post_send_one(mk(u64::from(posted)))?;
                        posted += 1;
                    }
                    if posted == done {
                        break;
                    }
                    wcs.clear();
                    if cq.wait_blocking(&mut wcs, 64, T)? == 0 {
                        return Err(anyhow!("{test} timed out"));
                    }
                    for wc in &wcs {
                        if wc.status != WcStatus::Success {
                            return Err(anyhow!("{test}: {:?}", wc.status));
                        }
                    }
                    done += wcs.len() as u32;
                }
                runs[usize::from(use_sig)].push(Line {
                    test,
                    sig: use_sig,
                    size,
                    iters: done,
                    secs: start.elapsed().as_secs_f64(),
                    cpu: cpu_seconds() - cpu0,
                });
            }
            for mut r in runs {
                r.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                if let Some(median) = r.get(r.len() / 2) {
                    report(median, json);
                }
            }
        }
    }
    if sig_errors > 0 {
        eprintln!("warning: {sig_errors} signature checks failed during the run");
    }
    conn.disconnect();
    Ok(())
}

/// The signature engine alone: memory view to wire view of one message through a
/// plain MR (a copy) and through a signature MR (INSERT out, STRIP in); and the
/// ICRC over the same bytes.
fn engine(sizes: &[usize], seconds: f64, json: bool) -> Result<()> {
    use mlx5::mr::{Segment, SigBinding};
    let eng = t10pi::Engine::new();
    for &size in sizes {
        if size == 0 || size % 512 != 0 {
            return Err(anyhow!("size {size} must be a multiple of 512"));
        }
        let blocks = (size / 512) as u64;
        let buf = verbs::DmaBuf::new(size)?;
        buf.write(|b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8));
        let b = SigBinding {
            data: Segment {
                buf: std::sync::Arc::clone(&buf),
                offset: 0,
                len: size,
            },
            prot: None,
            mem: SigDomain::None,
            wire: SigDomain::T10Dif(T10DifDomain::type1(GuardType::Crc, 512, 0)),
            check_mask: check_mask::ALL,
            interval: 512,
            blocks,
        };
        let mut out = Vec::with_capacity(size + size / 64);
        let mut wire = vec![0u8; size + size / 64];
        let mut insert_out = wire.clone();
        mlx5::sig::outbound(&eng, &b, 0, blocks, &mut wire, None).map_err(|e| anyhow!("{e}"))?;
        let limit = Duration::from_secs_f64(seconds);
        let mut cases: Vec<(&str, f64)> = Vec::new();
        for case in ["plain_copy", "insert", "strip", "icrc"] {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < limit {
                out.clear();
                match case {
                    "plain_copy" => buf.extend_into(0, size, &mut out)?,
                    "icrc" => {
                        let c = buf.read(mlx5::frame::icrc);
                        out.push(c as u8);
                    }
                    "insert" => {
                        mlx5::sig::outbound(&eng, &b, 0, blocks, &mut insert_out, None)
                            .map_err(|e| anyhow!("{e}"))?;
                    }
                    _ => {
                        if mlx5::sig::inbound(&eng, &b, 0, &mut wire, None)
                            .map_err(|e| anyhow!("{e}"))?
                            .is_some()
                        {
                            return Err(anyhow!("strip reported a signature error on valid PI"));
                        }
                    }
                }
                n += 1;
            }
            let gbps = (size as f64 * n as f64) / start.elapsed().as_secs_f64() / 1e9 * 8.0;
            cases.push((case, gbps));
        }
        for (case, gbps) in cases {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"test": "engine", "case": case, "size": size, "gbit_s": gbps})
                );
            } else {
                println!(
                    "engine {case:<10} size={size:>8} {gbps:>8.2} Gbit/s (one core, data bytes)"
                );
            }
        }
    }
    Ok(())
}

fn blast(mut w: impl Write, mut r: impl Read + Send + 'static, bytes: u64) -> Result<f64> {
    let reader = std::thread::spawn(move || {
        let mut b = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k) = r.read(&mut b) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let b = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        w.write_all(&b)?;
        sent += b.len() as u64;
    }
    drop(w);
    let got = reader.join().map_err(|_| anyhow!("reader panicked"))?;
    let secs = start.elapsed().as_secs_f64();
    Ok(got as f64 / secs / 1e9 * 8.0)
}

fn anchor(bytes: u64, json: bool) -> Result<()> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let w = std::net::TcpStream::connect(l.local_addr()?)?;
    let (r, _) = l.accept()?;
    let tcp = blast(w, r, bytes)?;
    let (w, r) = std::os::unix::net::UnixStream::pair()?;
    let unix = blast(w, r, bytes)?;
    for (name, g) in [("tcp_stream", tcp), ("unix_stream", unix)] {
        if json {
            println!(
                "{}",
                serde_json::json!({"test": name, "bytes": bytes, "gbit_s": g})
            );
        } else {
            println!("{name:<12} {bytes} bytes {g:>8.2} Gbit/s");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Server { addr } => server(&addr),
        Cmd::Client {
            addr,
            iters,
            seconds,
            depth,
            repeat,
            sizes,
            json,
        } => client(&addr, iters, seconds, depth, repeat, &sizes, json),
        Cmd::Anchor { bytes, json } => anchor(bytes, json),
        Cmd::Engine {
            sizes,
            seconds,
            json,
        } => engine(&sizes, seconds, json),
    }
}
