//! The offline and live data path in one push-driven object: ECG and frames in, classified
//! heartbeats out through a [`BeatSink`].
//!
//! `Pipeline` owns one instance of each stage (QRS detector, gate, preprocessor, classifier)
//! and the short history of frames that gating needs. It never does I/O itself: readers push
//! [`Input`]s, and results go to whatever sink the caller supplies (JSON lines on stdout, a
//! socket, a recorder, a test collector).

use std::collections::{BTreeMap, VecDeque};

use crate::bundle::Bundle;
use crate::classify::{BeatClassification, Classifier, FeatureKey};
use crate::ecg::{EcgError, QrsDetector, QualityMonitor};
use crate::engine::{Engine, EngineError};
use crate::gate::{FrameStamp, Gate, GateConfig, GateEvent, Heartbeat, SkipReason, SkippedBeat};
use crate::media::{EcgBlock, Frame};
use crate::preprocess::{PreprocessConfig, PreprocessError, Preprocessor};
use crate::views::View;

/// Frames kept for gating: the longest plausible beat (2 s) plus the detector's confirmation
/// delay plus margin, at up to 60 fps.
const FRAME_HISTORY_NS: u64 = 3_500_000_000;
/// Hard cap on frames kept, whatever the timestamps say.
const MAX_FRAMES: usize = 512;
/// Truth labels kept (one per frame), for the same span as frames.
const MAX_TRUTH: usize = 512;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The ECG could not be processed (e.g. an unsupported sampling rate).
    #[error("ECG: {0}")]
    Ecg(#[from] EcgError),
    /// The engine failed on a beat.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The configured preprocessing cannot apply to this video (e.g. a crop outside the frame).
    #[error("preprocessing: {0}")]
    Preprocess(#[from] PreprocessError),
    /// The sink could not take a result (e.g. stdout closed).
    #[error("writing results: {0}")]
    Sink(#[from] std::io::Error),
}

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
}

/// Everything published about one classified heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatReport {
    /// The gated beat (times, frames, gating mode).
    pub beat: Heartbeat,
    /// The classifier's verdict.
    pub classification: BeatClassification,
    /// The view most of the gated frames truly showed, when the session carries truth.
    pub truth: Option<View>,
}

/// Receives the pipeline's results. Implementations do the I/O.
pub trait BeatSink {
    /// A beat was classified.
    fn beat(&mut self, report: &BeatReport) -> std::io::Result<()>;
    /// A beat was skipped; the default ignores it.
    fn skipped(&mut self, _skipped: &SkippedBeat) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counters for the end-of-run summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineStats {
    /// Frames received.
    pub frames: u64,
    /// ECG samples received.
    pub ecg_samples: u64,
    /// R-peaks detected.
    pub r_peaks: u64,
    /// Beats classified (labelled with a view or `unknown`).
    pub beats_classified: u64,
    /// Of those, labelled `unknown`.
    pub beats_unknown: u64,
    /// Of those with truth, labelled with the true view.
    pub beats_correct: u64,
    /// Of those classified, how many carried truth.
    pub beats_with_truth: u64,
    /// Beats skipped, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Frames encoded by the engine (the rest of the gated frames came from the cache).
    pub frames_encoded: u64,
    /// Times the ECG stream broke (sample index gap or rate change) and detection restarted.
    pub ecg_restarts: u64,
}

impl PipelineStats {
    fn count_skip(&mut self, reason: &'static str) {
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

/// The whole per-session data path. See the module documentation.
pub struct Pipeline {
    /// Finds R-peaks; recreated when the ECG stream breaks.
    detector: Option<QrsDetector>,
    /// Flags flat, saturated, noisy or lead-off ECG, so the gate skips beats cut from it;
    /// recreated with the detector.
    quality: Option<QualityMonitor>,
    /// Maps detector sample indices to session time.
    timeline: Option<EcgTimeline>,
    /// Cuts beats and picks frames.
    gate: Gate,
    /// Frames recent enough to be gated, oldest first.
    frames: VecDeque<Frame>,
    /// Truth labels of recent frames, `(t_ns, view)`.
    truth: VecDeque<(u64, View)>,
    /// Turns frames into tensors.
    preprocessor: Preprocessor,
    /// Tensors of the current beat, reused.
    tensors: Vec<f32>,
    /// Encoder + head + reject rule.
    classifier: Classifier,
    /// Counters.
    stats: PipelineStats,
}

impl Pipeline {
    /// A pipeline for `bundle` running on `engine`.
    pub fn new(bundle: &Bundle, engine: Box<dyn Engine>) -> Pipeline {
        let m = &bundle.manifest;
        let t = bundle.frames_per_beat();
        let preprocessor = Preprocessor::new(PreprocessConfig {
            width: m.input.width,
            height: m.input.height,
            mean: m.input.mean[0],
            std: m.input.std[0],
            crop: None,
        });
        let tensors = vec![0.0; t * preprocessor.tensor_len()];
        Pipeline {
            detector: None,
            quality: None,
            timeline: None,
            gate: Gate::new(GateConfig::new(t)),
            frames: VecDeque::new(),
            truth: VecDeque::new(),
            preprocessor,
            tensors,
            classifier: Classifier::new(
                engine,
                bundle.labels.clone(),
                t,
                bundle.feature_dim(),
                m.classify.reject_threshold,
            ),
            stats: PipelineStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.classifier.engine_name()
    }

    /// Feeds one input; any beats it completes go to `sink`.
    pub fn push(&mut self, input: Input, sink: &mut dyn BeatSink) -> Result<(), PipelineError> {
        match input {
            Input::Frame(frame) => self.push_frame(frame),
            Input::Ecg(block) => self.push_ecg(&block)?,
            Input::Truth { t_ns, view } => {
                if self.truth.len() == MAX_TRUTH {
                    self.truth.pop_front();
                }
                self.truth.push_back((t_ns, view));
            }
        }
        self.drain(sink)
    }

    /// End of stream: flushes the detector and the gate.
    pub fn finish(&mut self, sink: &mut dyn BeatSink) -> Result<(), PipelineError> {
        if let (Some(detector), Some(timeline)) = (self.detector.take(), self.timeline) {
            if let Some(peak) = detector.finish() {
                self.stats.r_peaks += 1;
                self.gate.push_r_peak(timeline.time_of(peak.index));
            }
        }
        self.gate.finish();
        self.drain(sink)
    }

    fn push_frame(&mut self, frame: Frame) {
        self.stats.frames += 1;
        let stamp = FrameStamp {
            seq: frame.seq,
            t_ns: frame.t_ns,
        };
        if self
            .frames
            .back()
            .is_some_and(|last| frame.t_ns <= last.t_ns)
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
        self.frames.push_back(frame);
        self.gate.push_frame(stamp);
    }

    fn push_ecg(&mut self, block: &EcgBlock) -> Result<(), PipelineError> {
        self.stats.ecg_samples += block.samples_mv.len() as u64;
        let continues = self
            .timeline
            .is_some_and(|tl| tl.next_index == block.first_index && tl.fs_hz == block.fs_hz);
        if !continues {
            if self.timeline.is_some() {
                self.stats.ecg_restarts += 1;
            }
            self.detector = Some(QrsDetector::new(block.fs_hz)?);
            self.quality = Some(QualityMonitor::new(block.fs_hz)?);
            self.gate.reset_rhythm();
            self.timeline = Some(EcgTimeline {
                fs_hz: block.fs_hz,
                detector_base: block.first_index,
                next_index: block.first_index,
                anchor_index: block.first_index,
                anchor_ns: block.t0_ns,
            });
        }
        let (Some(detector), Some(quality), Some(timeline)) = (
            self.detector.as_mut(),
            self.quality.as_mut(),
            self.timeline.as_mut(),
        ) else {
            return Ok(());
        };
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
            if let Some(span) = quality.push(sample)
                && !span.flags.is_good()
            {
                let start = timeline.time_of(span.start_index);
                let end = timeline.time_of(span.end_index);
                self.gate.mark_bad_ecg(start, end);
            }
            if let Some(peak) = detector.push(sample) {
                self.stats.r_peaks += 1;
                self.gate.push_r_peak(timeline.time_of(peak.index));
            }
        }
        Ok(())
    }

    /// Classifies every beat the gate has ready and reports everything to the sink.
    fn drain(&mut self, sink: &mut dyn BeatSink) -> Result<(), PipelineError> {
        while let Some(event) = self.gate.next_event() {
            match event {
                GateEvent::Skipped(skipped) => {
                    self.stats.count_skip(skipped.reason.name());
                    sink.skipped(&skipped)?;
                }
                GateEvent::Beat(beat) => match self.classify(&beat)? {
                    Some(report) => sink.beat(&report)?,
                    None => {
                        let skipped = SkippedBeat {
                            beat: beat.beat,
                            start_ns: beat.start_ns,
                            end_ns: beat.end_ns,
                            reason: SkipReason::UnusableFrames,
                        };
                        self.stats.count_skip(skipped.reason.name());
                        sink.skipped(&skipped)?;
                    }
                },
            }
        }
        Ok(())
    }

    /// Preprocesses and classifies one beat. `None` when its frames are gone or malformed.
    fn classify(&mut self, beat: &Heartbeat) -> Result<Option<BeatReport>, PipelineError> {
        let mut picked: Vec<&Frame> = Vec::with_capacity(beat.frames.len());
        for stamp in &beat.frames {
            let found = self
                .frames
                .binary_search_by_key(&stamp.seq, |f| f.seq)
                .ok()
                .and_then(|i| self.frames.get(i));
            match found {
                Some(f) => picked.push(f),
                None => return Ok(None),
            }
        }
        let region = match self.preprocessor.prepare_beat(&picked, &mut self.tensors) {
            Ok(region) => region,
            Err(PreprocessError::BadFrame(_) | PreprocessError::Inconsistent { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let keys: Vec<FeatureKey> = beat
            .frames
            .iter()
            .map(|s| FeatureKey { seq: s.seq, region })
            .collect();
        let classification = self.classifier.classify(&keys, &self.tensors)?;
        let truth = majority_truth(&self.truth, &beat.frames);
        self.stats.beats_classified += 1;
        self.stats.frames_encoded += classification.frames_encoded as u64;
        if classification.label == crate::classify::Label::Unknown {
            self.stats.beats_unknown += 1;
        }
        if let Some(t) = truth {
            self.stats.beats_with_truth += 1;
            if classification.label == crate::classify::Label::View(t) {
                self.stats.beats_correct += 1;
            }
        }
        Ok(Some(BeatReport {
            beat: beat.clone(),
            classification,
            truth,
        }))
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
    let (best, &n) = counts
        .iter()
        .enumerate()
        .max_by_key(|&(i, n)| (*n, usize::MAX - i))?;
    (n > 0).then(|| View::ALL[best])
}
