//! The one error type of the ECG module.
//!
//! Every variant names the input that was wrong and says how to fix it, because the messages
//! reach an operator (the CLI prints them verbatim) rather than a developer.

use std::path::PathBuf;

/// Why an ECG operation refused its input.
#[derive(Debug, thiserror::Error)]
pub enum EcgError {
    /// The sampling rate is outside what the filters and time constants were designed for.
    #[error(
        "unsupported ECG sampling rate {fs_hz} Hz: the QRS detector needs 250 to 1000 Hz \
         (360 Hz for MIT-BIH); resample the signal or pass the rate it was recorded at"
    )]
    UnsupportedRate {
        /// The rate that was asked for, echoed so the operator sees the typo.
        fs_hz: f64,
    },
    /// A score was asked for with a window or rate that makes no sense.
    #[error("invalid scoring parameter: {what}")]
    InvalidScoring {
        /// Which parameter, its value and the accepted range.
        what: String,
    },
    /// The file could not be opened or read at all.
    #[error("cannot read ECG file {path}: {source}")]
    Io {
        /// The file that failed, so the operator knows which one of several.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its contents do not match the format that was asked for.
    #[error("ECG file {path}: {problem}")]
    Format {
        /// The file whose contents are wrong.
        path: PathBuf,
        /// Where in the file (line or byte) the problem is, what was found, and the fix.
        problem: String,
    },
}
