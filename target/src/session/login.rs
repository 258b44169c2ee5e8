//! The daemon's answers to the login questions of `iscsi::login::TargetLogin`: which
//! targets exist, which initiators each one admits (ACL of IQNs), the CHAP credentials
//! of targets and of discovery (one-way and mutual), and our operational values.

use iscsi::chap::ChapCredentials;
use iscsi::login::{AuthRequirement, LoginPolicy, TargetLookup};
use iscsi::negotiate::LocalParams;
use iscsi::pdu::Isid;

/// CHAP credentials a target (or discovery) requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapPolicy {
    /// The CHAP_N the initiator must present.
    pub username: String,
    /// The initiator's secret.
    pub secret: Vec<u8>,
    /// The target's CHAP_N and secret for mutual CHAP.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl ChapPolicy {
    fn credentials(&self, chap_name: &str) -> Option<ChapCredentials> {
        (chap_name == self.username).then(|| ChapCredentials {
            initiator_secret: self.secret.clone(),
            target: self.mutual.clone(),
        })
    }
}

/// One target node as login sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    /// Target name.
    pub iqn: String,
    /// Initiator names allowed; empty = any.
    pub acl: Vec<String>,
    /// CHAP required of initiators.
    pub chap: Option<ChapPolicy>,
}

impl TargetEntry {
    /// Whether `initiator` may log in to (or discover) this target.
    pub fn allows(&self, initiator: &str) -> bool {
        self.acl.is_empty() || self.acl.iter().any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

/// Everything login decisions depend on, shared by the connections of all portals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalPolicy {
    /// The targets served.
    pub targets: Vec<TargetEntry>,
    /// CHAP required in discovery sessions.
    pub discovery_chap: Option<ChapPolicy>,
    /// Our operational values.
    pub local: LocalParams,
    /// Commands per session (MaxCmdSN = ExpCmdSN + queue_depth - 1).
    pub queue_depth: u32,
    /// TargetPortalGroupTag of our portals.
    pub tpgt: u16,
}

impl PortalPolicy {
    /// The target named `iqn`.
    pub fn target(&self, iqn: &str) -> Option<&TargetEntry> {
        self.targets
            .iter()
            .find(|t| t.iqn.eq_ignore_ascii_case(iqn))
    }
}

fn requirement(chap: &Option<ChapPolicy>) -> AuthRequirement {
    if chap.is_some() {
        AuthRequirement::Chap
    } else {
        AuthRequirement::None
    }
}

impl LoginPolicy for PortalPolicy {
    fn lookup_target(&self, target_name: &str) -> TargetLookup {
        match self.target(target_name) {
            Some(t) => TargetLookup::Found {
                auth: requirement(&t.chap),
                alias: None,
            },
            None => TargetLookup::NotFound,
        }
    }

    fn authorize(&self, initiator_name: &str, target_name: Option<&str>) -> bool {
        match target_name {
            None => true,
            Some(name) => self.target(name).is_some_and(|t| t.allows(initiator_name)),
        }
    }

    fn discovery_auth(&self) -> AuthRequirement {
        requirement(&self.discovery_chap)
    }

    fn chap_credentials(
        &self,
        chap_name: &str,
        target_name: Option<&str>,
    ) -> Option<ChapCredentials> {
        match target_name {
            None => self.discovery_chap.as_ref()?.credentials(chap_name),
            Some(name) => self.target(name)?.chap.as_ref()?.credentials(chap_name),
        }
    }

    fn local_params(&self, _target_name: Option<&str>) -> LocalParams {
        self.local.clone()
    }

    fn session_exists(&self, _isid: Isid, _tsih: u16) -> bool {
        // MaxConnections is 1: a login with a non-zero TSIH names no session we can
        // add a connection to.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PortalPolicy {
        PortalPolicy {
            targets: vec![
                TargetEntry {
                    iqn: "iqn.2026-11.test:open".into(),
                    acl: vec![],
                    chap: None,
                },
                TargetEntry {
                    iqn: "iqn.2026-11.test:closed".into(),
                    acl: vec!["iqn.2026-11.test:good".into()],
                    chap: Some(ChapPolicy {
                        username: "user".into(),
                        secret: b"secretsecret1".to_vec(),
                        mutual: Some(("tgt".into(), b"secretsecret2".to_vec())),
                    }),
                },
            ],
            discovery_chap: None,
            local: LocalParams::default(),
            queue_depth: 32,
            tpgt: 1,
        }
    }

    #[test]
    fn lookup_acl_and_chap() {
        let p = policy();
        assert_eq!(
            p.lookup_target("iqn.2026-11.test:open"),
            TargetLookup::Found {
                auth: AuthRequirement::None,
                alias: None
            }
        );
        assert_eq!(
            p.lookup_target("iqn.2026-11.test:nope"),
            TargetLookup::NotFound
        );
        assert!(p.authorize("iqn.any", Some("iqn.2026-11.test:open")));
        assert!(p.authorize("iqn.2026-11.test:good", Some("iqn.2026-11.test:closed")));
        assert!(!p.authorize("iqn.2026-11.test:bad", Some("iqn.2026-11.test:closed")));
        let c = p
            .chap_credentials("user", Some("iqn.2026-11.test:closed"))
            .unwrap();
        assert_eq!(c.initiator_secret, b"secretsecret1");
        assert!(p
            .chap_credentials("other", Some("iqn.2026-11.test:closed"))
            .is_none());
        assert!(p.chap_credentials("user", None).is_none());
        assert_eq!(p.discovery_auth(), AuthRequirement::None);
    }
}
