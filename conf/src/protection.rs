//! The initiator's protection policy: what the host does with T10 PI (off, insert, pass,
//! strip), which checks it asks of the target (and the RDPROTECT/WRPROTECT value that
//! asks for them), and whether a policy fits a LUN's capabilities at login.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What happens to PI between host memory and the wire (DESIGN.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectionMode {
    /// No PI on the wire; a PI LUN's target generates and strips PI itself.
    Off,
    /// Host supplies no PI: the HCA inserts it on writes and verifies and strips it on
    /// reads (memory domain none, wire domain DIF). Needs a PI LUN.
    Insert,
    /// Host supplies PI and it travels end to end (both domains DIF). Needs a PI LUN.
    Pass,
    /// Host has PI, the LUN has none: the HCA verifies and strips it on writes and
    /// generates it on reads (memory domain DIF, wire domain none). Needs a LUN without PI.
    Strip,
}

impl ProtectionMode {
    /// True when PI travels on the wire (insert, pass).
    pub fn pi_on_wire(self) -> bool {
        matches!(self, Self::Insert | Self::Pass)
    }

    /// True when host memory carries PI (pass, strip).
    pub fn pi_in_memory(self) -> bool {
        matches!(self, Self::Pass | Self::Strip)
    }

    /// The mode's TOML name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Insert => "insert",
            Self::Pass => "pass",
            Self::Strip => "strip",
        }
    }
}

/// One PI check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PiCheck {
    /// The guard (CRC) field.
    Guard,
    /// The reference tag.
    Ref,
    /// The application tag.
    App,
}

/// The guard type in host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostGuard {
    /// CRC-16/T10-DIF, as on the wire (default).
    Crc,
    /// IP checksum; the HCA translates to CRC on the wire. Pass and strip only.
    Csum,
}

/// The set of checks asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Checks {
    /// Check the guard.
    pub guard: bool,
    /// Check the reference tag.
    pub reference: bool,
    /// Check the application tag.
    pub app: bool,
}

impl Checks {
    /// The set named by a list of checks.
    pub fn from_list(list: &[PiCheck]) -> Self {
        let mut c = Self::default();
        for check in list {
            match check {
                PiCheck::Guard => c.guard = true,
                PiCheck::Ref => c.reference = true,
                PiCheck::App => c.app = true,
            }
        }
        c
    }

    /// The verbs check_mask: one bit per PI byte (GUARD 0xC0, APPTAG 0x30, REFTAG 0x0F).
    pub fn check_mask(self) -> u8 {
        (if self.guard { 0xC0 } else { 0 })
            | (if self.app { 0x30 } else { 0 })
            | (if self.reference { 0x0F } else { 0 })
    }
}

/// The RDPROTECT/WRPROTECT (and VRPROTECT) value for a mode and a set of checks.
///
/// - PI not on the wire (`off`, `strip`): 000b.
/// - guard + ref: 001b (the target checks guard and ref tag; app tag per ATO).
/// - ref only: 010b. guard only: 100b.
/// - no checks: 011b (PI on the wire, the target checks nothing).
///
/// The app tag does not change the value: SBC ties application tag checking to the
/// Control mode page ATO bit and, with 32-byte CDBs, to the expected tag and mask
/// fields; `app` in the list asks the local HCA (apptag check mask) and those fields.
pub fn protect_field(mode: ProtectionMode, checks: Checks) -> u8 {
    if !mode.pi_on_wire() {
        return 0b000;
    }
    match (checks.guard, checks.reference) {
        (true, true) => 0b001,
        (false, true) => 0b010,
        (true, false) => 0b100,
        (false, false) => 0b011,
    }
}

/// The protection policy of a session or a LUN export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionPolicy {
    /// "off", "insert" (default), "pass" or "strip".
    pub mode: ProtectionMode,
    /// Checks asked of the target and the HCA: any of "guard", "ref", "app"; default
    /// ["guard", "ref"].
    pub checks: Vec<PiCheck>,
    /// Guard type in host memory: "crc" (default) or "csum" (pass and strip only).
    pub host_guard: HostGuard,
    /// Application tag the host writes (insert) or expects, 0..65535 (0xFFFF, the escape
    /// tag, is refused with insert); default 0.
    pub app_tag: u16,
}

impl Default for ProtectionPolicy {
    fn default() -> Self {
        Self {
            mode: ProtectionMode::Insert,
            checks: vec![PiCheck::Guard, PiCheck::Ref],
            host_guard: HostGuard::Crc,
            app_tag: 0,
        }
    }
}

/// A per-LUN override: every key present replaces the session's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyOverride {
    /// Replaces the session's mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ProtectionMode>,
    /// Replaces the session's checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<PiCheck>>,
    /// Replaces the session's host_guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_guard: Option<HostGuard>,
    /// Replaces the session's app_tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_tag: Option<u16>,
}

impl ProtectionPolicy {
    /// This policy with `over`'s keys applied.
    pub fn merged(&self, over: &PolicyOverride) -> Self {
        Self {
            mode: over.mode.unwrap_or(self.mode),
            checks: over.checks.clone().unwrap_or_else(|| self.checks.clone()),
            host_guard: over.host_guard.unwrap_or(self.host_guard),
            app_tag: over.app_tag.unwrap_or(self.app_tag),
        }
    }

    /// The set of checks.
    pub fn check_set(&self) -> Checks {
        Checks::from_list(&self.checks)
    }

    /// The RDPROTECT/WRPROTECT value for this policy; see [`protect_field`].
    pub fn protect_field(&self) -> u8 {
        protect_field(self.mode, self.check_set())
    }

    /// Problems that need no LUN to see (e.g. csum guard with insert).
    pub(crate) fn static_problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if self.host_guard == HostGuard::Csum && !self.mode.pi_in_memory() {
            v.push((
                "host_guard",
                format!(
                    "expected \"crc\" with mode \"{}\" (host memory carries no PI; csum is for pass and strip), found \"csum\"",
                    self.mode.as_str()
                ),
            ));
        }
        if self.mode == ProtectionMode::Insert && self.app_tag == 0xFFFF {
            v.push((
                "app_tag",
                "expected an application tag other than 0xFFFF (65535) with mode \"insert\": \
                 blocks carrying the escape tag are never checked, found 65535"
                    .to_owned(),
            ));
        }
        let mut seen = Vec::new();
        for c in &self.checks {
            if seen.contains(c) {
                v.push((
                    "checks",
                    format!("expected each check once, found \"{c}\" twice"),
                ));
                break;
            }
            seen.push(*c);
        }
        v
    }

    /// Whether this policy fits a LUN, as the initiator checks at login from INQUIRY
    /// and READ CAPACITY(16).
    pub fn check_against(&self, lun: LunCaps) -> Result<(), PolicyError> {
        match (self.mode, lun.pi_type) {
            (ProtectionMode::Insert | ProtectionMode::Pass, None) => {
                Err(PolicyError::LunWithoutPi { mode: self.mode })
            }
            (ProtectionMode::Strip, Some(t)) => Err(PolicyError::LunWithPi {
                mode: self.mode,
                pi_type: t,
            }),
            (ProtectionMode::Insert | ProtectionMode::Pass, Some(3))
                if self.check_set().reference =>
            {
                Err(PolicyError::RefCheckOnType3)
            }
            (_, Some(t)) if !(1..=3).contains(&t) => Err(PolicyError::UnknownType(t)),
            _ => Ok(()),
        }
    }
}

/// What the initiator learned of a LUN at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LunCaps {
    /// `Some(1..=3)` when the LUN is formatted with PI (READ CAPACITY(16) PROT_EN), with
    /// its type (P_TYPE + 1); `None` without PI.
    pub pi_type: Option<u8>,
}

/// Why a protection policy does not fit a LUN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// insert/pass need PI on the LUN.
    #[error("protection mode \"{}\" needs a LUN formatted with protection information, but the LUN has none; use mode \"off\" (or \"strip\" if the host keeps PI)", mode.as_str())]
    LunWithoutPi {
        /// The policy's mode.
        mode: ProtectionMode,
    },
    /// strip needs a LUN without PI.
    #[error("protection mode \"{}\" is for LUNs without protection information, but the LUN has Type {pi_type} PI; use mode \"pass\" (host keeps PI) or \"insert\"", mode.as_str())]
    LunWithPi {
        /// The policy's mode.
        mode: ProtectionMode,
        /// The LUN's protection type.
        pi_type: u8,
    },
    /// Type 3 defines no reference tag to check.
    #[error("checks include \"ref\" but the LUN has Type 3 PI, whose reference tag is not defined; remove \"ref\" from checks")]
    RefCheckOnType3,
    /// A protection type outside 1..3.
    #[error("the LUN reports protection type {0}, expected 1, 2 or 3")]
    UnknownType(u8),
}

impl fmt::Display for PiCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Guard => "guard",
            Self::Ref => "ref",
            Self::App => "app",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PiCheck::{App, Guard, Ref};
    use ProtectionMode::{Insert, Off, Pass, Strip};

    #[test]
    fn protect_field_table() {
        let cases: [(ProtectionMode, &[PiCheck], u8); 16] = [
            (Insert, &[Guard, Ref], 0b001),
            (Insert, &[Guard, Ref, App], 0b001),
            (Insert, &[Ref, Guard], 0b001),
            (Pass, &[Guard, Ref], 0b001),
            (Pass, &[Guard, Ref, App], 0b001),
            (Insert, &[], 0b011),
            (Pass, &[], 0b011),
            (Pass, &[App], 0b011),
            (Insert, &[Ref], 0b010),
            (Pass, &[Ref, App], 0b010),
            (Insert, &[Guard], 0b100),
            (Pass, &[Guard, App], 0b100),
            (Off, &[Guard, Ref], 0b000),
            (Off, &[], 0b000),
            (Strip, &[Guard, Ref], 0b000),
            (Strip, &[], 0b000),
        ];
        for (mode, checks, want) in cases {
            let got = protect_field(mode, Checks::from_list(checks));
            assert_eq!(got, want, "{mode:?} {checks:?}");
        }
    }

    #[test]
    fn check_mask_has_one_bit_per_pi_byte() {
        assert_eq!(Checks::from_list(&[Guard]).check_mask(), 0xC0);
        assert_eq!(Checks::from_list(&[App]).check_mask(), 0x30);
        assert_eq!(Checks::from_list(&[Ref]).check_mask(), 0x0F);
        assert_eq!(Checks::from_list(&[Guard, Ref, App]).check_mask(), 0xFF);
        assert_eq!(Checks::from_list(&[]).check_mask(), 0);
    }

    fn policy(mode: ProtectionMode, checks: &[PiCheck]) -> ProtectionPolicy {
        ProtectionPolicy {
            mode,
            checks: checks.to_vec(),
            ..ProtectionPolicy::default()
        }
    }

    #[test]
    fn check_against_table() {
        let none = LunCaps { pi_type: None };
        let t1 = LunCaps { pi_type: Some(1) };
        let t2 = LunCaps { pi_type: Some(2) };
        let t3 = LunCaps { pi_type: Some(3) };
        let ok: [(ProtectionMode, &[PiCheck], LunCaps); 10] = [
            (Off, &[Guard, Ref], none),
            (Off, &[Guard, Ref], t1),
            (Insert, &[Guard, Ref], t1),
            (Insert, &[Guard, Ref], t2),
            (Pass, &[Guard, Ref, App], t1),
            (Pass, &[Guard, App], t3),
            (Insert, &[Guard], t3),
            (Strip, &[Guard, Ref], none),
            (Strip, &[], none),
            (Insert, &[], t3),
        ];
        for (mode, checks, caps) in ok {
            assert_eq!(
                policy(mode, checks).check_against(caps),
                Ok(()),
                "{mode:?} {caps:?}"
            );
        }
        let bad: [(ProtectionMode, &[PiCheck], LunCaps, PolicyError); 6] = [
            (
                Insert,
                &[Guard, Ref],
                none,
                PolicyError::LunWithoutPi { mode: Insert },
            ),
            (
                Pass,
                &[Guard, Ref],
                none,
                PolicyError::LunWithoutPi { mode: Pass },
            ),
            (
                Strip,
                &[Guard, Ref],
                t1,
                PolicyError::LunWithPi {
                    mode: Strip,
                    pi_type: 1,
                },
            ),
            (
                Strip,
                &[],
                t3,
                PolicyError::LunWithPi {
                    mode: Strip,
                    pi_type: 3,
                },
            ),
            (Pass, &[Guard, Ref], t3, PolicyError::RefCheckOnType3),
            (
                Insert,
                &[Guard],
                LunCaps { pi_type: Some(4) },
                PolicyError::UnknownType(4),
            ),
        ];
        for (mode, checks, caps, want) in bad {
            assert_eq!(
                policy(mode, checks).check_against(caps),
                Err(want),
                "{mode:?} {caps:?}"
            );
        }
    }

    #[test]
    fn policy_error_messages_say_what_to_do() {
        let e = policy(Insert, &[Guard, Ref])
            .check_against(LunCaps { pi_type: None })
            .expect_err("no PI");
        assert_eq!(
            e.to_string(),
            "protection mode \"insert\" needs a LUN formatted with protection information, \
             but the LUN has none; use mode \"off\" (or \"strip\" if the host keeps PI)"
        );
        let e = policy(Strip, &[])
            .check_against(LunCaps { pi_type: Some(1) })
            .expect_err("PI");
        assert_eq!(
            e.to_string(),
            "protection mode \"strip\" is for LUNs without protection information, but the \
             LUN has Type 1 PI; use mode \"pass\" (host keeps PI) or \"insert\""
        );
    }

    #[test]
    fn overrides_replace_only_the_keys_present() {
        let session = ProtectionPolicy::default();
        let over = PolicyOverride {
            mode: Some(Pass),
            host_guard: Some(HostGuard::Csum),
            ..PolicyOverride::default()
        };
        let m = session.merged(&over);
        assert_eq!(m.mode, Pass);
        assert_eq!(m.host_guard, HostGuard::Csum);
        assert_eq!(m.checks, vec![Guard, Ref]);
        assert_eq!(m.app_tag, 0);
        assert_eq!(session.merged(&PolicyOverride::default()), session);
    }
}
