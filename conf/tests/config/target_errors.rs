//! One case per target validation rule: the exact diagnostic, with file:line:col and key path.

use conf::target::TargetConfig;

/// A valid target with one RAM LUN; cases append to it or replace parts of it.
const BASE: &str = r#"[[targets]]
iqn = "iqn.2026-11.io.example:t0"

[[targets.luns]]
id = 0
backing = { type = "ram", size = "1MiB" }
"#;

fn errors(text: &str) -> String {
    match TargetConfig::from_str_named(text, "target.toml") {
        Ok(c) => panic!(
            "expected an error, got a valid configuration:\n{}",
            c.effective_toml()
        ),
        Err(e) => e.to_string(),
    }
}

/// (name, configuration text, every expected diagnostic line)
pub(crate) fn cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "unknown_top_level_key",
            format!("colour = \"blue\"\n{BASE}"),
            "target.toml:1:1: colour: unknown field `colour`, expected one of `worker_threads`, `portals`, `discovery`, `iscsi`, `iser`, `log`, `targets`",
        ),
        (
            "unknown_lun_key",
            format!("{BASE}sectors = 8\n"),
            "target.toml:7:1: targets[0].luns[0].sectors: unknown field `sectors`, expected one of `id`, `backing`, `block_size`, `read_only`, `vendor`, `product`, `serial`, `write_cache`, `thin_provisioning`, `protection`",
        ),
        (
            "unknown_backing_key",
            BASE.replace("size = \"1MiB\"", "size = \"1MiB\", sparse = true"),
            "target.toml:6:42: targets[0].luns[0].backing.sparse: unknown field `sparse`, expected one of `type`, `path`, `create`, `size`",
        ),
        (
            "unknown_protection_key",
            format!("{BASE}[targets.luns.protection]\ntype = 1\ndix = true\n"),
            "target.toml:9:1: targets[0].luns[0].protection.dix: unknown field `dix`, expected one of `type`, `store`, `pi_path`, `verify_received`, `verify_medium`, `app_tag`",
        ),
        (
            "invalid_toml",
            format!("{BASE}block_size = \n"),
            "target.toml:7:14: invalid TOML: invalid string; expected `\"`, `'`",
        ),
        (
            "wrong_type",
            format!("{BASE}block_size = \"512\"\n"),
            "target.toml:7:14: targets[0].luns[0].block_size: invalid type: string \"512\", expected u32",
        ),
        (
            "missing_iqn",
            "[[targets]]\nluns = []\n".to_owned(),
            "target.toml:1:1: targets[0].iqn: expected this required key, found none",
        ),
        (
            "missing_backing",
            "[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\n\n[[targets.luns]]\nid = 0\n".to_owned(),
            "target.toml:4:1: targets[0].luns[0].backing: expected this required key, found none",
        ),
        (
            "bad_target_iqn",
            BASE.replace("io.example:t0", "example:t0"),
            "target.toml:2:7: targets[0].iqn: expected a reversed domain name after the date (lower-case labels of a-z, 0-9 and '-' separated by dots, e.g. com.example), found \"example\" in \"iqn.2026-11.example:t0\"",
        ),
        (
            "bad_acl_entry",
            BASE.replace("[[targets.luns]]", "acl = [\"iqn.2026-11.io.example:i0\", \"eui.1234\"]\n\n[[targets.luns]]"),
            "target.toml:4:37: targets[0].acl[1]: expected eui. followed by 16 hex digits, found \"eui.1234\"",
        ),
        (
            "duplicate_acl_entry",
            BASE.replace("[[targets.luns]]", "acl = [\"iqn.2026-11.io.example:i0\", \"iqn.2026-11.io.example:i0\"]\n\n[[targets.luns]]"),
            "target.toml:4:37: targets[0].acl[1]: expected each initiator once, found iqn.2026-11.io.example:i0 again",
        ),
        (
            "bad_size",
            BASE.replace("\"1MiB\"", "\"1 MiBs\""),
            "target.toml:6:34: targets[0].luns[0].backing.size: expected a size such as 4096, \"64MiB\" or \"1GiB\" (units B, KiB, MiB, GiB, TiB, kB, MB, GB, TB), found \"1 MiBs\"",
        ),
        (
            "ram_size_zero",
            BASE.replace("\"1MiB\"", "0"),
            "target.toml:6:34: targets[0].luns[0].backing.size: expected a size above 0, found 0",
        ),
        (
            "ram_without_size",
            BASE.replace(", size = \"1MiB\"", ""),
            "target.toml:6:11: targets[0].luns[0].backing: expected size with type = \"ram\", found none",
        ),
        (
            "ram_with_path",
            BASE.replace("size = \"1MiB\"", "size = \"1MiB\", path = \"x.img\""),
            "target.toml:6:11: targets[0].luns[0].backing: expected no path with type = \"ram\", found path",
        ),
        (
            "block_with_size",
            BASE.replace("type = \"ram\"", "type = \"block\", path = \"/dev/null\""),
            "target.toml:6:11: targets[0].luns[0].backing: expected no size with type = \"block\", found size",
        ),
        (
            "file_without_path",
            BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", create = true, size = \"1MiB\""),
            "target.toml:6:11: targets[0].luns[0].backing: expected path with type = \"file\", found none",
        ),
        (
            "file_create_without_size",
            BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/nonexistent/lun.img\", create = true"),
            "target.toml:6:68: targets[0].luns[0].backing.create: expected size with create = true, found no size",
        ),
        (
            "file_size_without_create",
            BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/nonexistent/lun.img\", size = \"1MiB\""),
            "target.toml:6:66: targets[0].luns[0].backing.size: expected no size without create = true (an existing file keeps its size), found a size",
        ),
        (
            "file_missing",
            BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/nonexistent/lun.img\""),
            "target.toml:6:35: targets[0].luns[0].backing.path: expected an existing file, found no file at /nonexistent/lun.img (set create = true and size to create it)",
        ),
        (
            "lun_id_too_large",
            BASE.replace("id = 0", "id = 16384"),
            "target.toml:5:6: targets[0].luns[0].id: expected 0..16383, found 16384",
        ),
        (
            "lun_id_negative",
            BASE.replace("id = 0", "id = -1"),
            "target.toml:5:6: targets[0].luns[0].id: invalid value: integer `-1`, expected u16",
        ),
        (
            "duplicate_lun_id",
            format!("{BASE}\n[[targets.luns]]\nid = 0\nbacking = {{ type = \"ram\", size = \"2MiB\" }}\n"),
            "target.toml:9:6: targets[0].luns[1].id: expected a LUN id not used before in this target, found 0 (also luns[0])",
        ),
        (
            "duplicate_target_iqn",
            format!("{BASE}\n{BASE}"),
            "target.toml:9:7: targets[1].iqn: expected a target name not used before, found iqn.2026-11.io.example:t0 (also targets[0])",
        ),
        (
            "shared_backing_file",
            format!("{}\n[[targets.luns]]\nid = 1\nbacking = {{ type = \"file\", path = \"/tmp/shared.img\", create = true, size = \"1MiB\" }}\n", BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/tmp/shared.img\", create = true, size = \"1MiB\"")),
            "target.toml:10:35: targets[0].luns[1].backing.path: expected a store not shared with another LUN, found /tmp/shared.img (also used by iqn.2026-11.io.example:t0 LUN 0)",
        ),
        (
            "block_size_not_supported",
            format!("{BASE}block_size = 1000\n"),
            "target.toml:7:14: targets[0].luns[0].block_size: expected 512, 1024, 2048 or 4096, found 1000",
        ),
        (
            "pi_block_size",
            format!("{BASE}block_size = 2048\n[targets.luns.protection]\ntype = 1\n"),
            "target.toml:7:14: targets[0].luns[0].block_size: expected 512 or 4096 with protection type 1 (the PI intervals the HCA supports), found 2048",
        ),
        (
            "pi_type_out_of_range",
            format!("{BASE}\n[targets.luns.protection]\n    type = 5\n"),
            "target.toml:9:12: targets[0].luns[0].protection.type: expected 0, 1, 2 or 3, found 5",
        ),
        (
            "size_not_multiple_of_block",
            BASE.replace("\"1MiB\"", "1000"),
            "target.toml:6:34: targets[0].luns[0].backing.size: expected a multiple of block_size (512), found 1000 bytes",
        ),
        (
            "interleaved_on_ram",
            format!("{BASE}[targets.luns.protection]\ntype = 1\nstore = \"interleaved\"\n"),
            "target.toml:9:9: targets[0].luns[0].protection.store: expected \"sidecar\" for a RAM store (interleaved PI needs a file or block device), found \"interleaved\"",
        ),
        (
            "interleaved_size",
            format!("{}[targets.luns.protection]\ntype = 1\nstore = \"interleaved\"\n", BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/tmp/il.img\", create = true, size = \"1MiB\"")),
            "target.toml:6:72: targets[0].luns[0].backing.size: expected a multiple of block_size + 8 = 520 (interleaved PI), found 1048576 bytes",
        ),
        (
            "sidecar_on_block_needs_pi_path",
            format!("{}[targets.luns.protection]\ntype = 1\n", BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"block\", path = \"/dev/null\"")),
            "target.toml:6:36: targets[0].luns[0].backing.path: expected a block device (use type = \"file\" for regular files), found a character device at /dev/null\n\
             target.toml:7:1: targets[0].luns[0].protection.pi_path: expected pi_path for sidecar PI on block device /dev/null (a .pi file beside a device node is not kept), found none",
        ),
        (
            "pi_path_on_ram",
            format!("{BASE}[targets.luns.protection]\ntype = 1\npi_path = \"/tmp/x.pi\"\n"),
            "target.toml:9:11: targets[0].luns[0].protection.pi_path: expected no pi_path for a RAM store (PI is kept in memory)",
        ),
        (
            "unknown_pi_store",
            format!("{BASE}[targets.luns.protection]\ntype = 1\nstore = \"dix\"\n"),
            "target.toml:9:9: targets[0].luns[0].protection.store: unknown variant `dix`, expected `sidecar` or `interleaved`",
        ),
        (
            "app_tag_too_large",
            format!("{BASE}[targets.luns.protection]\ntype = 1\napp_tag = 65536\n"),
            "target.toml:9:11: targets[0].luns[0].protection.app_tag: invalid value: integer `65536`, expected u16",
        ),
        (
            "vendor_too_long",
            format!("{BASE}vendor = \"VENDOR-NINE\"\n"),
            "target.toml:7:10: targets[0].luns[0].vendor: expected at most 8 printable ASCII characters, found \"VENDOR-NINE\" (11 bytes)",
        ),
        (
            "product_too_long",
            format!("{BASE}product = \"A PRODUCT NAME 17\"\n"),
            "target.toml:7:11: targets[0].luns[0].product: expected at most 16 printable ASCII characters, found \"A PRODUCT NAME 17\" (17 bytes)",
        ),
        (
            "serial_not_ascii",
            format!("{BASE}serial = \"séries\"\n"),
            "target.toml:7:10: targets[0].luns[0].serial: expected at most 64 printable ASCII characters, found \"séries\" (7 bytes)",
        ),
        (
            "no_targets",
            "worker_threads = 2\n".to_owned(),
            "target.toml:1:1: targets: expected at least one [[targets]] table, found none",
        ),
        (
            "target_without_luns",
            "[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\n".to_owned(),
            "target.toml:1:1: targets[0].luns: expected at least one [[targets.luns]] table for iqn.2026-11.io.example:t0, found none",
        ),
        (
            "worker_threads_too_many",
            format!("worker_threads = 5000\n{BASE}"),
            "target.toml:1:18: worker_threads: expected 0 (one per CPU) ..1024, found 5000",
        ),
        (
            "no_portals",
            format!("portals = []\n{BASE}"),
            "target.toml:1:11: portals: expected at least one [[portals]] table, found none",
        ),
        (
            "tcp_portal_on_unix_socket",
            format!("[[portals]]\ntransport = \"tcp\"\nlisten = \"unix:/tmp/t.sock\"\n\n{BASE}"),
            "target.toml:3:10: portals[0].listen: expected ip:port for a tcp portal (unix: is for the soft iSER fabric), found unix:/tmp/t.sock",
        ),
        (
            "tcp_portal_with_device",
            format!("[[portals]]\ntransport = \"tcp\"\nlisten = \"127.0.0.1:3260\"\ndevice = \"mlx5_0\"\n\n{BASE}"),
            "target.toml:4:10: portals[0].device: expected no device on a tcp portal (devices are for transport = \"iser\"), found \"mlx5_0\"",
        ),
        (
            "duplicate_portal",
            format!("[[portals]]\ntransport = \"tcp\"\nlisten = \"127.0.0.1:3260\"\n\n[[portals]]\ntransport = \"tcp\"\nlisten = \"127.0.0.1:3260\"\n\n{BASE}"),
            "target.toml:7:10: portals[1].listen: expected a listen address not used by another portal, found 127.0.0.1:3260 (also portals[0])",
        ),
        (
            "bad_listen_address",
            format!("[[portals]]\ntransport = \"tcp\"\nlisten = \"localhost:3260\"\n\n{BASE}"),
            "target.toml:3:10: portals[0].listen: expected an IP address and port such as \"127.0.0.1:3260\" or \"[::1]:3260\", found \"localhost:3260\"",
        ),
        (
            "unknown_transport",
            format!("[[portals]]\ntransport = \"rdma\"\nlisten = \"127.0.0.1:3260\"\n\n{BASE}"),
            "target.toml:2:13: portals[0].transport: unknown variant `rdma`, expected `tcp` or `iser`",
        ),
        (
            "max_recv_data_segment_length_range",
            format!("[iscsi]\nmax_recv_data_segment_length = 256\n\n{BASE}"),
            "target.toml:2:32: iscsi.max_recv_data_segment_length: expected 512..16777215, found 256",
        ),
        (
            "max_burst_length_range",
            format!("[iscsi]\nmax_burst_length = 16777216\nfirst_burst_length = 512\n\n{BASE}"),
            "target.toml:2:20: iscsi.max_burst_length: expected 512..16777215, found 16777216",
        ),
        (
            "first_burst_above_max_burst",
            format!("[iscsi]\nmax_burst_length = 8192\n\n{BASE}"),
            "target.toml:1:1: iscsi.first_burst_length: expected at most max_burst_length (8192), found 65536",
        ),
        (
            "max_outstanding_r2t_range",
            format!("[iscsi]\nmax_outstanding_r2t = 0\n\n{BASE}"),
            "target.toml:2:23: iscsi.max_outstanding_r2t: expected 1..65535, found 0",
        ),
        (
            "queue_depth_range",
            format!("[iscsi]\nqueue_depth = 4096\n\n{BASE}"),
            "target.toml:2:15: iscsi.queue_depth: expected 1..1024, found 4096",
        ),
        (
            "nop_in_interval_range",
            format!("[iscsi]\nnop_in_interval = 3601\n\n{BASE}"),
            "target.toml:2:19: iscsi.nop_in_interval: expected 0..3600, found 3601",
        ),
        (
            "nop_in_timeout_range",
            format!("[iscsi]\nnop_in_timeout = 0\n\n{BASE}"),
            "target.toml:2:18: iscsi.nop_in_timeout: expected 1..3600, found 0",
        ),
        (
            "iser_initiator_recv_range",
            format!("[iser]\ninitiator_recv_data_segment_length = 100\n\n{BASE}"),
            "target.toml:2:38: iser.initiator_recv_data_segment_length: expected 512..16777215, found 100",
        ),
        (
            "iser_target_recv_range",
            format!("[iser]\ntarget_recv_data_segment_length = 16777216\n\n{BASE}"),
            "target.toml:2:35: iser.target_recv_data_segment_length: expected 512..16777215, found 16777216",
        ),
        (
            "unknown_log_level",
            format!("[log]\nlevel = \"verbose\"\n\n{BASE}"),
            "target.toml:2:9: log.level: unknown variant `verbose`, expected one of `error`, `warn`, `info`, `debug`, `trace`",
        ),
        (
            "chap_short_secret",
            format!("{}\n[targets.chap]\nusername = \"u\"\nsecret = \"short\"\n", BASE),
            "target.toml:10:10: targets[0].chap.secret: expected a CHAP secret of 12..255 bytes (RFC 7143 section 12.1.3 asks for at least 96 bits), found 5 bytes",
        ),
        (
            "chap_long_secret",
            format!("{}\n[targets.chap]\nusername = \"u\"\nsecret = \"{}\"\n", BASE, "s".repeat(256)),
            "target.toml:10:10: targets[0].chap.secret: expected a CHAP secret of 12..255 bytes (RFC 7143 section 12.1.3 asks for at least 96 bits), found 256 bytes",
        ),
        (
            "chap_empty_username",
            format!("{}\n[targets.chap]\nusername = \"\"\nsecret = \"twelve-bytes\"\n", BASE),
            "target.toml:9:12: targets[0].chap.username: expected a user name of 1..255 bytes, found 0 bytes",
        ),
        (
            "chap_secret_and_file",
            format!("{}\n[targets.chap]\nusername = \"u\"\nsecret = \"twelve-bytes\"\nsecret_file = \"/nonexistent\"\n", BASE),
            "target.toml:10:10: targets[0].chap.secret: expected either secret or secret_file, found both",
        ),
        (
            "chap_no_secret",
            format!("{}\n[targets.chap]\nusername = \"u\"\n", BASE),
            "target.toml:8:1: targets[0].chap: expected secret or secret_file, found neither",
        ),
        (
            "chap_missing_secret_file",
            format!("{}\n[targets.chap]\nusername = \"u\"\nsecret_file = \"/nonexistent/chap\"\n", BASE),
            "target.toml:10:15: targets[0].chap.secret_file: cannot read secret file /nonexistent/chap: No such file or directory (os error 2)",
        ),
        (
            "mutual_chap_alone",
            format!("{}\n[targets.mutual_chap]\nusername = \"t\"\nsecret = \"twelve-bytes\"\n", BASE),
            "target.toml:8:1: targets[0].mutual_chap: expected a [chap] section too: mutual CHAP authenticates the target after the initiator, found mutual_chap alone",
        ),
        (
            "mutual_chap_same_secret",
            format!("{}\n[targets.chap]\nusername = \"u\"\nsecret = \"twelve-bytes\"\n\n[targets.mutual_chap]\nusername = \"t\"\nsecret = \"twelve-bytes\"\n", BASE),
            "target.toml:12:1: targets[0].mutual_chap: expected a mutual CHAP secret different from the one-way secret (RFC 7143 section 12.1.3), found the same secret",
        ),
        (
            "discovery_chap_short_secret",
            format!("[discovery.chap]\nusername = \"d\"\nsecret = \"abc\"\n\n{BASE}"),
            "target.toml:3:10: discovery.chap.secret: expected a CHAP secret of 12..255 bytes (RFC 7143 section 12.1.3 asks for at least 96 bits), found 3 bytes",
        ),
        (
            "block_missing",
            BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"block\", path = \"/nonexistent/sdz\""),
            "target.toml:6:36: targets[0].luns[0].backing.path: expected an existing block device, found /nonexistent/sdz: No such file or directory (os error 2)",
        ),
        (
            "file_is_a_directory",
            BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/\""),
            "target.toml:6:35: targets[0].luns[0].backing.path: expected a regular file (use type = \"block\" for devices), found a directory at /",
        ),
        (
            "portal_overlaps_a_wildcard",
            format!("[[portals]]\ntransport = \"tcp\"\nlisten = \"0.0.0.0:3260\"\n\n[[portals]]\ntransport = \"iser\"\nlisten = \"127.0.0.1:3260\"\n\n{BASE}"),
            "target.toml:7:10: portals[1].listen: expected a listen address not used by another portal, found 127.0.0.1:3260 (also portals[0])",
        ),
        (
            "app_tag_escape",
            format!("{BASE}[targets.luns.protection]\ntype = 1\napp_tag = 0xFFFF\n"),
            "target.toml:9:11: targets[0].luns[0].protection.app_tag: expected an application tag other than 0xFFFF (65535): blocks carrying the escape tag are never checked, found 65535",
        ),
        (
            "pi_path_with_interleaved",
            format!("{}[targets.luns.protection]\ntype = 1\nstore = \"interleaved\"\npi_path = \"/tmp/il.pi\"\n", BASE.replace("type = \"ram\", size = \"1MiB\"", "type = \"file\", path = \"/tmp/il.img\", create = true, size = 532480")),
            "target.toml:10:11: targets[0].luns[0].protection.pi_path: expected no pi_path with store = \"interleaved\" (PI lives in the data file)",
        ),
    ]
}

#[test]
fn base_is_valid() {
    TargetConfig::from_str_named(BASE, "target.toml").expect("base configuration");
}

#[test]
fn every_rule_reports_file_line_column_and_key() {
    for (name, text, want) in cases() {
        assert_eq!(errors(&text), want, "case {name}:\n{text}");
    }
}
