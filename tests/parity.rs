//! Rust/PyTorch parity: tract running the committed demo bundle reproduces, on real gated
//! heartbeats, the logits and `alpha` PyTorch computes for the trained checkpoint.
//!
//! The fixture in `tests/data/parity/` (written by `models/make_parity_fixture.py`, which
//! `models/build_demo.py` runs after every export) holds four beats exactly as `echoview clips`
//! cut them from a small simulated session, and PyTorch's outputs for them. The bundle stores
//! its weights as float16 (`models/onnx_fp16_weights.py`), which moves a trained network's
//! logits by more than 1e-3 against the float32 checkpoint, so the tight comparison is against
//! PyTorch running the same float16-rounded (BatchNorm-folded) weights the bundle holds; the
//! float32 and onnxruntime references must still give the same label. PyTorch is not needed
//! here: the fixture carries the references.

use std::path::Path;

use echoview::bundle::Bundle;
use echoview::classify::softmax;
use echoview::engine::{self, EngineKind};
use serde::Deserialize;

/// `parity.json`, the fields this test uses.
#[derive(Deserialize)]
struct Fixture {
    /// Beats in `beats.bin`.
    beats: usize,
    /// Frames per beat.
    frames: usize,
    /// Frame height in pixels.
    height: usize,
    /// Frame width in pixels.
    width: usize,
    /// Normalisation mean the references were computed with.
    mean: f32,
    /// Normalisation standard deviation the references were computed with.
    std: f32,
    /// Max abs difference allowed between tract and `pytorch_fp16w`.
    tolerance: f32,
    /// The bundle the references belong to.
    bundle: BundleRef,
    /// One entry per beat, in `beats.bin` order.
    cases: Vec<Case>,
}

/// Which bundle the fixture was made for.
#[derive(Deserialize)]
struct BundleRef {
    /// SHA-256 of `encoder.onnx`.
    encoder_sha256: String,
    /// SHA-256 of `head.onnx`.
    head_sha256: String,
}

/// One beat's expected results.
#[derive(Deserialize)]
struct Case {
    /// The simulator's view of the beat (informative: parity, not accuracy, is tested).
    truth: String,
    /// The top view every reference gives.
    label: String,
    /// PyTorch with the bundle's float16-rounded, BatchNorm-folded weights.
    pytorch_fp16w: Outputs,
    /// PyTorch with the float32 checkpoint.
    pytorch_fp32: Outputs,
    /// onnxruntime on the bundle's files.
    onnxruntime: Outputs,
}

/// A head's outputs for one beat.
#[derive(Deserialize)]
struct Outputs {
    /// One logit per manifest label.
    logits: Vec<f32>,
    /// Weight of the spatial branch.
    alpha: f32,
}

/// Index of the largest value (the first one on ties).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[test]
fn tract_matches_pytorch_on_gated_beats() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/data/parity");
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap()).unwrap();
    let pixels = std::fs::read(dir.join("beats.bin")).unwrap();
    let bundle = Bundle::load(&root.join("models/demo")).unwrap();

    let regenerate = "models/demo changed: regenerate tests/data/parity with \
                      models/make_parity_fixture.py (models/build_demo.py runs it)";
    assert_eq!(
        bundle.manifest.encoder.sha256, fixture.bundle.encoder_sha256,
        "{regenerate}"
    );
    assert_eq!(
        bundle.manifest.head.sha256, fixture.bundle.head_sha256,
        "{regenerate}"
    );
    let input = &bundle.manifest.input;
    assert_eq!(
        (input.width as usize, input.height as usize),
        (fixture.width, fixture.height)
    );
    assert_eq!(bundle.frames_per_beat(), fixture.frames);
    assert_eq!((input.mean[0], input.std[0]), (fixture.mean, fixture.std));
    let frame_len = fixture.width * fixture.height;
    assert_eq!(pixels.len(), fixture.beats * fixture.frames * frame_len);
    assert_eq!(fixture.cases.len(), fixture.beats);
    assert!(fixture.beats >= 4, "the fixture should cover several views");

    let mut engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    // The daemon's normalisation (src/preprocess.rs), in the same f32 operations.
    let scale = 1.0 / (255.0 * input.std[0]);
    let offset = input.mean[0] / input.std[0];
    let dim = bundle.feature_dim();
    let mut image = vec![0.0f32; frame_len];
    let mut features = vec![0.0f32; fixture.frames * dim];
    let threshold = bundle.manifest.classify.reject_threshold;

    let mut worst = 0.0f32;
    for (b, case) in fixture.cases.iter().enumerate() {
        for k in 0..fixture.frames {
            let start = (b * fixture.frames + k) * frame_len;
            for (o, &p) in image.iter_mut().zip(&pixels[start..start + frame_len]) {
                *o = f32::from(p) * scale - offset;
            }
            engine
                .encode(&image, &mut features[k * dim..(k + 1) * dim])
                .unwrap();
        }
        let out = engine.head(&features).unwrap();
        assert_eq!(out.logits.len(), case.pytorch_fp16w.logits.len());

        let diff = out
            .logits
            .iter()
            .zip(&case.pytorch_fp16w.logits)
            .map(|(a, b)| (a - b).abs())
            .fold((out.alpha - case.pytorch_fp16w.alpha).abs(), f32::max);
        worst = worst.max(diff);
        assert!(
            diff <= fixture.tolerance,
            "beat {b} ({}): tract differs from PyTorch by {diff} > {}\ntract   {:?} alpha {}\n\
             pytorch {:?} alpha {}",
            case.truth,
            fixture.tolerance,
            out.logits,
            out.alpha,
            case.pytorch_fp16w.logits,
            case.pytorch_fp16w.alpha
        );

        let label = bundle.labels[argmax(&out.logits)].name();
        assert_eq!(label, case.label, "beat {b} ({})", case.truth);
        for (name, reference) in [
            ("pytorch_fp32", &case.pytorch_fp32),
            ("onnxruntime", &case.onnxruntime),
        ] {
            assert_eq!(
                bundle.labels[argmax(&reference.logits)].name(),
                case.label,
                "beat {b}: {name} in the fixture disagrees with its label"
            );
        }
        // The published decision (a view or `unknown`) agrees too, unless the confidence sits
        // within the tolerance of the threshold, where rounding may legitimately flip it.
        let ours = softmax(&out.logits)[argmax(&out.logits)];
        let theirs = softmax(&case.pytorch_fp16w.logits)[argmax(&case.pytorch_fp16w.logits)];
        if (theirs - threshold).abs() > fixture.tolerance {
            assert_eq!(
                ours >= threshold,
                theirs >= threshold,
                "beat {b}: confidence {ours} vs PyTorch {theirs}, threshold {threshold}"
            );
        }
    }
    eprintln!(
        "parity: {} beats, max abs difference tract vs PyTorch {worst:e}",
        fixture.beats
    );
}
