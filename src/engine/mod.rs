//! Inference engines: what runs the encoder and the head.
//!
//! The pipeline talks to an [`Engine`] and never to a runtime directly, so the same
//! classification code runs on tract (CPU, everywhere) and, later, TensorRT on the Jetson GPU.
//! Engines work on plain `f32` slices in the layouts the manifest describes, which keeps the
//! boundary small enough to test and to swap.

mod tract;

pub use self::tract::{TractEngine, set_threads};

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

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// tract on the CPU: always available.
    Tract,
}

impl EngineKind {
    /// The name used on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
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

/// Opens the engine `kind` for `bundle`.
pub fn open(bundle: &Bundle, kind: EngineKind) -> Result<Box<dyn Engine>, EngineError> {
    match kind {
        EngineKind::Tract => Ok(Box::new(TractEngine::load(bundle)?)),
    }
}
