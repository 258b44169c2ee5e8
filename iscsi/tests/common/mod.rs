//! Shared proptest strategies: one per PDU type, over every field.

#![allow(dead_code)]

use iscsi::pdu::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn residual() -> impl Strategy<Value = Residual> {
    prop_oneof![
        Just(Residual::None),
        any::<u32>().prop_map(Residual::Overflow),
        any::<u32>().prop_map(Residual::Underflow)
    ]
}

fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        Just(Stage::Security),
        Just(Stage::Operational),
        Just(Stage::FullFeature)
    ]
}

fn isid() -> impl Strategy<Value = Isid> {
    any::<[u8; 6]>().prop_map(Isid)
}

fn login_flags() -> impl Strategy<Value = (bool, bool)> {
    prop_oneof![
        Just((false, false)),
        Just((true, false)),
        Just((false, true))
    ]
}

pub fn scsi_command() -> impl Strategy<Value = ScsiCommand> {
    (
        (any::<bool>(), any::<bool>(), any::<bool>(), 0u8..=4),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        prop_oneof![Just(16usize), 17usize..=64, Just(32usize), Just(260usize)],
        proptest::option::of(any::<u32>()),
        any::<u8>(),
    )
        .prop_map(
            |((imm, fin, read, attr), (lun, itt, edtl, cmd_sn, esn), cdb_len, bidi, seed)| {
                let write = !fin || seed & 1 == 1;
                ScsiCommand {
                    immediate: imm,
                    final_: fin,
                    read,
                    write,
                    attr: TaskAttr::from(attr),
                    lun,
                    itt,
                    expected_data_transfer_length: if read || write { edtl } else { 0 },
                    cmd_sn,
                    exp_stat_sn: esn,
                    cdb: (0..cdb_len)
                        .map(|i| (i as u8).wrapping_mul(seed | 1))
                        .collect(),
                    bidi_read_length: bidi,
                }
            },
        )
}

pub fn header() -> impl Strategy<Value = Header> {
    let u = any::<u32>;
    prop_oneof![
        (any::<bool>(), any::<u64>(), u(), u(), u(), u()).prop_map(
            |(immediate, lun, itt, ttt, cmd_sn, exp_stat_sn)| {
                Header::NopOut(NopOut {
                    immediate,
                    lun,
                    itt,
                    ttt,
                    cmd_sn,
                    exp_stat_sn,
                })
            }
        ),
        (any::<u64>(), u(), u(), u(), u(), u()).prop_map(
            |(lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
                Header::NopIn(NopIn {
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                })
            }
        ),
        scsi_command().prop_map(Header::ScsiCommand),
        (
            residual(),
            residual(),
            any::<u8>(),
            any::<u8>(),
            (u(), u(), u(), u(), u(), u())
        )
            .prop_map(
                |(
                    bidi_read_residual,
                    residual,
                    response,
                    status,
                    (itt, snack_tag, stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn),
                )| {
                    Header::ScsiResponse(ScsiResponse {
                        bidi_read_residual,
                        residual,
                        response,
                        status,
                        itt,
                        snack_tag,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        exp_data_sn,
                    })
                }
            ),
        (
            any::<bool>(),
            0u8..128,
            any::<u64>(),
            (u(), u(), u(), u(), u(), u())
        )
            .prop_map(
                |(
                    immediate,
                    f,
                    lun,
                    (itt, referenced_task_tag, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn),
                )| {
                    Header::TmfRequest(TmfRequest {
                        immediate,
                        function: TmfFunction::from(f),
                        lun,
                        itt,
                        referenced_task_tag,
                        cmd_sn,
                        exp_stat_sn,
                        ref_cmd_sn,
                        exp_data_sn,
                    })
                }
            ),
        (any::<u8>(), u(), u(), u(), u()).prop_map(|(r, itt, stat_sn, exp_cmd_sn, max_cmd_sn)| {
            Header::TmfResponse(TmfResponse {
                response: TmfResponseCode::from(r),
                itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
            })
        }),
        (
            login_flags(),
            stage(),
            stage(),
            any::<(u8, u8)>(),
            isid(),
            any::<u16>(),
            any::<u16>(),
            (u(), u(), u())
        )
            .prop_map(
                |(
                    (transit, continue_),
                    csg,
                    nsg,
                    (version_max, version_min),
                    isid,
                    tsih,
                    cid,
                    (itt, cmd_sn, exp_stat_sn),
                )| {
                    Header::LoginRequest(LoginRequest {
                        transit,
                        continue_,
                        csg,
                        nsg,
                        version_max,
                        version_min,
                        isid,
                        tsih,
                        itt,
                        cid,
                        cmd_sn,
                        exp_stat_sn,
                    })
                }
            ),
        (
            login_flags(),
            stage(),
            stage(),
            any::<(u8, u8)>(),
            isid(),
            any::<u16>(),
            any::<u16>(),
            (u(), u(), u(), u())
        )
            .prop_map(
                |(
                    (transit, continue_),
                    csg,
                    nsg,
                    (version_max, version_active),
                    isid,
                    tsih,
                    status,
                    (itt, stat_sn, exp_cmd_sn, max_cmd_sn),
                )| {
                    Header::LoginResponse(LoginResponse {
                        transit,
                        continue_,
                        csg,
                        nsg,
                        version_max,
                        version_active,
                        isid,
                        tsih,
                        itt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        status: LoginStatus(status),
                    })
                }
            ),
        (
            any::<bool>(),
            prop_oneof![
                Just((false, false)),
                Just((true, false)),
                Just((false, true))
            ],
            any::<u64>(),
            (u(), u(), u(), u())
        )
            .prop_map(
                |(immediate, (final_, continue_), lun, (itt, ttt, cmd_sn, exp_stat_sn))| {
                    Header::TextRequest(TextRequest {
                        immediate,
                        final_,
                        continue_,
                        lun,
                        itt,
                        ttt,
                        cmd_sn,
                        exp_stat_sn,
                    })
                }
            ),
        (
            prop_oneof![
                Just((false, false)),
                Just((true, false)),
                Just((false, true))
            ],
            any::<u64>(),
            (u(), u(), u(), u(), u())
        )
            .prop_map(
                |((final_, continue_), lun, (itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn))| {
                    Header::TextResponse(TextResponse {
                        final_,
                        continue_,
                        lun,
                        itt,
                        ttt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                    })
                }
            ),
        (any::<bool>(), any::<u64>(), (u(), u(), u(), u(), u())).prop_map(
            |(final_, lun, (itt, ttt, exp_stat_sn, data_sn, buffer_offset))| {
                Header::DataOut(DataOut {
                    final_,
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn,
                    data_sn,
                    buffer_offset,
                })
            }
        ),
        (
            any::<bool>(),
            any::<bool>(),
            residual(),
            proptest::option::of(any::<u8>()),
            any::<u64>(),
            (u(), u(), u(), u(), u(), u(), u())
        )
            .prop_map(
                |(
                    fin,
                    acknowledge,
                    residual,
                    status,
                    lun,
                    (itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, buffer_offset),
                )| {
                    Header::DataIn(DataIn {
                        final_: fin || status.is_some(),
                        acknowledge,
                        residual,
                        status,
                        lun,
                        itt,
                        ttt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        data_sn,
                        buffer_offset,
                    })
                }
            ),
        (any::<bool>(), 0u8..128, u(), any::<u16>(), u(), u()).prop_map(
            |(immediate, r, itt, cid, cmd_sn, exp_stat_sn)| {
                Header::LogoutRequest(LogoutRequest {
                    immediate,
                    reason: LogoutReason::from(r),
                    itt,
                    cid,
                    cmd_sn,
                    exp_stat_sn,
                })
            }
        ),
        (
            any::<u8>(),
            (u(), u(), u(), u()),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(
                |(r, (itt, stat_sn, exp_cmd_sn, max_cmd_sn), time2wait, time2retain)| {
                    Header::LogoutResponse(LogoutResponse {
                        response: LogoutResponseCode::from(r),
                        itt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        time2wait,
                        time2retain,
                    })
                }
            ),
        (0u8..16, any::<u64>(), (u(), u(), u(), u(), u())).prop_map(
            |(t, lun, (itt, ttt_or_snack_tag, exp_stat_sn, beg_run, run_length))| {
                Header::SnackRequest(SnackRequest {
                    snack_type: SnackType::from(t),
                    lun,
                    itt,
                    ttt_or_snack_tag,
                    exp_stat_sn,
                    beg_run,
                    run_length,
                })
            }
        ),
        (
            any::<u64>(),
            u(),
            0u32..u32::MAX,
            (u(), u(), u(), u(), u()),
            1u32..
        )
            .prop_map(
                |(
                    lun,
                    itt,
                    ttt,
                    (stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, buffer_offset),
                    desired_data_transfer_length,
                )| {
                    Header::R2t(R2t {
                        lun,
                        itt,
                        ttt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        r2t_sn,
                        buffer_offset,
                        desired_data_transfer_length,
                    })
                }
            ),
        (
            any::<u64>(),
            (u(), u(), u()),
            any::<(u8, u8)>(),
            any::<(u16, u16, u16)>()
        )
            .prop_map(
                |(
                    lun,
                    (stat_sn, exp_cmd_sn, max_cmd_sn),
                    (e, async_vcode),
                    (parameter1, parameter2, parameter3),
                )| {
                    Header::AsyncMessage(AsyncMessage {
                        lun,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        async_event: AsyncEvent::from(e),
                        async_vcode,
                        parameter1,
                        parameter2,
                        parameter3,
                    })
                }
            ),
        (any::<u8>(), u(), u(), u(), u()).prop_map(
            |(r, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn_or_r2t_sn)| {
                Header::Reject(Reject {
                    reason: RejectReason::from(r),
                    stat_sn,
                    exp_cmd_sn,
                    max_cmd_sn,
                    data_sn_or_r2t_sn,
                })
            }
        ),
        (
            any::<bool>(),
            prop_oneof![
                Just(0x1cu8),
                Just(0x1d),
                Just(0x1e),
                Just(0x3c),
                Just(0x3d),
                Just(0x3e)
            ],
            vec(any::<u8>(), 48)
        )
            .prop_map(|(immediate, op, raw)| {
                let mut bhs = [0u8; 48];
                bhs.copy_from_slice(&raw);
                bhs[0] = u8::from(immediate) << 6 | op;
                bhs[4] = 0;
                bhs[5..8].fill(0);
                Header::Vendor { immediate, bhs }
            }),
    ]
}

pub fn pdu() -> impl Strategy<Value = Pdu> {
    (header(), vec(any::<u8>(), 0..300)).prop_map(|(header, data)| Pdu { header, data })
}
