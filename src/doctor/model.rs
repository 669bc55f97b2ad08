//! The model checks: bundle hashes, self-test, engine selection and inference latency.

use std::path::Path;
use std::time::Instant;

use super::{Check, Status};
use crate::bundle::Bundle;
use crate::engine::{self, Engine, EngineKind};
use crate::selftest;

/// The shortest heartbeat the cart must keep up with: 150 bpm. A beat whose frames take
/// longer than this to classify makes the labels fall behind the scan.
pub(super) const BEAT_BUDGET_MS: f64 = 400.0;

/// Runs the model checks on the bundle in `dir`: `model.bundle`, `model.selftest`,
/// `engine.tensorrt` and `engine.latency`, with `runs` timed inferences per network.
pub(super) fn checks(dir: &Path, kind: EngineKind, runs: usize) -> Vec<Check> {
    let mut out = Vec::new();
    let shown = dir.display().to_string();
    let bundle = match Bundle::load(dir) {
        Ok(bundle) => bundle,
        Err(e) => {
            out.push(Check::problem(
                "model.bundle",
                Status::Fail,
                shown,
                e.to_string(),
                "install a good bundle (`echoview model install BUNDLE`), switch back to the \
                 previous one (`echoview model rollback`), or name another with --model DIR",
            ));
            out.push(Check::skip("model.selftest", "the bundle does not load"));
            out.push(tensorrt(None));
            out.push(Check::skip("engine.latency", "the bundle does not load"));
            return out;
        }
    };
    out.push(Check::ok(
        "model.bundle",
        bundle.identity(),
        format!("every file in {shown} matches its sha256 in the manifest"),
    ));
    let mut runner = match engine::open(&bundle, kind) {
        Ok(runner) => runner,
        Err(e) => {
            out.push(Check::problem(
                "model.selftest",
                Status::Fail,
                kind.name(),
                e.to_string(),
                "the bundle was exported for another engine or toolchain: install a bundle \
                 made for this echoview release",
            ));
            out.push(tensorrt(Some(&bundle)));
            out.push(Check::skip(
                "engine.latency",
                "the engine does not load the bundle",
            ));
            return out;
        }
    };
    out.push(match selftest::run(&bundle, runner.as_mut()) {
        Ok(report) => Check::ok("model.selftest", kind.name(), report.to_string()),
        Err(e) => Check::problem(
            "model.selftest",
            Status::Fail,
            kind.name(),
            e.to_string(),
            "do not use this bundle: reinstall it, or `echoview model rollback`",
        ),
    });
    out.push(tensorrt(Some(&bundle)));
    out.push(latency(&bundle, runner.as_mut(), runs));
    out
}

/// TensorRT's part of engine selection: each layer `--engine auto` goes through (feature,
/// library and its version, GPU, the plan against this model, TensorRT and GPU), from
/// [`crate::engine::tensorrt::probe`]. A build without TensorRT is not a fault (x86 carts and
/// test machines run tract by design); a TensorRT build that would fall back is a warning,
/// since labels still come, on the CPU.
pub(super) fn tensorrt(bundle: Option<&Bundle>) -> Check {
    const NAME: &str = "engine.tensorrt";
    let Some(bundle) = bundle else {
        return Check::skip(NAME, "the bundle does not load");
    };
    let report =
        crate::engine::tensorrt::probe(bundle, &crate::engine::TrtOptions::for_bundle(bundle));
    let text = report.to_string().lines().collect::<Vec<_>>().join("; ");
    match (report.compiled, &report.verdict) {
        (false, _) => Check::skip(NAME, text),
        (true, None) => Check::ok(NAME, "tensorrt", text),
        (true, Some(reason)) => Check::problem(
            NAME,
            Status::Warn,
            reason.code(),
            text,
            if reason.plan_rebuild_helps() {
                "with libnvinfer and the GPU present, the daemon rebuilds the plan in the background \
                 (model.plan_rebuild) and serves \
                 on tract meanwhile; by hand: board/build-engine.sh --onnx ... (README: TensorRT \
                 on the Jetson)"
            } else {
                "install the TensorRT of the JetPack this package was built for (README: \
                 TensorRT on the Jetson); the daemon runs on tract meanwhile"
            },
        ),
    }
}

/// Times the encoder on one frame and the head on one beat, `runs` times each, on the
/// self-test's reference input.
fn latency(bundle: &Bundle, runner: &mut dyn Engine, runs: usize) -> Check {
    const NAME: &str = "engine.latency";
    let input = &bundle.manifest.input;
    let frame = selftest::reference_frame(
        input.width,
        input.height,
        0,
        input.mean.first().copied().unwrap_or(0.0),
        input.std.first().copied().unwrap_or(1.0),
    );
    let mut features = vec![0.0f32; bundle.feature_dim()];
    let beat = vec![0.0f32; bundle.feature_dim() * bundle.frames_per_beat()];
    let mut encode_ms = Vec::with_capacity(runs);
    let mut head_ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        if let Err(e) = runner.encode(&frame, &mut features) {
            return Check::problem(
                NAME,
                Status::Fail,
                runner.name(),
                e.to_string(),
                "see model.selftest",
            );
        }
        encode_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        if let Err(e) = runner.head(&beat) {
            return Check::problem(
                NAME,
                Status::Fail,
                runner.name(),
                e.to_string(),
                "see model.selftest",
            );
        }
        head_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    judge_latency(
        runner.name(),
        median(&mut encode_ms),
        median(&mut head_ms),
        bundle.frames_per_beat(),
        runs.max(1),
    )
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub(super) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The verdict on per-frame and per-beat inference times: the worst case, a beat whose
/// `frames` frames are all new, must fit in [`BEAT_BUDGET_MS`].
pub(super) fn judge_latency(
    engine: &str,
    encode_ms: f64,
    head_ms: f64,
    frames: usize,
    runs: usize,
) -> Check {
    const NAME: &str = "engine.latency";
    let beat_ms = encode_ms * frames as f64 + head_ms;
    let value = format!(
        "{engine}: encoder {encode_ms:.1} ms/frame, head {head_ms:.1} ms/beat, \
         {beat_ms:.0} ms per beat of {frames} frames (median of {runs})"
    );
    if beat_ms > BEAT_BUDGET_MS {
        Check::problem(
            NAME,
            Status::Warn,
            value,
            format!(
                "a beat takes longer to classify than a heartbeat lasts at 150 bpm \
                 ({BEAT_BUDGET_MS:.0} ms): labels fall behind at high heart rates"
            ),
            "set the power profile to maximum (board/jetson/README.md: power), stop other \
             loads, or use the TensorRT engine",
        )
    } else {
        Check::ok(
            NAME,
            value,
            format!("fits the {BEAT_BUDGET_MS:.0} ms of a heartbeat at 150 bpm"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn latency_against_the_beat_budget() {
        assert_eq!(judge_latency("tract", 20.0, 5.0, 8, 5).status, Status::Ok);
        let slow = judge_latency("tract", 60.0, 5.0, 8, 5);
        assert_eq!(slow.status, Status::Warn);
        assert!(slow.value.contains("485 ms per beat"), "{}", slow.value);
    }

    #[test]
    fn the_demo_bundle_passes_every_model_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let checks = checks(&dir, EngineKind::Tract, 1);
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "model.bundle",
                "model.selftest",
                "engine.tensorrt",
                "engine.latency"
            ]
        );
        for c in &checks[..2] {
            assert_eq!(c.status, Status::Ok, "{c:?}");
        }
        assert!(
            checks[0].value.starts_with("echoview-demo "),
            "{:?}",
            checks[0]
        );
    }

    #[test]
    fn a_missing_bundle_fails_with_the_way_out() {
        let checks = checks(Path::new("/nonexistent/model"), EngineKind::Tract, 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(
            checks[0].detail.contains("/nonexistent/model"),
            "{:?}",
            checks[0]
        );
        assert!(checks[0].fix.as_deref().unwrap().contains("model rollback"));
        assert_eq!(checks[1].status, Status::Skip);
    }
}
