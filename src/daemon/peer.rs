//! Who may connect to the label socket, decided from the kernel's peer credentials.
//!
//! The socket file's mode and group are the first gate, but a mode is easy to loosen by
//! mistake (an installer's `chmod 666`, a bind mount) and the labels are patient data. So each
//! connection's credentials (`SO_PEERCRED`, which the connecting process cannot forge) are
//! checked as well: root, the daemon's own user, and members of the socket's group (the
//! configured `socket.group`, else the daemon's group) are served; anyone else is
//! disconnected before a byte is sent, and counted in `status.errors.clients_refused`.

use std::io;

/// A connecting process's identity, from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its effective user.
    pub uid: u32,
    /// Its effective group.
    pub gid: u32,
    /// Its supplementary groups: group membership is usually supplementary, and
    /// `SO_PEERCRED` carries only the primary group.
    pub groups: Vec<u32>,
    /// Its process id, to name it in the log (0 when unknown).
    pub pid: i32,
}

/// The rule applied to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The daemon's effective user: its own tools (and `echoview watch` run as it) connect.
    pub own_uid: u32,
    /// The group whose members may connect: the socket file's group.
    pub group: u32,
}

impl PeerPolicy {
    /// The policy of this process: its effective user, and `group` (the configured socket
    /// group's id) or else its effective group.
    pub fn for_this_process(group: Option<u32>) -> PeerPolicy {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        PeerPolicy {
            own_uid: uid,
            group: group.unwrap_or(gid),
        }
    }

    /// Whether `peer` may read labels.
    pub fn allows(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || peer.gid == self.group
            || peer.groups.contains(&self.group)
    }
}

/// The credentials of the process at the other end of `stream`.
pub fn peer_of(stream: &tokio::net::UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().unwrap_or(0);
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        // A process that is gone (or hidden by hidepid) has no readable groups; it is judged
        // by its user and primary group alone, which only ever refuses more.
        groups: if pid > 0 {
            supplementary_groups(pid).unwrap_or_default()
        } else {
            Vec::new()
        },
        pid,
    })
}

/// The supplementary groups of process `pid`, from the `Groups:` line of
/// `/proc/<pid>/status`.
fn supplementary_groups(pid: i32) -> io::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_groups(&status))
}

/// The ids on the `Groups:` line of a `/proc/<pid>/status` text; none if there is no such
/// line.
fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: 1,
        }
    }

    #[test]
    fn root_the_daemon_user_and_group_members_are_allowed_others_not() {
        let policy = PeerPolicy {
            own_uid: 990,
            group: 991,
        };
        assert!(policy.allows(&peer(0, 0, &[])));
        assert!(policy.allows(&peer(990, 100, &[])));
        assert!(policy.allows(&peer(1000, 991, &[])));
        assert!(policy.allows(&peer(1000, 1000, &[27, 991])));
        assert!(!policy.allows(&peer(1000, 1000, &[27, 100])));
        assert!(!policy.allows(&peer(65534, 65534, &[])));
    }

    #[test]
    fn groups_come_from_the_status_line_and_this_process_is_readable() {
        let status =
            "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 991 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_groups(status), vec![4, 27, 991]);
        assert_eq!(parse_groups("Name:\tx\nGroups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(supplementary_groups(pid).is_ok());
    }

    #[test]
    fn a_real_connection_reports_this_process() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (a, _b) = tokio::net::UnixStream::pair().unwrap();
                let me = peer_of(&a).unwrap();
                let policy = PeerPolicy::for_this_process(None);
                assert_eq!(me.uid, policy.own_uid);
                assert_eq!(u32::try_from(me.pid).unwrap(), std::process::id());
                assert!(policy.allows(&me));
            });
    }
}
