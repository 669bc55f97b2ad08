//! The ECG board emulator: writes ECG blocks (the simulator's, or any) to a serial device,
//! pseudo-terminal or file in either protocol, paced at the true sample rate.
//!
//! With it a cart's whole serial path (adapter, cable, port settings, `echoview ecg listen`,
//! the live pipeline) can be tested end to end without a patient or a board, and the tests of
//! this module run the real reader against it over pseudo-terminals.
//!
//! Pacing follows the samples' own times: a block is written when its last sample's time has
//! come (relative to the first block), as a board sends a frame once it is full. A speed factor
//! runs faster for tests; a writer that falls behind (a slow simulator) catches up by writing
//! at once, and does not sleep to make up. A block the device will not take within the write
//! timeout (nobody reading a pseudo-terminal, flow control) is dropped and counted, as a board
//! drops frames when its transmit buffer is full, since stalling would misplace all later
//! samples in time.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

use super::SerialError;
use super::binary::{Frame, MAX_SAMPLES, SampleWidth};
use crate::media::EcgBlock;

/// Slowest pacing accepted, as a multiple of real time.
pub const MIN_SPEED: f64 = 0.01;
/// Fastest pacing accepted; beyond it, leave pacing off.
pub const MAX_SPEED: f64 = 1000.0;

/// What to write on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WireFormat {
    /// Protocol a: one line per sample, three decimals of the unit, `!` while the lead is off.
    Ascii {
        /// Millivolts per unit written (1: millivolts), as the receiver's `--scale`.
        mv_per_unit: f64,
    },
    /// Protocol b: one frame per block (split at 64 samples), one channel, counter = sample
    /// index.
    Binary {
        /// Value width (and so gain).
        width: SampleWidth,
    },
}

/// Settings of an emulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmulatorConfig {
    /// Protocol and its details.
    pub format: WireFormat,
    /// Multiple of real time to pace at (1: a real board's rate); `None` writes as fast as the
    /// device takes it.
    pub speed: Option<f64>,
    /// Line speed for a serial device, also used to refuse a stream the line cannot carry.
    pub baud: u32,
    /// Longest wait for the device to take a block before it is dropped.
    pub write_timeout: Duration,
}

impl EmulatorConfig {
    /// Real-time pacing at 115200 baud with a 200 ms write timeout.
    pub fn new(format: WireFormat) -> EmulatorConfig {
        EmulatorConfig {
            format,
            speed: Some(1.0),
            baud: 115_200,
            write_timeout: Duration::from_millis(200),
        }
    }

    /// Checks the settings, naming the flag to fix.
    pub fn validate(&self) -> Result<(), SerialError> {
        let bad = |problem: String| Err(SerialError::Config { problem });
        if let Some(speed) = self.speed
            && !(MIN_SPEED..=MAX_SPEED).contains(&speed)
        {
            return bad(format!(
                "--ecg-speed {speed} must be {MIN_SPEED} to {MAX_SPEED} times real time"
            ));
        }
        if let WireFormat::Ascii { mv_per_unit } = self.format
            && !(mv_per_unit.is_finite() && mv_per_unit > 0.0)
        {
            return bad(format!(
                "ASCII scale {mv_per_unit} must be positive millivolts per unit"
            ));
        }
        if self.baud == 0 {
            return bad("--ecg-baud must be a line speed such as 115200".to_string());
        }
        Ok(())
    }
}

/// Turns blocks into protocol bytes; pure, so the wire format is tested without a device.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// What to write.
    format: WireFormat,
    /// Nothing written yet: an ASCII stream starts with an LF, since receivers drop the first
    /// (probably partial) line.
    fresh: bool,
}

impl Encoder {
    /// An encoder for `format`.
    pub fn new(format: WireFormat) -> Encoder {
        Encoder {
            format,
            fresh: true,
        }
    }

    /// Appends `block`'s bytes to `out`. Binary counters are the blocks' sample indices, so a
    /// block left out shows as a gap of exactly its length.
    pub fn encode(&mut self, block: &EcgBlock, out: &mut Vec<u8>) {
        match self.format {
            WireFormat::Ascii { mv_per_unit } => {
                if self.fresh {
                    out.push(b'\n');
                }
                for &mv in &block.samples_mv {
                    if block.lead_off {
                        out.extend_from_slice(b"!\n");
                    } else {
                        // Writing to a Vec cannot fail.
                        let _ = writeln!(out, "{:.3}", f64::from(mv) / mv_per_unit);
                    }
                }
            }
            WireFormat::Binary { width } => {
                let mut counter = block.first_index as u32;
                for chunk in block.samples_mv.chunks(MAX_SAMPLES) {
                    let frame = Frame {
                        counter,
                        width,
                        channels: 1,
                        lead_off: u8::from(block.lead_off),
                        counts: chunk.iter().map(|&mv| width.from_mv(mv)).collect(),
                    };
                    // 1..=64 finite counts of one channel within range: always encodable.
                    let _ = frame.encode(out);
                    counter = counter.wrapping_add(chunk.len() as u32);
                }
            }
        }
        self.fresh = false;
    }
}

/// What an emulator has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EmulatorStats {
    /// Blocks written whole.
    pub blocks: u64,
    /// Samples in them.
    pub samples: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Blocks the device would not take in time (partly written, or not at all).
    pub dropped_blocks: u64,
    /// Largest lateness of a block against its pacing time, in ms: above a block's length the
    /// source cannot keep up with real time.
    pub max_late_ms: f64,
}

/// A writer of paced ECG in one protocol.
pub struct Emulator {
    /// Where the bytes go.
    out: Box<dyn Write + Send>,
    /// The path a receiver should open (the device, or a pseudo-terminal's far end).
    device: PathBuf,
    /// Checks the line can carry the stream (serial devices only).
    baud: Option<u32>,
    /// Bytes per block.
    encoder: Encoder,
    /// Real-time multiple, if paced.
    speed: Option<f64>,
    /// Wall-clock start and the first block's last-sample time, once the first block is sent.
    start: Option<(Instant, u64)>,
    /// Work space.
    buf: Vec<u8>,
    /// Counters.
    stats: EmulatorStats,
    /// For a pseudo-terminal made here: its far end, held open so the terminal outlives
    /// listeners that come and go.
    _pty_far_end: Option<TTYPort>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("device", &self.device)
            .field("speed", &self.speed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// An emulator writing to `out`, named `device` in messages.
    pub fn new(
        out: Box<dyn Write + Send>,
        device: impl Into<PathBuf>,
        config: EmulatorConfig,
    ) -> Result<Emulator, SerialError> {
        config.validate()?;
        Ok(Emulator {
            out,
            device: device.into(),
            baud: None,
            encoder: Encoder::new(config.format),
            speed: config.speed,
            start: None,
            buf: Vec::new(),
            stats: EmulatorStats::default(),
            _pty_far_end: None,
        })
    }

    /// An emulator writing to `path`: a serial device (opened raw at the configured baud) or
    /// a file (created or truncated, to record a stream for replay).
    pub fn open(path: &Path, config: EmulatorConfig) -> Result<Emulator, SerialError> {
        config.validate()?;
        let is_tty = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device());
        let (out, baud): (Box<dyn Write + Send>, _) = if is_tty {
            let tty = serialport::new(path.to_string_lossy(), config.baud)
                .timeout(config.write_timeout)
                .open_native()
                .map_err(|e| SerialError::open(path, e.into()))?;
            (Box::new(tty), Some(config.baud))
        } else {
            let file = File::create(path).map_err(|e| SerialError::open(path, e))?;
            (Box::new(file), None)
        };
        let mut emulator = Emulator::new(out, path, config)?;
        emulator.baud = baud;
        Ok(emulator)
    }

    /// An emulator on a new pseudo-terminal; a receiver opens [`Emulator::device`].
    pub fn open_pty(config: EmulatorConfig) -> Result<Emulator, SerialError> {
        let (mut near, far) = TTYPort::pair().map_err(|e| SerialError::Pty { source: e.into() })?;
        near.set_timeout(config.write_timeout)
            .map_err(|e| SerialError::Pty { source: e.into() })?;
        let device = far
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| SerialError::Pty {
                source: std::io::Error::other("the pseudo-terminal has no name"),
            })?;
        let mut emulator = Emulator::new(Box::new(near), device, config)?;
        emulator._pty_far_end = Some(far);
        Ok(emulator)
    }

    /// The path a receiver should open.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Counters so far.
    pub fn stats(&self) -> &EmulatorStats {
        &self.stats
    }

    /// Waits until `block` is due, then writes it. A block the device does not take within
    /// the write timeout is dropped and counted; other write errors end the emulation.
    pub fn send(&mut self, block: &EcgBlock) -> Result<(), SerialError> {
        if block.samples_mv.is_empty() {
            return Ok(());
        }
        let due_ns = block.sample_time_ns(block.samples_mv.len() - 1);
        self.pace(due_ns);
        self.buf.clear();
        self.encoder.encode(block, &mut self.buf);
        if self.stats.blocks == 0 {
            self.check_line_rate(block)?;
        }
        match self.out.write_all(&self.buf) {
            Ok(()) => {
                self.stats.blocks += 1;
                self.stats.samples += block.samples_mv.len() as u64;
                self.stats.bytes += self.buf.len() as u64;
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                self.stats.dropped_blocks += 1;
                Ok(())
            }
            Err(source) => Err(SerialError::Write {
                port: self.device.clone(),
                source,
            }),
        }
    }

    /// Sleeps until the sample time `t_ns` is due at the configured speed.
    fn pace(&mut self, t_ns: u64) {
        let Some(speed) = self.speed else {
            return;
        };
        let (start, t0) = *self.start.get_or_insert((Instant::now(), t_ns));
        let offset = Duration::try_from_secs_f64(t_ns.saturating_sub(t0) as f64 * 1e-9 / speed)
            .unwrap_or(Duration::MAX);
        let Some(due) = start.checked_add(offset) else {
            return;
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            let late = (now - due).as_secs_f64() * 1e3;
            self.stats.max_late_ms = self.stats.max_late_ms.max(late);
        }
    }

    /// Refuses a stream the serial line is too slow for (8N1 sends 10 bits per byte), which
    /// would otherwise fall ever further behind and drop blocks.
    fn check_line_rate(&self, block: &EcgBlock) -> Result<(), SerialError> {
        let Some(baud) = self.baud else {
            return Ok(());
        };
        let seconds = block.samples_mv.len() as f64 / block.fs_hz;
        let needed = self.buf.len() as f64 * 10.0 / seconds;
        if needed > 0.9 * f64::from(baud) {
            return Err(SerialError::Config {
                problem: format!(
                    "{} at {} Hz needs about {:.0} baud but --ecg-baud is {baud}; raise the \
                     baud rate or use the binary protocol",
                    self.device.display(),
                    block.fs_hz,
                    needed / 0.9
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::{AsciiConfig, BinaryConfig, Decoded, Decoder, Protocol};

    fn block(first_index: u64, samples_mv: Vec<f32>, lead_off: bool) -> EcgBlock {
        EcgBlock {
            first_index,
            t0_ns: first_index * 2_000_000,
            fs_hz: 500.0,
            samples_mv,
            lead_off,
        }
    }

    fn decode(protocol: Protocol, bytes: &[u8]) -> Vec<Decoded> {
        let mut d = Decoder::new(&protocol).unwrap();
        let mut out = Vec::new();
        d.push(bytes, &mut out);
        out
    }

    #[test]
    fn ascii_round_trip() {
        let mut e = Encoder::new(WireFormat::Ascii { mv_per_unit: 0.001 });
        let mut bytes = Vec::new();
        e.encode(&block(0, vec![0.5, -1.25, 0.0004], false), &mut bytes);
        e.encode(&block(3, vec![9.0], true), &mut bytes);
        assert_eq!(bytes, b"\n500.000\n-1250.000\n0.400\n!\n");
        let config = AsciiConfig {
            lead: 0,
            mv_per_unit: 0.001,
        };
        let out = decode(Protocol::Ascii(config), &bytes);
        let got: Vec<(u64, f32, bool)> = out
            .iter()
            .filter_map(|d| match d {
                Decoded::Sample(s) => Some((s.index, s.mv, s.lead_off)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0.5, false),
                (1, -1.25, false),
                (2, (0.4f64 * 0.001) as f32, false),
                (3, 0.0, true)
            ]
        );
    }

    #[test]
    fn binary_splits_long_blocks_and_keeps_counters() {
        let mut e = Encoder::new(WireFormat::Binary {
            width: SampleWidth::I24,
        });
        let mut bytes = Vec::new();
        let values: Vec<f32> = (0..150).map(|i| i as f32 * 0.01).collect();
        e.encode(&block(1000, values.clone(), false), &mut bytes);
        let out = decode(Protocol::Binary(BinaryConfig::default()), &bytes);
        assert_eq!(out.len(), 150);
        for (i, d) in out.iter().enumerate() {
            let want = SampleWidth::I24.to_mv(SampleWidth::I24.from_mv(values[i]));
            assert_eq!(
                *d,
                Decoded::Sample(crate::serial::Sample {
                    index: i as u64,
                    mv: want,
                    lead_off: false
                })
            );
        }
    }

    #[test]
    fn paced_writing_takes_the_stream_duration_over_speed() {
        let config = EmulatorConfig {
            speed: Some(20.0),
            ..EmulatorConfig::new(WireFormat::Binary {
                width: SampleWidth::I16,
            })
        };
        let mut e = Emulator::new(Box::new(std::io::sink()), "sink", config).unwrap();
        let start = Instant::now();
        // 1 s of signal in 40 ms blocks: the last is due 0.96 s / 20 = 48 ms after the first.
        for k in 0..25u64 {
            e.send(&block(k * 20, vec![0.0; 20], false)).unwrap();
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(48), "{elapsed:?}");
        assert_eq!(e.stats().blocks, 25);
        assert_eq!(e.stats().samples, 500);
        assert_eq!(e.stats().bytes, 25 * (12 + 40));
    }

    #[test]
    fn settings_are_checked() {
        let mut config = EmulatorConfig::new(WireFormat::Ascii { mv_per_unit: 1.0 });
        config.speed = Some(0.0);
        assert!(config.validate().is_err());
        config.speed = Some(1e-300);
        assert!(config.validate().is_err());
        config.speed = Some(f64::NAN);
        assert!(config.validate().is_err());
        config.speed = None;
        config.baud = 0;
        assert!(config.validate().is_err());
    }
}
