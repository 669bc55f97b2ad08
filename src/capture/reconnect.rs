//! When to try the capture device again after it failed or vanished.
//!
//! A grabber gets unplugged, a USB hub resets, a cable is knocked: the daemon must keep running
//! and pick the device up again when it returns, without hammering a device that is re-
//! enumerating. This is the policy, as a state machine driven by the caller with times on a
//! monotonic clock, so it is tested with a fake clock: attempts double their spacing from
//! [`Backoff::initial_ms`] up to [`Backoff::max_ms`]; the spacing resets once a frame arrives
//! (not merely when the device opens: a device that opens and fails at once would otherwise be
//! retried at full speed forever). No random jitter: one process retries one device, so there is
//! no crowd to spread out, and the schedule stays reproducible.

/// How quickly reconnection attempts follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first retry after a failure, in milliseconds: long enough for a USB
    /// device to re-enumerate rather than fail again at once.
    pub initial_ms: u64,
    /// Longest wait between attempts, in milliseconds: bounds how long a returned device stays
    /// unused.
    pub max_ms: u64,
}

impl Default for Backoff {
    /// 250 ms doubling to 5 s: a replugged grabber is back within about 5 s.
    fn default() -> Backoff {
        Backoff {
            initial_ms: 250,
            max_ms: 5_000,
        }
    }
}

/// Whether the device is in use, and if not, when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The device is open and streaming.
    Up {
        /// When it was opened.
        since_ns: u64,
    },
    /// The device is closed; the next attempt is due at `retry_at_ns`.
    Down {
        /// When the link went down (or the source started).
        since_ns: u64,
        /// When the next attempt is due.
        retry_at_ns: u64,
        /// Attempts that failed since the link went down.
        failed_attempts: u32,
    },
}

/// The reconnection state machine of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// The spacing policy.
    policy: Backoff,
    /// Current state.
    link: Link,
    /// Wait before the next retry after a failure, in nanoseconds; doubles per failure.
    delay_ns: u64,
    /// The link has been up before, so the next connection is a reconnection.
    was_up: bool,
    /// Times the device came back after being lost.
    reconnects: u64,
}

impl Reconnect {
    /// A device not yet opened, with the first attempt due at once.
    pub fn new(policy: Backoff, now_ns: u64) -> Reconnect {
        Reconnect {
            policy,
            link: Link::Down {
                since_ns: now_ns,
                retry_at_ns: now_ns,
                failed_attempts: 0,
            },
            delay_ns: policy.initial_ms.saturating_mul(1_000_000),
            was_up: false,
            reconnects: 0,
        }
    }

    /// The current state.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Times the device came back after being lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Nanoseconds from `now_ns` until an attempt is due: 0 when one is due now or the link
    /// is up.
    pub fn wait_ns(&self, now_ns: u64) -> u64 {
        match self.link {
            Link::Up { .. } => 0,
            Link::Down { retry_at_ns, .. } => retry_at_ns.saturating_sub(now_ns),
        }
    }

    /// An attempt to open the device failed at `now_ns`; the next is scheduled one delay
    /// later and the delay doubles. Returns when the next attempt is due.
    pub fn attempt_failed(&mut self, now_ns: u64) -> u64 {
        let (since_ns, failed_attempts) = match self.link {
            Link::Down {
                since_ns,
                failed_attempts,
                ..
            } => (since_ns, failed_attempts.saturating_add(1)),
            Link::Up { .. } => (now_ns, 1),
        };
        self.schedule(now_ns, since_ns, failed_attempts)
    }

    /// The device opened at `now_ns`.
    pub fn connected(&mut self, now_ns: u64) {
        if self.was_up {
            self.reconnects += 1;
        }
        self.was_up = true;
        self.link = Link::Up { since_ns: now_ns };
    }

    /// A frame arrived: the link works, so the next failure starts the backoff afresh.
    pub fn frame_received(&mut self) {
        self.delay_ns = self.policy.initial_ms.saturating_mul(1_000_000);
    }

    /// The open device failed (unplugged, I/O error, stalled) at `now_ns`. Returns when the
    /// first attempt to reopen it is due.
    pub fn lost(&mut self, now_ns: u64) -> u64 {
        self.schedule(now_ns, now_ns, 0)
    }

    /// Goes down with the next attempt one delay after `now_ns`, and doubles the delay.
    fn schedule(&mut self, now_ns: u64, since_ns: u64, failed_attempts: u32) -> u64 {
        let retry_at_ns = now_ns.saturating_add(self.delay_ns);
        self.link = Link::Down {
            since_ns,
            retry_at_ns,
            failed_attempts,
        };
        let max = self.policy.max_ms.saturating_mul(1_000_000);
        self.delay_ns = self.delay_ns.saturating_mul(2).min(max);
        retry_at_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A fake clock: the test moves time by hand.
    struct Clock(u64);

    impl Clock {
        fn advance_ms(&mut self, ms: u64) -> u64 {
            self.0 += ms * MS;
            self.0
        }
    }

    #[test]
    fn first_attempt_is_immediate_then_delays_double_to_the_cap() {
        let mut clock = Clock(1_000 * MS);
        let mut r = Reconnect::new(
            Backoff {
                initial_ms: 100,
                max_ms: 1_000,
            },
            clock.0,
        );
        assert_eq!(r.wait_ns(clock.0), 0);
        let mut waits = Vec::new();
        for _ in 0..7 {
            let due = r.attempt_failed(clock.0);
            let wait = r.wait_ns(clock.0);
            assert_eq!(due, clock.0 + wait);
            waits.push(wait / MS);
            // Nothing is due until the wait has passed.
            clock.advance_ms(wait / MS - 1);
            assert_eq!(r.wait_ns(clock.0), MS);
            clock.advance_ms(1);
            assert_eq!(r.wait_ns(clock.0), 0);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        match r.link() {
            Link::Down {
                since_ns,
                failed_attempts,
                ..
            } => {
                assert_eq!(since_ns, 1_000 * MS, "down since the start");
                assert_eq!(failed_attempts, 7);
            }
            up => panic!("expected down, got {up:?}"),
        }
        assert_eq!(r.reconnects(), 0);
    }

    #[test]
    fn a_frame_resets_the_backoff_but_an_open_alone_does_not() {
        let mut clock = Clock(0);
        let mut r = Reconnect::new(Backoff::default(), clock.0);
        r.connected(clock.0);
        assert_eq!(r.link(), Link::Up { since_ns: 0 });
        r.frame_received();
        // Unplugged: first retry after the initial delay.
        clock.advance_ms(10_000);
        assert_eq!(r.lost(clock.0), clock.0 + 250 * MS);
        clock.advance_ms(250);
        assert_eq!(r.attempt_failed(clock.0), clock.0 + 500 * MS);
        clock.advance_ms(500);
        // The device opens but dies before any frame: the delay keeps growing.
        r.connected(clock.0);
        assert_eq!(r.reconnects(), 1);
        assert_eq!(r.lost(clock.0), clock.0 + 1_000 * MS);
        clock.advance_ms(1_000);
        r.connected(clock.0);
        assert_eq!(r.reconnects(), 2);
        r.frame_received();
        assert_eq!(
            r.lost(clock.0),
            clock.0 + 250 * MS,
            "frames flowed: start again"
        );
        match r.link() {
            Link::Down {
                failed_attempts, ..
            } => assert_eq!(failed_attempts, 0),
            up => panic!("expected down, got {up:?}"),
        }
    }
}
