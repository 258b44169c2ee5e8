//! Device server tests: every command family against RAM and file LUNs, byte-exact
//! capability pages on PI LUNs, PI PASS/INSERT/STRIP round trips, corruption of the
//! data and PI files, reservations and unit attentions.

use std::path::Path;
use std::sync::Arc;

use scsi::asc;
use scsi::opcode::{pr_in, pr_out};
use scsi::*;
use t10pi::{check_mask, GuardType, T10DifDomain, TUPLE_SIZE};

use super::*;

const INIT_A: &str = "iqn.2026-01.test:a,i,0x400001370000";
const INIT_B: &str = "iqn.2026-01.test:b,i,0x400001370001";

fn nexus(id: u64) -> Nexus {
    let name = if id % 2 == 1 { INIT_A } else { INIT_B };
    Nexus {
        id,
        initiator: name.into(),
        target_port: "iqn.2026-01.test:target,t,0x0001".into(),
        relative_port: 1,
    }
}

fn ram(pi: u8, bs: u32, blocks: u64) -> Lun {
    Lun::open(LunDesc::ram(0, blocks * u64::from(bs), bs).with_pi(pi)).unwrap()
}

fn file_lun(dir: &Path, pi: u8, bs: u32, blocks: u64) -> Lun {
    Lun::open(LunDesc::file(3, dir.join("lun.img"), blocks * u64::from(bs), bs).with_pi(pi))
        .unwrap()
}

fn bytes(c: Cdb) -> Vec<u8> {
    c.to_bytes().unwrap()
}

/// Runs a command; the first command of a nexus is preceded by clearing its UA.
#[track_caller]
fn run(lun: &Lun, nx: &Nexus, cdb: &[u8], out: &[u8]) -> Response {
    lun.run_wire(nx, cdb, true, out)
}

#[track_caller]
fn good(lun: &Lun, nx: &Nexus, cdb: &[u8], out: &[u8]) -> Vec<u8> {
    let r = run(lun, nx, cdb, out);
    assert_eq!(
        r.status,
        Status::GOOD,
        "{:?}",
        r.sense.as_deref().map(Sense::parse)
    );
    r.data
}

#[track_caller]
fn check(lun: &Lun, nx: &Nexus, cdb: &[u8], out: &[u8]) -> Sense {
    let r = run(lun, nx, cdb, out);
    assert_eq!(
        r.status,
        Status::CHECK_CONDITION,
        "expected CHECK CONDITION"
    );
    Sense::parse(r.sense.as_deref().unwrap()).unwrap()
}

/// A fresh nexus with its power-on unit attention already consumed.
#[track_caller]
fn ready(lun: &Lun, id: u64) -> Nexus {
    let nx = nexus(id);
    let s = check(lun, &nx, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(
        (s.key, s.asc_pair()),
        (SenseKey::UNIT_ATTENTION, asc::POWER_ON_RESET)
    );
    good(lun, &nx, &bytes(Cdb::TestUnitReady), &[]);
    nx
}

fn rw(kind: RwKind, form: Form, lba: u64, blocks: u32, protect: u8) -> Vec<u8> {
    bytes(Cdb::ReadWrite(
        ReadWrite::new(kind, form, lba, blocks).with_protect(protect),
    ))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Wire DIF for `data` at `lba` as a Type 1 (or Type 3) initiator would send it.
fn dif(data: &[u8], bs: u32, lba: u64, type3: bool) -> Vec<u8> {
    let dom = if type3 {
        T10DifDomain::type3(GuardType::Crc, bs, 0)
    } else {
        T10DifDomain::type1(GuardType::Crc, bs, lba as u32)
    };
    let n = data.len() / bs as usize;
    let mut out = vec![0u8; n * (bs as usize + TUPLE_SIZE)];
    t10pi::insert(&dom, data, &mut out, 0).unwrap();
    out
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn lun_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Lun>();
}

#[test]
fn inquiry_standard_on_type1_lun_is_byte_exact() {
    let lun = ram(1, 512, 2048);
    let nx = nexus(1);
    // INQUIRY does not report (or consume) the power-on unit attention.
    let d = good(
        &lun,
        &nx,
        &bytes(Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 255,
        }),
        &[],
    );
    let mut want = hex("00 00 06 12 45 01 00 02");
    want.extend_from_slice(b"ISER-PI RAM DISK        0001");
    want.resize(58, 0);
    want.extend_from_slice(&hex("00 A0 09 60 04 60 04 C0"));
    want.resize(74, 0);
    assert_eq!(d, want);
    // Allocation length cuts the data.
    let d = good(
        &lun,
        &nx,
        &bytes(Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 5,
        }),
        &[],
    );
    assert_eq!(d, hex("00 00 06 12 45"));
    // Without PI the PROTECT bit is clear.
    let plain = ram(0, 512, 64);
    let d = good(
        &plain,
        &nx,
        &bytes(Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 36,
        }),
        &[],
    );
    assert_eq!(d[5], 0);
    let s = check(
        &lun,
        &nx,
        &bytes(Cdb::Inquiry {
            evpd: false,
            page: 0x80,
            alloc_len: 36,
        }),
        &[],
    );
    assert_eq!(s.field_pointer, Some(FieldPointer::cdb(2, None)));
    // Now the unit attention shows.
    let s = check(&lun, &nx, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(s.asc_pair(), asc::POWER_ON_RESET);
}

#[test]
fn read_capacity_16_byte_exact() {
    let nx = nexus(1);
    let t1 = ram(1, 512, 2048);
    ready(&t1, 1);
    let d = good(
        &t1,
        &nx,
        &bytes(Cdb::ReadCapacity16 {
            lba: 0,
            alloc_len: 32,
            pmi: false,
        }),
        &[],
    );
    assert_eq!(
        d,
        hex("00 00 00 00 00 00 07 FF 00 00 02 00 01 00 C0 00 00000000000000000000000000000000")
    );
    let t3 = ram(3, 4096, 256);
    ready(&t3, 1);
    let d = good(
        &t3,
        &nx,
        &bytes(Cdb::ReadCapacity16 {
            lba: 0,
            alloc_len: 32,
            pmi: false,
        }),
        &[],
    );
    assert_eq!(
        d,
        hex("00 00 00 00 00 00 00 FF 00 00 10 00 05 00 C0 00 00000000000000000000000000000000")
    );
    let t2 = ram(2, 512, 64);
    ready(&t2, 1);
    let d = good(
        &t2,
        &nx,
        &bytes(Cdb::ReadCapacity16 {
            lba: 0,
            alloc_len: 13,
            pmi: false,
        }),
        &[],
    );
    assert_eq!(d[12], 0x03);
    let plain = ram(0, 512, 64);
    ready(&plain, 1);
    let d = good(
        &plain,
        &nx,
        &bytes(Cdb::ReadCapacity10 { lba: 0, pmi: false }),
        &[],
    );
    assert_eq!(d, hex("00 00 00 3F 00 00 02 00"));
    let s = check(
        &plain,
        &nx,
        &bytes(Cdb::ReadCapacity10 { lba: 5, pmi: false }),
        &[],
    );
    assert_eq!(s.field_pointer, Some(FieldPointer::cdb(2, None)));
}

#[test]
fn vpd_pages() {
    let nx = nexus(1);
    let t1 = ram(1, 512, 2048);
    let vpd = |lun: &Lun, page: u8| {
        good(
            lun,
            &nx,
            &bytes(Cdb::Inquiry {
                evpd: true,
                page,
                alloc_len: 512,
            }),
            &[],
        )
    };
    let mut want86 = hex("00 86 00 3C 05 07 01");
    want86.resize(64, 0);
    assert_eq!(vpd(&t1, 0x86), want86);
    let t3 = ram(3, 4096, 64);
    assert_eq!(&vpd(&t3, 0x86)[4..6], &[0x24, 0x07]);
    let t2 = ram(2, 512, 64);
    assert_eq!(vpd(&t2, 0x86)[4], 0x17);
    assert_eq!(vpd(&ram(0, 512, 64), 0x86)[4], 0);

    assert_eq!(vpd(&t1, 0x00), hex("00 00 00 07 00 80 83 86 B0 B1 B2"));
    assert_eq!(vpd(&t1, 0x80), b"\x00\x80\x00\x07ram0000".to_vec());
    let d83 = vpd(&t1, 0x83);
    assert_eq!(&d83[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(d83[8] >> 4, 3, "NAA 3h");
    assert_eq!(&d83[16..20], &[0x02, 0x01, 0x00, 15]);
    assert_eq!(&d83[20..35], b"ISER-PI ram0000");
    assert_eq!(&d83[35..43], &hex("51 94 00 04 00 00 00 01")[..]);
    assert_eq!(&d83[43..45], &[0x53, 0x98]);
    assert!(d83[47..].starts_with(b"iqn.2026-01.test:target,t,0x0001\0"));
    assert_eq!(u16::from_be_bytes([d83[2], d83[3]]) as usize, d83.len() - 4);
    assert_eq!(d83, vpd(&t1, 0x83), "designators are stable");

    let b0 = vpd(&t1, 0xB0);
    assert_eq!(b0.len(), 64);
    assert_eq!((b0[4], b0[5]), (0x01, 64));
    assert_eq!(&b0[8..12], &(65536u32).to_be_bytes());
    assert_eq!(&b0[24..28], &256u32.to_be_bytes());
    assert_eq!(&vpd(&t1, 0xB1)[4..6], &[0, 1]);
    assert_eq!(vpd(&t1, 0xB2), hex("00 B2 00 04 00 E4 02 00"));
    let s = check(
        &t1,
        &nx,
        &bytes(Cdb::Inquiry {
            evpd: true,
            page: 0xC7,
            alloc_len: 64,
        }),
        &[],
    );
    assert_eq!(
        (s.asc_pair(), s.field_pointer),
        (asc::INVALID_FIELD_IN_CDB, Some(FieldPointer::cdb(2, None)))
    );
}

#[test]
fn read_write_all_forms_ram_and_file() {
    let dir = tempfile::tempdir().unwrap();
    for lun in [ram(0, 512, 1024), file_lun(dir.path(), 0, 512, 1024)] {
        let nx = ready(&lun, 1);
        let forms = [Form::Six, Form::Ten, Form::Twelve, Form::Sixteen];
        for (i, form) in forms.into_iter().enumerate() {
            let lba = 10 + 8 * i as u64;
            let data = pattern(4 * 512, i as u8);
            good(&lun, &nx, &rw(RwKind::Write, form, lba, 4, 0), &data);
            assert_eq!(
                good(&lun, &nx, &rw(RwKind::Read, form, lba, 4, 0), &[]),
                data,
                "{form:?}"
            );
            // VERIFY with BYTCHK=1 compares the data-out with the medium.
            if form != Form::Six {
                let mut v = ReadWrite::new(RwKind::Verify, form, lba, 4);
                v.bytchk = 1;
                good(&lun, &nx, &bytes(Cdb::ReadWrite(v)), &data);
                let mut bad = data.clone();
                bad[700] ^= 1;
                let s = check(&lun, &nx, &bytes(Cdb::ReadWrite(v)), &bad);
                assert_eq!(
                    (s.key, s.asc_pair(), s.information),
                    (
                        SenseKey::MISCOMPARE,
                        asc::MISCOMPARE_DURING_VERIFY,
                        Some(700)
                    )
                );
                let mut wv = ReadWrite::new(RwKind::WriteAndVerify, form, lba, 4);
                wv.bytchk = 0;
                good(&lun, &nx, &bytes(Cdb::ReadWrite(wv)), &data);
            }
        }
        // Zero-length transfers complete without data.
        assert!(good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 0, 0, 0), &[]).is_empty());
        // READ(6) with transfer length 0 means 256 blocks.
        assert_eq!(
            good(&lun, &nx, &hex("08 00 00 00 00 00"), &[]).len(),
            256 * 512
        );
        let c = lun.counters();
        assert!(c.reads >= 4 && c.writes >= 4 && c.bytes_written >= 16 * 512);
    }
}

#[test]
fn lba_out_of_range_and_limits() {
    let lun = ram(0, 512, 100);
    let nx = ready(&lun, 1);
    for cdb in [
        rw(RwKind::Read, Form::Ten, 99, 2, 0),
        rw(RwKind::Write, Form::Sixteen, 100, 1, 0),
        rw(RwKind::Read, Form::Sixteen, u64::MAX, 1, 0),
        bytes(Cdb::SynchronizeCache(CacheRange {
            form: Form::Ten,
            immed: false,
            lba: 101,
            blocks: 0,
            group: 0,
        })),
        bytes(Cdb::GetLbaStatus {
            lba: 100,
            alloc_len: 64,
        }),
    ] {
        let s = check(&lun, &nx, &cdb, &[0u8; 1024]);
        assert_eq!(
            (s.key, s.asc_pair()),
            (SenseKey::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE),
            "{cdb:02X?}"
        );
    }
    // More than MAXIMUM TRANSFER LENGTH: INVALID FIELD IN CDB at the length field.
    let big = ram(0, 512, 1 << 17);
    ready(&big, 1);
    let s = check(
        &big,
        &nx,
        &rw(RwKind::Read, Form::Sixteen, 0, 65537, 0),
        &[],
    );
    assert_eq!(s.field_pointer, Some(FieldPointer::cdb(10, None)));
}

#[test]
fn unsupported_opcode_and_invalid_fields() {
    let lun = ram(0, 512, 64);
    let nx = ready(&lun, 1);
    let s = check(
        &lun,
        &nx,
        &hex("D7 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        &[],
    );
    assert_eq!(
        (s.key, s.asc_pair()),
        (
            SenseKey::ILLEGAL_REQUEST,
            asc::INVALID_COMMAND_OPERATION_CODE
        )
    );
    // Unknown SERVICE ACTION IN(16) service action.
    let s = check(
        &lun,
        &nx,
        &hex("9E 1F 00 00 00 00 00 00 00 00 00 00 00 20 00 00"),
        &[],
    );
    assert_eq!(
        (s.asc_pair(), s.field_pointer),
        (
            asc::INVALID_FIELD_IN_CDB,
            Some(FieldPointer::cdb(1, Some(4)))
        )
    );
    // NACA set.
    let s = check(&lun, &nx, &hex("00 00 00 00 00 04"), &[]);
    assert_eq!(s.field_pointer, Some(FieldPointer::cdb(5, Some(2))));
    // 32-byte READ on a LUN without Type 2.
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::ThirtyTwo, 0, 1, 0), &[]);
    assert_eq!(s.asc_pair(), asc::INVALID_COMMAND_OPERATION_CODE);
    // Data-out shorter than the CDB says: whole blocks are written, a partial block
    // is refused.
    good(
        &lun,
        &nx,
        &rw(RwKind::Write, Form::Ten, 0, 2, 0),
        &[0u8; 512],
    );
    good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 0, 1, 0), &[]);
    let s = check(
        &lun,
        &nx,
        &rw(RwKind::Write, Form::Ten, 0, 2, 0),
        &[0u8; 200],
    );
    assert_eq!(s.asc_pair(), asc::INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT);
    // START STOP UNIT with LOEJ on a non-removable medium; plain start is fine.
    let ssu = |loej, start| {
        bytes(Cdb::StartStopUnit(StartStopUnit {
            immed: false,
            power_condition_modifier: 0,
            power_condition: 0,
            no_flush: false,
            loej,
            start,
        }))
    };
    good(&lun, &nx, &ssu(false, true), &[]);
    let s = check(&lun, &nx, &ssu(true, false), &[]);
    assert_eq!(s.field_pointer, Some(FieldPointer::cdb(4, Some(1))));
    good(
        &lun,
        &nx,
        &bytes(Cdb::PreventAllowMediumRemoval { prevent: 1 }),
        &[],
    );
    good(
        &lun,
        &nx,
        &bytes(Cdb::PreFetch(CacheRange {
            form: Form::Sixteen,
            immed: false,
            lba: 0,
            blocks: 8,
            group: 0,
        })),
        &[],
    );
    good(
        &lun,
        &nx,
        &bytes(Cdb::SynchronizeCache(CacheRange {
            form: Form::Sixteen,
            immed: true,
            lba: 0,
            blocks: 0,
            group: 0,
        })),
        &[],
    );
}

#[test]
fn write_protected_lun() {
    let mut desc = LunDesc::ram(0, 64 * 512, 512);
    desc.read_only = true;
    let lun = Lun::open(desc).unwrap();
    let nx = ready(&lun, 1);
    let s = check(
        &lun,
        &nx,
        &rw(RwKind::Write, Form::Ten, 0, 1, 0),
        &[0u8; 512],
    );
    assert_eq!(
        (s.key, s.asc_pair()),
        (SenseKey::DATA_PROTECT, asc::WRITE_PROTECTED)
    );
    good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 0, 1, 0), &[]);
    let ms = good(
        &lun,
        &nx,
        &bytes(Cdb::ModeSense(ModeSense {
            form: Form::Six,
            dbd: true,
            llbaa: false,
            pc: 0,
            page: 8,
            subpage: 0,
            alloc_len: 64,
        })),
        &[],
    );
    assert_eq!(ms[2] & 0x80, 0x80, "WP in the device-specific parameter");
}

#[test]
fn protect_on_lun_without_pi_is_invalid_field() {
    let lun = ram(0, 512, 64);
    let nx = ready(&lun, 1);
    for p in 1..8 {
        for cdb in [
            rw(RwKind::Read, Form::Ten, 0, 1, p),
            rw(RwKind::Write, Form::Sixteen, 0, 1, p),
        ] {
            let s = check(&lun, &nx, &cdb, &[0u8; 520]);
            assert_eq!(s.key, SenseKey::ILLEGAL_REQUEST);
            assert_eq!(
                (s.asc_pair(), s.field_pointer),
                (
                    asc::INVALID_FIELD_IN_CDB,
                    Some(FieldPointer::cdb(1, Some(7)))
                )
            );
        }
    }
}

#[test]
fn type2_protect_needs_32_byte_cdb() {
    let lun = ram(2, 512, 256);
    let nx = ready(&lun, 1);
    let s = check(
        &lun,
        &nx,
        &rw(RwKind::Write, Form::Sixteen, 0, 1, 1),
        &[0u8; 520],
    );
    assert_eq!(
        (s.asc_pair(), s.field_pointer),
        (
            asc::INVALID_FIELD_IN_CDB,
            Some(FieldPointer::cdb(1, Some(7)))
        )
    );
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Ten, 0, 1, 1), &[]);
    assert_eq!(s.asc_pair(), asc::INVALID_FIELD_IN_CDB);
    // WRITE(32)/READ(32) with the expected initial reference tag 0x5000 for LBA 16.
    let tags = ExpectedTags {
        ref_tag: 0x5000,
        app_tag: 0x00AA,
        app_tag_mask: 0xFFFF,
    };
    let data = pattern(4 * 512, 9);
    let dom = T10DifDomain::type2(GuardType::Crc, 512, 0x5000).with_app_tag(0x00AA, 0xFFFF);
    let mut wire = vec![0u8; 4 * 520];
    t10pi::insert(&dom, &data, &mut wire, 0).unwrap();
    let mut w32 = ReadWrite::new(RwKind::Write, Form::ThirtyTwo, 16, 4).with_protect(1);
    w32.tags = Some(tags);
    good(&lun, &nx, &bytes(Cdb::ReadWrite(w32)), &wire);
    let mut r32 = ReadWrite::new(RwKind::Read, Form::ThirtyTwo, 16, 4).with_protect(1);
    r32.tags = Some(tags);
    assert_eq!(good(&lun, &nx, &bytes(Cdb::ReadWrite(r32)), &[]), wire);
    // A different expected initial reference tag fails the ref check on block 0.
    r32.tags = Some(ExpectedTags {
        ref_tag: 0x4000,
        ..tags
    });
    let s = check(&lun, &nx, &bytes(Cdb::ReadWrite(r32)), &[]);
    assert_eq!(
        (s.key, s.asc_pair(), s.information),
        (
            SenseKey::ABORTED_COMMAND,
            asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED,
            Some(16)
        )
    );
    // A different expected application tag under the mask fails the app check.
    r32.tags = Some(ExpectedTags {
        app_tag: 0x00AB,
        ..tags
    });
    let s = check(&lun, &nx, &bytes(Cdb::ReadWrite(r32)), &[]);
    assert_eq!(
        (s.asc_pair(), s.information),
        (asc::LOGICAL_BLOCK_APPLICATION_TAG_CHECK_FAILED, Some(16))
    );
    assert_eq!(lun.counters().pi_app_errors, 1);
    // READ(16) without PROTECT strips (guard checked only).
    assert_eq!(
        good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 16, 4, 0), &[]),
        data
    );
}

#[test]
fn pi_pass_insert_strip_round_trips() {
    for (pi, bs) in [(1u8, 512u32), (3, 4096)] {
        let lun = ram(pi, bs, 64);
        let nx = ready(&lun, 1);
        let data = pattern(4 * bs as usize, pi);
        let wire = dif(&data, bs, 8, pi == 3);
        // WRPROTECT=1: PASS; the transfer length includes the tuples.
        assert_eq!(
            lun.transfer(&rw(RwKind::Write, Form::Ten, 8, 4, 1), true)
                .unwrap(),
            (Direction::DataOut, 4 * (bs as usize + 8))
        );
        good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 8, 4, 1), &wire);
        assert_eq!(
            good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 8, 4, 1), &[]),
            wire,
            "PASS keeps the tuples"
        );
        assert_eq!(
            good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 8, 4, 0), &[]),
            data,
            "STRIP"
        );
        // WRPROTECT=0: INSERT with the LUN's app tag; read back with RDPROTECT=1.
        let data2 = pattern(2 * bs as usize, 77);
        good(
            &lun,
            &nx,
            &rw(RwKind::Write, Form::Sixteen, 20, 2, 0),
            &data2,
        );
        let back = good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 20, 2, 1), &[]);
        assert_eq!(back.len(), 2 * (bs as usize + 8));
        let dom = if pi == 3 {
            T10DifDomain::type3(GuardType::Crc, bs, 0xFFFF_FFFF)
        } else {
            T10DifDomain::type1(GuardType::Crc, bs, 20)
        };
        let mask = if pi == 3 {
            check_mask::GUARD | check_mask::APPTAG
        } else {
            check_mask::ALL
        };
        t10pi::verify_dif(&dom, mask, &back, 0).unwrap();
        // A corrupted guard on the wire is refused on write, and nothing is written.
        let mut bad = dif(&data, bs, 30, pi == 3);
        bad[bs as usize + 8 + bs as usize] ^= 0xFF; // guard of block 1
        let s = check(&lun, &nx, &rw(RwKind::Write, Form::Ten, 30, 4, 1), &bad);
        assert_eq!(
            (s.key, s.asc_pair(), s.information),
            (
                SenseKey::ABORTED_COMMAND,
                asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED,
                Some(31)
            )
        );
        assert_eq!(lun.counters().pi_guard_errors, 1);
        // WRPROTECT=3: no checks, stored as sent.
        good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 30, 4, 3), &bad);
        let s = check(&lun, &nx, &rw(RwKind::Read, Form::Ten, 30, 4, 1), &[]);
        assert_eq!(
            (s.asc_pair(), s.information),
            (asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED, Some(31))
        );
        assert_eq!(
            good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 30, 4, 3), &[]),
            bad,
            "RDPROTECT=3 skips checks"
        );
        // Never-written blocks carry escaped (0xFF) PI and read without errors.
        let fresh = good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 50, 2, 1), &[]);
        assert!(fresh[bs as usize..bs as usize + 8]
            .iter()
            .all(|&b| b == 0xFF));
    }
}

#[test]
fn type1_wrong_ref_tag_on_write() {
    let lun = ram(1, 512, 64);
    let nx = ready(&lun, 1);
    let data = pattern(2 * 512, 3);
    let wire = dif(&data, 512, 7, false); // ref tags for LBA 7, written at LBA 8
    let s = check(&lun, &nx, &rw(RwKind::Write, Form::Ten, 8, 2, 1), &wire);
    assert_eq!(
        (s.asc_pair(), s.information),
        (asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED, Some(8))
    );
    // WRPROTECT=4 checks the guard only, so it is accepted.
    good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 8, 2, 4), &wire);
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Ten, 8, 2, 2), &[]);
    assert_eq!(
        (s.asc_pair(), s.information),
        (asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED, Some(8))
    );
    good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 8, 2, 4), &[]);
    assert_eq!(lun.counters().pi_ref_errors, 2);
}

#[test]
fn corrupt_pi_sidecar_and_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let pi_path = dir.path().join("lun.img.pi");
    let lun = file_lun(dir.path(), 1, 512, 128);
    let nx = ready(&lun, 1);
    let data = pattern(8 * 512, 5);
    good(
        &lun,
        &nx,
        &rw(RwKind::Write, Form::Ten, 0, 8, 1),
        &dif(&data, 512, 0, false),
    );
    assert_eq!(std::fs::metadata(&pi_path).unwrap().len(), 128 * 8);
    let patch = |p: &Path, off: u64, b: &[u8]| {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .write_all_at(b, off)
            .unwrap();
    };
    let orig_pi = std::fs::read(&pi_path).unwrap();
    // Guard of block 5.
    patch(&pi_path, 5 * 8, &[0x12, 0x34]);
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Ten, 0, 8, 1), &[]);
    assert_eq!(
        s.to_string(),
        "ABORTED COMMAND, LOGICAL BLOCK GUARD CHECK FAILED (10h/01h), INFORMATION=0x5"
    );
    // Fixed format with VALID and the LBA in bytes 3-6.
    let r = run(&lun, &nx, &rw(RwKind::Read, Form::Ten, 0, 8, 1), &[]);
    assert_eq!(&r.sense.unwrap()[..7], &hex("F0 00 0B 00 00 00 05"));
    // Ref tag of block 6 (block 5 repaired).
    patch(&pi_path, 0, &orig_pi[..64]);
    patch(&pi_path, 6 * 8 + 4, &[0, 0, 0, 99]);
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 0, 8, 1), &[]);
    assert_eq!(
        (s.key, s.asc_pair(), s.information),
        (
            SenseKey::ABORTED_COMMAND,
            asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED,
            Some(6)
        )
    );
    // STRIP reads (RDPROTECT=0) check too.
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 2, 6, 0), &[]);
    assert_eq!(s.information, Some(6));
    patch(&pi_path, 0, &orig_pi[..64]);
    // Data of block 3 in the data file.
    patch(&path, 3 * 512 + 100, &[0xEE]);
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Ten, 0, 8, 1), &[]);
    assert_eq!(
        (s.asc_pair(), s.information),
        (asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED, Some(3))
    );
    // VERIFY(10) with VRPROTECT=1 checks the medium without moving data.
    let s = check(&lun, &nx, &rw(RwKind::Verify, Form::Ten, 0, 8, 1), &[]);
    assert_eq!(
        (s.asc_pair(), s.information),
        (asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED, Some(3))
    );
    good(&lun, &nx, &rw(RwKind::Verify, Form::Ten, 4, 4, 1), &[]);
    let c = lun.counters();
    assert_eq!((c.pi_guard_errors, c.pi_ref_errors), (4, 2));
}

#[test]
fn fua_write_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(4 * 4096, 11);
    {
        let lun = file_lun(dir.path(), 3, 4096, 64);
        let nx = ready(&lun, 1);
        let mut w = ReadWrite::new(RwKind::Write, Form::Sixteen, 10, 4).with_protect(1);
        w.fua = true;
        good(
            &lun,
            &nx,
            &bytes(Cdb::ReadWrite(w)),
            &dif(&data, 4096, 0, true),
        );
    }
    let mut desc = LunDesc::file(3, dir.path().join("lun.img"), 64 * 4096, 4096).with_pi(3);
    desc.backing = Backing::File {
        path: dir.path().join("lun.img"),
        size: None,
        create: false,
    };
    let lun = Lun::open(desc).unwrap();
    assert_eq!(lun.blocks(), 64);
    let nx = ready(&lun, 1);
    assert_eq!(
        good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 10, 4, 0), &[]),
        data
    );
    assert_eq!(
        good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 10, 4, 1), &[]),
        dif(&data, 4096, 0, true)
    );
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    l[0..2].copy_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    l[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    for (lba, n) in ranges {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

fn lba_status(lun: &Lun, nx: &Nexus, lba: u64) -> Vec<(u64, u32, u8)> {
    let d = good(
        lun,
        nx,
        &bytes(Cdb::GetLbaStatus {
            lba,
            alloc_len: 1024,
        }),
        &[],
    );
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    d[8..]
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[0..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12],
            )
        })
        .collect()
}

#[test]
fn unmap_write_same_and_lba_status_ram_and_file() {
    let dir = tempfile::tempdir().unwrap();
    for lun in [ram(1, 4096, 256), file_lun(dir.path(), 1, 4096, 256)] {
        let nx = ready(&lun, 1);
        assert_eq!(
            lba_status(&lun, &nx, 0),
            vec![(0, 256, 1)],
            "fresh LUN is deallocated"
        );
        let data = pattern(16 * 4096, 1);
        good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 16, 16, 0), &data);
        assert_eq!(
            lba_status(&lun, &nx, 0),
            vec![(0, 16, 1), (16, 16, 0), (32, 224, 1)]
        );
        let l = unmap_list(&[(20, 4), (28, 2)]);
        good(
            &lun,
            &nx,
            &bytes(Cdb::Unmap {
                anchor: false,
                group: 0,
                param_len: l.len() as u16,
            }),
            &l,
        );
        assert_eq!(
            lba_status(&lun, &nx, 16),
            vec![
                (16, 4, 0),
                (20, 4, 1),
                (24, 4, 0),
                (28, 2, 1),
                (30, 2, 0),
                (32, 224, 1)
            ]
        );
        // Unmapped blocks read as zeros with escaped PI, even under RDPROTECT=1.
        let back = good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 20, 1, 1), &[]);
        assert!(back[..4096].iter().all(|&b| b == 0) && back[4096..].iter().all(|&b| b == 0xFF));
        // WRITE SAME(16) with data: replicated, with per-block ref tags.
        let block = pattern(4096, 42);
        let ws = |unmap, ndob| {
            bytes(Cdb::WriteSame(WriteSame {
                form: Form::Sixteen,
                lba: 100,
                blocks: 8,
                protect: 0,
                anchor: false,
                unmap,
                ndob,
                group: 0,
                tags: None,
            }))
        };
        good(&lun, &nx, &ws(false, false), &block);
        let back = good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 100, 8, 1), &[]);
        t10pi::verify_dif(
            &T10DifDomain::type1(GuardType::Crc, 4096, 100),
            check_mask::ALL,
            &back,
            0,
        )
        .unwrap();
        assert_eq!(&back[3 * 4104..3 * 4104 + 4096], &block[..]);
        // WRITE SAME with UNMAP and a zero block deallocates; NDOB too.
        good(&lun, &nx, &ws(true, false), &vec![0u8; 4096]);
        assert_eq!(lba_status(&lun, &nx, 100)[0], (100, 156, 1));
        good(&lun, &nx, &ws(false, false), &block);
        good(&lun, &nx, &ws(true, true), &[]);
        assert_eq!(lba_status(&lun, &nx, 100)[0], (100, 156, 1));
        // Parameter list errors and limits.
        let s = check(
            &lun,
            &nx,
            &bytes(Cdb::Unmap {
                anchor: false,
                group: 0,
                param_len: 4,
            }),
            &[0; 4],
        );
        assert_eq!(s.asc_pair(), asc::PARAMETER_LIST_LENGTH_ERROR);
        let l = unmap_list(&[(250, 10)]);
        let s = check(
            &lun,
            &nx,
            &bytes(Cdb::Unmap {
                anchor: false,
                group: 0,
                param_len: l.len() as u16,
            }),
            &l,
        );
        assert_eq!(s.asc_pair(), asc::LBA_OUT_OF_RANGE);
        let s = check(
            &lun,
            &nx,
            &bytes(Cdb::Unmap {
                anchor: true,
                group: 0,
                param_len: 24,
            }),
            &[],
        );
        assert_eq!(s.field_pointer, Some(FieldPointer::cdb(1, Some(0))));
        let zero = bytes(Cdb::WriteSame(WriteSame {
            form: Form::Ten,
            lba: 0,
            blocks: 0,
            protect: 0,
            anchor: false,
            unmap: false,
            ndob: false,
            group: 0,
            tags: None,
        }));
        let s = check(&lun, &nx, &zero, &block);
        assert_eq!(s.field_pointer, Some(FieldPointer::cdb(7, None)));
        let anchor = bytes(Cdb::WriteSame(WriteSame {
            form: Form::Sixteen,
            lba: 0,
            blocks: 1,
            protect: 0,
            anchor: true,
            unmap: true,
            ndob: false,
            group: 0,
            tags: None,
        }));
        assert_eq!(
            check(&lun, &nx, &anchor, &block).field_pointer,
            Some(FieldPointer::cdb(1, Some(4)))
        );
    }
}

#[test]
fn thick_lun_rejects_unmap() {
    let mut desc = LunDesc::ram(0, 64 * 512, 512);
    desc.thin_provisioning = false;
    let lun = Lun::open(desc).unwrap();
    let nx = ready(&lun, 1);
    let s = check(
        &lun,
        &nx,
        &bytes(Cdb::Unmap {
            anchor: false,
            group: 0,
            param_len: 24,
        }),
        &unmap_list(&[(0, 1)]),
    );
    assert_eq!(s.asc_pair(), asc::INVALID_COMMAND_OPERATION_CODE);
    let ws = bytes(Cdb::WriteSame(WriteSame {
        form: Form::Ten,
        lba: 0,
        blocks: 1,
        protect: 0,
        anchor: false,
        unmap: true,
        ndob: false,
        group: 0,
        tags: None,
    }));
    assert_eq!(
        check(&lun, &nx, &ws, &[0; 512]).field_pointer,
        Some(FieldPointer::cdb(1, Some(3)))
    );
    let d = good(
        &lun,
        &nx,
        &bytes(Cdb::ReadCapacity16 {
            lba: 0,
            alloc_len: 32,
            pmi: false,
        }),
        &[],
    );
    assert_eq!(d[14], 0, "LBPME clear");
    assert_eq!(
        lba_status(&lun, &nx, 3),
        vec![(3, 61, 0)],
        "fully provisioned: all mapped"
    );
}

#[test]
fn compare_and_write() {
    for (pi, protect) in [(0u8, 0u8), (1, 1), (1, 0)] {
        let lun = ram(pi, 512, 64);
        let nx = ready(&lun, 1);
        let old = pattern(2 * 512, 1);
        let new = pattern(2 * 512, 2);
        good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 4, 2, 0), &old);
        let caw = bytes(Cdb::CompareAndWrite(CompareAndWrite {
            lba: 4,
            blocks: 2,
            protect,
            dpo: false,
            fua: false,
            group: 0,
        }));
        let payload = |verify: &[u8], write: &[u8]| {
            if protect != 0 {
                let mut v = dif(verify, 512, 4, false);
                v.extend(dif(write, 512, 4, false));
                v
            } else {
                [verify, write].concat()
            }
        };
        let mut wrong = old.clone();
        wrong[513] ^= 0x80;
        let s = check(&lun, &nx, &caw, &payload(&wrong, &new));
        assert_eq!(
            (s.key, s.asc_pair(), s.information),
            (
                SenseKey::MISCOMPARE,
                asc::MISCOMPARE_DURING_VERIFY,
                Some(513)
            )
        );
        assert_eq!(
            good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 4, 2, 0), &[]),
            old
        );
        good(&lun, &nx, &caw, &payload(&old, &new));
        assert_eq!(
            good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 4, 2, 0), &[]),
            new
        );
        if pi != 0 {
            let back = good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 4, 2, 1), &[]);
            assert_eq!(back, dif(&new, 512, 4, false));
        }
        let big = bytes(Cdb::CompareAndWrite(CompareAndWrite {
            lba: 0,
            blocks: 65,
            protect: 0,
            dpo: false,
            fua: false,
            group: 0,
        }));
        assert_eq!(
            check(&lun, &nx, &big, &[]).field_pointer,
            Some(FieldPointer::cdb(13, None))
        );
    }
}

fn mode_sense(form: Form, dbd: bool, pc: u8, page: u8, alloc_len: u16) -> Vec<u8> {
    bytes(Cdb::ModeSense(ModeSense {
        form,
        dbd,
        llbaa: false,
        pc,
        page,
        subpage: 0,
        alloc_len,
    }))
}

#[test]
fn mode_sense_and_select() {
    let lun = ram(1, 512, 2048);
    let a = ready(&lun, 1);
    let b = ready(&lun, 2);
    // MODE SENSE(6), all pages, with a block descriptor.
    let d = good(&lun, &a, &mode_sense(Form::Six, false, 0, 0x3F, 255), &[]);
    assert_eq!(d.len(), 4 + 8 + 12 + 20 + 12 + 12);
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(&d[1..4], &[0x00, 0x10, 0x08]);
    assert_eq!(&d[4..12], &hex("00 00 08 00 00 00 02 00"));
    // MODE SENSE(10) caching page, no block descriptor.
    let d = good(&lun, &a, &mode_sense(Form::Ten, true, 0, 0x08, 255), &[]);
    assert_eq!(&d[..8], &hex("00 1A 00 10 00 00 00 00"));
    assert_eq!(&d[8..11], &[0x08, 0x12, 0x04]);
    // Control page: ATO on a PI LUN; changeable: D_SENSE only.
    let d = good(&lun, &a, &mode_sense(Form::Six, true, 0, 0x0A, 255), &[]);
    assert_eq!(&d[4..], &hex("0A 0A 00 10 00 80 00 00 FF FF 00 00"));
    let d = good(&lun, &a, &mode_sense(Form::Six, true, 1, 0x0A, 255), &[]);
    assert_eq!(&d[4..], &hex("0A 0A 04 00 00 00 00 00 00 00 00 00"));
    let s = check(&lun, &a, &mode_sense(Form::Six, true, 3, 0x08, 255), &[]);
    assert_eq!(s.asc_pair(), asc::SAVING_PARAMETERS_NOT_SUPPORTED);
    let s = check(&lun, &a, &mode_sense(Form::Six, true, 0, 0x19, 255), &[]);
    assert_eq!(s.field_pointer, Some(FieldPointer::cdb(2, Some(5))));

    // MODE SELECT(6): clear WCE; the other nexus gets MODE PARAMETERS CHANGED.
    let mut list = vec![0, 0, 0, 0];
    let mut caching = good(&lun, &a, &mode_sense(Form::Six, true, 0, 0x08, 255), &[])[4..].to_vec();
    caching[2] &= !0x04;
    list.extend_from_slice(&caching);
    let sel = bytes(Cdb::ModeSelect(ModeSelect {
        form: Form::Six,
        pf: true,
        sp: false,
        param_len: list.len() as u16,
    }));
    good(&lun, &a, &sel, &list);
    assert_eq!(
        good(&lun, &a, &mode_sense(Form::Six, true, 0, 0x08, 255), &[])[6],
        0x00
    );
    let s = check(&lun, &b, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(
        (s.key, s.asc_pair()),
        (SenseKey::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED)
    );
    good(&lun, &a, &bytes(Cdb::TestUnitReady), &[]);
    // Changing a non-changeable field is INVALID FIELD IN PARAMETER LIST.
    let mut bad = list.clone();
    bad[4 + 3] = 0x01;
    let s = check(&lun, &a, &sel, &bad);
    assert_eq!(
        (s.asc_pair(), s.field_pointer),
        (
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
            Some(FieldPointer::parameter(7, None))
        )
    );
    // SP=1 is refused; a short list is a parameter list length error.
    let sp = bytes(Cdb::ModeSelect(ModeSelect {
        form: Form::Six,
        pf: true,
        sp: true,
        param_len: 24,
    }));
    assert_eq!(
        check(&lun, &a, &sp, &list).field_pointer,
        Some(FieldPointer::cdb(1, Some(0)))
    );
    let short = bytes(Cdb::ModeSelect(ModeSelect {
        form: Form::Ten,
        pf: true,
        sp: false,
        param_len: 6,
    }));
    assert_eq!(
        check(&lun, &a, &short, &[0; 6]).asc_pair(),
        asc::PARAMETER_LIST_LENGTH_ERROR
    );
    // D_SENSE switches the LUN to descriptor sense.
    let mut ctl = good(&lun, &a, &mode_sense(Form::Six, true, 0, 0x0A, 255), &[])[4..].to_vec();
    ctl[2] |= 0x04;
    let list = [vec![0u8; 8], ctl].concat();
    let sel10 = bytes(Cdb::ModeSelect(ModeSelect {
        form: Form::Ten,
        pf: true,
        sp: false,
        param_len: list.len() as u16,
    }));
    good(&lun, &a, &sel10, &list);
    let r = run(&lun, &a, &rw(RwKind::Read, Form::Ten, 4000, 1, 0), &[]);
    assert_eq!(r.sense.unwrap()[0], 0x72);
}

#[test]
fn descriptor_sense_on_lun_over_2_32_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = (1u64 << 32) + 8;
    let lun = file_lun(dir.path(), 0, 512, blocks);
    assert_eq!(lun.sense_format(), SenseFormat::Descriptor);
    let nx = ready(&lun, 1);
    let d = good(
        &lun,
        &nx,
        &bytes(Cdb::ReadCapacity10 { lba: 0, pmi: false }),
        &[],
    );
    assert_eq!(&d[..4], &[0xFF; 4]);
    let f = PiFailure {
        kind: t10pi::PiErrorKind::Guard,
        lba: (1 << 32) + 3,
        expected: 1,
        actual: 2,
    };
    let sense = lun.sense_bytes(&lun.pi_failure(&f)).unwrap();
    assert_eq!(
        sense,
        hex("72 0B 10 01 00 00 00 0C 00 0A 80 00 00 00 00 01 00 00 00 03")
    );
    let data = pattern(512, 1);
    good(
        &lun,
        &nx,
        &rw(RwKind::Write, Form::Sixteen, blocks - 1, 1, 0),
        &data,
    );
    assert_eq!(
        good(
            &lun,
            &nx,
            &rw(RwKind::Read, Form::Sixteen, blocks - 1, 1, 0),
            &[]
        ),
        data
    );
}

#[test]
fn report_luns_and_supported_opcodes() {
    let p = report_luns_payload(&[0, 1, 300, 20000], 0, 4096).unwrap();
    assert_eq!(
        p,
        hex("00 00 00 20 00 00 00 00 0000000000000000 0001000000000000 412C000000000000 D2004E2000000000")
    );
    for l in [0u64, 1, 255, 256, 300, 0x3FFF, 20000] {
        assert_eq!(decode_lun(encode_lun(l)), Some(l));
    }
    assert_eq!(
        report_luns_payload(&[0], 0, 15),
        Err(SenseReason::cdb(6, None))
    );
    assert_eq!(
        report_luns_payload(&[0], 3, 64),
        Err(SenseReason::cdb(2, None))
    );
    assert_eq!(&inquiry_no_lun(36)[..1], &[0x7F]);

    let lun = ram(0, 512, 64);
    let nx = nexus(1);
    let d = good(
        &lun,
        &nx,
        &bytes(Cdb::ReportLuns {
            select_report: 0,
            alloc_len: 64,
        }),
        &[],
    );
    assert_eq!(d, hex("00 00 00 08 00 00 00 00 00 00 00 00 00 00 00 00"));
    ready(&lun, 1);
    let rsoc = |options, opcode, service_action, rctd| {
        bytes(Cdb::ReportSupportedOpcodes(ReportSupportedOpcodes {
            rctd,
            options,
            opcode,
            service_action,
            alloc_len: 8192,
        }))
    };
    let all = good(&lun, &nx, &rsoc(0, 0, 0, false), &[]);
    let n = u32::from_be_bytes(all[0..4].try_into().unwrap()) as usize;
    assert_eq!(n, all.len() - 4);
    assert_eq!(n % 8, 0);
    let descs: Vec<&[u8]> = all[4..].chunks(8).collect();
    assert!(descs.iter().any(|d| d[0] == 0x88 && d[6..8] == [0, 16]));
    assert!(descs
        .iter()
        .any(|d| d[0] == 0x9E && d[2..4] == [0, 0x10] && d[5] & 1 == 1));
    assert!(
        !descs.iter().any(|d| d[0] == 0x7F),
        "32-byte CDBs only on Type 2"
    );
    let with_timeouts = good(&lun, &nx, &rsoc(0, 0, 0, true), &[]);
    assert_eq!(with_timeouts.len() - 4, (n / 8) * 20);
    let one = good(&lun, &nx, &rsoc(1, 0x28, 0, false), &[]);
    assert_eq!(one, hex("00 03 00 0A 28 F8 FF FF FF FF 3F FF FF 04"));
    let sa = good(&lun, &nx, &rsoc(2, 0x9E, 0x10, false), &[]);
    assert_eq!(&sa[..6], &hex("00 03 00 10 9E 10"));
    assert_eq!(
        good(&lun, &nx, &rsoc(1, 0xD7, 0, false), &[]),
        hex("00 01 00 00")
    );
    assert_eq!(
        check(&lun, &nx, &rsoc(1, 0x9E, 0, false), &[]).field_pointer,
        Some(FieldPointer::cdb(2, Some(2)))
    );
    assert_eq!(
        check(&lun, &nx, &rsoc(2, 0x28, 0, false), &[]).field_pointer,
        Some(FieldPointer::cdb(2, Some(2)))
    );
}

fn prout(action: u8, pr_type: u8, key: u64, sark: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = bytes(Cdb::PersistentReserveOut(PersistentReserveOut {
        action,
        scope: 0,
        pr_type,
        param_len: 24,
    }));
    let mut list = vec![0u8; 24];
    list[0..8].copy_from_slice(&key.to_be_bytes());
    list[8..16].copy_from_slice(&sark.to_be_bytes());
    (cdb, list)
}

fn prin(lun: &Lun, nx: &Nexus, action: u8) -> Vec<u8> {
    good(
        lun,
        nx,
        &bytes(Cdb::PersistentReserveIn {
            action,
            alloc_len: 4096,
        }),
        &[],
    )
}

fn pr_ok(lun: &Lun, nx: &Nexus, action: u8, t: u8, key: u64, sark: u64) {
    let (c, l) = prout(action, t, key, sark);
    good(lun, nx, &c, &l);
}

fn pr_status(lun: &Lun, nx: &Nexus, action: u8, t: u8, key: u64, sark: u64) -> Status {
    let (c, l) = prout(action, t, key, sark);
    run(lun, nx, &c, &l).status
}

#[test]
fn persistent_reservation_conflicts() {
    let lun = ram(0, 512, 64);
    let a = ready(&lun, 1);
    let b = ready(&lun, 2);
    let write = rw(RwKind::Write, Form::Ten, 0, 1, 0);
    let read = rw(RwKind::Read, Form::Ten, 0, 1, 0);
    let blk = vec![0u8; 512];
    // Registration rules.
    assert_eq!(
        pr_status(&lun, &a, pr_out::REGISTER, 0, 5, 0xA),
        Status::RESERVATION_CONFLICT
    );
    pr_ok(&lun, &a, pr_out::REGISTER, 0, 0, 0xA);
    assert_eq!(
        pr_status(&lun, &a, pr_out::REGISTER, 0, 0xB, 0xC),
        Status::RESERVATION_CONFLICT
    );
    pr_ok(
        &lun,
        &b,
        pr_out::REGISTER_AND_IGNORE_EXISTING_KEY,
        0,
        0x77,
        0xB,
    );
    let keys = prin(&lun, &a, pr_in::READ_KEYS);
    assert_eq!(
        keys,
        hex("00 00 00 02 00 00 00 10 000000000000000A 000000000000000B")
    );
    assert_eq!(
        prin(&lun, &a, pr_in::READ_RESERVATION),
        hex("00 00 00 02 00 00 00 00")
    );
    // RESERVE needs the right key; A takes Write Exclusive.
    assert_eq!(
        pr_status(&lun, &a, pr_out::RESERVE, 1, 0xB, 0),
        Status::RESERVATION_CONFLICT
    );
    pr_ok(&lun, &a, pr_out::RESERVE, 1, 0xA, 0);
    assert_eq!(
        prin(&lun, &b, pr_in::READ_RESERVATION),
        hex("00 00 00 02 00 00 00 10 000000000000000A 00000000 00 01 0000")
    );
    assert_eq!(
        pr_status(&lun, &b, pr_out::RESERVE, 1, 0xB, 0),
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(
        run(&lun, &b, &write, &blk).status,
        Status::RESERVATION_CONFLICT
    );
    good(&lun, &b, &read, &[]);
    good(&lun, &a, &write, &blk);
    // An unregistered third nexus is refused too; INQUIRY is always allowed.
    let c = ready(&lun, 3 + 2); // odd id: same initiator name as A but another nexus id
    good(
        &lun,
        &c,
        &bytes(Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 36,
        }),
        &[],
    );
    // Releasing with the wrong type is an invalid release.
    let (rc, rl) = prout(pr_out::RELEASE, 3, 0xA, 0);
    assert_eq!(
        check(&lun, &a, &rc, &rl).asc_pair(),
        asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
    );
    pr_ok(&lun, &a, pr_out::RELEASE, 1, 0xA, 0);
    good(&lun, &b, &write, &blk);
    // Exclusive Access: non-holders cannot even read.
    pr_ok(&lun, &a, pr_out::RESERVE, 3, 0xA, 0);
    assert_eq!(
        run(&lun, &b, &read, &[]).status,
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(
        run(
            &lun,
            &b,
            &bytes(Cdb::ReadCapacity10 { lba: 0, pmi: false }),
            &[]
        )
        .status,
        Status::GOOD
    );
    // B preempts A (and aborts its tasks): A's registration goes, A gets
    // REGISTRATIONS PREEMPTED, and the transport learns whose tasks to abort.
    pr_ok(&lun, &b, pr_out::PREEMPT_AND_ABORT, 1, 0xB, 0xA);
    let mut aborted = lun.take_preempted_nexuses();
    aborted.sort_unstable();
    assert_eq!(aborted, vec![1, 5], "both nexuses of initiator A");
    assert!(lun.take_preempted_nexuses().is_empty());
    assert_eq!(
        prin(&lun, &b, pr_in::READ_KEYS),
        hex("00 00 00 03 00 00 00 08 000000000000000B")
    );
    let s = check(&lun, &a, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(
        (s.key, s.asc_pair()),
        (SenseKey::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED)
    );
    assert_eq!(
        run(&lun, &a, &write, &blk).status,
        Status::RESERVATION_CONFLICT
    );
    good(&lun, &b, &write, &blk);
    // Preempting a key nobody holds is a conflict; key 0 is an invalid parameter.
    assert_eq!(
        pr_status(&lun, &b, pr_out::PREEMPT, 1, 0xB, 0x99),
        Status::RESERVATION_CONFLICT
    );
    // REPORT CAPABILITIES and READ FULL STATUS.
    assert_eq!(
        prin(&lun, &b, pr_in::REPORT_CAPABILITIES),
        hex("00 08 10 80 EA 01 00 00")
    );
    let full = prin(&lun, &b, pr_in::READ_FULL_STATUS);
    assert_eq!(&full[8..16], &0xBu64.to_be_bytes());
    assert_eq!((full[20], full[21]), (0x01, 0x01), "R_HOLDER, type WE");
    assert_eq!(full[32], 0x45, "TransportID format 01b, iSCSI");
    // CLEAR removes everything.
    pr_ok(&lun, &b, pr_out::CLEAR, 0, 0xB, 0);
    assert_eq!(
        prin(&lun, &b, pr_in::READ_KEYS),
        hex("00 00 00 04 00 00 00 00")
    );
    good(&lun, &a, &write, &blk);
    // Parameter list length must be 24.
    let mut c24 = bytes(Cdb::PersistentReserveOut(PersistentReserveOut {
        action: 0,
        scope: 0,
        pr_type: 0,
        param_len: 20,
    }));
    assert_eq!(
        check(&lun, &a, &c24, &[0; 20]).asc_pair(),
        asc::PARAMETER_LIST_LENGTH_ERROR
    );
    c24 = prout(pr_out::REGISTER, 0, 0, 1).0;
    let mut aptpl = prout(pr_out::REGISTER, 0, 0, 1).1;
    aptpl[20] = 0x01;
    assert_eq!(
        check(&lun, &a, &c24, &aptpl).field_pointer,
        Some(FieldPointer::parameter(20, Some(0)))
    );
}

#[test]
fn registrants_only_and_all_registrants() {
    let lun = ram(0, 512, 64);
    let a = ready(&lun, 1);
    let b = ready(&lun, 2);
    let write = rw(RwKind::Write, Form::Ten, 0, 1, 0);
    let blk = vec![0u8; 512];
    pr_ok(&lun, &a, pr_out::REGISTER, 0, 0, 1);
    pr_ok(&lun, &a, pr_out::RESERVE, 5, 1, 0); // WE-RO
    assert_eq!(
        run(&lun, &b, &write, &blk).status,
        Status::RESERVATION_CONFLICT
    );
    pr_ok(&lun, &b, pr_out::REGISTER, 0, 0, 2);
    good(&lun, &b, &write, &blk);
    // Holder unregisters: the RO reservation goes, B gets RESERVATIONS RELEASED.
    pr_ok(&lun, &a, pr_out::REGISTER, 0, 1, 0);
    let s = check(&lun, &b, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(s.asc_pair(), asc::RESERVATIONS_RELEASED);
    assert_eq!(prin(&lun, &b, pr_in::READ_RESERVATION)[4..8], [0, 0, 0, 0]);
    // EA-AR: every registrant is a holder; key 0 is reported.
    pr_ok(&lun, &b, pr_out::RESERVE, 8, 2, 0);
    let r = prin(&lun, &b, pr_in::READ_RESERVATION);
    assert_eq!((&r[8..16], r[21]), (&[0u8; 8][..], 8));
    assert_eq!(
        run(&lun, &a, &rw(RwKind::Read, Form::Ten, 0, 1, 0), &[]).status,
        Status::RESERVATION_CONFLICT
    );
    pr_ok(&lun, &a, pr_out::REGISTER, 0, 0, 3);
    good(&lun, &a, &rw(RwKind::Read, Form::Ten, 0, 1, 0), &[]);
    // PREEMPT with key 0 under an all-registrants reservation takes it over.
    pr_ok(&lun, &a, pr_out::PREEMPT, 1, 3, 0);
    let r = prin(&lun, &a, pr_in::READ_RESERVATION);
    assert_eq!((&r[8..16], r[21]), (&3u64.to_be_bytes()[..], 1));
    assert_eq!(
        check(&lun, &b, &bytes(Cdb::TestUnitReady), &[]).asc_pair(),
        asc::REGISTRATIONS_PREEMPTED
    );
}

#[test]
fn spc2_reserve_release() {
    let lun = ram(0, 512, 64);
    let a = ready(&lun, 1);
    let b = ready(&lun, 2);
    let r6 = Reservation {
        form: Form::Six,
        third_party: false,
        longid: false,
        third_party_id: 0,
        param_len: 0,
    };
    good(&lun, &a, &bytes(Cdb::Reserve(r6)), &[]);
    assert_eq!(
        run(&lun, &b, &rw(RwKind::Read, Form::Ten, 0, 1, 0), &[]).status,
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(
        run(&lun, &b, &bytes(Cdb::Reserve(r6)), &[]).status,
        Status::RESERVATION_CONFLICT
    );
    good(&lun, &b, &bytes(Cdb::Release(r6)), &[]); // not the holder: no effect
    good(
        &lun,
        &b,
        &bytes(Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 36,
        }),
        &[],
    );
    good(
        &lun,
        &a,
        &bytes(Cdb::Release(Reservation {
            form: Form::Ten,
            ..r6
        })),
        &[],
    );
    good(&lun, &b, &rw(RwKind::Read, Form::Ten, 0, 1, 0), &[]);
    // A LUN reset drops an SPC-2 reservation and reports the reset to everyone.
    good(&lun, &a, &bytes(Cdb::Reserve(r6)), &[]);
    lun.lun_reset();
    for nx in [&a, &b] {
        let s = check(&lun, nx, &bytes(Cdb::TestUnitReady), &[]);
        assert_eq!(s.asc_pair(), asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
    }
    good(&lun, &b, &rw(RwKind::Read, Form::Ten, 0, 1, 0), &[]);
}

#[test]
fn unit_attentions_and_request_sense() {
    let lun = ram(0, 512, 64);
    let a = nexus(1);
    // REQUEST SENSE reports the power-on UA as data, with GOOD status, and clears it.
    let d = good(
        &lun,
        &a,
        &bytes(Cdb::RequestSense {
            desc: false,
            alloc_len: 252,
        }),
        &[],
    );
    let s = Sense::parse(&d).unwrap();
    assert_eq!(
        (s.key, s.asc_pair()),
        (SenseKey::UNIT_ATTENTION, asc::POWER_ON_RESET)
    );
    good(&lun, &a, &bytes(Cdb::TestUnitReady), &[]);
    let d = good(
        &lun,
        &a,
        &bytes(Cdb::RequestSense {
            desc: true,
            alloc_len: 252,
        }),
        &[],
    );
    assert_eq!(d, hex("72 00 00 00 00 00 00 00"));
    // A UA takes precedence over an invalid opcode.
    lun.capacity_changed();
    let s = check(&lun, &a, &hex("D7 00 00 00 00 00"), &[]);
    assert_eq!(s.asc_pair(), asc::CAPACITY_DATA_HAS_CHANGED);
    // A new nexus sees its own power-on UA; losing the nexus forgets its state.
    let b = ready(&lun, 2);
    lun.nexus_lost(b.id);
    let s = check(&lun, &b, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(s.asc_pair(), asc::POWER_ON_RESET);
}

#[test]
fn concurrent_commands() {
    let lun = Arc::new(ram(1, 512, 4096));
    let nx0 = ready(&lun, 1);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let lun = Arc::clone(&lun);
            let nx = nx0.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let lba = t * 1000 + i * 8;
                    let data = pattern(8 * 512, (t + i) as u8);
                    good(
                        &lun,
                        &nx,
                        &rw(RwKind::Write, Form::Sixteen, lba, 8, 1),
                        &dif(&data, 512, lba, false),
                    );
                    assert_eq!(
                        good(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, lba, 8, 0), &[]),
                        data
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = lun.counters();
    assert_eq!((c.reads, c.writes), (200, 200));
}

#[test]
fn racing_writes_and_reads_of_one_range_never_tear_data_from_pi() {
    // Writers of the same blocks, and readers checking PI on the way out: a block's
    // data and tuple must change together or a reader sees a guard failure that no
    // initiator caused. Runs on a file LUN, where data and PI are two files.
    let dir = tempfile::tempdir().unwrap();
    let lun = Arc::new(file_lun(dir.path(), 1, 512, 256));
    let nx0 = ready(&lun, 1);
    const ROUNDS: u32 = 1500;
    let start = Arc::new(std::sync::Barrier::new(5));
    let writers = (0..3u8).map(|t| {
        let (lun, nx, start) = (Arc::clone(&lun), nx0.clone(), Arc::clone(&start));
        std::thread::spawn(move || {
            start.wait();
            for i in 0..ROUNDS {
                let data = pattern(16 * 512, t.wrapping_mul(50).wrapping_add(i as u8));
                let cdb = rw(RwKind::Write, Form::Sixteen, 32, 16, 1);
                let r = run(&lun, &nx, &cdb, &dif(&data, 512, 32, false));
                assert_eq!(r.status, Status::GOOD, "write {t}/{i}: {:?}", r.sense);
            }
        })
    });
    let readers = (0..2u8).map(|t| {
        let (lun, nx, start) = (Arc::clone(&lun), nx0.clone(), Arc::clone(&start));
        std::thread::spawn(move || {
            start.wait();
            for i in 0..ROUNDS {
                let r = run(&lun, &nx, &rw(RwKind::Read, Form::Sixteen, 32, 16, 1), &[]);
                assert_eq!(r.status, Status::GOOD, "read {t}/{i}: {:?}", r.sense);
            }
        })
    });
    let all: Vec<_> = writers.chain(readers).collect();
    for t in all {
        t.join().unwrap();
    }
}

#[test]
fn two_step_life_cycle_with_dix_buffers() {
    // What an iSER transport does: prepare, move DIX through the sig MR, execute.
    let lun = ram(1, 512, 64);
    let nx = ready(&lun, 1);
    let plan = lun
        .prepare(&nx, &rw(RwKind::Write, Form::Ten, 2, 2, 1), true)
        .unwrap();
    assert_eq!(
        (plan.direction, plan.transfer_len, plan.prot.op),
        (Direction::DataOut, 1040, ProtOp::Pass)
    );
    assert_eq!(plan.prot.check_mask, check_mask::GUARD | check_mask::REFTAG);
    let data = pattern(1024, 4);
    let mut pi = vec![0u8; 16];
    t10pi::generate(&plan.prot.mem.unwrap(), &data, &mut pi, 0).unwrap();
    lun.execute(
        &nx,
        &plan,
        DataOut::Dix {
            data: &data,
            pi: &pi,
        },
    )
    .unwrap();
    let plan = lun
        .prepare(&nx, &rw(RwKind::Read, Form::Ten, 2, 2, 0), true)
        .unwrap();
    assert_eq!(
        (
            plan.direction,
            plan.transfer_len,
            plan.prot.op,
            plan.prot.wire_has_pi
        ),
        (Direction::DataIn, 1024, ProtOp::Strip, false)
    );
    let d = lun.execute(&nx, &plan, DataOut::None).unwrap();
    assert_eq!((d.data, d.pi), (data, Some(pi)));
    // A signature-engine error at wire offset 520 (block 1) is reported at LBA 3.
    let f = PiFailure::from_wire_offset(&plan.prot, t10pi::PiErrorKind::Guard, 520, 1, 2);
    assert_eq!(
        lun.pi_failure(&f),
        SenseReason::PiCheck {
            kind: t10pi::PiErrorKind::Guard,
            lba: 3
        }
    );
    // Without a PI-capable fabric, PROTECT is refused but INSERT still works.
    assert_eq!(
        lun.prepare(&nx, &rw(RwKind::Write, Form::Ten, 2, 2, 1), false)
            .unwrap_err(),
        SenseReason::cdb(1, Some(7))
    );
    let plan = lun
        .prepare(&nx, &rw(RwKind::Write, Form::Ten, 2, 1, 0), false)
        .unwrap();
    lun.execute(&nx, &plan, DataOut::Bytes(&[7u8; 512]))
        .unwrap();
    assert_eq!(lun.backend.blocks(), 64);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    /// Whatever the CDB and data-out, the device server answers without panicking,
    /// and a CHECK CONDITION always carries parseable sense.
    #[test]
    fn random_commands_never_panic(
        op in proptest::sample::select(vec![
            0x00u8, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A, 0x2E,
            0x2F, 0x34, 0x35, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x7F, 0x88, 0x89, 0x8A,
            0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA, 0xAE, 0xAF, 0xC1,
        ]),
        rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 31),
        small in proptest::prelude::any::<bool>(),
        out in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200),
        pi in 0u8..4,
    ) {
        let lun = ram(pi, 512, 64);
        let nx = ready(&lun, 1);
        let mut cdb = vec![op];
        cdb.extend_from_slice(&rest);
        if small {
            // Keep LBAs and lengths small so that some commands get past the range checks.
            for b in cdb.iter_mut().skip(2).take(8) {
                *b &= 0x01;
            }
        }
        let r = lun.run_wire(&nx, &cdb, true, &out);
        if r.status == Status::CHECK_CONDITION {
            proptest::prop_assert!(Sense::parse(r.sense.as_deref().unwrap_or(&[])).is_ok());
        }
        let _ = lun.transfer(&cdb, true);
    }
}

#[test]
fn prot_decision_invariants_over_all_inputs() {
    use t10pi::DifType;
    for protect in 0..8u8 {
        for dir in [ProtDir::Read, ProtDir::Write] {
            for pi in [
                None,
                Some(DifType::Type1),
                Some(DifType::Type2),
                Some(DifType::Type3),
            ] {
                for fabric in [false, true] {
                    for len in [6usize, 10, 12, 16, 32] {
                        let Ok(d) = check_prot(protect, dir, pi, fabric, len) else {
                            continue;
                        };
                        assert!(protect < 6);
                        assert_eq!(d.op == ProtOp::Pass, protect != 0);
                        assert_eq!(d.op == ProtOp::None, pi.is_none());
                        if pi == Some(DifType::Type3) {
                            assert_eq!(d.check_mask & check_mask::REFTAG, 0);
                        }
                        assert_eq!(d.check_mask & check_mask::APPTAG, 0);
                        let plan = ProtPlan::build(dir, d, pi, 512, 100, 3, None, 0);
                        assert_eq!(plan.wire_has_pi, protect != 0);
                        assert_eq!(
                            plan.wire_len(),
                            3 * (512 + if protect != 0 { 8 } else { 0 })
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn verify_switches_leave_checks_to_the_initiator() {
    let mut desc = LunDesc::ram(0, 64 * 512, 512).with_pi(1);
    desc.protection.verify_received = false;
    desc.protection.verify_medium = false;
    let lun = Lun::open(desc).unwrap();
    let nx = ready(&lun, 1);
    let mut bad = dif(&pattern(512, 1), 512, 5, false);
    bad[512] ^= 0xFF; // guard
                      // Neither the write nor the read checks; the initiator sees the bad tuple.
    good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 5, 1, 1), &bad);
    assert_eq!(
        good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 5, 1, 1), &[]),
        bad
    );
    let plan = lun
        .prepare(&nx, &rw(RwKind::Read, Form::Ten, 5, 1, 1), true)
        .unwrap();
    assert_eq!(plan.prot.check_mask, 0);
}

#[test]
fn mode_sense_default_values_and_clear_unit_attention() {
    let mut desc = LunDesc::ram(0, 64 * 512, 512);
    desc.write_cache = false;
    let lun = Lun::open(desc).unwrap();
    let a = ready(&lun, 1);
    let b = ready(&lun, 2);
    // Default and current caching pages: WCE clear as configured; changeable: WCE.
    for pc in [0u8, 2] {
        let d = good(&lun, &a, &mode_sense(Form::Six, true, pc, 0x08, 255), &[]);
        assert_eq!(d[4 + 2] & 0x04, 0, "pc {pc}");
    }
    let d = good(&lun, &a, &mode_sense(Form::Six, true, 1, 0x08, 255), &[]);
    assert_eq!(d[4 + 2], 0x04);
    // CLEAR reports RESERVATIONS PREEMPTED to the other registrants.
    pr_ok(&lun, &a, pr_out::REGISTER, 0, 0, 1);
    pr_ok(&lun, &b, pr_out::REGISTER, 0, 0, 2);
    pr_ok(&lun, &a, pr_out::CLEAR, 0, 1, 0);
    let s = check(&lun, &b, &bytes(Cdb::TestUnitReady), &[]);
    assert_eq!(s.asc_pair(), asc::RESERVATIONS_PREEMPTED);
    good(&lun, &a, &bytes(Cdb::TestUnitReady), &[]);
}

/// `run_wire_into` answers exactly as `run_wire`, with the data-in in the caller's
/// buffer: reads of LUNs with and without PI (PASS, STRIP, no checks), a read whose
/// PI fails its check, a buffer too short for the read, and a non-block command.
#[test]
fn data_in_into_a_buffer_matches_data_in_as_a_vector() {
    let dir = tempfile::tempdir().unwrap();
    for lun in [
        ram(0, 512, 64),
        ram(1, 512, 64),
        file_lun(dir.path(), 3, 4096, 16),
    ] {
        let pi = lun.desc().protection.pi_type;
        let bs = lun.block_size();
        let nx = ready(&lun, 1);
        let data = pattern(4 * bs as usize, 9);
        if pi == 0 {
            good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 2, 4, 0), &data);
        } else {
            let wire = dif(&data, bs, 2, pi == 3);
            good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 2, 4, 1), &wire);
        }
        let mut cdbs = vec![
            rw(RwKind::Read, Form::Ten, 2, 4, 0),
            rw(RwKind::Read, Form::Sixteen, 0, 8, 0),
            rw(RwKind::Read, Form::Ten, 2, 0, 0),
            bytes(Cdb::Inquiry {
                evpd: false,
                page: 0,
                alloc_len: 96,
            }),
        ];
        if pi != 0 {
            cdbs.extend([1, 3].map(|p| rw(RwKind::Read, Form::Ten, 2, 4, p)));
        }
        for cdb in &cdbs {
            let want = lun.run_wire(&nx, cdb, true, &[]);
            for room in [want.data.len(), want.data.len() + 100, want.data.len() / 2] {
                let mut buf = vec![0xA5u8; room];
                let (got, len) = lun.run_wire_into(&nx, cdb, true, &[], &mut buf);
                assert_eq!(
                    (got.status, &got.sense),
                    (want.status, &want.sense),
                    "{cdb:02x?}"
                );
                assert!(got.data.is_empty());
                assert_eq!(len, want.data.len(), "{cdb:02x?} into {room} bytes");
                let n = len.min(room);
                assert_eq!(&buf[..n], &want.data[..n], "{cdb:02x?} into {room} bytes");
                assert!(
                    buf[n..].iter().all(|&b| b == 0xA5),
                    "written past the data-in"
                );
            }
        }
    }
    // A tuple that fails its check gives the same sense either way.
    let lun = ram(1, 512, 64);
    let nx = ready(&lun, 1);
    let mut bad = dif(&pattern(4 * 512, 3), 512, 8, false);
    bad[512 + 8 + 512] ^= 0xFF; // guard of block 9
    good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 8, 4, 3), &bad);
    for protect in [0, 1] {
        let cdb = rw(RwKind::Read, Form::Ten, 8, 4, protect);
        let mut buf = vec![0u8; 4 * 520];
        let (got, len) = lun.run_wire_into(&nx, &cdb, true, &[], &mut buf);
        assert_eq!(got.status, Status::CHECK_CONDITION);
        assert_eq!(len, 0);
        assert_guard_failure(&got, 9);
    }
}

/// `r` is ABORTED COMMAND, LOGICAL BLOCK GUARD CHECK FAILED naming `lba`.
fn assert_guard_failure(r: &Response, lba: u64) {
    let s = Sense::parse(r.sense.as_deref().unwrap()).unwrap();
    assert_eq!(
        (s.key, s.asc_pair(), s.information),
        (
            SenseKey::ABORTED_COMMAND,
            asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED,
            Some(lba)
        )
    );
}

/// `run_read_dix` answers as `run_wire` does for a READ that passes PI, with the
/// blocks and their tuples in DIX form (what `run_wire` interleaves): Types 1
/// and 3, intervals 512 and 4096, RDPROTECT with and without checks; a tuple
/// that fails its check gives the same sense and nothing written; `reads_dix`
/// refuses what it does not serve.
#[test]
fn read_dix_matches_the_interleaved_read() {
    let dir = tempfile::tempdir().unwrap();
    for lun in [ram(1, 512, 64), file_lun(dir.path(), 3, 4096, 16)] {
        let pi = lun.desc().protection.pi_type;
        let bs = lun.block_size() as usize;
        let nx = ready(&lun, 1);
        let data = pattern(4 * bs, 5);
        let wire = dif(&data, bs as u32, 2, pi == 3);
        good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 2, 4, 1), &wire);
        for (protect, form) in [(3, Form::Ten), (1, Form::Ten), (3, Form::Sixteen)] {
            let cdb = rw(RwKind::Read, form, 2, 4, protect);
            assert!(lun.reads_dix(&cdb));
            let want = lun.run_wire(&nx, &cdb, true, &[]);
            assert_eq!(want.status, Status::GOOD);
            let mut buf = vec![0xA5u8; 4 * (bs + 8) + 16];
            let (d, p) = buf.split_at_mut(4 * bs);
            let (got, len) = lun.run_read_dix(&nx, &cdb, true, d, p);
            assert_eq!((got.status, len), (Status::GOOD, 4 * (bs + 8)));
            for b in 0..4 {
                let blk = &want.data[b * (bs + 8)..(b + 1) * (bs + 8)];
                assert_eq!(&buf[b * bs..(b + 1) * bs], &blk[..bs], "block {b}");
                let t = 4 * bs + 8 * b;
                assert_eq!(&buf[t..t + 8], &blk[bs..], "tuple {b}");
            }
            assert!(buf[4 * (bs + 8)..].iter().all(|&x| x == 0xA5));
        }
        assert!(!lun.reads_dix(&rw(RwKind::Read, Form::Ten, 2, 4, 0)));
        assert!(!lun.reads_dix(&rw(RwKind::Read, Form::Ten, 2, 0, 3)));
        assert!(!lun.reads_dix(&rw(RwKind::Write, Form::Ten, 2, 4, 3)));
    }
    assert!(!ram(0, 512, 64).reads_dix(&rw(RwKind::Read, Form::Ten, 2, 4, 3)));

    let lun = ram(1, 512, 64);
    let nx = ready(&lun, 1);
    let mut bad = dif(&pattern(4 * 512, 3), 512, 8, false);
    bad[512 + 8 + 512] ^= 0xFF; // guard of block 9
    good(&lun, &nx, &rw(RwKind::Write, Form::Ten, 8, 4, 3), &bad);
    let cdb = rw(RwKind::Read, Form::Ten, 8, 4, 1);
    let (mut d, mut p) = (vec![0u8; 4 * 512], vec![0u8; 32]);
    let (got, len) = lun.run_read_dix(&nx, &cdb, true, &mut d, &mut p);
    assert_eq!((got.status, len), (Status::CHECK_CONDITION, 0));
    assert_eq!(got.sense, lun.run_wire(&nx, &cdb, true, &[]).sense);
    assert_guard_failure(&got, 9);
    // Buffers too short for the read: an internal failure, not a panic.
    let cdb = rw(RwKind::Read, Form::Ten, 0, 4, 3);
    let (got, len) = lun.run_read_dix(&nx, &cdb, true, &mut d[..100], &mut p);
    assert_eq!((got.status, len), (Status::CHECK_CONDITION, 0));
}

/// `run_write_dix` stores what `run_wire` stores for a WRITE that passes PI, from
/// the blocks and tuples in DIX form: Types 1 and 3, intervals 512 and 4096;
/// WRPROTECT 3 stores a bad tuple unchecked (the hardware checked), WRPROTECT 1
/// refuses it with the failing LBA and writes nothing; wrong lengths are
/// refused without a panic; `writes_dix` refuses what it does not serve.
#[test]
fn write_dix_stores_what_the_interleaved_write_stores() {
    let dir = tempfile::tempdir().unwrap();
    for lun in [ram(1, 512, 64), file_lun(dir.path(), 3, 4096, 16)] {
        let pi = lun.desc().protection.pi_type;
        let bs = lun.block_size() as usize;
        let nx = ready(&lun, 1);
        let data = pattern(4 * bs, 9);
        let wire = dif(&data, bs as u32, 6, pi == 3);
        let tuples: Vec<u8> = wire
            .chunks_exact(bs + 8)
            .flat_map(|b| b[bs..].to_vec())
            .collect();
        for (protect, form) in [(1, Form::Ten), (3, Form::Sixteen)] {
            let cdb = rw(RwKind::Write, form, 6, 4, protect);
            assert!(lun.writes_dix(&cdb));
            let got = lun.run_write_dix(&nx, &cdb, true, &data, &tuples);
            assert_eq!(got.status, Status::GOOD);
            let back = good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 6, 4, 3), &[]);
            assert_eq!(back, wire);
        }
        assert!(!lun.writes_dix(&rw(RwKind::Write, Form::Ten, 6, 4, 0)));
        assert!(!lun.writes_dix(&rw(RwKind::Write, Form::Ten, 6, 0, 1)));
        assert!(!lun.writes_dix(&rw(RwKind::Read, Form::Ten, 6, 4, 1)));
    }
    assert!(!ram(0, 512, 64).writes_dix(&rw(RwKind::Write, Form::Ten, 2, 4, 1)));

    let lun = ram(1, 512, 64);
    let nx = ready(&lun, 1);
    let data = pattern(4 * 512, 4);
    let mut tuples: Vec<u8> = dif(&data, 512, 8, false)
        .chunks_exact(520)
        .flat_map(|b| b[512..].to_vec())
        .collect();
    tuples[2 * 8] ^= 0xFF; // guard of block 10
    let before = good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 8, 4, 3), &[]);
    let got = lun.run_write_dix(
        &nx,
        &rw(RwKind::Write, Form::Ten, 8, 4, 1),
        true,
        &data,
        &tuples,
    );
    assert_eq!(got.status, Status::CHECK_CONDITION);
    assert_guard_failure(&got, 10);
    assert_eq!(
        good(&lun, &nx, &rw(RwKind::Read, Form::Ten, 8, 4, 3), &[]),
        before
    );
    let got = lun.run_write_dix(
        &nx,
        &rw(RwKind::Write, Form::Ten, 8, 4, 3),
        true,
        &data,
        &tuples,
    );
    assert_eq!(got.status, Status::GOOD);
    let s = check(&lun, &nx, &rw(RwKind::Read, Form::Ten, 8, 4, 1), &[]);
    assert_eq!(s.information, Some(10));
    let cdb = rw(RwKind::Write, Form::Ten, 8, 4, 3);
    let got = lun.run_write_dix(&nx, &cdb, true, &data[..512], &tuples);
    assert_eq!(got.status, Status::CHECK_CONDITION);
    let got = lun.run_write_dix(&nx, &cdb, true, &data, &tuples[..8]);
    assert_eq!(got.status, Status::CHECK_CONDITION);
}
