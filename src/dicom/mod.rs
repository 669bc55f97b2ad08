//! DICOM cine exports as a replay source: what an ultrasound cart sends to PACS, read back so
//! clinical and QA staff can replay it through the same gating and classification as a live
//! session.
//!
//! [`DicomCine::open`] reads a Part 10 file (or a bare dataset without the Part 10 header),
//! checks that it is an image replay can use, and gathers what replay needs: the frame times
//! ([`timing`]), the image region ([`region`]) and where heartbeats come from ([`ecg`]).
//! [`DicomCine::inputs`] then yields the file as [`crate::beats::Input`]s on a session clock
//! starting at 0: frames decoded one at a time ([`pixels`]), ECG blocks or beat boundaries
//! merged in time order ([`inputs`]). Reading and decoding live in [`read`]; `echoview dicom
//! info` in [`info`].

pub mod ecg;
pub mod info;
pub mod inputs;
pub mod pixels;
pub mod read;
pub mod region;
pub mod rle;
pub mod timing;

use std::path::PathBuf;

pub use inputs::DicomInputs;
pub use read::{DicomCine, is_dicom};

/// Why a DICOM file cannot be replayed. Each message names the file and what to do about it,
/// because the reader is a clinician or QA engineer holding a PACS export, not a developer.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Neither a Part 10 file nor a dataset that parses.
    #[error(
        "{path} is not a DICOM file ({reason}); export the cine from the cart or PACS as a \
         DICOM Part 10 file"
    )]
    NotDicom {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A DICOM object without images, such as a 12-lead ECG or a structured report.
    #[error("{path} is {what}, not an image: pass the cine it belongs to")]
    NotImage {
        /// The file.
        path: PathBuf,
        /// What it is instead, e.g. "a 12-lead ECG waveform object".
        what: String,
    },
    /// The pixel data is in a transfer syntax echoview has no decoder for.
    #[error(
        "{path}: transfer syntax {name} ({uid}) is not supported; re-export the cine \
         uncompressed, JPEG, JPEG 2000 or RLE"
    )]
    UnsupportedTransferSyntax {
        /// The file.
        path: PathBuf,
        /// The transfer syntax UID.
        uid: String,
        /// Its name, or "unknown".
        name: String,
    },
    /// The pixels are encoded in a way echoview cannot turn into RGB or grey.
    #[error("{path}: {what} is not supported; re-export the cine as RGB or MONOCHROME2")]
    UnsupportedPixels {
        /// The file.
        path: PathBuf,
        /// Which combination of attributes, e.g. "PALETTE COLOR with segmented tables".
        what: String,
    },
    /// An attribute replay needs is missing or holds a value that cannot be right.
    #[error("{path}: {attribute} {problem}; the export is damaged or incomplete, export it again")]
    BadAttribute {
        /// The file.
        path: PathBuf,
        /// The attribute with its tag, e.g. "Frame Time (0018,1063)".
        attribute: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A frame's compressed data does not decode.
    #[error(
        "{path}: frame {frame} does not decode: {reason}; the export is damaged, export it again"
    )]
    Decode {
        /// The file.
        path: PathBuf,
        /// Frame index, from 0.
        frame: u32,
        /// What the decoder said.
        reason: String,
    },
    /// A still image: replay needs a cine to cut heartbeats from.
    #[error(
        "{path} holds a single frame: a still image has no heartbeats to label; pass the \
         cine (multi-frame) export"
    )]
    SingleFrame {
        /// The file.
        path: PathBuf,
    },
}
