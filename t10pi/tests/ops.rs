//! PI operations, named by geometry (interval x blocks): round trips, error
//! kind/block/offset, escapes, PASS translation, sub-range calls and layout errors,
//! run with every CRC kernel this CPU has.

use t10pi::testing::*;
use t10pi::*;

fn engines() -> Vec<Engine> {
    CrcImpl::ALL
        .into_iter()
        .filter_map(Engine::with_impl)
        .collect()
}

fn pattern(n: usize, salt: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 13) as u8)
        .collect()
}

#[test]
fn generate_then_verify_512x8_and_4096x3_all_types_all_kernels() {
    for e in engines() {
        for (iv, n) in [(512u32, 8usize), (4096, 3)] {
            for dom in [
                T10DifDomain::type1(GuardType::Crc, iv, 100),
                T10DifDomain::type2(GuardType::Csum, iv, 7),
                T10DifDomain::type3(GuardType::Crc, iv, 0xABCD).with_app_tag(0x1234, 0xFFFF),
            ] {
                let data = pattern(iv as usize * n, iv);
                let mut pi = vec![0u8; n * 8];
                e.generate(&dom, &data, &mut pi, 0).unwrap();
                e.verify(&dom, check_mask::ALL, &data, &pi, 0).unwrap();
                for b in 0..n as u64 {
                    let t = dix_tuple(&pi, b).unwrap();
                    assert_eq!(
                        t.guard,
                        guard(
                            dom.bg_type,
                            0,
                            &data[b as usize * iv as usize..][..iv as usize]
                        )
                    );
                    assert_eq!(t.app_tag, dom.app_tag);
                    let want_ref = if dom.ref_remap {
                        dom.ref_tag + b as u32
                    } else {
                        dom.ref_tag
                    };
                    assert_eq!(t.ref_tag, want_ref, "{:?}", e.crc_impl());
                }
                let mut dif = vec![0u8; n * (iv as usize + 8)];
                e.insert(&dom, &data, &mut dif, 0).unwrap();
                e.verify_dif(&dom, check_mask::ALL, &dif, 0).unwrap();
                let mut dif2 = vec![0u8; dif.len()];
                interleave(iv, &data, &pi, &mut dif2).unwrap();
                assert_eq!(dif, dif2);
                let mut dif3 = dif2.clone();
                for b in 0..n {
                    dif3[b * (iv as usize + 8) + iv as usize..][..8].fill(0);
                }
                e.generate_dif_in_place(&dom, &mut dif3, 0).unwrap();
                assert_eq!(dif, dif3);
                let mut back = vec![0u8; data.len()];
                e.strip(&dom, check_mask::ALL, &dif, &mut back, 0).unwrap();
                assert_eq!(back, data);
                let (mut d2, mut p2) = (vec![0u8; data.len()], vec![0u8; n * 8]);
                split(iv, &dif, &mut d2, &mut p2).unwrap();
                assert_eq!((d2, p2), (data.clone(), pi.clone()));
            }
        }
    }
}

#[test]
fn guard_flip_reports_guard_with_block_and_offset_512x4() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 50);
    let data = pattern(2048, 1);
    let mut pi = vec![0u8; 32];
    generate(&dom, &data, &mut pi, 10).unwrap();
    let mut bad = data.clone();
    flip_dix_data_bit(&mut bad, 512, 2, 77).unwrap();
    let e = verify(&dom, check_mask::ALL, &bad, &pi, 10).unwrap_err();
    let pe = e.pi().copied().unwrap();
    assert_eq!(pe.kind, PiErrorKind::Guard);
    assert_eq!(pe.block, 12);
    assert_eq!(pe.wire_offset, 12 * 520);
    assert_eq!(pe.actual, u32::from(dix_tuple(&pi, 2).unwrap().guard));
    assert_eq!(pe.expected, u32::from(crc16_t10dif(0, &bad[1024..1536])));
}

#[test]
fn layout_errors_not_panics() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 0);
    let mut pi = vec![0u8; 8];
    assert_eq!(
        generate(&dom, &[0u8; 511], &mut pi, 0),
        Err(LayoutError::DataNotMultiple {
            len: 511,
            interval: 512
        })
    );
    assert_eq!(
        generate(&dom, &[0u8; 1024], &mut pi, 0),
        Err(LayoutError::PiTooShort { needed: 16, len: 8 })
    );
    let bad = T10DifDomain {
        pi_interval: 520,
        ..dom
    };
    assert_eq!(
        generate(&bad, &[0u8; 520], &mut pi, 0),
        Err(LayoutError::BadInterval(520))
    );
    assert!(matches!(
        verify_dif(&dom, check_mask::ALL, &[0u8; 519], 0),
        Err(Error::Layout(LayoutError::DifNotMultiple {
            len: 519,
            stride: 520
        }))
    ));
    let mut small = vec![0u8; 100];
    assert_eq!(
        insert(&dom, &[0u8; 512], &mut small, 0),
        Err(LayoutError::DstTooShort {
            needed: 520,
            len: 100
        })
    );
    let other = T10DifDomain::type1(GuardType::Crc, 4096, 0);
    let mut out = vec![0u8; 520];
    assert!(matches!(
        pass(
            &dom,
            check_mask::ALL,
            PiBuf::Dif(&[0u8; 520]),
            &other,
            PiBufMut::Dif(&mut out),
            0
        ),
        Err(Error::Layout(LayoutError::IntervalMismatch {
            src: 512,
            dst: 4096
        }))
    ));
    // Zero blocks is a valid, empty transfer.
    assert_eq!(generate(&dom, &[], &mut [], 0), Ok(()));
}

/// Data of `n` blocks with valid PI, then blocks rewritten with given tuples.
fn dix_with(dom: &T10DifDomain, n: usize, tuples: &[(u64, Tuple)]) -> (Vec<u8>, Vec<u8>) {
    let data = pattern(n * dom.pi_interval as usize, 9);
    let mut pi = vec![0u8; n * 8];
    generate(dom, &data, &mut pi, 0).unwrap();
    for (b, t) in tuples {
        set_dix_tuple(&mut pi, *b, t).unwrap();
    }
    (data, pi)
}

#[test]
fn app_escape_alone_skips_app_tag_ffff_512x4() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 10).with_escapes(true, false);
    let junk = Tuple {
        guard: 0xDEAD,
        app_tag: 0xFFFF,
        ref_tag: 0x1234_5678,
    };
    let (data, pi) = dix_with(&dom, 4, &[(1, junk)]);
    for e in engines() {
        assert_eq!(e.verify(&dom, check_mask::ALL, &data, &pi, 0), Ok(()));
    }
    // Freshly formatted PI (all 0xFF) is escaped too.
    let (data, pi) = dix_with(&dom, 4, &[(0, Tuple::FORMATTED), (3, Tuple::FORMATTED)]);
    assert_eq!(verify(&dom, check_mask::ALL, &data, &pi, 0), Ok(()));
}

#[test]
fn appref_escape_needs_both_values_512x4() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 10).with_escapes(true, true);
    let both = Tuple::FORMATTED;
    let app_only = Tuple {
        guard: 0xDEAD,
        app_tag: 0xFFFF,
        ref_tag: 12,
    };
    let ref_only = Tuple {
        guard: 0xDEAD,
        app_tag: 0,
        ref_tag: 0xFFFF_FFFF,
    };
    for e in engines() {
        let (data, pi) = dix_with(&dom, 4, &[(2, both)]);
        assert_eq!(e.verify(&dom, check_mask::ALL, &data, &pi, 0), Ok(()));
        let (data, pi) = dix_with(&dom, 4, &[(2, app_only)]);
        let err = e.verify(&dom, check_mask::ALL, &data, &pi, 0).unwrap_err();
        assert_eq!(
            err.pi().map(|p| (p.kind, p.block)),
            Some((PiErrorKind::Guard, 2))
        );
        let (data, pi) = dix_with(&dom, 4, &[(3, ref_only)]);
        let err = e.verify(&dom, check_mask::ALL, &data, &pi, 0).unwrap_err();
        assert_eq!(
            err.pi().map(|p| (p.kind, p.block)),
            Some((PiErrorKind::Guard, 3))
        );
    }
}

#[test]
fn no_escape_flags_check_formatted_pi_4096x2() {
    for flags in [(false, false), (false, true)] {
        let dom = T10DifDomain::type3(GuardType::Crc, 4096, 0xFFFF_FFFF)
            .with_app_tag(0xFFFF, 0xFFFF)
            .with_escapes(flags.0, flags.1);
        let (data, pi) = dix_with(&dom, 2, &[(1, Tuple::FORMATTED)]);
        let err = verify(&dom, check_mask::ALL, &data, &pi, 0).unwrap_err();
        assert_eq!(
            err.pi().map(|p| (p.kind, p.block)),
            Some((PiErrorKind::Guard, 1)),
            "{flags:?}"
        );
    }
}

#[test]
fn escaped_blocks_are_skipped_by_strip_and_pass_and_kept_by_pass_512x3() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 0);
    let wire = T10DifDomain::type1(GuardType::Crc, 512, 900);
    let (data, pi) = dix_with(&dom, 3, &[(1, Tuple::FORMATTED)]);
    let mut dif = vec![0u8; 3 * 520];
    interleave(512, &data, &pi, &mut dif).unwrap();
    let mut out = vec![0u8; data.len()];
    strip(&dom, check_mask::ALL, &dif, &mut out, 0).unwrap();
    assert_eq!(out, data);
    let mut wdif = vec![0u8; dif.len()];
    pass(
        &dom,
        check_mask::ALL,
        PiBuf::Dif(&dif),
        &wire,
        PiBufMut::Dif(&mut wdif),
        0,
    )
    .unwrap();
    assert_eq!(dif_tuple(&wdif, 512, 1), Some(Tuple::FORMATTED));
    assert_eq!(dif_tuple(&wdif, 512, 2).map(|t| t.ref_tag), Some(902));
}

#[test]
fn error_priority_guard_then_ref_then_app_512x2() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 100).with_app_tag(7, 0xFFFF);
    let data = pattern(1024, 3);
    let mut pi = vec![0u8; 16];
    generate(&dom, &data, &mut pi, 0).unwrap();
    let good = dix_tuple(&pi, 1).unwrap();
    let cases = [
        (
            Tuple {
                guard: !good.guard,
                app_tag: 8,
                ref_tag: 5,
            },
            PiErrorKind::Guard,
        ),
        (
            Tuple {
                app_tag: 8,
                ref_tag: 5,
                ..good
            },
            PiErrorKind::RefTag,
        ),
        (Tuple { app_tag: 8, ..good }, PiErrorKind::AppTag),
    ];
    for (t, kind) in cases {
        let mut bad = pi.clone();
        set_dix_tuple(&mut bad, 1, &t).unwrap();
        for e in engines() {
            let pe = *e
                .verify(&dom, check_mask::ALL, &data, &bad, 0)
                .unwrap_err()
                .pi()
                .unwrap();
            assert_eq!((pe.kind, pe.block, pe.wire_offset), (kind, 1, 520));
            let (expected, actual) = match kind {
                PiErrorKind::Guard => (u32::from(good.guard), u32::from(!good.guard)),
                PiErrorKind::RefTag => (101, 5),
                PiErrorKind::AppTag => (7, 8),
            };
            assert_eq!((pe.expected, pe.actual), (expected, actual));
        }
    }
}

#[test]
fn first_failing_block_is_reported_512x6() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 0);
    let data = pattern(6 * 512, 4);
    let mut pi = vec![0u8; 48];
    generate(&dom, &data, &mut pi, 0).unwrap();
    flip_dix_pi_bit(&mut pi, 4, 40).unwrap();
    flip_dix_pi_bit(&mut pi, 2, 20).unwrap();
    let pe = *verify(&dom, check_mask::ALL, &data, &pi, 0)
        .unwrap_err()
        .pi()
        .unwrap();
    assert_eq!((pe.kind, pe.block), (PiErrorKind::AppTag, 2));
}

#[test]
fn ref_tags_by_type_512x4() {
    let data = pattern(4 * 512, 5);
    let mut pi = vec![0u8; 32];
    let t1 = T10DifDomain::type1(GuardType::Crc, 512, 0xFFFF_FFFE);
    generate(&t1, &data, &mut pi, 0).unwrap();
    let refs: Vec<u32> = (0..4).map(|b| dix_tuple(&pi, b).unwrap().ref_tag).collect();
    assert_eq!(refs, [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1], "wrapping increment");
    let t2 = T10DifDomain::type2(GuardType::Crc, 512, 0x55);
    generate(&t2, &data, &mut pi, 10).unwrap();
    assert_eq!(dix_tuple(&pi, 3).unwrap().ref_tag, 0x55 + 13);
    verify(&t2, check_mask::ALL, &data, &pi, 10).unwrap();
    // A Type 2 transfer checked with a wrong initial ref tag fails on block 0.
    let wrong = T10DifDomain::type2(GuardType::Crc, 512, 0x56);
    let pe = *verify(&wrong, check_mask::ALL, &data, &pi, 10)
        .unwrap_err()
        .pi()
        .unwrap();
    assert_eq!(
        (pe.kind, pe.block, pe.expected, pe.actual),
        (PiErrorKind::RefTag, 10, 0x56 + 10, 0x55 + 10)
    );
    let t3 = T10DifDomain::type3(GuardType::Crc, 512, 0xAABB_CCDD);
    generate(&t3, &data, &mut pi, 0).unwrap();
    assert!((0..4).all(|b| dix_tuple(&pi, b).unwrap().ref_tag == 0xAABB_CCDD));
    let other = T10DifDomain::type3(GuardType::Crc, 512, 1);
    let pe = *verify(&other, check_mask::ALL, &data, &pi, 0)
        .unwrap_err()
        .pi()
        .unwrap();
    assert_eq!(pe.kind, PiErrorKind::RefTag);
    // Type 3 with the ref tag unchecked passes.
    verify(
        &other,
        check_mask::GUARD | check_mask::APPTAG,
        &data,
        &pi,
        0,
    )
    .unwrap();
}

#[test]
fn apptag_check_mask_limits_the_comparison_512x1() {
    let gen = T10DifDomain::type1(GuardType::Crc, 512, 0).with_app_tag(0x12AB, 0xFFFF);
    let data = pattern(512, 6);
    let mut pi = vec![0u8; 8];
    generate(&gen, &data, &mut pi, 0).unwrap();
    let high_only = gen.with_app_tag(0x12CD, 0xFF00);
    verify(&high_only, check_mask::ALL, &data, &pi, 0).unwrap();
    let all = gen.with_app_tag(0x12CD, 0xFFFF);
    let pe = *verify(&all, check_mask::ALL, &data, &pi, 0)
        .unwrap_err()
        .pi()
        .unwrap();
    assert_eq!(
        (pe.kind, pe.expected, pe.actual),
        (PiErrorKind::AppTag, 0x12CD, 0x12AB)
    );
}

#[test]
fn pass_verifies_with_the_source_guard_type_512x3() {
    let mem = T10DifDomain::type1(GuardType::Csum, 512, 0);
    let wire = T10DifDomain::type1(GuardType::Crc, 512, 5000);
    let data = pattern(3 * 512, 7);
    let mut pi = vec![0u8; 24];
    generate(&mem, &data, &mut pi, 0).unwrap();
    assert_eq!(dix_tuple(&pi, 0).unwrap().guard, ip_checksum(&data[..512]));
    let mut bad = data.clone();
    flip_dix_data_bit(&mut bad, 512, 2, 4000).unwrap();
    for e in engines() {
        let mut dif = vec![0u8; 3 * 520];
        let err = e
            .pass(
                &mem,
                check_mask::ALL,
                PiBuf::Dix {
                    data: &bad,
                    pi: &pi,
                },
                &wire,
                PiBufMut::Dif(&mut dif),
                0,
            )
            .unwrap_err();
        let pe = *err.pi().unwrap();
        assert_eq!((pe.kind, pe.block), (PiErrorKind::Guard, 2));
        assert_eq!(pe.expected, u32::from(ip_checksum(&bad[1024..])));
        // A CRC-domain source does not accept CSUM guards.
        let mut dif2 = vec![0u8; 3 * 520];
        interleave(512, &data, &pi, &mut dif2).unwrap();
        let err = e
            .verify_dif(&wire, check_mask::GUARD, &dif2, 0)
            .unwrap_err();
        assert_eq!(err.pi().map(|p| p.block), Some(0));
    }
}

#[test]
fn pass_into_longer_destination_leaves_extra_bytes_512x2() {
    let dom = T10DifDomain::type1(GuardType::Crc, 512, 0);
    let data = pattern(1024, 8);
    let mut pi = vec![0u8; 16];
    generate(&dom, &data, &mut pi, 0).unwrap();
    let mut dif = vec![0xEEu8; 2 * 520 + 100];
    pass(
        &dom,
        check_mask::ALL,
        PiBuf::Dix {
            data: &data,
            pi: &pi,
        },
        &dom,
        PiBufMut::Dif(&mut dif),
        0,
    )
    .unwrap();
    assert!(dif[1040..].iter().all(|&b| b == 0xEE));
    verify_dif(&dom, check_mask::ALL, &dif[..1040], 0).unwrap();
    let (mut d, mut p) = (vec![0u8; 1024], vec![0u8; 4]);
    assert!(matches!(
        pass(
            &dom,
            check_mask::ALL,
            PiBuf::Dif(&dif[..1040]),
            &dom,
            PiBufMut::Dix {
                data: &mut d,
                pi: &mut p
            },
            0
        ),
        Err(Error::Layout(LayoutError::PiTooShort {
            needed: 16,
            len: 4
        }))
    ));
}

#[test]
fn error_display_names_field_block_and_offset() {
    let e = PiError {
        kind: PiErrorKind::RefTag,
        expected: 5,
        actual: 6,
        block: 3,
        wire_offset: 1560,
    };
    let s = e.to_string();
    assert!(
        s.contains("reference tag") && s.contains("block 3") && s.contains("1560"),
        "{s}"
    );
}

#[test]
fn test_helpers_reject_out_of_range() {
    let mut pi = vec![0u8; 16];
    assert_eq!(
        flip_dix_pi_bit(&mut pi, 2, 0),
        Err(LayoutError::OutOfRange { block: 2, bit: 0 })
    );
    assert_eq!(
        flip_dix_pi_bit(&mut pi, 0, 64),
        Err(LayoutError::OutOfRange { block: 0, bit: 64 })
    );
    let mut data = vec![0u8; 512];
    assert!(flip_dix_data_bit(&mut data, 512, 0, 4096).is_err());
    assert!(flip_dif_data_bit(&mut data, 512, 1, 0).is_err());
    assert!(set_dif_tuple(&mut data, 512, 0, &Tuple::FORMATTED).is_err());
    assert_eq!(dix_tuple(&pi, 2), None);
}
