//! Log lines for an unattended service: stderr, with syslog priority prefixes under journald.
//!
//! The daemon runs under systemd, which files stderr in the journal. A line starting with
//! `<N>` there gets priority N, so `journalctl -p warning` finds faults; at a terminal the
//! prefix would be noise, so it is written only when journald is listening (`JOURNAL_STREAM`).

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How serious a log line is (syslog priorities, as journald reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed and was given up (a recording could not be written).
    Error,
    /// A fault the daemon works around (a device lost, a beat dropped, an engine error).
    Warning,
    /// Normal but significant (started, ready, stopping).
    Notice,
}

impl Level {
    /// The syslog priority journald expects in the `<N>` prefix.
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Notice => 5,
        }
    }

    /// The word shown at a terminal.
    fn word(self) -> &'static str {
        match self {
            Level::Error => "error: ",
            Level::Warning => "warning: ",
            Level::Notice => "",
        }
    }
}

/// Whether stderr goes to journald, decided once: the environment does not change under us.
fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

/// Writes one log line. A failed write to stderr is ignored: there is nowhere else to report it.
pub fn log(level: Level, message: impl Display) {
    let line = if to_journal() {
        format!("<{}>{message}\n", level.priority())
    } else {
        format!("echoview: {}{message}\n", level.word())
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Keeps a repeating fault (an engine failing every beat, a device that stays away) from
/// flooding the journal: the first occurrence is logged at once, later ones at most once per
/// interval with a count of those not shown.
#[derive(Debug)]
pub struct RateLimited {
    /// Shortest time between two lines.
    interval: Duration,
    /// When the last line was written.
    last: Option<Instant>,
    /// Occurrences since then that were not written.
    suppressed: u64,
}

impl RateLimited {
    /// A limiter writing at most one line per `interval`.
    pub fn new(interval: Duration) -> RateLimited {
        RateLimited {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Logs `message` unless a line was written less than the interval ago.
    pub fn log(&mut self, level: Level, now: Instant, message: impl Display) {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log(
                level,
                format_args!("{message} ({} more like this not shown)", self.suppressed),
            );
        } else {
            log(level, message);
        }
        self.last = Some(now);
        self.suppressed = 0;
    }

    /// Forgets the history, so the next fault is logged at once (the fault cleared).
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}
