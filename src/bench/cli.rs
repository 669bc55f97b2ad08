//! `echoview bench`: the command line around [`super::measure`] and [`super::budgets`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::measure::{self, Runs};
use super::{Figures, PeerFile, Throughput, budgets};
use crate::bundle::Bundle;
use crate::ecg::{SampleFormat, read_samples};
use crate::engine::{self, EngineKind};

/// `echoview bench`
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model bundle to measure [default: the benchmark bundle models/bench-b2-288 of the source
    /// tree this binary was built from].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Inference engine.
    #[arg(long, value_enum, default_value = "tract")]
    pub engine: EngineKind,
    /// Threads for tract's kernels (compare with onnxruntime at the same count).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed runs per figure (after the warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Tiny counts everywhere (2 runs, 1 warm-up, 3 labels, a short replay): checks that
    /// every stage runs, not how fast.
    #[arg(long)]
    pub quick: bool,
    /// Peer timings from `benches/peers/run.sh --out FILE`, for the encoder ratio budget.
    #[arg(long, value_name = "FILE")]
    pub peer_json: Option<PathBuf>,
    /// ECG record (MIT-BIH style i16, 360 Hz) for the QRS throughput [default:
    /// tests/data/mitbih/100.i16 of the source tree].
    #[arg(long, value_name = "FILE")]
    pub ecg: Option<PathBuf>,
    /// Heart rate of the simulated scan the daemon labels, 40 to 180 (the simulator's range).
    /// Encoding ahead leaves only the head after a beat's cut when the engine encodes T frames
    /// within a beat; the report's `throughput` says whether it did, and up to which rate it
    /// would.
    #[arg(long, default_value_t = 70.0)]
    pub bpm: f64,
    /// Labels to time from the daemon (after two warm-up labels).
    #[arg(long, default_value_t = 8)]
    pub labels: usize,
    /// Skip the daemon's label latency (it takes real time: about labels + 2 beats).
    #[arg(long)]
    pub no_daemon: bool,
    /// Print one JSON object instead of a table. `label_latency_ms` is the daemon's median
    /// published `latency_ms`: from the delivery of the ECG holding a beat's closing R-peak to
    /// the label on the socket. `label_latency` splits it into `detection` (to the beat's
    /// cut: the QRS detector's confirmation delay) and `post_cut` (cut to label, the view's
    /// `inference_ms`), which the latency budget judges against one encoder pass + 10 ms.
    #[arg(long)]
    pub json: bool,
}

/// Runs every measurement and prints the report; exits 0 even when a budget fails (the
/// report says which), non-zero only when a measurement could not be taken.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = args
        .model
        .clone()
        .unwrap_or_else(|| root.join("models/bench-b2-288"));
    let bundle = Bundle::load(&dir).with_context(|| {
        format!(
            "loading model bundle {} (choose another with --model DIR)",
            dir.display()
        )
    })?;
    let peers = match &args.peer_json {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading peer file {}", path.display()))?;
            Some(PeerFile::parse(
                &text,
                &path.display().to_string(),
                &bundle.manifest.name,
                &bundle.manifest.version,
            )?)
        }
        None => None,
    };
    let runs = if args.quick {
        Runs { warmup: 1, runs: 2 }
    } else {
        Runs {
            warmup: args.warmup,
            runs: args.runs,
        }
    };
    if !(40.0..=180.0).contains(&args.bpm) {
        anyhow::bail!(
            "--bpm {} is outside the simulator's 40..=180; choose one in that range",
            args.bpm
        );
    }
    engine::set_threads(args.threads);

    let preprocess = measure::preprocess(&bundle, runs)?;
    let ecg_path = args
        .ecg
        .clone()
        .unwrap_or_else(|| root.join("tests/data/mitbih/100.i16"));
    let samples = read_samples(&ecg_path, SampleFormat::I16Le)
        .with_context(|| format!("reading the ECG record {} (--ecg FILE)", ecg_path.display()))?;
    let samples = if args.quick {
        &samples[..samples.len().min(360 * 60)]
    } else {
        &samples[..]
    };
    let qrs = measure::qrs(
        &ecg_path.display().to_string(),
        samples,
        360.0,
        if args.quick { 1 } else { 3 },
    )?;

    let rss_before_model = measure::peak_rss_mb();
    // `auto` may end on tract: the report names the engine that ran and why.
    let selected = engine::select(
        &bundle,
        args.engine,
        &engine::TrtOptions::for_bundle(&bundle),
    )
    .with_context(|| format!("opening {} on {}", args.engine.name(), dir.display()))?;
    let engine_fallback = selected.fallback.as_ref().map(ToString::to_string);
    let engine_ran = selected.engine.name();
    let mut eng = selected.engine;
    let (encoder, head) = measure::engine(eng.as_mut(), &bundle, runs)?;
    let peak_rss_mb = measure::peak_rss_mb();

    let (beats_per_view, labels, skip) = if args.quick {
        (2, 2, 0)
    } else {
        (6, args.labels, 2)
    };
    let inputs = measure::simulated_inputs(beats_per_view, 70.0)?;
    let replay = measure::replay(&bundle, eng, inputs)?;

    // A daemon that publishes nothing in time is a finding, not a reason to lose the other
    // figures: the report carries the error instead.
    let (latency, latency_error) = if args.no_daemon {
        (None, Some("skipped (--no-daemon)".to_string()))
    } else {
        let beat_s = 60.0 / args.bpm;
        let timeout = Duration::from_secs_f64(10.0 + 3.0 * beat_s * (labels + skip) as f64);
        match measure::label_latency(&bundle, args.engine, args.bpm, skip, labels, timeout) {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e.to_string())),
        }
    };
    let peak_rss_end_mb = measure::peak_rss_mb();

    let figures = Figures {
        threads: args.threads,
        encoder,
        post_cut_latency: latency.as_ref().map(|l| l.post_cut),
        preprocess,
        qrs_realtime_factor: qrs.realtime_factor,
        peak_rss_mb,
        allocations_per_frame: None,
    };
    let verdicts = budgets(&figures, peers.as_ref());
    // Whether the encoder can keep up with T frames per beat at the daemon's heart rate (on
    // this run's encoder median, taken at --threads; the daemon runs at its own count).
    let throughput = Throughput::of(
        args.bpm,
        bundle.frames_per_beat(),
        encoder.median_ms,
        head.median_ms,
    );
    let ratios = peers.as_ref().map(|p| {
        let of = |rt: &std::collections::BTreeMap<String, super::PeerTimings>| {
            rt.iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        json!({
                            "encoder_ms": t.encoder.median_ms,
                            "head_ms": t.head.median_ms,
                            "tract_over_peer_encoder": encoder.median_ms / t.encoder.median_ms,
                            "tract_over_peer_head": head.median_ms / t.head.median_ms,
                        }),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        };
        json!({
            "onnxruntime": of(&p.onnxruntime),
            "torch": of(&p.torch),
            "passes_per_beat": p.passes_per_beat,
        })
    });
    let report = json!({
        "bundle": {
            "name": bundle.manifest.name,
            "version": bundle.manifest.version,
            "hash": bundle.manifest_sha256,
            "dir": dir.display().to_string(),
            "input": [bundle.manifest.input.height, bundle.manifest.input.width],
            "frames_per_beat": bundle.frames_per_beat(),
        },
        "engine": engine_ran,
        "engine_requested": args.engine.name(),
        "engine_fallback": engine_fallback,
        "threads": args.threads,
        "quick": args.quick,
        "runs": runs,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_average": load_average(),
        "encoder_ms": encoder.median_ms,
        "encoder": encoder,
        "head_ms": head.median_ms,
        "head": head,
        "label_latency_ms": latency.as_ref().map(|l| l.published.median_ms),
        "label_latency_detection_ms": latency.as_ref().map(|l| l.detection.median_ms),
        "label_latency_post_cut_ms": latency.as_ref().map(|l| l.post_cut.median_ms),
        "label_latency": latency,
        "throughput": throughput,
        "label_latency_error": latency_error,
        "preprocess_ms": preprocess.median_ms,
        "preprocess": preprocess,
        "qrs_realtime_factor": qrs.realtime_factor,
        "qrs": qrs,
        "replay": replay,
        "peak_rss_mb": peak_rss_mb,
        "rss_before_model_mb": rss_before_model,
        "peak_rss_end_mb": peak_rss_end_mb,
        "peers": ratios,
        "budgets": verdicts,
    });
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The 1-minute load average, so a report says how busy the machine was.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The human-readable form of the report.
fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    println!(
        "bundle {} {} ({}), engine {} with {} thread(s), load average {}",
        r["bundle"]["name"].as_str().unwrap_or("?"),
        r["bundle"]["version"].as_str().unwrap_or("?"),
        r["bundle"]["hash"].as_str().unwrap_or("?"),
        r["engine"].as_str().unwrap_or("?"),
        r["threads"],
        f(&r["load_average"]),
    );
    if let Some(reason) = r["engine_fallback"].as_str() {
        println!(
            "asked for {}, running tract: {reason}",
            r["engine_requested"].as_str().unwrap_or("?")
        );
    }
    println!("{:<34}{:>12}{:>12}", "figure", "median", "p90");
    for (name, key) in [
        ("encoder per frame (ms)", "encoder"),
        ("head per beat (ms)", "head"),
        ("preprocess 1080p frame (ms)", "preprocess"),
    ] {
        println!(
            "{name:<34}{:>12}{:>12}",
            f(&r[key]["median_ms"]),
            f(&r[key]["p90_ms"])
        );
    }
    let l = &r["label_latency"];
    println!(
        "{:<34}{:>12}{:>12}",
        "label latency, published (ms)",
        f(&l["published"]["median_ms"]),
        f(&l["published"]["p90_ms"])
    );
    for (name, key) in [
        ("  detection delay (ms)", "detection"),
        ("  post-cut: cut -> label (ms)", "post_cut"),
        ("label latency, client (ms)", "client"),
    ] {
        println!(
            "{name:<34}{:>12}{:>12}",
            f(&l[key]["median_ms"]),
            f(&l[key]["p90_ms"])
        );
    }
    if let Some(at_cut) = l["encoded_at_cut"].as_array() {
        let list: Vec<String> = at_cut.iter().map(ToString::to_string).collect();
        println!(
            "frames encoded after the cut, per label: [{}]; status {}",
            list.join(", "),
            l["status"]
        );
    }
    let t = &r["throughput"];
    println!(
        "engine {} at {} bpm: {} frames x encoder + head = {} ms per beat of {} ms; \
         it could up to {} bpm",
        if t["kept_up"].as_bool() == Some(true) {
            "can keep up"
        } else {
            "cannot keep up"
        },
        f(&t["bpm"]),
        t["frames_per_beat"],
        f(&t["work_per_beat_ms"]),
        f(&t["beat_ms"]),
        f(&t["max_bpm"])
    );
    println!(
        "{:<34}{:>12}",
        "QRS (x real time)",
        f(&r["qrs_realtime_factor"])
    );
    println!(
        "{:<34}{:>12}",
        "replay (beats/s)",
        f(&r["replay"]["beats_per_s"])
    );
    println!(
        "{:<34}{:>12}",
        "replay (frames/s)",
        f(&r["replay"]["frames_per_s"])
    );
    println!(
        "{:<34}{:>12}",
        "peak RSS, model loaded (MiB)",
        f(&r["peak_rss_mb"])
    );
    if let Some(peers) = r["peers"].as_object() {
        for rt in ["onnxruntime", "torch"] {
            if let Some(by_threads) = peers[rt].as_object() {
                for (n, p) in by_threads {
                    println!(
                        "tract / {rt} {n} thread(s): encoder {} ({} ms), head {} ({} ms)",
                        f(&p["tract_over_peer_encoder"]),
                        f(&p["encoder_ms"]),
                        f(&p["tract_over_peer_head"]),
                        f(&p["head_ms"])
                    );
                }
            }
        }
    }
    if let Some(budgets) = r["budgets"].as_object() {
        for (name, v) in budgets {
            println!(
                "budget {name:<24} {:<13} {}",
                v["status"].as_str().unwrap_or("?"),
                v["detail"].as_str().unwrap_or("")
            );
        }
    }
}
