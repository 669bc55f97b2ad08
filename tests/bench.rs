//! `echoview bench --json --quick` on the demo bundle: every stage runs and the report has the
//! fields and budgets tools read. Timings are not checked (the machine may be loaded); the
//! budget arithmetic is tested in `bench::tests`.

use std::path::Path;
use std::process::Command;

#[test]
fn quick_bench_reports_every_figure_and_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["bench", "--json", "--quick", "--model"])
        .arg(root.join("models/demo"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "encoder_ms",
        "head_ms",
        "label_latency_ms",
        "preprocess_ms",
        "qrs_realtime_factor",
        "peak_rss_mb",
    ] {
        let v = report[key].as_f64();
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{key} = {:?}; {stderr}",
            report[key]
        );
    }
    // The latency splits at the beat's cut, and the daemon ran as configured by default.
    for key in ["label_latency_detection_ms", "label_latency_post_cut_ms"] {
        let v = report[key].as_f64();
        assert!(v.is_some_and(|v| v >= 0.0), "{key} = {:?}", report[key]);
    }
    assert_eq!(report["label_latency"]["lookahead"], true);
    assert!(report["label_latency"]["encoded_at_cut"].is_array());
    assert!(report["throughput"]["kept_up"].is_boolean());
    assert!(
        report["throughput"]["max_bpm"]
            .as_f64()
            .is_some_and(|v| v > 0.0)
    );
    // The default engine is tract, asked for by name: no fallback to explain.
    assert_eq!(report["engine"], "tract");
    assert_eq!(report["engine_requested"], "tract");
    assert!(report["engine_fallback"].is_null());
    assert_eq!(report["bundle"]["name"], "echoview-demo");
    assert_eq!(report["bundle"]["hash"].as_str().unwrap().len(), 64);
    assert!(report["bundle"]["version"].is_string());
    assert!(report["replay"]["beats"].as_u64().unwrap() >= 1);
    assert!(report["qrs"]["peaks"].as_u64().unwrap() >= 50);
    let budgets = report["budgets"].as_object().unwrap();
    for name in [
        "encoder_vs_onnxruntime",
        "label_latency",
        "preprocess",
        "qrs_realtime",
        "peak_rss",
        "zero_frame_allocations",
    ] {
        let status = budgets[name]["status"].as_str().unwrap();
        assert!(
            ["pass", "fail", "not measured"].contains(&status),
            "{name}: {status}"
        );
    }
    // Without --peer-json the ratio budget cannot be judged, and says so.
    assert_eq!(budgets["encoder_vs_onnxruntime"]["status"], "not measured");
}
