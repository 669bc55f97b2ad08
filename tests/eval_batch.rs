//! `echoview eval` and `echoview batch` end to end: simulated sessions of several views, the
//! committed demo model, the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use echoview::sim::record::record;
use echoview::sim::{ScanScript, SimConfig};
use echoview::views::View;

fn echoview() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echoview"))
}

fn demo_bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

/// Writes a short session of `views`, three beats each, as `echoview sim` does.
fn write_session(path: &Path, seed: u64, views: &[View]) {
    let config = SimConfig {
        seed,
        scan: ScanScript::from_views(views, 3),
        ..SimConfig::default()
    };
    record(config, path).unwrap();
}

#[test]
fn eval_scores_a_multi_view_set_and_draws_the_confusion_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.mcap");
    let b = dir.path().join("b.mcap");
    write_session(&a, 11, &[View::Plax, View::A4c]);
    write_session(&b, 12, &[View::Subcostal]);
    let report = dir.path().join("report");
    let out = echoview()
        .arg("eval")
        .args([&a, &b])
        .arg("--report")
        .arg(&report)
        .arg("--model")
        .arg(demo_bundle_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let per_beat = &json["per_beat"];
    let total = per_beat["total"].as_u64().unwrap();
    let correct = per_beat["correct"].as_u64().unwrap();
    // Three views, three beats each; the edges of each session may lose a beat.
    assert!((6..=9).contains(&total), "{per_beat}");
    let accuracy = per_beat["accuracy"].as_f64().unwrap();
    assert!((accuracy - correct as f64 / total as f64).abs() < 1e-9);
    // The demo model labels the simulator's views almost perfectly.
    assert!(accuracy >= 0.8, "{per_beat}");
    // The confusion matrix holds every scored beat, row by true view.
    let rows = json["beat_confusion"]["counts"].as_array().unwrap();
    assert_eq!(rows.len(), 11);
    let sum: u64 = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(sum, total);
    let plax_row: u64 = rows[View::Plax.index()]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(plax_row >= 2, "{rows:?}");
    let classes: Vec<&str> = per_beat["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["view"].as_str().unwrap())
        .collect();
    for view in ["PLAX", "A4C", "Subcostal"] {
        assert!(classes.contains(&view), "{classes:?}");
    }
    // Sessions: a's majority truth is a tie broken towards PLAX or A4C; b is Subcostal.
    let sessions = json["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1]["truth"], "Subcostal");
    assert_eq!(json["per_session"]["total"], 2);

    for name in ["confusion_beats.png", "confusion_sessions.png"] {
        let file = std::fs::File::open(report.join(name)).unwrap();
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (960, 800), "{name}");
        // Not blank: the drawing put dark pixels (text, shaded cells) on the white page.
        assert!(buf.iter().any(|&v| v < 100), "{name} is blank");
    }
}

#[test]
fn eval_takes_truth_from_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.mcap");
    write_session(&a, 13, &[View::A2c]);
    // Claim the A2C session shows PLAX: every beat becomes an error.
    let csv = dir.path().join("truth.csv");
    std::fs::write(&csv, "file,label\na.mcap,PLAX\n").unwrap();
    let report = dir.path().join("report");
    let out = echoview()
        .arg("eval")
        .arg(&a)
        .arg("--report")
        .arg(&report)
        .arg("--truth")
        .arg(&csv)
        .arg("--model")
        .arg(demo_bundle_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    assert!(json["per_beat"]["total"].as_u64().unwrap() >= 2);
    assert_eq!(json["per_beat"]["correct"], 0);
    assert_eq!(json["sessions"][0]["truth"], "PLAX");
}

#[test]
fn batch_replays_in_parallel_and_reports_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("good{i}.mcap"));
            write_session(&p, 20 + i, &[View::ALL[i as usize * 3]]);
            p
        })
        .collect();
    // A corrupt file: a valid session cut off in its middle, with garbage after.
    let corrupt = dir.path().join("corrupt.mcap");
    let mut bytes = std::fs::read(&good[0]).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes.extend_from_slice(&[0xAB; 4096]);
    std::fs::write(&corrupt, bytes).unwrap();
    let not_mcap = dir.path().join("notes.mcap");
    std::fs::write(&not_mcap, "not a session").unwrap();

    let jsonl = dir.path().join("beats.jsonl");
    let out = echoview()
        .arg("batch")
        .args([&good[0], &corrupt, &good[1], &not_mcap, &good[2]])
        .args(["--jobs", "2", "--jsonl"])
        .arg(&jsonl)
        .arg("--model")
        .arg(demo_bundle_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("2 of 5 sessions failed"), "{stderr}");
    assert!(stderr.contains("notes.mcap"), "{stderr}");

    // Every good session's beats are in the file, whole lines of JSON.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    for g in &good {
        let name = g.display().to_string();
        let beats = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["session"] == name.as_str())
            .count();
        assert!(beats >= 1, "{name}: {beats} beats");
    }
    // The table lists all five, the two bad ones as failed, in the order given.
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{stdout}");
    assert!(
        rows[1].contains("corrupt.mcap") && rows[1].contains("FAILED"),
        "{stdout}"
    );
    assert!(
        rows[3].contains("notes.mcap") && rows[3].contains("FAILED"),
        "{stdout}"
    );
    assert!(
        rows[4].contains("good2.mcap") && rows[4].contains(" ok "),
        "{stdout}"
    );
}
