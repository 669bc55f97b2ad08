//! The serial ECG commands: `echoview ecg listen` (the field engineer's ECG check) and the
//! `--ecg-serial` option of `echoview sim` (a board emulator for end-to-end tests without a
//! patient). Argument structs and implementations live here; `cli` only wires them in.
//!
//! `listen` prints one JSON object per detected beat on its output, as soon as the quality of
//! the beat's RR interval is known (at most about 1.4 s after the R peak):
//!
//! ```text
//! {"t_ns":2451312262,"t_s":2.451312262,"index":738,"rr_ms":892.0,"hr_bpm":67.265,
//!  "amplitude_mv":1.172,"searchback":false,"good":true,"quality":[]}
//! ```
//!
//! and reports the link on its log (stderr): connects, disconnects with the reconnect backoff,
//! CRC errors, lost samples and the latest problem (at most once a second), and a summary
//! with the board's fitted sampling rate at the end.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::binary::SampleWidth;
use super::emulator::{EmulatorStats, WireFormat};
use super::reader::{Now, ReaderConfig, ReaderEvent, ReaderSummary, SerialReader};
use super::stream::StreamConfig;
use super::{
    AsciiConfig, BinaryConfig, Emulator, EmulatorConfig, LinkStats, Protocol, SerialError,
};
use crate::ecg::{QrsDetector, QualityFlags, QualityMonitor, RPeak};
use crate::media::EcgBlock;
use crate::sim::SimEvent;

/// Wire protocols on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// Text, one sample per line, comma-separated leads (protocol a).
    Ascii,
    /// Framed binary with sample counter and CRC-16 (protocol b, board/ecg-protocol.md).
    Binary,
}

/// `echoview ecg listen`
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Serial device of the ECG board (a /dev/serial/by-id/ link survives replugging), or a
    /// capture file to read to its end.
    #[arg(long, value_name = "PATH")]
    pub port: PathBuf,
    /// Wire protocol the board speaks.
    #[arg(long, value_enum)]
    pub protocol: ProtocolArg,
    /// The board's sampling rate in Hz (250 to 1000).
    #[arg(long, value_name = "HZ")]
    pub fs: f64,
    /// Lead to use: the column (ASCII) or channel (binary), counting from 0.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub lead: usize,
    /// Line speed in baud.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// ASCII only: millivolts per unit of the numbers sent (0.001 for microvolts).
    #[arg(long, default_value_t = 1.0, value_name = "MV")]
    pub scale: f64,
    /// How much the cart's video lags this ECG, in ms (from the tap test); shifts ECG times.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "MS",
        allow_hyphen_values = true
    )]
    pub video_lag_ms: f64,
}

impl ListenArgs {
    /// The protocol settings these flags describe.
    pub fn protocol(&self) -> Protocol {
        match self.protocol {
            ProtocolArg::Ascii => Protocol::Ascii(AsciiConfig {
                lead: self.lead,
                mv_per_unit: self.scale,
            }),
            ProtocolArg::Binary => Protocol::Binary(BinaryConfig { lead: self.lead }),
        }
    }

    /// The reader configuration these flags describe.
    pub fn reader_config(&self) -> Result<ReaderConfig, SerialError> {
        if !(self.video_lag_ms.is_finite()) {
            return Err(SerialError::Config {
                problem: format!("--video-lag-ms {} is not a number", self.video_lag_ms),
            });
        }
        let mut stream = StreamConfig::new(self.protocol(), self.fs);
        stream.video_lag_ns = (self.video_lag_ms * 1e6).round().clamp(-1e15, 1e15) as i64;
        let mut config = ReaderConfig::new(&self.port, stream);
        config.baud = self.baud;
        Ok(config)
    }
}

/// What `listen` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenSummary {
    /// Beats printed.
    pub beats: u64,
    /// The reader's final counters and fitted rate.
    pub reader: ReaderSummary,
}

/// Reads the ECG board described by `args` and prints every beat as a JSON line on `out`, the
/// link's health on `log`, until `stop` is set (Ctrl-C), a capture file ends, or `out` is
/// closed. Unplugging does not end it: the reader reconnects. `now` is the session clock.
pub fn listen(
    args: &ListenArgs,
    now: Now,
    out: &mut dyn Write,
    log: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<ListenSummary, SerialError> {
    let config = args.reader_config()?;
    let mut reporter = BeatReporter::new(args.fs)?;
    let reader = SerialReader::spawn(config, Arc::clone(&now))?;
    let port = args.port.display();
    let mut beats = Vec::new();
    let mut printed = 0u64;
    let mut reported_at: Option<u64> = None;
    let mut unreported: Option<LinkStats> = None;
    let mut open = true;
    // Log lines are best effort: a closed stderr must not stop the beat report.
    while open && !stop.load(Ordering::Relaxed) {
        match reader.recv_timeout(Duration::from_millis(100)) {
            Ok(ReaderEvent::Connected { attempt: 0 }) => {
                let _ = writeln!(
                    log,
                    "ecg: listening on {port} ({}, {} Hz, lead {})",
                    args.protocol().name(),
                    args.fs,
                    args.lead
                );
            }
            Ok(ReaderEvent::Connected { .. }) => {
                let _ = writeln!(log, "ecg: reconnected to {port}");
            }
            Ok(ReaderEvent::Ecg(block)) => reporter.block(&block, &mut beats),
            // Reported through the counters, which say how many and why.
            Ok(ReaderEvent::Lost { .. }) => {}
            Ok(ReaderEvent::Stats(stats)) => unreported = Some(stats),
            Ok(ReaderEvent::Disconnected { reason, retry_in }) => {
                let _ = writeln!(
                    log,
                    "ecg: {reason}; reconnecting in {} ms",
                    retry_in.as_millis()
                );
            }
            Ok(ReaderEvent::Ended { reason }) => {
                if let Some(reason) = reason {
                    let _ = writeln!(log, "ecg: {reason}");
                }
                open = false;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let t = now();
        let due = reported_at.is_none_or(|last| t >= last.saturating_add(1_000_000_000));
        if due && let Some(stats) = unreported.take() {
            report_link(log, &stats);
            reported_at = Some(t);
        }
        if !write_beats(out, &mut beats, &mut printed)? {
            break;
        }
    }
    let summary = reader.stop();
    reporter.finish(&mut beats);
    write_beats(out, &mut beats, &mut printed)?;
    let _ = writeln!(log, "ecg: {printed} beats; link: {}", summary.stats);
    if summary.fitted_rate_hz > 0.0 {
        let _ = writeln!(
            log,
            "ecg: board samples at {:.3} Hz ({:+.0} ppm against --fs {})",
            summary.fitted_rate_hz, -summary.drift_ppm, args.fs
        );
    }
    Ok(ListenSummary {
        beats: printed,
        reader: summary,
    })
}

/// One line of link problems for the log.
fn report_link(log: &mut dyn Write, stats: &LinkStats) {
    let latest = stats
        .last_problem
        .as_deref()
        .map(|p| format!(" (latest: {p})"))
        .unwrap_or_default();
    let _ = writeln!(log, "ecg: link: {stats}{latest}");
}

/// Writes and drains `beats`; false when the reader of `out` has gone (a closed pipe ends
/// the listening quietly, as `head` expects).
fn write_beats(
    out: &mut dyn Write,
    beats: &mut Vec<BeatLine>,
    printed: &mut u64,
) -> Result<bool, SerialError> {
    if beats.is_empty() {
        return Ok(true);
    }
    let result = (|| {
        for beat in beats.iter() {
            serde_json::to_writer(&mut *out, beat).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            *printed += 1;
        }
        out.flush()
    })();
    beats.clear();
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(source) => Err(SerialError::Output { source }),
    }
}

/// One detected beat as `listen` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeatLine {
    /// R-peak time on the session clock, ns: what gating would cut the video at.
    pub t_ns: u64,
    /// The same in seconds, for people.
    pub t_s: f64,
    /// Sample index of the R peak since the stream began (lost samples counted).
    pub index: u64,
    /// RR interval ending at this beat in ms; null for the first beat after a start or a
    /// long gap.
    pub rr_ms: Option<f64>,
    /// Heart rate from that RR interval, beats per minute.
    pub hr_bpm: Option<f64>,
    /// R amplitude from the local baseline, mV to the µV (negative for downward QRS).
    pub amplitude_mv: f64,
    /// Found by searchback (below the normal threshold): less certain.
    pub searchback: bool,
    /// No quality problem in the RR interval: gating would use this beat.
    pub good: bool,
    /// Problems in the RR interval: `flat`, `saturated`, `lead_off`, `noisy` (signal quality),
    /// `gap` (samples lost on the link), `unassessed` (the stream ended first).
    pub quality: Vec<&'static str>,
}

/// Longest run of lost samples bridged by repeating the last value, in seconds: short gaps
/// keep the detector's RR history, longer ones restart it (an RR across them would be wrong).
pub const MAX_FILL_S: f64 = 2.0;

/// How far back block times are kept to time beats: more than the detector's delay plus the
/// quality window.
const TIME_HISTORY_S: f64 = 10.0;

/// A beat waiting for the quality of its RR interval.
#[derive(Debug, Clone, Copy)]
struct PendingBeat {
    /// Stream index of the R peak.
    index: u64,
    /// Stream index where its RR interval (or its first half second) starts.
    rr_start: u64,
    /// The detector's report.
    peak: RPeak,
}

/// Pure core of `listen`: ECG blocks in, beats with times and quality out.
#[derive(Debug, Clone)]
pub struct BeatReporter {
    /// Nominal sampling rate.
    fs_hz: f64,
    /// Current detector; replaced after a long gap.
    detector: QrsDetector,
    /// Current quality monitor, replaced with the detector.
    quality: QualityMonitor,
    /// Stream index of the detector's sample 0.
    base: u64,
    /// Stream index of the next sample expected; `None` before the first block.
    next: Option<u64>,
    /// Last finite value, repeated over short gaps.
    last_mv: f32,
    /// `(first_index, t0_ns)` of recent blocks, to time beats found in earlier blocks.
    anchors: VecDeque<(u64, u64)>,
    /// Stream index ranges `[start, end)` bridged over lost samples.
    gaps: VecDeque<(u64, u64)>,
    /// Stream index ranges the board reported lead-off for.
    lead_off: VecDeque<(u64, u64)>,
    /// Beats waiting for their quality.
    pending: VecDeque<PendingBeat>,
    /// Stream index of the last beat of the current detector.
    last_r: Option<u64>,
}

impl BeatReporter {
    /// A reporter for ECG at `fs_hz` (the detector's 250 to 1000 Hz).
    pub fn new(fs_hz: f64) -> Result<BeatReporter, SerialError> {
        Ok(BeatReporter {
            fs_hz,
            detector: QrsDetector::new(fs_hz)?,
            quality: QualityMonitor::new(fs_hz)?,
            base: 0,
            next: None,
            last_mv: 0.0,
            anchors: VecDeque::new(),
            gaps: VecDeque::new(),
            lead_off: VecDeque::new(),
            pending: VecDeque::new(),
            last_r: None,
        })
    }

    /// Feeds a block, appending the beats whose quality became known to `out`.
    pub fn block(&mut self, block: &EcgBlock, out: &mut Vec<BeatLine>) {
        let len = block.samples_mv.len() as u64;
        let end = block.first_index + len;
        let mut skip = 0usize;
        match self.next {
            None => self.base = block.first_index,
            Some(next) if block.first_index > next => {
                let missing = block.first_index - next;
                if missing as f64 <= MAX_FILL_S * self.fs_hz {
                    push_range(&mut self.gaps, next, block.first_index);
                    for _ in 0..missing {
                        self.feed(self.last_mv);
                    }
                } else {
                    self.restart(block.first_index, out);
                }
            }
            // An overlap cannot come from the reader; drop what was already seen.
            Some(next) if block.first_index < next => {
                if end <= next {
                    return;
                }
                skip = (next - block.first_index) as usize;
            }
            Some(_) => {}
        }
        self.anchors.push_back((block.first_index, block.t0_ns));
        let horizon = block
            .first_index
            .saturating_sub((TIME_HISTORY_S * self.fs_hz) as u64);
        while self.anchors.len() > 1 && self.anchors.front().is_some_and(|a| a.0 < horizon) {
            self.anchors.pop_front();
        }
        for ranges in [&mut self.gaps, &mut self.lead_off] {
            let keep_from = block.first_index.saturating_sub(120 * self.fs_hz as u64);
            while ranges.front().is_some_and(|r| r.1 < keep_from) {
                ranges.pop_front();
            }
        }
        if block.lead_off {
            push_range(&mut self.lead_off, block.first_index + skip as u64, end);
        }
        for &mv in &block.samples_mv[skip..] {
            self.feed(mv);
        }
        self.next = Some(end);
        self.release(out, false);
    }

    /// The stream ended: decides the detector's held candidate and reports every beat left,
    /// marking those whose quality window never completed.
    pub fn finish(&mut self, out: &mut Vec<BeatLine>) {
        let fresh = self.fresh_detector();
        let detector = std::mem::replace(&mut self.detector, fresh);
        if let Some(peak) = detector.finish() {
            self.pending_beat(peak);
        }
        self.release(out, true);
    }

    fn fresh_detector(&self) -> QrsDetector {
        // The rate was accepted when the reporter was made, so this cannot fail; a detector
        // that did would leave the old one in place rather than panic.
        QrsDetector::new(self.fs_hz).unwrap_or_else(|_| self.detector.clone())
    }

    /// A gap too long to bridge: reports what the old detector has, then starts afresh at
    /// `first_index`.
    fn restart(&mut self, first_index: u64, out: &mut Vec<BeatLine>) {
        self.finish(out);
        if let Ok(q) = QualityMonitor::new(self.fs_hz) {
            self.quality = q;
        }
        self.base = first_index;
        self.last_r = None;
    }

    /// One sample into the detector and the quality monitor.
    fn feed(&mut self, mv: f32) {
        if mv.is_finite() {
            self.last_mv = mv;
        }
        if let Some(peak) = self.detector.push(mv) {
            self.pending_beat(peak);
        }
        self.quality.push(mv);
    }

    fn pending_beat(&mut self, peak: RPeak) {
        let index = self.base + peak.index;
        let half_second = (self.fs_hz / 2.0) as u64;
        let rr_start = self
            .last_r
            .filter(|&r| r < index)
            .unwrap_or_else(|| index.saturating_sub(half_second).max(self.base));
        self.pending.push_back(PendingBeat {
            index,
            rr_start,
            peak,
        });
        self.last_r = Some(index);
    }

    /// Reports the pending beats whose RR quality is known (all of them if `all`).
    fn release(&mut self, out: &mut Vec<BeatLine>, all: bool) {
        while let Some(&beat) = self.pending.front() {
            let (start, end) = (beat.rr_start - self.base, beat.index + 1 - self.base);
            let (flags, unassessed) = match self.quality.flags_for(start, end) {
                Some(flags) => (flags, false),
                None if all => {
                    let known = self
                        .quality
                        .history()
                        .filter(|s| s.start_index < end && s.end_index > start)
                        .fold(QualityFlags::default(), |acc, s| acc | s.flags);
                    (known, true)
                }
                None => break,
            };
            self.pending.pop_front();
            out.push(self.line(beat, flags, unassessed));
        }
    }

    fn line(&self, beat: PendingBeat, flags: QualityFlags, unassessed: bool) -> BeatLine {
        let overlaps = |ranges: &VecDeque<(u64, u64)>| {
            ranges
                .iter()
                .any(|&(a, b)| a <= beat.index && b > beat.rr_start)
        };
        let mut quality = Vec::new();
        for (raised, name) in [
            (flags.flat, "flat"),
            (flags.saturated, "saturated"),
            (flags.lead_off || overlaps(&self.lead_off), "lead_off"),
            (flags.noisy, "noisy"),
            (overlaps(&self.gaps), "gap"),
            (unassessed, "unassessed"),
        ] {
            if raised {
                quality.push(name);
            }
        }
        let t_ns = self.time_of(beat.index);
        let rr_ms = beat
            .peak
            .rr_samples
            .map(|rr| round3(rr as f64 * 1e3 / self.fs_hz));
        BeatLine {
            t_ns,
            t_s: t_ns as f64 / 1e9,
            index: beat.index,
            rr_ms,
            hr_bpm: rr_ms.filter(|&ms| ms > 0.0).map(|ms| round3(60e3 / ms)),
            amplitude_mv: round3(f64::from(beat.peak.amplitude)),
            searchback: beat.peak.searchback,
            good: quality.is_empty(),
            quality,
        }
    }

    /// Session-clock time of stream index `index`, from the newest block at or before it.
    fn time_of(&self, index: u64) -> u64 {
        let anchor = self
            .anchors
            .iter()
            .rev()
            .find(|a| a.0 <= index)
            .or(self.anchors.front());
        let Some(&(first, t0)) = anchor else {
            return 0;
        };
        let dt = (index as f64 - first as f64) * 1e9 / self.fs_hz;
        (t0 as f64 + dt).round().max(0.0) as u64
    }
}

/// Appends `[start, end)` to `ranges`, merging with the last range when they touch.
fn push_range(ranges: &mut VecDeque<(u64, u64)>, start: u64, end: u64) {
    match ranges.back_mut() {
        Some(last) if last.1 >= start => last.1 = last.1.max(end),
        _ => ranges.push_back((start, end)),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// The `--ecg-serial` options of `echoview sim`.
#[derive(Debug, Clone, Args)]
pub struct EcgSerialArgs {
    /// Also stream the simulated ECG in real time to this serial device (or file), as a cart's
    /// ECG board would; `pty` makes a pseudo-terminal and prints its path.
    #[arg(long, value_name = "PATH")]
    pub ecg_serial: Option<PathBuf>,
    /// Wire protocol for --ecg-serial.
    #[arg(long, value_enum, default_value = "binary", requires = "ecg_serial")]
    pub protocol: ProtocolArg,
    /// Binary sample width for --ecg-serial: 16 (1 µV per count) or 24 (0.1 µV).
    #[arg(long, default_value_t = 16, value_name = "BITS", value_parser = parse_bits,
          requires = "ecg_serial")]
    pub ecg_bits: u8,
    /// Line speed for --ecg-serial.
    #[arg(
        long,
        default_value_t = 115_200,
        value_name = "BAUD",
        requires = "ecg_serial"
    )]
    pub ecg_baud: u32,
    /// Pace --ecg-serial at this multiple of real time (1 is a real board).
    #[arg(long, default_value_t = 1.0, value_name = "X", requires = "ecg_serial")]
    pub ecg_speed: f64,
}

fn parse_bits(text: &str) -> Result<u8, String> {
    match text.trim() {
        "16" => Ok(16),
        "24" => Ok(24),
        _ => Err(format!(
            "{text:?}: the binary protocol carries 16- or 24-bit samples"
        )),
    }
}

/// The pseudo-terminal request on the command line.
pub const PTY: &str = "pty";

impl EcgSerialArgs {
    /// The emulator settings these flags describe.
    pub fn config(&self) -> EmulatorConfig {
        let format = match self.protocol {
            ProtocolArg::Ascii => WireFormat::Ascii { mv_per_unit: 1.0 },
            ProtocolArg::Binary => WireFormat::Binary {
                width: if self.ecg_bits == 24 {
                    SampleWidth::I24
                } else {
                    SampleWidth::I16
                },
            },
        };
        EmulatorConfig {
            format,
            speed: Some(self.ecg_speed),
            baud: self.ecg_baud,
            ..EmulatorConfig::new(format)
        }
    }

    /// Opens the emulator if `--ecg-serial` was given, telling `log` how to listen to it
    /// (the ECG runs at `fs_hz`); `None` without the flag.
    pub fn open(&self, fs_hz: f64, log: &mut dyn Write) -> Result<Option<Emulator>, SerialError> {
        let Some(path) = &self.ecg_serial else {
            return Ok(None);
        };
        let config = self.config();
        let emulator = if path.as_os_str() == PTY {
            Emulator::open_pty(config)?
        } else {
            Emulator::open(path, config)?
        };
        let protocol = match self.protocol {
            ProtocolArg::Ascii => "ascii",
            ProtocolArg::Binary => "binary",
        };
        let _ = writeln!(
            log,
            "ecg: simulated ECG board on {}; listen with: echoview ecg listen --port {} \
             --protocol {protocol} --fs {fs_hz}",
            emulator.device().display(),
            emulator.device().display(),
        );
        Ok(Some(emulator))
    }
}

/// Sends the ECG blocks among `events` through `emulator`, paced, until the events end or
/// `stop` is set; other events are skipped (the caller may record them, see `echoview sim`).
pub fn emulate(
    events: impl IntoIterator<Item = SimEvent>,
    emulator: &mut Emulator,
    stop: &AtomicBool,
) -> Result<EmulatorStats, SerialError> {
    for event in events {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let SimEvent::Ecg(block) = event {
            emulator.send(&block)?;
        }
    }
    Ok(*emulator.stats())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A synthetic ECG: a narrow 1.2 mV R wave every `rr` samples (first at 200), a T wave,
    /// a little baseline.
    fn ecg(n: usize, fs: f64, rr: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let phase = (i + rr - 200) % rr;
                let t = phase as f64 / fs;
                let r = 1.2 * (-(t / 0.012).powi(2) / 2.0).exp();
                let r2 = 1.2 * (-(((rr - phase) as f64 / fs) / 0.012).powi(2) / 2.0).exp();
                let tw = 0.3 * (-((t - 0.3) / 0.05).powi(2) / 2.0).exp();
                (r + r2 + tw + 0.02 * (i as f64 * 0.01).sin()) as f32
            })
            .collect()
    }

    fn blocks(samples: &[f32], fs: f64, len: usize) -> Vec<EcgBlock> {
        samples
            .chunks(len)
            .enumerate()
            .map(|(k, c)| EcgBlock {
                first_index: (k * len) as u64,
                t0_ns: 7_000_000_000 + (k * len) as u64 * (1e9 / fs) as u64,
                fs_hz: fs,
                samples_mv: c.to_vec(),
                lead_off: false,
            })
            .collect()
    }

    #[test]
    fn reports_beats_with_times_rr_and_quality() {
        let fs = 500.0;
        // Ends 150 samples after a beat, in the middle of a quality window.
        let samples = ecg(7950, fs, 400);
        let mut r = BeatReporter::new(fs).unwrap();
        let mut out = Vec::new();
        for b in blocks(&samples, fs, 20) {
            r.block(&b, &mut out);
        }
        r.finish(&mut out);
        let indices: Vec<u64> = out.iter().map(|b| b.index).collect();
        let want: Vec<u64> = (0..20).map(|k| 200 + 400 * k).collect();
        assert_eq!(indices.len(), want.len(), "{indices:?}");
        for (got, want) in indices.iter().zip(&want) {
            assert!(got.abs_diff(*want) <= 2, "{indices:?}");
        }
        let steady = &out[3];
        assert_eq!(steady.rr_ms, Some(800.0));
        assert_eq!(steady.hr_bpm, Some(75.0));
        assert_eq!(steady.t_ns, 7_000_000_000 + steady.index * 2_000_000);
        assert!(steady.good, "{steady:?}");
        assert_eq!(out.last().unwrap().quality, vec!["unassessed"]);
    }

    #[test]
    fn short_gaps_are_bridged_and_flagged_long_ones_restart() {
        let fs = 500.0;
        let samples = ecg(30 * 500, fs, 400);
        let all = blocks(&samples, fs, 20);
        let mut r = BeatReporter::new(fs).unwrap();
        let mut out = Vec::new();
        for (k, b) in all.iter().enumerate() {
            // Block 200 (samples 4000..4020) lost: bridged; blocks 400..=550 (3 s): restart.
            if k == 200 || (400..=550).contains(&k) {
                continue;
            }
            r.block(b, &mut out);
        }
        r.finish(&mut out);
        let gap_beat = out.iter().find(|b| b.index.abs_diff(4200) <= 2).unwrap();
        assert!(gap_beat.quality.contains(&"gap"), "{gap_beat:?}");
        assert_eq!(gap_beat.rr_ms, Some(800.0));
        // Beats keep their stream indices after the restart, which has no RR for its first
        // (here the T wave of the beat cut off by the gap: a detector starting mid-beat
        // cannot tell).
        let after: Vec<&BeatLine> = out.iter().filter(|b| b.index > 11_020).collect();
        assert!(after[0].rr_ms.is_none());
        let after = &after[1..];
        let on_grid = |i: u64| (i + 200 + 2) % 400 <= 4;
        assert!(
            after.iter().all(|b| on_grid(b.index)),
            "{:?}",
            after.iter().map(|b| b.index).collect::<Vec<_>>()
        );
        assert!(after.len() >= 8);
    }

    #[test]
    fn lead_off_blocks_mark_their_beats() {
        let fs = 500.0;
        let samples = ecg(10 * 500, fs, 400);
        let mut r = BeatReporter::new(fs).unwrap();
        let mut out = Vec::new();
        for mut b in blocks(&samples, fs, 20) {
            b.lead_off = (100..110).contains(&(b.first_index / 20));
            r.block(&b, &mut out);
        }
        let flagged = out.iter().find(|b| b.index.abs_diff(2200) <= 2).unwrap();
        assert!(flagged.quality.contains(&"lead_off"));
        assert!(!flagged.good);
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serial: EcgSerialArgs,
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from(["x", "--ecg-serial", "pty", "--protocol", "ascii"]).unwrap();
        assert_eq!(cli.serial.ecg_serial, Some(PathBuf::from("pty")));
        assert_eq!(cli.serial.protocol, ProtocolArg::Ascii);
        assert_eq!(
            cli.serial.config().format,
            WireFormat::Ascii { mv_per_unit: 1.0 }
        );
        let cli =
            Cli::try_parse_from(["x", "--ecg-serial", "/dev/ttyUSB1", "--ecg-bits", "24"]).unwrap();
        assert_eq!(
            cli.serial.config().format,
            WireFormat::Binary {
                width: SampleWidth::I24
            }
        );
        assert!(Cli::try_parse_from(["x", "--ecg-serial", "p", "--ecg-bits", "12"]).is_err());
        assert!(Cli::try_parse_from(["x", "--ecg-speed", "4"]).is_err());
    }

    #[test]
    fn listen_flags_parse() {
        #[derive(Debug, Parser)]
        struct Listen {
            #[command(flatten)]
            args: ListenArgs,
        }
        let l = Listen::try_parse_from([
            "x",
            "--port",
            "/dev/ttyUSB0",
            "--protocol",
            "ascii",
            "--fs",
            "250",
            "--lead",
            "1",
            "--scale",
            "0.001",
            "--video-lag-ms",
            "-12.5",
        ])
        .unwrap();
        let c = l.args.reader_config().unwrap();
        assert_eq!(c.stream.video_lag_ns, -12_500_000);
        assert_eq!(
            c.stream.protocol,
            Protocol::Ascii(AsciiConfig {
                lead: 1,
                mv_per_unit: 0.001
            })
        );
        assert!(Listen::try_parse_from(["x", "--port", "p", "--fs", "500"]).is_err());
    }
}
