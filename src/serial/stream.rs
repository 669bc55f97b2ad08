//! One serial ECG stream: bytes with their arrival times in, timestamped ECG blocks out.
//!
//! [`EcgStream`] joins a protocol decoder and the [`SampleClock`], and is as pure as they are
//! (the caller supplies the arrival times), so the whole path from bytes to session-clock
//! samples is tested without a port. It owns the two decisions neither part can make alone:
//!
//! - After a reconnect on a protocol without sample counters (ASCII) or a board restart
//!   (binary counter going back), how many samples were missed is unknown. The stream
//!   estimates it from the clock (the index whose time is the first new arrival), advances the
//!   index by that much so indices stay proportional to time, and rebases the clock, whose old
//!   arrivals no longer match the guessed indices. Binary gaps with a running counter are exact
//!   and leave the clock alone.
//! - The calibrated offset between video and ECG ([`StreamConfig::video_lag_ns`]) is added to
//!   every time, so ECG and video meet on one session clock.

use super::clock::{ClockParams, SampleClock};
use super::{Decoded, Decoder, LinkStats, Protocol, SerialError};
use crate::media::EcgBlock;

/// Largest video/ECG offset accepted: carts lag by tens to hundreds of milliseconds; seconds
/// mean a unit mistake.
pub const MAX_VIDEO_LAG_NS: i64 = 5_000_000_000;

/// Everything that determines how a stream decodes and timestamps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamConfig {
    /// Wire protocol and its settings.
    pub protocol: Protocol,
    /// The board's nominal sampling rate in Hz, as configured on the board.
    pub fs_hz: f64,
    /// How much later the cart's video shows an event than the serial ECG's arrival envelope
    /// does, in ns (negative if the ECG is later); added to every ECG time so both match.
    /// Measured once per cart model with the tap test in `board/ecg-protocol.md`.
    pub video_lag_ns: i64,
    /// Tuning of the drift-tracking clock.
    pub clock: ClockParams,
}

impl StreamConfig {
    /// A configuration with no video lag and the default clock tuning.
    pub fn new(protocol: Protocol, fs_hz: f64) -> StreamConfig {
        StreamConfig {
            protocol,
            fs_hz,
            video_lag_ns: 0,
            clock: ClockParams::default(),
        }
    }
}

/// What a stream delivers, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Consecutive samples with their session-clock times.
    Ecg(EcgBlock),
    /// Samples `first_index..first_index + count` are missing; the next block starts after
    /// them.
    Lost {
        /// Index of the first missing sample.
        first_index: u64,
        /// How many.
        count: u64,
        /// The count is estimated from arrival times (reconnect without counters, board
        /// restart) rather than known from a counter or a line.
        estimated: bool,
    },
}

/// Decoded output waiting for its timestamps, which exist only once the read's arrival is in
/// the clock.
#[derive(Debug)]
enum Pending {
    /// Consecutive samples with one lead-off state, to become an [`EcgBlock`].
    Run {
        /// Stream index of the first.
        first_index: u64,
        /// The board's lead-off flag for all of them.
        lead_off: bool,
        /// Values in mV.
        samples_mv: Vec<f32>,
    },
    /// To become a [`StreamEvent::Lost`].
    Lost {
        /// Stream index of the first missing sample.
        first_index: u64,
        /// How many.
        count: u64,
        /// Estimated from arrival times.
        estimated: bool,
    },
}

/// Decoder plus clock: the pure core of a serial ECG source.
#[derive(Debug, Clone)]
pub struct EcgStream {
    /// Protocol decoder.
    decoder: Decoder,
    /// Index-to-time map.
    clock: SampleClock,
    /// Nominal rate, copied into every block for the detectors.
    fs_hz: f64,
    /// Added to every time.
    video_lag_ns: i64,
    /// Added to decoder indices: grows when a resync skips samples the decoder could not count.
    shift: u64,
    /// Stream index of the next sample.
    next_index: u64,
    /// The next sample's index must be estimated from its arrival time.
    resync: bool,
    /// Time of the last block's first sample: block times must increase (the session file
    /// and the gate require it) even when a refit moves the line back.
    last_t0: Option<u64>,
    /// Reconnects reported by the reader.
    reconnects: u64,
    /// Samples counted lost by resync estimates.
    estimated_lost: u64,
    /// Work space: the decoder's output for one read.
    decoded: Vec<Decoded>,
}

impl EcgStream {
    /// A stream for `config`, after checking it.
    pub fn new(config: &StreamConfig) -> Result<EcgStream, SerialError> {
        if config.video_lag_ns.abs() > MAX_VIDEO_LAG_NS {
            return Err(SerialError::Config {
                problem: format!(
                    "video lag {} ms is beyond ±{} ms; give it in milliseconds, as measured by \
                     the tap test",
                    config.video_lag_ns as f64 / 1e6,
                    MAX_VIDEO_LAG_NS / 1_000_000
                ),
            });
        }
        Ok(EcgStream {
            decoder: Decoder::new(&config.protocol)?,
            clock: SampleClock::with_params(config.fs_hz, config.clock)?,
            fs_hz: config.fs_hz,
            video_lag_ns: config.video_lag_ns,
            shift: 0,
            next_index: 0,
            resync: false,
            last_t0: None,
            reconnects: 0,
            estimated_lost: 0,
            decoded: Vec::new(),
        })
    }

    /// Decodes `bytes`, read at `arrival_ns` on the session clock, and appends the blocks and
    /// losses they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], arrival_ns: u64, out: &mut Vec<StreamEvent>) {
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        self.decoder.push(bytes, &mut decoded);
        let mut remaining = decoded
            .iter()
            .filter(|d| matches!(d, Decoded::Sample(_)))
            .count() as u64;
        let mut pending: Vec<Pending> = Vec::new();
        let mut newest = None;
        for d in &decoded {
            match *d {
                Decoded::Restart => self.resync = true,
                Decoded::Lost { first_index, count } => {
                    let first_index = first_index + self.shift;
                    pending.push(Pending::Lost {
                        first_index,
                        count,
                        estimated: false,
                    });
                    self.next_index = first_index + count;
                }
                Decoded::Sample(s) => {
                    if self.resync {
                        self.resync = false;
                        self.resynchronise(arrival_ns, remaining, s.index, &mut pending);
                    }
                    remaining -= 1;
                    let index = s.index + self.shift;
                    match pending.last_mut() {
                        Some(Pending::Run {
                            first_index,
                            lead_off,
                            samples_mv,
                        }) if *lead_off == s.lead_off
                            && *first_index + samples_mv.len() as u64 == index =>
                        {
                            samples_mv.push(s.mv);
                        }
                        _ => pending.push(Pending::Run {
                            first_index: index,
                            lead_off: s.lead_off,
                            samples_mv: vec![s.mv],
                        }),
                    }
                    self.next_index = index + 1;
                    newest = Some(index);
                }
            }
        }
        self.decoded = decoded;
        if let Some(index) = newest {
            self.clock.push(index, arrival_ns);
        }
        for p in pending {
            out.push(match p {
                Pending::Run {
                    first_index,
                    lead_off,
                    samples_mv,
                } => {
                    let t0_ns = self.stamp(first_index);
                    StreamEvent::Ecg(EcgBlock {
                        first_index,
                        t0_ns,
                        fs_hz: self.fs_hz,
                        samples_mv,
                        lead_off,
                    })
                }
                Pending::Lost {
                    first_index,
                    count,
                    estimated,
                } => StreamEvent::Lost {
                    first_index,
                    count,
                    estimated,
                },
            });
        }
    }

    /// The link was broken and re-established; the bytes that follow are from a new
    /// connection.
    pub fn reconnected(&mut self) {
        self.decoder.reconnected();
        self.reconnects += 1;
        if !self.decoder.counts_samples() {
            self.resync = true;
        }
    }

    /// The counters of the decoder and the stream together.
    pub fn stats(&self) -> LinkStats {
        let mut stats = self.decoder.stats().clone();
        stats.reconnects = self.reconnects;
        stats.lost_samples += self.estimated_lost;
        stats
    }

    /// The clock, for its fitted rate.
    pub fn clock(&self) -> &SampleClock {
        &self.clock
    }

    /// Index of the next sample the stream will deliver.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Re-aligns indices after an unknown loss: the newest of the `remaining` samples of this
    /// read is taken to be the one the clock places at `arrival_ns`, and the first of them
    /// (decoder index `decoder_index`) is placed accordingly.
    fn resynchronise(
        &mut self,
        arrival_ns: u64,
        remaining: u64,
        decoder_index: u64,
        pending: &mut Vec<Pending>,
    ) {
        if let Some(newest) = self.clock.index_at(arrival_ns) {
            let first = (newest + 1).saturating_sub(remaining);
            if first > self.next_index {
                let count = first - self.next_index;
                pending.push(Pending::Lost {
                    first_index: self.next_index,
                    count,
                    estimated: true,
                });
                self.estimated_lost += count;
                self.next_index = first;
            }
        }
        self.shift = self.next_index.saturating_sub(decoder_index);
        self.clock.rebase();
    }

    /// Session-clock time of sample `index`, the first of a block about to be delivered:
    /// the fitted time plus the video lag, but at least 1 ns after the previous block's.
    ///
    /// Only the block start is held back, and only by as much as the fit stepped back, so the
    /// correction never accumulates; the price is that the last samples of one block may
    /// overlap the first of the next by that step (sub-millisecond once the clock has
    /// settled). Times before the session clock's zero (samples taken before the session
    /// began) read as zero.
    fn stamp(&mut self, index: u64) -> u64 {
        let fitted = self.clock.time_ns(index).unwrap_or(0);
        let mut t = (i128::from(fitted) + i128::from(self.video_lag_ns)).max(0) as u64;
        if let Some(last) = self.last_t0 {
            t = t.max(last + 1);
        }
        self.last_t0 = Some(t);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::binary::{Frame, SampleWidth};
    use crate::serial::{AsciiConfig, BinaryConfig};

    const FS: f64 = 500.0;
    const PERIOD: u64 = 2_000_000;

    fn frame(counter: u32, counts: &[i32]) -> Vec<u8> {
        let mut out = Vec::new();
        Frame {
            counter,
            width: SampleWidth::I16,
            channels: 1,
            lead_off: 0,
            counts: counts.to_vec(),
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    fn binary() -> EcgStream {
        EcgStream::new(&StreamConfig::new(
            Protocol::Binary(BinaryConfig::default()),
            FS,
        ))
        .unwrap()
    }

    fn blocks(events: &[StreamEvent]) -> Vec<&EcgBlock> {
        events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Ecg(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn exact_arrivals_give_exact_times_and_gaps_keep_them() {
        let mut s = binary();
        let mut out = Vec::new();
        // Frames of 10 samples arriving 3 ms after their last sample; frame 3 is lost.
        for k in (0..20u32).filter(|&k| k != 3) {
            let counts: Vec<i32> = (0..10).map(|i| (k * 10 + i) as i32).collect();
            let arrival = (u64::from(k) * 10 + 9) * PERIOD + 3_000_000;
            s.push(&frame(k * 10, &counts), arrival, &mut out);
        }
        let lost: Vec<_> = out
            .iter()
            .filter(|e| matches!(e, StreamEvent::Lost { .. }))
            .collect();
        assert_eq!(
            lost,
            vec![&StreamEvent::Lost {
                first_index: 30,
                count: 10,
                estimated: false
            }]
        );
        for b in blocks(&out) {
            assert_eq!(
                b.t0_ns,
                b.first_index * PERIOD + 3_000_000,
                "{}",
                b.first_index
            );
            assert_eq!(
                b.samples_mv[0],
                SampleWidth::I16.to_mv(b.first_index as i32)
            );
            assert_eq!(b.fs_hz, FS);
        }
        assert_eq!(s.stats().lost_samples, 10);
    }

    #[test]
    fn lead_off_splits_blocks_and_video_lag_shifts_times() {
        let mut config = StreamConfig::new(Protocol::Binary(BinaryConfig::default()), FS);
        config.video_lag_ns = 40_000_000;
        let mut s = EcgStream::new(&config).unwrap();
        let mut bytes = frame(0, &[1, 2]);
        let mut off = Vec::new();
        Frame {
            counter: 2,
            width: SampleWidth::I16,
            channels: 1,
            lead_off: 1,
            counts: vec![0, 0],
        }
        .encode(&mut off)
        .unwrap();
        bytes.extend(off);
        let mut out = Vec::new();
        s.push(&bytes, 3 * PERIOD, &mut out);
        let b = blocks(&out);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].first_index, b[0].lead_off), (0, false));
        assert_eq!((b[1].first_index, b[1].lead_off), (2, true));
        assert_eq!(b[0].t0_ns, 40_000_000);
        assert_eq!(b[1].t0_ns, 2 * PERIOD + 40_000_000);
        config.video_lag_ns = 6_000_000_000;
        assert!(EcgStream::new(&config).is_err());
    }

    #[test]
    fn ascii_reconnect_estimates_the_gap_from_arrival_times() {
        let mut s = EcgStream::new(&StreamConfig::new(
            Protocol::Ascii(AsciiConfig::default()),
            FS,
        ))
        .unwrap();
        let mut out = Vec::new();
        s.push(b"\n", 0, &mut out);
        // 10 s of lines, ten per read, arriving 1 ms after the last.
        let mut n = 0u64;
        while n < 5000 {
            let text: String = (n..n + 10).map(|i| format!("{}\n", i % 7)).collect();
            s.push(text.as_bytes(), (n + 9) * PERIOD + 1_000_000, &mut out);
            n += 10;
        }
        // Unplugged for 1.5 s (750 samples), then a partial line and fresh lines.
        s.reconnected();
        n += 750;
        let text: String = "12\n".to_string()
            + &(n..n + 10)
                .map(|i| format!("{}\n", i % 7))
                .collect::<String>();
        s.push(text.as_bytes(), (n + 9) * PERIOD + 1_000_000, &mut out);
        let lost: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Lost {
                    first_index,
                    count,
                    estimated,
                } => Some((*first_index, *count, *estimated)),
                _ => None,
            })
            .collect();
        assert_eq!(lost, vec![(5000, 750, true)]);
        let last = *blocks(&out).last().unwrap();
        assert_eq!(last.first_index, n);
        assert_eq!(last.t0_ns, n * PERIOD + 1_000_000);
        assert_eq!(s.stats().reconnects, 1);
        assert_eq!(s.stats().lost_samples, 750);
    }

    #[test]
    fn board_restart_is_placed_by_time() {
        let mut s = binary();
        let mut out = Vec::new();
        for k in 0..100u32 {
            let arrival = (u64::from(k) * 10 + 9) * PERIOD;
            s.push(&frame(k * 10, &[0; 10]), arrival, &mut out);
        }
        // The board resets and 2 s later starts again from counter 0.
        out.clear();
        let first = 1000 + 1000;
        s.push(&frame(0, &[5; 10]), (first + 9) * PERIOD, &mut out);
        assert_eq!(
            out[0],
            StreamEvent::Lost {
                first_index: 1000,
                count: 1000,
                estimated: true
            }
        );
        let b = blocks(&out);
        assert_eq!(b[0].first_index, first);
        assert_eq!(b[0].t0_ns, first * PERIOD);
        // Counting continues exactly from the restarted counter.
        out.clear();
        s.push(&frame(20, &[6; 10]), (first + 29) * PERIOD, &mut out);
        assert_eq!(
            out[0],
            StreamEvent::Lost {
                first_index: first + 10,
                count: 10,
                estimated: false
            }
        );
        assert_eq!(blocks(&out)[0].first_index, first + 20);
    }

    #[test]
    fn times_never_go_back() {
        let mut s = binary();
        let mut out = Vec::new();
        // A first read delayed by 50 ms, then prompt ones: the fit drops, times must not.
        s.push(&frame(0, &[0; 10]), 9 * PERIOD + 50_000_000, &mut out);
        s.push(&frame(10, &[0; 10]), 19 * PERIOD, &mut out);
        let b = blocks(&out);
        assert_eq!(b[0].t0_ns, 50_000_000);
        assert_eq!(b[1].t0_ns, 50_000_001);
    }
}
