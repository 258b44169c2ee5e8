//! The daemon's live state for the admin view and session rules: sessions by TSIH
//! (assignment, reinstatement of a session with the same ISID), their connections and
//! counters, and per-LUN counters.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::service::{LunSummary, ScsiService};
use crate::stats::{IoCounters, IoSnapshot};

/// One logged-in session.
#[derive(Debug)]
pub struct Session {
    /// TSIH.
    pub tsih: u16,
    /// InitiatorName.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// TargetName (None for discovery).
    pub target: Option<String>,
    /// Counters of this session's commands.
    pub counters: Arc<IoCounters>,
    connections: Mutex<Vec<ConnectionInfo>>,
    close: watch::Sender<bool>,
}

impl Session {
    /// A receiver that turns true when the session must end (reinstatement, logout of
    /// the session, daemon shutdown).
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.close.subscribe()
    }

    /// Ask every connection of the session to end.
    pub fn close(&self) {
        self.close.send_replace(true);
    }
}

/// One connection of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// CID.
    pub cid: u16,
    /// The initiator's address.
    pub peer: String,
    /// Our portal address.
    pub portal: String,
    /// HeaderDigest=CRC32C, DataDigest=CRC32C.
    pub digests: (bool, bool),
}

/// One target's LUNs and their counters.
#[derive(Debug)]
pub struct TargetLuns {
    /// The device server of this target.
    pub service: Arc<dyn ScsiService>,
    /// Counters by LUN number.
    pub counters: BTreeMap<u64, Arc<IoCounters>>,
}

/// Sessions and LUN counters of the running daemon.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<BTreeMap<u16, Arc<Session>>>,
    next_tsih: Mutex<u16>,
    targets: BTreeMap<String, TargetLuns>,
}

/// The admin view of the daemon (what `iser-target status` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Sessions in TSIH order.
    pub sessions: Vec<SessionStatus>,
    /// Targets and their LUNs.
    pub targets: Vec<TargetStatus>,
}

/// One session in the admin view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// TSIH.
    pub tsih: u16,
    /// InitiatorName.
    pub initiator: String,
    /// ISID in hex.
    pub isid: String,
    /// TargetName, or "(discovery)".
    pub target: String,
    /// Connections.
    pub connections: Vec<ConnectionInfo>,
    /// Counters.
    pub counters: IoSnapshot,
}

/// One target in the admin view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// TargetName.
    pub iqn: String,
    /// LUNs.
    pub luns: Vec<LunStatus>,
}

/// One LUN in the admin view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunStatus {
    /// Geometry and protection.
    #[serde(flatten)]
    pub summary: LunSummary,
    /// Counters.
    pub counters: IoSnapshot,
}

impl Registry {
    /// A registry serving `targets` (name → device server).
    pub fn new(targets: Vec<(String, Arc<dyn ScsiService>)>) -> Self {
        let targets = targets
            .into_iter()
            .map(|(iqn, service)| {
                let counters = service
                    .luns()
                    .iter()
                    .map(|l| (l.lun, Arc::new(IoCounters::default())))
                    .collect();
                (iqn, TargetLuns { service, counters })
            })
            .collect();
        Registry {
            sessions: Mutex::new(BTreeMap::new()),
            next_tsih: Mutex::new(1),
            targets,
        }
    }

    /// The LUNs of target `iqn`.
    pub fn target(&self, iqn: &str) -> Option<&TargetLuns> {
        self.targets.get(iqn)
    }

    /// Every target's device server.
    pub fn services(&self) -> impl Iterator<Item = (&str, &Arc<dyn ScsiService>)> {
        self.targets.iter().map(|(k, v)| (k.as_str(), &v.service))
    }

    /// A TSIH for a login about to start: non-zero and not used by an open session.
    pub fn reserve_tsih(&self) -> u16 {
        let sessions = self.sessions.lock();
        let mut next = self.next_tsih.lock();
        let mut t = *next;
        for _ in 0..=u16::MAX as u32 {
            if t != 0 && !sessions.contains_key(&t) {
                break;
            }
            t = t.wrapping_add(1);
        }
        *next = t.wrapping_add(1);
        t
    }

    /// Register a session that completed its login with `tsih`. An existing session
    /// of the same initiator, ISID and target is closed first (session reinstatement,
    /// RFC 7143 section 6.3.5).
    pub fn open_session(
        &self,
        tsih: u16,
        initiator: &str,
        isid: [u8; 6],
        target: Option<&str>,
        conn: ConnectionInfo,
    ) -> Arc<Session> {
        let mut sessions = self.sessions.lock();
        let old: Vec<u16> = sessions
            .values()
            .filter(|s| s.initiator == initiator && s.isid == isid && s.target.as_deref() == target)
            .map(|s| s.tsih)
            .collect();
        for old_tsih in old {
            if let Some(s) = sessions.remove(&old_tsih) {
                tracing::info!(
                    tsih = old_tsih,
                    initiator,
                    "session reinstated: closing the old one"
                );
                s.close();
            }
        }
        if let Some(s) = sessions.remove(&tsih) {
            s.close();
        }
        let (close, _) = watch::channel(false);
        let s = Arc::new(Session {
            tsih,
            initiator: initiator.to_owned(),
            isid,
            target: target.map(str::to_owned),
            counters: Arc::new(IoCounters::default()),
            connections: Mutex::new(vec![conn]),
            close,
        });
        sessions.insert(tsih, s.clone());
        s
    }

    /// Remove a session (its last connection ended).
    pub fn close_session(&self, session: &Session) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&session.tsih)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), session))
        {
            sessions.remove(&session.tsih);
        }
    }

    /// Close every session (shutdown).
    pub fn close_all(&self) {
        for s in self.sessions.lock().values() {
            s.close();
        }
    }

    /// Sessions still open.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// The admin view now.
    pub fn report(&self) -> StatusReport {
        let sessions = self
            .sessions
            .lock()
            .values()
            .map(|s| SessionStatus {
                tsih: s.tsih,
                initiator: s.initiator.clone(),
                isid: s.isid.iter().map(|b| format!("{b:02x}")).collect(),
                target: s.target.clone().unwrap_or_else(|| "(discovery)".to_owned()),
                connections: s.connections.lock().clone(),
                counters: s.counters.snapshot(),
            })
            .collect();
        let targets = self
            .targets
            .iter()
            .map(|(iqn, t)| TargetStatus {
                iqn: iqn.clone(),
                luns: t
                    .service
                    .luns()
                    .into_iter()
                    .map(|summary| {
                        let counters = t
                            .counters
                            .get(&summary.lun)
                            .map(|c| c.snapshot())
                            .unwrap_or_default();
                        LunStatus { summary, counters }
                    })
                    .collect(),
            })
            .collect();
        StatusReport { sessions, targets }
    }
}

impl StatusReport {
    /// The report as text for people.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "Sessions: {}", self.sessions.len());
        for s in &self.sessions {
            let _ = writeln!(
                out,
                "  TSIH {} initiator {} ISID {} target {}",
                s.tsih, s.initiator, s.isid, s.target
            );
            for c in &s.connections {
                let _ = writeln!(
                    out,
                    "    CID {} {} -> {} header_digest={} data_digest={}",
                    c.cid, c.peer, c.portal, c.digests.0, c.digests.1
                );
            }
            let k = &s.counters;
            let _ = writeln!(
                out,
                "    reads {} writes {} read_bytes {} write_bytes {} pi_errors guard {} app {} ref {}",
                k.reads, k.writes, k.read_bytes, k.write_bytes, k.guard_errors, k.app_tag_errors, k.ref_tag_errors
            );
        }
        for t in &self.targets {
            let _ = writeln!(out, "Target {}", t.iqn);
            for l in &t.luns {
                let s = &l.summary;
                let k = &l.counters;
                let _ = writeln!(
                    out,
                    "  LUN {}: {} blocks x {} bytes ({} MiB), PI type {}, {}",
                    s.lun,
                    s.blocks,
                    s.block_size,
                    (s.blocks * u64::from(s.block_size)) >> 20,
                    s.pi_type,
                    s.backing
                );
                let _ = writeln!(
                    out,
                    "    reads {} writes {} read_bytes {} write_bytes {} pi_errors guard {} app {} ref {}",
                    k.reads, k.writes, k.read_bytes, k.write_bytes, k.guard_errors, k.app_tag_errors, k.ref_tag_errors
                );
            }
        }
        out
    }
}
