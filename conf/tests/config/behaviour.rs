//! Defaults, error collection, path resolution, the check entry point and the hw gate.

use std::path::PathBuf;

use conf::initiator::{Digest, InitiatorConfig, SessionTransport};
use conf::protection::{HostGuard, PiCheck, ProtectionMode};
use conf::target::{Backing, PiStore, TargetConfig, Transport};
use conf::{ByteSize, FabricAddr, Kind, LogLevel, NbdEndpoint};

#[test]
fn embedded_target_default_is_the_documented_one() {
    let c = TargetConfig::embedded_default();
    c.validate().expect("embedded default validates");
    assert_eq!(c.portals.len(), 2);
    assert_eq!(c.portals[0].transport, Transport::Tcp);
    assert_eq!(c.portals[0].listen.to_string(), "127.0.0.1:3260");
    assert_eq!(c.portals[1].transport, Transport::Iser);
    assert_eq!(c.portals[1].listen.to_string(), "127.0.0.1:3261");
    assert_eq!(c.targets.len(), 1);
    let t = &c.targets[0];
    assert_eq!(t.iqn.as_str(), "iqn.2026-11.io.iser-pi:target0");
    assert_eq!(t.luns.len(), 1);
    let lun = &t.luns[0];
    assert_eq!(lun.id, 0);
    assert_eq!(
        lun.backing,
        Backing::Ram {
            size: ByteSize(64 << 20)
        }
    );
    assert_eq!(lun.block_size, 512);
    assert_eq!(lun.protection.pi_type, 1);
    assert_eq!(lun.blocks(), Some(131_072));
    assert!(c.target("iqn.2026-11.io.iser-pi:target0").is_some());
}

#[test]
fn embedded_initiator_default_is_the_documented_one() {
    let c = InitiatorConfig::embedded_default();
    c.validate().expect("embedded default validates");
    assert_eq!(c.sessions.len(), 1);
    let s = &c.sessions[0];
    assert_eq!(s.target.as_str(), "iqn.2026-11.io.iser-pi:target0");
    assert_eq!(s.portal.to_string(), "127.0.0.1:3260");
    assert_eq!(s.transport, SessionTransport::Auto);
    assert_eq!(s.protection.mode, ProtectionMode::Insert);
    assert_eq!(
        s.luns[0].nbd,
        Some(NbdEndpoint::Unix(PathBuf::from(
            "/run/iser-initiator/lun0.sock"
        )))
    );
    // The embedded initiator logs in to the embedded target.
    let t = TargetConfig::embedded_default();
    assert_eq!(t.targets[0].iqn, s.target);
    assert_eq!(
        Some(t.portals[1].listen.clone()),
        s.iser_portal,
        "iSER portals match"
    );
}

#[test]
fn absent_sections_take_their_defaults() {
    let text = "[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\n\n[[targets.luns]]\nid = 3\nbacking = { type = \"ram\", size = 4096 }\n";
    let c = TargetConfig::from_str_named(text, "t.toml").expect("valid");
    assert_eq!(c.worker_threads, 0);
    assert!(c.effective_worker_threads() >= 1);
    assert_eq!(c.portals, TargetConfig::embedded_default().portals);
    assert_eq!(c.discovery.chap, None);
    assert_eq!(c.log.level, LogLevel::Info);
    let i = &c.iscsi;
    assert_eq!(i.max_recv_data_segment_length, 8192);
    assert_eq!(i.max_burst_length, 262_144);
    assert_eq!(i.first_burst_length, 65_536);
    assert!(i.immediate_data);
    assert!(i.initial_r2t);
    assert_eq!(i.max_outstanding_r2t, 1);
    assert_eq!(i.queue_depth, 128);
    assert_eq!(i.nop_in_interval, 15);
    assert_eq!(i.nop_in_timeout, 30);
    assert_eq!(c.iser.initiator_recv_data_segment_length, 131_072);
    assert_eq!(c.iser.target_recv_data_segment_length, 131_072);
    let t = &c.targets[0];
    assert!(t.acl.is_empty());
    assert_eq!(t.chap, None);
    assert_eq!(t.mutual_chap, None);
    let l = &t.luns[0];
    assert_eq!(l.block_size, 512);
    assert!(!l.read_only);
    assert_eq!(l.vendor, "ISER-PI");
    assert_eq!(l.product, "VIRTUAL-DISK");
    assert_eq!(l.serial, "");
    assert!(l.write_cache);
    assert!(!l.thin_provisioning);
    let p = &l.protection;
    assert_eq!(p.pi_type, 0);
    assert_eq!(p.store, PiStore::Sidecar);
    assert_eq!(p.pi_path, None);
    assert!(p.verify_received);
    assert!(p.verify_medium);
    assert_eq!(p.app_tag, 0);
    assert_eq!(l.sidecar_path(), None, "no PI, no sidecar");

    let text = "iqn = \"iqn.2026-11.io.example:i0\"\n\n[[sessions]]\ntarget = \"iqn.2026-11.io.example:t0\"\nportal = \"192.0.2.7:3260\"\n";
    let c = InitiatorConfig::from_str_named(text, "i.toml").expect("valid");
    assert!(c.discovery.is_empty());
    assert_eq!(c.log.level, LogLevel::Info);
    let s = &c.sessions[0];
    assert_eq!(s.transport, SessionTransport::Auto);
    assert_eq!(
        s.iser_portal,
        Some(FabricAddr::Tcp("192.0.2.7:3261".parse().expect("addr"))),
        "iSER portal defaults to the portal's IP, port 3261"
    );
    assert_eq!(s.header_digest, Digest::None);
    assert_eq!(s.data_digest, Digest::None);
    assert_eq!(s.nop_interval, 5);
    assert_eq!(s.nop_timeout, 5);
    assert_eq!(s.command_timeout, 30);
    assert_eq!(s.reconnect.delay, 5);
    assert_eq!(s.reconnect.max_attempts, 0);
    assert_eq!(s.chap, None);
    assert_eq!(s.protection.mode, ProtectionMode::Insert);
    assert_eq!(s.protection.checks, vec![PiCheck::Guard, PiCheck::Ref]);
    assert_eq!(s.protection.host_guard, HostGuard::Crc);
    assert_eq!(s.protection.app_tag, 0);
    assert_eq!(s.protection.protect_field(), 0b001);
    assert!(s.luns.is_empty());
}

#[test]
fn validation_collects_every_problem_in_file_order() {
    let text = r#"[iscsi]
queue_depth = 0
max_outstanding_r2t = 0

[[targets]]
iqn = "iqn.2026-11.io.example:t0"

[[targets.luns]]
id = 0
backing = { type = "ram", size = 1000 }
block_size = 1000

[[targets.luns]]
id = 0
backing = { type = "ram", size = "1MiB" }
vendor = "FAR TOO LONG"

[targets.luns.protection]
type = 4
"#;
    let e = TargetConfig::from_str_named(text, "many.toml").expect_err("invalid");
    let want = [
        "many.toml:2:15: iscsi.queue_depth: expected 1..1024, found 0",
        "many.toml:3:23: iscsi.max_outstanding_r2t: expected 1..65535, found 0",
        "many.toml:11:14: targets[0].luns[0].block_size: expected 512, 1024, 2048 or 4096, found 1000",
        "many.toml:14:6: targets[0].luns[1].id: expected a LUN id not used before in this target, found 0 (also luns[0])",
        "many.toml:16:10: targets[0].luns[1].vendor: expected at most 8 printable ASCII characters, found \"FAR TOO LONG\" (12 bytes)",
        "many.toml:19:8: targets[0].luns[1].protection.type: expected 0, 1, 2 or 3, found 4",
    ];
    assert_eq!(e.to_string(), want.join("\n"));
    assert_eq!(e.diagnostics.len(), want.len());
    assert_eq!(e.diagnostics[0].position, Some((2, 15)));
    assert_eq!(e.diagnostics[0].path, "iscsi.queue_depth");
}

#[test]
fn validate_without_a_file_names_the_key() {
    let mut c = TargetConfig::embedded_default();
    c.iscsi.queue_depth = 0;
    c.targets[0].luns[0].protection.pi_type = 9;
    let e = c.validate().expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "<config>: iscsi.queue_depth: expected 1..1024, found 0\n\
         <config>: targets[0].luns[0].protection.type: expected 0, 1, 2 or 3, found 9"
    );
}

#[test]
fn relative_paths_resolve_against_the_configuration_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("target.toml");
    let text = r#"[[portals]]
transport = "iser"
listen = "unix:run/fabric.sock"

[[targets]]
iqn = "iqn.2026-11.io.example:t0"

[[targets.luns]]
id = 0
backing = { type = "file", path = "data/lun0.img", create = true, size = "1MiB" }

[targets.luns.protection]
type = 1
"#;
    std::fs::write(&cfg, text).expect("write");
    let c = TargetConfig::load(&cfg).expect("valid");
    let lun = &c.targets[0].luns[0];
    assert_eq!(
        lun.backing,
        Backing::File {
            path: dir.path().join("data/lun0.img"),
            create: true,
            size: Some(ByteSize(1 << 20)),
        }
    );
    assert_eq!(
        lun.sidecar_path(),
        Some(dir.path().join("data/lun0.img.pi"))
    );
    assert_eq!(
        c.portals[0].listen,
        FabricAddr::Unix(dir.path().join("run/fabric.sock"))
    );
    assert_eq!(lun.blocks(), Some(2048));

    let icfg = dir.path().join("initiator.toml");
    let text = "iqn = \"iqn.2026-11.io.example:i0\"\n\n[[sessions]]\ntarget = \"iqn.2026-11.io.example:t0\"\nportal = \"127.0.0.1:3260\"\niser_portal = \"unix:run/fabric.sock\"\n\n[[sessions.luns]]\nid = 0\nnbd = \"unix:nbd/lun0.sock\"\nfuse = \"mnt\"\n";
    std::fs::write(&icfg, text).expect("write");
    let c = InitiatorConfig::load(&icfg).expect("valid");
    let s = &c.sessions[0];
    assert_eq!(
        s.iser_portal,
        Some(FabricAddr::Unix(dir.path().join("run/fabric.sock")))
    );
    assert_eq!(
        s.luns[0].nbd,
        Some(NbdEndpoint::Unix(dir.path().join("nbd/lun0.sock")))
    );
    assert_eq!(s.luns[0].fuse, Some(dir.path().join("mnt")));
}

#[test]
fn a_missing_file_is_one_clear_error() {
    let e = TargetConfig::load("/nonexistent/target.toml").expect_err("missing");
    assert_eq!(
        e.to_string(),
        "/nonexistent/target.toml: cannot read configuration: No such file or directory (os error 2)"
    );
}

#[test]
fn check_returns_the_effective_text_or_every_error() {
    let text = conf::check(None, Kind::Target).expect("embedded target");
    assert!(
        text.contains("iqn = \"iqn.2026-11.io.iser-pi:target0\""),
        "{text}"
    );
    assert!(text.contains("queue_depth = 128"), "{text}");
    let text = conf::check(None, Kind::Initiator).expect("embedded initiator");
    assert!(text.contains("mode = \"insert\""), "{text}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[iscsi]\nqueue_depth = 0\nnop_in_timeout = 0\n").expect("write");
    let e = conf::check(Some(&path), Kind::Target).expect_err("invalid");
    let name = path.display();
    assert_eq!(
        e.to_string(),
        format!(
            "{name}:1:1: targets: expected at least one [[targets]] table, found none\n\
             {name}:2:15: iscsi.queue_depth: expected 1..1024, found 0\n\
             {name}:3:18: iscsi.nop_in_timeout: expected 1..3600, found 0"
        )
    );
    let code = conf::cli::check_config(Some(&path), Kind::Target);
    assert_eq!(code, std::process::ExitCode::from(conf::cli::EXIT_CONFIG));
    assert_eq!(
        conf::cli::check_config(None, Kind::Initiator),
        std::process::ExitCode::SUCCESS
    );
}

#[test]
fn the_same_file_is_refused_by_the_other_daemon() {
    let e = conf::check(None, Kind::Target).and_then(|text| {
        InitiatorConfig::from_str_named(&text, "target-as-initiator.toml").map(|_| String::new())
    });
    let e = e.expect_err("a target file is no initiator file");
    assert!(
        e.to_string().starts_with(
            "target-as-initiator.toml:3:1: worker_threads: unknown field `worker_threads`"
        ),
        "{e}"
    );
}

#[cfg(not(feature = "hw"))]
#[test]
fn rdma_device_portal_needs_the_hw_feature() {
    let text = "[[portals]]\ntransport = \"iser\"\nlisten = \"192.0.2.1:3260\"\ndevice = \"mlx5_0\"\n\n[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\n\n[[targets.luns]]\nid = 0\nbacking = { type = \"ram\", size = \"1MiB\" }\n";
    let e = TargetConfig::from_str_named(text, "hw.toml").expect_err("no hw");
    assert_eq!(
        e.to_string(),
        "hw.toml:4:10: portals[0].device: expected no RDMA device: this build has no hardware \
         RDMA support (build with the \"hw\" feature), found \"mlx5_0\"; remove device to use \
         the soft mlx5 fabric"
    );
}

#[cfg(feature = "hw")]
#[test]
fn rdma_device_portal_is_accepted_with_the_hw_feature() {
    let text = "[[portals]]\ntransport = \"iser\"\nlisten = \"192.0.2.1:3260\"\ndevice = \"mlx5_0\"\n\n[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\n\n[[targets.luns]]\nid = 0\nbacking = { type = \"ram\", size = \"1MiB\" }\n";
    let c = TargetConfig::from_str_named(text, "hw.toml").expect("hw build");
    assert_eq!(c.portals[0].device.as_deref(), Some("mlx5_0"));
}

#[test]
fn lun_policy_overrides_merge_with_the_session_policy() {
    let text = r#"iqn = "iqn.2026-11.io.example:i0"

[[sessions]]
target = "iqn.2026-11.io.example:t0"
portal = "127.0.0.1:3260"
protection = { mode = "insert", app_tag = 7 }

[[sessions.luns]]
id = 0

[[sessions.luns]]
id = 1
protection = { mode = "pass", host_guard = "csum" }
"#;
    let c = InitiatorConfig::from_str_named(text, "i.toml").expect("valid");
    let s = &c.sessions[0];
    let p0 = s.policy_for_lun(0);
    assert_eq!(p0, s.protection);
    let p1 = s.policy_for_lun(1);
    assert_eq!(p1.mode, ProtectionMode::Pass);
    assert_eq!(p1.host_guard, HostGuard::Csum);
    assert_eq!(p1.app_tag, 7, "app_tag comes from the session");
    assert_eq!(
        s.policy_for_lun(9),
        s.protection,
        "unlisted LUNs get the session policy"
    );
}

#[test]
fn snake_case_keys_map_back_to_rfc_key_names() {
    let text = "[iscsi]\ninitial_r2t = false\nimmediate_data = false\nmax_recv_data_segment_length = 65536\nmax_burst_length = 1048576\nfirst_burst_length = 131072\nmax_outstanding_r2t = 4\n\n[iser]\ninitiator_recv_data_segment_length = 8192\ntarget_recv_data_segment_length = 262144\n\n[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\n\n[[targets.luns]]\nid = 0\nbacking = { type = \"ram\", size = \"1MiB\" }\n";
    let c = TargetConfig::from_str_named(text, "t.toml").expect("valid");
    let keys: Vec<String> = c
        .iscsi
        .offered_keys()
        .into_iter()
        .chain(c.iser.offered_keys())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        keys,
        [
            "InitialR2T=No",
            "ImmediateData=No",
            "MaxRecvDataSegmentLength=65536",
            "MaxBurstLength=1048576",
            "FirstBurstLength=131072",
            "MaxOutstandingR2T=4",
            "InitiatorRecvDataSegmentLength=8192",
            "TargetRecvDataSegmentLength=262144",
        ]
    );
    let defaults: Vec<String> = TargetConfig::embedded_default()
        .iscsi
        .offered_keys()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        defaults,
        [
            "InitialR2T=Yes",
            "ImmediateData=Yes",
            "MaxRecvDataSegmentLength=8192",
            "MaxBurstLength=262144",
            "FirstBurstLength=65536",
            "MaxOutstandingR2T=1",
        ]
    );
}
