//! Frame numbers and dropped-frame counts from the driver's buffer sequence numbers.
//!
//! V4L2 numbers the buffers of a stream with a 32-bit `sequence` that counts every frame the
//! device produced, including those it had to skip because no buffer was free; a gap therefore
//! is a drop. The numbering restarts with every stream (after a reconnection), so echoview's
//! own frame number ([`crate::media::Frame::seq`]) is kept here: it follows the driver's gaps
//! within a stream, and across a restart it advances by the number of frame periods that
//! passed, so downstream stages (the beat cutter) see the outage as the gap it was.
//!
//! Some drivers leave `sequence` at 0 for every buffer. A repeated number is taken as that, and
//! those frames are numbered from their timestamps in the same way as across a restart.

/// The frame numbering of one capture source across its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequencer {
    /// The number the next frame gets when nothing was lost.
    next: u64,
    /// The driver's sequence number of the last frame of the current stream, if any.
    last_driver: Option<u32>,
    /// Time of the last frame, to count periods across restarts.
    last_t_ns: Option<u64>,
    /// Frames the driver skipped within streams (sequence gaps).
    dropped: u64,
    /// Frames estimated lost between streams or on drivers without sequence numbers.
    estimated_lost: u64,
}

impl Default for Sequencer {
    fn default() -> Sequencer {
        Sequencer::new()
    }
}

impl Sequencer {
    /// Numbering that gives the first frame number 0.
    pub fn new() -> Sequencer {
        Sequencer {
            next: 0,
            last_driver: None,
            last_t_ns: None,
            dropped: 0,
            estimated_lost: 0,
        }
    }

    /// A new stream starts (the device was reopened): its sequence numbers start afresh.
    pub fn stream_started(&mut self) {
        self.last_driver = None;
    }

    /// Frames the driver skipped within streams.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Frames estimated lost from timestamps: between streams, and on drivers that do not
    /// number their buffers.
    pub fn estimated_lost(&self) -> u64 {
        self.estimated_lost
    }

    /// Numbers the frame the driver delivered with `driver_seq` at `t_ns`; `period_ns` is the
    /// negotiated frame period, used to count frames across a restart (without it, a restart
    /// counts as one missing frame).
    pub fn frame(&mut self, driver_seq: u32, t_ns: u64, period_ns: Option<u64>) -> u64 {
        let step = match self.last_driver {
            // Within a stream: a forward gap of k means k - 1 frames skipped. A number that
            // repeats or goes back (by more than half the range) is not a count to trust.
            Some(last) => {
                let gap = driver_seq.wrapping_sub(last);
                if gap != 0 && gap < 1 << 31 {
                    self.dropped += u64::from(gap - 1);
                    u64::from(gap)
                } else {
                    self.periods_since(t_ns, period_ns, 1)
                }
            }
            None if self.last_t_ns.is_none() => 0,
            // First frame after a restart: at least one frame is missing.
            None => self.periods_since(t_ns, period_ns, 2),
        };
        let seq = if self.last_t_ns.is_none() {
            self.next
        } else {
            self.next - 1 + step
        };
        self.next = seq + 1;
        self.last_driver = Some(driver_seq);
        self.last_t_ns = Some(t_ns);
        seq
    }

    /// Frame periods from the last frame to `t_ns`, at least `floor`; the excess over one is
    /// counted as lost.
    fn periods_since(&mut self, t_ns: u64, period_ns: Option<u64>, floor: u64) -> u64 {
        let elapsed = t_ns.saturating_sub(self.last_t_ns.unwrap_or(t_ns));
        let periods = match period_ns {
            Some(p) if p > 0 => (elapsed + p / 2) / p,
            _ => 0,
        };
        let step = periods.max(floor).max(1);
        self.estimated_lost += step - 1;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: u64 = 33_333_333;

    /// Feeds `(driver_seq, t_ns)` pairs and collects the frame numbers.
    fn feed(s: &mut Sequencer, frames: &[(u32, u64)]) -> Vec<u64> {
        frames
            .iter()
            .map(|&(d, t)| s.frame(d, t, Some(PERIOD)))
            .collect()
    }

    #[test]
    fn gaps_in_the_driver_sequence_are_drops() {
        let mut s = Sequencer::new();
        let t = |i: u64| 1_000 + i * PERIOD;
        let seqs = feed(&mut s, &[(17, t(0)), (18, t(1)), (21, t(4)), (22, t(5))]);
        assert_eq!(seqs, [0, 1, 4, 5]);
        assert_eq!((s.dropped(), s.estimated_lost()), (2, 0));
    }

    #[test]
    fn the_driver_sequence_wraps_at_32_bits() {
        let mut s = Sequencer::new();
        let seqs = feed(
            &mut s,
            &[(u32::MAX - 1, 0), (u32::MAX, PERIOD), (1, 3 * PERIOD)],
        );
        assert_eq!(seqs, [0, 1, 3]);
        assert_eq!(s.dropped(), 1);
    }

    #[test]
    fn a_restart_advances_by_the_elapsed_periods() {
        let mut s = Sequencer::new();
        feed(&mut s, &[(100, 0), (101, PERIOD)]);
        s.stream_started();
        // Unplugged for about 2 s: 60 periods after the last frame.
        let seqs = feed(&mut s, &[(0, 61 * PERIOD + 5), (1, 62 * PERIOD)]);
        assert_eq!(seqs, [61, 62]);
        assert_eq!((s.dropped(), s.estimated_lost()), (0, 59));
        // A restart without a known period still leaves a gap of one frame.
        s.stream_started();
        let seq = s.frame(0, 63 * PERIOD, None);
        assert_eq!(seq, 64);
        assert_eq!(s.estimated_lost(), 60);
    }

    #[test]
    fn drivers_that_do_not_number_buffers_are_numbered_by_time() {
        let mut s = Sequencer::new();
        let seqs = feed(
            &mut s,
            &[(0, 0), (0, PERIOD), (0, 2 * PERIOD), (0, 5 * PERIOD)],
        );
        assert_eq!(seqs, [0, 1, 2, 5]);
        assert_eq!((s.dropped(), s.estimated_lost()), (0, 2));
        // A number going backwards mid-stream is treated the same way.
        let seq = s.frame(u32::MAX - 3, 6 * PERIOD, Some(PERIOD));
        assert_eq!(seq, 6);
    }
}
