//! The host checks: the label socket's folder and group, disk space for recordings, and the
//! clocks.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Check, Status};
use crate::daemon::config::{RecordConfig, SocketConfig};
use crate::daemon::sys;

/// What was found about the socket's folder and group.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SocketFacts {
    /// The socket path.
    pub path: String,
    /// Whether the parent folder exists.
    pub parent_exists: bool,
    /// Whether this process may create files in it.
    pub parent_writable: bool,
    /// Whether the parent is `/run/echoview`, which systemd creates when the service starts.
    pub parent_made_by_systemd: bool,
    /// The configured group and whether it exists (`None` when no group is configured).
    pub group: Option<(String, bool)>,
    /// Whether a daemon is accepting connections on the socket now.
    pub listening: bool,
}

/// Looks at the socket's folder and group.
pub(super) fn socket_facts(config: &SocketConfig) -> SocketFacts {
    let path = &config.path;
    let parent = path.parent().unwrap_or(Path::new("/"));
    SocketFacts {
        path: path.display().to_string(),
        parent_exists: parent.is_dir(),
        parent_writable: writable(parent),
        parent_made_by_systemd: parent == Path::new("/run/echoview"),
        group: config.group.as_ref().map(|g| {
            let exists = sys::group_id(g).ok().flatten().is_some();
            (g.clone(), exists)
        }),
        listening: std::os::unix::net::UnixStream::connect(path).is_ok(),
    }
}

/// Whether this process may create files in `dir` (`access(W_OK | X_OK)`).
fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// The verdict on the socket.
pub(super) fn judge_socket(f: &SocketFacts) -> Check {
    const NAME: &str = "socket";
    if let Some((group, false)) = &f.group {
        return Check::problem(
            NAME,
            Status::Fail,
            &f.path,
            format!(
                "socket.group {group:?} does not exist, so the daemon cannot hand it the socket"
            ),
            format!("create it (`groupadd --system {group}`) or change socket.group in the config"),
        );
    }
    if f.listening {
        return Check::ok(NAME, &f.path, "a daemon is accepting connections on it");
    }
    if !f.parent_exists {
        if f.parent_made_by_systemd {
            return Check::problem(
                NAME,
                Status::Warn,
                &f.path,
                "its folder /run/echoview does not exist yet: systemd creates it when the \
                 service starts, so the service has not run since boot",
                "start the service: `systemctl start echoview`",
            );
        }
        return Check::problem(
            NAME,
            Status::Fail,
            &f.path,
            "its folder does not exist, so the daemon cannot create the socket",
            "create the folder, or set socket.path to a file in /run/echoview",
        );
    }
    if !f.parent_writable {
        return Check::problem(
            NAME,
            Status::Warn,
            &f.path,
            "this user cannot create files in its folder (the service user may: rerun \
             doctor as root or as echoview to be sure)",
            "check the folder's owner and mode: the service's RuntimeDirectory=echoview \
             gives it to the echoview user",
        );
    }
    let group = f
        .group
        .as_ref()
        .map_or(String::new(), |(g, _)| format!(", group {g} exists"));
    Check::ok(
        NAME,
        &f.path,
        format!("its folder exists and is writable{group}; no daemon is listening now"),
    )
}

/// Free space for recordings.
pub(super) fn disk(config: &RecordConfig) -> Check {
    const NAME: &str = "disk";
    let Some(dir) = &config.dir else {
        return Check::skip(NAME, "recording is off (record.dir unset)");
    };
    // The recording folder may not exist before the first recording: measure the nearest
    // existing ancestor, which is on the same file system unless a mount is about to appear.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match sys::free_bytes(existing) {
        Ok(bytes) => judge_disk(&dir.display().to_string(), bytes, config.min_free_mb),
        Err(e) => Check::problem(
            NAME,
            Status::Fail,
            dir.display().to_string(),
            format!("cannot measure free space on {}: {e}", existing.display()),
            "check that record.dir is on a mounted, readable file system",
        ),
    }
}

/// The verdict on `free_bytes` free for recordings in `dir`, against the `min_free_mb` floor.
pub(super) fn judge_disk(dir: &str, free_bytes: u64, min_free_mb: u64) -> Check {
    const NAME: &str = "disk";
    let free_mb = free_bytes / 1_000_000;
    let value = format!("{free_mb} MB free in {dir}");
    let floor = format!("record.min_free_mb = {min_free_mb}");
    if free_mb < min_free_mb {
        Check::problem(
            NAME,
            Status::Fail,
            value,
            format!("below {floor}: recording is paused until space is freed"),
            "move old recordings off the cart, or lower record.min_free_mb",
        )
    } else if free_mb < min_free_mb.saturating_mul(2) {
        Check::problem(
            NAME,
            Status::Warn,
            value,
            format!("less than twice {floor}: recording pauses soon"),
            "move old recordings off the cart",
        )
    } else {
        Check::ok(NAME, value, format!("above twice {floor}"))
    }
}

/// Reads both clocks `gap` apart and judges them.
pub(super) fn clock(gap: Duration) -> Check {
    let wall = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(-1.0, |d| d.as_secs_f64())
    };
    let (m0, r0) = (Instant::now(), SystemTime::now());
    std::thread::sleep(gap);
    let (m1, r1) = (Instant::now(), SystemTime::now());
    let mono_s = m1.duration_since(m0).as_secs_f64();
    let real_s = wall(r1) - wall(r0);
    judge_clock(wall(r1), (real_s - mono_s) * 1e3)
}

/// The verdict on a wall clock reading `unix_s` seconds since 1970 that moved `skew_ms` more
/// than the monotonic clock over the measurement.
pub(super) fn judge_clock(unix_s: f64, skew_ms: f64) -> Check {
    const NAME: &str = "clock";
    // Days to a civil year, good to a day, which is all a plausibility check needs.
    let year = (1970.0 + unix_s / (365.2425 * 86_400.0)).floor();
    let value = format!("year {year:.0}, wall vs monotonic {skew_ms:+.1} ms");
    if !(2025.0..2100.0).contains(&year) {
        return Check::problem(
            NAME,
            Status::Fail,
            value,
            "the wall clock is not set (recordings and logs would carry wrong dates)",
            "set the time: enable NTP (`timedatectl set-ntp true`) or `timedatectl set-time`; \
             a Jetson without network needs its RTC battery",
        );
    }
    if skew_ms.abs() > 50.0 {
        return Check::problem(
            NAME,
            Status::Warn,
            value,
            "the wall clock was stepped during the check (NTP correcting it?); session times \
             use the monotonic clock and are unaffected, file names may jump",
            "let NTP settle (`timedatectl timesync-status`) and rerun",
        );
    }
    Check::ok(NAME, value, "plausible, and runs with the monotonic clock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SocketFacts {
        SocketFacts {
            path: "/run/echoview/labels.sock".into(),
            parent_exists: true,
            parent_writable: true,
            parent_made_by_systemd: true,
            group: None,
            listening: false,
        }
    }

    #[test]
    fn socket_verdicts() {
        assert_eq!(judge_socket(&facts()).status, Status::Ok);
        let missing = SocketFacts {
            parent_exists: false,
            ..facts()
        };
        assert_eq!(judge_socket(&missing).status, Status::Warn);
        let elsewhere = SocketFacts {
            parent_made_by_systemd: false,
            ..missing
        };
        assert_eq!(judge_socket(&elsewhere).status, Status::Fail);
        let no_group = SocketFacts {
            group: Some(("viewers".into(), false)),
            ..facts()
        };
        let c = judge_socket(&no_group);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("groupadd --system viewers"));
    }

    #[test]
    fn disk_verdicts_against_the_floor() {
        assert_eq!(judge_disk("/r", 500_000_000, 1024).status, Status::Fail);
        assert_eq!(judge_disk("/r", 1_500_000_000, 1024).status, Status::Warn);
        let ok = judge_disk("/r", 5_000_000_000, 1024);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.value, "5000 MB free in /r");
    }

    #[test]
    fn clock_verdicts() {
        let nov_2026 = 1_795_000_000.0;
        assert_eq!(judge_clock(nov_2026, 0.4).status, Status::Ok);
        assert_eq!(judge_clock(nov_2026, 120.0).status, Status::Warn);
        // A Jetson without RTC battery boots in 1970 (or at its image's build date).
        let c = judge_clock(3_600.0, 0.0);
        assert_eq!(c.status, Status::Fail);
        assert!(c.value.contains("1970"), "{}", c.value);
    }

    #[test]
    fn the_real_clock_check_runs() {
        let c = clock(Duration::from_millis(5));
        assert_ne!(c.status, Status::Skip);
        assert!(c.value.starts_with("year "), "{}", c.value);
    }
}
