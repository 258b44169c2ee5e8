//! One case per initiator validation rule: the exact diagnostic, with file:line:col and key path.

use conf::initiator::InitiatorConfig;

/// A valid initiator with one session and one exported LUN.
const BASE: &str = r#"iqn = "iqn.2026-11.io.example:i0"

[[sessions]]
target = "iqn.2026-11.io.example:t0"
portal = "127.0.0.1:3260"

[[sessions.luns]]
id = 0
nbd = "unix:/tmp/lun0.sock"
"#;

fn errors(text: &str) -> String {
    match InitiatorConfig::from_str_named(text, "initiator.toml") {
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
            "missing_iqn",
            BASE.replace("iqn = \"iqn.2026-11.io.example:i0\"\n", ""),
            "initiator.toml:1:1: iqn: expected this required key, found none",
        ),
        (
            "bad_iqn",
            BASE.replace("io.example:i0", "io.example:I0"),
            "initiator.toml:1:7: iqn: expected only a-z, 0-9, '-', '.' and ':' after the naming authority (iSCSI names are lower case), found 'I' in \"iqn.2026-11.io.example:I0\"",
        ),
        (
            "unknown_top_level_key",
            format!("name = \"x\"\n{BASE}"),
            "initiator.toml:1:1: name: unknown field `name`, expected one of `iqn`, `discovery`, `log`, `sessions`",
        ),
        (
            "unknown_session_key",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nretries = 3"),
            "initiator.toml:6:1: sessions[0].retries: unknown field `retries`, expected one of `target`, `portal`, `iser_portal`, `transport`, `header_digest`, `data_digest`, `nop_interval`, `nop_timeout`, `command_timeout`, `chap`, `mutual_chap`, `reconnect`, `protection`, `luns`",
        ),
        (
            "bad_discovery_portal",
            BASE.replace("\n\n[[sessions]]", "\ndiscovery = [\"127.0.0.1:3260\", \"10.0.0.1\"]\n\n[[sessions]]"),
            "initiator.toml:2:32: discovery[1]: expected an IP address and port such as \"127.0.0.1:3260\" or \"[::1]:3260\", found \"10.0.0.1\"",
        ),
        (
            "duplicate_discovery_portal",
            BASE.replace("\n\n[[sessions]]", "\ndiscovery = [\"127.0.0.1:3260\", \"127.0.0.1:3260\"]\n\n[[sessions]]"),
            "initiator.toml:2:32: discovery[1]: expected each portal once, found 127.0.0.1:3260 again (also discovery[0])",
        ),
        (
            "unknown_transport",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\ntransport = \"fc\""),
            "initiator.toml:6:13: sessions[0].transport: unknown variant `fc`, expected one of `iser`, `tcp`, `auto`",
        ),
        (
            "header_digest_with_iser",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\ntransport = \"iser\"\nheader_digest = \"crc32c\""),
            "initiator.toml:7:17: sessions[0].header_digest: expected \"none\" with transport \"iser\" (digests are not used over iSER; RFC 7145), found \"crc32c\"",
        ),
        (
            "data_digest_with_iser",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\ntransport = \"iser\"\ndata_digest = \"crc32c\""),
            "initiator.toml:7:15: sessions[0].data_digest: expected \"none\" with transport \"iser\" (digests are not used over iSER; RFC 7145), found \"crc32c\"",
        ),
        (
            "unknown_digest",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\ndata_digest = \"md5\""),
            "initiator.toml:6:15: sessions[0].data_digest: unknown variant `md5`, expected `none` or `crc32c`",
        ),
        (
            "iser_portal_with_tcp",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\ntransport = \"tcp\"\niser_portal = \"127.0.0.1:3261\""),
            "initiator.toml:7:15: sessions[0].iser_portal: expected no iser_portal with transport \"tcp\", found 127.0.0.1:3261",
        ),
        (
            "duplicate_session",
            format!("{BASE}\n[[sessions]]\ntarget = \"iqn.2026-11.io.example:t0\"\nportal = \"127.0.0.1:3260\"\n"),
            "initiator.toml:12:10: sessions[1].target: expected one session per target and portal, found iqn.2026-11.io.example:t0 at 127.0.0.1:3260 again (also sessions[0])",
        ),
        (
            "nop_interval_range",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nnop_interval = 4000"),
            "initiator.toml:6:16: sessions[0].nop_interval: expected 0..3600, found 4000",
        ),
        (
            "nop_timeout_range",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nnop_timeout = 0"),
            "initiator.toml:6:15: sessions[0].nop_timeout: expected 1..3600, found 0",
        ),
        (
            "command_timeout_range",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\ncommand_timeout = 0"),
            "initiator.toml:6:19: sessions[0].command_timeout: expected 1..3600, found 0",
        ),
        (
            "reconnect_delay_range",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nreconnect = { delay = 0 }"),
            "initiator.toml:6:23: sessions[0].reconnect.delay: expected 1..3600, found 0",
        ),
        (
            "chap_short_secret",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nchap = { username = \"i0\", secret = \"0123456789a\" }"),
            "initiator.toml:6:36: sessions[0].chap.secret: expected a CHAP secret of 12..255 bytes (RFC 7143 section 12.1.3 asks for at least 96 bits), found 11 bytes",
        ),
        (
            "mutual_chap_alone",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nmutual_chap = { username = \"t0\", secret = \"0123456789ab\" }"),
            "initiator.toml:6:15: sessions[0].mutual_chap: expected a [chap] section too: mutual CHAP authenticates the target after the initiator, found mutual_chap alone",
        ),
        (
            "unknown_protection_mode",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nprotection = { mode = \"dix\" }"),
            "initiator.toml:6:23: sessions[0].protection.mode: unknown variant `dix`, expected one of `off`, `insert`, `pass`, `strip`",
        ),
        (
            "unknown_check",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nprotection = { checks = [\"guard\", \"crc\"] }"),
            "initiator.toml:6:35: sessions[0].protection.checks[1]: unknown variant `crc`, expected one of `guard`, `ref`, `app`",
        ),
        (
            "duplicate_check",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nprotection = { checks = [\"guard\", \"guard\"] }"),
            "initiator.toml:6:25: sessions[0].protection.checks: expected each check once, found \"guard\" twice",
        ),
        (
            "csum_guard_with_insert",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nprotection = { mode = \"insert\", host_guard = \"csum\" }"),
            "initiator.toml:6:46: sessions[0].protection.host_guard: expected \"crc\" with mode \"insert\" (host memory carries no PI; csum is for pass and strip), found \"csum\"",
        ),
        (
            "csum_guard_by_lun_override",
            format!("{BASE}protection = {{ host_guard = \"csum\" }}\n"),
            "initiator.toml:10:29: sessions[0].luns[0].protection.host_guard: expected \"crc\" with mode \"insert\" (host memory carries no PI; csum is for pass and strip), found \"csum\"",
        ),
        (
            "insert_override_under_csum_session",
            BASE.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.1:3260\"\nprotection = { mode = \"pass\", host_guard = \"csum\" }").replace("nbd = \"unix:/tmp/lun0.sock\"", "nbd = \"unix:/tmp/lun0.sock\"\nprotection = { mode = \"insert\" }"),
            "initiator.toml:11:14: sessions[0].luns[0].protection.host_guard: expected \"crc\" with mode \"insert\" (host memory carries no PI; csum is for pass and strip), found \"csum\"",
        ),
        (
            "app_tag_too_large",
            format!("{BASE}protection = {{ app_tag = 70000 }}\n"),
            "initiator.toml:10:26: sessions[0].luns[0].protection.app_tag: invalid value: integer `70000`, expected u16",
        ),
        (
            "unknown_lun_protection_key",
            format!("{BASE}protection = {{ guard = \"crc\" }}\n"),
            "initiator.toml:10:16: sessions[0].luns[0].protection.guard: unknown field `guard`, expected one of `mode`, `checks`, `host_guard`, `app_tag`",
        ),
        (
            "lun_id_too_large",
            BASE.replace("id = 0", "id = 20000"),
            "initiator.toml:8:6: sessions[0].luns[0].id: expected 0..16383, found 20000",
        ),
        (
            "duplicate_lun_id",
            format!("{BASE}\n[[sessions.luns]]\nid = 0\n"),
            "initiator.toml:12:6: sessions[0].luns[1].id: expected a LUN id not used before in this session, found 0 (also luns[0])",
        ),
        (
            "bad_nbd_endpoint",
            BASE.replace("unix:/tmp/lun0.sock", "/tmp/lun0.sock"),
            "initiator.toml:9:7: sessions[0].luns[0].nbd: expected \"unix:<socket path>\" or \"tcp:<ip>:<port>\", found \"/tmp/lun0.sock\"",
        ),
        (
            "duplicate_nbd_endpoint",
            format!("{BASE}\n[[sessions.luns]]\nid = 1\nnbd = \"unix:/tmp/lun0.sock\"\n"),
            "initiator.toml:13:7: sessions[0].luns[1].nbd: expected an NBD endpoint not used by another LUN, found unix:/tmp/lun0.sock (also sessions[0].luns[0])",
        ),
        (
            "duplicate_fuse_mount",
            format!("{BASE}fuse = \"/mnt/a\"\n\n[[sessions.luns]]\nid = 1\nfuse = \"/mnt/a\"\n"),
            "initiator.toml:14:8: sessions[0].luns[1].fuse: expected a FUSE mount point not used by another LUN, found /mnt/a (also sessions[0].luns[0])",
        ),
        (
            "insert_with_escape_app_tag",
            format!("{BASE}protection = {{ app_tag = 65535 }}\n"),
            "initiator.toml:10:26: sessions[0].luns[0].protection.app_tag: expected an application tag other than 0xFFFF (65535) with mode \"insert\": blocks carrying the escape tag are never checked, found 65535",
        ),
    ]
}

#[test]
fn base_is_valid() {
    InitiatorConfig::from_str_named(BASE, "initiator.toml").expect("base configuration");
}

#[test]
fn every_rule_reports_file_line_column_and_key() {
    for (name, text, want) in cases() {
        assert_eq!(errors(&text), want, "case {name}:\n{text}");
    }
}
