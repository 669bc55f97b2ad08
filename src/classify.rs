//! Classification of a gated heartbeat: encode each frame once, run the head once per beat,
//! turn logits into a label or `unknown`.
//!
//! The encoder is by far the expensive part, so features are cached by frame: a frame picked
//! by two beats (slow video, fast heart) is encoded once, and the daemon encodes frames ahead
//! of their beat's end into the cache (`daemon::lookahead`). An entry is found by the frame's
//! number and matches only if the encoder input is bit for bit the same, because the same
//! frame under another crop or mask is a different input: a cached feature is always exactly
//! what encoding the beat's own tensor would give.

use std::collections::VecDeque;

use crate::engine::{Engine, EngineError};
use crate::views::View;

/// A beat's label: a view, or `unknown` when the model is not confident enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// The model's top view, confident enough.
    View(View),
    /// Top probability below the reject threshold.
    Unknown,
}

impl Label {
    /// The name used in JSON output: the view's name or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Label::View(v) => v.name(),
            Label::Unknown => "unknown",
        }
    }
}

/// The classifier's verdict on one beat.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatClassification {
    /// The label to publish.
    pub label: Label,
    /// The most probable view, even when the label is `unknown`.
    pub top: View,
    /// Probability of `top`.
    pub confidence: f32,
    /// Softmax probabilities in manifest label order.
    pub probs: Vec<f32>,
    /// Weight of the spatial branch in the head's mix.
    pub alpha: f32,
    /// Frames the encoder actually ran on for this beat (the rest came from the cache).
    pub frames_encoded: usize,
}

/// A bounded most-recently-inserted store of frame features.
#[derive(Debug)]
pub struct FeatureCache {
    /// Entries in insertion order; the oldest is evicted first.
    entries: VecDeque<CacheEntry>,
    /// Most entries kept.
    capacity: usize,
}

/// One encoded frame.
#[derive(Debug)]
struct CacheEntry {
    /// Capture sequence number of the frame.
    seq: u64,
    /// The encoder input it was encoded from.
    tensor: Vec<f32>,
    /// The encoder's output.
    features: Vec<f32>,
}

impl FeatureCache {
    /// A cache holding at most `capacity` feature vectors.
    pub fn new(capacity: usize) -> FeatureCache {
        FeatureCache {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// The cached features of frame `seq` encoded from exactly `tensor`, if any.
    pub fn get(&self, seq: u64, tensor: &[f32]) -> Option<&[f32]> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.seq == seq && same_bits(&e.tensor, tensor))
            .map(|e| e.features.as_slice())
    }

    /// Stores features, evicting the oldest entry when full and reusing its buffers, so a
    /// warm cache allocates nothing.
    pub fn insert(&mut self, seq: u64, tensor: &[f32], features: &[f32]) {
        let mut entry = if self.entries.len() == self.capacity {
            self.entries.pop_front()
        } else {
            None
        }
        .unwrap_or_else(|| CacheEntry {
            seq,
            tensor: Vec::with_capacity(tensor.len()),
            features: Vec::with_capacity(features.len()),
        });
        entry.seq = seq;
        entry.tensor.clear();
        entry.tensor.extend_from_slice(tensor);
        entry.features.clear();
        entry.features.extend_from_slice(features);
        self.entries.push_back(entry);
    }

    /// Most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps at most `capacity` entries from now on, evicting the oldest beyond it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    /// Number of cached vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether two tensors are bit for bit equal (so `NaN` matches itself and `-0.0` does not
/// match `0.0`: the question is whether the encoder sees the same input).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Cache entries per frame of a beat: the last beat's frames, the open beat's frames encoded
/// ahead, and room for a prediction that missed.
const CACHE_BEATS: usize = 3;

/// Encoder + head + reject rule, around one engine.
pub struct Classifier {
    /// The engine running both networks.
    engine: Box<dyn Engine>,
    /// Views in logit order.
    labels: Vec<View>,
    /// Top probability below which a beat is `unknown`.
    reject_threshold: f32,
    /// T.
    frames_per_beat: usize,
    /// D.
    feature_dim: usize,
    /// Features of recent frames.
    cache: FeatureCache,
    /// The head's input, `T * D`, reused.
    beat_features: Vec<f32>,
    /// One frame's features, reused.
    frame_features: Vec<f32>,
}

impl Classifier {
    /// A classifier for `labels` (logit order), `frames_per_beat` frames of `feature_dim`
    /// features, rejecting below `reject_threshold`.
    pub fn new(
        engine: Box<dyn Engine>,
        labels: Vec<View>,
        frames_per_beat: usize,
        feature_dim: usize,
        reject_threshold: f32,
    ) -> Classifier {
        Classifier {
            engine,
            labels,
            reject_threshold,
            frames_per_beat,
            feature_dim,
            cache: FeatureCache::new(CACHE_BEATS * frames_per_beat),
            beat_features: vec![0.0; frames_per_beat * feature_dim],
            frame_features: vec![0.0; feature_dim],
        }
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Swaps in another engine (a restarted one, or the fallback after faults). Cached
    /// features came from the old engine and are dropped, so no beat mixes the two.
    pub fn replace_engine(&mut self, engine: Box<dyn Engine>) {
        self.engine = engine;
        self.cache = FeatureCache::new(self.cache.capacity());
    }

    /// Sizes the feature cache for `frames` frames, never below the default of three beats'
    /// worth: encoding every incoming frame ahead (`daemon::encode`) needs room for all the
    /// frames of the beat now open, not just its T phases.
    pub fn set_cache_frames(&mut self, frames: usize) {
        self.cache
            .set_capacity(frames.max(CACHE_BEATS * self.frames_per_beat));
    }

    /// Encodes frame `seq` from `tensor` into the cache unless it is there already; `true`
    /// when the encoder ran. For frames expected in a beat that has not closed yet.
    pub fn encode_ahead(&mut self, seq: u64, tensor: &[f32]) -> Result<bool, EngineError> {
        if self.cache.get(seq, tensor).is_some() {
            return Ok(false);
        }
        self.engine.encode(tensor, &mut self.frame_features)?;
        self.cache.insert(seq, tensor, &self.frame_features);
        Ok(true)
    }

    /// Classifies a beat: `seqs[i]` is frame i's sequence number and `tensors` holds the T
    /// preprocessed frames back to back (`tensor_len` floats each). Frames already in the
    /// cache with the same tensor are not encoded again.
    pub fn classify(
        &mut self,
        seqs: &[u64],
        tensors: &[f32],
    ) -> Result<BeatClassification, EngineError> {
        if seqs.len() != self.frames_per_beat {
            return Err(EngineError::BadLength {
                what: "gated frames",
                expected: self.frames_per_beat,
                actual: seqs.len(),
            });
        }
        let tensor_len = tensors.len() / seqs.len();
        let d = self.feature_dim;
        let mut frames_encoded = 0;
        for (i, &seq) in seqs.iter().enumerate() {
            let dst = &mut self.beat_features[i * d..(i + 1) * d];
            let image = &tensors[i * tensor_len..(i + 1) * tensor_len];
            if let Some(cached) = self.cache.get(seq, image) {
                dst.copy_from_slice(cached);
                continue;
            }
            self.engine.encode(image, &mut self.frame_features)?;
            frames_encoded += 1;
            dst.copy_from_slice(&self.frame_features);
            self.cache.insert(seq, image, &self.frame_features);
        }
        let head = self.engine.head(&self.beat_features)?;
        if head.logits.len() != self.labels.len() {
            return Err(EngineError::BadLength {
                what: "head logits",
                expected: self.labels.len(),
                actual: head.logits.len(),
            });
        }
        let probs = softmax(&head.logits);
        let (top_index, &confidence) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        let top = self.labels[top_index];
        let label = if confidence >= self.reject_threshold && confidence.is_finite() {
            Label::View(top)
        } else {
            Label::Unknown
        };
        Ok(BeatClassification {
            label,
            top,
            confidence,
            probs,
            alpha: head.alpha,
            frames_encoded,
        })
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HeadOutput;

    /// An engine with arithmetic "networks": the feature of a frame is its mean pixel, and the
    /// head puts `scale * mean feature` on the class picked by the first frame's feature.
    /// Enough to check the classifier's bookkeeping without a model file.
    struct ArithmeticEngine {
        encodes: usize,
        scale: f32,
        classes: usize,
    }

    impl Engine for ArithmeticEngine {
        fn name(&self) -> &'static str {
            "arithmetic"
        }
        fn encode(&mut self, image: &[f32], features: &mut [f32]) -> Result<(), EngineError> {
            self.encodes += 1;
            let mean = image.iter().sum::<f32>() / image.len() as f32;
            features.fill(mean);
            Ok(())
        }
        fn head(&mut self, features: &[f32]) -> Result<HeadOutput, EngineError> {
            let mut logits = vec![0.0; self.classes];
            let class = (features[0].abs() as usize) % self.classes;
            logits[class] = self.scale;
            Ok(HeadOutput {
                logits,
                alpha: 0.25,
            })
        }
    }

    fn classifier(scale: f32, threshold: f32) -> Classifier {
        let engine = ArithmeticEngine {
            encodes: 0,
            scale,
            classes: 3,
        };
        Classifier::new(
            Box::new(engine),
            vec![View::Plax, View::A4c, View::Subcostal],
            2,
            3,
            threshold,
        )
    }

    #[test]
    fn confident_beats_get_a_view_and_weak_ones_unknown() {
        let tensors = [1.0, 1.0, 1.0, 1.0];
        let mut sure = classifier(10.0, 0.6);
        let c = sure.classify(&[1, 2], &tensors).unwrap();
        assert_eq!(c.label, Label::View(View::A4c));
        assert!(c.confidence > 0.99);
        assert_eq!(c.alpha, 0.25);
        assert!((c.probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);

        let mut unsure = classifier(0.5, 0.6);
        let c = unsure.classify(&[1, 2], &tensors).unwrap();
        assert_eq!((c.label, c.top), (Label::Unknown, View::A4c));
        assert_eq!(c.label.name(), "unknown");
    }

    #[test]
    fn a_frame_is_encoded_once_per_input() {
        let mut c = classifier(10.0, 0.5);
        let tensors = [2.0; 4];
        assert_eq!(c.classify(&[1, 2], &tensors).unwrap().frames_encoded, 2);
        // Frame 2 again with the same tensor: cached. Frame 3 is new.
        assert_eq!(c.classify(&[2, 3], &tensors).unwrap().frames_encoded, 1);
        // Frame 3 preprocessed differently (another crop or mask) must be encoded again.
        assert_eq!(
            c.classify(&[3, 2], &[2.5, 2.0, 2.0, 2.0])
                .unwrap()
                .frames_encoded,
            1
        );
    }

    #[test]
    fn frames_encoded_ahead_are_not_encoded_again() {
        let mut c = classifier(10.0, 0.5);
        assert!(c.encode_ahead(5, &[1.0, 1.0]).unwrap());
        assert!(!c.encode_ahead(5, &[1.0, 1.0]).unwrap(), "already cached");
        assert!(c.encode_ahead(6, &[1.0, 1.0]).unwrap());
        let ahead = c.classify(&[5, 6], &[1.0; 4]).unwrap();
        assert_eq!(ahead.frames_encoded, 0);
        // The same result as encoding at the beat's end.
        let mut fresh = classifier(10.0, 0.5);
        let now = fresh.classify(&[5, 6], &[1.0; 4]).unwrap();
        assert_eq!(now.frames_encoded, 2);
        assert_eq!((now.probs, now.label), (ahead.probs, ahead.label));
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let mut cache = FeatureCache::new(3);
        for seq in 0..10 {
            cache.insert(seq, &[0.5], &[seq as f32]);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(6, &[0.5]).is_none());
        assert_eq!(cache.get(9, &[0.5]), Some(&[9.0][..]));
        assert!(cache.get(9, &[-0.5]).is_none(), "another input");
        cache.set_capacity(2);
        assert_eq!(cache.len(), 2, "shrinking evicts the oldest");
        assert!(cache.get(7, &[0.5]).is_none());
        cache.set_capacity(5);
        for seq in 10..13 {
            cache.insert(seq, &[0.5], &[seq as f32]);
        }
        assert_eq!((cache.len(), cache.capacity()), (5, 5));
        assert_eq!(
            cache.get(8, &[0.5]),
            Some(&[8.0][..]),
            "growing keeps entries"
        );
    }

    #[test]
    fn the_cache_never_shrinks_below_three_beats() {
        let mut c = classifier(10.0, 0.5);
        c.set_cache_frames(1);
        assert_eq!(c.cache.capacity(), CACHE_BEATS * 2);
        c.set_cache_frames(50);
        assert_eq!(c.cache.capacity(), 50);
    }

    #[test]
    fn wrong_frame_count_is_an_error() {
        let mut c = classifier(1.0, 0.5);
        assert!(matches!(
            c.classify(&[1], &[0.0; 2]),
            Err(EngineError::BadLength {
                what: "gated frames",
                ..
            })
        ));
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }
}
