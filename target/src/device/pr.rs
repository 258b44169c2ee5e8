//! Reservations: SPC-4 persistent reservations (PERSISTENT RESERVE IN/OUT, the
//! conflict rules per reservation type) and SPC-2 RESERVE/RELEASE.

use scsi::asc;
use scsi::opcode::{pr_in, pr_out};
use scsi::{Cdb, PersistentReserveOut, RwKind};

use super::lun::Lun;
use super::reason::SenseReason;
use super::Nexus;

/// Maximum number of registered I_T nexuses.
pub(super) const MAX_REGISTRATIONS: usize = 128;

/// The identity of an I_T nexus for persistent reservations: the initiator port
/// name and the relative target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ItKey {
    pub initiator: String,
    pub relative_port: u16,
}

impl ItKey {
    pub fn of(n: &Nexus) -> Self {
        ItKey {
            initiator: n.initiator.clone(),
            relative_port: n.relative_port,
        }
    }
}

#[derive(Debug, Clone)]
struct Registration {
    it: ItKey,
    key: u64,
}

/// Reservation types (PERSISTENT RESERVE OUT TYPE field).
pub(super) mod pr_type {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 6;
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 7;
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 8;

    pub fn valid(t: u8) -> bool {
        matches!(
            t,
            WRITE_EXCLUSIVE
                | EXCLUSIVE_ACCESS
                | WRITE_EXCLUSIVE_REGISTRANTS_ONLY
                | EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
                | WRITE_EXCLUSIVE_ALL_REGISTRANTS
                | EXCLUSIVE_ACCESS_ALL_REGISTRANTS
        )
    }

    pub fn all_registrants(t: u8) -> bool {
        matches!(
            t,
            WRITE_EXCLUSIVE_ALL_REGISTRANTS | EXCLUSIVE_ACCESS_ALL_REGISTRANTS
        )
    }

    /// Types where every registrant has the holder's access.
    pub fn registrants_access(t: u8) -> bool {
        registrants_only(t) || all_registrants(t)
    }

    pub fn registrants_only(t: u8) -> bool {
        matches!(
            t,
            WRITE_EXCLUSIVE_REGISTRANTS_ONLY | EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
        )
    }

    pub fn exclusive_access(t: u8) -> bool {
        matches!(
            t,
            EXCLUSIVE_ACCESS | EXCLUSIVE_ACCESS_REGISTRANTS_ONLY | EXCLUSIVE_ACCESS_ALL_REGISTRANTS
        )
    }
}

#[derive(Debug, Clone)]
struct Reservation {
    /// The holder (for all-registrants types: the nexus that reserved).
    holder: ItKey,
    pr_type: u8,
}

/// Reservation state of one LUN.
#[derive(Debug, Default)]
pub(super) struct PrState {
    generation: u32,
    regs: Vec<Registration>,
    res: Option<Reservation>,
    /// SPC-2 RESERVE holder (nexus id).
    pub spc2_holder: Option<u64>,
}

impl PrState {
    fn key_of(&self, it: &ItKey) -> Option<u64> {
        self.regs.iter().find(|r| &r.it == it).map(|r| r.key)
    }

    fn is_holder(&self, it: &ItKey) -> bool {
        match &self.res {
            Some(r) if pr_type::all_registrants(r.pr_type) => self.key_of(it).is_some(),
            Some(r) => &r.holder == it,
            None => false,
        }
    }

    /// Removes registrations matching `pred` (never `keep`), returning who was removed.
    fn remove_regs(&mut self, keep: &ItKey, pred: impl Fn(&Registration) -> bool) -> Vec<ItKey> {
        let mut removed = Vec::new();
        self.regs.retain(|r| {
            if &r.it != keep && pred(r) {
                removed.push(r.it.clone());
                false
            } else {
                true
            }
        });
        removed
    }

    /// Drops the reservation when its holder is no longer registered (or, for the
    /// all-registrants types, when nobody is).
    fn fix_reservation(&mut self) -> bool {
        let gone = match &self.res {
            Some(r) if pr_type::all_registrants(r.pr_type) => self.regs.is_empty(),
            Some(r) => self.key_of(&r.holder).is_none(),
            None => false,
        };
        if gone {
            self.res = None;
        }
        gone
    }
}

/// How a command touches the medium, for the reservation conflict tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Allowed under every reservation.
    Always,
    /// Reads: conflict under the exclusive-access types.
    Read,
    /// Writes and state changes: conflict under every type for non-holders.
    Write,
}

pub(super) fn access_of(cdb: &Cdb) -> Access {
    match cdb {
        Cdb::Inquiry { .. }
        | Cdb::ReportLuns { .. }
        | Cdb::RequestSense { .. }
        | Cdb::ReportSupportedOpcodes(_)
        | Cdb::ReadCapacity10 { .. }
        | Cdb::ReadCapacity16 { .. }
        | Cdb::PersistentReserveIn { .. }
        | Cdb::PersistentReserveOut(_)
        | Cdb::TestUnitReady
        | Cdb::Release(_) => Access::Always,
        Cdb::ReadWrite(rw) if matches!(rw.kind, RwKind::Read | RwKind::Verify) => Access::Read,
        Cdb::PreFetch(_) | Cdb::GetLbaStatus { .. } | Cdb::ModeSense(_) => Access::Read,
        _ => Access::Write,
    }
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// An iSCSI TransportID (SPC-4 7.6.4.6): format 01b with the ISID when the name
/// carries `,i,0x`, otherwise format 00b; NUL-terminated, padded to 4 bytes.
fn transport_id(initiator: &str) -> Vec<u8> {
    let format = if initiator.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let mut name = initiator.as_bytes().to_vec();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

impl Lun {
    /// Reservation conflict check for a parsed command.
    pub(super) fn check_reservation(&self, nexus: &Nexus, cdb: &Cdb) -> Result<(), SenseReason> {
        let pr = self.pr.lock();
        let access = access_of(cdb);
        if let Some(holder) = pr.spc2_holder {
            if holder != nexus.id
                && !matches!(
                    cdb,
                    Cdb::Inquiry { .. }
                        | Cdb::ReportLuns { .. }
                        | Cdb::RequestSense { .. }
                        | Cdb::Release(_)
                        | Cdb::ReportSupportedOpcodes(_)
                )
            {
                return Err(SenseReason::ReservationConflict);
            }
        }
        if matches!(cdb, Cdb::Reserve(_) | Cdb::Release(_))
            && (pr.res.is_some() || !pr.regs.is_empty())
        {
            // SPC-2 reservations conflict with persistent reservation state.
            return Err(SenseReason::ReservationConflict);
        }
        let Some(res) = &pr.res else {
            return Ok(());
        };
        let it = ItKey::of(nexus);
        let allowed = if pr_type::registrants_access(res.pr_type) {
            pr.key_of(&it).is_some()
        } else {
            res.holder == it
        };
        let conflict = !allowed
            && match access {
                Access::Always => false,
                Access::Read => pr_type::exclusive_access(res.pr_type),
                Access::Write => true,
            };
        if conflict {
            Err(SenseReason::ReservationConflict)
        } else {
            Ok(())
        }
    }

    pub(super) fn spc2_reserve(&self, nexus: &Nexus) -> Result<(), SenseReason> {
        let mut pr = self.pr.lock();
        match pr.spc2_holder {
            Some(h) if h != nexus.id => Err(SenseReason::ReservationConflict),
            _ => {
                pr.spc2_holder = Some(nexus.id);
                Ok(())
            }
        }
    }

    pub(super) fn spc2_release(&self, nexus: &Nexus) {
        let mut pr = self.pr.lock();
        if pr.spc2_holder == Some(nexus.id) {
            pr.spc2_holder = None;
        }
    }

    /// PERSISTENT RESERVE IN: the full parameter data (the caller truncates).
    pub(super) fn pr_in(&self, action: u8) -> Result<Vec<u8>, SenseReason> {
        let pr = self.pr.lock();
        let mut d = Vec::new();
        match action {
            pr_in::READ_KEYS => {
                d.extend_from_slice(&be32(pr.generation));
                d.extend_from_slice(&be32(8 * pr.regs.len() as u32));
                for r in &pr.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            pr_in::READ_RESERVATION => {
                d.extend_from_slice(&be32(pr.generation));
                match &pr.res {
                    Some(r) => {
                        d.extend_from_slice(&be32(16));
                        let key = if pr_type::all_registrants(r.pr_type) {
                            0
                        } else {
                            pr.key_of(&r.holder).unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, r.pr_type & 0x0F, 0, 0]);
                    }
                    None => d.extend_from_slice(&be32(0)),
                }
            }
            pr_in::REPORT_CAPABILITIES => {
                // CRH; TMV with the type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
                d.extend_from_slice(&[
                    0x00,
                    0x08,
                    0x10,
                    0x80,
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                    0x01,
                    0x00,
                    0x00,
                ]);
            }
            pr_in::READ_FULL_STATUS => {
                let mut body = Vec::new();
                for r in &pr.regs {
                    let holder = pr.is_holder(&r.it) && pr.res.is_some();
                    let tid = transport_id(&r.it.initiator);
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    body.push(u8::from(holder));
                    body.push(if holder {
                        pr.res.as_ref().map_or(0, |x| x.pr_type & 0x0F)
                    } else {
                        0
                    });
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    body.extend_from_slice(&r.it.relative_port.to_be_bytes());
                    body.extend_from_slice(&be32(tid.len() as u32));
                    body.extend_from_slice(&tid);
                }
                d.extend_from_slice(&be32(pr.generation));
                d.extend_from_slice(&be32(body.len() as u32));
                d.extend_from_slice(&body);
            }
            _ => return Err(SenseReason::cdb(1, Some(4))),
        }
        Ok(d)
    }

    /// PERSISTENT RESERVE OUT with its parameter list.
    pub(super) fn pr_out(
        &self,
        nexus: &Nexus,
        p: &PersistentReserveOut,
        list: &[u8],
    ) -> Result<(), SenseReason> {
        if p.action > pr_out::REGISTER_AND_IGNORE_EXISTING_KEY {
            return Err(SenseReason::cdb(1, Some(4)));
        }
        if p.param_len != 24 || list.len() < 24 {
            return Err(SenseReason::ParameterListLength);
        }
        let key = u64::from_be_bytes(list[0..8].try_into().unwrap_or_default());
        let sark = u64::from_be_bytes(list[8..16].try_into().unwrap_or_default());
        let flags = list[20];
        if flags & 0x08 != 0 {
            return Err(SenseReason::param(20, Some(3))); // SPEC_I_PT: not supported
        }
        if flags & 0x04 != 0 {
            return Err(SenseReason::param(20, Some(2))); // ALL_TG_PT: ATP_C is 0
        }
        if flags & 0x01 != 0 {
            return Err(SenseReason::param(20, Some(0))); // APTPL: PTPL_C is 0
        }
        let needs_type = matches!(
            p.action,
            pr_out::RESERVE | pr_out::RELEASE | pr_out::PREEMPT | pr_out::PREEMPT_AND_ABORT
        );
        let it = ItKey::of(nexus);
        let mut pr = self.pr.lock();
        let mine = pr.key_of(&it);
        let mut released_to: Vec<ItKey> = Vec::new();
        let mut preempted: Vec<ItKey> = Vec::new();
        let mut res_preempted: Vec<ItKey> = Vec::new();
        match p.action {
            pr_out::REGISTER | pr_out::REGISTER_AND_IGNORE_EXISTING_KEY => {
                let ignore = p.action == pr_out::REGISTER_AND_IGNORE_EXISTING_KEY;
                match mine {
                    None => {
                        if !ignore && key != 0 {
                            return Err(SenseReason::ReservationConflict);
                        }
                        if sark != 0 {
                            if pr.regs.len() >= MAX_REGISTRATIONS {
                                return Err(SenseReason::InsufficientRegistrationResources);
                            }
                            pr.regs.push(Registration {
                                it: it.clone(),
                                key: sark,
                            });
                        }
                    }
                    Some(k) => {
                        if !ignore && key != k {
                            return Err(SenseReason::ReservationConflict);
                        }
                        if sark == 0 {
                            let was_holder = pr.is_holder(&it) && pr.res.is_some();
                            let rtype = pr.res.as_ref().map(|r| r.pr_type);
                            pr.regs.retain(|r| r.it != it);
                            let gone = pr.fix_reservation();
                            if was_holder && gone && rtype.is_some_and(pr_type::registrants_only) {
                                released_to = pr.regs.iter().map(|r| r.it.clone()).collect();
                            }
                        } else if let Some(r) = pr.regs.iter_mut().find(|r| r.it == it) {
                            r.key = sark;
                        }
                    }
                }
                pr.generation = pr.generation.wrapping_add(1);
            }
            _ => {
                if mine != Some(key) {
                    return Err(SenseReason::ReservationConflict);
                }
                if needs_type && p.scope != 0 {
                    return Err(SenseReason::cdb(2, Some(7)));
                }
                if needs_type && p.action != pr_out::RELEASE && !pr_type::valid(p.pr_type) {
                    return Err(SenseReason::cdb(2, Some(3)));
                }
                match p.action {
                    pr_out::RESERVE => match &pr.res {
                        Some(r) if pr.is_holder(&it) => {
                            if r.pr_type != p.pr_type {
                                return Err(SenseReason::ReservationConflict);
                            }
                        }
                        Some(_) => return Err(SenseReason::ReservationConflict),
                        None => {
                            pr.res = Some(Reservation {
                                holder: it.clone(),
                                pr_type: p.pr_type,
                            })
                        }
                    },
                    pr_out::RELEASE => {
                        if let Some(r) = pr.res.clone() {
                            if pr.is_holder(&it) {
                                if r.pr_type != p.pr_type {
                                    return Err(SenseReason::InvalidRelease);
                                }
                                pr.res = None;
                                if !matches!(
                                    r.pr_type,
                                    pr_type::WRITE_EXCLUSIVE | pr_type::EXCLUSIVE_ACCESS
                                ) {
                                    released_to = pr
                                        .regs
                                        .iter()
                                        .map(|x| x.it.clone())
                                        .filter(|x| x != &it)
                                        .collect();
                                }
                            }
                        }
                    }
                    pr_out::CLEAR => {
                        preempted = pr
                            .regs
                            .iter()
                            .map(|r| r.it.clone())
                            .filter(|x| x != &it)
                            .collect();
                        pr.regs.clear();
                        pr.res = None;
                        pr.generation = pr.generation.wrapping_add(1);
                    }
                    _ => {
                        // PREEMPT, PREEMPT AND ABORT
                        match pr.res.clone() {
                            Some(r) if pr_type::all_registrants(r.pr_type) && sark == 0 => {
                                preempted = pr.remove_regs(&it, |_| true);
                                pr.res = Some(Reservation {
                                    holder: it.clone(),
                                    pr_type: p.pr_type,
                                });
                            }
                            Some(r)
                                if !pr_type::all_registrants(r.pr_type)
                                    && pr.key_of(&r.holder) == Some(sark) =>
                            {
                                preempted = pr.remove_regs(&it, |x| x.key == sark);
                                let changed = r.pr_type != p.pr_type;
                                pr.res = Some(Reservation {
                                    holder: it.clone(),
                                    pr_type: p.pr_type,
                                });
                                if changed {
                                    res_preempted = pr
                                        .regs
                                        .iter()
                                        .map(|x| x.it.clone())
                                        .filter(|x| x != &it && !preempted.contains(x))
                                        .collect();
                                }
                            }
                            _ => {
                                if sark == 0 {
                                    return Err(SenseReason::param(8, None));
                                }
                                preempted = pr.remove_regs(&it, |x| x.key == sark);
                                if preempted.is_empty() {
                                    return Err(SenseReason::ReservationConflict);
                                }
                                pr.fix_reservation();
                            }
                        }
                        pr.generation = pr.generation.wrapping_add(1);
                    }
                }
            }
        }
        drop(pr);
        let preempted_pair = if p.action == pr_out::CLEAR {
            asc::RESERVATIONS_PREEMPTED
        } else {
            asc::REGISTRATIONS_PREEMPTED
        };
        if p.action == pr_out::PREEMPT_AND_ABORT && !preempted.is_empty() {
            self.push_aborts(self.nexus_ids(&preempted));
        }
        if !preempted.is_empty() {
            self.ua_for_keys(&preempted, preempted_pair);
        }
        if !released_to.is_empty() {
            self.ua_for_keys(&released_to, asc::RESERVATIONS_RELEASED);
        }
        if !res_preempted.is_empty() {
            self.ua_for_keys(&res_preempted, asc::RESERVATIONS_RELEASED);
        }
        Ok(())
    }
}
