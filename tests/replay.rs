//! End-to-end: simulated sessions through the real pipeline, the real tract engine and the
//! committed demo bundle, via the library and via the `echoview` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use echoview::bundle::Bundle;
use echoview::classify::Label;
use echoview::engine::{self, EngineKind};
use echoview::gate::SkippedBeat;
use echoview::pipeline::{BeatReport, BeatSink, Pipeline};
use echoview::replay::replay_session;
use echoview::session::{SessionEvent, SessionReader, SessionWriter};
use echoview::sim::record::record;
use echoview::sim::{ScanScript, SimConfig, SimEvent, Simulator};
use echoview::views::View;

const MS: u64 = 1_000_000;

fn demo_bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

fn echoview() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echoview"))
}

/// `echoview replay SESSION --model <demo bundle>`, not yet run.
fn replay_command(session: &Path) -> Command {
    let mut command = echoview();
    command
        .arg("replay")
        .arg(session)
        .arg("--model")
        .arg(demo_bundle_dir());
    command
}

/// Writes the session `config` describes, as `echoview sim` does.
fn write_session(config: SimConfig, path: &Path) {
    record(config, path).unwrap();
}

/// A sink that keeps everything, for assertions.
#[derive(Default)]
struct Collect {
    beats: Vec<BeatReport>,
    skipped: Vec<SkippedBeat>,
}

impl BeatSink for Collect {
    fn beat(&mut self, report: &BeatReport) -> std::io::Result<()> {
        self.beats.push(report.clone());
        Ok(())
    }
    fn skipped(&mut self, skipped: &SkippedBeat) -> std::io::Result<()> {
        self.skipped.push(skipped.clone());
        Ok(())
    }
}

#[test]
fn replayed_beats_are_gated_on_the_true_r_peaks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scan.mcap");
    let config = SimConfig {
        seed: 7,
        scan: ScanScript::from_views(&[View::Plax, View::A4c, View::Subcostal], 4),
        base_bpm: 80.0,
        ..SimConfig::default()
    };
    write_session(config, &path);

    let truth_r: Vec<u64> = SessionReader::open(&path)
        .unwrap()
        .filter_map(|e| match e.unwrap() {
            SessionEvent::TruthRPeak { t_ns, .. } => Some(t_ns),
            _ => None,
        })
        .collect();
    assert!(truth_r.len() >= 12, "{} R-peaks", truth_r.len());

    let bundle = Bundle::load(&demo_bundle_dir()).unwrap();
    let engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let mut pipeline = Pipeline::new(&bundle, engine);
    let mut sink = Collect::default();
    let stats = replay_session(&path, &mut pipeline, &mut sink).unwrap();

    // Every interval between true R-peaks becomes a classified beat (the first R-peak only
    // opens a beat), each boundary within 10 ms of the truth.
    assert_eq!(
        sink.beats.len(),
        truth_r.len() - 1,
        "skipped: {:?}",
        sink.skipped
    );
    let nearest = |t: u64| truth_r.iter().map(|r| r.abs_diff(t)).min().unwrap();
    for report in &sink.beats {
        assert!(
            nearest(report.beat.start_ns) <= 10 * MS,
            "{:?}",
            report.beat
        );
        assert!(nearest(report.beat.end_ns) <= 10 * MS, "{:?}", report.beat);
        assert_eq!(report.beat.frames.len(), bundle.frames_per_beat());
        let probs: f32 = report.classification.probs.iter().sum();
        assert!((probs - 1.0).abs() < 1e-4);
        assert!((0.0..=1.0).contains(&report.classification.alpha));
        assert!(report.truth.is_some());
    }
    // Each frame is encoded once: beats share no frames at 30 fps and 80 bpm.
    assert_eq!(
        stats.frames_encoded,
        (sink.beats.len() * bundle.frames_per_beat()) as u64
    );
    let truths: Vec<View> = sink.beats.iter().filter_map(|b| b.truth).collect();
    for view in [View::Plax, View::A4c, View::Subcostal] {
        assert!(truths.contains(&view), "no beat of {view} in {truths:?}");
    }
}

#[test]
fn demo_command_streams_one_json_label_per_heartbeat() {
    let out = echoview()
        .args([
            "demo",
            "--views",
            "PLAX,A4C",
            "--beats-per-view",
            "3",
            "--seed",
            "3",
        ])
        .arg("--model")
        .arg(demo_bundle_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 4, "{stdout}\n{stderr}");
    let mut last_t = 0.0;
    for line in &lines {
        let t = line["t"].as_f64().unwrap();
        assert!(t > last_t, "beats in time order");
        last_t = t;
        let label = line["label"].as_str().unwrap();
        assert!(
            label == "unknown" || View::from_name(label).is_some(),
            "{label}"
        );
        assert_eq!(line["probs"].as_object().unwrap().len(), 11);
        assert_eq!(line["gating"], "ecg");
        let hr = line["hr_bpm"].as_f64().unwrap();
        assert!((40.0..=180.0).contains(&hr), "{hr}");
        assert!(["PLAX", "A4C"].contains(&line["truth"].as_str().unwrap()));
        assert!(line["beat"].as_u64().is_some() && line["confidence"].as_f64().is_some());
    }
    assert!(
        stderr.contains("beats labelled"),
        "summary on stderr: {stderr}"
    );
}

#[test]
fn sim_then_replay_via_the_binary_and_a_closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("s.mcap");
    let out = echoview()
        .args([
            "sim",
            "--views",
            "A2C",
            "--beats-per-view",
            "4",
            "--format",
            "yuyv",
            "--out",
        ])
        .arg(&session)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = replay_command(&session).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 2);

    // `echoview replay ... | head -1`: the reader goes away; replay ends quietly with 0.
    let mut child = replay_command(&session)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn truncated_session_reports_its_beats_then_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.mcap");
    let config = SimConfig {
        seed: 11,
        scan: ScanScript::from_views(&[View::A4c], 12),
        ..SimConfig::default()
    };
    write_session(config, &path);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.mcap");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();

    let out = replay_command(&cut).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cut.mcap") && stderr.contains("interrupted"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // What was recorded before the cut is still labelled.
    assert!(
        String::from_utf8_lossy(&out.stdout).lines().count() >= 3,
        "{stderr}"
    );

    let junk = dir.path().join("junk.mcap");
    std::fs::write(&junk, b"this is not a session").unwrap();
    let out = replay_command(&junk).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("junk.mcap") && stderr.contains("not an MCAP"),
        "{stderr}"
    );
}

/// Copies the demo bundle into a temporary folder so a test can damage it.
fn copy_bundle(to: &Path) {
    for entry in std::fs::read_dir(demo_bundle_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn bundle_with_a_wrong_hash_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let head = dir.path().join("head.onnx");
    let mut bytes = std::fs::read(&head).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&head, bytes).unwrap();

    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("head.onnx") && err.contains("sha256"), "{err}");

    let out = echoview()
        .args([
            "demo",
            "--views",
            "PLAX",
            "--beats-per-view",
            "2",
            "--model",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("head.onnx") && stderr.contains("--model"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn manifest_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let manifest = dir.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("\"A4C\"", "\"A6C\"", 1)).unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("A6C") && err.contains("manifest.toml"),
        "{err}"
    );

    std::fs::write(&manifest, "name = 3").unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a valid model manifest"), "{err}");
}

#[test]
fn demo_bundle_passes_its_self_test_on_tract() {
    let out = echoview()
        .args(["model", "check"])
        .arg(demo_bundle_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("self-test passed"), "{stdout}");
}

/// Replays `path` with the demo bundle through the library and returns the reports.
fn replay_with_demo(path: &Path) -> Vec<BeatReport> {
    let bundle = Bundle::load(&demo_bundle_dir()).unwrap();
    let engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let mut pipeline = Pipeline::new(&bundle, engine);
    let mut sink = Collect::default();
    replay_session(path, &mut pipeline, &mut sink).unwrap();
    sink.beats
}

#[test]
fn trained_demo_bundle_labels_a_fresh_scan_of_every_view() {
    // Seeds 1000-1039 trained and validated the demo model; this scan is new to it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.mcap");
    let config = SimConfig {
        seed: 4242,
        scan: ScanScript::from_views(&View::ALL, 4),
        ..SimConfig::default()
    };
    write_session(config, &path);
    let beats = replay_with_demo(&path);
    assert!(beats.len() >= 40, "{} beats", beats.len());
    let correct = beats
        .iter()
        .filter(|b| b.truth.map(Label::View) == Some(b.classification.label))
        .count();
    let accuracy = correct as f64 / beats.len() as f64;
    assert!(accuracy >= 0.97, "{correct}/{} correct", beats.len());
}

#[test]
fn trained_demo_bundle_calls_noise_unknown() {
    // The simulated ECG (so beats are gated as usual) with video of pure speckle-free noise.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.mcap");
    let config = SimConfig {
        seed: 77,
        scan: ScanScript::from_views(&[View::A4c], 12),
        ..SimConfig::default()
    };
    let mut writer = SessionWriter::create(&path).unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for event in Simulator::new(config).unwrap() {
        match event {
            SimEvent::Frame { mut frame, .. } => {
                for byte in &mut frame.data {
                    // xorshift64: deterministic noise without a dependency.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *byte = (state >> 56) as u8;
                }
                writer.write_frame(&frame).unwrap();
            }
            SimEvent::Ecg(block) => writer.write_ecg(&block).unwrap(),
            SimEvent::RPeak { .. } => {}
        }
    }
    writer.finish().unwrap();
    let beats = replay_with_demo(&path);
    assert!(beats.len() >= 10, "{} beats", beats.len());
    let unknown = beats
        .iter()
        .filter(|b| b.classification.label == Label::Unknown)
        .count();
    assert!(
        unknown * 10 >= beats.len() * 9,
        "{unknown}/{} unknown",
        beats.len()
    );
}
