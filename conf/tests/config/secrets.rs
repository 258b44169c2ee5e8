//! Secrets: masked in the effective TOML and in Debug, read from files whose permissions
//! are checked.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use conf::initiator::InitiatorConfig;
use conf::target::TargetConfig;

const INLINE: &str = "inline-secret-0123";
const FROM_FILE: &str = "file-secret-456789";
const MUTUAL: &str = "mutual-secret-abcdef";

fn write_secret(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn target_text() -> String {
    format!(
        r#"[discovery.chap]
username = "disc"
secret = "{INLINE}"

[[targets]]
iqn = "iqn.2026-11.io.example:t0"

[targets.chap]
username = "i0"
secret_file = "chap.secret"

[targets.mutual_chap]
username = "t0"
secret = "{MUTUAL}"

[[targets.luns]]
id = 0
backing = {{ type = "ram", size = "1MiB" }}
"#
    )
}

#[test]
fn secrets_never_print() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(
        &dir.path().join("chap.secret"),
        &format!("{FROM_FILE}\n"),
        0o600,
    );
    let path = dir.path().join("target.toml");
    std::fs::write(&path, target_text()).expect("write");
    let c = TargetConfig::load(&path).expect("valid");

    let chap = c.targets[0].chap.as_ref().expect("chap");
    assert_eq!(
        chap.secret().map(|s| s.expose()),
        Some(FROM_FILE),
        "newline trimmed"
    );
    let disc = c.discovery.chap.as_ref().expect("discovery chap");
    assert_eq!(disc.secret().map(|s| s.expose()), Some(INLINE));

    let effective = c.effective_toml();
    let debug = format!("{c:?}");
    let pretty = format!("{c:#?}");
    for text in [&effective, &debug, &pretty] {
        for secret in [INLINE, FROM_FILE, MUTUAL] {
            assert!(
                !text.contains(secret),
                "secret {secret} printed in:\n{text}"
            );
        }
        assert!(text.contains("***"), "{text}");
    }
    // A file secret is shown by its (resolved) path, never by its value.
    let file = dir.path().join("chap.secret");
    assert!(
        effective.contains(&format!("secret_file = {:?}", file.display().to_string())),
        "{effective}"
    );
    assert!(effective.contains("secret = \"***\""), "{effective}");
}

#[test]
fn initiator_secrets_never_print() {
    let text = format!(
        "iqn = \"iqn.2026-11.io.example:i0\"\n\n[[sessions]]\ntarget = \"iqn.2026-11.io.example:t0\"\nportal = \"127.0.0.1:3260\"\nchap = {{ username = \"i0\", secret = \"{INLINE}\" }}\nmutual_chap = {{ username = \"t0\", secret = \"{MUTUAL}\" }}\n"
    );
    let c = InitiatorConfig::from_str_named(&text, "i.toml").expect("valid");
    let effective = c.effective_toml();
    let debug = format!("{c:?}");
    for text in [&effective, &debug] {
        assert!(!text.contains(INLINE) && !text.contains(MUTUAL), "{text}");
    }
    let s = &c.sessions[0];
    assert_eq!(
        s.chap.as_ref().and_then(|c| c.secret()).map(|s| s.expose()),
        Some(INLINE)
    );
}

#[test]
fn group_or_world_readable_secret_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("chap.secret");
    let path = dir.path().join("target.toml");
    std::fs::write(&path, target_text()).expect("write");
    let name = path.display().to_string();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o601] {
        write_secret(&secret, FROM_FILE, mode);
        let e = TargetConfig::load(&path).expect_err("readable secret file");
        assert_eq!(
            e.to_string(),
            format!(
                "{name}:10:15: targets[0].chap.secret_file: secret file {} has mode {mode:04o}; \
                 expected no access for group and others (mode & 0077 == 0, e.g. chmod 600)",
                secret.display()
            ),
            "mode {mode:o}"
        );
    }
    for mode in [0o600, 0o400] {
        write_secret(&secret, FROM_FILE, mode);
        TargetConfig::load(&path).expect("private secret file");
    }
}

#[test]
fn secret_file_contents_follow_the_length_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("chap.secret");
    let path = dir.path().join("target.toml");
    std::fs::write(&path, target_text()).expect("write");
    write_secret(&secret, "short\n", 0o600);
    let e = TargetConfig::load(&path).expect_err("short secret");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:10:15: targets[0].chap.secret_file: expected a CHAP secret of 12..255 bytes \
             (RFC 7143 section 12.1.3 asks for at least 96 bits), found 5 bytes",
            path.display()
        )
    );
    // Mutual and one-way secrets must differ, also when one comes from a file.
    write_secret(&secret, &format!("{MUTUAL}\r\n"), 0o600);
    let e = TargetConfig::load(&path).expect_err("same secret both ways");
    assert!(
        e.to_string()
            .contains("targets[0].mutual_chap: expected a mutual CHAP secret different"),
        "{e}"
    );
}
