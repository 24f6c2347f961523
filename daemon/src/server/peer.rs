//! Who is on the other end of a connection, as the kernel says, and what role that gives.
//!
//! Identity comes from `SO_PEERCRED` (uid, gid, pid at connect time) and `SO_PEERGROUPS`
//! (the supplementary groups of the connecting process), never from a request. Counting the
//! process's own groups matches the kernel's check of the socket file's permissions: a user
//! added to a group gets the role with their next login, exactly as they get the socket.

use std::io;
use std::os::fd::AsRawFd;

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
    /// Reads the peer's credentials from a connected Unix stream socket.
    pub fn of(stream: &tokio::net::UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        let groups = peer_groups(stream.as_raw_fd())?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().unwrap_or(0),
            groups,
        })
    }

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

/// `SO_PEERGROUPS` (Linux 4.13+): the supplementary groups of the peer at connect time.
fn peer_groups(fd: std::os::fd::RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a live, writable buffer of `len` bytes; the kernel writes at
        // most `len` bytes and stores the size it needs or used in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
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

    #[tokio::test]
    async fn reads_own_credentials_from_a_socket_pair() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let me = Peer::of(&a).unwrap();
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(me.gid, nix::unistd::getegid().as_raw());
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = me.groups.clone();
        mine.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, mine);
    }
}
