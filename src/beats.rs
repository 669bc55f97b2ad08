//! From sources to gated heartbeats: the front half of the data path, shared by
//! classification (`Pipeline`), training-clip cutting (`echoview clips`) and anything else
//! that needs ECG-gated frames.
//!
//! [`BeatCutter`] owns the QRS detector, the ECG quality monitor, the gate and the short
//! history of frames and truth labels that gating needs. It is pure and push-driven: push
//! [`Input`]s, pull [`CutEvent`]s, and look up a beat's frames with [`BeatCutter::frames_of`]
//! before pushing more input (the history moves on).

use std::collections::{BTreeMap, VecDeque};

use crate::ecg::{EcgError, QrsDetector, QualityMonitor};
use crate::gate::{
    FrameStamp, Gate, GateConfig, GateEvent, Gating, Heartbeat, SkippedBeat, nearest_in_time,
};
use crate::media::{EcgBlock, Frame};
use crate::views::View;

/// Frames kept for gating: the longest plausible beat (2 s) plus the detector's confirmation
/// delay (0.4 s) plus margin, at up to 60 fps.
const FRAME_HISTORY_NS: u64 = 3_500_000_000;
/// Hard cap on frames kept, whatever the timestamps say.
const MAX_FRAMES: usize = 512;
/// Truth labels kept (one per frame), for the same span as frames.
const MAX_TRUTH: usize = 512;

/// One thing a source delivers.
#[derive(Debug, Clone)]
pub enum Input {
    /// A video frame.
    Frame(Frame),
    /// A block of ECG samples.
    Ecg(EcgBlock),
    /// The true view at a time (simulated sessions only), to report next to the label.
    Truth {
        /// Session-clock time, equal to the frame's time it describes.
        t_ns: u64,
        /// The view being shown.
        view: View,
    },
    /// A beat boundary found outside the cutter's own ECG stages: an export's R-wave time
    /// vector or image-derived gating. It closes the open beat like a detected R-peak.
    Boundary {
        /// Session-clock time of the boundary.
        t_ns: u64,
        /// How it was found; the beat it closes carries this mark.
        gating: Gating,
    },
}

/// What the cutter produces.
#[derive(Debug, Clone, PartialEq)]
pub enum CutEvent {
    /// A gated heartbeat; its frames are available from [`BeatCutter::frames_of`] until the
    /// next push.
    Beat {
        /// The beat and its gated frame stamps.
        beat: Heartbeat,
        /// The view most of its frames truly showed, when the source carries truth.
        truth: Option<View>,
    },
    /// A beat that will not be classified, and why.
    Skipped(SkippedBeat),
}

/// Counters of the front half.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CutStats {
    /// Frames received.
    pub frames: u64,
    /// ECG samples received.
    pub ecg_samples: u64,
    /// R-peaks detected.
    pub r_peaks: u64,
    /// Gated beats handed out.
    pub beats: u64,
    /// Beats skipped, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Times the ECG stream broke (sample index gap or rate change) and detection restarted.
    pub ecg_restarts: u64,
}

impl CutStats {
    /// Counts one skipped beat.
    pub fn count_skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    /// Total beats skipped.
    pub fn beats_skipped(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// Where the ECG stream stands: which sample index maps to which time, and where the
/// detector's own count started.
#[derive(Debug, Clone, Copy)]
struct EcgTimeline {
    /// Sampling rate of the stream.
    fs_hz: f64,
    /// Stream index of the detector's sample 0.
    detector_base: u64,
    /// The stream index expected next; a block starting elsewhere is a break.
    next_index: u64,
    /// Anchor: the latest block's first index and its time.
    anchor_index: u64,
    anchor_ns: u64,
}

impl EcgTimeline {
    /// Time of the detector's sample `detector_index`.
    fn time_of(&self, detector_index: u64) -> u64 {
        let stream_index = self.detector_base + detector_index;
        let offset = (stream_index as f64 - self.anchor_index as f64) * 1e9 / self.fs_hz;
        (self.anchor_ns as f64 + offset).max(0.0).round() as u64
    }
}

/// The ECG stages, created when the first block arrives and again after a break.
#[derive(Debug)]
struct EcgStages {
    /// Finds R-peaks.
    detector: QrsDetector,
    /// Flags flat, saturated, noisy or lead-off ECG, so the gate skips beats cut from it.
    quality: QualityMonitor,
    /// Maps detector sample indices to session time.
    timeline: EcgTimeline,
}

/// Sources in, gated heartbeats out. See the module documentation.
#[derive(Debug)]
pub struct BeatCutter {
    /// The ECG stages, once ECG has arrived.
    ecg: Option<EcgStages>,
    /// Cuts beats and picks frames.
    gate: Gate,
    /// Frames recent enough to be gated, oldest first.
    frames: VecDeque<Frame>,
    /// Truth labels of recent frames, `(t_ns, view)`.
    truth: VecDeque<(u64, View)>,
    /// Events ready for the consumer.
    events: VecDeque<CutEvent>,
    /// Counters.
    stats: CutStats,
}

impl BeatCutter {
    /// A cutter picking `frames_per_beat` frames per heartbeat.
    pub fn new(frames_per_beat: usize) -> BeatCutter {
        BeatCutter {
            ecg: None,
            gate: Gate::new(GateConfig::new(frames_per_beat)),
            frames: VecDeque::new(),
            // Full size from the start: growing it would allocate on the per-frame path.
            truth: VecDeque::with_capacity(MAX_TRUTH),
            events: VecDeque::new(),
            stats: CutStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &CutStats {
        &self.stats
    }

    /// Counts a beat the consumer had to drop after all (its frames were unusable).
    pub fn count_skip(&mut self, reason: &'static str) {
        self.stats.count_skip(reason);
    }

    /// Feeds one input. Fails only on an ECG the detector cannot take (an unsupported rate).
    pub fn push(&mut self, input: Input) -> Result<(), EcgError> {
        match input {
            Input::Frame(frame) => self.push_frame(frame),
            Input::Ecg(block) => self.push_ecg(&block)?,
            Input::Truth { t_ns, view } => {
                if self.truth.len() == MAX_TRUTH {
                    self.truth.pop_front();
                }
                self.truth.push_back((t_ns, view));
            }
            Input::Boundary { t_ns, gating } => {
                self.stats.r_peaks += 1;
                self.gate.push_boundary(t_ns, gating);
            }
        }
        self.collect();
        Ok(())
    }

    /// End of stream: flushes the detector and the gate.
    pub fn finish(&mut self) {
        if let Some(stages) = self.ecg.take()
            && let Some(peak) = stages.detector.finish()
        {
            self.stats.r_peaks += 1;
            self.gate.push_r_peak(stages.timeline.time_of(peak.index));
        }
        self.gate.finish();
        self.collect();
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<CutEvent> {
        self.events.pop_front()
    }

    /// The frames of `beat` in phase order, or `None` when one is no longer held (a consumer
    /// that pushed more input before asking).
    pub fn frames_of(&self, beat: &Heartbeat) -> Option<Vec<&Frame>> {
        beat.frames
            .iter()
            .map(|stamp| {
                self.frames
                    .binary_search_by_key(&stamp.seq, |f| f.seq)
                    .ok()
                    .and_then(|i| self.frames.get(i))
            })
            .collect()
    }

    /// The beat the QRS detector's provisional R-peak would close, `(start_ns, end_ns)` (see
    /// [`crate::ecg::QrsDetector::provisional`] and [`Gate::beat_closed_by`]): known up to
    /// 220 ms before the R-peak is confirmed and the beat cut, and in the common case exactly
    /// the beat that will be cut, so its phase frames can be prepared ahead. `None` while no
    /// candidate is held, or the gate would not pick frames for the beat.
    pub fn provisional_beat(&self) -> Option<(u64, u64)> {
        let stages = self.ecg.as_ref()?;
        let peak = stages.detector.provisional()?;
        self.gate
            .beat_closed_by(stages.timeline.time_of(peak.index))
    }

    /// The held frame nearest to `t_ns`, by the gate's rule (the closer of the frames either
    /// side of it), so a frame picked ahead of time is the one the gate will pick.
    pub fn frame_near(&self, t_ns: u64) -> Option<&Frame> {
        nearest_in_time(&self.frames, t_ns, |f| f.t_ns)
    }

    /// The held frames captured at or after `t_ns`, oldest first.
    pub fn frames_since(&self, t_ns: u64) -> impl Iterator<Item = &Frame> {
        // Held frames are in capture order (push_frame refuses any other).
        let first = self.frames.partition_point(|f| f.t_ns < t_ns);
        self.frames.range(first..)
    }

    /// Capture time of the newest frame held.
    pub fn latest_frame_ns(&self) -> Option<u64> {
        self.frames.back().map(|f| f.t_ns)
    }

    fn push_frame(&mut self, frame: Frame) {
        self.stats.frames += 1;
        // Out-of-order frames cannot be placed; the gate ignores them too.
        if self
            .frames
            .back()
            .is_some_and(|last| frame.t_ns <= last.t_ns || frame.seq <= last.seq)
        {
            return;
        }
        while self.frames.len() >= MAX_FRAMES
            || self
                .frames
                .front()
                .is_some_and(|f| f.t_ns + FRAME_HISTORY_NS < frame.t_ns)
        {
            self.frames.pop_front();
        }
        let stamp = FrameStamp {
            seq: frame.seq,
            t_ns: frame.t_ns,
        };
        self.frames.push_back(frame);
        self.gate.push_frame(stamp);
    }

    fn push_ecg(&mut self, block: &EcgBlock) -> Result<(), EcgError> {
        self.stats.ecg_samples += block.samples_mv.len() as u64;
        let continues = self.ecg.as_ref().is_some_and(|s| {
            s.timeline.next_index == block.first_index && s.timeline.fs_hz == block.fs_hz
        });
        if !continues {
            if self.ecg.is_some() {
                self.stats.ecg_restarts += 1;
            }
            self.gate.reset_rhythm();
            self.ecg = Some(EcgStages {
                detector: QrsDetector::new(block.fs_hz)?,
                quality: QualityMonitor::new(block.fs_hz)?,
                timeline: EcgTimeline {
                    fs_hz: block.fs_hz,
                    detector_base: block.first_index,
                    next_index: block.first_index,
                    anchor_index: block.first_index,
                    anchor_ns: block.t0_ns,
                },
            });
        }
        let Some(stages) = self.ecg.as_mut() else {
            return Ok(());
        };
        let timeline = &mut stages.timeline;
        timeline.anchor_index = block.first_index;
        timeline.anchor_ns = block.t0_ns;
        timeline.next_index = block.first_index + block.samples_mv.len() as u64;
        if block.lead_off && !block.samples_mv.is_empty() {
            let end = block.sample_time_ns(block.samples_mv.len() - 1);
            self.gate.mark_bad_ecg(block.t0_ns, end);
        }
        for &sample in &block.samples_mv {
            // Quality windows close as their last sample arrives, before the (delayed)
            // detector confirms the R-peaks inside them, so the gate hears of bad ECG before
            // it resolves the beats it spoils.
            if let Some(span) = stages.quality.push(sample)
                && !span.flags.is_good()
            {
                let start = timeline.time_of(span.start_index);
                let end = timeline.time_of(span.end_index);
                self.gate.mark_bad_ecg(start, end);
            }
            if let Some(peak) = stages.detector.push(sample) {
                self.stats.r_peaks += 1;
                self.gate.push_r_peak(timeline.time_of(peak.index));
            }
        }
        Ok(())
    }

    /// Moves the gate's events to the cutter's queue, attaching truth to beats.
    fn collect(&mut self) {
        while let Some(event) = self.gate.next_event() {
            let event = match event {
                GateEvent::Skipped(skipped) => {
                    self.stats.count_skip(skipped.reason.name());
                    CutEvent::Skipped(skipped)
                }
                GateEvent::Beat(beat) => {
                    self.stats.beats += 1;
                    let truth = majority_truth(&self.truth, &beat.frames);
                    CutEvent::Beat { beat, truth }
                }
            };
            self.events.push_back(event);
        }
    }
}

/// The view shown by most of the gated frames, from the truth labels at their times.
fn majority_truth(truth: &VecDeque<(u64, View)>, frames: &[FrameStamp]) -> Option<View> {
    let mut counts = [0usize; View::ALL.len()];
    for stamp in frames {
        // The truth label in force at the frame: the last one at or before its time.
        let i = truth.partition_point(|&(t, _)| t <= stamp.t_ns);
        if let Some(&(_, view)) = i.checked_sub(1).and_then(|i| truth.get(i)) {
            counts[view.index()] += 1;
        }
    }
    // Ties go to the earlier view in canonical order, so the result is deterministic.
    let (best, &n) = counts
        .iter()
        .enumerate()
        .max_by_key(|&(i, n)| (*n, usize::MAX - i))?;
    (n > 0).then(|| View::ALL[best])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::PixelFormat;

    const MS: u64 = 1_000_000;

    fn frame(seq: u64, t_ms: u64) -> Frame {
        Frame {
            seq,
            t_ns: t_ms * MS,
            width: 4,
            height: 2,
            stride: 4,
            format: PixelFormat::Grey8,
            data: vec![seq as u8; 8],
        }
    }

    /// A 500 Hz synthetic ECG with an R-peak every `rr_ms` (the first at `rr_ms / 2`),
    /// delivered in 40 ms blocks, with frames at 25 fps and a truth label that switches from
    /// PLAX to A4C at `switch_ms`.
    fn feed(cutter: &mut BeatCutter, rr_ms: u64, until_ms: u64, switch_ms: u64) -> Vec<CutEvent> {
        use crate::ecg::synth;
        let r_times: Vec<f64> = (0..)
            .map(|k| (rr_ms / 2 + k * rr_ms) as f64 / 1e3)
            .take_while(|&t| t < until_ms as f64 / 1e3)
            .collect();
        let beats = vec![synth::Beat::default(); r_times.len()];
        let mut rng = synth::Rng::new(3);
        let ecg = synth::ecg(
            500.0,
            until_ms as f64 / 1e3,
            &r_times,
            &beats,
            0.01,
            &mut rng,
        );
        let mut events = Vec::new();
        let mut next_frame_ms = 0;
        let mut seq = 0;
        for block in 0..until_ms / 40 {
            let first = block * 20;
            let samples = ecg[first as usize..first as usize + 20].to_vec();
            cutter
                .push(Input::Ecg(EcgBlock {
                    first_index: first,
                    t0_ns: first * 2 * MS,
                    fs_hz: 500.0,
                    samples_mv: samples,
                    lead_off: false,
                }))
                .unwrap();
            while next_frame_ms < (block + 1) * 40 {
                cutter
                    .push(Input::Frame(frame(seq, next_frame_ms)))
                    .unwrap();
                let view = if next_frame_ms < switch_ms {
                    View::Plax
                } else {
                    View::A4c
                };
                cutter
                    .push(Input::Truth {
                        t_ns: next_frame_ms * MS,
                        view,
                    })
                    .unwrap();
                seq += 1;
                next_frame_ms += 40;
            }
            while let Some(e) = cutter.next_event() {
                if let CutEvent::Beat { beat, .. } = &e {
                    let frames = cutter.frames_of(beat).expect("frames still held");
                    assert_eq!(frames.len(), beat.frames.len());
                    for (f, s) in frames.iter().zip(&beat.frames) {
                        assert_eq!((f.seq, f.t_ns), (s.seq, s.t_ns));
                    }
                }
                events.push(e);
            }
        }
        events
    }

    #[test]
    fn cuts_beats_between_r_peaks_with_truth_and_frames() {
        let mut cutter = BeatCutter::new(4);
        let events = feed(&mut cutter, 800, 12_000, 6_000);
        let beats: Vec<(&Heartbeat, Option<View>)> = events
            .iter()
            .filter_map(|e| match e {
                CutEvent::Beat { beat, truth } => Some((beat, *truth)),
                CutEvent::Skipped(_) => None,
            })
            .collect();
        assert!(beats.len() >= 10, "{events:?}");
        for (beat, _) in &beats {
            assert!(
                (beat.end_ns - beat.start_ns).abs_diff(800 * MS) <= 4 * MS,
                "{beat:?}"
            );
            // R-peaks at 400 + k * 800 ms.
            assert!(
                (beat.start_ns / MS + 400) % 800 <= 4 || (beat.start_ns / MS + 400) % 800 >= 796
            );
        }
        assert_eq!(beats.first().unwrap().1, Some(View::Plax));
        assert_eq!(beats.last().unwrap().1, Some(View::A4c));
        assert_eq!(cutter.stats().beats, beats.len() as u64);
        assert_eq!(cutter.stats().frames, 300);
    }

    #[test]
    fn a_break_in_the_ecg_restarts_detection_without_a_bogus_beat() {
        let mut cutter = BeatCutter::new(2);
        feed(&mut cutter, 800, 4_000, 0);
        // A block that does not continue the stream (sample index jumps).
        cutter
            .push(Input::Ecg(EcgBlock {
                first_index: 1_000_000,
                t0_ns: 4_000 * MS,
                fs_hz: 500.0,
                samples_mv: vec![0.0; 20],
                lead_off: false,
            }))
            .unwrap();
        assert_eq!(cutter.stats().ecg_restarts, 1);
    }

    #[test]
    fn unsupported_ecg_rate_is_an_error() {
        let mut cutter = BeatCutter::new(2);
        let err = cutter
            .push(Input::Ecg(EcgBlock {
                first_index: 0,
                t0_ns: 0,
                fs_hz: 50.0,
                samples_mv: vec![0.0; 5],
                lead_off: false,
            }))
            .unwrap_err();
        assert!(err.to_string().contains("50"), "{err}");
    }

    #[test]
    fn frames_since_lists_the_held_frames_from_a_time_on() {
        let mut cutter = BeatCutter::new(2);
        for (seq, t) in [(0, 0), (1, 40), (2, 80), (3, 120)] {
            cutter.push(Input::Frame(frame(seq, t))).unwrap();
        }
        let seqs =
            |t_ms: u64| -> Vec<u64> { cutter.frames_since(t_ms * MS).map(|f| f.seq).collect() };
        assert_eq!(seqs(0), vec![0, 1, 2, 3]);
        assert_eq!(
            seqs(40),
            vec![1, 2, 3],
            "a frame at the time itself is included"
        );
        assert_eq!(seqs(41), vec![2, 3]);
        assert!(seqs(121).is_empty());
    }
}
