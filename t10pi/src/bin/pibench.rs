//! pibench: throughput of the T10-PI operations (generate, verify, insert,
//! strip) per CRC kernel, beside ISA-L's CRC in the same loops when
//! `libisal.so.2` can be loaded, plus memcpy / streaming-read / raw CRC rows.
//!
//! Run: `cargo run --release -p t10pi --bin pibench -- [--json]`.

use std::hint::black_box;
use std::time::Instant;

use t10pi::crc16::{crc_with, CrcImpl};
use t10pi::{check_mask, Engine, GuardType, PiErrorKind, T10DifDomain, Tuple, TUPLE_SIZE};

const MIB: usize = 1 << 20;
const SIZES: [usize; 2] = [MIB, 64 * MIB];
const INTERVALS: [u32; 2] = [512, 4096];
const OPS: [&str; 4] = ["generate", "verify", "insert", "strip"];

/// ISA-L's CRC entry points, loaded at run time so the build never needs libisal.
struct Isal {
    crc: unsafe extern "C" fn(u16, *const u8, u64) -> u16,
    copy: unsafe extern "C" fn(u16, *mut u8, *mut u8, u64) -> u16,
    _lib: libloading::Library,
}

impl Isal {
    fn load() -> Result<Isal, String> {
        // SAFETY: loading ISA-L runs no initialisers with preconditions; the
        // library stays loaded as long as `Isal` (it owns `_lib`).
        let lib = unsafe { libloading::Library::new("libisal.so.2") }.map_err(|e| e.to_string())?;
        // SAFETY: the signatures match /usr/include/isa-l/crc.h:
        // uint16_t crc16_t10dif(uint16_t, const unsigned char *, uint64_t) and
        // uint16_t crc16_t10dif_copy(uint16_t, uint8_t *dst, uint8_t *src, uint64_t).
        let (crc, copy) = unsafe {
            let crc = *lib
                .get::<unsafe extern "C" fn(u16, *const u8, u64) -> u16>(b"crc16_t10dif\0")
                .map_err(|e| e.to_string())?;
            let copy = *lib
                .get::<unsafe extern "C" fn(u16, *mut u8, *mut u8, u64) -> u16>(
                    b"crc16_t10dif_copy\0",
                )
                .map_err(|e| e.to_string())?;
            (crc, copy)
        };
        Ok(Isal {
            crc,
            copy,
            _lib: lib,
        })
    }

    fn crc(&self, data: &[u8]) -> u16 {
        // SAFETY: data is readable for data.len() bytes.
        unsafe { (self.crc)(0, data.as_ptr(), data.len() as u64) }
    }

    fn crc_copy(&self, dst: &mut [u8], src: &[u8]) -> u16 {
        let n = src.len().min(dst.len());
        // SAFETY: both buffers hold n bytes and do not overlap (& and &mut);
        // ISA-L only reads from src despite its non-const pointer.
        unsafe { (self.copy)(0, dst.as_mut_ptr(), src.as_ptr().cast_mut(), n as u64) }
    }
}

/// The same per-block loops as the crate's DIX/DIF operations, with ISA-L's CRC.
mod isal_ops {
    use super::*;

    fn check(dom: &T10DifDomain, guard: u16, t: &Tuple, block: u64) -> Result<(), PiErrorKind> {
        if dom.is_escaped(t) {
            return Ok(());
        }
        if guard != t.guard {
            return Err(PiErrorKind::Guard);
        }
        if dom.ref_tag_for(block) != t.ref_tag {
            return Err(PiErrorKind::RefTag);
        }
        if (dom.app_tag ^ t.app_tag) & dom.apptag_check_mask != 0 {
            return Err(PiErrorKind::AppTag);
        }
        Ok(())
    }

    pub fn generate(isal: &Isal, dom: &T10DifDomain, data: &[u8], pi: &mut [u8]) {
        let iv = dom.pi_interval as usize;
        for (i, (b, t)) in data
            .chunks_exact(iv)
            .zip(pi.chunks_exact_mut(TUPLE_SIZE))
            .enumerate()
        {
            t.copy_from_slice(&dom.tuple_for(isal.crc(b), i as u64).to_bytes());
        }
    }

    pub fn verify(
        isal: &Isal,
        dom: &T10DifDomain,
        data: &[u8],
        pi: &[u8],
    ) -> Result<(), PiErrorKind> {
        let iv = dom.pi_interval as usize;
        for (i, (b, t)) in data
            .chunks_exact(iv)
            .zip(pi.chunks_exact(TUPLE_SIZE))
            .enumerate()
        {
            let t = Tuple::from_slice(t).unwrap_or_default();
            check(dom, isal.crc(b), &t, i as u64)?;
        }
        Ok(())
    }

    pub fn insert(isal: &Isal, dom: &T10DifDomain, data: &[u8], dif: &mut [u8]) {
        let iv = dom.pi_interval as usize;
        for (i, (b, o)) in data
            .chunks_exact(iv)
            .zip(dif.chunks_exact_mut(iv + TUPLE_SIZE))
            .enumerate()
        {
            let (d, t) = o.split_at_mut(iv);
            let g = isal.crc_copy(d, b);
            t.copy_from_slice(&dom.tuple_for(g, i as u64).to_bytes());
        }
    }

    pub fn strip(
        isal: &Isal,
        dom: &T10DifDomain,
        dif: &[u8],
        data: &mut [u8],
    ) -> Result<(), PiErrorKind> {
        let iv = dom.pi_interval as usize;
        for (i, (b, o)) in dif
            .chunks_exact(iv + TUPLE_SIZE)
            .zip(data.chunks_exact_mut(iv))
            .enumerate()
        {
            let (s, t) = b.split_at(iv);
            let t = Tuple::from_slice(t).unwrap_or_default();
            let g = isal.crc_copy(o, s);
            check(dom, g, &t, i as u64)?;
        }
        Ok(())
    }
}

/// Median GB/s (data bytes per second / 1e9) of `runs` timed runs; each run
/// repeats `f` `reps` times.
fn measure(bytes: usize, runs: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up: page faults, caches, branch predictors
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            (bytes * reps) as f64 / secs / 1e9
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

/// Median GB/s of each of `n` implementations, measured in interleaved rounds
/// (one timed run of each implementation per round) so that machine noise hits
/// all of them alike; `f(k)` runs implementation `k` once.
fn measure_many(
    bytes: usize,
    runs: usize,
    reps: usize,
    n: usize,
    mut f: impl FnMut(usize),
) -> Vec<f64> {
    let mut rates = vec![Vec::with_capacity(runs); n];
    for k in 0..n {
        f(k); // warm up
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..runs {
        // Shuffle the order each round: what runs just before an
        // implementation changes its speed (an implementation that always
        // followed ISA-L's SSE code measured ~10% slower), so no fixed order.
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for &k in &order {
            let t = Instant::now();
            for _ in 0..reps {
                f(k);
            }
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            rates[k].push((bytes * reps) as f64 / secs / 1e9);
        }
    }
    rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.total_cmp(b));
            r[r.len() / 2]
        })
        .collect()
}

/// Runs and repetitions for a buffer size: about 16 MiB of work per run in
/// cache, one pass per run from memory.
fn plan(bytes: usize) -> (usize, usize) {
    if bytes <= 4 * MIB {
        (15, (16 * MIB / bytes).max(1))
    } else {
        (11, 1)
    }
}

struct Out {
    json: bool,
}

impl Out {
    fn row(&self, op: &str, interval: u32, bytes: usize, imp: &str, gbps: f64, ratio: Option<f64>) {
        if self.json {
            let ratio = ratio
                .map(|r| format!(",\"ratio_vs_isal\":{r:.3}"))
                .unwrap_or_default();
            println!(
                "{{\"op\":\"{op}\",\"interval\":{interval},\"bytes\":{bytes},\"gbps\":{gbps:.3},\"impl\":\"{imp}\"{ratio}}}"
            );
        } else {
            let ratio = ratio.map(|r| format!("  {r:.2}x isal")).unwrap_or_default();
            println!(
                "{op:<9} {interval:>5} {:>9} {imp:<11} {gbps:>8.2} GB/s{ratio}",
                size_name(bytes)
            );
        }
    }

    /// A remark: on stdout as a comment line in table mode, on stderr in JSON
    /// mode so that stdout holds only result objects.
    fn note(&self, text: &str) {
        if self.json {
            eprintln!("# {text}");
        } else {
            println!("# {text}");
        }
    }
}

fn size_name(bytes: usize) -> String {
    format!("{}MiB", bytes / MIB)
}

fn fill(buf: &mut [u8], salt: u64) {
    let mut x = salt | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

fn main() {
    let json = std::env::args().skip(1).any(|a| a == "--json");
    let out = Out { json };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    out.note(&format!(
        "cpu: {cpu}; default CRC kernel: {}",
        CrcImpl::detect().name()
    ));
    if !json {
        println!("# op        interval  buffer  impl        throughput (data bytes; median)");
    }
    let isal = match Isal::load() {
        Ok(i) => Some(i),
        Err(e) => {
            out.note(&format!(
                "libisal.so.2 not loadable ({e}): ISA-L rows skipped"
            ));
            None
        }
    };

    let max = *SIZES.iter().max().unwrap_or(&MIB);
    let mut data = vec![0u8; max];
    fill(&mut data, 0x5EED);
    let mut data2 = vec![0u8; max];
    let mut pi = vec![0u8; max / 512 * TUPLE_SIZE];
    let mut dif = vec![0u8; max / 512 * (512 + TUPLE_SIZE)];

    // Reference rows: memory bandwidth on the large buffer.
    let big = 64 * MIB;
    let (runs, reps) = plan(big);
    let g = measure(big, runs, reps, || {
        data2[..big].copy_from_slice(black_box(&data[..big]));
        black_box(&data2);
    });
    out.row("memcpy", 0, big, "std", g, None);
    let g = measure(big, runs, reps, || {
        black_box(sum_u64(black_box(&data[..big])));
    });
    out.row("read", 0, big, "sum-u64", g, None);

    // Raw CRC kernels over whole buffers.
    let crc_impls: Vec<CrcImpl> = CrcImpl::ALL
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    for &bytes in &SIZES {
        let (runs, reps) = plan(bytes);
        let n_impl = crc_impls.len() + usize::from(isal.is_some());
        let buf = &data[..bytes];
        let rates = measure_many(bytes, runs, reps, n_impl, |k| match crc_impls.get(k) {
            Some(&imp) => {
                black_box(crc_with(imp, 0, black_box(buf)));
            }
            None => {
                if let Some(isal) = &isal {
                    black_box(isal.crc(black_box(buf)));
                }
            }
        });
        for (imp, g) in crc_impls.iter().zip(&rates) {
            out.row("crc", 0, bytes, imp.name(), *g, None);
        }
        if isal.is_some() {
            out.row("crc", 0, bytes, "isal", rates[rates.len() - 1], None);
        }
    }

    let best = CrcImpl::detect();
    let mut kernels = vec![best];
    kernels.extend(
        [CrcImpl::Vpclmul512, CrcImpl::Vpclmul256, CrcImpl::Pclmul]
            .into_iter()
            .filter(|i| *i != best && i.is_available()),
    );
    for op in OPS {
        for iv in INTERVALS {
            let dom = T10DifDomain::type1(GuardType::Crc, iv, 0);
            for &bytes in &SIZES {
                let (runs, reps) = plan(bytes);
                let n = bytes / iv as usize;
                let d = &mut data[..bytes];
                let p = &mut pi[..n * TUPLE_SIZE];
                let x = &mut dif[..n * (iv as usize + TUPLE_SIZE)];
                let d2 = &mut data2[..bytes];
                // Valid PI for verify and strip.
                let e = Engine::new();
                e.generate(&dom, d, p, 0).unwrap_or_default();
                e.insert(&dom, d, x, 0).unwrap_or_default();
                let engines: Vec<Engine> = kernels
                    .iter()
                    .filter_map(|&k| Engine::with_impl(k))
                    .collect();
                let n_impl = engines.len() + usize::from(isal.is_some());
                // Verify from memory also runs the streaming-read reference in
                // the same rounds, so that the two see the same machine state.
                let with_read = op == "verify" && bytes > 4 * MIB;
                let rates = measure_many(bytes, runs, reps, n_impl + usize::from(with_read), |k| {
                    if k == n_impl {
                        black_box(sum_u64(black_box(&d[..])));
                    } else if let Some(e) = engines.get(k) {
                        match op {
                            "generate" => black_box(e.generate(&dom, d, p, 0)).unwrap_or_default(),
                            "verify" => {
                                black_box(e.verify(&dom, check_mask::ALL, d, p, 0)).expect("verify")
                            }
                            "insert" => black_box(e.insert(&dom, d, x, 0)).unwrap_or_default(),
                            _ => {
                                black_box(e.strip(&dom, check_mask::ALL, x, d2, 0)).expect("strip")
                            }
                        }
                    } else if let Some(isal) = &isal {
                        match op {
                            "generate" => isal_ops::generate(isal, &dom, d, p),
                            "verify" => {
                                black_box(isal_ops::verify(isal, &dom, d, p)).expect("isal verify")
                            }
                            "insert" => isal_ops::insert(isal, &dom, d, x),
                            _ => black_box(isal_ops::strip(isal, &dom, x, d2)).expect("isal strip"),
                        }
                    }
                });
                for (e, g) in engines.iter().zip(&rates) {
                    out.row(op, iv, bytes, e.crc_impl().name(), *g, None);
                }
                if with_read {
                    let read = rates[n_impl];
                    out.row("read", iv, bytes, "sum-u64", read, None);
                    let json_ratio = format!(",\"ratio_vs_read\":{:.3}", rates[0] / read);
                    if out.json {
                        println!(
                            "{{\"op\":\"verify/read\",\"interval\":{iv},\"bytes\":{bytes},\"gbps\":{:.3},\"impl\":\"{}\"{json_ratio}}}",
                            rates[0],
                            best.name()
                        );
                    } else {
                        println!(
                            "{:<9} {iv:>5} {:>9} {:<11} {:>8.2} GB/s  {:.0}% of streaming read",
                            "verify",
                            size_name(bytes),
                            format!("{}/read", best.name()),
                            rates[0],
                            100.0 * rates[0] / read
                        );
                    }
                }
                if isal.is_some() {
                    let (ours, theirs) = (rates[0], rates[n_impl - 1]);
                    out.row(op, iv, bytes, "isal", theirs, None);
                    out.row(
                        op,
                        iv,
                        bytes,
                        &format!("{}/isal", best.name()),
                        ours,
                        Some(ours / theirs),
                    );
                }
            }
        }
    }
}

/// Streaming read: wrapping sum of every u64 (eight accumulators), vectorised
/// with AVX2 where the CPU has it.
fn sum_u64(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn sum_avx2(buf: &[u8]) -> u64 {
            sum_u64_plain(buf)
        }
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { sum_avx2(buf) };
    }
    sum_u64_plain(buf)
}

#[inline(always)]
fn sum_u64_plain(buf: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    for c in buf.chunks_exact(64) {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[8 * k..8 * k + 8].try_into().unwrap_or([0; 8]));
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}
