//! The inference side: what classifies a gated beat, and the one-beat mailbox that feeds it.
//!
//! Inference is the slow stage. When it falls behind, an old beat is worth less than a fresh
//! one (the probe has moved on), so the gating thread posts each beat into a single-slot
//! [`Mailbox`]: a beat not yet taken is replaced by the newer one and counted as dropped,
//! and inference always works on the freshest beat.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::bundle::Bundle;
use crate::classify::BeatClassification;
use crate::engine::{self, EngineKind};
use crate::gate::Heartbeat;
use crate::media::Frame;
pub use crate::pipeline::ModelStage;
use crate::pipeline::PipelineError;

use super::shared::lock;

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

    /// Replaces an engine that keeps failing. `attempt` counts recoveries since the engine
    /// last worked for a while: the first reopens the same engine (a fault may be transient:
    /// a GPU reset, a driver hiccup), later ones fall back to tract, which runs everywhere.
    /// On `Err` the old engine stays and the reason is reported.
    fn recover(&mut self, attempt: u32) -> Result<Recovered, String> {
        let _ = attempt;
        Err("this classifier cannot reopen its engine".into())
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
}

impl RecoverableModel {
    /// `bundle` running on `kind`, opened now.
    pub fn open(bundle: Bundle, kind: EngineKind) -> Result<RecoverableModel, engine::EngineError> {
        let stage = ModelStage::new(&bundle, engine::open(&bundle, kind)?);
        Ok(RecoverableModel {
            stage,
            bundle,
            kind,
        })
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

    fn recover(&mut self, attempt: u32) -> Result<Recovered, String> {
        let kind = if attempt == 0 {
            self.kind
        } else {
            EngineKind::Tract
        };
        let engine = engine::open(&self.bundle, kind).map_err(|e| e.to_string())?;
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
}

/// A single-slot mailbox where the newest item replaces one not yet taken.
#[derive(Debug)]
pub struct Mailbox<T> {
    /// The waiting item.
    slot: Mutex<Option<T>>,
    /// Signalled when an item is posted.
    posted: Condvar,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            slot: Mutex::new(None),
            posted: Condvar::new(),
        }
    }
}

impl<T> Mailbox<T> {
    /// Posts `item`; returns `true` when it replaced an item nobody had taken.
    pub fn post(&self, item: T) -> bool {
        let replaced = lock(&self.slot).replace(item).is_some();
        self.posted.notify_one();
        replaced
    }

    /// Takes the item, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<T> {
        let slot = lock(&self.slot);
        let (mut slot, _) = self
            .posted
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshest_item_wins_and_replacements_are_reported() {
        let m = Mailbox::default();
        assert!(!m.post(1));
        assert!(m.post(2));
        assert!(m.post(3));
        assert_eq!(m.take(Duration::from_millis(1)), Some(3));
        assert_eq!(m.take(Duration::from_millis(1)), None);
    }

    #[test]
    fn take_wakes_when_an_item_is_posted() {
        let m = std::sync::Arc::new(Mailbox::default());
        let poster = m.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            poster.post(7)
        });
        assert_eq!(m.take(Duration::from_secs(5)), Some(7));
        assert!(!t.join().unwrap());
    }
}
