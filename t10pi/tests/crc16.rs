//! CRC-16/T10-DIF kernels: fixed vectors, chaining, fused copy, and every SIMD
//! kernel against the portable one on random lengths and seeds.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use t10pi::crc16::{self, crc_copy_with, crc_with, CrcImpl};

fn incrementing(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

fn available() -> Vec<CrcImpl> {
    CrcImpl::ALL
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

#[test]
fn design_vectors_every_kernel() {
    let vectors: [(Vec<u8>, u16); 5] = [
        (b"123456789".to_vec(), 0xD0DB),
        (b"abc".to_vec(), 0x443B),
        (vec![0xFF; 512], 0xE6A1),
        (vec![0xFF; 4096], 0x8B5D),
        (incrementing(512), 0x4F10),
    ];
    for imp in available() {
        for (data, want) in &vectors {
            assert_eq!(
                crc_with(imp, 0, data),
                Some(*want),
                "{imp:?} len {}",
                data.len()
            );
            let mut dst = vec![0u8; data.len()];
            assert_eq!(
                crc_copy_with(imp, 0, &mut dst, data),
                Some(*want),
                "{imp:?} copy"
            );
            assert_eq!(&dst, data);
        }
    }
    assert_eq!(t10pi::crc16_t10dif(0, b"123456789"), 0xD0DB);
    assert_eq!(crc16::portable(0, &[]), 0);
}

#[test]
fn this_cpu_runs_the_simd_kernels() {
    // The build machine is an AVX-512 Xeon with VPCLMULQDQ; on another CPU the
    // SIMD kernels report unavailable instead of failing.
    if std::is_x86_feature_detected!("vpclmulqdq") && std::is_x86_feature_detected!("avx2") {
        assert!(CrcImpl::Vpclmul256.is_available());
        assert!(crc16::vpclmul256(0, b"abc").is_some());
    }
    if std::is_x86_feature_detected!("pclmulqdq") && std::is_x86_feature_detected!("sse4.1") {
        assert!(crc16::pclmul(0, b"abc").is_some());
    }
    assert!(CrcImpl::detect().is_available());
}

#[test]
fn chaining_every_kernel_every_split() {
    let data = incrementing(1200);
    let whole = crc16::portable(0, &data);
    for imp in available() {
        for cut in (0..=data.len())
            .step_by(37)
            .chain([16, 128, 256, 512, 1199, 1200])
        {
            let a = crc_with(imp, 0, &data[..cut]).unwrap_or_default();
            assert_eq!(
                crc_with(imp, a, &data[cut..]),
                Some(whole),
                "{imp:?} cut {cut}"
            );
        }
    }
}

#[test]
fn kernels_match_portable_on_random_lengths_0_to_20000() {
    let mut rng = SmallRng::seed_from_u64(0x7E10_D1F0);
    let mut buf = vec![0u8; 20_000 + 64];
    rng.fill(&mut buf[..]);
    let kernels = available();
    for round in 0..400 {
        // Mix small lengths (every tail and threshold path) with large ones.
        let len = if round % 2 == 0 {
            rng.gen_range(0..600)
        } else {
            rng.gen_range(0..=20_000)
        };
        let start = rng.gen_range(0..64);
        let seed: u16 = rng.gen();
        let data = &buf[start..start + len];
        let want = crc16::portable(seed, data);
        for &imp in &kernels {
            assert_eq!(
                crc_with(imp, seed, data),
                Some(want),
                "{imp:?} len {len} seed {seed:#x}"
            );
            let mut dst = vec![0u8; len];
            assert_eq!(
                crc_copy_with(imp, seed, &mut dst, data),
                Some(want),
                "{imp:?} copy len {len}"
            );
            assert_eq!(&dst[..], data, "{imp:?} copy bytes len {len}");
        }
    }
}

#[test]
fn every_length_below_1100_every_kernel() {
    let data: Vec<u8> = (0..1100u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for len in 0..data.len() {
        let want = crc16::portable(0x1234, &data[..len]);
        for imp in available() {
            assert_eq!(
                crc_with(imp, 0x1234, &data[..len]),
                Some(want),
                "{imp:?} len {len}"
            );
        }
    }
}

#[test]
fn copy_rejects_short_destination() {
    let mut dst = [0u8; 3];
    assert_eq!(crc_copy_with(CrcImpl::Portable, 0, &mut dst, b"abcd"), None);
    assert_eq!(t10pi::crc16_t10dif_copy(0, &mut dst, b"abcd"), None);
    let mut big = [0u8; 8];
    assert_eq!(t10pi::crc16_t10dif_copy(0, &mut big, b"abc"), Some(0x443B));
    assert_eq!(&big[..4], b"abc\0");
}

#[test]
fn kernel_list_names() {
    let names: Vec<&str> = available().into_iter().map(|i| i.name()).collect();
    eprintln!("available CRC kernels: {names:?}");
    assert_eq!(names[0], "portable");
}
