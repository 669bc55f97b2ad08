//! Timing the real stages: each function runs one stage of the data path on fixed inputs and
//! returns its figures. These use the wall clock by design (they measure it); the arithmetic
//! on the samples lives in the parent module, where it is tested without one.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Summary;
use crate::bundle::Bundle;
use crate::daemon::config::Config;
use crate::daemon::infer::RecoverableModel;
use crate::daemon::notify::Notifier;
use crate::daemon::protocol::Message;
use crate::daemon::source::SimSpec;
use crate::daemon::{Daemon, ModelIdentity};
use crate::ecg::QrsDetector;
use crate::engine::{Engine, EngineKind};
use crate::media::{Frame, PixelFormat};
use crate::pipeline::{BeatReport, BeatSink, Input, Pipeline};
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::sim::{ScanScript, SimConfig, SimEvent, Simulator};
use crate::views::View;

/// Why a measurement could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A stage failed on the bench's own inputs.
    #[error("{stage}: {message}")]
    Stage {
        /// Which measurement.
        stage: &'static str,
        /// What went wrong.
        message: String,
    },
}

fn stage(stage: &'static str) -> impl Fn(String) -> MeasureError {
    move |message| MeasureError::Stage { stage, message }
}

/// How many runs to time and how many to discard first (caches, lazily built plans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Runs {
    /// Untimed calls first.
    pub warmup: usize,
    /// Timed calls.
    pub runs: usize,
}

/// Times `runs.runs` calls of `f` after `runs.warmup` untimed ones.
pub fn time<E: std::fmt::Display>(
    runs: Runs,
    what: &'static str,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Summary, MeasureError> {
    let err = stage(what);
    for _ in 0..runs.warmup {
        f().map_err(|e| err(e.to_string()))?;
    }
    let mut samples = Vec::with_capacity(runs.runs);
    for _ in 0..runs.runs {
        let t0 = Instant::now();
        f().map_err(|e| err(e.to_string()))?;
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Summary::of(&samples).ok_or_else(|| err("no runs timed (use --runs >= 1)".into()))
}

/// Width of the capture frames preprocessing is timed on.
pub const FRAME_WIDTH: u32 = 1920;
/// Height of the capture frames preprocessing is timed on.
pub const FRAME_HEIGHT: u32 = 1080;

/// Frame `seq` of a synthetic 1920x1080 YUYV cart display: a speckled 90-degree sector that
/// changes every frame under a static text band, the layout `find_region` crops and masks
/// (the same picture as `benches/preprocess.rs`).
pub fn cart_frame(seq: u64) -> Frame {
    let (w, h) = (FRAME_WIDTH, FRAME_HEIGHT);
    let stride = (2 * w).div_ceil(64) * 64;
    let mut data = vec![128u8; (stride * h) as usize];
    let mut state = seq.wrapping_mul(7_919).wrapping_add(1);
    let (apex_x, apex_y, radius) = (960.0f32, 90.0f32, 900.0f32);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 - apex_x, y as f32 - apex_y);
            let r = (dx * dx + dy * dy).sqrt();
            let luma = if dy > 0.0 && dx.abs() < dy && r < radius {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let speckle = f32::from((state >> 56) as u8) * 0.3;
                (60.0 + 120.0 * (r / 90.0).sin().abs() + speckle) as u8
            } else if y < 60 && (x / 9) % 3 != 0 && x < 700 {
                235
            } else {
                16
            };
            data[(y * stride + 2 * x) as usize] = luma;
        }
    }
    Frame {
        seq,
        t_ns: seq * 33_333_333,
        width: w,
        height: h,
        stride,
        format: PixelFormat::Yuyv,
        data,
    }
}

/// Preprocessing of one 1080p YUYV frame to the bundle's input, once the beat's region is
/// known (the per-frame work of a live beat): luma, crop, mask, resize, normalise.
pub fn preprocess(bundle: &Bundle, runs: Runs) -> Result<Summary, MeasureError> {
    let beat: Vec<Frame> = (0..3).map(cart_frame).collect();
    let refs: Vec<&Frame> = beat.iter().collect();
    let mut pre = Preprocessor::new(PreprocessConfig::for_bundle(bundle));
    let region = pre
        .find_region(&refs)
        .map_err(|e| stage("preprocess")(e.to_string()))?;
    let mut out = vec![0.0f32; pre.tensor_len()];
    let frame = &beat[2];
    time(runs, "preprocess", || {
        pre.prepare_frame(frame, &region, &mut out)
    })
}

/// QRS detection speed on a recorded ECG.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QrsFigures {
    /// The record, for the report.
    pub record: String,
    /// Its length in seconds.
    pub duration_s: f64,
    /// R-peaks found (a sanity check that the detector did its work).
    pub peaks: usize,
    /// Record duration / detection time (best of the timed passes).
    pub realtime_factor: f64,
}

/// Runs the streaming QRS detector over `samples` (sampled at `fs_hz`) `passes` times and
/// keeps the fastest pass: the detector is single-threaded and a loaded machine only ever
/// slows a pass down.
pub fn qrs(
    record: &str,
    samples: &[f32],
    fs_hz: f64,
    passes: usize,
) -> Result<QrsFigures, MeasureError> {
    let err = stage("qrs");
    let mut best = f64::INFINITY;
    let mut peaks = 0;
    for _ in 0..passes.max(1) {
        let mut detector = QrsDetector::new(fs_hz).map_err(|e| err(e.to_string()))?;
        let t0 = Instant::now();
        let mut found = 0usize;
        for &s in samples {
            found += usize::from(detector.push(s).is_some());
        }
        found += usize::from(detector.finish().is_some());
        best = best.min(t0.elapsed().as_secs_f64());
        peaks = found;
    }
    let duration_s = samples.len() as f64 / fs_hz;
    Ok(QrsFigures {
        record: record.to_string(),
        duration_s,
        peaks,
        realtime_factor: duration_s / best.max(1e-9),
    })
}

/// Encoder per frame and head per beat on `engine`, on deterministic inputs of the
/// bundle's shapes.
pub fn engine(
    engine: &mut dyn Engine,
    bundle: &Bundle,
    runs: Runs,
) -> Result<(Summary, Summary), MeasureError> {
    let m = &bundle.manifest.input;
    let image_len = (m.channels * m.width * m.height) as usize;
    let dim = bundle.feature_dim();
    let image: Vec<f32> = (0..image_len)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect();
    let mut features = vec![0.0f32; dim];
    let encoder = time(runs, "encoder", || engine.encode(&image, &mut features))?;
    let beat: Vec<f32> = (0..dim * bundle.frames_per_beat())
        .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0)
        .collect();
    let head = time(runs, "head", || engine.head(&beat).map(|_| ()))?;
    Ok((encoder, head))
}

/// A simulated scan, ready to push (rendering is not part of what replay throughput means).
pub fn simulated_inputs(beats_per_view: u32, bpm: f64) -> Result<Vec<Input>, MeasureError> {
    let config = SimConfig {
        scan: ScanScript::from_views(&[View::Plax, View::A4c], beats_per_view),
        base_bpm: bpm,
        ..SimConfig::default()
    };
    let sim = Simulator::new(config).map_err(|e| stage("simulator")(e.to_string()))?;
    let mut inputs = Vec::new();
    for event in sim {
        match event {
            SimEvent::Frame { frame, truth } => {
                let t_ns = frame.t_ns;
                inputs.push(Input::Frame(frame));
                inputs.push(Input::Truth { t_ns, view: truth });
            }
            SimEvent::Ecg(block) => inputs.push(Input::Ecg(block)),
            SimEvent::RPeak { .. } => {}
        }
    }
    Ok(inputs)
}

/// Replay throughput through [`Pipeline`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayFigures {
    /// Beats classified.
    pub beats: u64,
    /// Frames pushed.
    pub frames: u64,
    /// Wall time of the whole replay.
    pub seconds: f64,
    /// Classified beats per second.
    pub beats_per_s: f64,
    /// Video frames per second (all frames, gated or not).
    pub frames_per_s: f64,
    /// Frames the encoder ran on (T per beat unless cached).
    pub frames_encoded: u64,
}

/// Counts what the pipeline produced.
struct CountSink(u64);

impl BeatSink for CountSink {
    fn beat(&mut self, _report: &BeatReport) -> std::io::Result<()> {
        self.0 += 1;
        Ok(())
    }
}

/// Pushes `inputs` (a session in memory) through a [`Pipeline`] as fast as it goes.
pub fn replay(
    bundle: &Bundle,
    engine: Box<dyn Engine>,
    inputs: Vec<Input>,
) -> Result<ReplayFigures, MeasureError> {
    let err = stage("replay");
    let frames = inputs
        .iter()
        .filter(|i| matches!(i, Input::Frame(_)))
        .count() as u64;
    let mut pipeline = Pipeline::new(bundle, engine);
    let mut sink = CountSink(0);
    let t0 = Instant::now();
    for input in inputs {
        pipeline
            .push(input, &mut sink)
            .map_err(|e| err(e.to_string()))?;
    }
    pipeline.finish(&mut sink).map_err(|e| err(e.to_string()))?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(ReplayFigures {
        beats: sink.0,
        frames,
        seconds,
        beats_per_s: sink.0 as f64 / seconds,
        frames_per_s: frames as f64 / seconds,
        frames_encoded: pipeline.stats().frames_encoded,
    })
}

/// End-to-end label latency from the daemon, run in-process on the simulator with its
/// default configuration (encoding ahead on) and tract's default single thread, as
/// `echoview run` runs it. A label's latency splits at the beat's cut: the detection delay
/// before it (the QRS detector confirming the closing R-peak) and the post-cut latency after
/// it (what the engine adds: the head, and the frames not encoded ahead).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyFigures {
    /// The `latency_ms` the daemon published: from the delivery of the ECG block holding the
    /// beat's closing R-peak to publication. Detection delay plus post-cut latency; what
    /// `label_latency_ms` reports.
    pub published: Summary,
    /// Detection delay: `latency_ms - inference_ms`, from the delivery of the ECG block
    /// holding the closing R-peak to the beat's cut. The QRS detector's confirmation wait,
    /// which a causal detector cannot avoid.
    pub detection: Summary,
    /// Post-cut latency: `inference_ms`, from the beat's cut to publication. The part the
    /// latency budget is about.
    pub post_cut: Summary,
    /// This client's own figure: time the label line was read minus the wall time at which
    /// the beat's end was played (session time `t` after the daemon started). It adds the
    /// socket hop, and overstates by the daemon's start-up time (the source's first item
    /// anchors the clock a little after our start).
    pub client: Summary,
    /// Frames the encoder ran on after each timed beat's cut (`encoded_at_cut`); 0 when all
    /// T were encoded ahead.
    pub encoded_at_cut: Vec<u32>,
    /// From the daemon's last status: frames encoded ahead of their beat, beats classified,
    /// and beats replaced by a fresher one before inference reached them (the engine fell
    /// behind).
    pub status: Option<StatusFigures>,
    /// Labels timed.
    pub labels: usize,
    /// Simulated heart rate.
    pub bpm: f64,
    /// Whether the daemon encoded ahead (`pipeline.lookahead`, on by default).
    pub lookahead: bool,
    /// tract threads the daemon ran with.
    pub threads: usize,
}

/// Counters from the daemon's `status` message.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StatusFigures {
    /// `beats.frames_encoded_ahead`.
    pub frames_encoded_ahead: u64,
    /// `beats.classified`.
    pub beats_classified: u64,
    /// `drops.beats`: beats a fresher one replaced before inference took them.
    pub beats_dropped: u64,
}

/// tract threads the daemon runs with: it never sets a pool, so tract's default, one.
pub const DAEMON_THREADS: usize = 1;

/// Runs the daemon on a real-time simulated scan at `bpm` with `bundle` on `kind`, reads its
/// socket until `labels` views arrived (after `skip` warm-up views) or `timeout` passed.
/// Sets tract's threads to the daemon's ([`DAEMON_THREADS`]) for the rest of the process, so
/// call it after the stages timed at another count.
pub fn label_latency(
    bundle: &Bundle,
    kind: EngineKind,
    bpm: f64,
    skip: usize,
    labels: usize,
    timeout: Duration,
) -> Result<LatencyFigures, MeasureError> {
    let err = stage("label latency");
    let socket = socket_path();
    let _ = std::fs::remove_file(&socket);
    crate::engine::set_threads(DAEMON_THREADS);
    let mut config = Config::default();
    config.socket.path = socket.clone();
    let lookahead = config.pipeline.lookahead;
    let sim = SimConfig {
        scan: ScanScript::from_views(&[View::Plax, View::A4c], 50),
        base_bpm: bpm,
        // The simulator's rate wanders around `base_bpm` within these bounds.
        min_bpm: bpm.min(SimConfig::default().min_bpm),
        max_bpm: bpm.max(SimConfig::default().max_bpm),
        ..SimConfig::default()
    };
    let engine = crate::engine::open(bundle, kind).map_err(|e| err(e.to_string()))?;
    let model = RecoverableModel::new(bundle.clone(), kind, engine);
    let daemon = Daemon::new(
        config,
        vec![Arc::new(SimSpec::new(sim))],
        Box::new(model),
        ModelIdentity::of(bundle),
        Notifier::disabled(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime
            .block_on(daemon.run(async {
                let _ = stop_rx.await;
            }))
            .map_err(|e| e.to_string())
    });
    let result = read_views(&socket, started, skip, labels, timeout);
    let _ = stop_tx.send(());
    let joined = server.join();
    let _ = std::fs::remove_file(&socket);
    let views = result?;
    match joined {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(err(format!("the daemon failed: {e}"))),
        Err(_) => return Err(err("the daemon thread panicked".into())),
    }
    let summary = |samples: &[f64]| Summary::of(samples).ok_or_else(|| err("no labels".into()));
    let detection: Vec<f64> = views
        .published
        .iter()
        .zip(&views.post_cut)
        .map(|(total, post)| total - post)
        .collect();
    Ok(LatencyFigures {
        published: summary(&views.published)?,
        detection: summary(&detection)?,
        post_cut: summary(&views.post_cut)?,
        client: summary(&views.client)?,
        encoded_at_cut: views.encoded_at_cut,
        status: views.status,
        labels: views.published.len(),
        bpm,
        lookahead,
        threads: DAEMON_THREADS,
    })
}

/// A socket path of our own, so parallel benches and a running daemon are left alone.
fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("echoview-bench-{}.sock", std::process::id()))
}

/// What the client read from the daemon's socket: per timed label, in order.
#[derive(Debug, Default)]
struct Views {
    /// `latency_ms`.
    published: Vec<f64>,
    /// `inference_ms`.
    post_cut: Vec<f64>,
    /// Read time minus the beat's end, ms.
    client: Vec<f64>,
    /// `encoded_at_cut`.
    encoded_at_cut: Vec<u32>,
    /// The last status's counters.
    status: Option<StatusFigures>,
}

/// Connects to `socket` and collects the latencies of view messages, after `skip`, until
/// `labels` were timed or `timeout` passed.
fn read_views(
    socket: &Path,
    started: Instant,
    skip: usize,
    labels: usize,
    timeout: Duration,
) -> Result<Views, MeasureError> {
    let err = stage("label latency");
    let deadline = started + timeout;
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(err(format!("cannot connect to {}: {e}", socket.display())));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut views = Views::default();
    let mut seen = 0usize;
    let mut line = String::new();
    while views.published.len() < labels && Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(err("the daemon closed the socket".into())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(err(e.to_string())),
        }
        let received = started.elapsed().as_secs_f64();
        match Message::from_line(line.trim_end()) {
            Ok(Some(Message::View(view))) => {
                seen += 1;
                if seen > skip {
                    views.published.push(view.latency_ms);
                    views.post_cut.push(view.inference_ms);
                    views.client.push((received - view.t) * 1e3);
                    views.encoded_at_cut.push(view.encoded_at_cut);
                }
            }
            Ok(Some(Message::Status(status))) => {
                views.status = Some(StatusFigures {
                    frames_encoded_ahead: status.beats.frames_encoded_ahead,
                    beats_classified: status.beats.classified,
                    beats_dropped: status.drops.beats,
                });
            }
            _ => {}
        }
    }
    if views.published.is_empty() {
        return Err(err(format!(
            "no label within {:.0} s; a beat may take longer to classify than to happen (lower --bpm)",
            timeout.as_secs_f64()
        )));
    }
    Ok(views)
}

/// Peak resident set size of this process so far, MiB: `VmHWM` from `/proc/self/status`, or
/// `getrusage`'s `ru_maxrss` where there is no procfs.
pub fn peak_rss_mb() -> f64 {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        return kb / 1024.0;
    }
    // SAFETY: getrusage writes into the zeroed struct we own; no other preconditions.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        usage.ru_maxrss as f64 / 1024.0
    } else {
        f64::NAN
    }
}
