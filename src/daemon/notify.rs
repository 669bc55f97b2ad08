//! systemd integration: readiness, stopping and the watchdog (`sd_notify`).
//!
//! Under `Type=notify` systemd waits for `READY=1` before it counts the service as started,
//! and with `WatchdogSec=` it restarts the service when `WATCHDOG=1` stops coming. The daemon
//! sends `READY=1` once the model is loaded and every source has been opened once, and feeds
//! the watchdog only while every pipeline thread makes progress ([`Watchdog`]), so a wedged
//! thread gets the service restarted while a missing device (reported, retried) does not.
//!
//! The notification socket comes from `NOTIFY_SOCKET` ([`Notifier::from_env`]) or is given
//! explicitly, so tests can listen on a socket of their own.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub use sd_notify::NotifyState;

/// Sends notifications to the service manager; does nothing when there is none.
#[derive(Debug)]
pub struct Notifier {
    /// Connected to the manager's socket, when there is one.
    socket: Option<UnixDatagram>,
    /// The watchdog period the manager asked for.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing (not run by systemd).
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
        }
    }

    /// The notifier systemd set up through `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
    /// `WATCHDOG_PID`. An unusable socket is reported and notifications are off.
    pub fn from_env() -> Result<Notifier, io::Error> {
        let watchdog = sd_notify::watchdog_enabled();
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) => Notifier::new(&path, watchdog),
            None => Ok(Notifier {
                socket: None,
                watchdog,
            }),
        }
    }

    /// A notifier sending to the datagram socket at `path` (`@name` for the abstract
    /// namespace), with the watchdog period `watchdog`.
    pub fn new(path: &OsStr, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
            None => socket.connect(path)?,
        }
        // Never block the server on a manager that is not reading.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket: Some(socket),
            watchdog,
        })
    }

    /// The watchdog period, when the manager wants pings.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `states` in one datagram. A full manager queue drops the message, as
    /// `sd_notify` does.
    pub fn notify(&self, states: &[NotifyState]) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        match socket.send(message.as_bytes()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// When to feed the watchdog: every half period, and only while the pipeline is healthy.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// Time between pings: half the manager's period, so one late ping is not fatal.
    every: Duration,
    /// When the last ping went out.
    last: Option<Instant>,
}

impl Watchdog {
    /// A watchdog for the manager's `period`.
    pub fn new(period: Duration) -> Watchdog {
        Watchdog {
            every: period / 2,
            last: None,
        }
    }

    /// Whether to ping now, given whether every thread is making progress.
    pub fn due(&mut self, now: Instant, healthy: bool) -> bool {
        if !healthy
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str(), Some(Duration::from_secs(2))).unwrap();
        n.notify(&[NotifyState::Ready, NotifyState::Status("up")])
            .unwrap();
        let mut buf = [0u8; 64];
        let len = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up\n");
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
        Notifier::disabled().notify(&[NotifyState::Ready]).unwrap();
    }

    #[test]
    fn watchdog_pings_every_half_period_only_while_healthy() {
        let mut w = Watchdog::new(Duration::from_secs(2));
        let t = Instant::now();
        assert!(w.due(t, true));
        assert!(!w.due(t + Duration::from_millis(500), true));
        assert!(w.due(t + Duration::from_secs(1), true));
        assert!(!w.due(t + Duration::from_secs(3), false));
        assert!(w.due(t + Duration::from_secs(4), true));
    }
}
