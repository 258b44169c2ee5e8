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
