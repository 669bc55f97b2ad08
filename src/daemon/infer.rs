//! The inference side: what classifies a gated beat, and the inbox that feeds it.
//!
//! Inference is the slow stage. When it falls behind, an old beat is worth less than a fresh
//! one (the probe has moved on), so the gating thread posts each beat into a single slot of
//! the [`Inbox`]: a beat not yet taken is replaced by the newer one and counted as dropped,
//! and inference always works on the freshest beat. In idle time it encodes frames of the
//! beat still open, ahead of its end (`daemon::lookahead`, `daemon::speculate`).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::bundle::Bundle;
use crate::classify::BeatClassification;
use crate::engine::{self, EngineKind, TrtOptions};
use crate::gate::Heartbeat;
use crate::media::Frame;
pub use crate::pipeline::ModelStage;
use crate::pipeline::PipelineError;

use super::encode::Average;
use super::shared::{Shared, lock};

/// Classifies one gated beat. [`ModelStage`] is the real one; tests may supply others.
pub trait ClassifyBeat: Send {
    /// The engine's name for `hello` and `status`.
    fn engine_name(&self) -> &'static str;

    /// Classifies `beat` from its T `frames` in phase order. `Ok(None)` when the frames are
    /// unusable (malformed, or their size changed mid-beat); the beat is then skipped.
    fn classify(
        &mut self,
        beat: &Heartbeat,
        frames: &[&Frame],
    ) -> Result<Option<BeatClassification>, PipelineError>;

    /// Encodes `frame` ahead of the end of the beat it is expected in (see
    /// `daemon::lookahead`); `Ok(true)` when the encoder ran. Classifiers without a feature
    /// cache do nothing.
    fn encode_ahead(&mut self, frame: &Frame) -> Result<bool, PipelineError> {
        let _ = frame;
        Ok(false)
    }

    /// The beat about to close has `frames`, known while the QRS detector holds its R-peak
    /// (`daemon::speculate`): frames encoded ahead until it is classified are preprocessed
    /// under the region it will have. Classifiers without a feature cache do nothing.
    fn expect_beat(&mut self, frames: &[Frame]) -> Result<(), PipelineError> {
        let _ = frames;
        Ok(())
    }

    /// Sizes the feature cache for `frames` frames, for when every frame is encoded ahead
    /// (`daemon::encode`). Classifiers without a feature cache ignore it.
    fn set_cache_frames(&mut self, frames: usize) {
        let _ = frames;
    }

    /// Replaces an engine that keeps failing. `attempt` counts recoveries since the engine
    /// last worked for a while: the first reopens the same engine (a fault may be transient:
    /// a GPU reset, a driver hiccup), later ones fall back to tract, which runs everywhere.
    /// On `Err` the old engine stays and the reason is reported.
    fn recover(&mut self, attempt: u32) -> Result<Recovered, String> {
        let _ = attempt;
        Err("this classifier cannot reopen its engine".into())
    }

    /// Runs the model on `engine` from now on: a TensorRT engine on a plan rebuilt in the
    /// background (`daemon::planswitch`), opened and checked against tract already. `false`
    /// (and `engine` dropped) when this classifier cannot change engines.
    fn switch_engine(&mut self, engine: Box<dyn engine::Engine>) -> bool {
        drop(engine);
        false
    }
}

/// The engine a recovery left running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Its name.
    pub engine: &'static str,
    /// Why it is not the engine configured, when it is the fallback.
    pub fallback: Option<String>,
}

/// The daemon's classifier: the model stage, and what it takes to reopen its engine.
pub struct RecoverableModel {
    /// Preprocessing, feature cache, engine and head.
    stage: ModelStage,
    /// The bundle, to reopen the engine from.
    bundle: Bundle,
    /// The engine configured.
    kind: EngineKind,
    /// Where TensorRT's files are, so a reopened engine uses the configured plan.
    options: TrtOptions,
}

impl RecoverableModel {
    /// `bundle` running on `engine`, which was opened as `kind` asked (and is reopened so).
    pub fn new(
        bundle: Bundle,
        kind: EngineKind,
        engine: Box<dyn engine::Engine>,
    ) -> RecoverableModel {
        RecoverableModel {
            stage: ModelStage::new(&bundle, engine),
            options: TrtOptions::for_bundle(&bundle),
            bundle,
            kind,
        }
    }

    /// Reopens TensorRT from `options` (the config's plan) rather than the bundle's
    /// defaults.
    pub fn with_trt_options(mut self, options: TrtOptions) -> RecoverableModel {
        self.options = options;
        self
    }
}

impl ClassifyBeat for RecoverableModel {
    fn engine_name(&self) -> &'static str {
        self.stage.engine_name()
    }

    fn classify(
        &mut self,
        beat: &Heartbeat,
        frames: &[&Frame],
    ) -> Result<Option<BeatClassification>, PipelineError> {
        self.stage.classify(beat, frames)
    }

    fn encode_ahead(&mut self, frame: &Frame) -> Result<bool, PipelineError> {
        self.stage.encode_ahead(frame)
    }

    fn expect_beat(&mut self, frames: &[Frame]) -> Result<(), PipelineError> {
        ClassifyBeat::expect_beat(&mut self.stage, frames)
    }

    fn set_cache_frames(&mut self, frames: usize) {
        self.stage.set_cache_frames(frames);
    }

    fn switch_engine(&mut self, engine: Box<dyn engine::Engine>) -> bool {
        self.stage.replace_engine(engine);
        true
    }

    fn recover(&mut self, attempt: u32) -> Result<Recovered, String> {
        let kind = if attempt == 0 {
            self.kind
        } else {
            EngineKind::Tract
        };
        let engine = engine::select(&self.bundle, kind, &self.options)
            .map_err(|e| e.to_string())?
            .engine;
        self.stage.replace_engine(engine);
        let fallback = (kind != self.kind).then(|| {
            format!(
                "{} kept failing after a restart; running on {}",
                self.kind.name(),
                kind.name()
            )
        });
        Ok(Recovered {
            engine: kind.name(),
            fallback,
        })
    }
}

impl ClassifyBeat for ModelStage {
    fn engine_name(&self) -> &'static str {
        ModelStage::engine_name(self)
    }

    fn classify(
        &mut self,
        beat: &Heartbeat,
        frames: &[&Frame],
    ) -> Result<Option<BeatClassification>, PipelineError> {
        ModelStage::classify(self, beat, frames)
    }

    fn encode_ahead(&mut self, frame: &Frame) -> Result<bool, PipelineError> {
        ModelStage::encode_ahead(self, frame)
    }

    fn expect_beat(&mut self, frames: &[Frame]) -> Result<(), PipelineError> {
        let frames: Vec<&Frame> = frames.iter().collect();
        ModelStage::expect_beat(self, &frames)
    }

    fn set_cache_frames(&mut self, frames: usize) {
        ModelStage::set_cache_frames(self, frames);
    }

    fn switch_engine(&mut self, engine: Box<dyn engine::Engine>) -> bool {
        self.replace_engine(engine);
        true
    }
}

/// The per-frame encoder latency of the engine running now, from the frames encoded ahead
/// (preprocessing and one encoder pass each), published in `status` as `engine.frame_ms`.
#[derive(Debug, Default)]
pub struct Latency {
    /// The engine measured; another one starts the average afresh.
    engine: &'static str,
    /// Milliseconds per frame.
    average: Average,
}

impl Latency {
    /// Starts afresh when the engine running is no longer the one measured (a recovery or a
    /// plan switch replaced it): its latency says nothing of the new one.
    pub fn follow(&mut self, engine: &'static str, shared: &Shared) {
        if self.engine != engine {
            *self = Latency {
                engine,
                average: Average::default(),
            };
            shared.set_frame_ms(None);
        }
    }

    /// Adds one frame's time.
    pub fn push(&mut self, took: Duration, shared: &Shared) {
        self.average.push(took.as_secs_f64() * 1e3);
        shared.set_frame_ms(self.average.get());
    }
}

/// What the inference thread works on next.
#[derive(Debug, PartialEq, Eq)]
pub enum Task<B, A> {
    /// A closed beat to classify.
    Beat(B),
    /// A frame to encode ahead of its beat (see `daemon::lookahead`).
    Ahead(A),
}

/// The inference thread's inbox: one slot for the freshest closed beat, where a newer beat
/// replaces one not yet taken, and a short queue of frames to encode ahead in idle time,
/// where the oldest is dropped when it is full. Beats always come first: a frame encoded
/// ahead is worth something only if it does not delay a beat.
#[derive(Debug)]
pub struct Inbox<B, A> {
    /// The waiting beat and frames.
    state: Mutex<(Option<B>, VecDeque<A>)>,
    /// Signalled when anything is posted.
    posted: Condvar,
    /// Most frames waiting to be encoded ahead.
    ahead_capacity: usize,
}

impl<B, A> Inbox<B, A> {
    /// An empty inbox holding up to `ahead_capacity` frames to encode ahead.
    pub fn new(ahead_capacity: usize) -> Inbox<B, A> {
        Inbox {
            state: Mutex::new((None, VecDeque::new())),
            posted: Condvar::new(),
            ahead_capacity,
        }
    }

    /// Posts a beat; returns `true` when it replaced a beat nobody had taken.
    pub fn post_beat(&self, beat: B) -> bool {
        let replaced = lock(&self.state).0.replace(beat).is_some();
        self.posted.notify_one();
        replaced
    }

    /// Posts a frame to encode ahead; returns `true` when the oldest waiting one was dropped
    /// to make room (inference has no idle time to spare).
    pub fn post_ahead(&self, frame: A) -> bool {
        let mut state = lock(&self.state);
        let full = self.ahead_capacity == 0 || state.1.len() >= self.ahead_capacity;
        if full {
            state.1.pop_front();
        }
        if self.ahead_capacity > 0 {
            state.1.push_back(frame);
        }
        drop(state);
        self.posted.notify_one();
        full
    }

    /// Drops every frame waiting to be encoded ahead and returns how many: they were
    /// predicted for a beat whose real frames are now known (`daemon::speculate`), and
    /// encoding them would only delay those.
    pub fn clear_ahead(&self) -> usize {
        let mut state = lock(&self.state);
        let dropped = state.1.len();
        state.1.clear();
        dropped
    }

    /// The next task, beats first, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<Task<B, A>> {
        let state = lock(&self.state);
        let (mut state, _) = self
            .posted
            .wait_timeout_while(state, timeout, |s| s.0.is_none() && s.1.is_empty())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(beat) = state.0.take() {
            return Some(Task::Beat(beat));
        }
        state.1.pop_front().map(Task::Ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(1);

    #[test]
    fn the_freshest_beat_wins_and_replacements_are_reported() {
        let m: Inbox<u32, ()> = Inbox::new(2);
        assert!(!m.post_beat(1));
        assert!(m.post_beat(2));
        assert!(m.post_beat(3));
        assert_eq!(m.take(SOON), Some(Task::Beat(3)));
        assert_eq!(m.take(SOON), None);
    }

    #[test]
    fn beats_come_before_frames_and_the_oldest_frame_is_dropped() {
        let m: Inbox<u32, u32> = Inbox::new(2);
        assert!(!m.post_ahead(10));
        assert!(!m.post_ahead(11));
        assert!(m.post_ahead(12), "full: 10 is dropped");
        m.post_beat(1);
        assert_eq!(m.take(SOON), Some(Task::Beat(1)));
        assert_eq!(m.take(SOON), Some(Task::Ahead(11)));
        assert_eq!(m.take(SOON), Some(Task::Ahead(12)));
        assert_eq!(m.take(SOON), None);
        let none: Inbox<u32, u32> = Inbox::new(0);
        assert!(none.post_ahead(1));
        assert_eq!(none.take(SOON), None, "no lookahead at all");
    }

    #[test]
    fn clearing_the_frames_ahead_leaves_the_beat() {
        let m: Inbox<u32, u32> = Inbox::new(4);
        m.post_ahead(10);
        m.post_ahead(11);
        m.post_beat(1);
        assert_eq!(m.clear_ahead(), 2);
        m.post_ahead(20);
        assert_eq!(m.take(SOON), Some(Task::Beat(1)));
        assert_eq!(m.take(SOON), Some(Task::Ahead(20)));
        assert_eq!(m.take(SOON), None);
        assert_eq!(m.clear_ahead(), 0);
    }

    #[test]
    fn take_wakes_when_a_beat_is_posted() {
        let m: std::sync::Arc<Inbox<u32, ()>> = std::sync::Arc::new(Inbox::new(1));
        let poster = m.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            poster.post_beat(7)
        });
        assert_eq!(m.take(Duration::from_secs(5)), Some(Task::Beat(7)));
        assert!(!t.join().unwrap());
    }
}
