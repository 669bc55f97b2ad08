//! A cine as a stream of [`Input`]s in time order, the way a recorded session delivers them,
//! so replay and clip cutting run unchanged on DICOM exports.
//!
//! Frames are decoded one at a time as the stream is read. A cine without ECG or R-wave times
//! yields frames alone; `imagefeed` finds its beats in the image, as for any recording
//! without ECG.

use std::collections::VecDeque;

use super::DicomError;
use super::ecg::{HeartbeatSource, r_wave_boundaries};
use super::read::DicomCine;
use crate::beats::Input;
use crate::gate::Gating;
use crate::media::Frame;

/// The inputs of one cine. See the module documentation.
#[derive(Debug)]
pub struct DicomInputs {
    /// The cine, for decoding frames on demand.
    cine: DicomCine,
    /// The next frame to decode.
    next_frame: u32,
    /// ECG blocks and boundaries not yet delivered, in time order.
    side: VecDeque<(u64, Input)>,
    /// Set after an error, so the stream ends.
    failed: bool,
}

impl DicomInputs {
    /// The inputs of `cine`, which must have at least two frames.
    pub fn new(cine: DicomCine) -> Result<DicomInputs, DicomError> {
        let summary = cine.summary();
        if summary.frames < 2 {
            return Err(DicomError::SingleFrame {
                path: cine.path().to_path_buf(),
            });
        }
        let origin_ms = cine.origin_ms();
        let side: VecDeque<(u64, Input)> = match summary.heartbeat {
            HeartbeatSource::Ecg => summary
                .ecg
                .as_ref()
                .map(|lead| lead.blocks(origin_ms))
                .unwrap_or_default()
                .into_iter()
                .map(|b| (b.t0_ns, Input::Ecg(b)))
                .collect(),
            HeartbeatSource::RWaveTimes => r_wave_boundaries(&summary.r_wave_ms, origin_ms)
                .into_iter()
                .map(|t_ns| boundary(t_ns, Gating::Ecg))
                .collect(),
            // Beats from the image are found downstream (`imagefeed`), over the frames as
            // they come, the same way for DICOM exports and sessions without ECG.
            HeartbeatSource::Image => VecDeque::new(),
        };
        Ok(DicomInputs {
            cine,
            next_frame: 0,
            side,
            failed: false,
        })
    }

    /// The cine being read.
    pub fn cine(&self) -> &DicomCine {
        &self.cine
    }

    /// The next frame, decoded now.
    fn next_frame(&mut self) -> Option<Result<Frame, DicomError>> {
        if self.next_frame >= self.cine.summary().frames {
            return None;
        }
        let frame = self.cine.frame(self.next_frame);
        self.next_frame += 1;
        Some(frame)
    }

    /// Time of the next frame, without decoding it.
    fn next_frame_time(&self) -> Option<u64> {
        let summary = self.cine.summary();
        summary
            .timing
            .times_ns
            .get(self.next_frame as usize)
            .map(|t| t + summary.frame_offset_ns)
    }
}

impl Iterator for DicomInputs {
    type Item = Result<Input, DicomError>;

    /// Whatever comes first on the session clock; at equal times ECG and boundaries go first,
    /// as a live ECG sample at a frame's time arrives with that frame.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let side_first = match (self.side.front(), self.next_frame_time()) {
            (Some(&(t, _)), Some(frame_t)) => t <= frame_t,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if side_first {
            return self.side.pop_front().map(|(_, input)| Ok(input));
        }
        match self.next_frame()? {
            Ok(frame) => Some(Ok(Input::Frame(frame))),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A boundary input keyed by its time.
fn boundary(t_ns: u64, gating: Gating) -> (u64, Input) {
    (t_ns, Input::Boundary { t_ns, gating })
}
