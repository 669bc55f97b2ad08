//! A recording to replay, whatever its format: an echoview session (MCAP) or a cart's DICOM
//! cine export. Both become the same stream of [`Input`]s, so `echoview replay` and `echoview
//! clips` have one loop for both.
//!
//! The format is told by content, not by file name: PACS exports often have no extension.

use std::path::Path;

use crate::beats::Input;
use crate::dicom::{DicomCine, DicomError, DicomInputs, is_dicom};
use crate::preprocess::Rect;
use crate::session::{SessionError, SessionEvent, SessionReader};

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// An MCAP session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A DICOM export failed.
    #[error(transparent)]
    Dicom(#[from] DicomError),
}

/// An open recording, yielding its inputs in time order.
pub enum Recording {
    /// An echoview session (boxed like the other: the reader is large).
    Session(Box<SessionReader>),
    /// A DICOM cine.
    Dicom(Box<DicomInputs>),
}

impl Recording {
    /// Opens `path`: a Part 10 DICOM file (`DICM` at byte 128), an MCAP session, or failing
    /// both a bare DICOM dataset.
    pub fn open(path: &Path) -> Result<Recording, RecordingError> {
        let part10 = is_dicom(path).unwrap_or(false);
        if part10 {
            return Ok(Recording::Dicom(Box::new(DicomInputs::new(
                DicomCine::open(path)?,
            )?)));
        }
        match SessionReader::open(path) {
            Ok(reader) => Ok(Recording::Session(Box::new(reader))),
            // Not MCAP: a DICOM dataset without the Part 10 header is the other thing a
            // cart writes. If that does not parse either, the MCAP complaint says more.
            Err(session_err @ SessionError::NotMcap { .. }) => match DicomCine::open(path) {
                Ok(cine) => Ok(Recording::Dicom(Box::new(DicomInputs::new(cine)?))),
                Err(DicomError::NotDicom { .. }) => Err(session_err.into()),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The image region the recording states (a DICOM export's 2D ultrasound region), which
    /// preprocessing should crop to instead of finding one; `None` for sessions.
    pub fn image_region(&self) -> Option<Rect> {
        match self {
            Recording::Session(_) => None,
            Recording::Dicom(inputs) => inputs.cine().summary().image_region,
        }
    }
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recording::Session(_) => f.write_str("Recording::Session"),
            Recording::Dicom(inputs) => f.debug_tuple("Recording::Dicom").field(inputs).finish(),
        }
    }
}

impl Iterator for Recording {
    type Item = Result<Input, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Recording::Session(reader) => loop {
                let input = match reader.next()? {
                    Ok(SessionEvent::Frame(frame)) => Input::Frame(frame),
                    Ok(SessionEvent::Ecg(block)) => Input::Ecg(block),
                    Ok(SessionEvent::TruthView { t_ns, view }) => Input::Truth { t_ns, view },
                    // Recorded labels and truth R-peaks are for evaluation, not inputs.
                    Ok(_) => continue,
                    Err(e) => return Some(Err(e.into())),
                };
                return Some(Ok(input));
            },
            Recording::Dicom(inputs) => Some(inputs.next()?.map_err(RecordingError::from)),
        }
    }
}
