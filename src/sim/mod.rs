//! The synthetic ultrasound cart: a deterministic source of ECG and B-mode video of the 11
//! views, with the truth (view of every frame, time of every R-peak) alongside.
//!
//! It stands in for the hardware in demos and tests and produces the training images of the
//! demo model, so the same [`SimConfig`] always yields the same bytes, every view keeps its
//! characteristic anatomy, and everything a classifier should be robust to varies: depth,
//! gain, probe angle and position, speckle, patient size, heart rate.
//!
//! One planned rhythm drives everything. The scan ([`ScanScript`]) is counted in heartbeats,
//! so the R-peaks are planned first (`ecg`); they give the recording's length, the R-peak
//! truth, the ECG waveform and the cardiac phase that moves the walls and valves in each frame
//! (`phantom`), which is rendered as a speckled sector image (`render`) with cart-style
//! annotations and a scrolling ECG strip (`overlay`). `scan` holds the scan script, `config`
//! the settings and `rng` the simulator's own random numbers.
//!
//! [`Simulator`] is an iterator of [`SimEvent`]s in nondecreasing time order, as a live cart
//! would deliver them: a frame at its capture time, an ECG block once its last sample has
//! been taken, an R-peak truth marker at the peak.
//!
//! ```no_run
//! use echoview::sim::{ScanScript, SimConfig, SimEvent, Simulator};
//!
//! let cfg = SimConfig {
//!     scan: ScanScript::from_view_list("PLAX,A4C", 5)?,
//!     ..SimConfig::default()
//! };
//! for event in Simulator::new(cfg)? {
//!     match event {
//!         SimEvent::Frame { frame, truth } => println!("{} {}", frame.t_ns, truth),
//!         SimEvent::Ecg(block) => println!("{} samples", block.samples_mv.len()),
//!         SimEvent::RPeak { t_ns, .. } => println!("R at {t_ns}"),
//!     }
//! }
//! # Ok::<(), echoview::sim::SimError>(())
//! ```

mod config;
mod ecg;
mod overlay;
mod phantom;
pub mod record;
mod render;
mod rng;
mod scan;

use std::path::PathBuf;

pub use config::{LeadOffMode, LeadOffStretch, RAIL_MV, SimConfig};
pub use scan::{ScanScript, Segment};

use crate::media::{EcgBlock, Frame, PixelFormat};
use crate::views::View;
use ecg::{BeatKind, EcgSynth, Rhythm};
use overlay::{Annotation, CLINICS, Overlay};
use phantom::{Patient, Prim};
use render::{Layout, Look, Raster};
use rng::{Rng, Stream};

/// Why a simulation cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A setting is outside its allowed range.
    #[error("invalid simulator setting {field} = {value}; allowed: {allowed}")]
    Config {
        /// The setting's name as written in [`SimConfig`] (`scan.segment[N].x` for a segment).
        field: String,
        /// The rejected value.
        value: String,
        /// What would have been accepted.
        allowed: String,
    },
    /// A scan file could not be parsed.
    #[error("scan file {source_name}: {message}")]
    ScanFile {
        /// The file (or other origin) named when parsing.
        source_name: String,
        /// What is wrong and where.
        message: String,
    },
    /// A command-line view list names something that is not a view.
    #[error("view list {list:?}: {message}")]
    ViewList {
        /// The list as given.
        list: String,
        /// What is wrong with it.
        message: String,
    },
    /// A scan file could not be read.
    #[error("cannot read scan file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// One thing the simulated cart delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// A block of ECG samples, delivered once its last sample has been taken.
    Ecg(EcgBlock),
    /// A video frame and the view it truly shows.
    Frame {
        /// The frame as a capture card would deliver it.
        frame: Frame,
        /// The view of the scan segment the frame belongs to.
        truth: View,
    },
    /// Truth marker: the exact time of an R-peak (the waveform maximum of that beat's QRS).
    RPeak {
        /// Peak time on the session clock.
        t_ns: u64,
        /// Index of the ECG sample nearest to the peak.
        sample_index: u64,
    },
}

impl SimEvent {
    /// The session-clock time at which the event becomes available: a frame's capture time,
    /// an ECG block's last sample time, an R-peak's time.
    pub fn t_ns(&self) -> u64 {
        match self {
            SimEvent::Ecg(b) => b.sample_time_ns(b.samples_mv.len().saturating_sub(1)),
            SimEvent::Frame { frame, .. } => frame.t_ns,
            SimEvent::RPeak { t_ns, .. } => *t_ns,
        }
    }
}

/// The stretch of the recording showing one scan segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    /// The view shown.
    pub view: View,
    /// First instant of the segment: 0 for the first, else the R-peak that starts it.
    pub start_ns: u64,
    /// End of the segment (exclusive): the R-peak that ends it, or the recording's end for the
    /// last one, so the spans tile the recording.
    pub end_ns: u64,
    /// Heartbeats in the segment.
    pub beats: u32,
}

/// Per-segment rendering state, rebuilt when the scan moves to the next segment.
#[derive(Debug)]
struct SegmentState {
    /// Which segment of the scan.
    index: usize,
    /// Rendering tables for the segment's probe settings.
    raster: Raster,
    /// Burned-in annotations.
    overlay: Overlay,
}

/// Speckle mix angle swept by a full contraction, radians: the myocardium moves through the
/// beam as it contracts, so its speckle partly decorrelates by end-systole.
const SPECKLE_CONTRACTION_RAD: f64 = 0.8;

/// Slow drift of the speckle mix angle, radians per second, as a hand-held probe never stays
/// perfectly still.
const SPECKLE_DRIFT_RAD_PER_S: f64 = 0.1;

/// Chroma of the ECG trace in YUYV output (a cart's green trace).
const TRACE_UV: (u8, u8) = (68, 52);

/// The synthetic cart; iterate it for [`SimEvent`]s.
#[derive(Debug)]
pub struct Simulator {
    /// The settings, validated.
    cfg: SimConfig,
    /// Planned R-peaks and segment boundaries.
    rhythm: Rhythm,
    /// ECG sample generator.
    synth: EcgSynth,
    /// The simulated heart.
    patient: Patient,
    /// Screen layout for the frame size.
    layout: Layout,
    /// Site name shown on every frame.
    clinic: &'static str,
    /// Patient ID shown on every frame.
    patient_id: String,
    /// Frames in the recording.
    frame_count: u64,
    /// Recording length: `frame_count` frame periods.
    duration_ns: u64,
    /// ECG samples in the recording (those taken before `duration_ns`).
    sample_count: u64,
    /// Index of the next frame to deliver.
    next_frame: u64,
    /// Capture time of the next frame (with jitter, if any).
    next_frame_t: u64,
    /// Frame timestamp jitter stream.
    jitter_rng: Rng,
    /// Generated ECG samples not yet discarded; `ecg[0]` is sample `ecg_first`.
    ecg: Vec<f32>,
    /// Lead-off flag of each sample in `ecg`.
    lead: Vec<bool>,
    /// Sample index of `ecg[0]`.
    ecg_first: u64,
    /// First sample of the next ECG block to deliver.
    next_block: u64,
    /// Nominal ECG block length in samples.
    block_len: u64,
    /// Index in `rhythm.beats` of the next R-peak to report.
    next_peak: usize,
    /// Rendering state of the current segment.
    segment: Option<SegmentState>,
    /// Reused shape list.
    prims: Vec<Prim>,
    /// Reused trace pixel list.
    trace: Vec<u32>,
}

impl Simulator {
    /// Validates `cfg` and plans the recording.
    pub fn new(cfg: SimConfig) -> Result<Simulator, SimError> {
        cfg.validate()?;
        let rhythm = ecg::plan_rhythm(&cfg);
        let synth = EcgSynth::new(&cfg, &rhythm);
        let patient = Patient::draw(&mut Rng::derive(cfg.seed, Stream::Patient, 0));
        let layout = Layout::new(cfg.width as usize, cfg.height as usize);
        let frame_count = (rhythm.duration_s * cfg.fps).ceil() as u64;
        let duration_ns = (frame_count as f64 * 1e9 / cfg.fps).round() as u64;
        let sample_count = (duration_ns as f64 * 1e-9 * cfg.ecg_fs_hz).ceil() as u64;
        let block_len = ((cfg.ecg_block_ms * 1e-3 * cfg.ecg_fs_hz).round() as u64).max(1);
        let clinic = CLINICS[(cfg.seed % CLINICS.len() as u64) as usize];
        let patient_id = format!(
            "{:06}",
            Rng::derive(cfg.seed, Stream::Patient, 1).next_u64() % 1_000_000
        );
        let mut sim = Simulator {
            jitter_rng: Rng::derive(cfg.seed, Stream::FrameJitter, 0),
            cfg,
            next_peak: rhythm.recorded_peaks().start,
            rhythm,
            synth,
            patient,
            layout,
            clinic,
            patient_id,
            frame_count,
            duration_ns,
            sample_count,
            next_frame: 0,
            next_frame_t: 0,
            ecg: Vec::new(),
            lead: Vec::new(),
            ecg_first: 0,
            next_block: 0,
            block_len,
            segment: None,
            prims: Vec::new(),
            trace: Vec::new(),
        };
        sim.next_frame_t = sim.frame_time(0);
        Ok(sim)
    }

    /// The settings this simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Length of the recording: [`Simulator::frame_count`] frame periods.
    pub fn duration_ns(&self) -> u64 {
        self.duration_ns
    }

    /// Frames the recording will deliver.
    pub fn frame_count(&self) -> u64 {
        self.frame_count
    }

    /// ECG samples the recording will deliver.
    pub fn ecg_sample_count(&self) -> u64 {
        self.sample_count
    }

    /// R-peaks the recording will report: one more than the scan's heartbeats, since every
    /// beat is bounded by two.
    pub fn r_peak_count(&self) -> u64 {
        self.rhythm.recorded_peaks().len() as u64
    }

    /// Which view is shown when: one span per scan segment, tiling the recording.
    pub fn timeline(&self) -> Vec<SegmentSpan> {
        let n = self.cfg.scan.segments.len();
        self.cfg
            .scan
            .segments
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                let start = self.rhythm.segment_start[i];
                let end = start + seg.beats as usize;
                SegmentSpan {
                    view: seg.view,
                    start_ns: if i == 0 { 0 } else { self.rhythm.r_ns(start) },
                    end_ns: if i + 1 == n {
                        self.duration_ns
                    } else {
                        self.rhythm.r_ns(end)
                    },
                    beats: seg.beats,
                }
            })
            .collect()
    }

    /// Capture time of frame `i`: the exact `i / fps` grid plus the configured jitter.
    fn frame_time(&mut self, i: u64) -> u64 {
        let nominal = (i as f64 * 1e9 / self.cfg.fps).round();
        let jitter_ns = self.cfg.frame_jitter_ms * 1e6;
        let t = if jitter_ns > 0.0 {
            nominal + self.jitter_rng.range(-jitter_ns, jitter_ns).round()
        } else {
            nominal
        };
        t.max(0.0) as u64
    }

    /// Session-clock time of ECG sample `n`.
    fn sample_time(&self, n: u64) -> u64 {
        (n as f64 * 1e9 / self.cfg.ecg_fs_hz).round() as u64
    }

    /// Generates ECG samples up to (not including) index `end`.
    fn generate_to(&mut self, end: u64) {
        let end = end.min(self.sample_count);
        let mut have = self.ecg_first + self.ecg.len() as u64;
        while have < end {
            let (v, off) = self.synth.next_sample(&self.rhythm.beats);
            self.ecg.push(v);
            self.lead.push(off);
            have += 1;
        }
    }

    /// Drops samples that are neither undelivered nor needed for the strip at time `t_s`.
    fn trim_ecg(&mut self, t_s: f64) {
        let strip_start = ((t_s - overlay::STRIP_SECONDS) * self.cfg.ecg_fs_hz)
            .floor()
            .max(0.0) as u64;
        let keep_from = strip_start.min(self.next_block).saturating_sub(2);
        let drop = keep_from.saturating_sub(self.ecg_first) as usize;
        if drop > 4096 {
            self.ecg.drain(..drop);
            self.lead.drain(..drop);
            self.ecg_first += drop as u64;
        }
    }

    /// One past the last sample of the next ECG block: the nominal length, cut short where
    /// the leads come off or back on (so a block's `lead_off` describes all its samples) and
    /// at the end of the recording.
    fn next_block_end(&self) -> u64 {
        let start = self.next_block;
        let first = self.synth.lead_off_at(start).is_some();
        let limit = (start + self.block_len).min(self.sample_count);
        (start + 1..limit)
            .find(|&n| self.synth.lead_off_at(n).is_some() != first)
            .unwrap_or(limit)
    }

    /// Delivers the next ECG block.
    fn take_block(&mut self) -> EcgBlock {
        let start = self.next_block;
        let end = self.next_block_end();
        self.generate_to(end);
        let a = (start - self.ecg_first) as usize;
        let b = (end - self.ecg_first) as usize;
        self.next_block = end;
        EcgBlock {
            first_index: start,
            t0_ns: self.sample_time(start),
            fs_hz: self.cfg.ecg_fs_hz,
            samples_mv: self.ecg[a..b].to_vec(),
            lead_off: self.lead[a],
        }
    }

    /// Makes `segment` the current rendering state.
    fn enter_segment(&mut self, index: usize) {
        if self.segment.as_ref().is_some_and(|s| s.index == index) {
            return;
        }
        let seg = &self.cfg.scan.segments[index];
        let look = Look::draw(seg, self.cfg.seed, index);
        let raster = Raster::new(&self.layout, &look);
        let mut sector = vec![false; self.layout.w * self.layout.h];
        for i in raster.sector_pixels() {
            sector[i] = true;
        }
        let first = self.rhythm.segment_start[index];
        let last = first + seg.beats as usize;
        let span = self.rhythm.beats[last].r_s - self.rhythm.beats[first].r_s;
        let note = Annotation {
            clinic: self.clinic,
            patient_id: self.patient_id.clone(),
            fps: self.cfg.fps,
            hr_bpm: 60.0 * f64::from(seg.beats) / span,
        };
        let overlay = Overlay::new(&self.layout, &look, &note, &sector);
        self.segment = Some(SegmentState {
            index,
            raster,
            overlay,
        });
    }

    /// Renders the grey image at time `t_ns` and returns it with the view shown.
    fn render_grey(&mut self, t_ns: u64) -> (Vec<u8>, View) {
        let t_s = t_ns as f64 * 1e-9;
        let (beat, phase) = self.rhythm.locate(t_ns);
        let index = self.rhythm.segment_of(beat);
        self.enter_segment(index);
        let view = self.cfg.scan.segments[index].view;
        let mut state = phantom::cardiac(phase);
        if self.rhythm.beats[beat].kind == BeatKind::Ectopic {
            // A premature beat starts from a less filled ventricle and ejects less.
            state = state.weakened(0.6);
        }
        let scene = phantom::build(view, &self.patient, &state, std::mem::take(&mut self.prims));
        let (w, h) = (self.layout.w, self.layout.h);
        let mut grey = vec![0u8; w * h];
        // Speckle follows the tissue through the beat and drifts slowly with the probe, so the
        // same phase of consecutive beats looks alike, as with a steady hand.
        let angle =
            SPECKLE_CONTRACTION_RAD * f64::from(1.0 - state.lv) + SPECKLE_DRIFT_RAD_PER_S * t_s;
        let mix = (angle.cos() as f32, angle.sin() as f32);
        if let Some(seg) = &self.segment {
            seg.raster.render(&scene, mix, &mut grey);
        }
        self.prims = scene.prims;

        // The strip shows the ECG up to the newest sample taken by the frame time.
        let fs = self.cfg.ecg_fs_hz;
        let newest = ((t_s * fs).floor() as u64).min(self.sample_count.saturating_sub(1));
        self.generate_to(newest + 1);
        let strip_n = (overlay::STRIP_SECONDS * fs).ceil() as u64 + 2;
        let from = (newest + 1).saturating_sub(strip_n).max(self.ecg_first);
        let a = (from - self.ecg_first) as usize;
        let b = (newest + 1 - self.ecg_first) as usize;
        let age = (t_s - newest as f64 / fs).max(0.0);
        self.trace.clear();
        overlay::draw_strip(
            &self.layout,
            &self.ecg[a..b],
            fs,
            age,
            &mut grey,
            &mut self.trace,
        );
        if let Some(seg) = &self.segment {
            seg.overlay.apply(&mut grey);
        }
        self.trim_ecg(t_s);
        (grey, view)
    }

    /// Renders frame `seq` at time `t_ns` in the configured pixel format.
    fn render_frame(&mut self, seq: u64, t_ns: u64) -> (Frame, View) {
        let (grey, view) = self.render_grey(t_ns);
        let (w, h) = (self.layout.w, self.layout.h);
        let (format, data) = match self.cfg.format {
            PixelFormat::Yuyv => {
                let mut data = vec![128u8; 2 * w * h];
                for (d, &g) in data.chunks_exact_mut(2).zip(&grey) {
                    d[0] = g;
                }
                for &i in &self.trace {
                    let pair = i as usize / 2;
                    data[4 * pair + 1] = TRACE_UV.0;
                    data[4 * pair + 3] = TRACE_UV.1;
                }
                (PixelFormat::Yuyv, data)
            }
            // SimConfig::validate admits only GREY besides YUYV.
            _ => (PixelFormat::Grey8, grey),
        };
        let frame = Frame {
            seq,
            t_ns,
            width: w as u32,
            height: h as u32,
            stride: (w * format.bytes_per_pixel()) as u32,
            format,
            data,
        };
        (frame, view)
    }
}

impl Iterator for Simulator {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        let peak = (self.next_peak < self.rhythm.recorded_peaks().end)
            .then(|| self.rhythm.r_ns(self.next_peak))
            .filter(|&t| t < self.duration_ns);
        // Timed exactly as `SimEvent::t_ns` will report the block.
        let block = (self.next_block < self.sample_count).then(|| {
            let len = self.next_block_end() - self.next_block;
            self.sample_time(self.next_block)
                + ((len - 1) as f64 * 1e9 / self.cfg.ecg_fs_hz).round() as u64
        });
        let frame = (self.next_frame < self.frame_count).then_some(self.next_frame_t);
        // Ties go to the R-peak, then the ECG, then the frame.
        let earliest = [peak, block, frame].into_iter().flatten().min()?;
        if peak == Some(earliest) {
            let r_s = self.rhythm.beats[self.next_peak].r_s;
            self.next_peak += 1;
            return Some(SimEvent::RPeak {
                t_ns: earliest,
                sample_index: (r_s * self.cfg.ecg_fs_hz).round() as u64,
            });
        }
        if block == Some(earliest) {
            return Some(SimEvent::Ecg(self.take_block()));
        }
        let seq = self.next_frame;
        let (frame, truth) = self.render_frame(seq, earliest);
        self.next_frame += 1;
        self.next_frame_t = self.frame_time(self.next_frame);
        Some(SimEvent::Frame { frame, truth })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short scan with fixed probe settings, so differences come from anatomy alone.
    fn fixed_scan(views: &[View], beats: u32) -> ScanScript {
        let mut scan = ScanScript::from_views(views, beats);
        for s in &mut scan.segments {
            s.depth_cm = Some(15.0);
            s.gain = Some(1.0);
            s.tilt_deg = Some(0.0);
            s.shift_cm = Some([0.0, 0.0]);
            s.speckle_seed = Some(99);
        }
        scan
    }

    fn events(cfg: SimConfig) -> Vec<SimEvent> {
        Simulator::new(cfg).map(|s| s.collect()).unwrap_or_default()
    }

    /// All ECG samples of a run, checking that blocks are contiguous.
    fn ecg_of(ev: &[SimEvent]) -> (Vec<f32>, Vec<bool>, f64) {
        let mut samples = Vec::new();
        let mut off = Vec::new();
        let mut fs = 0.0;
        for e in ev {
            if let SimEvent::Ecg(b) = e {
                assert_eq!(
                    b.first_index,
                    samples.len() as u64,
                    "blocks must be contiguous"
                );
                samples.extend_from_slice(&b.samples_mv);
                off.extend(std::iter::repeat_n(b.lead_off, b.samples_mv.len()));
                fs = b.fs_hz;
            }
        }
        (samples, off, fs)
    }

    #[test]
    fn identical_configs_give_identical_bytes() {
        let cfg = SimConfig {
            scan: ScanScript::from_views(&[View::Plax, View::A4c], 2),
            format: PixelFormat::Yuyv,
            frame_jitter_ms: 2.0,
            ectopic_prob: 0.2,
            ..SimConfig::default()
        };
        let a = events(cfg.clone());
        let b = events(cfg.clone());
        assert!(a.len() > 100);
        assert_eq!(a, b);
        let c = events(SimConfig { seed: 2, ..cfg });
        assert_ne!(a, c);
    }

    #[test]
    fn events_are_ordered_and_ecg_arrives_in_blocks() {
        let cfg = SimConfig {
            scan: ScanScript::from_views(&[View::A2c], 3),
            ecg_fs_hz: 360.0,
            ecg_block_ms: 25.0,
            ..SimConfig::default()
        };
        let sim = Simulator::new(cfg).unwrap_or_else(|e| panic!("{e}"));
        let samples_expected = sim.ecg_sample_count();
        let duration = sim.duration_ns();
        let ev: Vec<SimEvent> = sim.collect();
        for w in ev.windows(2) {
            assert!(w[0].t_ns() <= w[1].t_ns(), "{:?} after {:?}", w[1], w[0]);
        }
        let (samples, _, fs) = ecg_of(&ev);
        assert_eq!(samples.len() as u64, samples_expected);
        assert_eq!(fs, 360.0);
        let blocks: Vec<&EcgBlock> = ev
            .iter()
            .filter_map(|e| {
                if let SimEvent::Ecg(b) = e {
                    Some(b)
                } else {
                    None
                }
            })
            .collect();
        for b in &blocks[..blocks.len() - 1] {
            assert_eq!(b.samples_mv.len(), 9, "25 ms at 360 Hz");
        }
        // Every sample was taken before the end of the recording.
        let last = blocks[blocks.len() - 1];
        assert!(last.sample_time_ns(last.samples_mv.len() - 1) < duration);
    }

    #[test]
    fn ecg_r_peaks_match_the_truth_within_2_ms() {
        let cfg = SimConfig {
            scan: ScanScript::from_views(&[View::Plax, View::A4c], 15),
            ..SimConfig::default()
        };
        let ev = events(cfg);
        let (x, _, fs) = ecg_of(&ev);
        let mut peaks = 0;
        for e in &ev {
            let SimEvent::RPeak { t_ns, sample_index } = *e else {
                continue;
            };
            peaks += 1;
            let truth = t_ns as f64 * 1e-9;
            assert!((sample_index as f64 / fs - truth).abs() <= 0.5 / fs + 1e-9);
            let c = sample_index as usize;
            let w = (0.03 * fs) as usize;
            let (lo, hi) = (c.saturating_sub(w).max(1), (c + w).min(x.len() - 2));
            let m = (lo..=hi)
                .max_by(|&i, &j| x[i].total_cmp(&x[j]))
                .unwrap_or(c);
            // Parabolic refinement through the maximum and its neighbours.
            let (y0, y1, y2) = (f64::from(x[m - 1]), f64::from(x[m]), f64::from(x[m + 1]));
            let den = y0 - 2.0 * y1 + y2;
            let off = if den < 0.0 {
                0.5 * (y0 - y2) / den
            } else {
                0.0
            };
            let found = (m as f64 + off) / fs;
            assert!(
                (found - truth).abs() <= 0.002,
                "peak at {found:.4} s, truth {truth:.4} s"
            );
            assert!((0.8..2.0).contains(&y1), "R amplitude {y1} mV");
        }
        assert_eq!(peaks, 31);
    }

    #[test]
    fn rr_intervals_vary_within_the_configured_rate_range() {
        for (base, lo, hi) in [
            (70.0, 50.0, 120.0),
            (175.0, 150.0, 180.0),
            (42.0, 40.0, 60.0),
        ] {
            let cfg = SimConfig {
                scan: ScanScript::from_views(&[View::A4c], 60),
                base_bpm: base,
                min_bpm: lo,
                max_bpm: hi,
                rsa: 0.1,
                ..SimConfig::default()
            };
            let sim = Simulator::new(cfg).unwrap_or_else(|e| panic!("{e}"));
            let r: Vec<f64> = sim.rhythm.beats.iter().map(|b| b.r_s).collect();
            let rr: Vec<f64> = r.windows(2).map(|w| w[1] - w[0]).collect();
            for &x in &rr {
                assert!(
                    x >= 60.0 / hi - 1e-9 && x <= 60.0 / lo + 1e-9,
                    "RR {x} outside"
                );
            }
            let mean = rr.iter().sum::<f64>() / rr.len() as f64;
            let sd = (rr.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rr.len() as f64).sqrt();
            assert!(
                (60.0 / mean - base).abs() < 0.1 * base,
                "mean {} bpm",
                60.0 / mean
            );
            assert!(sd > 0.005 * mean, "RR must vary: sd {sd}");
        }
    }

    #[test]
    fn frames_cover_the_scan_in_order() {
        let views = [View::Subcostal, View::PsaxBase, View::A5c];
        let cfg = SimConfig {
            scan: ScanScript::from_views(&views, 2),
            fps: 25.0,
            ..SimConfig::default()
        };
        let sim = Simulator::new(cfg).unwrap_or_else(|e| panic!("{e}"));
        let n = sim.frame_count();
        let duration = sim.duration_ns();
        let timeline = sim.timeline();
        assert_eq!(n, (duration as f64 * 25.0 / 1e9).round() as u64);
        let frames: Vec<(Frame, View)> = sim
            .filter_map(|e| match e {
                SimEvent::Frame { frame, truth } => Some((frame, truth)),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len() as u64, n);
        let mut order: Vec<View> = frames.iter().map(|f| f.1).collect();
        order.dedup();
        assert_eq!(order, views);
        assert_eq!(timeline.len(), 3);
        assert_eq!(timeline[0].start_ns, 0);
        assert_eq!(timeline[2].end_ns, duration);
        for (i, (f, truth)) in frames.iter().enumerate() {
            assert_eq!(f.seq, i as u64);
            assert_eq!(f.t_ns, (i as f64 * 4e7).round() as u64, "exact 1/fps grid");
            assert!(f.validate().is_ok());
            let span = timeline
                .iter()
                .find(|s| (s.start_ns..s.end_ns).contains(&f.t_ns))
                .map(|s| s.view);
            assert_eq!(span, Some(*truth));
        }
    }

    /// Dark pixels inside the sector of a frame rendered at `phase` of beat `beat`.
    fn dark_count(sim: &mut Simulator, beat: usize, phase: f64) -> usize {
        let r0 = sim.rhythm.beats[beat].r_s;
        let r1 = sim.rhythm.beats[beat + 1].r_s;
        let (grey, _) = sim.render_grey(((r0 + phase * (r1 - r0)) * 1e9).round() as u64);
        let sector = sim
            .segment
            .as_ref()
            .map(|s| s.raster.sector_pixels())
            .unwrap_or_default();
        sector.iter().filter(|&&i| grey[i] < 20).count()
    }

    #[test]
    fn chambers_are_largest_at_r_and_smallest_at_end_systole() {
        // Views where the ventricles dominate the dark area (the atria fill as they empty).
        for view in [View::PsaxMid, View::A4c, View::A2c] {
            let cfg = SimConfig {
                scan: fixed_scan(&[view], 3),
                ..SimConfig::default()
            };
            let mut sim = Simulator::new(cfg).unwrap_or_else(|e| panic!("{e}"));
            let beat = sim.rhythm.segment_start[0] + 1;
            let area: Vec<usize> = (0..20)
                .map(|i| dark_count(&mut sim, beat, i as f64 / 20.0))
                .collect();
            let argmax = (0..20).max_by_key(|&i| area[i]).unwrap_or(99);
            let argmin = (0..20).min_by_key(|&i| area[i]).unwrap_or(99);
            assert!(
                argmax == 0 || argmax >= 18,
                "{view}: largest at phase {} ({area:?})",
                argmax as f64 / 20.0
            );
            assert!(
                (6..=9).contains(&argmin),
                "{view}: smallest at phase {} ({area:?})",
                argmin as f64 / 20.0
            );
            assert!(
                area[0] as f64 > 1.08 * area[argmin] as f64,
                "{view}: {area:?}"
            );
        }
    }

    #[test]
    fn views_differ_more_than_beats_of_one_view() {
        let cfg = SimConfig {
            scan: fixed_scan(&View::ALL, 3),
            ..SimConfig::default()
        };
        let mut sim = Simulator::new(cfg).unwrap_or_else(|e| panic!("{e}"));
        let mad = |a: &[u8], b: &[u8]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x.abs_diff(y)))
                .sum::<f64>()
                / a.len() as f64
        };
        let mut first = Vec::new();
        let mut within: f64 = 0.0;
        for s in 0..View::ALL.len() {
            let b = sim.rhythm.segment_start[s];
            let at = |sim: &mut Simulator, beat: usize| {
                let r0 = sim.rhythm.beats[beat].r_s;
                let r1 = sim.rhythm.beats[beat + 1].r_s;
                sim.render_grey(((r0 + 0.1 * (r1 - r0)) * 1e9).round() as u64)
                    .0
            };
            let one = at(&mut sim, b + 1);
            let two = at(&mut sim, b + 2);
            within = within.max(mad(&one, &two));
            first.push(one);
        }
        let mut across = f64::MAX;
        for i in 0..first.len() {
            for j in i + 1..first.len() {
                across = across.min(mad(&first[i], &first[j]));
            }
        }
        assert!(
            across > 2.0 * within,
            "closest views differ by {across:.2}, beats of one view by {within:.2}"
        );
    }

    #[test]
    fn lead_off_stretches_are_flagged_and_flat_or_railed() {
        let cfg = SimConfig {
            scan: ScanScript::from_views(&[View::A4c], 5),
            lead_off: vec![
                LeadOffStretch {
                    start_s: 1.0,
                    duration_s: 0.5,
                    mode: LeadOffMode::Flat,
                },
                LeadOffStretch {
                    start_s: 2.01,
                    duration_s: 0.3,
                    mode: LeadOffMode::Railed,
                },
            ],
            ..SimConfig::default()
        };
        let ev = events(cfg);
        let (x, off, fs) = ecg_of(&ev);
        for (i, (&v, &o)) in x.iter().zip(&off).enumerate() {
            let t = i as f64 / fs;
            let flat = (1.0..1.5).contains(&t);
            let railed = (2.01..2.31).contains(&t);
            assert_eq!(o, flat || railed, "sample {i}");
            if flat {
                assert_eq!(v, 0.0);
            } else if railed {
                assert_eq!(v, RAIL_MV);
            } else {
                assert!(v.abs() < 3.0);
            }
        }
    }

    #[test]
    fn mains_hum_is_at_the_configured_frequency() {
        let power = |x: &[f32], fs: f64, f: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, &v) in x.iter().enumerate() {
                let a = std::f64::consts::TAU * f * i as f64 / fs;
                re += f64::from(v) * a.cos();
                im += f64::from(v) * a.sin();
            }
            (re * re + im * im).sqrt() * 2.0 / x.len() as f64
        };
        for (hz, other) in [(50.0, 60.0), (60.0, 50.0)] {
            let cfg = SimConfig {
                scan: ScanScript::from_views(&[View::A2c], 4),
                mains_hz: hz,
                mains_mv: 0.2,
                ..SimConfig::default()
            };
            let (x, _, fs) = ecg_of(&events(cfg));
            let at = power(&x, fs, hz);
            assert!((at - 0.2).abs() < 0.03, "hum amplitude {at}");
            assert!(power(&x, fs, other) < 0.25 * at);
        }
    }

    #[test]
    fn yuyv_carries_the_grey_image_and_a_green_trace() {
        let base = SimConfig {
            scan: ScanScript::from_views(&[View::PsaxApical], 1),
            ..SimConfig::default()
        };
        let frames = |cfg: SimConfig| -> Vec<Frame> {
            events(cfg)
                .into_iter()
                .filter_map(|e| match e {
                    SimEvent::Frame { frame, .. } => Some(frame),
                    _ => None,
                })
                .collect()
        };
        let grey = frames(base.clone());
        let yuyv = frames(SimConfig {
            format: PixelFormat::Yuyv,
            ..base
        });
        assert_eq!(grey.len(), yuyv.len());
        let last = grey.len() - 1;
        let (g, y) = (&grey[last], &yuyv[last]);
        assert_eq!(y.stride, 640);
        assert!(y.validate().is_ok());
        let luma: Vec<u8> = y.data.iter().step_by(2).copied().collect();
        assert_eq!(luma, g.data);
        let chroma: Vec<u8> = y.data.iter().skip(1).step_by(2).copied().collect();
        let tinted = chroma.iter().filter(|&&c| c != 128).count();
        assert!(tinted > 100, "ECG trace should be coloured");
        assert!(
            chroma
                .iter()
                .all(|&c| c == 128 || c == TRACE_UV.0 || c == TRACE_UV.1)
        );
    }

    #[test]
    fn bad_settings_name_the_field_and_range() {
        let cases: Vec<(SimConfig, &str, &str)> = vec![
            (
                SimConfig {
                    width: 100,
                    ..SimConfig::default()
                },
                "width",
                "320..=1280",
            ),
            (
                SimConfig {
                    height: 1000,
                    ..SimConfig::default()
                },
                "height",
                "240..=720",
            ),
            (
                SimConfig {
                    width: 321,
                    format: PixelFormat::Yuyv,
                    ..SimConfig::default()
                },
                "width",
                "even",
            ),
            (
                SimConfig {
                    fps: 24.0,
                    ..SimConfig::default()
                },
                "fps",
                "25..=60",
            ),
            (
                SimConfig {
                    fps: f64::NAN,
                    ..SimConfig::default()
                },
                "fps",
                "25..=60",
            ),
            (
                SimConfig {
                    ecg_fs_hz: 2000.0,
                    ..SimConfig::default()
                },
                "ecg_fs_hz",
                "250..=1000",
            ),
            (
                SimConfig {
                    ecg_block_ms: 10.0,
                    ..SimConfig::default()
                },
                "ecg_block_ms",
                "20..=50",
            ),
            (
                SimConfig {
                    base_bpm: 130.0,
                    ..SimConfig::default()
                },
                "base_bpm",
                "50..=120",
            ),
            (
                SimConfig {
                    min_bpm: 30.0,
                    ..SimConfig::default()
                },
                "min_bpm",
                "40..=180",
            ),
            (
                SimConfig {
                    max_bpm: 200.0,
                    ..SimConfig::default()
                },
                "max_bpm",
                "..=180",
            ),
            (
                SimConfig {
                    mains_hz: 55.0,
                    ..SimConfig::default()
                },
                "mains_hz",
                "50 or 60",
            ),
            (
                SimConfig {
                    ectopic_prob: 0.5,
                    ..SimConfig::default()
                },
                "ectopic_prob",
                "0..=0.3",
            ),
            (
                SimConfig {
                    emg_mv: -1.0,
                    ..SimConfig::default()
                },
                "emg_mv",
                "0..=0.5",
            ),
            (
                SimConfig {
                    frame_jitter_ms: 20.0,
                    ..SimConfig::default()
                },
                "frame_jitter_ms",
                "0..=",
            ),
            (
                SimConfig {
                    scan: ScanScript { segments: vec![] },
                    ..SimConfig::default()
                },
                "scan",
                "at least one",
            ),
            (
                SimConfig {
                    scan: ScanScript::from_views(&[View::A4c, View::A2c], 0),
                    ..SimConfig::default()
                },
                "scan.segment[1].beats",
                "1..=10000",
            ),
            (
                SimConfig {
                    lead_off: vec![LeadOffStretch {
                        start_s: -1.0,
                        duration_s: 1.0,
                        mode: LeadOffMode::Flat,
                    }],
                    ..SimConfig::default()
                },
                "lead_off[0].start_s",
                "0..=",
            ),
        ];
        for (cfg, field, allowed) in cases {
            let err = Simulator::new(cfg).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(allowed), "{err}");
        }
        let mut scan = ScanScript::from_views(&[View::A4c, View::A2c], 2);
        scan.segments[1].depth_cm = Some(40.0);
        let err = Simulator::new(SimConfig {
            scan,
            ..SimConfig::default()
        })
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("scan.segment[2].depth_cm") && err.contains("6..=24"),
            "{err}"
        );
        assert!(Simulator::new(SimConfig::default()).is_ok());
    }
}
