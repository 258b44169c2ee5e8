//! Property tests over random data, geometries, domains and `first_block`, run
//! with every CRC kernel this CPU has: round trips, single-bit error detection,
//! PASS translation and sub-range equivalence.

use proptest::prelude::*;
use t10pi::testing::*;
use t10pi::*;

fn engines() -> Vec<Engine> {
    CrcImpl::ALL
        .into_iter()
        .filter_map(Engine::with_impl)
        .collect()
}

fn interval() -> impl Strategy<Value = u32> {
    prop_oneof![Just(512u32), Just(1024), Just(4096)]
}

fn guard_type() -> impl Strategy<Value = GuardType> {
    prop_oneof![Just(GuardType::Crc), Just(GuardType::Csum)]
}

fn dif_type() -> impl Strategy<Value = DifType> {
    prop_oneof![
        Just(DifType::Type1),
        Just(DifType::Type2),
        Just(DifType::Type3)
    ]
}

/// A domain whose generated tuples are never escaped (app tag != 0xFFFF).
fn domain() -> impl Strategy<Value = T10DifDomain> {
    (
        dif_type(),
        guard_type(),
        interval(),
        any::<u32>(),
        0u16..0xFFFF,
        any::<u16>(),
    )
        .prop_map(|(t, g, iv, r, app, seed)| {
            T10DifDomain::new(t, g, iv, r)
                .with_app_tag(app, 0xFFFF)
                .with_guard_seed(seed)
        })
}

/// Domain plus data of 1..=5 blocks and a first block index.
fn case() -> impl Strategy<Value = (T10DifDomain, Vec<u8>, u64)> {
    (domain(), 1usize..=5, any::<u64>(), any::<u64>()).prop_map(|(dom, n, seed, first)| {
        let mut x = seed | 1;
        let data = (0..n * dom.pi_interval as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        (dom, data, first % (1 << 40))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn insert_then_strip_is_identity_and_generate_then_verify_passes((dom, data, first) in case()) {
        let iv = dom.pi_interval as usize;
        let n = data.len() / iv;
        for e in engines() {
            let mut dif = vec![0u8; n * (iv + 8)];
            e.insert(&dom, &data, &mut dif, first).unwrap();
            e.verify_dif(&dom, check_mask::ALL, &dif, first).unwrap();
            let mut back = vec![0u8; data.len()];
            e.strip(&dom, check_mask::ALL, &dif, &mut back, first).unwrap();
            prop_assert_eq!(&back, &data);
            let mut pi = vec![0u8; n * 8];
            e.generate(&dom, &data, &mut pi, first).unwrap();
            e.verify(&dom, check_mask::ALL, &data, &pi, first).unwrap();
            let mut dif2 = vec![0u8; dif.len()];
            interleave(dom.pi_interval, &data, &pi, &mut dif2).unwrap();
            prop_assert_eq!(&dif2, &dif, "insert == generate + interleave");
        }
    }

    #[test]
    fn any_data_bit_flip_is_a_guard_error_in_its_block((dom, data, first) in case(), pick in any::<u64>()) {
        let iv = dom.pi_interval as usize;
        let n = data.len() / iv;
        let block = pick % n as u64;
        let bit = ((pick >> 8) % (iv as u64 * 8)) as u32;
        let mut pi = vec![0u8; n * 8];
        generate(&dom, &data, &mut pi, first).unwrap();
        let mut bad = data.clone();
        flip_dix_data_bit(&mut bad, dom.pi_interval, block, bit).unwrap();
        let mut dif = vec![0u8; n * (iv + 8)];
        interleave(dom.pi_interval, &bad, &pi, &mut dif).unwrap();
        for e in engines() {
            let err = e.verify(&dom, check_mask::ALL, &bad, &pi, first).unwrap_err();
            let pe = *err.pi().unwrap();
            prop_assert_eq!(pe.kind, PiErrorKind::Guard);
            prop_assert_eq!(pe.block, first + block);
            prop_assert_eq!(pe.wire_offset, (first + block) * (iv as u64 + 8));
            let err = e.verify_dif(&dom, check_mask::GUARD, &dif, first).unwrap_err();
            prop_assert_eq!(err.pi().map(|p| (p.kind, p.block)), Some((PiErrorKind::Guard, first + block)));
            let mut out = vec![0u8; data.len()];
            let err = e.strip(&dom, check_mask::ALL, &dif, &mut out, first).unwrap_err();
            prop_assert_eq!(err.pi().map(|p| (p.kind, p.block)), Some((PiErrorKind::Guard, first + block)));
            // Without the guard check the flip goes unnoticed.
            prop_assert!(e.verify(&dom, check_mask::APPTAG | check_mask::REFTAG, &bad, &pi, first).is_ok());
        }
    }

    #[test]
    fn sub_range_calls_match_one_whole_call((dom, data, first) in case(), cut in any::<usize>()) {
        let iv = dom.pi_interval as usize;
        let n = data.len() / iv;
        let k = cut % (n + 1);
        let mut whole = vec![0u8; n * (iv + 8)];
        insert(&dom, &data, &mut whole, first).unwrap();
        let mut parts = vec![0u8; whole.len()];
        let (a, b) = parts.split_at_mut(k * (iv + 8));
        insert(&dom, &data[..k * iv], a, first).unwrap();
        insert(&dom, &data[k * iv..], b, first + k as u64).unwrap();
        prop_assert_eq!(&parts, &whole);
        let mut pi_whole = vec![0u8; n * 8];
        generate(&dom, &data, &mut pi_whole, first).unwrap();
        let mut pi_parts = vec![0u8; n * 8];
        let (pa, pb) = pi_parts.split_at_mut(k * 8);
        generate(&dom, &data[..k * iv], pa, first).unwrap();
        generate(&dom, &data[k * iv..], pb, first + k as u64).unwrap();
        prop_assert_eq!(&pi_parts, &pi_whole);
        // A corrupted block in the second piece is reported with its whole-transfer index.
        if k < n {
            let mut bad = whole.clone();
            flip_dif_pi_bit(&mut bad, dom.pi_interval, (n - 1) as u64, 63).unwrap();
            let bt = tail_block(&bad, k, iv);
            let err = verify_dif(&dom, check_mask::ALL, bt, first + k as u64).unwrap_err();
            let whole_err = verify_dif(&dom, check_mask::ALL, &bad, first).unwrap_err();
            prop_assert_eq!(err, whole_err);
        }
    }

    #[test]
    fn pass_csum_memory_to_crc_wire_and_back_restores_the_original(
        (dom, data, first) in case(),
        lba in any::<u32>(),
    ) {
        let iv = dom.pi_interval as usize;
        let n = data.len() / iv;
        // Memory: IP checksum, ref tags from 0. Wire: CRC, ref tags from the LBA.
        let mem = T10DifDomain { bg_type: GuardType::Csum, ref_tag: 0, ref_remap: true, ..dom };
        let wire = T10DifDomain { bg_type: GuardType::Crc, ref_tag: lba, ref_remap: true, bg: 0, ..dom };
        let mut pi = vec![0u8; n * 8];
        generate(&mem, &data, &mut pi, first).unwrap();
        for e in engines() {
            let mut dif = vec![0u8; n * (iv + 8)];
            e.pass(&mem, check_mask::ALL, PiBuf::Dix { data: &data, pi: &pi }, &wire, PiBufMut::Dif(&mut dif), first).unwrap();
            // The wire form is exactly what INSERT in the wire domain makes.
            let mut direct = vec![0u8; dif.len()];
            insert(&wire, &data, &mut direct, first).unwrap();
            prop_assert_eq!(&dif, &direct);
            // DIF -> DIF keeps it; DIF -> DIX and DIX -> DIX bring the memory PI back.
            let mut dif2 = vec![0u8; dif.len()];
            e.pass(&wire, check_mask::ALL, PiBuf::Dif(&dif), &wire, PiBufMut::Dif(&mut dif2), first).unwrap();
            prop_assert_eq!(&dif2, &dif);
            let (mut d, mut p) = (vec![0u8; data.len()], vec![0u8; n * 8]);
            e.pass(&wire, check_mask::ALL, PiBuf::Dif(&dif2), &mem, PiBufMut::Dix { data: &mut d, pi: &mut p }, first).unwrap();
            prop_assert_eq!(&d, &data);
            prop_assert_eq!(&p, &pi);
            let (mut d2, mut p2) = (vec![0u8; data.len()], vec![0u8; n * 8]);
            e.pass(&mem, check_mask::ALL, PiBuf::Dix { data: &d, pi: &p }, &mem, PiBufMut::Dix { data: &mut d2, pi: &mut p2 }, first).unwrap();
            prop_assert_eq!((&d2, &p2), (&data, &pi));
        }
    }
}

fn tail_block(dif: &[u8], k: usize, iv: usize) -> &[u8] {
    &dif[k * (iv + 8)..]
}

/// Every one of the 64 tuple bits, in each of 4 blocks of 512 and 2 of 4096.
#[test]
fn every_tuple_bit_flip_512x4_and_4096x2() {
    for (iv, n) in [(512u32, 4usize), (4096, 2)] {
        let dom = T10DifDomain::type1(GuardType::Crc, iv, 0x0100_0000).with_app_tag(0x1234, 0xFFFF);
        let data: Vec<u8> = (0..n * iv as usize).map(|i| (i * 7 + 3) as u8).collect();
        let mut pi = vec![0u8; n * 8];
        generate(&dom, &data, &mut pi, 5).unwrap();
        for e in engines() {
            for block in 0..n as u64 {
                for bit in 0..64u32 {
                    let mut bad = pi.clone();
                    flip_dix_pi_bit(&mut bad, block, bit).unwrap();
                    let want = match bit {
                        0..=15 => PiErrorKind::Guard,
                        16..=31 => PiErrorKind::AppTag,
                        _ => PiErrorKind::RefTag,
                    };
                    let err = e.verify(&dom, check_mask::ALL, &data, &bad, 5).unwrap_err();
                    let pe = err.pi().copied().unwrap();
                    assert_eq!((pe.kind, pe.block), (want, 5 + block), "{iv}x{n} bit {bit}");
                    // Only the flipped field's check notices it.
                    let only = match want {
                        PiErrorKind::Guard => check_mask::GUARD,
                        PiErrorKind::AppTag => check_mask::APPTAG,
                        PiErrorKind::RefTag => check_mask::REFTAG,
                    };
                    assert!(e
                        .verify(&dom, check_mask::ALL & !only, &data, &bad, 5)
                        .is_ok());
                    // The per-byte mask: only the byte holding the bit matters.
                    let byte_bit = 0x80u8 >> (bit / 8);
                    assert!(
                        e.verify(&dom, byte_bit, &data, &bad, 5).is_err(),
                        "bit {bit}"
                    );
                    assert!(e
                        .verify(&dom, check_mask::ALL & !byte_bit, &data, &bad, 5)
                        .is_ok());
                    // Same in the interleaved layout.
                    let mut dif = vec![0u8; n * (iv as usize + 8)];
                    interleave(iv, &data, &bad, &mut dif).unwrap();
                    let err = e.verify_dif(&dom, check_mask::ALL, &dif, 5).unwrap_err();
                    assert_eq!(err.pi().map(|p| (p.kind, p.block)), Some((want, 5 + block)));
                }
            }
        }
    }
}

/// Straight-from-the-spec check of one tuple, the reference for the engine.
fn reference_check(
    dom: &T10DifDomain,
    mask: u8,
    guard: u16,
    t: &Tuple,
    block: u64,
) -> Option<PiErrorKind> {
    let escaped =
        dom.app_escape && t.app_tag == 0xFFFF && (!dom.ref_escape || t.ref_tag == 0xFFFF_FFFF);
    if escaped {
        return None;
    }
    let tb = t.to_bytes();
    let guard_b = guard.to_be_bytes();
    let app_b = dom.app_tag.to_be_bytes();
    let ref_b = dom.ref_tag_for(block).to_be_bytes();
    let app_mask = dom.apptag_check_mask.to_be_bytes();
    let differs = |byte: usize, expected: u8, care: u8| {
        mask & (0x80 >> byte) != 0 && (tb[byte] ^ expected) & care != 0
    };
    if differs(0, guard_b[0], 0xFF) || differs(1, guard_b[1], 0xFF) {
        return Some(PiErrorKind::Guard);
    }
    if (0..4).any(|k| differs(4 + k, ref_b[k], 0xFF)) {
        return Some(PiErrorKind::RefTag);
    }
    if differs(2, app_b[0], app_mask[0]) || differs(3, app_b[1], app_mask[1]) {
        return Some(PiErrorKind::AppTag);
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random tuples (biased to escape values and near misses), escape flags,
    /// check masks and app-tag masks: the engine agrees with the reference on
    /// pass/fail and on the error kind, in every layout and operation.
    #[test]
    fn tuple_checks_match_the_reference(
        app_escape in any::<bool>(),
        ref_escape in any::<bool>(),
        remap in any::<bool>(),
        mask in any::<u8>(),
        app_mask in prop_oneof![Just(0xFFFFu16), Just(0xFF00), Just(0), any::<u16>()],
        dom_app in any::<u16>(),
        dom_ref in any::<u32>(),
        first in 0u64..u64::from(u32::MAX) + 10,
        guard_flip in prop_oneof![Just(0u16), any::<u16>()],
        app_choice in 0u8..4,
        app_bits in any::<u16>(),
        flip_bit in 0u32..16,
        ref_sel in prop_oneof![Just(None), Just(Some(0xFFFF_FFFFu32)), any::<u32>().prop_map(Some)],
    ) {
        let dom = T10DifDomain {
            bg_type: GuardType::Crc,
            pi_interval: 512,
            bg: 0,
            app_tag: dom_app,
            ref_tag: dom_ref,
            ref_remap: remap,
            app_escape,
            ref_escape,
            apptag_check_mask: app_mask,
        };
        let data: Vec<u8> = (0..512u32).map(|i| (i ^ dom_ref) as u8).collect();
        let crc = crc16_t10dif(0, &data);
        let app_tag = match app_choice {
            0 => dom_app,
            1 => 0xFFFF,
            2 => dom_app ^ (1 << flip_bit),
            _ => app_bits,
        };
        let t = Tuple {
            guard: crc ^ guard_flip,
            app_tag,
            ref_tag: ref_sel.unwrap_or(dom.ref_tag_for(first)),
        };
        let want = reference_check(&dom, mask, crc, &t, first);
        let pi = t.to_bytes();
        let mut dif = data.clone();
        dif.extend_from_slice(&pi);
        for e in engines() {
            let got = e.verify(&dom, mask, &data, &pi, first).err().and_then(|e| e.pi().map(|p| p.kind));
            prop_assert_eq!(got, want, "verify {:?}", e.crc_impl());
            let got = e.verify_dif(&dom, mask, &dif, first).err().and_then(|e| e.pi().map(|p| p.kind));
            prop_assert_eq!(got, want, "verify_dif");
            let mut out = vec![0u8; 512];
            let got = e.strip(&dom, mask, &dif, &mut out, first).err().and_then(|e| e.pi().map(|p| p.kind));
            prop_assert_eq!(got, want, "strip");
            let mut o2 = vec![0u8; 520];
            let got = e.pass(&dom, mask, PiBuf::Dif(&dif), &dom, PiBufMut::Dif(&mut o2), first).err().and_then(|e| e.pi().map(|p| p.kind));
            prop_assert_eq!(got, want, "pass");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Arbitrary lengths and intervals: every operation returns (a layout error
    /// or a result) and never panics; accepted geometries are exactly the valid ones.
    #[test]
    fn arbitrary_geometry_never_panics(
        interval in prop_oneof![Just(512u32), Just(4096), Just(0), Just(520), any::<u32>()],
        data_len in 0usize..9000,
        pi_len in 0usize..80,
        dif_len in 0usize..9000,
        out_len in 0usize..9000,
        first in any::<u64>(),
        mask in any::<u8>(),
    ) {
        let dom = T10DifDomain { pi_interval: interval, ..T10DifDomain::type1(GuardType::Crc, 512, 0) };
        let data = vec![0x5Au8; data_len];
        let mut pi = vec![0u8; pi_len];
        let dif = vec![0xA5u8; dif_len];
        let mut out = vec![0u8; out_len];
        let valid = [512u32, 1024, 2048, 4096].contains(&interval);
        let r = generate(&dom, &data, &mut pi, first);
        let iv = interval as usize;
        let ok = valid && data_len % iv == 0 && pi_len >= data_len / iv * 8;
        prop_assert_eq!(r.is_ok(), ok, "{:?}", r);
        let _ = verify(&dom, mask, &data, &pi, first);
        let _ = verify_dif(&dom, mask, &dif, first);
        let _ = insert(&dom, &data, &mut out, first);
        let _ = strip(&dom, mask, &dif, &mut out, first);
        let _ = interleave(interval, &data, &pi, &mut out);
        let (mut d2, mut p2) = (vec![0u8; out_len], vec![0u8; pi_len]);
        let _ = split(interval, &dif, &mut d2, &mut p2);
        let _ = pass(&dom, mask, PiBuf::Dif(&dif), &dom, PiBufMut::Dix { data: &mut d2, pi: &mut p2 }, first);
        let _ = pass(&dom, mask, PiBuf::Dix { data: &data, pi: &pi }, &dom, PiBufMut::Dif(&mut out), first);
        let mut dif2 = dif.clone();
        let _ = generate_dif_in_place(&dom, &mut dif2, first);
    }
}
