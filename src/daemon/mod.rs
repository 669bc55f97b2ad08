//! `echoview run`: the live daemon. Sources in, a label per heartbeat out on a Unix socket,
//! under systemd.
//!
//! Threads and queues, every queue bounded:
//!
//! ```text
//!  source thread(s) ──(input_queue; full: drop, count)──► gating thread ──(inbox: one beat,
//!  (one per source,                                       BeatCutter +     a fresher beat
//!   paced or live,                                        time fallback,   replaces it, count;
//!   reopened on faults)                                   lookahead  │     T frames to encode
//!                                                              │     ahead, oldest dropped)
//!                                                              │                 ▼
//!                  recorder thread ◄──(record_queue; full: drop, count)   inference thread
//!                  (rotating MCAP)  ◄── labels ──┐                        (model, stability)
//!                                                │                               │
//!                       tokio (this thread): socket server, status, systemd ◄─(64; full:
//!                       one bounded queue per client; a full queue drops it)   drop, count)
//! ```
//!
//! Each source owns a thread so a slow or faulty device never stalls another; gating is
//! cheap and sees every item; inference is slow and always works on the freshest beat, and
//! spends its idle time encoding the frames the open beat will most likely pick
//! ([`lookahead`]) and, once the QRS detector holds the beat's closing R-peak, the frames it
//! will pick ([`speculate`]), or every frame while the engine keeps up ([`encode`]), so that
//! when the beat closes little more than the head remains. A missing or stale TensorRT plan is
//! rebuilt in the background and the encoder moved onto it between beats ([`planswitch`]).
//! The server runs on a current-thread tokio runtime and takes its shutdown signal as a
//! future ([`Daemon::run`]), so tests stop it without signals. Nothing a device or a client does
//! ends the process: faults are logged, counted in the `status` message and retried.

pub mod cli;
pub mod config;
pub mod encode;
pub mod gating;
pub mod infer;
pub mod live;
pub mod log;
pub mod lookahead;
pub mod notify;
pub mod peer;
pub mod planswitch;
pub mod protocol;
pub mod record;
pub mod shared;
pub mod socket;
pub mod source;
pub mod speculate;
pub mod stability;
pub mod sys;
pub mod trust;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::bundle::{Bundle, BundleError};
use crate::classify::Label;
use crate::engine::{EngineError, EngineKind, FallbackReason, TrtOptions};
use crate::media::Frame;
use crate::views::View;

use self::config::{Config, ConfigError, PlayEcg, SourceKind};
use self::encode::{EncodeMode, FrameRate};
use self::gating::{BeatGating, GatedBeat, GatedEvent, GatingConfig, GatingStage};
use self::infer::{ClassifyBeat, Inbox, Latency, RecoverableModel, Task};
use self::live::{SerialSpec, SessionClock, VideoSpec};
use self::log::{Level, RateLimited};
use self::lookahead::Lookahead;
use self::notify::{Notifier, NotifyState, Watchdog};
use self::planswitch::PlanSwitch;
use self::protocol::{EngineStatus, Hello, Message, ModelInfo, Probs, StabilityInfo, ViewMsg};
use self::record::{RecordMsg, Recorder};
use self::shared::{ENCODE_EVERY_FRAME, ENCODE_PHASES, Pulse, RateMemo, Shared};
use self::socket::{ClientLimits, Hub, SocketError};
use self::source::{OpenSource, PlaySpec, Pulled, SimSpec, SourceItem, Splicer};
use self::speculate::Speculation;
use self::stability::Stabilizer;

/// How long shutdown waits for the threads; with the client hang-up before it, the process
/// exits well within systemd's and the tests' 3 seconds.
const JOIN_WITHIN: Duration = Duration::from_millis(2000);
/// How long shutdown waits for client tasks to hang up.
const CLIENTS_WITHIN: Duration = Duration::from_millis(300);
/// Longest wait of a thread for work before it checks the stop flag and beats its pulse.
const POLL: Duration = Duration::from_millis(100);
/// Views published but not yet taken by the server; more are dropped and counted.
const PUBLISH_QUEUE: usize = 64;
/// First and longest wait before reopening a failed source.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));
/// Deliveries remembered per stream, to time beats from the delivery of their end (a few
/// seconds' worth at 60 fps).
const DELIVERY_LOG: usize = 512;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No source was configured.
    #[error(
        "no source configured: pass --play SESSION or --sim, or set [source] kind in the \
         config file"
    )]
    NoSource,
    /// The model bundle could not be loaded.
    #[error("loading model bundle {dir}: {source} (choose another with --model DIR)")]
    Bundle {
        /// The bundle folder.
        dir: String,
        /// What was wrong.
        source: BundleError,
    },
    /// The engine could not load the model.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The label socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// Which thread.
        name: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Which model the daemon runs, for `hello` and recordings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIdentity {
    /// Name, version and manifest hash.
    pub info: ModelInfo,
    /// The views, in the head's logit order.
    pub labels: Vec<View>,
    /// T.
    pub frames_per_beat: usize,
}

impl ModelIdentity {
    /// The identity of `bundle`.
    pub fn of(bundle: &Bundle) -> ModelIdentity {
        ModelIdentity {
            info: ModelInfo {
                name: bundle.manifest.name.clone(),
                version: bundle.manifest.version.clone(),
                hash: bundle.manifest_sha256.clone(),
            },
            labels: bundle.labels.clone(),
            frames_per_beat: bundle.frames_per_beat(),
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Views published.
    pub beats_published: u64,
    /// Threads that did not stop in time (left running as the process exits).
    pub threads_left: Vec<String>,
}

/// A configured daemon, ready to [`run`](Daemon::run).
pub struct Daemon {
    /// Settings.
    config: Config,
    /// The sources, one thread each.
    sources: Vec<Arc<dyn OpenSource>>,
    /// The classifier.
    model: Box<dyn ClassifyBeat>,
    /// The model's identity.
    identity: ModelIdentity,
    /// Why the engine is not the one asked for, if it is a fallback.
    engine_fallback: Option<FallbackReason>,
    /// The background rebuild of a missing or stale plan, if one was started.
    plan_switch: Option<PlanSwitch>,
    /// systemd notifications.
    notifier: Notifier,
}

impl Daemon {
    /// A daemon from parts: the seam for sources and classifiers other than the configured
    /// ones (tests use it for faulty sources and engines).
    pub fn new(
        config: Config,
        sources: Vec<Arc<dyn OpenSource>>,
        model: Box<dyn ClassifyBeat>,
        identity: ModelIdentity,
        notifier: Notifier,
    ) -> Daemon {
        Daemon {
            config,
            sources,
            model,
            identity,
            engine_fallback: None,
            plan_switch: None,
            notifier,
        }
    }

    /// The daemon `config` describes: loads and verifies the model bundle in
    /// `config.model.dir` (which must be set), opens the engine and sets up the sources.
    pub fn from_config(config: Config, notifier: Notifier) -> Result<Daemon, DaemonError> {
        let sources = sources_of(&config, SessionClock::start())?;
        let dir = config.model.dir.clone().unwrap_or_default();
        let bundle = Bundle::load(&dir).map_err(|source| DaemonError::Bundle {
            dir: dir.display().to_string(),
            source,
        })?;
        let kind = config
            .model
            .engine_kind()
            .map_err(|message| ConfigError::Invalid {
                origin: "settings".into(),
                key: "model.engine".into(),
                message,
            })?;
        let mut options = TrtOptions::for_bundle(&bundle);
        if let Some(plan) = &config.model.plan {
            options.plan = plan.clone();
        }
        let selected = crate::engine::select(&bundle, kind, &options)?;
        if let Some(reason) = &selected.fallback {
            log::log(
                Level::Notice,
                format_args!(
                    "engine: tract, TensorRT not used ({}): {reason}",
                    reason.code()
                ),
            );
        }
        let plan_switch = match &selected.fallback {
            Some(reason) if kind == EngineKind::Auto && config.model.plan_rebuild => {
                PlanSwitch::start_logged(&bundle, &options, reason, &config.model.plan_builder)
            }
            _ => None,
        };
        let identity = ModelIdentity::of(&bundle);
        let model = Box::new(
            RecoverableModel::new(bundle, kind, selected.engine).with_trt_options(options),
        );
        let mut daemon = Daemon::new(config, sources, model, identity, notifier);
        daemon.plan_switch = plan_switch;
        Ok(match selected.fallback {
            Some(reason) => daemon.with_engine_fallback(reason),
            None => daemon,
        })
    }

    /// Records why the engine running is not the one asked for (reported in `hello` and
    /// `status`).
    pub fn with_engine_fallback(mut self, reason: FallbackReason) -> Daemon {
        self.engine_fallback = Some(reason);
        self
    }

    /// Runs until `shutdown` completes, then stops cleanly: `STOPPING=1`, clients hung up,
    /// threads joined, the recording finished and the socket file removed. Fails only when
    /// the socket or a thread cannot be set up at start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunReport, DaemonError> {
        let Daemon {
            config,
            sources,
            model,
            identity,
            engine_fallback,
            plan_switch,
            notifier,
        } = self;
        let listener = socket::bind(&config.socket)?;
        let socket_path = config.socket.path.clone();
        let engine_name = model.engine_name();
        let shared = Arc::new(Shared::new(
            engine_status(engine_name, engine_fallback.as_ref()),
            sources.len(),
        ));
        if let Some(switch) = &plan_switch {
            shared.set_plan_rebuild(switch.status("running", None));
        }
        let engine_status = shared.engine();
        let hello = hello_line(&identity, &engine_status, &config);
        let greeting = {
            let (identity, config) = (identity.clone(), config.clone());
            Box::new(move |engine: &EngineStatus| hello_line(&identity, engine, &config))
        };
        let started = start_threads(&config, sources, model, plan_switch, &identity, &shared);
        let Started {
            threads,
            published: published_rx,
            record: record_tx,
        } = match started {
            Ok(parts) => parts,
            Err(e) => {
                shared.stop.set();
                let _ = socket::remove(&socket_path);
                return Err(e);
            }
        };
        log::log(
            Level::Notice,
            format_args!(
                "serving labels on {} (model {} {}, engine {})",
                socket_path.display(),
                identity.info.name,
                identity.info.version,
                engine_name
            ),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let hub = Hub::new(hello, ClientLimits::from(&config.socket), stop_rx);
        let mut server = Server {
            hub,
            greeting,
            greeted_engine: engine_status,
            shared: shared.clone(),
            record: record_tx,
            notifier,
            // bind() above resolved the group already, so the look-up succeeds here.
            peers: peer::PeerPolicy::for_this_process(
                config
                    .socket
                    .group
                    .as_deref()
                    .and_then(|g| sys::group_id(g).ok().flatten()),
            ),
            stall: Duration::from_secs_f64(config.pipeline.stall_s),
            published: 0,
        };
        server.serve(listener, published_rx, shutdown).await;

        // Shutdown: tell systemd, stop taking clients, stop the threads.
        let _ = server
            .notifier
            .notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        log::log(Level::Notice, "stopping");
        shared.stop.set();
        let _ = stop_tx.send(true);
        if let Err(e) = socket::remove(&socket_path) {
            log::log(
                Level::Warning,
                format_args!("cannot remove {}: {e}", socket_path.display()),
            );
        }
        let Server {
            hub,
            record,
            published,
            ..
        } = server;
        hub.close(CLIENTS_WITHIN).await;
        drop(record);
        let threads_left = join_all(threads).await;
        Ok(RunReport {
            beats_published: published,
            threads_left,
        })
    }
}

/// The sources `config` asks for, all stamping on `clock` where they are live.
fn sources_of(
    config: &Config,
    clock: SessionClock,
) -> Result<Vec<Arc<dyn OpenSource>>, DaemonError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: "settings".into(),
        key: key.into(),
        message,
    };
    let serial = || -> Result<Arc<dyn OpenSource>, DaemonError> {
        let reader = config.ecg.reader_config().map_err(|m| invalid("ecg", m))?;
        Ok(Arc::new(SerialSpec { reader, clock }))
    };
    match config.source.kind {
        None => Err(DaemonError::NoSource),
        Some(SourceKind::Live) => {
            let capture = config
                .video
                .capture_config()
                .map_err(|m| invalid("video", m))?;
            Ok(vec![Arc::new(VideoSpec { capture, clock }), serial()?])
        }
        Some(SourceKind::Play) => {
            let serial_ecg = config.source.ecg == Some(PlayEcg::Serial);
            let play: Arc<dyn OpenSource> = Arc::new(PlaySpec {
                path: config.source.play.clone().ok_or(DaemonError::NoSource)?,
                looped: config.source.looped,
                video_only: serial_ecg.then_some(clock),
                speed: config.source.play_speed(),
            });
            if serial_ecg {
                Ok(vec![play, serial()?])
            } else {
                Ok(vec![play])
            }
        }
        Some(SourceKind::Sim) => {
            let sim = config.sim.sim_config().map_err(|m| invalid("sim", m))?;
            Ok(vec![Arc::new(SimSpec::new(sim))])
        }
    }
}

/// The engine for `status` and `hello`: its name, and why it is a fallback (in words and as a
/// code), if it is one.
fn engine_status(name: &str, fallback: Option<&FallbackReason>) -> EngineStatus {
    EngineStatus {
        name: name.to_string(),
        fallback: fallback.map(ToString::to_string),
        fallback_reason: fallback.map(|r| r.code().to_string()),
        ..EngineStatus::default()
    }
}

/// The `hello` line for this model and configuration.
fn hello_line(identity: &ModelIdentity, engine: &EngineStatus, config: &Config) -> String {
    let mut labels: Vec<String> = identity
        .labels
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    labels.push(Label::Unknown.name().to_string());
    Message::Hello(Hello {
        protocol: protocol::PROTOCOL_VERSION,
        daemon: format!("echoview {}", env!("CARGO_PKG_VERSION")),
        model: identity.info.clone(),
        engine: engine.name.clone(),
        fallback: engine.fallback.clone(),
        fallback_reason: engine.fallback_reason.clone(),
        labels,
        frames_per_beat: identity.frames_per_beat,
        stability: StabilityInfo {
            agree_beats: config.stability.agree_beats,
            confident: config.stability.confident,
            unknown_beats: config.stability.unknown_beats,
        },
    })
    .to_line()
}

/// A source item and when its source delivered it.
struct Delivered {
    /// The item.
    item: SourceItem,
    /// Wall instant of delivery.
    at: Instant,
}

/// A beat on its way to inference.
struct BeatJob {
    /// The beat with its frames.
    gated: GatedBeat,
    /// When the data closing the beat was delivered, to measure latency from.
    delivered: Instant,
    /// When the beat was cut and posted, to measure the model's share of the latency.
    cut: Instant,
}

/// A classified beat on its way to the server.
struct Publication {
    /// The message, `latency_ms` still to be filled in at publication.
    view: ViewMsg,
    /// When the data closing the beat was delivered.
    delivered: Instant,
    /// When the beat was cut.
    cut: Instant,
    /// The beat's end, session clock, for the recording.
    end_ns: u64,
}

/// Handles of the pipeline's threads, by name.
type Threads = Vec<(String, JoinHandle<()>)>;

/// The running pipeline, as the server sees it.
struct Started {
    /// The threads.
    threads: Threads,
    /// Classified beats from the inference thread.
    published: mpsc::Receiver<Publication>,
    /// The recorder's queue, for published labels, when recording.
    record: Option<SyncSender<RecordMsg>>,
}

/// Starts the source, gating, inference and recorder threads.
fn start_threads(
    config: &Config,
    sources: Vec<Arc<dyn OpenSource>>,
    model: Box<dyn ClassifyBeat>,
    plan_switch: Option<PlanSwitch>,
    identity: &ModelIdentity,
    shared: &Arc<Shared>,
) -> Result<Started, DaemonError> {
    let mut threads: Threads = Vec::new();
    let mut spawn = |name: String, work: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(work)
            .map(|handle| threads.push((name.clone(), handle)))
            .map_err(|source| DaemonError::Thread { name, source })
    };
    let (input_tx, input_rx) = std::sync::mpsc::sync_channel(config.pipeline.input_queue);
    let (published_tx, published_rx) = mpsc::channel(PUBLISH_QUEUE);
    let ahead_capacity = match (config.pipeline.lookahead, config.pipeline.encode) {
        (false, _) => 0,
        (true, EncodeMode::Phases) => identity.frames_per_beat,
        (true, _) => identity.frames_per_beat.max(encode::EVERY_FRAME_QUEUE),
    };
    let inbox = Arc::new(Inbox::new(ahead_capacity));

    let record_tx = match &config.record.dir {
        Some(dir) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(config.pipeline.record_queue);
            let metadata = BTreeMap::from([
                (
                    "source".to_string(),
                    sources
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("created_by".to_string(), "echoview run".to_string()),
                (
                    "model".to_string(),
                    format!(
                        "{} {} ({})",
                        identity.info.name, identity.info.version, identity.info.hash
                    ),
                ),
            ]);
            let recorder = Recorder::new(
                dir.clone(),
                config.record.clone(),
                metadata,
                Box::new(sys::free_bytes),
            );
            let (sh, pulse) = (shared.clone(), shared.pulse("recorder"));
            spawn(
                "recorder".into(),
                Box::new(move || recorder_thread(rx, recorder, &sh, &pulse)),
            )?;
            Some(tx)
        }
        None => None,
    };

    for (i, spec) in sources.into_iter().enumerate() {
        let name = format!("source-{i}");
        let (tx, sh, pulse) = (input_tx.clone(), shared.clone(), shared.pulse(&name));
        spawn(
            name,
            Box::new(move || source_thread(&*spec, &tx, &sh, &pulse)),
        )?;
    }
    drop(input_tx);

    let stage = GatingStage::new(GatingConfig {
        frames_per_beat: identity.frames_per_beat,
        ecg_timeout_ns: (config.gating.ecg_timeout_s * 1e9) as u64,
        window_ns: (config.gating.window_s * 1e9) as u64,
    });
    let lookahead = config
        .pipeline
        .lookahead
        .then(|| Lookahead::new(identity.frames_per_beat));
    let speculation = config
        .pipeline
        .lookahead
        .then(|| Speculation::new(identity.frames_per_beat));
    let ahead = Ahead {
        lookahead,
        speculation,
        encode: config.pipeline.encode,
    };
    let (ib, rec, sh, pulse) = (
        inbox.clone(),
        record_tx.clone(),
        shared.clone(),
        shared.pulse("gating"),
    );
    spawn(
        "gating".into(),
        Box::new(move || gating_thread(&input_rx, stage, ahead, &ib, rec.as_ref(), &sh, &pulse)),
    )?;

    let stabilizer = Stabilizer::new(config.stability.clone());
    let labels = identity.labels.clone();
    let (sh, pulse) = (shared.clone(), shared.pulse("inference"));
    spawn(
        "inference".into(),
        Box::new(move || {
            inference_thread(
                &inbox,
                Model { model, plan_switch },
                stabilizer,
                &labels,
                &published_tx,
                &sh,
                &pulse,
            )
        }),
    )?;
    Ok(Started {
        threads,
        published: published_rx,
        record: record_tx,
    })
}

/// Waits for the threads until [`JOIN_WITHIN`]; returns the names of those still running.
async fn join_all(threads: Threads) -> Vec<String> {
    let deadline = Instant::now() + JOIN_WITHIN;
    let mut left = Vec::new();
    for (name, handle) in threads {
        while !handle.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !handle.is_finished() {
            log::log(
                Level::Warning,
                format_args!("thread {name} did not stop in time"),
            );
            left.push(name);
        } else if handle.join().is_err() {
            log::log(Level::Error, format_args!("thread {name} panicked"));
        }
    }
    left
}

/// Sleeps `total`, beating `pulse`; `false` when stopping.
fn idle(shared: &Shared, pulse: &Pulse, total: Duration) -> bool {
    let end = Instant::now() + total;
    loop {
        pulse.beat();
        let now = Instant::now();
        if now >= end {
            return !shared.stop.is_set();
        }
        if !shared.stop.sleep_until((now + POLL).min(end)) {
            return false;
        }
    }
}

/// One source's thread: open, pull, splice, deliver; on a fault report, back off, reopen.
fn source_thread(
    spec: &dyn OpenSource,
    tx: &SyncSender<Delivered>,
    shared: &Shared,
    pulse: &Pulse,
) {
    let name = spec.name();
    let streams = spec.streams();
    let set_state = |state: &'static str, error: Option<String>| {
        if streams.video {
            shared.video.set_state(&name, state, error.clone());
        }
        if streams.ecg {
            shared.ecg.set_state(&name, state, error);
        }
    };
    let mut faults = RateLimited::new(Duration::from_secs(30));
    let mut frame_faults = RateLimited::new(Duration::from_secs(30));
    let mut backoff = BACKOFF.0;
    let mut first_attempt = true;
    let mut splicer = Splicer::new();
    set_state("opening", None);
    'open: while !shared.stop.is_set() {
        pulse.beat();
        let opened = spec.open();
        if std::mem::take(&mut first_attempt) {
            shared
                .sources_pending
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut source = match opened {
            Ok(source) => source,
            Err(e) => {
                source_fault(shared, &mut faults, &set_state, e.to_string(), backoff);
                if !idle(shared, pulse, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        faults.reset();
        backoff = BACKOFF.0;
        set_state("open", None);
        splicer.begin();
        loop {
            pulse.beat();
            if shared.stop.is_set() {
                break 'open;
            }
            let pulled = source.next(&shared.stop);
            let (bad, reason) = source.take_bad_frames();
            if bad > 0 {
                bad_frames(shared, &mut frame_faults, &name, bad, reason);
            }
            match pulled {
                Ok(Pulled::Item(item)) => {
                    if let SourceItem::Frame(frame) = &item
                        && let Some(reason) = source::frame_fault(frame)
                    {
                        bad_frames(shared, &mut frame_faults, &name, 1, Some(reason));
                        continue;
                    }
                    let item = splicer.splice(item);
                    match &item {
                        SourceItem::Frame(_) => {
                            Shared::count(&shared.counters.frames);
                            shared.video.touch(shared);
                        }
                        SourceItem::Ecg(block) => {
                            shared.counters.ecg_samples.fetch_add(
                                block.samples_mv.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            shared.ecg.touch(shared);
                        }
                        SourceItem::Truth { .. } => {}
                    }
                    let delivered = Delivered {
                        item,
                        at: Instant::now(),
                    };
                    match tx.try_send(delivered) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => Shared::count(&shared.counters.drop_input),
                        Err(TrySendError::Disconnected(_)) => break 'open,
                    }
                }
                Ok(Pulled::Idle) => {}
                Ok(Pulled::End) if spec.restart_on_end() => continue 'open,
                Ok(Pulled::End) => {
                    set_state("ended", None);
                    log::log(Level::Notice, format_args!("{name} ended"));
                    while idle(shared, pulse, Duration::from_secs(1)) {}
                    break 'open;
                }
                Err(e) => {
                    source_fault(shared, &mut faults, &set_state, e.to_string(), backoff);
                    if !idle(shared, pulse, backoff) {
                        break 'open;
                    }
                    continue 'open;
                }
            }
        }
    }
}

/// Reports a source fault: counted, shown in the status, logged (rate-limited).
fn source_fault(
    shared: &Shared,
    faults: &mut RateLimited,
    set_state: &dyn Fn(&'static str, Option<String>),
    message: String,
    backoff: Duration,
) {
    Shared::count(&shared.counters.err_source);
    shared.error(message.clone());
    set_state("down", Some(message.clone()));
    faults.log(
        Level::Warning,
        Instant::now(),
        format_args!("{message}; retrying in {:.1} s", backoff.as_secs_f64()),
    );
}

/// Reports `count` malformed frames the source `name` dropped: counted, the latest reason in
/// the status, logged (rate-limited). The source stays up: a bad frame costs that frame.
fn bad_frames(
    shared: &Shared,
    faults: &mut RateLimited,
    name: &str,
    count: u64,
    reason: Option<String>,
) {
    shared
        .counters
        .err_frames
        .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    let message = format!(
        "{name}: dropped a malformed frame: {}",
        reason.as_deref().unwrap_or("no reason given")
    );
    shared.error(message.clone());
    faults.log(Level::Warning, Instant::now(), message);
}

/// When the items of each stream were delivered, to time a beat from its end.
#[derive(Default)]
struct DeliveryLog {
    /// `(available_ns, delivered)` of recent frames.
    frames: VecDeque<(u64, Instant)>,
    /// The same for ECG blocks.
    ecg: VecDeque<(u64, Instant)>,
}

impl DeliveryLog {
    /// Notes a delivery.
    fn note(&mut self, d: &Delivered) {
        let log = match d.item {
            SourceItem::Frame(_) => &mut self.frames,
            SourceItem::Ecg(_) => &mut self.ecg,
            SourceItem::Truth { .. } => return,
        };
        if log.len() == DELIVERY_LOG {
            log.pop_front();
        }
        log.push_back((d.item.available_ns(), d.at));
    }

    /// When the data holding session time `t_ns` was delivered: the ECG block holding an
    /// ECG beat's closing R-peak, the frame closing a time-gated beat.
    fn delivered(&self, gating: BeatGating, t_ns: u64) -> Instant {
        let log = match gating {
            BeatGating::Ecg => &self.ecg,
            BeatGating::Time => &self.frames,
        };
        let i = log.partition_point(|&(t, _)| t < t_ns);
        log.get(i)
            .or(log.back())
            .map_or_else(Instant::now, |&(_, at)| at)
    }
}

/// What the gating thread posts ahead of the beats: the phase predictor (`None` without
/// lookahead) and which frames to encode (`daemon::encode`).
struct Ahead {
    /// Predicts the open beat's phases.
    lookahead: Option<Lookahead>,
    /// The open beat's phases once its R-peak is held (with the lookahead, `None` without).
    speculation: Option<Speculation>,
    /// `pipeline.encode`.
    encode: EncodeMode,
}

/// What the gating thread hands the inference thread to encode ahead of a beat.
enum AheadTask {
    /// One frame, preprocessed like the last beat's.
    Frame(Frame),
    /// All T phase frames of the beat whose R-peak the detector holds ([`Speculation`]),
    /// to be preprocessed under the region that beat will have.
    Beat(Vec<Frame>),
}

/// The gating thread: every item through the [`GatingStage`], beats to the inbox (and, with
/// a [`Lookahead`], the frames expected in the open beat, the frames it will pick once its
/// R-peak is held ([`Speculation`]), or every frame), items to the recorder.
fn gating_thread(
    rx: &Receiver<Delivered>,
    mut stage: GatingStage,
    ahead: Ahead,
    inbox: &Inbox<BeatJob, AheadTask>,
    record: Option<&SyncSender<RecordMsg>>,
    shared: &Shared,
    pulse: &Pulse,
) {
    let Ahead {
        mut lookahead,
        mut speculation,
        encode,
    } = ahead;
    let mut rate = FrameRate::default();
    // The newest frame posted while every frame is encoded; `None` while phases are.
    let mut posted_ns: Option<u64> = None;
    let mut deliveries = DeliveryLog::default();
    let mut faults = RateLimited::new(Duration::from_secs(30));
    loop {
        pulse.beat();
        let delivered = match rx.recv_timeout(POLL) {
            Ok(d) => d,
            Err(RecvTimeoutError::Timeout) if shared.stop.is_set() => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        deliveries.note(&delivered);
        if let Some(record) = record
            && let Err(TrySendError::Full(_)) =
                record.try_send(RecordMsg::Item(delivered.item.clone()))
        {
            Shared::count(&shared.counters.drop_record);
        }
        if let Err(e) = stage.push(delivered.item) {
            Shared::count(&shared.counters.err_ecg);
            let message = format!("ECG: {e}");
            shared.error(message.clone());
            faults.log(Level::Warning, Instant::now(), message);
        }
        let mut cut_at: Option<u64> = None;
        while let Some(event) = stage.next_event() {
            match event {
                GatedEvent::Beat(gated) => {
                    cut_at = Some(gated.beat.end_ns);
                    let delivered = deliveries.delivered(gated.gating, gated.beat.end_ns);
                    if let Some(lookahead) = lookahead.as_mut() {
                        lookahead.beat_cut(gated.beat.start_ns, gated.beat.end_ns);
                    }
                    if let Some(speculation) = speculation.as_mut() {
                        speculation.beat_cut();
                    }
                    let job = BeatJob {
                        gated,
                        delivered,
                        cut: Instant::now(),
                    };
                    if inbox.post_beat(job) {
                        Shared::count(&shared.counters.drop_beats);
                    }
                }
                GatedEvent::Skipped { skipped, .. } => shared.skipped(skipped.reason.name()),
            }
        }
        if let (Some(lookahead), Some(latest)) = (lookahead.as_mut(), stage.latest_frame_ns()) {
            rate.frame(latest);
            let every = encode::every_frame(
                encode,
                shared.engine_on_gpu(),
                shared.frame_ms(),
                rate.per_second(),
            );
            shared.set_encode(if every {
                ENCODE_EVERY_FRAME
            } else {
                ENCODE_PHASES
            });
            // The open beat's real phases, once its R-peak is held, go before (and instead of)
            // the predicted ones; drained either way, like the prediction below.
            if let Some(speculation) = speculation.as_mut() {
                let fresh = speculation.provisional(stage.provisional_beat());
                if fresh {
                    lookahead.superseded();
                    if !every {
                        inbox.clear_ahead();
                    }
                }
                let mut phases = Vec::new();
                while let Some(phase_ns) = speculation.due(latest) {
                    if !every && let Some(frame) = stage.frame_near(phase_ns) {
                        phases.push(frame.clone());
                    }
                }
                // The whole beat at once (the video is normally past it by then) goes as one,
                // so its region is known before its frames are encoded.
                if fresh && phases.len() == speculation.frames_per_beat() {
                    inbox.post_ahead(AheadTask::Beat(phases));
                } else {
                    for frame in phases {
                        inbox.post_ahead(AheadTask::Frame(frame));
                    }
                }
            }
            // The prediction is drained either way, so that it is current when phases are
            // encoded again.
            while let Some(phase_ns) = lookahead.due(latest) {
                if !every && let Some(frame) = stage.frame_near(phase_ns) {
                    inbox.post_ahead(AheadTask::Frame(frame.clone()));
                }
            }
            if every {
                // At a cut the open beat's frames so far go again: they were encoded under
                // the previous beat's region (or, before the first beat, not at all), and
                // the beat just cut is about to give them theirs. Frames already cached
                // under the same region cost a cache look-up.
                let from = match (cut_at, posted_ns) {
                    // From the frame the gate takes for the open beat's first phase, which
                    // may precede the R-peak by up to half a frame.
                    (Some(end_ns), _) => stage
                        .frame_near(end_ns)
                        .map_or(end_ns, |f| f.t_ns.min(end_ns)),
                    (None, Some(posted)) => posted.saturating_add(1),
                    (None, None) => latest,
                };
                for frame in stage.frames_since(from) {
                    inbox.post_ahead(AheadTask::Frame(frame.clone()));
                }
                posted_ns = Some(latest);
            } else {
                posted_ns = None;
            }
        }
        shared.set_gating(stage.mode().name(), stage.quality().name());
    }
}

/// The inference thread's classifier, and the plan rebuild that may move it onto TensorRT.
struct Model {
    /// The classifier.
    model: Box<dyn ClassifyBeat>,
    /// The background plan rebuild, while one runs.
    plan_switch: Option<PlanSwitch>,
}

/// The inference thread: the freshest beat through the model and the stabiliser, out to the
/// server. An engine error or panic costs one beat, never the thread.
fn inference_thread(
    inbox: &Inbox<BeatJob, AheadTask>,
    model: Model,
    mut stabilizer: Stabilizer,
    labels: &[View],
    out: &mpsc::Sender<Publication>,
    shared: &Shared,
    pulse: &Pulse,
) {
    let Model {
        mut model,
        mut plan_switch,
    } = model;
    let mut faults = RateLimited::new(Duration::from_secs(10));
    let mut recovery = Recovery::default();
    let mut latency = Latency::default();
    let mut cache_sized = false;
    // The frames of the beat speculated on still to encode.
    let mut speculated: VecDeque<Frame> = VecDeque::new();
    loop {
        pulse.beat();
        if shared.stop.is_set() {
            break;
        }
        if !cache_sized && shared.encode() == ENCODE_EVERY_FRAME {
            model.set_cache_frames(encode::EVERY_FRAME_CACHE);
            cache_sized = true;
        }
        // Between tasks, never within a beat: a beat runs on one engine throughout.
        if let Some(switch) = plan_switch.as_mut()
            && let Some(outcome) = switch.poll()
        {
            switch.apply(outcome, model.as_mut(), shared);
            plan_switch = None;
        }
        latency.follow(model.engine_name(), shared);
        // A speculated beat's frames are encoded one per turn, so a beat posted meanwhile
        // waits for one encoder pass at most.
        let wait = if speculated.is_empty() {
            POLL
        } else {
            Duration::ZERO
        };
        let job = match inbox.take(wait) {
            None => {
                if let Some(frame) = speculated.pop_front() {
                    encode_ahead(model.as_mut(), &frame, shared, &mut faults, &mut latency);
                }
                continue;
            }
            Some(Task::Beat(job)) => {
                // The beat encodes what is left of its own frames; a speculation on another
                // beat is void after a cut anyway.
                speculated.clear();
                job
            }
            Some(Task::Ahead(AheadTask::Frame(frame))) => {
                encode_ahead(model.as_mut(), &frame, shared, &mut faults, &mut latency);
                continue;
            }
            Some(Task::Ahead(AheadTask::Beat(frames))) => {
                expect_beat(model.as_mut(), &frames, shared, &mut faults);
                speculated = frames.into();
                continue;
            }
        };
        let gated = &job.gated;
        let frames: Vec<&Frame> = gated.frames.iter().collect();
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| model.classify(&gated.beat, &frames)));
        let classification = match result {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => {
                shared.skipped(crate::gate::SkipReason::UnusableFrames.name());
                continue;
            }
            Ok(Err(e)) => {
                engine_fault(shared, &mut faults, format!("engine: {e}"));
                recovery.failed(model.as_mut(), shared);
                continue;
            }
            Err(_) => {
                engine_fault(shared, &mut faults, "engine panicked on a beat".into());
                recovery.failed(model.as_mut(), shared);
                continue;
            }
        };
        faults.reset();
        recovery.worked();
        let c = &classification;
        let stable = stabilizer.push(gated.beat.end_ns, c.label, c.confidence);
        Shared::count(&shared.counters.classified);
        if c.label == Label::Unknown {
            Shared::count(&shared.counters.unknown);
        }
        if gated.gating == BeatGating::Time {
            Shared::count(&shared.counters.time_gated);
        }
        let round = |x: f64, places: i32| {
            let k = 10f64.powi(places);
            (x * k).round() / k
        };
        let view = ViewMsg {
            t: round(gated.beat.end_ns as f64 / 1e9, 3),
            start: round(gated.beat.start_ns as f64 / 1e9, 3),
            beat: gated.number,
            label: c.label.name().to_string(),
            stable: stable.label.name().to_string(),
            confidence: c.confidence,
            probs: Probs(
                labels
                    .iter()
                    .zip(&c.probs)
                    .map(|(v, p)| (v.name().to_string(), *p))
                    .collect(),
            ),
            alpha: c.alpha,
            gating: gated.gating.name().to_string(),
            hr_bpm: (gated.gating == BeatGating::Ecg).then(|| round(gated.beat.hr_bpm(), 1)),
            latency_ms: 0.0,
            inference_ms: 0.0,
            encoded_at_cut: u32::try_from(c.frames_encoded).unwrap_or(u32::MAX),
            truth: gated.truth.map(|v| v.name().to_string()),
        };
        let publication = Publication {
            view,
            delivered: job.delivered,
            cut: job.cut,
            end_ns: gated.beat.end_ns,
        };
        match out.try_send(publication) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                Shared::count(&shared.counters.drop_published)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
}

/// Encodes a frame ahead of its beat. A fault here is reported like any engine fault but
/// costs no beat; the beat will encode the frame again and meet the fault there, where
/// recovery deals with it.
fn encode_ahead(
    model: &mut dyn ClassifyBeat,
    frame: &Frame,
    shared: &Shared,
    faults: &mut RateLimited,
    latency: &mut Latency,
) {
    let started = Instant::now();
    match std::panic::catch_unwind(AssertUnwindSafe(|| model.encode_ahead(frame))) {
        Ok(Ok(true)) => {
            Shared::count(&shared.counters.encoded_ahead);
            latency.push(started.elapsed(), shared);
        }
        Ok(Ok(false)) => {}
        Ok(Err(e)) => engine_fault(shared, faults, format!("engine (ahead of a beat): {e}")),
        Err(_) => engine_fault(shared, faults, "engine panicked ahead of a beat".into()),
    }
}

/// Tells the model which frames the beat about to close has, for the region its frames
/// encoded ahead are preprocessed under. A fault costs only that: they are preprocessed like
/// the last beat's.
fn expect_beat(
    model: &mut dyn ClassifyBeat,
    frames: &[Frame],
    shared: &Shared,
    faults: &mut RateLimited,
) {
    match std::panic::catch_unwind(AssertUnwindSafe(|| model.expect_beat(frames))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => engine_fault(
            shared,
            faults,
            format!("preprocessing ahead of a beat: {e}"),
        ),
        Err(_) => engine_fault(
            shared,
            faults,
            "preprocessing panicked ahead of a beat".into(),
        ),
    }
}

/// Engine faults in a row before the engine is reopened.
const FAULTS_BEFORE_RECOVERY: u32 = 3;
/// Good beats after which an engine counts as working again, so a later run of faults
/// restarts it again before falling back.
const BEATS_TO_FORGIVE: u32 = 50;

/// When to replace a failing engine: after [`FAULTS_BEFORE_RECOVERY`] faults in a row, first
/// by reopening it, then by falling back (see [`ClassifyBeat::recover`]).
#[derive(Debug, Default)]
struct Recovery {
    /// Faults since the last good beat.
    in_a_row: u32,
    /// Recoveries since the engine last worked for [`BEATS_TO_FORGIVE`] beats.
    attempts: u32,
    /// Good beats since the last recovery.
    good: u32,
}

impl Recovery {
    /// A beat failed; recovers the engine when enough have failed in a row.
    fn failed(&mut self, model: &mut dyn ClassifyBeat, shared: &Shared) {
        self.in_a_row += 1;
        if self.in_a_row < FAULTS_BEFORE_RECOVERY {
            return;
        }
        self.in_a_row = 0;
        self.good = 0;
        match model.recover(self.attempts) {
            Ok(recovered) => {
                log::log(
                    Level::Warning,
                    format_args!(
                        "engine failed {FAULTS_BEFORE_RECOVERY} beats in a row; {} {}",
                        if recovered.fallback.is_some() {
                            "fell back to"
                        } else {
                            "restarted"
                        },
                        recovered.engine
                    ),
                );
                Shared::count(&shared.counters.engine_restarts);
                shared.set_engine(EngineStatus {
                    name: recovered.engine.to_string(),
                    fallback_reason: recovered.fallback.as_ref().map(|_| "engine_failed".into()),
                    fallback: recovered.fallback,
                    ..EngineStatus::default()
                });
            }
            Err(reason) => {
                shared.error(format!("engine could not be reopened: {reason}"));
                log::log(
                    Level::Error,
                    format_args!("engine could not be reopened: {reason}"),
                );
            }
        }
        self.attempts += 1;
    }

    /// A beat was classified.
    fn worked(&mut self) {
        self.in_a_row = 0;
        self.good += 1;
        if self.good >= BEATS_TO_FORGIVE {
            self.attempts = 0;
        }
    }
}

/// Reports an engine fault: counted, shown, logged (rate-limited).
fn engine_fault(shared: &Shared, faults: &mut RateLimited, message: String) {
    Shared::count(&shared.counters.err_engine);
    shared.error(message.clone());
    faults.log(Level::Warning, Instant::now(), message);
}

/// The recorder's thread: writes until its queue closes or the daemon stops.
fn recorder_thread(
    rx: Receiver<RecordMsg>,
    mut recorder: Recorder,
    shared: &Shared,
    pulse: &Pulse,
) {
    let mut faults = RateLimited::new(Duration::from_secs(30));
    let mut report = |e: record::RecordError| {
        Shared::count(&shared.counters.err_record);
        let message = format!("recording: {e}");
        shared.error(message.clone());
        faults.log(Level::Error, Instant::now(), message);
    };
    let mut shown = Instant::now();
    loop {
        pulse.beat();
        let now = Instant::now();
        match rx.recv_timeout(POLL) {
            Ok(msg) => {
                if let Err(e) = recorder.write(msg, now) {
                    report(e);
                }
            }
            Err(RecvTimeoutError::Timeout) if shared.stop.is_set() => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Err(e) = recorder.tick(now) {
            report(e);
        }
        if now.duration_since(shown) >= Duration::from_millis(250) {
            shared.set_recording(recorder.status());
            shown = now;
        }
    }
    let mut last = recorder.status();
    if let Err(e) = recorder.finish() {
        report(e);
    }
    last.state = "off".into();
    last.reason = Some("the daemon is stopping".into());
    shared.set_recording(last);
}

/// The tokio side: clients, publication, status and systemd.
struct Server {
    /// The clients.
    hub: Hub,
    /// Makes the `hello` line for an engine, for when a recovery changes it.
    greeting: Box<dyn Fn(&EngineStatus) -> String + Send>,
    /// The engine described in the `hello` new clients get.
    greeted_engine: EngineStatus,
    /// Counters and states.
    shared: Arc<Shared>,
    /// Where published views are recorded, if recording.
    record: Option<SyncSender<RecordMsg>>,
    /// systemd.
    notifier: Notifier,
    /// Who may connect, checked on each connection's peer credentials.
    peers: peer::PeerPolicy,
    /// How long a thread may go without progress.
    stall: Duration,
    /// Views published so far.
    published: u64,
}

impl Server {
    /// Checks a new connection's peer credentials; `Err` says who was refused and why.
    fn admit(&self, stream: &tokio::net::UnixStream) -> Result<(), String> {
        match peer::peer_of(stream) {
            Ok(p) if self.peers.allows(&p) => Ok(()),
            Ok(p) => Err(format!(
                "refused a client: uid {} gid {} (pid {}) is not root, the daemon's user or in \
                 the socket's group; add the user to socket.group",
                p.uid, p.gid, p.pid
            )),
            Err(e) => Err(format!(
                "refused a client: its credentials are unreadable: {e}"
            )),
        }
    }

    /// Serves until `shutdown` completes.
    async fn serve(
        &mut self,
        listener: tokio::net::UnixListener,
        mut published: mpsc::Receiver<Publication>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        let mut house_tick = tokio::time::interval(POLL);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        house_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = self.notifier.watchdog().map(Watchdog::new);
        let mut memo = RateMemo::default();
        let mut ready = false;
        let mut stalled_before: Vec<String> = Vec::new();
        let mut refusals = RateLimited::new(Duration::from_secs(30));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Err(why) = self.admit(&stream) {
                            Shared::count(&self.shared.counters.clients_refused);
                            refusals.log(Level::Warning, Instant::now(), why);
                        } else if !self.hub.add(stream) {
                            refusals.log(
                                Level::Warning,
                                Instant::now(),
                                "refused a client: socket.max_clients are connected",
                            );
                        }
                    }
                    Err(e) => {
                        refusals.log(Level::Warning, Instant::now(), format_args!("accept: {e}"));
                        tokio::time::sleep(POLL).await;
                    }
                },
                Some(publication) = published.recv() => self.publish(publication),
                _ = status_tick.tick() => {
                    let clients = self.hub.len() as u64;
                    let status = self.shared.status(&mut memo, clients, self.stall);
                    if !status.engine.same_engine(&self.greeted_engine) {
                        self.hub.set_hello((self.greeting)(&status.engine));
                        self.greeted_engine = status.engine.clone();
                    }
                    let summary = format!(
                        "{}: {} beats, gating {}, {} clients",
                        status.state, status.beats.classified, status.gating, clients
                    );
                    let line: Arc<str> = Message::Status(Box::new(status)).to_line().into();
                    self.broadcast(&line);
                    let _ = self.notifier.notify(&[NotifyState::Status(&summary)]);
                }
                _ = house_tick.tick() => {
                    let now = Instant::now();
                    if !ready
                        && self.shared.sources_pending.load(std::sync::atomic::Ordering::SeqCst) == 0
                    {
                        ready = true;
                        let _ = self.notifier.notify(&[NotifyState::Ready]);
                        log::log(Level::Notice, "ready");
                    }
                    let stalled = self.shared.stalled(self.stall);
                    if stalled != stalled_before {
                        if stalled.is_empty() {
                            log::log(Level::Notice, "every thread is making progress again");
                        } else {
                            log::log(
                                Level::Error,
                                format_args!(
                                    "no progress for {} s in: {}; the watchdog is no longer fed",
                                    self.stall.as_secs_f64(),
                                    stalled.join(", ")
                                ),
                            );
                        }
                        stalled_before = stalled;
                    }
                    if let Some(w) = watchdog.as_mut()
                        && w.due(now, ready && stalled_before.is_empty())
                    {
                        let _ = self.notifier.notify(&[NotifyState::Watchdog]);
                    }
                }
            }
        }
    }

    /// Publishes a view: latency stamped now, to every client and the recording.
    fn publish(&mut self, publication: Publication) {
        let Publication {
            mut view,
            delivered,
            cut,
            end_ns,
        } = publication;
        let millis = |since: Instant| (since.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        view.latency_ms = millis(delivered);
        view.inference_ms = millis(cut);
        let line = Message::View(view).to_line();
        if let Some(record) = &self.record
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
            && let Err(TrySendError::Full(_)) = record.try_send(RecordMsg::Label {
                t_ns: end_ns,
                value,
            })
        {
            Shared::count(&self.shared.counters.drop_record);
        }
        self.published += 1;
        self.broadcast(&line.into());
    }

    /// Sends a line to every client, counting the clients dropped for not reading.
    fn broadcast(&mut self, line: &Arc<str>) {
        let result = self.hub.publish(line);
        if result.dropped > 0 {
            self.shared
                .counters
                .drop_clients
                .fetch_add(result.dropped as u64, std::sync::atomic::Ordering::Relaxed);
            log::log(
                Level::Warning,
                format_args!(
                    "disconnected {} client(s) that stopped reading",
                    result.dropped
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_carries_the_engine_fallback_as_message_and_code() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let bundle = Bundle::load(&dir).unwrap();
        let identity = ModelIdentity::of(&bundle);
        let config = Config::default();
        let reason = FallbackReason::PlanMissing {
            path: "/x/encoder.plan".into(),
        };
        let line = hello_line(&identity, &engine_status("tract", Some(&reason)), &config);
        let Ok(Some(Message::Hello(hello))) = Message::from_line(&line) else {
            panic!("not a hello: {line}");
        };
        assert_eq!(hello.engine, "tract");
        assert_eq!(hello.fallback_reason.as_deref(), Some("plan_missing"));
        assert!(hello.fallback.unwrap().contains("/x/encoder.plan"));
        // Without a fallback the fields are absent, not null: older readers see no change.
        let line = hello_line(&identity, &engine_status("tract", None), &config);
        assert!(!line.contains("fallback"), "{line}");
    }
}
