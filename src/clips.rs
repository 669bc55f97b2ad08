//! Training clips: the gated, preprocessed frames of every heartbeat of a session, cut by the
//! same code the daemon runs, so the model is trained on exactly what it will see.
//!
//! For a session `NAME.mcap` (or a DICOM export `NAME.dcm`), `echoview clips` writes two files into the output folder:
//! - `NAME.npy`: a NumPy array of `uint8`, shape `[beats, T, height, width]`: each beat's T
//!   gated frames, greyscale, cropped to the image region, static overlays zeroed, resized,
//!   not normalised (the manifest's mean and std are applied at training and at run time);
//! - `NAME.json`: `{"session", "width", "height", "frames_per_beat", "beats": [...]}` with,
//!   for row i of the array, the beat number, start and end times (s), heart rate, gating
//!   mode and label (the session's truth, a `--label` given for the whole session, or null).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::beats::{BeatCutter, CutEvent};
use crate::ecg::EcgError;
use crate::imagefeed::{GatedFeed, feed_session};
use crate::preprocess::{PreprocessConfig, PreprocessError, Preprocessor};
use crate::recording::RecordingError;
use crate::views::View;

/// Room reserved for the `.npy` header, so the final shape can be written in place once the
/// number of beats is known (the format pads headers to a multiple of 64 bytes anyway).
const NPY_HEADER_LEN: usize = 128;

/// Why clips could not be cut.
#[derive(Debug, thiserror::Error)]
pub enum ClipsError {
    /// The recording (session or DICOM export) could not be read.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The session's ECG cannot be processed.
    #[error("{path}: ECG: {source}")]
    Ecg {
        /// The session.
        path: PathBuf,
        /// What the detector said.
        source: EcgError,
    },
    /// Preprocessing is misconfigured for this video.
    #[error("{path}: {source}")]
    Preprocess {
        /// The session.
        path: PathBuf,
        /// What went wrong.
        source: PreprocessError,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How to cut clips.
#[derive(Debug, Clone)]
pub struct ClipOptions {
    /// Output size and normalisation (normalisation is not applied; only the size is used).
    pub preprocess: PreprocessConfig,
    /// T, frames per beat.
    pub frames_per_beat: usize,
    /// A label for every beat, overriding the session's truth (for a recording known to show
    /// one view throughout).
    pub label: Option<View>,
    /// How beats are cut (ECG, image, or ECG where the session has one).
    pub gating: crate::imagefeed::GatingMode,
}

/// Per-beat metadata, row by row of the array.
#[derive(Debug, Serialize)]
struct ClipBeat {
    beat: u64,
    start: f64,
    end: f64,
    hr_bpm: f64,
    gating: &'static str,
    label: Option<&'static str>,
}

/// The `.json` file beside the array.
#[derive(Debug, Serialize)]
struct ClipIndex<'a> {
    session: String,
    width: u32,
    height: u32,
    frames_per_beat: usize,
    skipped: &'a std::collections::BTreeMap<&'static str, u64>,
    beats: Vec<ClipBeat>,
}

/// What one session yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipSummary {
    /// The array written.
    pub npy: PathBuf,
    /// Beats written.
    pub beats: usize,
    /// Beats skipped by the gate or for unusable frames.
    pub skipped: u64,
}

/// Cuts the clips of `session` into `out_dir`.
pub fn cut_session(
    session: &Path,
    out_dir: &Path,
    options: &ClipOptions,
) -> Result<ClipSummary, ClipsError> {
    let stem = session
        .file_stem()
        .map_or_else(|| "session".into(), |s| s.to_string_lossy().into_owned());
    let npy_path = out_dir.join(format!("{stem}.npy"));
    let json_path = out_dir.join(format!("{stem}.json"));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClipsError::Write { path, source }
    };

    let (w, h) = (options.preprocess.width, options.preprocess.height);
    let t = options.frames_per_beat;
    let mut npy =
        NpyWriter::create(&npy_path, [t, h as usize, w as usize]).map_err(write_err(&npy_path))?;
    let mut cutter = BeatCutter::new(t);
    let mut preprocessor = Preprocessor::new(options.preprocess.clone());
    let mut pixels = vec![0u8; t * preprocessor.tensor_len()];
    let mut beats = Vec::new();

    let mut handle_events = |cutter: &mut BeatCutter| -> Result<(), ClipsError> {
        while let Some(event) = cutter.next_event() {
            let CutEvent::Beat { beat, truth } = event else {
                continue;
            };
            let Some(frames) = cutter.frames_of(&beat) else {
                cutter.count_skip("unusable_frames");
                continue;
            };
            match preprocessor.prepare_beat_pixels(&frames, &mut pixels) {
                Ok(_) => {}
                Err(PreprocessError::BadFrame(_) | PreprocessError::Inconsistent { .. }) => {
                    cutter.count_skip("unusable_frames");
                    continue;
                }
                Err(source) => {
                    return Err(ClipsError::Preprocess {
                        path: session.to_path_buf(),
                        source,
                    });
                }
            }
            npy.append(&pixels).map_err(write_err(&npy_path))?;
            beats.push(ClipBeat {
                beat: beat.beat,
                start: beat.start_ns as f64 / 1e9,
                end: beat.end_ns as f64 / 1e9,
                hr_bpm: (beat.hr_bpm() * 10.0).round() / 10.0,
                gating: beat.gating.name(),
                label: options.label.or(truth).map(View::name),
            });
        }
        Ok(())
    };

    // Read to the end or the first error; either way the beats cut so far are written out,
    // so a truncated recording still yields its clips (and the error is reported after).
    let mut feed = GatedFeed::new(options.gating, Default::default());
    let mut read_all = || -> Result<(), ClipsError> {
        feed_session(session, &mut feed, |input| {
            cutter.push(input).map_err(|source| ClipsError::Ecg {
                path: session.to_path_buf(),
                source,
            })?;
            handle_events(&mut cutter)
        })?;
        cutter.finish();
        handle_events(&mut cutter)
    };
    let outcome = read_all();
    npy.finish().map_err(write_err(&npy_path))?;

    let index = ClipIndex {
        session: session.display().to_string(),
        width: w,
        height: h,
        frames_per_beat: t,
        skipped: &cutter.stats().skipped,
        beats,
    };
    let json = serde_json::to_vec_pretty(&index).map_err(|e| ClipsError::Write {
        path: json_path.clone(),
        source: e.into(),
    })?;
    std::fs::write(&json_path, json).map_err(write_err(&json_path))?;
    outcome?;
    Ok(ClipSummary {
        npy: npy_path,
        beats: index.beats.len(),
        skipped: cutter.stats().beats_skipped(),
    })
}

/// Streams rows of `uint8` into a `.npy` file whose first dimension is filled in at the end.
struct NpyWriter {
    out: BufWriter<File>,
    row_shape: [usize; 3],
    rows: usize,
}

impl NpyWriter {
    fn create(path: &Path, row_shape: [usize; 3]) -> std::io::Result<NpyWriter> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&npy_header(0, row_shape))?;
        Ok(NpyWriter {
            out,
            row_shape,
            rows: 0,
        })
    }

    fn append(&mut self, row: &[u8]) -> std::io::Result<()> {
        self.out.write_all(row)?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&npy_header(self.rows, self.row_shape))?;
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

/// A version 1.0 `.npy` header for a C-order `uint8` array of `[rows, row_shape...]`, padded
/// with spaces to [`NPY_HEADER_LEN`] bytes so it can be rewritten in place.
fn npy_header(rows: usize, row_shape: [usize; 3]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({rows}, {}, {}, {}), }}",
        row_shape[0], row_shape[1], row_shape[2]
    );
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let len = NPY_HEADER_LEN - 10;
    header.extend_from_slice(&(len as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(NPY_HEADER_LEN - 1, b' ');
    header.push(b'\n');
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_rewritable() {
        let a = npy_header(0, [8, 128, 128]);
        let b = npy_header(123_456, [8, 128, 128]);
        assert_eq!(a.len(), NPY_HEADER_LEN);
        assert_eq!(b.len(), NPY_HEADER_LEN);
        assert_eq!(NPY_HEADER_LEN % 64, 0);
        let text = String::from_utf8_lossy(&b[10..]);
        assert!(text.starts_with(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (123456, 8, 128, 128), }"
        ));
        assert!(text.ends_with(" \n"));
        assert_eq!(
            u16::from_le_bytes([b[8], b[9]]) as usize,
            NPY_HEADER_LEN - 10
        );
    }
}
