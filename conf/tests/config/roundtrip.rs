//! Round trips (effective TOML parses back to an equal configuration) and the shipped
//! example files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use conf::initiator::InitiatorConfig;
use conf::protection::{LunCaps, ProtectionMode};
use conf::target::{Backing, TargetConfig};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Copies the examples into a temp dir and creates the secret files they name (0600).
fn staged_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
            n += 1;
        }
    }
    assert_eq!(n, 3, "three example files");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    for (name, secret) in [
        ("discovery.chap", "discovery-secret-01"),
        ("target.chap", "initiator0-secret-02"),
        ("target-mutual.chap", "target-secret-03"),
        ("initiator.chap", "initiator0-secret-02"),
        ("initiator-mutual.chap", "target-secret-03"),
    ] {
        let p = dir.path().join("secrets").join(name);
        std::fs::write(&p, format!("{secret}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    dir
}

#[test]
fn every_example_loads_and_round_trips() {
    let dir = staged_examples();
    let ram = TargetConfig::load(dir.path().join("target-ram.toml")).expect("target-ram.toml");
    assert_eq!(
        ram.targets[0].luns[0].backing,
        Backing::Ram {
            size: conf::ByteSize(256 << 20)
        }
    );
    assert_eq!(ram.targets[0].luns[0].protection.pi_type, 1);

    let files =
        TargetConfig::load(dir.path().join("target-files.toml")).expect("target-files.toml");
    let types: Vec<u8> = files.targets[0]
        .luns
        .iter()
        .map(|l| l.protection.pi_type)
        .collect();
    assert_eq!(types, [1, 3]);
    assert_eq!(
        files.targets[0].luns[0].sidecar_path(),
        Some(dir.path().join("data/lun0.img.pi"))
    );
    let chap = files.targets[0].chap.as_ref().expect("chap");
    assert_eq!(
        chap.secret().map(|s| s.expose()),
        Some("initiator0-secret-02")
    );

    let init = InitiatorConfig::load(dir.path().join("initiator.toml")).expect("initiator.toml");
    let s = &init.sessions[0];
    assert_eq!(s.policy_for_lun(0).mode, ProtectionMode::Insert);
    assert_eq!(s.policy_for_lun(1).mode, ProtectionMode::Pass);
    assert!(s.luns[0].nbd.is_some() && s.luns[0].fuse.is_some());
    // The initiator's policies fit the example target's LUNs.
    for lun in &files.targets[0].luns {
        let caps = LunCaps {
            pi_type: Some(lun.protection.pi_type),
        };
        s.policy_for_lun(lun.id)
            .check_against(caps)
            .expect("policy fits");
    }

    // Secrets come from files here, so the effective text re-reads them: equal configs.
    for (name, effective) in [
        ("target-ram.toml", ram.effective_toml()),
        ("target-files.toml", files.effective_toml()),
    ] {
        let again_name = dir.path().join(format!("effective-{name}"));
        let again = TargetConfig::from_str_named(&effective, &again_name.display().to_string())
            .unwrap_or_else(|e| panic!("{name} effective text:\n{effective}\n{e}"));
        let orig = if name == "target-ram.toml" {
            &ram
        } else {
            &files
        };
        assert_eq!(&again, orig, "{name}");
        assert_eq!(
            again.effective_toml(),
            effective,
            "{name}: effective text is a fixed point"
        );
    }
    let effective = init.effective_toml();
    let again =
        InitiatorConfig::from_str_named(&effective, "effective-initiator.toml").expect("again");
    assert_eq!(again, init);
}

#[test]
fn inline_secrets_round_trip_once_unmasked() {
    const SECRET: &str = "an-inline-secret-42";
    let text = format!(
        "[[targets]]\niqn = \"iqn.2026-11.io.example:t0\"\nacl = [\"iqn.2026-11.io.example:i0\"]\nchap = {{ username = \"i0\", secret = \"{SECRET}\" }}\n\n[[targets.luns]]\nid = 7\nbacking = {{ type = \"ram\", size = 1048576 }}\nblock_size = 4096\nread_only = true\nserial = \"abc\"\n[targets.luns.protection]\ntype = 2\napp_tag = 65534\n"
    );
    let c = TargetConfig::from_str_named(&text, "/etc/iser/t.toml").expect("valid");
    let effective = c.effective_toml();
    assert!(!effective.contains(SECRET));
    let unmasked = effective.replace("\"***\"", &format!("{SECRET:?}"));
    let again = TargetConfig::from_str_named(&unmasked, "/etc/iser/t.toml").expect("again");
    assert_eq!(again, c);

    let e =
        TargetConfig::from_str_named(&effective, "/etc/iser/t.toml").expect_err("masked secret");
    assert!(
        e.to_string()
            .contains("targets[0].chap.secret: expected a CHAP secret of 12..255 bytes"),
        "{e}"
    );
}

#[test]
fn embedded_defaults_round_trip() {
    let t = TargetConfig::embedded_default();
    let again = TargetConfig::from_str_named(&t.effective_toml(), "t.toml").expect("target");
    assert_eq!(again, t);
    let i = InitiatorConfig::embedded_default();
    let again = InitiatorConfig::from_str_named(&i.effective_toml(), "i.toml").expect("initiator");
    assert_eq!(again, i);
}
