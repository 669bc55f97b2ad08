//! Protocol b: our binary frame for a cart's ECG board.
//!
//! Text cannot say which samples were lost or whether a byte was corrupted, and gating needs
//! both: a frame therefore carries the index of its first sample (so a gap shows exactly how
//! many samples are missing) and a CRC-16/CCITT-FALSE (so a corrupted frame is dropped, not
//! drawn as an ECG spike). `board/ecg-protocol.md` is the specification the firmware is
//! written from; in short (all fields little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | sync `A5 5A` |
//! | 2 | 1 | version, 1 |
//! | 3 | 1 | format: high nibble channels − 1, low nibble bytes per value (2: i16, 3: i24) |
//! | 4 | 4 | counter: index of the frame's first sample, mod 2^32 |
//! | 8 | 1 | N, samples per channel, 1..=64 |
//! | 9 | 1 | lead-off bits, bit c for channel c |
//! | 10 | N·C·W | samples, sample-major (all channels of sample 0, then of sample 1, ...) |
//! | 10+N·C·W | 2 | CRC over bytes 2 .. 10+N·C·W (version to last sample byte) |
//!
//! Gains are fixed by the width, so no setting can disagree with the board: i16 counts 1 µV
//! (±32.8 mV, AC-coupled front ends), i24 counts 0.1 µV (±839 mV, enough for a DC-coupled
//! front end's electrode offset).
//!
//! The decoder hunts for the sync word, checks the header, waits for the whole frame and
//! checks the CRC. A false sync or a bad CRC discards one byte only and hunts again from the
//! next, so a real frame hidden inside a corrupted one's length is still found: a corrupted
//! length field delays frames but never loses good ones.

use super::{Decoded, LinkStats, Sample, SerialError, crc};

/// The two bytes that start every frame, in wire order; the pattern is rare in ECG data (a
/// sample of -23,131 µV or 0xA5 in a counter's low byte followed by 0x5A) and the header and
/// CRC checks reject the false syncs it still gives.
pub const SYNC: [u8; 2] = [0xA5, 0x5A];
/// The protocol version this decoder reads; a board with a future layout is rejected as bad
/// headers instead of being misread.
pub const VERSION: u8 = 1;
/// Bytes before the first sample.
pub const HEADER_LEN: usize = 10;
/// Bytes of the CRC after the samples.
pub const CRC_LEN: usize = 2;
/// Most samples per channel in one frame: 64 is 64 ms at 1 kHz, which bounds the latency a
/// frame adds.
pub const MAX_SAMPLES: usize = 64;
/// Most channels in one frame: the lead-off field has one bit per channel.
pub const MAX_CHANNELS: usize = 8;
/// The longest frame (64 samples of 8 channels at 3 bytes): a receiver never buffers more
/// than this to decide about a sync word.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_SAMPLES * MAX_CHANNELS * 3 + CRC_LEN;

/// Bytes and gain of one sample value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleWidth {
    /// Two bytes, two's complement, 1 µV per count.
    I16,
    /// Three bytes, two's complement, 0.1 µV per count.
    I24,
}

impl SampleWidth {
    /// Bytes per value on the wire (also the format byte's low nibble).
    pub fn bytes(self) -> usize {
        match self {
            SampleWidth::I16 => 2,
            SampleWidth::I24 => 3,
        }
    }

    /// The width whose format nibble is `code`.
    pub fn from_code(code: u8) -> Option<SampleWidth> {
        match code {
            2 => Some(SampleWidth::I16),
            3 => Some(SampleWidth::I24),
            _ => None,
        }
    }

    /// Microvolts per count.
    pub fn uv_per_count(self) -> f64 {
        match self {
            SampleWidth::I16 => 1.0,
            SampleWidth::I24 => 0.1,
        }
    }

    /// Largest count the width holds (the smallest is `-max - 1`).
    pub fn max_count(self) -> i32 {
        match self {
            SampleWidth::I16 => i32::from(i16::MAX),
            SampleWidth::I24 => (1 << 23) - 1,
        }
    }

    /// A count in millivolts, as the decoder delivers it.
    pub fn to_mv(self, count: i32) -> f32 {
        (f64::from(count) * self.uv_per_count() * 1e-3) as f32
    }

    /// The count nearest to `mv`, saturating at the width's range as a converter clips.
    pub fn from_mv(self, mv: f32) -> i32 {
        let max = self.max_count();
        if mv.is_nan() {
            return 0;
        }
        let count = (f64::from(mv) * 1e3 / self.uv_per_count()).round();
        count.clamp(f64::from(-max - 1), f64::from(max)) as i32
    }
}

/// Settings of protocol b on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BinaryConfig {
    /// Channel to use, counting from 0: the board may send several leads.
    pub lead: usize,
}

impl BinaryConfig {
    /// Checks the lead against what a frame can hold.
    pub fn validate(&self) -> Result<(), SerialError> {
        if self.lead >= MAX_CHANNELS {
            return Err(SerialError::Config {
                problem: format!(
                    "--lead {} is beyond the {MAX_CHANNELS} channels a binary frame can carry; \
                     count channels from 0",
                    self.lead
                ),
            });
        }
        Ok(())
    }
}

/// One frame's contents, for encoding (the emulator, tests, and as the reference for firmware).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Index of the first sample since the board started, mod 2^32.
    pub counter: u32,
    /// Width and gain of the values.
    pub width: SampleWidth,
    /// Channels per sample, 1..=8.
    pub channels: usize,
    /// Bit c set: channel c's electrodes were off during the frame.
    pub lead_off: u8,
    /// Counts, sample-major: `counts[s * channels + c]`; a whole number of samples, 1..=64.
    pub counts: Vec<i32>,
}

impl Frame {
    /// Samples per channel.
    pub fn samples(&self) -> usize {
        self.counts.len() / self.channels.max(1)
    }

    /// Appends the frame's bytes to `out`; refuses a frame the protocol cannot carry.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SerialError> {
        let bad = |problem: String| Err(SerialError::Config { problem });
        if !(1..=MAX_CHANNELS).contains(&self.channels) {
            return bad(format!(
                "a binary frame carries 1 to {MAX_CHANNELS} channels, not {}",
                self.channels
            ));
        }
        let n = self.samples();
        if !(1..=MAX_SAMPLES).contains(&n) || n * self.channels != self.counts.len() {
            return bad(format!(
                "a binary frame carries 1 to {MAX_SAMPLES} whole samples of {} channels, not {} \
                 values",
                self.channels,
                self.counts.len()
            ));
        }
        let max = self.width.max_count();
        if let Some(c) = self.counts.iter().find(|&&c| c > max || c < -max - 1) {
            return bad(format!("count {c} does not fit in {:?}", self.width));
        }
        let start = out.len();
        out.extend_from_slice(&SYNC);
        out.push(VERSION);
        out.push((((self.channels - 1) as u8) << 4) | self.width.bytes() as u8);
        out.extend_from_slice(&self.counter.to_le_bytes());
        out.push(n as u8);
        out.push(self.lead_off);
        for &c in &self.counts {
            out.extend_from_slice(&c.to_le_bytes()[..self.width.bytes()]);
        }
        let crc = crc::crc16(&out[start + SYNC.len()..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// The header fields the decoder needs, once checked.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// Value width, from the format byte's low nibble.
    width: SampleWidth,
    /// Channels per sample, 1..=8.
    channels: usize,
    /// Index of the first sample, mod 2^32.
    counter: u32,
    /// Samples per channel, 1..=64.
    samples: usize,
    /// Lead-off bit per channel.
    lead_off: u8,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes (sync included); `None` if it cannot
    /// be one.
    fn parse(h: &[u8]) -> Option<Header> {
        if h.len() < HEADER_LEN || h[..2] != SYNC || h[2] != VERSION {
            return None;
        }
        let width = SampleWidth::from_code(h[3] & 0x0F)?;
        let samples = usize::from(h[8]);
        if !(1..=MAX_SAMPLES).contains(&samples) {
            return None;
        }
        Some(Header {
            width,
            channels: usize::from(h[3] >> 4) + 1,
            counter: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            samples,
            lead_off: h[9],
        })
    }

    /// Length of the whole frame, CRC included.
    fn frame_len(&self) -> usize {
        HEADER_LEN + self.samples * self.channels * self.width.bytes() + CRC_LEN
    }
}

/// Push-driven decoder of protocol b.
#[derive(Debug, Clone)]
pub struct BinaryDecoder {
    /// Which channel to deliver.
    config: BinaryConfig,
    /// Received bytes not yet decided on: never more than a frame plus one read.
    buf: Vec<u8>,
    /// Counter value the next frame should start at; `None` before the first frame.
    expected: Option<u32>,
    /// Index the next sample gets.
    next_index: u64,
    /// Counters.
    stats: LinkStats,
}

impl BinaryDecoder {
    /// A decoder with `config` (validated by the caller, see [`BinaryConfig::validate`]).
    pub fn new(config: BinaryConfig) -> BinaryDecoder {
        BinaryDecoder {
            config,
            buf: Vec::with_capacity(2 * MAX_FRAME_LEN),
            expected: None,
            next_index: 0,
            stats: LinkStats::default(),
        }
    }

    /// Decodes `bytes`, appending the samples and losses of every frame they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        self.stats.bytes += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(at) = rest.windows(2).position(|w| w == SYNC) else {
                // Keep a final 0xA5: it may be the first half of a sync word.
                let keep = usize::from(rest.last() == Some(&SYNC[0]));
                self.stats.skipped_bytes += (rest.len() - keep) as u64;
                pos = self.buf.len() - keep;
                break;
            };
            self.stats.skipped_bytes += at as u64;
            pos += at;
            let rest = &self.buf[pos..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let Some(header) = Header::parse(rest) else {
                self.stats.bad_headers += 1;
                self.stats.skipped_bytes += 1;
                pos += 1;
                continue;
            };
            let len = header.frame_len();
            if rest.len() < len {
                break;
            }
            let sent = u16::from_le_bytes([rest[len - 2], rest[len - 1]]);
            if crc::crc16(&rest[SYNC.len()..len - CRC_LEN]) != sent {
                self.stats.crc_errors += 1;
                self.stats.skipped_bytes += 1;
                self.stats.note(format!(
                    "CRC error in a frame of counter {} (line noise or a wrong baud rate)",
                    header.counter
                ));
                pos += 1;
                continue;
            }
            let body = pos + HEADER_LEN..pos + len - CRC_LEN;
            pos += len;
            self.frame(header, body, out);
        }
        self.buf.drain(..pos);
    }

    /// The link was re-established: the partial frame belongs to the old connection. The
    /// expected counter stays, so a board that kept running shows the exact gap.
    pub fn reconnected(&mut self) {
        self.buf.clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Delivers a frame that passed its CRC; its samples lie at `body` in the buffer.
    fn frame(&mut self, header: Header, body: std::ops::Range<usize>, out: &mut Vec<Decoded>) {
        self.stats.frames += 1;
        if let Some(expected) = self.expected {
            let ahead = header.counter.wrapping_sub(expected);
            if ahead == 0 {
            } else if ahead < 1 << 31 {
                let count = u64::from(ahead);
                out.push(Decoded::Lost {
                    first_index: self.next_index,
                    count,
                });
                self.next_index += count;
                self.stats.lost_samples += count;
                self.stats.note(format!(
                    "{count} samples missing before counter {}",
                    header.counter
                ));
            } else {
                out.push(Decoded::Restart);
                self.stats.restarts += 1;
                self.stats.note(format!(
                    "sample counter went back from {expected} to {}: the board restarted",
                    header.counter
                ));
            }
        }
        self.expected = Some(header.counter.wrapping_add(header.samples as u32));
        let n = header.samples as u64;
        let lead = self.config.lead;
        if lead >= header.channels {
            self.stats.missing_lead += 1;
            self.stats.lost_samples += n;
            self.stats.note(format!(
                "frames have {} channel(s), lead {lead} needs {} (check --lead, counted from 0)",
                header.channels,
                lead + 1
            ));
            out.push(Decoded::Lost {
                first_index: self.next_index,
                count: n,
            });
            self.next_index += n;
            return;
        }
        let w = header.width.bytes();
        let stride = header.channels * w;
        let lead_off = header.lead_off & (1 << lead) != 0;
        for value in self.buf[body].chunks_exact(stride) {
            let b = &value[lead * w..lead * w + w];
            let count = match header.width {
                SampleWidth::I16 => i32::from(i16::from_le_bytes([b[0], b[1]])),
                // Sign-extend 24 bits by placing them in the top of an i32.
                SampleWidth::I24 => i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8,
            };
            out.push(Decoded::Sample(Sample {
                index: self.next_index,
                mv: header.width.to_mv(count),
                lead_off,
            }));
            self.next_index += 1;
        }
        self.stats.samples += n;
    }
}

/// Hex of `bytes`, space-separated, as the protocol document prints frames.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Example 1 of `board/ecg-protocol.md`: one i16 channel, counter 1000, four samples.
    const EXAMPLE_1: &str = "A5 5A 01 02 E8 03 00 00 04 00 00 00 96 00 B0 04 06 FF 00 3D";
    /// Example 2 of `board/ecg-protocol.md`: two i24 channels, counter 70000, channel 1 off.
    const EXAMPLE_2: &str =
        "A5 5A 01 13 70 11 01 00 02 02 10 27 00 00 00 00 F0 D8 FF 00 00 00 6D FC";

    fn example_1() -> Frame {
        Frame {
            counter: 1000,
            width: SampleWidth::I16,
            channels: 1,
            lead_off: 0,
            counts: vec![0, 150, 1200, -250],
        }
    }

    fn example_2() -> Frame {
        Frame {
            counter: 70_000,
            width: SampleWidth::I24,
            channels: 2,
            lead_off: 0b10,
            counts: vec![10_000, 0, -10_000, 0],
        }
    }

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

    fn decode(lead: usize, bytes: &[u8]) -> (Vec<Decoded>, LinkStats) {
        let mut d = BinaryDecoder::new(BinaryConfig { lead });
        let mut out = Vec::new();
        d.push(bytes, &mut out);
        (out, d.stats().clone())
    }

    fn sample(index: u64, count: i32) -> Decoded {
        Decoded::Sample(Sample {
            index,
            mv: SampleWidth::I16.to_mv(count),
            lead_off: false,
        })
    }

    #[test]
    fn documented_examples_encode_exactly() {
        let mut out = Vec::new();
        example_1().encode(&mut out).unwrap();
        assert_eq!(hex(&out), EXAMPLE_1);
        out.clear();
        example_2().encode(&mut out).unwrap();
        assert_eq!(hex(&out), EXAMPLE_2);
        assert_eq!(MAX_FRAME_LEN, 1548);
    }

    #[test]
    fn documented_examples_decode() {
        let mut bytes = Vec::new();
        example_1().encode(&mut bytes).unwrap();
        let (out, stats) = decode(0, &bytes);
        assert_eq!(
            out,
            vec![
                sample(0, 0),
                sample(1, 150),
                sample(2, 1200),
                sample(3, -250)
            ]
        );
        assert_eq!(stats.frames, 1);
        let mut bytes = Vec::new();
        example_2().encode(&mut bytes).unwrap();
        let (out, _) = decode(0, &bytes);
        let mv: Vec<f32> = out
            .iter()
            .map(|d| match d {
                Decoded::Sample(s) => s.mv,
                _ => f32::NAN,
            })
            .collect();
        assert_eq!(mv, vec![1.0, -1.0]);
        let (out, _) = decode(1, &bytes);
        assert!(
            out.iter()
                .all(|d| matches!(d, Decoded::Sample(s) if s.lead_off && s.mv == 0.0))
        );
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let mut bytes = b"\x00\xA5\xA5\x5A\x07garbage".to_vec();
        bytes.extend(frame(5, &[1, 2, 3]));
        bytes.extend(b"\xA5");
        bytes.extend(frame(8, &[4, -5]));
        bytes.extend(frame(20, &[6]));
        let (whole, whole_stats) = decode(0, &bytes);
        let mut d = BinaryDecoder::new(BinaryConfig { lead: 0 });
        let mut split = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b), &mut split);
        }
        assert_eq!(whole, split);
        assert_eq!(&whole_stats, d.stats());
        assert_eq!(
            whole,
            vec![
                sample(0, 1),
                sample(1, 2),
                sample(2, 3),
                sample(3, 4),
                sample(4, -5),
                Decoded::Lost {
                    first_index: 5,
                    count: 10
                },
                sample(15, 6),
            ]
        );
        assert_eq!(whole_stats.lost_samples, 10);
        assert_eq!(whole_stats.frames, 3);
        // The garbage before the first frame and the stray 0xA5 between frames.
        assert_eq!(whole_stats.skipped_bytes, 12 + 1);
        assert_eq!(whole_stats.bad_headers, 1);
    }

    #[test]
    fn corrupted_frame_is_dropped_and_counted_and_indices_hold() {
        let mut bytes = frame(0, &[1, 2]);
        let mut bad = frame(2, &[3, 4]);
        bad[11] ^= 0x10;
        bytes.extend(&bad);
        bytes.extend(frame(4, &[5, 6]));
        let (out, stats) = decode(0, &bytes);
        assert_eq!(
            out,
            vec![
                sample(0, 1),
                sample(1, 2),
                Decoded::Lost {
                    first_index: 2,
                    count: 2
                },
                sample(4, 5),
                sample(5, 6),
            ]
        );
        assert_eq!(stats.crc_errors, 1);
        assert_eq!(stats.lost_samples, 2);
    }

    #[test]
    fn corrupted_length_delays_but_does_not_lose_the_next_frames() {
        // A corrupted sample count makes the first frame claim 64 samples: the decoder waits
        // for them, the CRC fails, and the frames swallowed meanwhile are found again.
        let mut bytes = frame(0, &[1]);
        bytes[8] = 64;
        for k in 1..10 {
            bytes.extend(frame(k, &[k as i32]));
        }
        let (out, stats) = decode(0, &bytes);
        let got: Vec<u64> = out
            .iter()
            .filter_map(|d| match d {
                Decoded::Sample(s) => Some(s.index),
                _ => None,
            })
            .collect();
        assert_eq!(got, (0..9).collect::<Vec<u64>>());
        assert_eq!(stats.crc_errors, 1);
        assert_eq!(stats.frames, 9);
    }

    #[test]
    fn counter_wraps_without_a_gap_and_going_back_is_a_restart() {
        let mut bytes = frame(u32::MAX - 1, &[1, 2]);
        bytes.extend(frame(0, &[3]));
        bytes.extend(frame(0, &[4]));
        let (out, stats) = decode(0, &bytes);
        assert_eq!(
            out,
            vec![
                sample(0, 1),
                sample(1, 2),
                sample(2, 3),
                Decoded::Restart,
                sample(3, 4),
            ]
        );
        assert_eq!(stats.restarts, 1);
        assert_eq!(stats.lost_samples, 0);
    }

    #[test]
    fn missing_lead_loses_the_frame_but_keeps_indices() {
        let mut bytes = frame(0, &[1, 2, 3]);
        bytes.extend(frame(3, &[4]));
        let (out, stats) = decode(1, &bytes);
        assert_eq!(
            out,
            vec![
                Decoded::Lost {
                    first_index: 0,
                    count: 3
                },
                Decoded::Lost {
                    first_index: 3,
                    count: 1
                },
            ]
        );
        assert_eq!(stats.missing_lead, 2);
        assert!(stats.last_problem.unwrap().contains("lead 1 needs 2"));
    }

    #[test]
    fn reconnect_drops_the_partial_frame_and_keeps_the_counter() {
        let mut d = BinaryDecoder::new(BinaryConfig { lead: 0 });
        let mut out = Vec::new();
        d.push(&frame(0, &[1, 2]), &mut out);
        let next = frame(2, &[3, 4]);
        d.push(&next[..7], &mut out);
        d.reconnected();
        d.push(&frame(10, &[5]), &mut out);
        assert_eq!(
            out,
            vec![
                sample(0, 1),
                sample(1, 2),
                Decoded::Lost {
                    first_index: 2,
                    count: 8
                },
                sample(10, 5),
            ]
        );
    }

    #[test]
    fn widths_round_trip_and_saturate() {
        for w in [SampleWidth::I16, SampleWidth::I24] {
            let max = w.max_count();
            for c in [0, 1, -1, 12345, -12345, max, -max - 1] {
                assert_eq!(w.from_mv(w.to_mv(c)), c, "{w:?} {c}");
            }
            assert_eq!(w.from_mv(1e9), max);
            assert_eq!(w.from_mv(-1e9), -max - 1);
            assert_eq!(w.from_mv(f32::NAN), 0);
        }
        let mut out = Vec::new();
        let frame = Frame {
            counter: 0,
            width: SampleWidth::I24,
            channels: 1,
            lead_off: 0,
            counts: vec![-(1 << 23), (1 << 23) - 1, -1],
        };
        frame.encode(&mut out).unwrap();
        let (decoded, _) = decode(0, &out);
        let mv: Vec<f32> = decoded
            .iter()
            .filter_map(|d| match d {
                Decoded::Sample(s) => Some(s.mv),
                _ => None,
            })
            .collect();
        assert_eq!(
            mv,
            vec![
                SampleWidth::I24.to_mv(-(1 << 23)),
                SampleWidth::I24.to_mv((1 << 23) - 1),
                SampleWidth::I24.to_mv(-1)
            ]
        );
    }

    #[test]
    fn encode_refuses_what_the_protocol_cannot_carry() {
        let mut out = Vec::new();
        let mut f = example_1();
        f.counts = vec![];
        assert!(f.encode(&mut out).is_err());
        f.counts = vec![0; 65];
        assert!(f.encode(&mut out).is_err());
        f.counts = vec![40_000];
        assert!(f.encode(&mut out).is_err());
        f.counts = vec![0; 3];
        f.channels = 2;
        assert!(f.encode(&mut out).is_err());
        f.channels = 9;
        assert!(f.encode(&mut out).is_err());
        assert!(out.is_empty());
    }
}
