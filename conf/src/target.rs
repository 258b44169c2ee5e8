//! The `iser-target` configuration: portals, targets and their LUNs, access control,
//! negotiation limits, logging; defaults, validation and the effective TOML.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, KeyPath, Problem};
use crate::secret::{check_pair, Chap};
use crate::value::{resolve_path, ByteSize, FabricAddr, Iqn};
use crate::{check_range, Loaded, LogSection};

/// The embedded default: one target with a 64 MiB RAM LUN (512-byte blocks, Type 1 PI)
/// on TCP 127.0.0.1:3260 and the soft iSER fabric on 127.0.0.1:3261.
pub const EMBEDDED_DEFAULT: &str = include_str!("default_target.toml");

/// Highest LUN id accepted (SAM flat addressing: 14 bits).
pub const MAX_LUN_ID: u16 = 16383;
/// The application tag that makes a Type 1/2 block escape every check.
pub const APP_TAG_ESCAPE: u16 = 0xFFFF;
/// Bytes of protection information per logical block.
pub const PI_TUPLE_LEN: u64 = 8;

/// The whole `iser-target` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Worker threads for the I/O runtime, and iSER lanes (threads that each run
    /// whole iSER connections); 0 (default) = one per CPU.
    #[serde(default)]
    pub worker_threads: u32,
    /// Listening portals. Default: TCP on 127.0.0.1:3260 and the soft iSER fabric on
    /// 127.0.0.1:3261.
    #[serde(default = "default_portals")]
    pub portals: Vec<Portal>,
    /// SendTargets discovery sessions.
    #[serde(default, skip_serializing_if = "Discovery::is_open")]
    pub discovery: Discovery,
    /// iSCSI operational parameters the target offers at login.
    #[serde(default)]
    pub iscsi: IscsiParams,
    /// iSER receive lengths the target offers at login.
    #[serde(default)]
    pub iser: IserParams,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The targets served. At least one is required.
    #[serde(default)]
    pub targets: Vec<Target>,
}

/// The transport of a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// iSCSI over TCP (RFC 7143).
    Tcp,
    /// iSER (RFC 7145) over the soft mlx5 fabric or, with `device`, a real RDMA device.
    Iser,
}

/// One listening portal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// `"tcp"` or `"iser"`. No default.
    pub transport: Transport,
    /// For `tcp`: `ip:port` (3260 is the iSCSI port). For `iser` on the soft fabric:
    /// `ip:port` (3261 by convention) or `unix:/path`. For `iser` on a real device: the
    /// device's `ip:port` for the RDMA connection manager (3260). No default.
    pub listen: FabricAddr,
    /// A real RDMA device for `iser` (e.g. `"mlx5_0"`); needs conf's `hw` feature.
    /// Absent (default) = the soft mlx5 fabric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl Discovery {
    /// True when discovery needs no authentication (the default).
    pub fn is_open(&self) -> bool {
        self.chap.is_none() && self.mutual_chap.is_none()
    }
}

fn default_portals() -> Vec<Portal> {
    vec![
        Portal {
            transport: Transport::Tcp,
            listen: FabricAddr::Tcp(([127, 0, 0, 1], 3260).into()),
            device: None,
        },
        Portal {
            transport: Transport::Iser,
            listen: FabricAddr::Tcp(([127, 0, 0, 1], 3261).into()),
            device: None,
        },
    ]
}

/// SendTargets discovery authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// CHAP required of initiators in discovery sessions. Absent (default) = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
    /// The target's own credentials for mutual CHAP in discovery. Absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<Chap>,
}

/// iSCSI operational keys (RFC 7143 section 13) in snake_case, as the target offers them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiParams {
    /// MaxRecvDataSegmentLength the target declares, 512..16777215; default 8192 (RFC).
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength, 512..16777215; default 262144 (RFC).
    pub max_burst_length: u32,
    /// FirstBurstLength, 512..16777215 and <= max_burst_length; default 65536 (RFC).
    pub first_burst_length: u32,
    /// ImmediateData; default true (RFC).
    pub immediate_data: bool,
    /// InitialR2T; default true (RFC, and what LIO and SPDK offer). false lets initiators
    /// send unsolicited Data-Out up to first_burst_length (the result is the OR of both).
    pub initial_r2t: bool,
    /// MaxOutstandingR2T, 1..65535; default 1 (RFC).
    pub max_outstanding_r2t: u32,
    /// Commands queued per session (the CmdSN window), 1..1024; default 128.
    pub queue_depth: u32,
    /// Seconds between NOP-In pings on an idle connection, 0..3600; 0 = off; default 15.
    pub nop_in_interval: u32,
    /// Seconds to wait for the NOP-Out answer before dropping the connection, 1..3600;
    /// default 30.
    pub nop_in_timeout: u32,
}

impl IscsiParams {
    /// The RFC 7143 key names and values the target offers, in login order.
    pub fn offered_keys(&self) -> Vec<(&'static str, String)> {
        let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_owned();
        vec![
            ("InitialR2T", yes_no(self.initial_r2t)),
            ("ImmediateData", yes_no(self.immediate_data)),
            (
                "MaxRecvDataSegmentLength",
                self.max_recv_data_segment_length.to_string(),
            ),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("MaxOutstandingR2T", self.max_outstanding_r2t.to_string()),
        ]
    }
}

impl Default for IscsiParams {
    fn default() -> Self {
        Self {
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            queue_depth: 128,
            nop_in_interval: 15,
            nop_in_timeout: 30,
        }
    }
}

/// iSER keys (RFC 7145 section 6.3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IserParams {
    /// InitiatorRecvDataSegmentLength offered, 512..16777215; default 131072 (the RFC
    /// default is 8192; Linux ib_iser and isert use 128 KiB).
    pub initiator_recv_data_segment_length: u32,
    /// TargetRecvDataSegmentLength offered, 512..16777215; default 131072. It sizes the
    /// target's receive buffers (queue_depth of them per connection: 16 MiB at the
    /// defaults) and caps immediate data; bulk data moves by RDMA regardless.
    pub target_recv_data_segment_length: u32,
}

impl IserParams {
    /// The RFC 7145 key names and values the target offers over iSER.
    pub fn offered_keys(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "InitiatorRecvDataSegmentLength",
                self.initiator_recv_data_segment_length.to_string(),
            ),
            (
                "TargetRecvDataSegmentLength",
                self.target_recv_data_segment_length.to_string(),
            ),
        ]
    }
}

impl Default for IserParams {
    fn default() -> Self {
        Self {
            initiator_recv_data_segment_length: 131_072,
            target_recv_data_segment_length: 131_072,
        }
    }
}

/// One iSCSI target node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The target name (iqn., eui. or naa.). No default.
    pub iqn: Iqn,
    /// Initiator names allowed to log in; empty (default) = any initiator.
    #[serde(default)]
    pub acl: Vec<Iqn>,
    /// CHAP required of initiators. Absent (default) = no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
    /// The target's credentials for mutual CHAP. Absent (default) = one-way only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<Chap>,
    /// The logical units. At least one is required.
    #[serde(default)]
    pub luns: Vec<Lun>,
}

/// One logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lun {
    /// LUN number, 0..16383. No default.
    pub id: u16,
    /// Where the blocks live. No default.
    pub backing: Backing,
    /// Logical block size: 512, 1024, 2048 or 4096 (512 or 4096 with protection);
    /// default 512.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Refuse writes (write-protected in MODE SENSE); default false.
    #[serde(default)]
    pub read_only: bool,
    /// T10 vendor identification in INQUIRY, at most 8 printable ASCII characters;
    /// default "ISER-PI".
    #[serde(default = "default_vendor")]
    pub vendor: String,
    /// Product identification in INQUIRY, at most 16 printable ASCII characters;
    /// default "VIRTUAL-DISK".
    #[serde(default = "default_product")]
    pub product: String,
    /// Unit serial number (VPD page 80h), at most 64 printable ASCII characters; default
    /// "" = derived from the target name and LUN id.
    #[serde(default)]
    pub serial: String,
    /// Report a volatile write cache (WCE) and honour SYNCHRONIZE CACHE; default true.
    #[serde(default = "default_true")]
    pub write_cache: bool,
    /// Thin provisioning: UNMAP and WRITE SAME with UNMAP punch holes; default false.
    #[serde(default)]
    pub thin_provisioning: bool,
    /// T10 protection information. Absent = type 0 (none).
    #[serde(default)]
    pub protection: LunProtection,
}

fn default_block_size() -> u32 {
    512
}
fn default_vendor() -> String {
    "ISER-PI".to_owned()
}
fn default_product() -> String {
    "VIRTUAL-DISK".to_owned()
}
fn default_true() -> bool {
    true
}

/// The store behind a LUN: the table `backing = { type = "ram" | "file" | "block", ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawBacking", into = "RawBacking")]
pub enum Backing {
    /// Memory, lost at exit.
    Ram {
        /// Capacity in bytes (a multiple of block_size). Required.
        size: ByteSize,
    },
    /// A regular file (sparse when created).
    File {
        /// The data file; relative paths resolve against the configuration's directory.
        /// It must exist (and be a regular file) unless `create` is set.
        path: PathBuf,
        /// Create the file with `size` bytes if it does not exist; default false.
        create: bool,
        /// Size for a created file; required with create = true, refused without.
        size: Option<ByteSize>,
    },
    /// A block device.
    Block {
        /// The device node, e.g. /dev/nvme0n1; it must exist and be a block device.
        path: PathBuf,
    },
}

/// The kinds of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Ram,
    File,
    Block,
}

/// The backing table as written; every key is checked by serde with its own position.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawBacking {
    #[serde(rename = "type")]
    kind: StoreKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    create: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<ByteSize>,
}

impl TryFrom<RawBacking> for Backing {
    type Error = String;
    fn try_from(r: RawBacking) -> Result<Self, String> {
        let name = match r.kind {
            StoreKind::Ram => "ram",
            StoreKind::File => "file",
            StoreKind::Block => "block",
        };
        let refuse = |key: &str, present: bool| {
            if present {
                Err(format!(
                    "expected no {key} with type = \"{name}\", found {key}"
                ))
            } else {
                Ok(())
            }
        };
        let need_path = |path: Option<PathBuf>| {
            path.ok_or_else(|| format!("expected path with type = \"{name}\", found none"))
        };
        match r.kind {
            StoreKind::Ram => {
                refuse("path", r.path.is_some())?;
                refuse("create", r.create.is_some())?;
                let size = r
                    .size
                    .ok_or_else(|| "expected size with type = \"ram\", found none".to_owned())?;
                Ok(Self::Ram { size })
            }
            StoreKind::File => Ok(Self::File {
                path: need_path(r.path)?,
                create: r.create.unwrap_or(false),
                size: r.size,
            }),
            StoreKind::Block => {
                refuse("create", r.create.is_some())?;
                refuse("size", r.size.is_some())?;
                Ok(Self::Block {
                    path: need_path(r.path)?,
                })
            }
        }
    }
}

impl From<Backing> for RawBacking {
    fn from(b: Backing) -> Self {
        match b {
            Backing::Ram { size } => Self {
                kind: StoreKind::Ram,
                path: None,
                create: None,
                size: Some(size),
            },
            Backing::File { path, create, size } => Self {
                kind: StoreKind::File,
                path: Some(path),
                create: Some(create),
                size,
            },
            Backing::Block { path } => Self {
                kind: StoreKind::Block,
                path: Some(path),
                create: None,
                size: None,
            },
        }
    }
}

/// Where a PI-formatted LUN keeps its 8-byte tuples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PiStore {
    /// A `<data>.pi` file beside the data with 8 bytes per block in LBA order (default;
    /// the layout the target implements for files).
    Sidecar,
    /// Each block followed by its tuple in the data file (block_size + 8 bytes per LBA).
    Interleaved,
}

/// The `[protection]` section of a LUN.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LunProtection {
    /// T10 protection type: 0 (none, default), 1, 2 or 3.
    #[serde(rename = "type")]
    pub pi_type: u8,
    /// Where PI is stored: "sidecar" (default) or "interleaved".
    pub store: PiStore,
    /// Sidecar file. Absent (default) = `<data path>.pi`; required for block devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pi_path: Option<PathBuf>,
    /// Verify PI received from initiators before storing it; default true.
    pub verify_received: bool,
    /// Verify PI read from the medium before sending it; default true.
    pub verify_medium: bool,
    /// Application tag used when the target generates PI, 0..65534 (0xFFFF, the escape
    /// tag, is refused); default 0.
    pub app_tag: u16,
}

impl Default for LunProtection {
    fn default() -> Self {
        Self {
            pi_type: 0,
            store: PiStore::Sidecar,
            pi_path: None,
            verify_received: true,
            verify_medium: true,
            app_tag: 0,
        }
    }
}

impl Lun {
    /// The LUN's capacity in logical blocks, when the configuration fixes it (RAM, or a
    /// file created with a size). Interleaved stores count block_size + 8 bytes per LBA.
    pub fn blocks(&self) -> Option<u64> {
        let size = match &self.backing {
            Backing::Ram { size } => Some(*size),
            Backing::File { size, .. } => *size,
            Backing::Block { .. } => None,
        }?;
        Some(size.0 / self.stride())
    }

    /// Bytes per LBA in the data store: block_size, plus 8 when PI is interleaved.
    pub fn stride(&self) -> u64 {
        let b = u64::from(self.block_size);
        let on_disk = !matches!(self.backing, Backing::Ram { .. });
        if on_disk && self.protection.pi_type != 0 && self.protection.store == PiStore::Interleaved
        {
            b + PI_TUPLE_LEN
        } else {
            b
        }
    }

    /// The sidecar PI file, for a PI LUN with a sidecar store on a file or device.
    pub fn sidecar_path(&self) -> Option<PathBuf> {
        if self.protection.pi_type == 0 || self.protection.store != PiStore::Sidecar {
            return None;
        }
        if let Some(p) = &self.protection.pi_path {
            return Some(p.clone());
        }
        match &self.backing {
            Backing::File { path, .. } => {
                let mut s = path.as_os_str().to_owned();
                s.push(".pi");
                Some(PathBuf::from(s))
            }
            _ => None,
        }
    }
}

impl TargetConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        crate::load_file(path.as_ref())
    }

    /// Parses and validates `text`; `name` is the file name used in errors, and relative
    /// paths resolve against its directory.
    pub fn from_str_named(text: &str, name: &str) -> Result<Self, ConfigError> {
        crate::load_text(text, name)
    }

    /// The embedded default configuration (valid on loopback).
    pub fn embedded_default() -> Self {
        match Self::from_str_named(EMBEDDED_DEFAULT, "<embedded target default>") {
            Ok(c) => c,
            // The embedded text is checked by this crate's tests.
            Err(e) => panic!("embedded target default is invalid: {e}"),
        }
    }

    /// The effective configuration as TOML: every default filled in, paths resolved,
    /// secrets printed as "***".
    pub fn effective_toml(&self) -> String {
        crate::effective(self, "iser-target")
    }

    /// Semantic checks, every problem collected (no positions: use `from_str_named` for
    /// file positions). Secret files must have been read (as `load` does).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::unpositioned("<config>", problems))
        }
    }

    /// Worker threads to start: `worker_threads`, or the CPU count when it is 0.
    pub fn effective_worker_threads(&self) -> usize {
        crate::worker_threads(self.worker_threads)
    }

    /// The target with this name.
    pub fn target(&self, iqn: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.iqn.as_str() == iqn)
    }
}

fn check_ascii(problems: &mut Vec<Problem>, path: KeyPath, value: &str, max: usize) {
    if value.len() > max || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        problems.push(Problem::new(
            path,
            format!(
                "expected at most {max} printable ASCII characters, found {value:?} ({} bytes)",
                value.len()
            ),
        ));
    }
}

impl Loaded for TargetConfig {
    fn resolve(&mut self, base: Option<&Path>, problems: &mut Vec<Problem>) {
        let root = KeyPath::root();
        for portal in &mut self.portals {
            portal.listen.resolve(base);
        }
        let d = root.key("discovery");
        if let Some(c) = &mut self.discovery.chap {
            c.load_secret_file(base, &d.key("chap"), problems);
        }
        if let Some(c) = &mut self.discovery.mutual_chap {
            c.load_secret_file(base, &d.key("mutual_chap"), problems);
        }
        for (ti, t) in self.targets.iter_mut().enumerate() {
            let tp = root.key("targets").index(ti);
            if let Some(c) = &mut t.chap {
                c.load_secret_file(base, &tp.key("chap"), problems);
            }
            if let Some(c) = &mut t.mutual_chap {
                c.load_secret_file(base, &tp.key("mutual_chap"), problems);
            }
            for lun in &mut t.luns {
                match &mut lun.backing {
                    Backing::File { path, .. } | Backing::Block { path } => {
                        *path = resolve_path(base, path);
                    }
                    Backing::Ram { .. } => {}
                }
                if let Some(p) = &mut lun.protection.pi_path {
                    *p = resolve_path(base, p);
                }
            }
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let root = KeyPath::root();

        if self.worker_threads > 1024 {
            p.push(Problem::new(
                root.key("worker_threads"),
                format!(
                    "expected 0 (one per CPU) ..1024, found {}",
                    self.worker_threads
                ),
            ));
        }
        check_portals(&self.portals, p);
        let d = root.key("discovery");
        check_pair(
            self.discovery.chap.as_ref(),
            self.discovery.mutual_chap.as_ref(),
            &d,
            p,
        );
        check_iscsi(&self.iscsi, p);
        let ip = root.key("iser");
        check_range(
            p,
            ip.key("initiator_recv_data_segment_length"),
            self.iser.initiator_recv_data_segment_length,
            512..=16_777_215,
        );
        check_range(
            p,
            ip.key("target_recv_data_segment_length"),
            self.iser.target_recv_data_segment_length,
            512..=16_777_215,
        );

        if self.targets.is_empty() {
            p.push(Problem::new(
                root.key("targets"),
                "expected at least one [[targets]] table, found none",
            ));
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut stores: HashMap<PathBuf, String> = HashMap::new();
        for (ti, t) in self.targets.iter().enumerate() {
            let tp = root.key("targets").index(ti);
            if let Some(first) = names.insert(t.iqn.as_str().to_ascii_lowercase(), ti) {
                p.push(Problem::new(
                    tp.key("iqn"),
                    format!(
                        "expected a target name not used before, found {} (also targets[{first}])",
                        t.iqn
                    ),
                ));
            }
            check_target(t, &tp, &mut stores, p);
        }
        problems
    }
}

fn check_portals(portals: &[Portal], p: &mut Vec<Problem>) {
    let root = KeyPath::root();
    if portals.is_empty() {
        p.push(Problem::new(
            root.key("portals"),
            "expected at least one [[portals]] table, found none",
        ));
    }
    for (i, portal) in portals.iter().enumerate() {
        let pp = root.key("portals").index(i);
        let clash = portals[..i]
            .iter()
            .position(|q| q.device == portal.device && overlaps(&q.listen, &portal.listen));
        if let Some(first) = clash {
            p.push(Problem::new(
                pp.key("listen"),
                format!(
                    "expected a listen address not used by another portal, found {} (also portals[{first}])",
                    portal.listen
                ),
            ));
        }
        match (portal.transport, &portal.device, &portal.listen) {
            (Transport::Tcp, Some(dev), _) => p.push(Problem::new(
                pp.key("device"),
                format!(
                    "expected no device on a tcp portal (devices are for transport = \"iser\"), found {dev:?}"
                ),
            )),
            (Transport::Tcp, None, FabricAddr::Unix(path)) => p.push(Problem::new(
                pp.key("listen"),
                format!(
                    "expected ip:port for a tcp portal (unix: is for the soft iSER fabric), found unix:{}",
                    path.display()
                ),
            )),
            (Transport::Iser, Some(dev), listen) => {
                if dev.is_empty() {
                    p.push(Problem::new(
                        pp.key("device"),
                        "expected an RDMA device name such as \"mlx5_0\", found \"\"",
                    ));
                } else if !cfg!(feature = "hw") {
                    p.push(Problem::new(
                        pp.key("device"),
                        format!(
                            "expected no RDMA device: this build has no hardware RDMA support \
                             (build with the \"hw\" feature), found {dev:?}; remove device to \
                             use the soft mlx5 fabric"
                        ),
                    ));
                }
                if let FabricAddr::Unix(path) = listen {
                    p.push(Problem::new(
                        pp.key("listen"),
                        format!(
                            "expected ip:port for an RDMA device portal, found unix:{}",
                            path.display()
                        ),
                    ));
                }
            }
            (Transport::Iser, None, _) | (Transport::Tcp, None, FabricAddr::Tcp(_)) => {}
        }
    }
}

/// What kind of file a metadata describes, for messages.
fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

fn check_block_device(path: &Path, key: &KeyPath, p: &mut Vec<Problem>) {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {}
        Ok(m) => p.push(Problem::new(
            key.clone(),
            format!(
                "expected a block device (use type = \"file\" for regular files), found {} at {}",
                file_kind(&m),
                path.display()
            ),
        )),
        Err(e) => p.push(Problem::new(
            key.clone(),
            format!(
                "expected an existing block device, found {}: {e}",
                path.display()
            ),
        )),
    }
}

/// True when two listen addresses would claim the same port (one of them a wildcard).
fn overlaps(a: &FabricAddr, b: &FabricAddr) -> bool {
    match (a, b) {
        (FabricAddr::Tcp(a), FabricAddr::Tcp(b)) => {
            a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        (FabricAddr::Unix(a), FabricAddr::Unix(b)) => a == b,
        _ => false,
    }
}

fn check_iscsi(c: &IscsiParams, p: &mut Vec<Problem>) {
    let ip = KeyPath::root().key("iscsi");
    check_range(
        p,
        ip.key("max_recv_data_segment_length"),
        c.max_recv_data_segment_length,
        512..=16_777_215,
    );
    check_range(
        p,
        ip.key("max_burst_length"),
        c.max_burst_length,
        512..=16_777_215,
    );
    check_range(
        p,
        ip.key("first_burst_length"),
        c.first_burst_length,
        512..=16_777_215,
    );
    if c.first_burst_length > c.max_burst_length {
        p.push(Problem::new(
            ip.key("first_burst_length"),
            format!(
                "expected at most max_burst_length ({}), found {}",
                c.max_burst_length, c.first_burst_length
            ),
        ));
    }
    check_range(
        p,
        ip.key("max_outstanding_r2t"),
        c.max_outstanding_r2t,
        1..=65_535,
    );
    check_range(p, ip.key("queue_depth"), c.queue_depth, 1..=1024);
    check_range(p, ip.key("nop_in_interval"), c.nop_in_interval, 0..=3600);
    check_range(p, ip.key("nop_in_timeout"), c.nop_in_timeout, 1..=3600);
}

fn check_target(
    t: &Target,
    tp: &KeyPath,
    stores: &mut HashMap<PathBuf, String>,
    p: &mut Vec<Problem>,
) {
    let mut acl = HashSet::new();
    for (i, name) in t.acl.iter().enumerate() {
        if !acl.insert(name.as_str().to_ascii_lowercase()) {
            p.push(Problem::new(
                tp.key("acl").index(i),
                format!("expected each initiator once, found {name} again"),
            ));
        }
    }
    check_pair(t.chap.as_ref(), t.mutual_chap.as_ref(), tp, p);
    if t.luns.is_empty() {
        p.push(Problem::new(
            tp.key("luns"),
            format!(
                "expected at least one [[targets.luns]] table for {}, found none",
                t.iqn
            ),
        ));
    }
    let mut ids: HashMap<u16, usize> = HashMap::new();
    for (li, lun) in t.luns.iter().enumerate() {
        let lp = tp.key("luns").index(li);
        if lun.id > MAX_LUN_ID {
            p.push(Problem::new(
                lp.key("id"),
                format!("expected 0..{MAX_LUN_ID}, found {}", lun.id),
            ));
        }
        if let Some(first) = ids.insert(lun.id, li) {
            p.push(Problem::new(
                lp.key("id"),
                format!(
                    "expected a LUN id not used before in this target, found {} (also luns[{first}])",
                    lun.id
                ),
            ));
        }
        let owner = format!("{} LUN {}", t.iqn, lun.id);
        let mut claim = |path: &Path, key: KeyPath, p: &mut Vec<Problem>| {
            if let Some(other) = stores.insert(path.to_path_buf(), owner.clone()) {
                p.push(Problem::new(
                    key,
                    format!(
                        "expected a store not shared with another LUN, found {} (also used by {other})",
                        path.display()
                    ),
                ));
            }
        };
        match &lun.backing {
            Backing::File { path, .. } | Backing::Block { path } => {
                claim(path, lp.key("backing").key("path"), p);
            }
            Backing::Ram { .. } => {}
        }
        if let Some(sidecar) = lun.sidecar_path() {
            claim(&sidecar, lp.key("protection"), p);
        }
        check_lun(lun, &lp, p);
    }
}

fn check_lun(lun: &Lun, lp: &KeyPath, p: &mut Vec<Problem>) {
    let bp = lp.key("backing");
    let prot = &lun.protection;
    let pp = lp.key("protection");
    let block_ok = matches!(lun.block_size, 512 | 1024 | 2048 | 4096);
    if !block_ok {
        p.push(Problem::new(
            lp.key("block_size"),
            format!("expected 512, 1024, 2048 or 4096, found {}", lun.block_size),
        ));
    }
    check_ascii(p, lp.key("vendor"), &lun.vendor, 8);
    check_ascii(p, lp.key("product"), &lun.product, 16);
    check_ascii(p, lp.key("serial"), &lun.serial, 64);

    if prot.pi_type > 3 {
        p.push(Problem::new(
            pp.key("type"),
            format!("expected 0, 1, 2 or 3, found {}", prot.pi_type),
        ));
    }
    let has_pi = prot.pi_type != 0;
    if has_pi && prot.app_tag == APP_TAG_ESCAPE {
        p.push(Problem::new(
            pp.key("app_tag"),
            "expected an application tag other than 0xFFFF (65535): blocks carrying the \
             escape tag are never checked, found 65535",
        ));
    }
    if has_pi && prot.store == PiStore::Interleaved && prot.pi_path.is_some() {
        p.push(Problem::new(
            pp.key("pi_path"),
            "expected no pi_path with store = \"interleaved\" (PI lives in the data file)",
        ));
    }
    if has_pi && block_ok && !matches!(lun.block_size, 512 | 4096) {
        p.push(Problem::new(
            lp.key("block_size"),
            format!(
                "expected 512 or 4096 with protection type {} (the PI intervals the HCA supports), found {}",
                prot.pi_type, lun.block_size
            ),
        ));
    }
    let interleaved = has_pi && prot.store == PiStore::Interleaved;
    let stride = lun.stride();
    match &lun.backing {
        Backing::Ram { size } => {
            if size.0 == 0 {
                p.push(Problem::new(
                    bp.key("size"),
                    "expected a size above 0, found 0",
                ));
            }
            if interleaved {
                p.push(Problem::new(
                    pp.key("store"),
                    "expected \"sidecar\" for a RAM store (interleaved PI needs a file or block device), found \"interleaved\"",
                ));
            }
            if has_pi && prot.pi_path.is_some() {
                p.push(Problem::new(
                    pp.key("pi_path"),
                    "expected no pi_path for a RAM store (PI is kept in memory)",
                ));
            }
        }
        Backing::File { path, create, size } => {
            match (create, size) {
                (true, None) => p.push(Problem::new(
                    bp.key("create"),
                    "expected size with create = true, found no size",
                )),
                (false, Some(_)) => p.push(Problem::new(
                    bp.key("size"),
                    "expected no size without create = true (an existing file keeps its size), found a size",
                )),
                (false, None) if !path.exists() => p.push(Problem::new(
                    bp.key("path"),
                    format!(
                        "expected an existing file, found no file at {} (set create = true and size to create it)",
                        path.display()
                    ),
                )),
                _ => {}
            }
            if let Ok(m) = std::fs::metadata(path) {
                if !m.is_file() {
                    p.push(Problem::new(
                        bp.key("path"),
                        format!(
                            "expected a regular file (use type = \"block\" for devices), found {} at {}",
                            file_kind(&m),
                            path.display()
                        ),
                    ));
                }
            }
            if size.is_some_and(|s| s.0 == 0) {
                p.push(Problem::new(
                    bp.key("size"),
                    "expected a size above 0, found 0",
                ));
            }
        }
        Backing::Block { path } => {
            check_block_device(path, &bp.key("path"), p);
            if has_pi && prot.store == PiStore::Sidecar && prot.pi_path.is_none() {
                p.push(Problem::new(
                    pp.key("pi_path"),
                    format!(
                        "expected pi_path for sidecar PI on block device {} (a .pi file beside a device node is not kept), found none",
                        path.display()
                    ),
                ));
            }
        }
    }
    let size = match &lun.backing {
        Backing::Ram { size } => Some(*size),
        Backing::File { size, .. } => *size,
        Backing::Block { .. } => None,
    };
    if let Some(size) = size.filter(|_| block_ok) {
        if size.0 % stride != 0 {
            let what = if stride != u64::from(lun.block_size) {
                format!("block_size + 8 = {stride} (interleaved PI)")
            } else {
                format!("block_size ({stride})")
            };
            p.push(Problem::new(
                bp.key("size"),
                format!("expected a multiple of {what}, found {} bytes", size.0),
            ));
        }
    }
}
