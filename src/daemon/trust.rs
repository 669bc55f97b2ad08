//! Config files the daemon may trust: owned by root or the daemon's user, and writable by
//! nobody else.
//!
//! The config names the model folder, the socket's mode and group, and where patient data is
//! recorded, so whoever can write it controls what the cart shows and where its recordings
//! go. A file another user could change is therefore refused, as sshd does, with a message
//! that names the file and the `chmod`/`chown` that fixes it. The check is made on the open
//! file (`fstat`), so the file read is the file checked.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why a file's owner or mode makes it untrustworthy, with the fix; `None` if it is fine.
///
/// `owner` and `mode` are the file's, `own_uid` the daemon's effective user.
pub fn problem(path: &Path, owner: u32, mode: u32, own_uid: u32) -> Option<String> {
    let shown = path.display();
    if owner != 0 && owner != own_uid {
        return Some(format!(
            "it is owned by uid {owner}, not root or the daemon's user (uid {own_uid}), so that \
             user could change what the daemon does; fix: chown root {shown}"
        ));
    }
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some(format!(
            "it is writable by {who} (mode {:04o}), so they could change what the daemon does; \
             fix: chmod go-w {shown}",
            mode & 0o7777
        ));
    }
    None
}

/// Reads the text of the config file at `path` after checking its owner and mode; an
/// untrustworthy file is a `PermissionDenied` error whose message says why and how to fix it.
pub fn read_config(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let own_uid = unsafe { libc::geteuid() };
    if let Some(why) = problem(path, meta.uid(), meta.mode(), own_uid) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owner_and_write_bits_decide() {
        let p = Path::new("/etc/echoview/echoview.toml");
        assert_eq!(problem(p, 0, 0o100644, 990), None);
        assert_eq!(problem(p, 990, 0o100600, 990), None);
        assert_eq!(problem(p, 0, 0o100640, 990), None);
        let other_owner = problem(p, 1000, 0o100644, 990).unwrap();
        assert!(other_owner.contains("uid 1000"), "{other_owner}");
        assert!(other_owner.contains("chown root /etc/echoview/echoview.toml"));
        let group = problem(p, 0, 0o100664, 990).unwrap();
        assert!(
            group.contains("writable by its group (mode 0664)"),
            "{group}"
        );
        assert!(group.contains("chmod go-w /etc/echoview/echoview.toml"));
        let world = problem(p, 0, 0o100666, 990).unwrap();
        assert!(world.contains("its group and others"), "{world}");
        assert!(
            problem(p, 0, 0o100646, 990)
                .unwrap()
                .contains("by others (mode 0646)")
        );
    }

    #[test]
    fn a_real_file_is_read_only_while_safe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echoview.toml");
        std::fs::write(&path, "[socket]\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_config(&path).unwrap(), "[socket]\n");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_config(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        // Owned by someone else (only root can give a file away, as on the cart's installer).
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } == 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
            let err = read_config(&path).unwrap_err();
            assert!(err.to_string().contains("uid 12345"), "{err}");
        }
    }
}
