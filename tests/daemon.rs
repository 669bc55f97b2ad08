//! `echoview run` end to end: the real binary (or the library's server in-process) on a short
//! simulated session played at its real pace (its ECG, or the same ECG sent by a board on a
//! pseudo-terminal), with the demo model.
//!
//! Each test makes its own session (a few seconds of 320x240 video and ECG from the
//! simulator), socket and recording folder in a temporary directory, so the tests run in
//! parallel and never touch /run or /etc.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{demo_model, session};
use echoview::bundle::Bundle;
use echoview::classify::BeatClassification;
use echoview::daemon::config::Config;
use echoview::daemon::infer::{ClassifyBeat, ModelStage, Recovered};
use echoview::daemon::notify::Notifier;
use echoview::daemon::protocol::{Hello, Message, StatusMsg, ViewMsg};
use echoview::daemon::source::{OpenSource, PlaySpec, Pulled, Source, SourceError, Stop, Streams};
use echoview::daemon::{Daemon, ModelIdentity};
use echoview::engine::{self, EngineError, EngineKind};
use echoview::gate::Heartbeat;
use echoview::media::Frame;
use echoview::pipeline::PipelineError;
use echoview::serial::emulator::WireFormat;
use echoview::serial::{Emulator, EmulatorConfig, SampleWidth};
use echoview::session::{SessionEvent, SessionReader};
use echoview::sim::{LeadOffMode, LeadOffStretch};

/// A config file for the tests (so nothing is read from /etc).
fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("echoview.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `echoview run` with `args`, stderr captured to a file for failure messages.
fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echoview"));
    cmd.arg("run")
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn daemon_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// Waits for the socket to accept connections.
fn wait_for_socket(path: &Path, child: &mut Child, dir: &Path) {
    let start = Instant::now();
    while UnixStream::connect(path).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("daemon exited with {status}: {}", daemon_log(dir));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no socket after 30 s: {}",
            daemon_log(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM and waits for the exit; returns the status and how long it took.
fn terminate(child: &mut Child) -> (ExitStatus, Duration) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the daemon did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A connected client reading messages.
struct Client {
    lines: std::io::Lines<BufReader<UnixStream>>,
    hello: Option<Hello>,
    views: Vec<ViewMsg>,
    statuses: Vec<StatusMsg>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            lines: BufReader::new(stream).lines(),
            hello: None,
            views: Vec::new(),
            statuses: Vec::new(),
        }
    }

    /// Reads one message, which must parse.
    fn read(&mut self) {
        let line = self.lines.next().expect("connection closed").unwrap();
        match Message::from_line(&line)
            .unwrap()
            .expect("a known message type")
        {
            Message::Hello(h) => {
                assert!(self.hello.is_none(), "hello comes once");
                self.hello = Some(h);
            }
            Message::View(v) => {
                assert!(self.hello.is_some(), "hello comes first");
                self.views.push(v);
            }
            Message::Status(s) => {
                assert!(self.hello.is_some(), "hello comes first");
                self.statuses.push(*s);
            }
        }
    }

    /// Reads until `done` holds, failing after `within`.
    fn read_until(&mut self, within: Duration, done: impl Fn(&Client) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < within, "timed out");
            self.read();
        }
    }
}

/// An ECG board on a pseudo-terminal, sending the ECG recorded in `session` in real time
/// (binary protocol, 16-bit) from a thread, until `stop` is set.
struct PtyBoard {
    /// The pty's device path, for `--ecg`.
    device: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PtyBoard {
    fn start(session: &Path) -> PtyBoard {
        let format = WireFormat::Binary {
            width: SampleWidth::I16,
        };
        let mut emulator = Emulator::open_pty(EmulatorConfig::new(format)).unwrap();
        let device = emulator.device().to_path_buf();
        let blocks: Vec<_> = SessionReader::open(session)
            .unwrap()
            .filter_map(|event| match event.unwrap() {
                SessionEvent::Ecg(block) => Some(block),
                _ => None,
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for block in &blocks {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                // A daemon that hung up is the test's failure to report, not this thread's.
                if emulator.send(block).is_err() {
                    return;
                }
            }
        });
        PtyBoard {
            device,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PtyBoard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn plays_video_with_a_pty_ecg_to_three_clients_survives_a_stalled_one_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let session = session(dir, 4, Vec::new());
    // The board starts sending at once; the daemon opens its port within a moment, as on a
    // cart whose board is already running.
    let board = PtyBoard::start(&session);
    let socket = dir.join("run/labels.sock");
    let record = dir.join("rec");
    let config = config_file(
        dir,
        "[stability]\nagree_beats = 2\n[record]\nflush_s = 0.5\n",
    );
    let mut child = start(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--play",
            session.to_str().unwrap(),
            "--ecg",
            board.device.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
            "--model",
            demo_model().to_str().unwrap(),
            "--engine",
            "tract",
        ],
        &[],
    );
    wait_for_socket(&socket, &mut child, dir);
    let mut a = Client::connect(&socket);
    // Connected, never read: its queue fills in the daemon, and it must not hold anyone up.
    let _stalled = UnixStream::connect(&socket).unwrap();
    let mut b = Client::connect(&socket);

    let enough = |c: &Client| c.views.len() >= 4 && c.statuses.len() >= 2;
    a.read_until(Duration::from_secs(20), enough);
    b.read_until(Duration::from_secs(20), enough);

    let hello = a.hello.as_ref().unwrap();
    assert_eq!(hello.protocol, 1);
    assert_eq!(hello.model.name, "echoview-demo");
    assert_eq!(hello.model.hash.len(), 64);
    assert_eq!(hello.engine, "tract");
    // Asked for by name: not a fallback.
    assert_eq!(hello.fallback_reason, None);
    assert_eq!(hello.labels.len(), 12);
    assert_eq!(hello.labels.last().map(String::as_str), Some("unknown"));
    assert_eq!(hello.frames_per_beat, 8);
    assert_eq!(b.hello, a.hello);

    let mut latencies = Vec::new();
    let mut encoded_at_cut = Vec::new();
    for v in a.views.iter().chain(&b.views) {
        assert!(hello.labels.contains(&v.label), "{v:?}");
        assert!(hello.labels.contains(&v.stable), "{v:?}");
        assert_eq!(v.gating, "ecg");
        assert_eq!(v.probs.0.len(), 11);
        let sum: f32 = v.probs.0.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 0.01, "{v:?}");
        assert!((0.0..=1.0).contains(&v.confidence) && (0.0..=1.0).contains(&v.alpha));
        let hr = v.hr_bpm.unwrap();
        assert!((45.0..=110.0).contains(&hr), "{v:?}");
        assert!(v.t > v.start && v.t - v.start < 1.5, "{v:?}");
        assert!(matches!(v.truth.as_deref(), Some("PLAX" | "A4C")), "{v:?}");
        assert!(v.latency_ms > 0.0 && v.latency_ms < 3000.0, "{v:?}");
        latencies.push(v.latency_ms);
        assert!(
            v.inference_ms > 0.0 && v.inference_ms <= v.latency_ms,
            "{v:?}"
        );
        encoded_at_cut.push(v.encoded_at_cut);
    }
    // Both clients see the same beats, in order.
    let beats = |c: &Client| c.views.iter().map(|v| v.beat).collect::<Vec<_>>();
    assert!(beats(&a).windows(2).all(|w| w[0] < w[1]));
    let common = beats(&a).len().min(beats(&b).len());
    assert_eq!(beats(&a)[..common], beats(&b)[..common]);
    eprintln!("frames encoded after the cut, per beat: {encoded_at_cut:?}");
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "label latency (beat end delivered -> published), {} beats: median {:.0} ms, max {:.0} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    a.read_until(Duration::from_secs(5), |c| {
        c.statuses.last().is_some_and(|s| s.beats.classified >= 4)
    });
    let status = a.statuses.last().unwrap();
    assert_eq!(status.clients, 3, "the stalled client is still connected");
    assert_eq!(status.engine.name, "tract");
    assert!(status.beats.classified >= 4);
    assert_eq!(status.recording.state, "on");
    let running = a
        .statuses
        .iter()
        .find(|s| s.state == "running")
        .expect("a running status");
    assert!(running.video.up && running.ecg.up);
    assert!((20.0..=40.0).contains(&running.video.fps), "{running:?}");
    assert!(
        (350.0..=650.0).contains(&running.ecg.samples_per_s),
        "{running:?}"
    );
    assert_eq!(running.ecg.quality, "good");
    assert_eq!(running.gating, "ecg");

    let (exit, took) = terminate(&mut child);
    assert!(exit.success(), "{exit}: {}", daemon_log(dir));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!socket.exists(), "the socket file is removed");
    let log = daemon_log(dir);
    assert!(log.contains("ready") && log.contains("stopping"), "{log}");

    let files: Vec<PathBuf> = std::fs::read_dir(&record)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let reader = SessionReader::open(&files[0]).unwrap();
    assert!(reader.summary().is_some(), "the recording was finished");
    assert_eq!(
        reader.metadata().get("created_by").map(String::as_str),
        Some("echoview run")
    );
    let (mut frames, mut ecg, mut labels) = (0, 0, Vec::new());
    for event in reader {
        match event.unwrap() {
            SessionEvent::Frame(f) => {
                assert_eq!((f.width, f.height), (320, 240));
                frames += 1;
            }
            SessionEvent::Ecg(_) => ecg += 1,
            SessionEvent::Label { value, .. } => labels.push(value),
            _ => {}
        }
    }
    assert!(
        frames >= 90 && ecg >= 50,
        "{frames} frames, {ecg} ECG blocks"
    );
    assert!(labels.len() >= 4, "{labels:?}");
    for label in &labels {
        assert_eq!(label["v"], 1);
        assert_eq!(label["type"], "view");
    }
    let first_beat = labels[0]["beat"].as_u64().unwrap();
    assert!(a.views.iter().any(|v| v.beat == first_beat));
}

#[test]
fn lost_ecg_degrades_to_time_gating_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Leads off from 2.5 s to the end of the 8.5 s session.
    let session = session(
        dir,
        5,
        vec![LeadOffStretch {
            start_s: 2.5,
            duration_s: 10.0,
            mode: LeadOffMode::Flat,
        }],
    );
    let socket = dir.join("labels.sock");
    let config = config_file(dir, "[gating]\necg_timeout_s = 1.5\nwindow_s = 1.0\n");
    let mut child = start(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--play",
            session.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--model",
            demo_model().to_str().unwrap(),
        ],
        &[],
    );
    wait_for_socket(&socket, &mut child, dir);
    let mut c = Client::connect(&socket);
    // A status counts the time-gated beats published before it, so wait for one that does.
    c.read_until(Duration::from_secs(20), |c| {
        c.views.iter().filter(|v| v.gating == "time").count() >= 2
            && c.statuses
                .iter()
                .any(|s| s.gating == "time" && s.beats.time_gated >= 1)
    });
    for v in c.views.iter().filter(|v| v.gating == "time") {
        assert_eq!(v.hr_bpm, None, "{v:?}");
        assert!((v.t - v.start - 1.0).abs() < 0.01, "{v:?}");
    }
    let status = c
        .statuses
        .iter()
        .rev()
        .find(|s| s.gating == "time" && s.beats.time_gated >= 1)
        .unwrap();
    assert!(
        matches!(
            status.ecg.quality.as_str(),
            "lead_off" | "no_r_peaks" | "poor"
        ),
        "{status:?}"
    );
    assert!(status.beats.time_gated >= 1);
    let (exit, took) = terminate(&mut child);
    assert!(
        exit.success() && took < Duration::from_secs(3),
        "{exit} {took:?}"
    );
}

#[test]
fn tells_systemd_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let session = session(dir, 2, Vec::new());
    let notify_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let socket = dir.join("labels.sock");
    let config = config_file(dir, "");
    let mut child = start(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--play",
            session.to_str().unwrap(),
            "--loop",
            "--socket",
            socket.to_str().unwrap(),
            "--model",
            demo_model().to_str().unwrap(),
        ],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let start = Instant::now();
    while !recv().lines().any(|l| l == "READY=1") {
        assert!(start.elapsed() < Duration::from_secs(30), "no READY=1");
    }
    let ready_at = Instant::now();
    let mut pings = 0;
    while ready_at.elapsed() < Duration::from_millis(2200) {
        if recv().lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    // One ping every half period (0.5 s).
    assert!((3..=6).contains(&pings), "{pings} pings in 2.2 s");
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    while !recv().lines().any(|l| l == "STOPPING=1") {
        assert!(sent.elapsed() < Duration::from_secs(3), "no STOPPING=1");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", daemon_log(dir));
    assert!(sent.elapsed() < Duration::from_secs(3));
}

/// A source that works until the test wedges it: then `next` blocks without returning,
/// as a driver stuck in a read would.
struct Wedgeable {
    inner: PlaySpec,
    wedged: Arc<AtomicBool>,
}

struct WedgeableSource {
    inner: Box<dyn Source>,
    wedged: Arc<AtomicBool>,
}

impl OpenSource for Wedgeable {
    fn name(&self) -> String {
        "wedgeable".into()
    }
    fn streams(&self) -> Streams {
        self.inner.streams()
    }
    fn open(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(WedgeableSource {
            inner: self.inner.open()?,
            wedged: self.wedged.clone(),
        }))
    }
    fn restart_on_end(&self) -> bool {
        true
    }
}

impl Source for WedgeableSource {
    fn next(&mut self, stop: &Stop) -> Result<Pulled, SourceError> {
        // Ignores `stop` while wedged, on purpose.
        while self.wedged.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.inner.next(stop)
    }
}

#[test]
fn a_wedged_source_stops_the_watchdog_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let session = session(dir, 2, Vec::new());
    let notify_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let mut config = Config::default();
    config.socket.path = dir.join("labels.sock");
    // Long enough for a beat's inference on a loaded 2-core machine, whose thread does not
    // report progress while it runs.
    config.pipeline.stall_s = 2.0;
    let wedged = Arc::new(AtomicBool::new(false));
    let source = Wedgeable {
        inner: PlaySpec {
            path: session,
            looped: true,
            video_only: None,
            speed: 1.0,
        },
        wedged: wedged.clone(),
    };
    let bundle = Bundle::load(&demo_model()).unwrap();
    let engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let notifier = Notifier::new(notify_path.as_os_str(), Some(Duration::from_secs(1))).unwrap();
    let daemon = Daemon::new(
        config.clone(),
        vec![Arc::new(source)],
        Box::new(ModelStage::new(&bundle, engine)),
        ModelIdentity::of(&bundle),
        notifier,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(daemon.run(async {
            let _ = stop_rx.await;
        }))
    });

    // Notifications over `window`: (READY seen, watchdog pings).
    let listen = |window: Duration| {
        let start = Instant::now();
        let (mut ready, mut pings) = (false, 0);
        let mut buf = [0u8; 4096];
        while start.elapsed() < window {
            if let Ok(n) = manager.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                ready |= text.lines().any(|l| l == "READY=1");
                pings += text.lines().filter(|l| *l == "WATCHDOG=1").count();
            }
        }
        (ready, pings)
    };
    let (ready, pings) = listen(Duration::from_millis(2000));
    assert!(ready, "READY=1");
    assert!(pings >= 2, "{pings} pings while healthy");

    wedged.store(true, Ordering::SeqCst);
    // The source thread is seen stalled after stall_s; pings sent before that may arrive.
    listen(Duration::from_millis(2600));
    let mut client = Client::connect(&config.socket.path);
    let (_, pings) = listen(Duration::from_millis(1500));
    assert_eq!(pings, 0, "no WATCHDOG=1 while the source is wedged");
    client.read_until(Duration::from_secs(3), |c| {
        c.statuses.iter().any(|s| s.state == "stalled")
    });

    wedged.store(false, Ordering::SeqCst);
    let (_, pings) = listen(Duration::from_millis(1500));
    assert!(pings >= 1, "{pings} pings after recovery");

    stop_tx.send(()).unwrap();
    let report = server.join().unwrap().unwrap();
    assert!(report.threads_left.is_empty(), "{report:?}");
    assert!(!config.socket.path.exists());
}

#[test]
fn refuses_a_missing_config_file_and_a_missing_source() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let missing = dir.join("nope.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["run", "--config", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.toml"), "{err}");

    let config = config_file(dir, "[socket]\npath = \"/tmp/x.sock\"\ngroop = 1\n");
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("groop"), "{err}");

    let config = config_file(dir, "");
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no source configured"),
        "{err}"
    );
}

/// A daemon serving `session` (played once) with `model`, in this process on a thread of
/// its own; send on the returned channel to stop it.
fn serve_in_process(
    config: &Config,
    session: &Path,
    model: Box<dyn ClassifyBeat>,
    bundle: &Bundle,
) -> (
    std::thread::JoinHandle<Result<echoview::daemon::RunReport, echoview::daemon::DaemonError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let daemon = Daemon::new(
        config.clone(),
        vec![Arc::new(PlaySpec {
            path: session.to_path_buf(),
            looped: false,
            video_only: None,
            speed: 1.0,
        })],
        model,
        ModelIdentity::of(bundle),
        Notifier::disabled(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(daemon.run(async {
            let _ = stop_rx.await;
        }))
    });
    let start = Instant::now();
    while !config.socket.path.exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, stop_tx)
}

/// The real model, failing every other beat as a flaky accelerator might.
struct Flaky {
    inner: ModelStage,
    calls: u64,
}

impl ClassifyBeat for Flaky {
    fn engine_name(&self) -> &'static str {
        self.inner.engine_name()
    }
    fn classify(
        &mut self,
        beat: &Heartbeat,
        frames: &[&Frame],
    ) -> Result<Option<BeatClassification>, PipelineError> {
        self.calls += 1;
        if self.calls.is_multiple_of(2) {
            return Err(PipelineError::Engine(EngineError::Run {
                file: "encoder.onnx".into(),
                message: "injected fault".into(),
            }));
        }
        self.inner.classify(beat, frames)
    }
}

#[test]
fn engine_errors_are_counted_and_labels_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let session = session(dir, 4, Vec::new());
    let mut config = Config::default();
    config.socket.path = dir.join("labels.sock");
    let bundle = Bundle::load(&demo_model()).unwrap();
    let engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let model = Flaky {
        inner: ModelStage::new(&bundle, engine),
        calls: 0,
    };
    let (server, stop_tx) = serve_in_process(&config, &session, Box::new(model), &bundle);
    let mut c = Client::connect(&config.socket.path);
    c.read_until(Duration::from_secs(15), |c| {
        c.views.len() >= 2
            && c.statuses
                .last()
                .is_some_and(|s| s.errors.engine >= 2 && s.beats.classified >= 2)
    });
    let status = c.statuses.last().unwrap();
    assert!(
        status
            .errors
            .last
            .as_deref()
            .unwrap()
            .contains("injected fault"),
        "{status:?}"
    );
    assert_eq!(status.state, "running");
    stop_tx.send(()).unwrap();
    let report = server.join().unwrap().unwrap();
    assert!(report.beats_published >= 2);
}

/// An accelerator that fails every beat until the daemon gives up on it: reopening it does not
/// help, falling back to tract (the real model) does.
struct Broken {
    fallback: ModelStage,
    fell_back: bool,
}

impl ClassifyBeat for Broken {
    fn engine_name(&self) -> &'static str {
        if self.fell_back {
            "tract"
        } else {
            "broken-gpu"
        }
    }
    fn classify(
        &mut self,
        beat: &Heartbeat,
        frames: &[&Frame],
    ) -> Result<Option<BeatClassification>, PipelineError> {
        if self.fell_back {
            return self.fallback.classify(beat, frames);
        }
        Err(PipelineError::Engine(EngineError::Run {
            file: "encoder.plan".into(),
            message: "device lost".into(),
        }))
    }
    fn recover(&mut self, attempt: u32) -> Result<Recovered, String> {
        self.fell_back = attempt > 0;
        Ok(Recovered {
            engine: self.engine_name(),
            fallback: self
                .fell_back
                .then(|| "broken-gpu kept failing".to_string()),
        })
    }
}

#[test]
fn a_failing_engine_is_restarted_then_replaced_by_tract() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let session = session(dir, 6, Vec::new());
    let mut config = Config::default();
    config.socket.path = dir.join("labels.sock");
    let bundle = Bundle::load(&demo_model()).unwrap();
    let model = Broken {
        fallback: ModelStage::new(&bundle, engine::open(&bundle, EngineKind::Tract).unwrap()),
        fell_back: false,
    };
    let (server, stop_tx) = serve_in_process(&config, &session, Box::new(model), &bundle);
    let mut early = Client::connect(&config.socket.path);
    early.read();
    assert_eq!(early.hello.as_ref().unwrap().engine, "broken-gpu");
    early.read_until(Duration::from_secs(20), |c| {
        c.views.len() >= 2 && c.statuses.last().is_some_and(|s| s.engine.name == "tract")
    });
    let status = early.statuses.last().unwrap();
    // Three faults, a restart that did not help, three more, then the fallback.
    assert_eq!(status.errors.engine, 6, "{status:?}");
    assert_eq!(status.errors.engine_restarts, 2, "{status:?}");
    assert_eq!(
        status.engine.fallback.as_deref(),
        Some("broken-gpu kept failing")
    );
    assert_eq!(status.state, "running");
    let late = {
        let mut c = Client::connect(&config.socket.path);
        c.read();
        c
    };
    assert_eq!(late.hello.as_ref().unwrap().engine, "tract");
    stop_tx.send(()).unwrap();
    assert!(server.join().unwrap().unwrap().beats_published >= 2);
}

#[test]
fn a_recording_replays_to_the_labels_published_live() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let session = session(dir, 4, Vec::new());
    let socket = dir.join("labels.sock");
    let record = dir.join("rec");
    let model = demo_model();
    let mut child = start(
        dir,
        &[
            "--play",
            session.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--engine",
            "tract",
        ],
        &[],
    );
    wait_for_socket(&socket, &mut child, dir);
    let mut client = Client::connect(&socket);
    client.read_until(Duration::from_secs(30), |c| {
        c.statuses.last().is_some_and(|s| s.video.state == "ended")
    });
    let (exit, _) = terminate(&mut child);
    assert!(exit.success(), "{}", daemon_log(dir));
    let live = &client.views;
    assert!(live.len() >= 5, "{} views", live.len());

    let recording = std::fs::read_dir(&record)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["replay", "--engine", "tract", "--model"])
        .arg(&model)
        .arg(&recording)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every beat published live is in the replay, with the same label and probabilities.
    for view in live {
        let twin = replayed
            .iter()
            .find(|r| (r["t"].as_f64().unwrap() - view.t).abs() < 0.002)
            .unwrap_or_else(|| panic!("beat ending at {} s not replayed", view.t));
        assert_eq!(twin["label"], view.label.as_str(), "beat at {} s", view.t);
        let confidence = twin["confidence"].as_f64().unwrap();
        assert!(
            (confidence - f64::from(view.confidence)).abs() < 1e-5,
            "beat at {} s: live {} replayed {confidence}",
            view.t,
            view.confidence
        );
    }
}
