//! The classifying data path in one push-driven object: ECG and frames in, classified
//! heartbeats out through a [`BeatSink`].
//!
//! `Pipeline` is a [`BeatCutter`] (detector, quality, gate, frame history) followed by the
//! preprocessor and the classifier. It never does I/O itself: readers push [`Input`]s, and
//! results go to whatever sink the caller supplies (JSON lines on stdout, a socket, a
//! recorder, a test collector).

use crate::beats::{BeatCutter, CutEvent, CutStats};
use crate::bundle::Bundle;
use crate::classify::{BeatClassification, Classifier, Label};
use crate::ecg::EcgError;
use crate::engine::{Engine, EngineError};
use crate::gate::{Heartbeat, SkipReason, SkippedBeat};
use crate::media::Frame;
use crate::preprocess::{PreprocessConfig, PreprocessError, Preprocessor};
use crate::views::View;

pub use crate::beats::Input;

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
    /// The front half's counters (frames, samples, R-peaks, skipped beats).
    pub cut: CutStats,
    /// Beats classified (labelled with a view or `unknown`).
    pub beats_classified: u64,
    /// Of those, labelled `unknown`.
    pub beats_unknown: u64,
    /// Of those, how many carried truth.
    pub beats_with_truth: u64,
    /// Of those with truth, labelled with the true view.
    pub beats_correct: u64,
    /// Frames encoded by the engine (the rest of the gated frames came from the cache).
    pub frames_encoded: u64,
}

/// The whole per-session data path. See the module documentation.
pub struct Pipeline {
    /// Sources to gated heartbeats.
    cutter: BeatCutter,
    /// Preprocessing, encoder, head and reject rule.
    model: ModelStage,
    /// Counters of the back half.
    stats: PipelineStats,
}

impl Pipeline {
    /// A pipeline for `bundle` running on `engine`.
    pub fn new(bundle: &Bundle, engine: Box<dyn Engine>) -> Pipeline {
        Pipeline {
            cutter: BeatCutter::new(bundle.frames_per_beat()),
            model: ModelStage::new(bundle, engine),
            stats: PipelineStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            cut: self.cutter.stats().clone(),
            ..self.stats.clone()
        }
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.model.engine_name()
    }

    /// Feeds one input; any beats it completes go to `sink`.
    pub fn push(&mut self, input: Input, sink: &mut dyn BeatSink) -> Result<(), PipelineError> {
        self.cutter.push(input)?;
        self.drain(sink)
    }

    /// End of stream: flushes the detector and the gate.
    pub fn finish(&mut self, sink: &mut dyn BeatSink) -> Result<(), PipelineError> {
        self.cutter.finish();
        self.drain(sink)
    }

    /// Classifies every beat the cutter has ready and reports everything to the sink.
    fn drain(&mut self, sink: &mut dyn BeatSink) -> Result<(), PipelineError> {
        while let Some(event) = self.cutter.next_event() {
            match event {
                CutEvent::Skipped(skipped) => sink.skipped(&skipped)?,
                CutEvent::Beat { beat, truth } => match self.classify(&beat)? {
                    Some(classification) => {
                        self.stats.count(&classification, truth);
                        sink.beat(&BeatReport {
                            beat,
                            classification,
                            truth,
                        })?;
                    }
                    None => {
                        let reason = SkipReason::UnusableFrames;
                        self.cutter.count_skip(reason.name());
                        sink.skipped(&SkippedBeat {
                            beat: beat.beat,
                            start_ns: beat.start_ns,
                            end_ns: beat.end_ns,
                            reason,
                        })?;
                    }
                },
            }
        }
        Ok(())
    }

    /// Preprocesses and classifies one beat. `None` when its frames are gone or malformed.
    fn classify(&mut self, beat: &Heartbeat) -> Result<Option<BeatClassification>, PipelineError> {
        match self.cutter.frames_of(beat) {
            Some(frames) => self.model.classify(beat, &frames),
            None => Ok(None),
        }
    }
}

/// A model bundle on an engine: preprocessing, the encoder with its feature cache, the head
/// and the reject rule. [`Pipeline`] runs it on the gating thread; the daemon runs it on its
/// own inference thread.
pub struct ModelStage {
    /// Frames to tensors.
    preprocessor: Preprocessor,
    /// The beat's tensors, reused.
    tensors: Vec<f32>,
    /// The beat's frame numbers, reused.
    seqs: Vec<u64>,
    /// Encoder, head and reject rule.
    classifier: Classifier,
}

impl ModelStage {
    /// The stage for `bundle` running on `engine`.
    pub fn new(bundle: &Bundle, engine: Box<dyn Engine>) -> ModelStage {
        let t = bundle.frames_per_beat();
        let preprocessor = Preprocessor::new(PreprocessConfig::for_bundle(bundle));
        let tensors = vec![0.0; t * preprocessor.tensor_len()];
        ModelStage {
            preprocessor,
            tensors,
            seqs: Vec::with_capacity(t),
            classifier: Classifier::new(
                engine,
                bundle.labels.clone(),
                t,
                bundle.feature_dim(),
                bundle.manifest.classify.reject_threshold,
            ),
        }
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.classifier.engine_name()
    }

    /// Swaps in another engine for the same bundle (see [`Classifier::replace_engine`]).
    pub fn replace_engine(&mut self, engine: Box<dyn Engine>) {
        self.classifier.replace_engine(engine);
    }

    /// Sizes the feature cache for `frames` frames (see [`Classifier::set_cache_frames`]).
    pub fn set_cache_frames(&mut self, frames: usize) {
        self.classifier.set_cache_frames(frames);
    }

    /// Classifies `beat` from its T `frames` in phase order. `Ok(None)` when the frames are
    /// unusable (malformed, or their size changed mid-beat).
    pub fn classify(
        &mut self,
        beat: &Heartbeat,
        frames: &[&Frame],
    ) -> Result<Option<BeatClassification>, PipelineError> {
        match self.preprocessor.prepare_beat(frames, &mut self.tensors) {
            Ok(_) => {}
            Err(PreprocessError::BadFrame(_) | PreprocessError::Inconsistent { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        self.seqs.clear();
        self.seqs.extend(beat.frames.iter().map(|s| s.seq));
        Ok(Some(self.classifier.classify(&self.seqs, &self.tensors)?))
    }

    /// The beat about to close has `frames` (see [`Preprocessor::expect_beat`]): frames
    /// encoded ahead from now until it is classified are preprocessed under the region it
    /// will have, even when that is not the last beat's. Unusable frames change nothing.
    pub fn expect_beat(&mut self, frames: &[&Frame]) -> Result<(), PipelineError> {
        match self.preprocessor.expect_beat(frames) {
            Ok(()) | Err(PreprocessError::BadFrame(_) | PreprocessError::Inconsistent { .. }) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Encodes `frame` into the feature cache ahead of its beat, preprocessed under the
    /// region of the last beat classified (a probe held still keeps its region, so the beat
    /// will most likely give the frame the very same tensor, and find it cached). `Ok(false)`
    /// when nothing was encoded: no beat yet, the frame is unusable, or it is cached already.
    pub fn encode_ahead(&mut self, frame: &Frame) -> Result<bool, PipelineError> {
        let len = self.preprocessor.tensor_len();
        let tensor = &mut self.tensors[..len];
        match self
            .preprocessor
            .prepare_frame_like_last_beat(frame, tensor)
        {
            Ok(true) => {}
            Ok(false)
            | Err(PreprocessError::BadFrame(_) | PreprocessError::Inconsistent { .. }) => {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(self.classifier.encode_ahead(frame.seq, tensor)?)
    }
}

impl PipelineStats {
    /// Counts one published beat against its truth.
    fn count(&mut self, classification: &BeatClassification, truth: Option<View>) {
        self.beats_classified += 1;
        self.frames_encoded += classification.frames_encoded as u64;
        if classification.label == Label::Unknown {
            self.beats_unknown += 1;
        }
        if let Some(t) = truth {
            self.beats_with_truth += 1;
            if classification.label == Label::View(t) {
                self.beats_correct += 1;
            }
        }
    }
}
