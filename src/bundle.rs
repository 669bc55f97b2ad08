//! Model bundles: a folder with `manifest.toml`, `encoder.onnx`, `head.onnx` and a reference
//! self-test, verified before anything runs on it.
//!
//! A cart must never classify with a model other than the one its manifest describes, so
//! loading checks every file's sha256 against the manifest and every number the pipeline relies
//! on (labels, input size, frames per beat, feature width) for sanity. A mismatch names the file
//! and what differs, so a field engineer can tell a corrupt copy from a wrong bundle.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::views::View;

/// The manifest format version this build understands.
pub const FORMAT_VERSION: u32 = 1;

/// Why a bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The folder or one of its files could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `manifest.toml` is not valid TOML or lacks a key.
    #[error("{path} is not a valid model manifest: {message}")]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A file's content does not match the hash recorded in the manifest.
    #[error(
        "{path} does not match its manifest: sha256 is {actual}, manifest says {expected}; \
         the bundle is corrupt or was edited: reinstall it from its source"
    )]
    HashMismatch {
        /// The file whose hash differs.
        path: PathBuf,
        /// The hash recorded in the manifest.
        expected: String,
        /// The hash of the file on disk.
        actual: String,
    },
    /// The manifest is readable but describes something this build cannot run.
    #[error("{path}: {message}")]
    Invalid {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// `manifest.toml`, as written by `models/export.py`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; a newer format is refused rather than misread.
    pub format_version: u32,
    /// Model name, reported in every output so results can be traced to a model.
    pub name: String,
    /// Model version, reported alongside the name.
    pub version: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Class names in the order of the head's logits; each one of the 11 views.
    pub labels: Vec<String>,
    /// What the encoder expects per frame.
    pub input: InputSpec,
    /// The per-frame encoder.
    pub encoder: EncoderSpec,
    /// The per-beat head.
    pub head: HeadSpec,
    /// How probabilities become a label.
    pub classify: ClassifySpec,
    /// A known input and the outputs the exporter computed for it.
    pub reference: FileSpec,
    /// Where the weights came from, for audit; free-form key/value strings.
    #[serde(default)]
    pub provenance: toml::Table,
}

/// The model input: image size, channels, normalisation and frames per beat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Model input width in pixels.
    pub width: u32,
    /// Model input height in pixels.
    pub height: u32,
    /// Channels of the model input (1: greyscale).
    pub channels: u32,
    /// T: frames gated per heartbeat, at cardiac phases i/T.
    pub frames_per_beat: u32,
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
}

/// The encoder network: one frame in, one feature vector out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    /// File name inside the bundle.
    pub file: String,
    /// Expected sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Name of the ONNX input, shape `[1, channels, height, width]`.
    pub input: String,
    /// Name of the ONNX output, shape `[1, feature_dim]`.
    pub output: String,
    /// Length of one frame's feature vector.
    pub feature_dim: u32,
}

/// The head network: T feature vectors in, class logits and the spatial weight out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// File name inside the bundle.
    pub file: String,
    /// Expected sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Name of the ONNX input, shape `[1, frames_per_beat, feature_dim]`.
    pub input: String,
    /// Name of the logits output, shape `[1, labels.len()]`.
    pub logits: String,
    /// Name of the spatial-branch weight output, shape `[1, 1]`.
    pub alpha: String,
}

/// Turning probabilities into a label.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifySpec {
    /// A beat whose top probability is below this is reported as `unknown`.
    pub reject_threshold: f32,
}

/// A plain file of the bundle with its expected hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// File name inside the bundle.
    pub file: String,
    /// Expected sha256 of the file, lowercase hex.
    pub sha256: String,
}

/// A verified bundle: every file hashed and every field checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// `manifest.labels` as views, in logit order.
    pub labels: Vec<View>,
    /// sha256 of `manifest.toml` itself: one hash that identifies the whole bundle.
    pub manifest_sha256: String,
}

impl Bundle {
    /// Reads and verifies the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest_path = dir.join("manifest.toml");
        let text = std::fs::read(&manifest_path).map_err(|source| BundleError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest_sha256 = sha256_hex(&text);
        let text = String::from_utf8(text).map_err(|_| BundleError::Manifest {
            path: manifest_path.clone(),
            message: "not UTF-8 text".into(),
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::Manifest {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| BundleError::Invalid {
            path: manifest_path.clone(),
            message,
        };
        if manifest.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format_version {} is not supported (this echoview reads version {FORMAT_VERSION}); \
                 use an echoview release that matches the bundle",
                manifest.format_version
            )));
        }
        let labels = manifest
            .labels
            .iter()
            .map(|name| {
                View::from_name(name).ok_or_else(|| {
                    invalid(format!(
                        "label {name:?} is not one of the views: {}",
                        View::ALL.map(View::name).join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if labels.len() < 2 {
            return Err(invalid("a classifier needs at least two labels".into()));
        }
        let input = &manifest.input;
        if !(8..=1024).contains(&input.width) || !(8..=1024).contains(&input.height) {
            return Err(invalid(format!(
                "input size {}x{} is outside 8..=1024 pixels",
                input.width, input.height
            )));
        }
        if input.channels != 1 {
            return Err(invalid(format!(
                "input.channels = {}: this echoview feeds greyscale (1-channel) frames",
                input.channels
            )));
        }
        if !(1..=64).contains(&input.frames_per_beat) {
            return Err(invalid(format!(
                "input.frames_per_beat = {} is outside 1..=64",
                input.frames_per_beat
            )));
        }
        if input.mean.len() != input.channels as usize || input.std.len() != input.channels as usize
        {
            return Err(invalid(format!(
                "input.mean and input.std need one value per channel ({})",
                input.channels
            )));
        }
        if input.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || input.mean.iter().any(|m| !m.is_finite())
        {
            return Err(invalid(
                "input.std must be positive and input.mean finite".into(),
            ));
        }
        if manifest.encoder.feature_dim == 0 {
            return Err(invalid("encoder.feature_dim must be positive".into()));
        }
        let threshold = manifest.classify.reject_threshold;
        if !(0.0..=1.0).contains(&threshold) {
            return Err(invalid(format!(
                "classify.reject_threshold = {threshold} is outside 0..=1"
            )));
        }
        for (file, expected) in [
            (&manifest.encoder.file, &manifest.encoder.sha256),
            (&manifest.head.file, &manifest.head.sha256),
            (&manifest.reference.file, &manifest.reference.sha256),
        ] {
            verify_file(dir, file, expected)?;
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            labels,
            manifest_sha256,
        })
    }

    /// Path of the encoder ONNX file.
    pub fn encoder_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.encoder.file)
    }

    /// Path of the head ONNX file.
    pub fn head_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.head.file)
    }

    /// Path of the reference self-test file.
    pub fn reference_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.reference.file)
    }

    /// T, the number of frames gated per heartbeat.
    pub fn frames_per_beat(&self) -> usize {
        self.manifest.input.frames_per_beat as usize
    }

    /// Length of one frame's feature vector.
    pub fn feature_dim(&self) -> usize {
        self.manifest.encoder.feature_dim as usize
    }

    /// A short identity for logs and outputs: `name version (sha256 prefix)`.
    pub fn identity(&self) -> String {
        format!(
            "{} {} ({})",
            self.manifest.name,
            self.manifest.version,
            &self.manifest_sha256[..12]
        )
    }
}

/// Checks one bundle file against its recorded hash. Bundle files are referenced by plain
/// names, so a manifest cannot point outside its folder.
fn verify_file(dir: &Path, file: &str, expected: &str) -> Result<(), BundleError> {
    let name_ok = !file.is_empty()
        && Path::new(file).components().count() == 1
        && !file.contains(['/', '\\'])
        && file != ".."
        && file != ".";
    if !name_ok {
        return Err(BundleError::Invalid {
            path: dir.join("manifest.toml"),
            message: format!("file name {file:?} must be a plain name inside the bundle folder"),
        });
    }
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Io {
        path: path.clone(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(expected.trim()) {
        return Err(BundleError::HashMismatch {
            path,
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
