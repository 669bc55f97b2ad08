//! A bundle's self-test: run a known input through an engine and compare with the outputs the
//! exporter computed (`reference.json`).
//!
//! Hashes prove the files are the ones exported; this proves the engine computes what the
//! training toolchain computed with them, which catches an unsupported operator, a wrong
//! layout or a precision problem before a cart trusts a new model or a new engine.

use std::fmt;

use serde::Deserialize;

use crate::bundle::Bundle;
use crate::engine::{Engine, EngineError};

/// The reference frame formula this build reproduces; a bundle using another is refused
/// rather than compared against the wrong input.
pub const REFERENCE_FORMULA: &str =
    "pixel(x, y, k) = ((x * 7 + y * 13 + k * 29) % 256) / 4  (integer division)";

/// Why a self-test failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    /// `reference.json` could not be read or parsed.
    #[error("cannot read the self-test {path}: {message}")]
    Read {
        /// The reference file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The reference does not describe this bundle's input.
    #[error("the self-test {path} does not fit the manifest: {message}")]
    Mismatch {
        /// The reference file.
        path: String,
        /// What differs.
        message: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine's outputs differ from the reference beyond tolerance.
    #[error(
        "self-test failed: {what} differs from the exporter's by {diff:.3e} (tolerance \
         {tolerance:.1e}); this engine does not compute what the model was exported to compute"
    )]
    Disagrees {
        /// Which output.
        what: &'static str,
        /// Largest absolute difference.
        diff: f32,
        /// Allowed difference.
        tolerance: f32,
    },
}

/// `reference.json`, the parts the test uses.
#[derive(Debug, Deserialize)]
struct Reference {
    formula: String,
    width: u32,
    height: u32,
    frames: usize,
    tolerance: f32,
    head_alpha: f32,
    head_logits: Vec<f32>,
    encoder_features_frame0: Vec<f32>,
}

/// What a passing self-test measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestReport {
    /// Largest |difference| of frame 0's features.
    pub features_diff: f32,
    /// Largest |difference| of the head's logits.
    pub logits_diff: f32,
    /// |difference| of alpha.
    pub alpha_diff: f32,
    /// The tolerance applied.
    pub tolerance: f32,
}

impl fmt::Display for SelfTestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "self-test passed: max |difference| features {:.2e}, logits {:.2e}, alpha {:.2e} \
             (tolerance {:.0e})",
            self.features_diff, self.logits_diff, self.alpha_diff, self.tolerance
        )
    }
}

/// The reference frame `k` as the model's normalised input.
pub fn reference_frame(width: u32, height: u32, k: u32, mean: f32, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity((width * height) as usize);
    for y in 0..height {
        for x in 0..width {
            let pixel = ((x * 7 + y * 13 + k * 29) % 256) / 4;
            out.push((pixel as f32 / 255.0 - mean) / std);
        }
    }
    out
}

/// Runs `bundle`'s self-test on `engine`.
pub fn run(bundle: &Bundle, engine: &mut dyn Engine) -> Result<SelfTestReport, SelfTestError> {
    let path = bundle.reference_path();
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| SelfTestError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let reference: Reference = serde_json::from_str(&text).map_err(|e| SelfTestError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let input = &bundle.manifest.input;
    let mismatch = |message: String| SelfTestError::Mismatch {
        path: shown.clone(),
        message,
    };
    if reference.formula != REFERENCE_FORMULA {
        return Err(mismatch(format!(
            "its formula {:?} is not the one this echoview knows ({REFERENCE_FORMULA:?})",
            reference.formula
        )));
    }
    if (reference.width, reference.height, reference.frames)
        != (input.width, input.height, bundle.frames_per_beat())
    {
        return Err(mismatch(format!(
            "it is for {}x{} with {} frames, the manifest says {}x{} with {}",
            reference.width,
            reference.height,
            reference.frames,
            input.width,
            input.height,
            bundle.frames_per_beat()
        )));
    }
    let d = bundle.feature_dim();
    if reference.encoder_features_frame0.len() != d
        || reference.head_logits.len() != bundle.labels.len()
    {
        return Err(mismatch(
            "its output lengths differ from the manifest's".into(),
        ));
    }

    let mut features = vec![0.0; bundle.frames_per_beat() * d];
    for (k, dst) in features.chunks_exact_mut(d).enumerate() {
        let image = reference_frame(
            input.width,
            input.height,
            k as u32,
            input.mean[0],
            input.std[0],
        );
        engine.encode(&image, dst)?;
    }
    let head = engine.head(&features)?;
    let report = SelfTestReport {
        features_diff: max_abs_diff(&features[..d], &reference.encoder_features_frame0),
        logits_diff: max_abs_diff(&head.logits, &reference.head_logits),
        alpha_diff: (head.alpha - reference.head_alpha).abs(),
        tolerance: reference.tolerance,
    };
    for (what, diff) in [
        ("encoder features", report.features_diff),
        ("head logits", report.logits_diff),
        ("head alpha", report.alpha_diff),
    ] {
        if diff.is_nan() || diff > reference.tolerance {
            return Err(SelfTestError::Disagrees {
                what,
                diff,
                tolerance: reference.tolerance,
            });
        }
    }
    Ok(report)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}
