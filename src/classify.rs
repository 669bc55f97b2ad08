//! Classification of a gated heartbeat: encode each frame once, run the head once per beat,
//! turn logits into a label or `unknown`.
//!
//! The encoder is by far the expensive part, so features are cached by frame: a frame picked
//! by two beats (slow video, fast heart) is encoded once, and a later speculative encoder can
//! fill the cache before a beat closes. The cache key includes the beat's crop and mask,
//! because the same frame preprocessed under another mask is a different input.

use std::collections::VecDeque;

use crate::engine::{Engine, EngineError};
use crate::preprocess::BeatRegion;
use crate::views::View;

/// Identifies one preprocessed frame: which frame, under which crop and mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureKey {
    /// Capture sequence number of the frame.
    pub seq: u64,
    /// The crop and mask it was preprocessed under.
    pub region: BeatRegion,
}

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
    entries: VecDeque<(FeatureKey, Vec<f32>)>,
    /// Most entries kept: two beats' worth covers every frame a new beat can share with an
    /// old one.
    capacity: usize,
}

impl FeatureCache {
    /// A cache holding at most `capacity` feature vectors.
    pub fn new(capacity: usize) -> FeatureCache {
        FeatureCache {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// The cached features of `key`, if any.
    pub fn get(&self, key: &FeatureKey) -> Option<&[f32]> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Stores features, evicting the oldest entry when full and reusing its buffer.
    pub fn insert(&mut self, key: FeatureKey, features: &[f32]) {
        let mut buf = if self.entries.len() == self.capacity {
            self.entries.pop_front().map(|(_, v)| v).unwrap_or_default()
        } else {
            Vec::with_capacity(features.len())
        };
        buf.clear();
        buf.extend_from_slice(features);
        self.entries.push_back((key, buf));
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
            cache: FeatureCache::new(2 * frames_per_beat),
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
        self.cache = FeatureCache::new(2 * self.frames_per_beat);
    }

    /// Classifies a beat: `keys[i]` identifies frame i and `tensors` holds the T preprocessed
    /// frames back to back (`tensor_len` floats each). Frames already in the cache are not
    /// encoded again.
    pub fn classify(
        &mut self,
        keys: &[FeatureKey],
        tensors: &[f32],
    ) -> Result<BeatClassification, EngineError> {
        if keys.len() != self.frames_per_beat {
            return Err(EngineError::BadLength {
                what: "gated frames",
                expected: self.frames_per_beat,
                actual: keys.len(),
            });
        }
        let tensor_len = tensors.len() / keys.len();
        let d = self.feature_dim;
        let mut frames_encoded = 0;
        for (i, key) in keys.iter().enumerate() {
            let dst = &mut self.beat_features[i * d..(i + 1) * d];
            if let Some(cached) = self.cache.get(key) {
                dst.copy_from_slice(cached);
                continue;
            }
            let image = &tensors[i * tensor_len..(i + 1) * tensor_len];
            self.engine.encode(image, &mut self.frame_features)?;
            frames_encoded += 1;
            dst.copy_from_slice(&self.frame_features);
            self.cache.insert(*key, &self.frame_features);
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
    use crate::preprocess::Rect;

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

    fn key(seq: u64) -> FeatureKey {
        FeatureKey {
            seq,
            region: BeatRegion {
                crop: Rect {
                    x: 0,
                    y: 0,
                    width: 4,
                    height: 4,
                },
                mask_fingerprint: 7,
            },
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
        let c = sure.classify(&[key(1), key(2)], &tensors).unwrap();
        assert_eq!(c.label, Label::View(View::A4c));
        assert!(c.confidence > 0.99);
        assert_eq!(c.alpha, 0.25);
        assert!((c.probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);

        let mut unsure = classifier(0.5, 0.6);
        let c = unsure.classify(&[key(1), key(2)], &tensors).unwrap();
        assert_eq!((c.label, c.top), (Label::Unknown, View::A4c));
        assert_eq!(c.label.name(), "unknown");
    }

    #[test]
    fn a_frame_is_encoded_once_per_region() {
        let mut c = classifier(10.0, 0.5);
        let tensors = [2.0; 4];
        assert_eq!(
            c.classify(&[key(1), key(2)], &tensors)
                .unwrap()
                .frames_encoded,
            2
        );
        // Frame 2 again under the same region: cached. Frame 3 is new.
        assert_eq!(
            c.classify(&[key(2), key(3)], &tensors)
                .unwrap()
                .frames_encoded,
            1
        );
        // Frame 3 under another mask must be encoded again.
        let mut other = key(3);
        other.region.mask_fingerprint = 9;
        assert_eq!(
            c.classify(&[other, key(3)], &tensors)
                .unwrap()
                .frames_encoded,
            1
        );
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let mut cache = FeatureCache::new(3);
        for seq in 0..10 {
            cache.insert(key(seq), &[seq as f32]);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key(6)).is_none());
        assert_eq!(cache.get(&key(9)), Some(&[9.0][..]));
    }

    #[test]
    fn wrong_frame_count_is_an_error() {
        let mut c = classifier(1.0, 0.5);
        assert!(matches!(
            c.classify(&[key(1)], &[0.0; 2]),
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
