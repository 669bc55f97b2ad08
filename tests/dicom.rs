//! DICOM exports end to end: the real ultrasound files from pydicom's test set and small
//! synthetic ones for the encodings it lacks (tests/data/dicom, made by make_fixtures.py),
//! decoded and compared with pydicom's pixels, timed, gated, refused, and replayed through the
//! `echoview` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use echoview::beats::{BeatCutter, CutEvent, Input};
use echoview::dicom::ecg::HeartbeatSource;
use echoview::dicom::timing::TimingSource;
use echoview::dicom::{DicomCine, DicomError, DicomInputs};
use echoview::gate::Gating;
use echoview::media::PixelFormat;
use echoview::preprocess::Rect;
use echoview::recording::{Recording, RecordingError};
use serde::Deserialize;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dicom")
        .join(name)
}

/// A reference file: from `$ECHOVIEW_DICOM_REF` when set (full-frame references that
/// make_fixtures.py writes with FULL=1), else the committed sampled ones.
fn reference_file(name: &str) -> PathBuf {
    match std::env::var_os("ECHOVIEW_DICOM_REF") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => data(&format!("ref/{name}")),
    }
}

/// What make_fixtures.py wrote about one file, from pydicom.
#[derive(Debug, Deserialize)]
struct Reference {
    file: String,
    frames: u32,
    rows: u32,
    columns: u32,
    format: String,
    step: usize,
    checked_frames: Vec<u32>,
    lossy: bool,
    means: Vec<Vec<f64>>,
}

/// Every image fixture with a reference, and the largest per-sample difference from pydicom
/// allowed: 0 where both decoders are exact, 1 where the YCbCr to RGB rounding may differ,
/// more for lossy JPEG, whose decoders may differ in IDCT and chroma upsampling.
const FILES: [(&str, u8); 14] = [
    ("examples_ybr_color.dcm", 4),
    ("examples_rgb_color.dcm", 0),
    ("examples_palette.dcm", 0),
    ("examples_jpeg2k.dcm", 0),
    ("ExplVR_BigEnd.dcm", 0),
    ("be_mono12_ftv.dcm", 0),
    ("rle_ybr_full_rwave.dcm", 1),
    ("ybr_full_422_native.dcm", 1),
    ("palette8_implicit.dcm", 0),
    ("palette16.dcm", 0),
    ("ecg_waveform_cine.dcm", 0),
    ("jpeg_lossless_mono.dcm", 0),
    ("jpeg2k_ybr_ict.dcm", 1),
    ("bare_dataset_mono1", 0),
];

#[test]
fn every_image_decodes_like_pydicom() {
    let mut report = Vec::new();
    for (name, tolerance) in FILES {
        let json = std::fs::read_to_string(reference_file(&format!("{name}.json"))).unwrap();
        let reference: Reference = serde_json::from_str(&json).unwrap();
        assert_eq!(reference.file, name);
        let cine = DicomCine::open(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = cine.summary();
        assert_eq!(
            (s.frames, s.rows, s.columns),
            (reference.frames, reference.rows, reference.columns),
            "{name}"
        );
        let mut max_err = 0u8;
        let mut max_mean_err = 0f64;
        for index in 0..s.frames {
            let frame = cine
                .frame(index)
                .unwrap_or_else(|e| panic!("{name} frame {index}: {e}"));
            frame.validate().unwrap();
            let (format, channels) = match reference.format.as_str() {
                "Rgb24" => (PixelFormat::Rgb24, 3),
                _ => (PixelFormat::Grey8, 1),
            };
            assert_eq!(frame.format, format, "{name}");
            assert_eq!((frame.width, frame.height), (s.columns, s.rows));
            assert_eq!(frame.seq, u64::from(index));
            // Channel means over the whole frame catch errors the sampled pixels could miss.
            for c in 0..channels {
                let sum: u64 = frame.data[c..]
                    .iter()
                    .step_by(channels)
                    .map(|&v| u64::from(v))
                    .sum();
                let mean = sum as f64 / (frame.data.len() / channels) as f64;
                let err = (mean - reference.means[index as usize][c]).abs();
                max_mean_err = max_mean_err.max(err);
            }
            if reference.checked_frames.contains(&index) {
                let want = std::fs::read(reference_file(&format!("{name}.f{index}.bin"))).unwrap();
                let mut got = Vec::with_capacity(want.len());
                let row = frame.width as usize * channels;
                for y in (0..frame.height as usize).step_by(reference.step) {
                    for x in (0..frame.width as usize).step_by(reference.step) {
                        let at = y * row + x * channels;
                        got.extend_from_slice(&frame.data[at..at + channels]);
                    }
                }
                assert_eq!(got.len(), want.len(), "{name} frame {index}");
                for (a, b) in got.iter().zip(&want) {
                    max_err = max_err.max(a.abs_diff(*b));
                }
            }
        }
        report.push(format!(
            "{name}: {} frames {}x{} {}, max sample error {max_err}, max channel-mean error \
             {max_mean_err:.3}",
            s.frames, s.columns, s.rows, reference.format
        ));
        assert!(
            max_err <= tolerance,
            "{name}: max sample error {max_err} > {tolerance}"
        );
        let mean_tolerance = if reference.lossy { 1.0 } else { 0.5 };
        assert!(
            max_mean_err <= mean_tolerance,
            "{name}: channel mean off by {max_mean_err}"
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_12_lead_ecg_is_refused_with_the_fix() {
    let err = DicomCine::open(&data("waveform_ecg.dcm")).unwrap_err();
    assert!(matches!(err, DicomError::NotImage { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is a 12-lead ECG waveform object, not an image: pass the cine it belongs to",
            data("waveform_ecg.dcm").display()
        )
    );
}

#[test]
fn frame_times_come_from_each_timing_attribute() {
    let times = |name: &str| {
        let cine = DicomCine::open(&data(name)).unwrap();
        let s = cine.summary();
        (s.timing.source, s.timing.times_ns.clone())
    };
    let (source, t) = times("examples_ybr_color.dcm");
    assert_eq!(source, TimingSource::FrameTime);
    assert_eq!((t[0], t[1], t[29]), (0, 33_333_000, 966_657_000));
    let (source, t) = times("be_mono12_ftv.dcm");
    assert_eq!(source, TimingSource::FrameTimeVector);
    assert_eq!(t, vec![0, 20_000_000, 45_000_000, 75_000_000]);
    let (source, t) = times("ybr_full_422_native.dcm");
    assert_eq!(source, TimingSource::CineRate);
    assert_eq!(t, vec![0, 40_000_000, 80_000_000]);
    let (source, t) = times("examples_rgb_color.dcm");
    assert_eq!((source, t), (TimingSource::SingleFrame, vec![0]));
}

#[test]
fn image_regions_come_from_the_ultrasound_region_sequence() {
    let region = |name: &str| DicomCine::open(&data(name)).unwrap().summary().image_region;
    assert_eq!(
        region("ecg_waveform_cine.dcm"),
        Some(Rect {
            x: 2,
            y: 3,
            width: 18,
            height: 20
        })
    );
    // pydicom's examples were downsized after export: their regions reach past the frame
    // (595x414 in a 320x240 cine), so they are listed but not used.
    let cine = DicomCine::open(&data("examples_ybr_color.dcm")).unwrap();
    assert_eq!(cine.summary().regions.len(), 1);
    assert_eq!(cine.summary().image_region, None);
    assert_eq!(region("examples_palette.dcm"), None);
    assert_eq!(region("examples_rgb_color.dcm"), None);
}

/// Every beat the cutter makes of a DICOM file's inputs: `(start, end, gating)`.
fn beats_of(name: &str) -> Vec<(u64, u64, Gating)> {
    let inputs = DicomInputs::new(DicomCine::open(&data(name)).unwrap()).unwrap();
    let mut cutter = BeatCutter::new(4);
    let mut beats = Vec::new();
    let mut last_t = 0;
    let mut drain = |cutter: &mut BeatCutter| {
        while let Some(event) = cutter.next_event() {
            if let CutEvent::Beat { beat, .. } = event {
                beats.push((beat.start_ns, beat.end_ns, beat.gating));
            }
        }
    };
    for input in inputs {
        let input = input.unwrap();
        let t = match &input {
            Input::Frame(f) => f.t_ns,
            Input::Ecg(b) => b.t0_ns,
            Input::Boundary { t_ns, .. } => *t_ns,
            Input::Truth { t_ns, .. } => *t_ns,
        };
        assert!(t >= last_t, "{name}: inputs out of time order");
        last_t = t;
        cutter.push(input).unwrap();
        drain(&mut cutter);
    }
    cutter.finish();
    drain(&mut cutter);
    beats
}

#[test]
fn r_wave_times_become_ecg_gated_beats() {
    let cine = DicomCine::open(&data("rle_ybr_full_rwave.dcm")).unwrap();
    assert_eq!(cine.summary().heartbeat, HeartbeatSource::RWaveTimes);
    let ms = 1_000_000;
    assert_eq!(
        beats_of("rle_ybr_full_rwave.dcm"),
        vec![
            (0, 500 * ms, Gating::Ecg),
            (500 * ms, 1000 * ms, Gating::Ecg)
        ]
    );
}

#[test]
fn an_ecg_waveform_sequence_is_detected_like_a_live_ecg() {
    let cine = DicomCine::open(&data("ecg_waveform_cine.dcm")).unwrap();
    let s = cine.summary();
    assert_eq!(s.heartbeat, HeartbeatSource::Ecg);
    let lead = s.ecg.as_ref().unwrap();
    assert_eq!((lead.label.as_str(), lead.fs_hz), ("Lead II", 500.0));
    // The ECG starts 200 ms before the first frame, so the clock starts with the ECG.
    assert_eq!(s.frame_offset_ns, 200_000_000);
    assert_eq!(cine.frame(0).unwrap().t_ns, 200_000_000);
    // Synthetic R waves every 800 ms from 100 ms into the ECG; frames cover 0.2 s to 5.15 s.
    let beats = beats_of("ecg_waveform_cine.dcm");
    assert!(beats.len() >= 4, "{beats:?}");
    for (start, end, gating) in &beats {
        assert_eq!(*gating, Gating::Ecg);
        let rr = end - start;
        assert!((790_000_000..=810_000_000).contains(&rr), "{beats:?}");
        let phase = (*start as i64 - 100_000_000) % 800_000_000;
        assert!(phase.abs() < 30_000_000, "R-peak off the R wave: {beats:?}");
    }
}

#[test]
fn a_bare_dataset_is_recognised_by_content_and_a_still_image_is_refused_for_replay() {
    // No extension, no preamble, no DICM: read as a dataset all the same.
    let cine = DicomCine::open(&data("bare_dataset_mono1")).unwrap();
    assert_eq!(
        cine.frame(0).unwrap().data[0],
        255,
        "MONOCHROME1 0 is white"
    );
    let err = Recording::open(&data("bare_dataset_mono1")).unwrap_err();
    assert!(
        matches!(err, RecordingError::Dicom(DicomError::SingleFrame { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("pass the cine (multi-frame) export")
    );
    // An MCAP complaint for a file that is neither.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a recording").unwrap();
    let err = Recording::open(&path).unwrap_err();
    assert!(err.to_string().contains("is not an MCAP session"), "{err}");
}

#[test]
fn damaged_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in FILES {
        let bytes = std::fs::read(data(name)).unwrap();
        let len = bytes.len();
        let cuts = [0, 10, 132, 200, len / 3, len / 2, len - 100, len - 1];
        for cut in cuts.into_iter().filter(|&c| c < len) {
            let path = dir.path().join(format!("{name}.{cut}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            if let Ok(cine) = DicomCine::open(&path) {
                for i in 0..cine.summary().frames {
                    let _ = cine.frame(i);
                }
            }
            let _ = Recording::open(&path).map(|r| r.count());
        }
        // Flipped bytes in the pixel data's tail.
        let mut damaged = bytes.clone();
        for b in damaged.iter_mut().skip(len * 3 / 4).step_by(7) {
            *b ^= 0x5a;
        }
        let path = dir.path().join(format!("{name}.flipped"));
        std::fs::write(&path, &damaged).unwrap();
        if let Ok(cine) = DicomCine::open(&path) {
            for i in 0..cine.summary().frames {
                let _ = cine.frame(i);
            }
        }
    }
    let path = dir.path().join("noise");
    std::fs::write(
        &path,
        (0..4000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = DicomCine::open(&path).unwrap_err();
    assert!(matches!(err, DicomError::NotDicom { .. }), "{err}");
}

#[test]
fn decode_speed_of_the_30_frame_cine() {
    let cine = DicomCine::open(&data("examples_ybr_color.dcm")).unwrap();
    let start = Instant::now();
    let rounds = 3;
    for _ in 0..rounds {
        for i in 0..cine.summary().frames {
            cine.frame(i).unwrap();
        }
    }
    let fps = f64::from(rounds * cine.summary().frames) / start.elapsed().as_secs_f64();
    eprintln!("examples_ybr_color.dcm (JPEG baseline 320x240): {fps:.0} frames/s");
    assert!(fps > 10.0, "{fps} frames/s");
}

fn echoview() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echoview"))
}

#[test]
fn dicom_info_describes_each_file_and_fails_on_an_unusable_one() {
    let out = echoview()
        .args(["dicom", "info", "--json"])
        .arg(data("examples_ybr_color.dcm"))
        .arg(data("rle_ybr_full_rwave.dcm"))
        .arg(data("waveform_ecg.dcm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["frames"], 30);
    assert_eq!(lines[0]["photometric_interpretation"], "YBR_FULL_422");
    assert_eq!(lines[0]["transfer_syntax_uid"], "1.2.840.10008.1.2.4.50");
    assert_eq!(lines[0]["frame_time_ms"], 33.333);
    assert_eq!(lines[0]["image_region"], serde_json::Value::Null);
    assert_eq!(lines[0]["heartbeats"], "image");
    assert_eq!(lines[1]["heartbeats"], "r-wave times");
    assert_eq!(lines[2]["usable"], false);
    assert!(
        lines[2]["error"]
            .as_str()
            .unwrap()
            .contains("12-lead ECG waveform object, not an image")
    );
    let text = echoview()
        .args(["dicom", "info"])
        .arg(data("ecg_waveform_cine.dcm"))
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("heartbeats:      ecg (Lead II at 500 Hz)"),
        "{text}"
    );
    // A still image decodes but has no heartbeats: described, and marked unusable.
    let out = echoview()
        .args(["dicom", "info", "--json"])
        .arg(data("examples_rgb_color.dcm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["usable"], false);
    assert_eq!(line["frames"], 1);
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("holds a single frame")
    );
}

#[test]
fn replay_and_clips_take_dicom_files() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let out = echoview()
        .arg("replay")
        .arg(data("ecg_waveform_cine.dcm"))
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let beats: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(beats.len() >= 4, "{beats:?}");
    assert!(beats.iter().all(|b| b["gating"] == "ecg"));

    let dir = tempfile::tempdir().unwrap();
    let out = echoview()
        .arg("clips")
        .arg(data("rle_ybr_full_rwave.dcm"))
        .arg("--out")
        .arg(dir.path())
        .args(["--size", "16", "--frames", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("rle_ybr_full_rwave.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["beats"].as_array().unwrap().len(), 2);
    assert_eq!(index["beats"][0]["gating"], "ecg");
}

#[test]
fn the_30_frame_cine_replays_end_to_end_with_image_gating() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let out = echoview()
        .arg("replay")
        .arg(data("examples_ybr_color.dcm"))
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let beats: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // No ECG in the export and under a second of video: the loop is one heartbeat.
    assert_eq!(beats.len(), 1, "{beats:?}");
    assert_eq!(beats[0]["gating"], "image");
    assert!(beats[0]["label"].is_string());
    assert!(stderr.contains("taken as one heartbeat"), "{stderr}");
}
