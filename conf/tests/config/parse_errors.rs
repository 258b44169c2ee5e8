//! Errors found while parsing (TOML syntax, unknown keys, types, required keys): each
//! names the right key wherever in the document it sits.

use conf::initiator::InitiatorConfig;
use conf::target::TargetConfig;

fn initiator(text: &str) -> String {
    InitiatorConfig::from_str_named(text, "i.toml")
        .map(|_| ())
        .expect_err(text)
        .to_string()
}

fn target(text: &str) -> String {
    TargetConfig::from_str_named(text, "t.toml")
        .map(|_| ())
        .expect_err(text)
        .to_string()
}

const T: &str = "iqn = \"iqn.2026-11.io.x:t\"";
const I: &str = "iqn = \"iqn.2026-11.io.x:i\"";

#[test]
fn missing_keys_are_named_in_their_table() {
    let cases: [(String, &str); 7] = [
        (
            "discovery = [\"127.0.0.1:3260\"]\n".to_owned(),
            "i.toml:1:1: iqn: expected this required key, found none",
        ),
        (
            "[log]\nlevel = \"info\"\n".to_owned(),
            "i.toml:1:1: iqn: expected this required key, found none",
        ),
        (
            format!("{I}\n\n[[sessions]]\nportal = \"127.0.0.1:3260\"\n"),
            "i.toml:3:1: sessions[0].target: expected this required key, found none",
        ),
        (
            format!("{I}\nsessions = [{{ target = \"{}\" }}]\n", "iqn.2026-11.io.x:t"),
            "i.toml:2:13: sessions[0].portal: expected this required key, found none",
        ),
        (
            format!("{I}\n[[sessions]]\ntarget = \"iqn.2026-11.io.x:t\"\nportal = \"127.0.0.1:3260\"\n[[sessions.luns]]\nnbd = \"unix:/x\"\n\n[log]\n"),
            "i.toml:5:1: sessions[0].luns[0].id: expected this required key, found none",
        ),
        (
            format!("[[targets]]\n{T}\n[[targets.luns]]\nid = 0\n[targets.luns.backing]\nsize = 4096\n"),
            "i.toml:5:1: targets[0].luns[0].backing.type: expected this required key, found none",
        ),
        (
            format!("[[portals]]\nlisten = \"127.0.0.1:3260\"\n\n[[targets]]\n{T}\n"),
            "i.toml:1:1: portals[0].transport: expected this required key, found none",
        ),
    ];
    for (text, want) in cases {
        let got = if want.contains("targets") || want.contains("portals") {
            target(&text).replacen("t.toml", "i.toml", 1)
        } else {
            initiator(&text)
        };
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn syntax_and_shape_errors() {
    let cases: [(String, &str); 6] = [
        (
            format!("{T}\n{T}\n"),
            "t.toml:2:1: invalid TOML: duplicate key `iqn` in document root",
        ),
        (
            "[log]\n[log]\n".to_owned(),
            "t.toml:2:1: invalid TOML: invalid table header; duplicate key `log` in document root",
        ),
        (
            "[iscsi]\nqueue_depth = \n".to_owned(),
            "t.toml:2:15: invalid TOML: invalid string; expected `\"`, `'`",
        ),
        (
            format!("[[targets]]\n{T}\n[targets.luns]\nid = 0\n"),
            "t.toml:3:1: targets[0].luns: invalid type: map, expected a sequence",
        ),
        (
            format!("[[targets]]\n{T}\n[[targets.luns]]\nid = 0\nbacking = \"ram\"\n"),
            "t.toml:5:11: targets[0].luns[0].backing: invalid type: string \"ram\", expected struct RawBacking",
        ),
        (
            format!("[[targets]]\n{T}\n[[targets.luns]]\nid = 0\nbacking = {{ type = \"tape\" }}\n"),
            "t.toml:5:20: targets[0].luns[0].backing.type: unknown variant `tape`, expected one of `ram`, `file`, `block`",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(target(&text), want, "{text}");
    }
}

#[test]
fn errors_inside_inline_arrays_name_the_element() {
    let text = format!(
        "{I}\nsessions = [{{ target = \"iqn.2026-11.io.x:t\", portal = \"127.0.0.1:1\", luns = [{{ id = 0 }}, {{ id = 1, nbd = \"x\" }}] }}]\n"
    );
    assert_eq!(
        initiator(&text),
        "i.toml:2:106: sessions[0].luns[1].nbd: expected \"unix:<socket path>\" or \"tcp:<ip>:<port>\", found \"x\""
    );
}
