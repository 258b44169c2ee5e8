//! Smoke test of the fuzz targets: every checked-in seed of `fuzz/corpus/<target>/`,
//! mutations of them, and a bounded number of random inputs run through the same
//! `iscsi::fuzzing` functions the cargo-fuzz targets call.
//!
//! `ISCSI_WRITE_CORPUS=1 cargo test -p iscsi --test fuzz_corpus` rewrites the seeds from
//! the generators below (PDUs of the other tests and login transcripts).

use std::path::PathBuf;

use iscsi::fuzzing;
use iscsi::iser::{IserControl, IserHeader, IserMessage, RemoteBuffer};
use iscsi::pdu::*;
use iscsi::text::TextKeys;
use iscsi::{Codec, Digests, WireConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("pdu", fuzzing::pdu),
    ("framer", fuzzing::framer),
    ("login_target", fuzzing::login_target),
    ("login_initiator", fuzzing::login_initiator),
    ("text", fuzzing::text),
    ("iser", fuzzing::iser),
];

fn sample_pdus() -> Vec<Pdu> {
    let mut cdb32 = vec![0u8; 32];
    cdb32[0] = 0x7f;
    cdb32[7] = 0x18;
    cdb32[9] = 0x09;
    vec![
        Pdu::new(NopOut {
            immediate: true,
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 5,
            exp_stat_sn: 9,
            lun: 0,
        }),
        Pdu::with_data(
            NopIn {
                itt: RESERVED_TAG,
                ttt: 3,
                stat_sn: 9,
                exp_cmd_sn: 5,
                max_cmd_sn: 40,
                lun: 0,
            },
            b"ping".to_vec(),
        ),
        Pdu::new(ScsiCommand {
            read: true,
            expected_data_transfer_length: 4096,
            cdb: [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0].to_vec(),
            itt: 2,
            cmd_sn: 5,
            ..ScsiCommand::default()
        }),
        Pdu::with_data(
            ScsiCommand {
                write: true,
                expected_data_transfer_length: 8192,
                cdb: cdb32,
                itt: 3,
                ..ScsiCommand::default()
            },
            vec![0xab; 512],
        ),
        Pdu::new(ScsiCommand {
            read: true,
            write: true,
            expected_data_transfer_length: 512,
            bidi_read_length: Some(1024),
            ..ScsiCommand::default()
        }),
        Pdu::with_data(
            ScsiResponse {
                residual: Residual::Underflow(512),
                status: 2,
                itt: 2,
                stat_sn: 10,
                ..ScsiResponse::default()
            },
            vec![
                0, 18, 0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
            ],
        ),
        Pdu::new(TmfRequest {
            immediate: true,
            function: TmfFunction::AbortTask,
            lun: 0,
            itt: 4,
            referenced_task_tag: 2,
            cmd_sn: 6,
            exp_stat_sn: 11,
            ref_cmd_sn: 5,
            exp_data_sn: 0,
        }),
        Pdu::new(TmfResponse {
            response: TmfResponseCode::Complete,
            itt: 4,
            stat_sn: 11,
            exp_cmd_sn: 6,
            max_cmd_sn: 40,
        }),
        Pdu::with_data(
            TextRequest {
                immediate: true,
                final_: true,
                continue_: false,
                lun: 0,
                itt: 5,
                ttt: RESERVED_TAG,
                cmd_sn: 7,
                exp_stat_sn: 12,
            },
            b"SendTargets=All\0".to_vec(),
        ),
        Pdu::with_data(
            TextResponse {
                final_: true,
                continue_: false,
                lun: 0,
                itt: 5,
                ttt: RESERVED_TAG,
                stat_sn: 12,
                exp_cmd_sn: 7,
                max_cmd_sn: 40,
            },
            b"TargetName=iqn.2026-01.org.example:fuzz\0TargetAddress=192.0.2.1:3260,1\0".to_vec(),
        ),
        Pdu::with_data(
            DataOut {
                final_: true,
                itt: 3,
                ttt: 0x10,
                data_sn: 0,
                buffer_offset: 512,
                ..DataOut::default()
            },
            vec![1; 100],
        ),
        Pdu::with_data(
            DataIn {
                final_: true,
                status: Some(0),
                residual: Residual::Overflow(4),
                itt: 2,
                data_sn: 1,
                buffer_offset: 2048,
                ..DataIn::default()
            },
            vec![2; 2048],
        ),
        Pdu::new(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt: 6,
            cid: 0,
            cmd_sn: 8,
            exp_stat_sn: 13,
        }),
        Pdu::new(LogoutResponse {
            response: LogoutResponseCode::Success,
            itt: 6,
            stat_sn: 13,
            exp_cmd_sn: 8,
            max_cmd_sn: 40,
            time2wait: 2,
            time2retain: 20,
        }),
        Pdu::new(SnackRequest {
            snack_type: SnackType::Status,
            lun: 0,
            itt: 2,
            ttt_or_snack_tag: RESERVED_TAG,
            exp_stat_sn: 9,
            beg_run: 3,
            run_length: 0,
        }),
        Pdu::new(R2t {
            itt: 3,
            ttt: 0x10,
            r2t_sn: 0,
            buffer_offset: 512,
            desired_data_transfer_length: 7680,
            ..R2t::default()
        }),
        Pdu::with_data(
            AsyncMessage {
                lun: 0,
                stat_sn: 14,
                exp_cmd_sn: 8,
                max_cmd_sn: 40,
                async_event: AsyncEvent::LogoutRequest,
                async_vcode: 0,
                parameter1: 0,
                parameter2: 5,
                parameter3: 0,
            },
            vec![0, 0, 0, 0],
        ),
        reject_pdu(RejectReason::InvalidPduField, &[0x01; 48], 15, 8, 40),
    ]
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let pdus = sample_pdus();
    let mut out = Vec::new();
    match target {
        "pdu" => {
            for (i, p) in pdus.iter().enumerate() {
                let sel = (i % 4) as u8;
                let c = WireConfig {
                    digests: Digests {
                        header: sel & 1 != 0,
                        data: sel & 2 != 0,
                    },
                    limits: PduLimits {
                        max_recv_data_segment_length: 8192,
                    },
                };
                let mut s = vec![sel];
                p.encode(&c, &mut s);
                out.push(s);
            }
            let (req, resp) = fuzzing::login_transcript(0);
            for stream in [req, resp] {
                let mut s = vec![0u8];
                let frames = stream.len().min(
                    48 + u32::from_be_bytes([0, stream[5], stream[6], stream[7]]) as usize + 3,
                ) & !3;
                s.extend_from_slice(&stream[..frames]);
                out.push(s);
            }
        }
        "framer" => {
            for (k, chunk) in [1u8, 7, 48, 100, 255].into_iter().enumerate() {
                for sel in 0..4u8 {
                    let c = WireConfig {
                        digests: Digests {
                            header: sel & 1 != 0,
                            data: sel & 2 != 0,
                        },
                        limits: PduLimits::default(),
                    };
                    let mut s = vec![sel, chunk];
                    for p in pdus.iter().skip(k * 3).take(6) {
                        p.encode(&c, &mut s);
                    }
                    out.push(s);
                }
            }
        }
        "login_target" => {
            for scenario in 0..4 {
                let (req, _) = fuzzing::login_transcript(scenario);
                out.push(req.clone());
                // Variants: truncated, and one bit flipped in a BHS field.
                out.push(req[..req.len() / 2].to_vec());
                for pos in [1usize, 3, 14, 20, 24] {
                    let mut v = req.clone();
                    v[pos] ^= 0x01;
                    out.push(v);
                }
            }
        }
        "login_initiator" => {
            for scenario in 0..4u8 {
                let (_, resp) = fuzzing::login_transcript(scenario);
                let mut s = vec![scenario];
                s.extend_from_slice(&resp);
                out.push(s.clone());
                for pos in [2usize, 15, 25, 37, 38] {
                    let mut v = s.clone();
                    v[pos] ^= 0x01;
                    out.push(v);
                }
            }
        }
        "text" => {
            let mut k = TextKeys::new();
            for (a, b) in [
                ("InitiatorName", "iqn.2026-01.org.example:host"),
                ("SessionType", "Normal"),
                ("HeaderDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("CHAP_C", "0x0123456789abcdef0123456789abcdef"),
                ("CHAP_R", "0bASNFZ4mrze8BI0VniavN7w=="),
                ("X-com.example.vendor", ""),
            ] {
                k.push(a, b);
                out.push(k.encode());
            }
            for p in &pdus {
                if !p.data.is_empty() {
                    out.push(p.data.clone());
                }
            }
            for extra in [
                &b"AuthMethod=CHAP,None\0"[..],
                b"SendTargets=All\0",
                b"TargetAddress=[2001:db8::1]:3260,1\0",
                b"IFMarkInt=2048~8192\0",
                b"RDMAExtensions=Yes\0TargetRecvDataSegmentLength=262144\0",
            ] {
                out.push(extra.to_vec());
            }
            out.push(b"A=1\0\0\0B=2\0".to_vec());
            out.push(b"NoEquals\0".to_vec());
        }
        "iser" => {
            for (i, p) in pdus.iter().enumerate() {
                let header = IserHeader::Control(IserControl {
                    write: (i % 2 == 0).then_some(RemoteBuffer {
                        stag: 0x1234 + i as u32,
                        va: 0x7f00_0000_0000 + i as u64 * 4096,
                    }),
                    read: (i % 3 == 0).then_some(RemoteBuffer {
                        stag: 0x5678,
                        va: 0x7f00_1000_0000,
                    }),
                });
                out.push(
                    IserMessage {
                        header,
                        pdu: Some(p.clone()),
                    }
                    .to_bytes(&PduLimits::default()),
                );
            }
            out.push(
                vec![0x20, 0xaa, 0x00, 0x10]
                    .into_iter()
                    .chain([0; 24])
                    .collect(),
            );
            out.push(
                vec![0x31, 0xaa, 0x00, 0x04]
                    .into_iter()
                    .chain([0; 24])
                    .collect(),
            );
        }
        other => panic!("no seeds for {other}"),
    }
    out
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

#[test]
fn seed_corpus_runs_clean() {
    let write = std::env::var_os("ISCSI_WRITE_CORPUS").is_some();
    for (name, f) in TARGETS {
        let dir = corpus_dir(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds(name).iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
            }
        }
        let mut count = 0;
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            f(&bytes);
            count += 1;
        }
        assert!(count >= 20, "corpus of {name} has only {count} seeds");
    }
}

#[test]
fn generated_seeds_run_clean() {
    for (name, f) in TARGETS {
        for s in seeds(name) {
            f(&s);
        }
    }
}

#[test]
fn login_transcripts_reach_full_feature_phase() {
    for scenario in 0..4 {
        let (req, resp) = fuzzing::login_transcript(scenario);
        let last = resp.len().saturating_sub(48);
        let mut found_final = false;
        let mut pos = 0;
        while pos + 48 <= resp.len() {
            let bhs = &resp[pos..pos + 48];
            if bhs[1] & 0x83 == 0x83 && bhs[36] == 0 {
                found_final = true;
            }
            let dsl = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
            pos += 48 + dsl + ((4 - dsl % 4) % 4);
        }
        assert!(
            found_final,
            "scenario {scenario}: no final Login Response (last at {last})"
        );
        assert!(!req.is_empty());
    }
}

#[test]
fn random_and_mutated_inputs_run_clean() {
    let mut rng = SmallRng::seed_from_u64(0x15c5_1ee7);
    for (name, f) in TARGETS {
        let seeds = seeds(name);
        for _ in 0..1500 {
            let len = rng.gen_range(0..400);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            f(&bytes);
        }
        for _ in 0..1500 {
            let mut s = seeds[rng.gen_range(0..seeds.len())].clone();
            if s.is_empty() {
                continue;
            }
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..s.len());
                s[i] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                s.truncate(rng.gen_range(0..s.len()));
            }
            f(&s);
        }
    }
}
