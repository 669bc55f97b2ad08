//! Inference engines: what runs the encoder and the head.
//!
//! The pipeline talks to an [`Engine`] and never to a runtime directly, so the same
//! classification code runs on tract (CPU, everywhere) and TensorRT on the Jetson GPU
//! ([`tensorrt`], feature `tensorrt`). [`select`] picks one for an [`EngineKind`]: `auto`
//! (the default) runs TensorRT only when every check in [`tensorrt::open`] passes, and tract
//! otherwise, with the typed [`FallbackReason`] saying why.
//! Engines work on plain `f32` slices in the layouts the manifest describes, which keeps the
//! boundary small enough to test and to swap.

pub mod depthwise;
mod fusion;
pub mod mul_add;
pub mod pointwise;
pub mod reuse;
pub mod silu;
pub mod squeeze;
pub mod tensorrt;
mod tract;

pub use self::tensorrt::{FallbackReason, TrtOptions};
pub use self::tract::{TractEngine, TractOptions, set_threads};

use crate::bundle::Bundle;

/// Why an engine could not load a model or run it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ONNX file could not be loaded or optimised for the manifest's shapes.
    #[error("cannot load {file} for the manifest's shapes: {message}")]
    Load {
        /// The model file.
        file: String,
        /// What the runtime said.
        message: String,
    },
    /// The model's inputs or outputs do not match the manifest.
    #[error("{file} does not match its manifest: {message}")]
    Mismatch {
        /// The model file.
        file: String,
        /// What differs.
        message: String,
    },
    /// Running the model failed.
    #[error("inference on {file} failed: {message}")]
    Run {
        /// The model file.
        file: String,
        /// What the runtime said.
        message: String,
    },
    /// `--engine tensorrt` was asked for and TensorRT cannot run (`auto` would fall back).
    #[error("the TensorRT engine cannot run: {0} (use --engine auto to fall back to tract)")]
    TensorRt(Box<FallbackReason>),
    /// The caller passed a buffer of the wrong length (a bug, reported rather than panicking).
    #[error("{what}: expected {expected} values, got {actual}")]
    BadLength {
        /// Which buffer.
        what: &'static str,
        /// Length the model needs.
        expected: usize,
        /// Length given.
        actual: usize,
    },
}

impl From<FallbackReason> for EngineError {
    /// Boxed: a fallback reason carries paths and versions, and an `EngineError` travels in
    /// many `Result`s that should stay small.
    fn from(reason: FallbackReason) -> EngineError {
        EngineError::TensorRt(Box::new(reason))
    }
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// TensorRT when it is present and passes every check, else tract (with the reason).
    Auto,
    /// TensorRT or nothing: fails with the reason instead of falling back (for verifying a
    /// board).
    Tensorrt,
    /// tract on the CPU: always available.
    Tract,
}

impl EngineKind {
    /// The name used on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Tensorrt => "tensorrt",
            EngineKind::Tract => "tract",
        }
    }
}

/// The head's result for one beat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOutput {
    /// One logit per manifest label.
    pub logits: Vec<f32>,
    /// Weight of the spatial (per-frame) branch in the mix, in [0, 1]; the temporal branch
    /// gets `1 - alpha`.
    pub alpha: f32,
}

/// Runs a bundle's two networks.
pub trait Engine: Send {
    /// The engine's name for outputs (`tract`).
    fn name(&self) -> &'static str;

    /// Encodes one preprocessed frame (`channels * height * width` floats) into `features`
    /// (`feature_dim` floats).
    fn encode(&mut self, image: &[f32], features: &mut [f32]) -> Result<(), EngineError>;

    /// Runs the head on a beat's features (`frames_per_beat * feature_dim` floats, frame-major).
    fn head(&mut self, features: &[f32]) -> Result<HeadOutput, EngineError>;
}

/// An opened engine and, when `auto` ended on tract, why.
pub struct Selected {
    /// The engine to run.
    pub engine: Box<dyn Engine>,
    /// Why TensorRT is not running it (`auto` only); logged and shown on the socket.
    pub fallback: Option<FallbackReason>,
}

/// Opens the engine `kind` for `bundle`, looking for TensorRT's files as `options` says.
pub fn select(
    bundle: &Bundle,
    kind: EngineKind,
    options: &TrtOptions,
) -> Result<Selected, EngineError> {
    let tract = |fallback| -> Result<Selected, EngineError> {
        Ok(Selected {
            engine: Box::new(TractEngine::load(bundle)?),
            fallback,
        })
    };
    match kind {
        EngineKind::Tract => tract(None),
        EngineKind::Tensorrt => Ok(Selected {
            engine: tensorrt::open(bundle, options)?,
            fallback: None,
        }),
        EngineKind::Auto => match tensorrt::open(bundle, options) {
            Ok(engine) => Ok(Selected {
                engine,
                fallback: None,
            }),
            Err(reason) => tract(Some(reason)),
        },
    }
}

/// Opens the engine `kind` for `bundle` with TensorRT's default places, dropping the
/// fallback reason (for callers that report the engine's name only).
pub fn open(bundle: &Bundle, kind: EngineKind) -> Result<Box<dyn Engine>, EngineError> {
    Ok(select(bundle, kind, &TrtOptions::for_bundle(bundle))?.engine)
}

/// Whether two weight arrays are equal bit for bit: our ops compare their weights this way,
/// so that equal ops are interchangeable when tract merges identical nodes (and a NaN weight
/// equals itself).
pub(crate) fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Deterministic values in [-1, 1) (xorshift), for the kernels' unit tests, so a failure
/// reproduces.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}
