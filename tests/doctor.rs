//! `echoview doctor --json` end to end: with the simulator as the configured source and a
//! simulated ECG board on a pseudo-terminal (`echoview sim --ecg-serial pty`), every check
//! reports a status and nothing fails; a capture device or ECG port that does not exist
//! fails with a reason naming it, and the exit status says so.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn doctor(args: &[&str]) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .arg("doctor")
        .arg("--json")
        .args(["--latency-runs", "1"])
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

const ALL: [&str; 14] = [
    "config",
    "video.device",
    "video.stream",
    "ecg.port",
    "ecg.rate",
    "ecg.quality",
    "model.bundle",
    "model.selftest",
    "engine.tensorrt",
    "engine.latency",
    "socket",
    "disk",
    "clock",
    "",
];

/// The simulated ECG board, killed on drop.
struct Board(Child, String);

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `echoview sim --ecg-serial pty` and returns it with its pseudo-terminal's path.
fn board() -> Board {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["sim", "--ecg-serial", "pty", "--views", "PLAX"])
        .args(["--beats-per-view", "60", "--protocol", "binary"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let path = line
        .split_whitespace()
        .find(|w| w.starts_with("/dev/"))
        .map(|w| w.trim_end_matches(';').to_string())
        .unwrap_or_else(|| panic!("no pty path in {line:?}"));
    Board(child, path)
}

#[test]
fn with_sim_sources_every_check_reports_and_none_fails() {
    let board = board();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("labels.sock");
    let (ok, report) = doctor(&[
        "--sim",
        "--socket",
        socket.to_str().unwrap(),
        "--record",
        tmp.path().to_str().unwrap(),
        "--ecg",
        &board.1,
        "--ecg-seconds",
        "4",
    ]);
    for name in ALL.iter().filter(|n| !n.is_empty()) {
        let c = check(&report, name);
        let status = c["status"].as_str().unwrap();
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&status),
            "{name}: {c}"
        );
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
    }
    assert_eq!(report["checks"].as_array().unwrap().len(), ALL.len() - 1);
    // The simulator is the source, so there is no capture device to check...
    assert_eq!(check(&report, "video.device")["status"], "skip");
    // ...but the ECG board named on the command line is listened to for real.
    assert_eq!(check(&report, "ecg.port")["status"], "ok", "{report}");
    assert_eq!(check(&report, "ecg.rate")["status"], "ok", "{report}");
    assert_ne!(check(&report, "ecg.quality")["status"], "skip", "{report}");
    assert!(
        check(&report, "ecg.rate")["value"]
            .as_str()
            .unwrap()
            .contains("against 500 Hz"),
        "{report}"
    );
    for name in ["model.bundle", "model.selftest", "socket", "clock"] {
        assert_eq!(check(&report, name)["status"], "ok", "{name}: {report}");
    }
    // Measured, but the verdict depends on the machine's speed and load.
    let latency = check(&report, "engine.latency");
    assert!(
        ["ok", "warn"].contains(&latency["status"].as_str().unwrap()),
        "{latency}"
    );
    assert!(
        latency["value"].as_str().unwrap().contains("ms/frame"),
        "{latency}"
    );
    assert_eq!(check(&report, "engine.tensorrt")["status"], "skip");
    assert_ne!(
        check(&report, "disk")["status"],
        "skip",
        "recording is configured"
    );
    assert!(ok, "no check failed, so doctor succeeds: {report}");
    assert_eq!(report["ok"], true);
}

#[test]
fn a_missing_device_fails_with_its_name() {
    let (ok, report) = doctor(&[
        "--video",
        "/nonexistent/video7",
        "--ecg",
        "/nonexistent/ttyECG",
        "--ecg-seconds",
        "0.5",
    ]);
    assert!(!ok, "a failed check makes doctor fail: {report}");
    assert_eq!(report["ok"], false);
    let video = check(&report, "video.device");
    assert_eq!(video["status"], "fail");
    assert!(
        video["detail"]
            .as_str()
            .unwrap()
            .contains("no such device: /nonexistent/video7"),
        "{video}"
    );
    assert!(
        video["fix"].as_str().unwrap().contains("--video"),
        "{video}"
    );
    let ecg = check(&report, "ecg.port");
    assert_eq!(ecg["status"], "fail");
    assert!(
        ecg["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/ttyECG does not exist"),
        "{ecg}"
    );
    assert_eq!(check(&report, "ecg.rate")["status"], "skip");
}

#[test]
fn a_bad_config_file_is_one_failing_check() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("echoview.toml");
    std::fs::write(&config, "[socket]\ngroop = \"video\"\n").unwrap();
    let (ok, report) = doctor(&["--config", config.to_str().unwrap()]);
    assert!(!ok);
    let c = check(&report, "config");
    assert_eq!(c["status"], "fail");
    assert!(c["detail"].as_str().unwrap().contains("groop"), "{c}");
}
