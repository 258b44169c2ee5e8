//! PDU codec and framer: round trips for every PDU type, byte-exact vectors, digests,
//! limits and malformed input.

mod common;

use iscsi::pdu::*;
use iscsi::{Action, Codec, DecodeError, Digests, FrameError, Framer, WireConfig};
use proptest::prelude::*;

fn cfg(header: bool, data: bool) -> WireConfig {
    WireConfig {
        digests: Digests { header, data },
        limits: PduLimits {
            max_recv_data_segment_length: 1 << 16,
        },
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let clean: String = s.split_whitespace().collect();
    hex::decode(clean).expect("test hex")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity(pdu in common::pdu(), hd in any::<bool>(), dd in any::<bool>()) {
        let c = cfg(hd, dd);
        let bytes = pdu.to_bytes(&c);
        prop_assert_eq!(bytes.len() % 4, 0);
        let back = Pdu::decode(&bytes, &c).unwrap();
        prop_assert_eq!(&back, &pdu);
        // Re-encoding is byte-identical.
        prop_assert_eq!(back.to_bytes(&c), bytes);
    }

    #[test]
    fn framer_reassembles_any_chunking(pdus in proptest::collection::vec(common::pdu(), 1..6), chunk in 1usize..97, hd in any::<bool>(), dd in any::<bool>()) {
        let c = cfg(hd, dd);
        let mut stream = Vec::new();
        for p in &pdus {
            p.encode(&c, &mut stream);
        }
        let mut framer = Framer::new(c);
        let mut out = Vec::new();
        let mut input = &stream[..];
        let mut rounds = 0;
        while !input.is_empty() {
            rounds += 1;
            prop_assert!(rounds < 100_000);
            let take = chunk.min(input.len());
            let n = framer.feed(&input[..take]);
            input = &input[n..];
            while let Some(r) = framer.poll() {
                out.push(r.unwrap());
            }
        }
        prop_assert!(framer.is_idle());
        prop_assert_eq!(out, pdus);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), hd in any::<bool>(), dd in any::<bool>()) {
        let _ = Pdu::decode(&bytes, &cfg(hd, dd));
        let mut f = Framer::new(cfg(hd, dd));
        let mut input = &bytes[..];
        for _ in 0..1000 {
            if input.is_empty() || f.is_broken() {
                break;
            }
            let n = f.feed(input);
            input = &input[n..];
            while f.poll().is_some() {}
            if n == 0 && f.needed() == 0 {
                break;
            }
        }
    }
}

/// SCSI Command READ (32) with a 32-byte CDB: 16 bytes in the BHS, 16 in an Extended
/// CDB AHS (AHSLength 17 = 16 CDB bytes + the reserved byte; 20 bytes, 5 words).
#[test]
fn scsi_command_with_32_byte_cdb_in_extended_cdb_ahs() {
    let mut cdb = vec![0u8; 32];
    cdb[0] = 0x7f; // VARIABLE LENGTH CDB
    cdb[7] = 0x18; // ADDITIONAL CDB LENGTH
    cdb[8..10].copy_from_slice(&[0x00, 0x09]); // READ (32)
    cdb[10] = 0x20; // RDPROTECT = 001b
    cdb[12..20].copy_from_slice(&0x1234u64.to_be_bytes()); // LBA
    cdb[20..24].copy_from_slice(&0x1234u32.to_be_bytes()); // expected initial ref tag
    cdb[28..32].copy_from_slice(&8u32.to_be_bytes()); // transfer length
    let cmd = ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: TaskAttr::Simple,
        lun: 0x0001_0000_0000_0000,
        itt: 0x0000_0010,
        expected_data_transfer_length: 8 * 520,
        cmd_sn: 0x0000_0022,
        exp_stat_sn: 0x0000_0033,
        cdb,
        bidi_read_length: None,
    };
    let expected = unhex(
        "01 c1 00 00 05 00 00 00  00 01 00 00 00 00 00 00
         00 00 00 10 00 00 10 40  00 00 00 22 00 00 00 33
         7f 00 00 00 00 00 00 18  00 09 20 00 00 00 00 00
         00 11 01 00
         00 00 12 34 00 00 12 34  00 00 00 00 00 00 00 08",
    );
    let c = WireConfig::default();
    let bytes = Pdu::new(cmd.clone()).to_bytes(&c);
    assert_eq!(hex::encode(&bytes), hex::encode(&expected));
    assert_eq!(Pdu::decode(&expected, &c).unwrap(), Pdu::new(cmd));
}

/// The RFC 3720 B.4 READ command PDU, with a header digest appended, decodes.
#[test]
fn rfc_read_pdu_with_header_digest() {
    let mut bytes = unhex(
        "01 c0 00 00 00 00 00 00 00 00 00 00 00 00 00 00 14 00 00 00 00 00 04 00
         00 00 00 14 00 00 00 18 28 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00",
    );
    bytes.extend_from_slice(&[0x56, 0x3a, 0x96, 0xd9]);
    let c = cfg(true, false);
    let pdu = Pdu::decode(&bytes, &c).unwrap();
    let Header::ScsiCommand(cmd) = &pdu.header else {
        panic!("not a SCSI Command: {pdu:?}")
    };
    assert_eq!(
        (
            cmd.itt,
            cmd.expected_data_transfer_length,
            cmd.cmd_sn,
            cmd.exp_stat_sn
        ),
        (0x1400_0000, 0x400, 0x14, 0x18)
    );
    assert_eq!(cmd.cdb[0], 0x28);
    assert_eq!(pdu.to_bytes(&c), bytes);
    bytes[50] ^= 1;
    assert_eq!(
        Pdu::decode(&bytes, &c).unwrap_err().action(),
        Action::CloseConnection
    );
}

#[test]
fn data_digest_error_calls_for_reject_and_framer_continues() {
    let c = cfg(true, true);
    let p = Pdu::with_data(
        DataOut {
            final_: true,
            itt: 1,
            ttt: RESERVED_TAG,
            ..DataOut::default()
        },
        vec![7; 10],
    );
    let mut bytes = p.to_bytes(&c);
    let n = bytes.len();
    bytes[n - 6] ^= 0xff; // inside the data
    let good = Pdu::new(NopOut {
        itt: 2,
        ttt: RESERVED_TAG,
        ..NopOut::default()
    })
    .to_bytes(&c);
    bytes.extend_from_slice(&good);
    let mut f = Framer::new(c);
    let used = f.feed(&bytes);
    let err = f.poll().unwrap().unwrap_err();
    assert!(matches!(err.error, DecodeError::DataDigest { .. }));
    assert_eq!(err.action(), Action::Reject(RejectReason::DataDigestError));
    // The Reject carries the offending header back.
    let bhs = err.bhs.unwrap();
    let reject = reject_pdu(RejectReason::DataDigestError, &bhs, 5, 6, 7);
    assert_eq!(reject.data, p.bhs_bytes().to_vec());
    assert!(!f.is_broken());
    let used2 = f.feed(&bytes[used..]);
    assert_eq!(used + used2, bytes.len());
    assert_eq!(f.poll().unwrap().unwrap().header.itt(), 2);
}

#[test]
fn oversized_data_segment_is_refused_before_buffering() {
    let c = WireConfig {
        digests: Digests::NONE,
        limits: PduLimits {
            max_recv_data_segment_length: 512,
        },
    };
    let p = Pdu::with_data(
        DataOut {
            ttt: RESERVED_TAG,
            ..DataOut::default()
        },
        vec![0; 513],
    );
    let bytes = p.to_bytes(&c);
    let mut f = Framer::new(c);
    assert_eq!(f.needed(), 48);
    assert_eq!(f.feed(&bytes), 48, "only the BHS is taken");
    let FrameError { error, .. } = f.poll().unwrap().unwrap_err();
    assert_eq!(
        error,
        DecodeError::DataSegmentTooLong {
            len: 513,
            limit: 512
        }
    );
    assert_eq!(error.action(), Action::CloseConnection);
    assert!(f.is_broken());
    assert_eq!(f.feed(&bytes[48..]), 0);
    assert_eq!(
        Pdu::decode(&bytes, &c).unwrap_err(),
        DecodeError::DataSegmentTooLong {
            len: 513,
            limit: 512
        }
    );
}

#[test]
fn framer_reports_what_it_needs() {
    let c = cfg(true, true);
    let bytes = Pdu::with_data(
        NopOut {
            ttt: RESERVED_TAG,
            ..NopOut::default()
        },
        vec![1, 2, 3, 4, 5],
    )
    .to_bytes(&c);
    assert_eq!(bytes.len(), 48 + 4 + 8 + 4);
    let mut f = Framer::new(c);
    assert_eq!(f.feed(&bytes[..10]), 10);
    assert_eq!(f.needed(), 38);
    assert_eq!(f.feed(&bytes[10..48]), 38);
    // The HeaderDigest first, then the padded data and its digest.
    assert_eq!(f.needed(), 4);
    assert_eq!(
        f.feed(&bytes[48..]),
        16,
        "feed goes on past the checked header"
    );
    assert!(f.poll().is_some());
    let mut f = Framer::new(c);
    assert_eq!(f.feed(&bytes[..52]), 52);
    assert_eq!(f.needed(), 12);
    assert!(f.poll().is_none());
    assert_eq!(f.feed(&bytes[52..]), 12);
    assert_eq!(f.needed(), 0);
    assert!(f.poll().unwrap().is_ok());
    assert_eq!(f.needed(), 48);
}

#[test]
fn malformed_fields_are_named() {
    let c = WireConfig::default();
    let mut b = Pdu::new(ScsiResponse {
        residual: Residual::Underflow(4),
        ..ScsiResponse::default()
    })
    .to_bytes(&c);
    b[1] |= 0x04; // O and U together
    assert_eq!(
        Pdu::decode(&b, &c).unwrap_err(),
        DecodeError::InvalidField {
            field: "SCSI Response O/U bits",
            value: 0x86
        }
    );

    let mut b = Pdu::new(ScsiCommand::default()).to_bytes(&c);
    b[1] = 0x85; // ATTR 5
    assert_eq!(
        Pdu::decode(&b, &c).unwrap_err().action(),
        Action::Reject(RejectReason::InvalidPduField)
    );
    b[1] = 0x81;
    b[20] = 1; // EDTL without R or W
    assert!(matches!(
        Pdu::decode(&b, &c).unwrap_err(),
        DecodeError::InvalidField { .. }
    ));

    let mut b = Pdu::new(LoginRequest {
        transit: true,
        continue_: false,
        csg: Stage::Security,
        nsg: Stage::Operational,
        version_max: 0,
        version_min: 0,
        isid: Isid::default(),
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
    })
    .to_bytes(&c);
    b[1] |= 0x40; // T and C
    assert_eq!(
        Pdu::decode(&b, &c).unwrap_err().action(),
        Action::Reject(RejectReason::ProtocolError)
    );
    b[1] = 0x80 | 2 << 2 | 1; // CSG 2
    assert_eq!(
        Pdu::decode(&b, &c).unwrap_err(),
        DecodeError::InvalidField {
            field: "CSG",
            value: 2
        }
    );

    let mut b = Pdu::new(NopIn::default()).to_bytes(&c);
    b[0] = 0x15; // unknown initiator opcode
    assert_eq!(
        Pdu::decode(&b, &c).unwrap_err(),
        DecodeError::UnknownOpcode(0x15)
    );
    assert_eq!(
        DecodeError::UnknownOpcode(0x15).action(),
        Action::Reject(RejectReason::CommandNotSupported)
    );
    b[0] = 0x1c; // vendor specific: preserved
    assert!(matches!(
        Pdu::decode(&b, &c).unwrap().header,
        Header::Vendor { .. }
    ));

    let mut b = Pdu::new(NopIn::default()).to_bytes(&c);
    b[4] = 1; // AHS on a NOP-In
    b.extend_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(
        Pdu::decode(&b, &c).unwrap_err(),
        DecodeError::InvalidField {
            field: "TotalAHSLength",
            ..
        }
    ));

    let b = Pdu::new(NopIn::default()).to_bytes(&c);
    assert_eq!(
        Pdu::decode(&b[..47], &c).unwrap_err(),
        DecodeError::Truncated("BHS")
    );
    let mut long = b.clone();
    long.extend_from_slice(&[0; 4]);
    assert_eq!(
        Pdu::decode(&long, &c).unwrap_err(),
        DecodeError::TrailingBytes(4)
    );
}

#[test]
fn bidirectional_read_length_ahs() {
    let cmd = ScsiCommand {
        read: true,
        write: true,
        expected_data_transfer_length: 512,
        bidi_read_length: Some(0x0001_0000),
        ..ScsiCommand::default()
    };
    let bytes = Pdu::new(cmd.clone()).to_bytes(&WireConfig::default());
    assert_eq!(bytes[4], 2);
    assert_eq!(
        &bytes[48..56],
        &[0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00, 0x00]
    );
    assert_eq!(
        Pdu::decode(&bytes, &WireConfig::default()).unwrap(),
        Pdu::new(cmd)
    );
}

#[test]
fn header_digest_is_checked_before_the_lengths_are_trusted() {
    let c = cfg(true, true);
    let mut bytes = Pdu::with_data(
        NopOut {
            ttt: RESERVED_TAG,
            ..NopOut::default()
        },
        vec![9; 100],
    )
    .to_bytes(&c);
    bytes[6] = 0x7f; // corrupt DataSegmentLength (now beyond the limit)
    let mut f = Framer::new(c);
    assert_eq!(f.feed(&bytes), 52, "BHS and HeaderDigest only");
    let err = f.poll().unwrap().unwrap_err();
    assert!(
        matches!(err.error, DecodeError::HeaderDigest { .. }),
        "{err:?}"
    );
    assert!(f.is_broken());
    // The same with a plausible length: reported at once, without waiting for data.
    let mut bytes = Pdu::with_data(
        NopOut {
            ttt: RESERVED_TAG,
            ..NopOut::default()
        },
        vec![9; 100],
    )
    .to_bytes(&c);
    bytes[7] = 0x10;
    let mut f = Framer::new(c);
    assert_eq!(f.feed(&bytes[..52]), 52);
    assert!(matches!(
        f.poll().unwrap().unwrap_err().error,
        DecodeError::HeaderDigest { .. }
    ));
}
