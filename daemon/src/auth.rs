//! Who a caller is and what role that gives.
//!
//! Identity comes from the kernel ([`crate::server::peer`] reads `SO_PEERCRED` and
//! `SO_PEERGROUPS` from the connection), never from a request. Counting the process's own
//! supplementary groups matches the kernel's check of the socket file's permissions: a user
//! added to a group gets the role with their next login, exactly as they get the socket.

use cleanroom_proto::Role;
use nix::unistd::Group;

use crate::config::Auth;

/// Credentials of the connecting process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Pid at connect time (0 if the kernel did not say).
    pub pid: i32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Group ids that grant roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Members are runners; `None` if the group does not exist here.
    pub runner_gid: Option<u32>,
    /// Members are admins; `None` if the group does not exist here.
    pub admin_gid: Option<u32>,
    /// Name of the runner group, for messages.
    pub runner_group: String,
    /// Name of the admin group, for messages.
    pub admin_group: String,
}

impl AuthPolicy {
    /// Looks the configured groups up in the group database. A missing group grants
    /// nothing (root stays admin) and is logged.
    pub fn resolve(auth: &Auth) -> Self {
        let lookup = |name: &str| match Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => {
                tracing::warn!(group = name, "group does not exist; it grants no role");
                None
            }
            Err(e) => {
                tracing::warn!(group = name, error = %e, "cannot look group up; it grants no role");
                None
            }
        };
        Self {
            runner_gid: lookup(&auth.runner_group),
            admin_gid: lookup(&auth.admin_group),
            runner_group: auth.runner_group.clone(),
            admin_group: auth.admin_group.clone(),
        }
    }

    /// The group to join for a role, for messages.
    pub fn group_for(&self, role: Role) -> &str {
        match role {
            Role::Admin => &self.admin_group,
            Role::Runner | Role::Reader => &self.runner_group,
        }
    }
}

impl Peer {
    /// The role these credentials give under `policy`.
    pub fn role(&self, policy: &AuthPolicy) -> Role {
        let member =
            |gid: Option<u32>| gid.is_some_and(|g| self.gid == g || self.groups.contains(&g));
        if self.uid == 0 || member(policy.admin_gid) {
            Role::Admin
        } else if member(policy.runner_gid) {
            Role::Runner
        } else {
            Role::Reader
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AuthPolicy {
        AuthPolicy {
            runner_gid: Some(100),
            admin_gid: Some(200),
            runner_group: "cleanroom".into(),
            admin_group: "cleanroom-admin".into(),
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn roles_from_credentials() {
        let p = policy();
        let table = [
            (peer(0, 0, &[]), Role::Admin),
            (peer(1000, 1000, &[]), Role::Reader),
            (peer(1000, 100, &[]), Role::Runner),
            (peer(1000, 1000, &[5, 100]), Role::Runner),
            (peer(1000, 1000, &[100, 200]), Role::Admin),
            (peer(1000, 200, &[]), Role::Admin),
        ];
        for (peer, want) in table {
            assert_eq!(peer.role(&p), want, "{peer:?}");
        }
        let none = AuthPolicy::default();
        assert_eq!(peer(1000, 100, &[200]).role(&none), Role::Reader);
        assert_eq!(peer(0, 0, &[]).role(&none), Role::Admin);
    }
}
