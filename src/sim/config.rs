//! Settings of one simulated recording and their allowed ranges.
//!
//! Every setting is checked by [`SimConfig::validate`] before anything is generated, and a bad
//! one is reported with its field name, the offending value and the allowed range, so a wrong
//! command-line flag or scan file fails at start-up with a message that says how to fix it.

use super::SimError;
use super::scan::ScanScript;
use crate::media::PixelFormat;
use crate::views::View;

/// How the ECG front end behaves while an electrode is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadOffMode {
    /// The amplifier reads 0 mV (some front ends clamp to baseline).
    Flat,
    /// The amplifier saturates at its positive rail ([`RAIL_MV`]).
    Railed,
    /// The electrodes stay on but the signal drowns in a burst of motion artefact
    /// ([`NOISE_BURST_MV`] peak, broadband): the board reports the leads on, so only the
    /// signal itself can tell the detector that nothing in it is a heartbeat.
    Noise,
}

/// Peak amplitude of a [`LeadOffMode::Noise`] burst in millivolts: well above an R wave, as a
/// patient moving or a cable being handled gives.
pub const NOISE_BURST_MV: f32 = 3.0;

/// The value a railed front end reads, in millivolts: far above any real ECG, as a saturated
/// amplifier reports.
pub const RAIL_MV: f32 = 5.0;

/// A stretch of time during which the ECG leads are off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeadOffStretch {
    /// Start, in seconds from the beginning of the recording.
    pub start_s: f64,
    /// Length in seconds.
    pub duration_s: f64,
    /// What the samples read meanwhile.
    pub mode: LeadOffMode,
}

/// Everything that determines a simulated recording; equal configs give identical bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of every random choice (rhythm, noise, patient, probe, speckle).
    pub seed: u64,
    /// The views to show and for how many beats.
    pub scan: ScanScript,
    /// Frame width in pixels, 320..=1280 (even for YUYV).
    pub width: u32,
    /// Frame height in pixels, 240..=720.
    pub height: u32,
    /// Pixel format of the frames, as a capture card would deliver them.
    pub format: PixelFormat,
    /// Video frame rate, 25..=60 frames per second.
    pub fps: f64,
    /// Largest random offset of a frame timestamp from its nominal 1/fps grid, in ms
    /// (0 = exact grid); at most a quarter of the frame period, so frames stay in order.
    pub frame_jitter_ms: f64,
    /// ECG sampling rate, 250..=1000 Hz.
    pub ecg_fs_hz: f64,
    /// Length of an ECG block, 20..=50 ms, as a serial front end would packetize it.
    pub ecg_block_ms: f64,
    /// Resting heart rate in beats per minute, inside `min_bpm..=max_bpm`.
    pub base_bpm: f64,
    /// Lowest heart rate any RR interval may reach, at least 40 bpm.
    pub min_bpm: f64,
    /// Highest heart rate any RR interval may reach, at most 180 bpm.
    pub max_bpm: f64,
    /// Beat-to-beat random RR variation as a fraction of the RR (standard deviation), 0..=0.1.
    pub rr_jitter: f64,
    /// Respiratory sinus arrhythmia: RR modulation amplitude as a fraction, 0..=0.2.
    pub rsa: f64,
    /// Probability that a beat is followed by a premature ventricular beat, 0..=0.3.
    pub ectopic_prob: f64,
    /// Baseline wander amplitude (respiration plus drift) in mV, 0..=2.
    pub baseline_wander_mv: f64,
    /// Mains frequency, 50 or 60 Hz.
    pub mains_hz: f64,
    /// Mains hum amplitude in mV, 0..=1.
    pub mains_mv: f64,
    /// Muscle (EMG) noise RMS in mV, 0..=0.5.
    pub emg_mv: f64,
    /// Stretches with the leads off; they may overlap and may run past the end.
    pub lead_off: Vec<LeadOffStretch>,
}

impl Default for SimConfig {
    /// Four beats of each view at 320x240 Grey8, 30 fps, ECG at 500 Hz, about 70 bpm with
    /// mild variability and noise, no ectopics and no lead-off.
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            scan: ScanScript::from_views(&View::ALL, 4),
            width: 320,
            height: 240,
            format: PixelFormat::Grey8,
            fps: 30.0,
            frame_jitter_ms: 0.0,
            ecg_fs_hz: 500.0,
            ecg_block_ms: 40.0,
            base_bpm: 70.0,
            min_bpm: 50.0,
            max_bpm: 120.0,
            rr_jitter: 0.02,
            rsa: 0.04,
            ectopic_prob: 0.0,
            baseline_wander_mv: 0.1,
            mains_hz: 50.0,
            mains_mv: 0.02,
            emg_mv: 0.01,
            lead_off: Vec::new(),
        }
    }
}

/// An error for `field` holding `value`, which must lie in `allowed`.
fn bad(field: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> SimError {
    SimError::Config {
        field: field.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// Checks `lo <= value <= hi` (false for NaN).
fn check(field: impl Into<String>, value: f64, lo: f64, hi: f64) -> Result<(), SimError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(bad(field, value, format!("{lo}..={hi}")))
    }
}

impl SimConfig {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(320..=1280).contains(&self.width) {
            return Err(bad("width", self.width, "320..=1280 pixels"));
        }
        if !(240..=720).contains(&self.height) {
            return Err(bad("height", self.height, "240..=720 pixels"));
        }
        if !matches!(self.format, PixelFormat::Grey8 | PixelFormat::Yuyv) {
            return Err(bad(
                "format",
                self.format.name(),
                "GREY or YUYV (the formats the simulator renders)",
            ));
        }
        if self.format == PixelFormat::Yuyv && !self.width.is_multiple_of(2) {
            return Err(bad("width", self.width, "an even number for YUYV"));
        }
        check("fps", self.fps, 25.0, 60.0)?;
        check(
            "frame_jitter_ms",
            self.frame_jitter_ms,
            0.0,
            250.0 / self.fps,
        )?;
        check("ecg_fs_hz", self.ecg_fs_hz, 250.0, 1000.0)?;
        check("ecg_block_ms", self.ecg_block_ms, 20.0, 50.0)?;
        check("min_bpm", self.min_bpm, 40.0, 180.0)?;
        check("max_bpm", self.max_bpm, self.min_bpm.max(40.0), 180.0)?;
        check("base_bpm", self.base_bpm, self.min_bpm, self.max_bpm)?;
        check("rr_jitter", self.rr_jitter, 0.0, 0.1)?;
        check("rsa", self.rsa, 0.0, 0.2)?;
        check("ectopic_prob", self.ectopic_prob, 0.0, 0.3)?;
        check("baseline_wander_mv", self.baseline_wander_mv, 0.0, 2.0)?;
        if self.mains_hz != 50.0 && self.mains_hz != 60.0 {
            return Err(bad("mains_hz", self.mains_hz, "50 or 60"));
        }
        check("mains_mv", self.mains_mv, 0.0, 1.0)?;
        check("emg_mv", self.emg_mv, 0.0, 0.5)?;
        for (i, l) in self.lead_off.iter().enumerate() {
            check(format!("lead_off[{i}].start_s"), l.start_s, 0.0, 1.0e6)?;
            check(
                format!("lead_off[{i}].duration_s"),
                l.duration_s,
                1e-3,
                600.0,
            )?;
        }
        self.validate_scan()
    }

    /// Checks the scan script, naming the segment (counting from 1) of a bad setting.
    fn validate_scan(&self) -> Result<(), SimError> {
        if self.scan.segments.is_empty() {
            return Err(bad("scan", "no segments", "at least one segment"));
        }
        if self.scan.total_beats() > 100_000 {
            return Err(bad(
                "scan",
                format!("{} beats", self.scan.total_beats()),
                "at most 100000 beats in all (about a day)",
            ));
        }
        for (i, s) in self.scan.segments.iter().enumerate() {
            let name = |f: &str| format!("scan.segment[{}].{f}", i + 1);
            if !(1..=10_000).contains(&s.beats) {
                return Err(bad(name("beats"), s.beats, "1..=10000"));
            }
            if let Some(d) = s.depth_cm {
                check(name("depth_cm"), d, 6.0, 24.0)?;
            }
            if let Some(g) = s.gain {
                check(name("gain"), g, 0.25, 4.0)?;
            }
            if let Some(t) = s.tilt_deg {
                check(name("tilt_deg"), t, -30.0, 30.0)?;
            }
            if let Some([x, y]) = s.shift_cm {
                check(name("shift_cm[0]"), x, -5.0, 5.0)?;
                check(name("shift_cm[1]"), y, -5.0, 5.0)?;
            }
            if let Some(b) = s.bpm {
                check(name("bpm"), b, self.min_bpm, self.max_bpm)?;
            }
        }
        Ok(())
    }
}
