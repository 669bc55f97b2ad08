//! What the daemon's threads share: counters, stream states and liveness, read once a second
//! into the `status` message and by the watchdog.
//!
//! Writers are the source, gating, inference and recorder threads; the reader is the server.
//! Counters are atomics, so a thread never waits on the server; the few strings sit behind
//! short-held locks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::protocol::{
    BeatCounts, Drops, EcgStatus, EngineStatus, Errors, PlanRebuildStatus, RecordingStatus,
    StatusMsg, StreamStatus,
};
use super::source::Stop;

/// The engine name that runs on the GPU.
const GPU_ENGINE: &str = "tensorrt";

/// No frames are encoded ahead (lookahead off, or the gating thread has not started).
pub const ENCODE_NONE: u8 = 0;
/// The predicted phases are encoded ahead.
pub const ENCODE_PHASES: u8 = 1;
/// Every frame is encoded ahead.
pub const ENCODE_EVERY_FRAME: u8 = 2;

/// Where the engine `name` runs the encoder: `gpu` or `cpu`.
pub fn device_of(name: &str) -> &'static str {
    if name == GPU_ENGINE { "gpu" } else { "cpu" }
}

/// Locks `m`, recovering the data if a thread panicked while holding it: every value behind
/// these locks is complete after each statement, so it is still meaningful.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A stream counts as up while data arrived this recently.
const UP_WITHIN: Duration = Duration::from_secs(1);

/// The state of one input stream.
#[derive(Debug, Default)]
pub struct StreamState {
    /// The source, its state and its last fault.
    info: Mutex<StreamInfo>,
    /// When data last arrived: milliseconds since the daemon started, plus one (0: never).
    last_data_ms: AtomicU64,
}

/// The text part of a [`StreamState`].
#[derive(Debug, Clone)]
struct StreamInfo {
    /// The source delivering the stream.
    source: Option<String>,
    /// `none`, `opening`, `open`, `down` or `ended`.
    state: &'static str,
    /// The last fault, while down.
    error: Option<String>,
}

impl Default for StreamInfo {
    fn default() -> StreamInfo {
        StreamInfo {
            source: None,
            state: "none",
            error: None,
        }
    }
}

impl StreamState {
    /// Records the source's state; `error` is kept only while down.
    pub fn set_state(&self, source: &str, state: &'static str, error: Option<String>) {
        let mut info = lock(&self.info);
        info.source = Some(source.to_string());
        info.state = state;
        info.error = error;
    }

    /// Data arrived now.
    pub fn touch(&self, shared: &Shared) {
        self.last_data_ms
            .store(shared.millis() + 1, Ordering::Relaxed);
    }

    /// Whether data arrived within the last second.
    fn up(&self, shared: &Shared) -> bool {
        match self.last_data_ms.load(Ordering::Relaxed) {
            0 => false,
            t => shared.millis() + 1 - t <= UP_WITHIN.as_millis() as u64,
        }
    }
}

/// A thread's progress marker, for the watchdog.
#[derive(Debug, Clone)]
pub struct Pulse {
    /// Milliseconds since the daemon started at the last beat.
    last_ms: Arc<AtomicU64>,
    /// The daemon's start.
    started: Instant,
}

impl Pulse {
    /// The thread made progress now.
    pub fn beat(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Counters, each an atomic the thread that owns the event increments.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received.
    pub frames: AtomicU64,
    /// ECG samples received.
    pub ecg_samples: AtomicU64,
    /// Beats published.
    pub classified: AtomicU64,
    /// Of those, `unknown`.
    pub unknown: AtomicU64,
    /// Of those, time-gated.
    pub time_gated: AtomicU64,
    /// Source items dropped before gating.
    pub drop_input: AtomicU64,
    /// Beats replaced by fresher ones before inference.
    pub drop_beats: AtomicU64,
    /// Published messages the server could not take.
    pub drop_published: AtomicU64,
    /// Items the recorder could not take.
    pub drop_record: AtomicU64,
    /// Clients disconnected for not reading.
    pub drop_clients: AtomicU64,
    /// Engine failures.
    pub err_engine: AtomicU64,
    /// Engine recoveries (reopened or replaced).
    pub engine_restarts: AtomicU64,
    /// Frames encoded ahead of their beat.
    pub encoded_ahead: AtomicU64,
    /// Source failures.
    pub err_source: AtomicU64,
    /// Connections refused on their peer credentials.
    pub clients_refused: AtomicU64,
    /// Recording failures.
    pub err_record: AtomicU64,
    /// ECG the detector refused.
    pub err_ecg: AtomicU64,
    /// Malformed frames dropped at the source.
    pub err_frames: AtomicU64,
}

/// Everything shared. See the module documentation.
#[derive(Debug)]
pub struct Shared {
    /// When the daemon started.
    pub started: Instant,
    /// Asks every thread to finish.
    pub stop: Stop,
    /// The video stream.
    pub video: StreamState,
    /// The ECG stream.
    pub ecg: StreamState,
    /// Event counters.
    pub counters: Counters,
    /// Sources that have not yet tried to open once; the daemon is ready at zero.
    pub sources_pending: AtomicUsize,
    /// Gating mode and ECG quality names, as the gating thread last saw them.
    gating: Mutex<(&'static str, &'static str)>,
    /// Skipped beats by reason.
    skipped: Mutex<BTreeMap<String, u64>>,
    /// The latest fault, for people.
    last_error: Mutex<Option<String>>,
    /// The recorder's state.
    recording: Mutex<RecordingStatus>,
    /// The engine's status; changes when a failing engine is restarted or replaced.
    engine: Mutex<EngineStatus>,
    /// Per-frame encoder latency in nanoseconds, as the inference thread last averaged it;
    /// 0 until measured. Read by the gating thread on every frame, hence an atomic.
    frame_ns: AtomicU64,
    /// Which frames the gating thread posts ahead: [`ENCODE_NONE`], [`ENCODE_PHASES`] or
    /// [`ENCODE_EVERY_FRAME`]. Read by the inference thread to size its feature cache.
    encode: AtomicU8,
    /// The background plan rebuild, once one was started.
    plan_rebuild: Mutex<Option<PlanRebuildStatus>>,
    /// Progress markers of the pipeline's threads, by name.
    pulses: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

/// Counter values at the previous status, to turn totals into rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateMemo {
    /// When they were taken.
    at: Option<Instant>,
    /// Frames then.
    frames: u64,
    /// ECG samples then.
    samples: u64,
}

impl Shared {
    /// Shared state for a daemon running `engine` (with a fallback reason, if it is not the
    /// engine asked for), waiting for `sources` first openings.
    pub fn new(engine: EngineStatus, sources: usize) -> Shared {
        Shared {
            started: Instant::now(),
            stop: Stop::new(),
            video: StreamState::default(),
            ecg: StreamState::default(),
            counters: Counters::default(),
            sources_pending: AtomicUsize::new(sources),
            gating: Mutex::new(("none", "lost")),
            skipped: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(None),
            recording: Mutex::new(RecordingStatus {
                state: "off".into(),
                ..RecordingStatus::default()
            }),
            engine: Mutex::new(engine),
            frame_ns: AtomicU64::new(0),
            encode: AtomicU8::new(ENCODE_NONE),
            plan_rebuild: Mutex::new(None),
            pulses: Mutex::new(Vec::new()),
        }
    }

    /// The engine running now.
    pub fn engine(&self) -> EngineStatus {
        lock(&self.engine).clone()
    }

    /// Records the engine a recovery or a plan switch left running.
    pub fn set_engine(&self, engine: EngineStatus) {
        *lock(&self.engine) = engine;
    }

    /// Whether the engine running now is on the GPU (TensorRT).
    pub fn engine_on_gpu(&self) -> bool {
        lock(&self.engine).name == GPU_ENGINE
    }

    /// Records the averaged per-frame encoder latency; `None` when the engine changed and
    /// the new one has not been measured yet.
    pub fn set_frame_ms(&self, ms: Option<f64>) {
        // At least 1 ns, so a measured latency is never read back as "not measured".
        let ns = ms.map_or(0, |ms| {
            (ms * 1e6).round().clamp(1.0, u64::MAX as f64) as u64
        });
        self.frame_ns.store(ns, Ordering::Relaxed);
    }

    /// The averaged per-frame encoder latency, once measured.
    pub fn frame_ms(&self) -> Option<f64> {
        match self.frame_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns as f64 / 1e6),
        }
    }

    /// Records which frames the gating thread posts ahead (one of the `ENCODE_` values).
    pub fn set_encode(&self, encode: u8) {
        self.encode.store(encode, Ordering::Relaxed);
    }

    /// Which frames the gating thread posts ahead (one of the `ENCODE_` values).
    pub fn encode(&self) -> u8 {
        self.encode.load(Ordering::Relaxed)
    }

    /// Records the state of the background plan rebuild.
    pub fn set_plan_rebuild(&self, status: PlanRebuildStatus) {
        *lock(&self.plan_rebuild) = Some(status);
    }

    /// Milliseconds since start.
    pub fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the latest fault for the status message.
    pub fn error(&self, message: String) {
        *lock(&self.last_error) = Some(message);
    }

    /// Counts a skipped beat.
    pub fn skipped(&self, reason: &str) {
        *lock(&self.skipped).entry(reason.to_string()).or_default() += 1;
    }

    /// Records the gating mode and ECG quality.
    pub fn set_gating(&self, mode: &'static str, quality: &'static str) {
        *lock(&self.gating) = (mode, quality);
    }

    /// Updates the recorder's state.
    pub fn set_recording(&self, status: RecordingStatus) {
        *lock(&self.recording) = status;
    }

    /// A progress marker for the thread `name`, alive from now.
    pub fn pulse(&self, name: &str) -> Pulse {
        let last_ms = Arc::new(AtomicU64::new(self.millis()));
        lock(&self.pulses).push((name.to_string(), last_ms.clone()));
        Pulse {
            last_ms,
            started: self.started,
        }
    }

    /// The threads that have not made progress within `window`.
    pub fn stalled(&self, window: Duration) -> Vec<String> {
        let now = self.millis();
        lock(&self.pulses)
            .iter()
            .filter(|(_, last)| {
                now.saturating_sub(last.load(Ordering::Relaxed)) > window.as_millis() as u64
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The status message now; `memo` carries counter values from the previous call.
    pub fn status(&self, memo: &mut RateMemo, clients: u64, stall: Duration) -> StatusMsg {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = Instant::now();
        let (frames, samples) = (get(&c.frames), get(&c.ecg_samples));
        let (fps, sps) = match memo.at {
            Some(at) if now > at => {
                let dt = (now - at).as_secs_f64();
                (
                    (frames - memo.frames) as f64 / dt,
                    (samples - memo.samples) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        };
        *memo = RateMemo {
            at: Some(now),
            frames,
            samples,
        };
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let video_info = lock(&self.video.info).clone();
        let ecg_info = lock(&self.ecg.info).clone();
        let (mode, quality) = *lock(&self.gating);
        let video_up = self.video.up(self);
        let engine = self.engine();
        let state = if self.sources_pending.load(Ordering::Relaxed) > 0 {
            "starting"
        } else if !self.stalled(stall).is_empty() {
            "stalled"
        } else if !video_up {
            "waiting"
        } else {
            "running"
        };
        StatusMsg {
            uptime_s: round1(self.started.elapsed().as_secs_f64()),
            state: state.into(),
            video: StreamStatus {
                up: video_up,
                source: video_info.source,
                state: video_info.state.into(),
                fps: round1(fps),
                frames,
                error: video_info.error,
            },
            ecg: EcgStatus {
                up: self.ecg.up(self),
                source: ecg_info.source,
                state: ecg_info.state.into(),
                samples_per_s: round1(sps),
                samples,
                quality: quality.into(),
                error: ecg_info.error,
            },
            gating: mode.into(),
            engine: EngineStatus {
                device: Some(device_of(&engine.name).into()),
                frame_ms: self.frame_ms().map(|ms| (ms * 1000.0).round() / 1000.0),
                encode: match self.encode() {
                    ENCODE_PHASES => Some("phases".into()),
                    ENCODE_EVERY_FRAME => Some("every-frame".into()),
                    _ => None,
                },
                plan_rebuild: lock(&self.plan_rebuild).clone(),
                ..engine
            },
            beats: BeatCounts {
                classified: get(&c.classified),
                unknown: get(&c.unknown),
                time_gated: get(&c.time_gated),
                skipped: lock(&self.skipped).clone(),
                frames_encoded_ahead: get(&c.encoded_ahead),
            },
            drops: Drops {
                input: get(&c.drop_input),
                beats: get(&c.drop_beats),
                published: get(&c.drop_published),
                record: get(&c.drop_record),
                clients: get(&c.drop_clients),
            },
            errors: Errors {
                engine: get(&c.err_engine),
                engine_restarts: get(&c.engine_restarts),
                source: get(&c.err_source),
                clients_refused: get(&c.clients_refused),
                record: get(&c.err_record),
                ecg: get(&c.err_ecg),
                frames: get(&c.err_frames),
                last: lock(&self.last_error).clone(),
            },
            recording: lock(&self.recording).clone(),
            clients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_beating_is_stalled() {
        let shared = Shared::new(
            EngineStatus {
                name: "test".into(),
                ..EngineStatus::default()
            },
            0,
        );
        let a = shared.pulse("a");
        let _b = shared.pulse("b");
        std::thread::sleep(Duration::from_millis(60));
        a.beat();
        assert_eq!(
            shared.stalled(Duration::from_millis(30)),
            vec!["b".to_string()]
        );
        assert!(shared.stalled(Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn status_reports_rates_and_states() {
        let shared = Shared::new(
            EngineStatus {
                name: "test".into(),
                fallback: Some("asked for x".into()),
                fallback_reason: Some("plan_missing".into()),
                ..EngineStatus::default()
            },
            1,
        );
        let mut memo = RateMemo::default();
        let s = shared.status(&mut memo, 0, Duration::from_secs(5));
        assert_eq!(s.state, "starting");
        assert!(!s.video.up);
        shared.sources_pending.store(0, Ordering::Relaxed);
        shared.video.set_state("sim", "open", None);
        shared.video.touch(&shared);
        shared.counters.frames.fetch_add(30, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        let s = shared.status(&mut memo, 2, Duration::from_secs(5));
        assert_eq!(s.state, "running");
        assert!(s.video.up && s.video.fps > 0.0 && s.video.frames == 30);
        assert_eq!(s.video.source.as_deref(), Some("sim"));
        assert_eq!(s.engine.fallback.as_deref(), Some("asked for x"));
        assert_eq!(s.engine.device.as_deref(), Some("cpu"));
        assert_eq!(
            (s.engine.frame_ms, s.engine.encode.as_deref()),
            (None, None)
        );
        shared.set_frame_ms(Some(12.3456));
        shared.set_encode(ENCODE_EVERY_FRAME);
        let s = shared.status(&mut memo, 2, Duration::from_secs(5));
        assert_eq!(s.engine.frame_ms, Some(12.346));
        assert_eq!(s.engine.encode.as_deref(), Some("every-frame"));
        assert_eq!(s.clients, 2);
    }
}
