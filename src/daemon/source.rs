//! Where frames and ECG come from: the [`Source`] seam and the sources that exist today.
//!
//! Each source runs on a thread of its own (see `daemon::run`), which opens it through an
//! [`OpenSource`], pulls [`SourceItem`]s and hands them to the gating thread. A device that
//! fails is reopened by that thread with a backoff; a source never takes the daemon down.
//!
//! Today's sources replay a session file at its real pace ([`PlaySpec`]) and run the
//! simulator in real time ([`SimSpec`]). The serial ECG front end and the V4L2 capture card
//! plug in by implementing the same two traits: `next` blocks at most about
//! [`MAX_BLOCK`] so the thread stays responsive (return [`Pulled::Idle`] when nothing came),
//! and items carry times on the session clock (capture times, monotonic).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::live::SessionClock;
use crate::media::{EcgBlock, Frame};
use crate::session::{SessionEvent, SessionReader};
use crate::sim::{SimConfig, SimEvent, Simulator};
use crate::views::View;

/// The longest a [`Source::next`] call should block. A source thread that has not come back
/// from `next` for much longer than this is taken as wedged by the watchdog.
pub const MAX_BLOCK: Duration = Duration::from_millis(250);

/// Why a source could not be opened or read.
///
/// The message is usually another module's error, which often names the device or file
/// itself (`cannot open ECG port X: ...`); the source's name is then not added again, so
/// people read each fact once.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device or file could not be opened.
    #[error("{}", with_context("cannot open", source_name, message))]
    Open {
        /// The source, as [`OpenSource::name`] gives it.
        source_name: String,
        /// What failed and how to fix it.
        message: String,
    },
    /// Reading failed after the source was open.
    #[error("{}", with_context("", source_name, message))]
    Read {
        /// The source.
        source_name: String,
        /// What failed.
        message: String,
    },
}

/// `message`, prefixed with `verb` and the source's name unless it names the source already.
fn with_context(verb: &str, source_name: &str, message: &str) -> String {
    if message.contains(source_name) {
        message.to_string()
    } else if verb.is_empty() {
        format!("{source_name}: {message}")
    } else {
        format!("{verb} {source_name}: {message}")
    }
}

/// One thing a source delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// A video frame.
    Frame(Frame),
    /// A block of ECG samples.
    Ecg(EcgBlock),
    /// The true view at a frame time (simulated sources only), carried into reports and
    /// recordings.
    Truth {
        /// The frame time it applies to.
        t_ns: u64,
        /// The view shown.
        view: View,
    },
}

impl SourceItem {
    /// The session time at which the item becomes available: a frame at its capture time,
    /// an ECG block once its last sample is taken.
    pub fn available_ns(&self) -> u64 {
        match self {
            SourceItem::Frame(f) => f.t_ns,
            SourceItem::Ecg(b) => b.sample_time_ns(b.samples_mv.len().saturating_sub(1)),
            SourceItem::Truth { t_ns, .. } => *t_ns,
        }
    }
}

/// What one [`Source::next`] call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Pulled {
    /// An item.
    Item(SourceItem),
    /// Nothing arrived within the source's poll time; the source is alive.
    Idle,
    /// The source has nothing more (a file played to its end).
    End,
}

/// Which streams a source provides, for the status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    /// It delivers video frames.
    pub video: bool,
    /// It delivers ECG blocks.
    pub ecg: bool,
}

/// An open source, owned by its thread.
pub trait Source: Send {
    /// Waits for the next item, at most about [`MAX_BLOCK`]; returns at once when `stop` is
    /// set.
    fn next(&mut self, stop: &Stop) -> Result<Pulled, SourceError>;

    /// Frames the source received but could not deliver since the last call, because they
    /// were malformed, and why the latest was: a bad frame costs that frame, never the
    /// source, but the status must count it. Sources that deliver every frame they get
    /// (checked downstream by [`frame_fault`]) report none.
    fn take_bad_frames(&mut self) -> (u64, Option<String>) {
        (0, None)
    }
}

/// Why `frame` cannot be used, if it cannot: its buffer does not hold what its header
/// promises ([`Frame::validate`]), or it is a Motion-JPEG frame cut short (no end-of-image
/// marker; its headers may still be intact). The daemon drops such frames where they enter,
/// so one bad frame costs one frame: the gate then takes the next nearest frame, instead of
/// the whole beat failing in preprocessing, and the recorder never meets a frame it cannot
/// write.
pub fn frame_fault(frame: &Frame) -> Option<String> {
    if let Err(reason) = frame.validate() {
        return Some(reason);
    }
    if frame.format == crate::media::PixelFormat::Mjpeg && !crate::jpeg::ends_complete(&frame.data)
    {
        return Some(format!(
            "frame {}: its {} bytes of JPEG data end without the end-of-image marker FF D9: \
             the frame was cut short",
            frame.seq,
            frame.data.len()
        ));
    }
    None
}

/// Opens a source, as often as it takes: at start and after every fault.
pub trait OpenSource: Send + Sync {
    /// The source for people and the status message (`session file x.mcap`).
    fn name(&self) -> String;
    /// The streams it provides.
    fn streams(&self) -> Streams;
    /// Opens (or reopens) it.
    fn open(&self) -> Result<Box<dyn Source>, SourceError>;
    /// Whether to open it again when it ends (a looping playback), rather than idle.
    fn restart_on_end(&self) -> bool {
        false
    }
}

/// The daemon's stop flag, shared by all its threads.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag not yet set.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks every thread to finish.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether stopping was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline`, waking early to return `false` when the flag is set.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        loop {
            if self.is_set() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }
}

/// Paces items at their real rate, or a multiple of it: the first item is due now, each later
/// one when as much wall time has passed as session time between it and the first, divided by
/// the speed.
#[derive(Debug)]
pub struct Pacer {
    /// Wall instant and session time of the first item.
    anchor: Option<(Instant, u64)>,
    /// Session seconds played per wall second: 1 on a cart; more for soak tests, which need
    /// hours of heartbeats in minutes.
    speed: f64,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer::new(1.0)
    }
}

impl Pacer {
    /// A pacer playing `speed` session seconds per wall second (taken as 1 unless it is
    /// finite and positive).
    pub fn new(speed: f64) -> Pacer {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Pacer {
            anchor: None,
            speed,
        }
    }

    /// The wall instant at which an item available at session time `t_ns` is due.
    pub fn due(&mut self, t_ns: u64) -> Instant {
        let (wall, t0) = *self.anchor.get_or_insert((Instant::now(), t_ns));
        let session_ns = t_ns.saturating_sub(t0);
        let wall_ns = if self.speed == 1.0 {
            session_ns
        } else {
            // f64 keeps 52 bits: exact to the nanosecond for 52 days of session time.
            (session_ns as f64 / self.speed) as u64
        };
        wall + Duration::from_nanos(wall_ns)
    }
}

/// What [`wait_due`] found.
enum Due {
    /// The item is due; it was due at this instant.
    Reached(Instant),
    /// It is due more than [`MAX_BLOCK`] from now: call again.
    NotYet,
    /// Stopping was asked for.
    Stopping,
}

/// Waits until `item` is due, at most [`MAX_BLOCK`].
fn wait_due(pacer: &mut Pacer, item: &SourceItem, stop: &Stop) -> Due {
    let due = pacer.due(item.available_ns());
    let horizon = Instant::now() + MAX_BLOCK;
    if !stop.sleep_until(due.min(horizon)) {
        Due::Stopping
    } else if due <= horizon {
        Due::Reached(due)
    } else {
        Due::NotYet
    }
}

/// Keeps the session clock, frame numbers and ECG sample indices moving forward across
/// reopenings of a source, as the pipeline and the recorder require.
///
/// A replayed file starts at time 0 every time it loops, and a reconnected device may restart
/// its frame count; the splicer shifts each new opening so that its first item comes a small
/// gap after the last item of the previous one. ECG indices get a gap too, so the pipeline
/// sees a break and restarts detection instead of joining two unrelated signals.
#[derive(Debug, Clone, Default)]
pub struct Splicer {
    /// Shifts of the current opening: time, frame number, ECG index.
    shift: (u64, u64, u64),
    /// The current opening's time shift is still to be decided by its first item.
    fresh_time: bool,
    /// Its frame-number shift is still to be decided by its first frame.
    fresh_seq: bool,
    /// Its ECG-index shift is still to be decided by its first ECG block.
    fresh_index: bool,
    /// The latest session time delivered (after shifting).
    last_t_ns: Option<u64>,
    /// The latest frame number delivered.
    last_seq: Option<u64>,
    /// The ECG index that would continue the stream delivered so far.
    next_index: Option<u64>,
}

/// Session time left between two openings of a source.
const SPLICE_GAP_NS: u64 = 100_000_000;
/// ECG samples skipped between two openings, so the stream visibly breaks.
const SPLICE_GAP_SAMPLES: u64 = 1000;

impl Splicer {
    /// A splicer before the first opening.
    pub fn new() -> Splicer {
        Splicer::default()
    }

    /// A new opening of the source begins: its items are shifted as needed.
    pub fn begin(&mut self) {
        self.shift = (0, 0, 0);
        self.fresh_time = true;
        self.fresh_seq = true;
        self.fresh_index = true;
    }

    /// Shifts one item of the current opening.
    pub fn splice(&mut self, mut item: SourceItem) -> SourceItem {
        let t = match &item {
            SourceItem::Frame(f) => f.t_ns,
            SourceItem::Ecg(b) => b.t0_ns,
            SourceItem::Truth { t_ns, .. } => *t_ns,
        };
        if self.fresh_time {
            self.fresh_time = false;
            self.shift.0 = match self.last_t_ns {
                Some(last) if t <= last + SPLICE_GAP_NS => last + SPLICE_GAP_NS - t,
                _ => 0,
            };
        }
        match &mut item {
            SourceItem::Frame(f) => {
                if self.fresh_seq {
                    self.fresh_seq = false;
                    self.shift.1 = match self.last_seq {
                        Some(last) if f.seq <= last => last + 1 - f.seq,
                        _ => 0,
                    };
                }
                f.t_ns += self.shift.0;
                f.seq += self.shift.1;
                self.last_seq = Some(f.seq);
            }
            SourceItem::Ecg(b) => {
                if self.fresh_index {
                    self.fresh_index = false;
                    self.shift.2 = match self.next_index {
                        Some(next) if b.first_index < next + SPLICE_GAP_SAMPLES => {
                            next + SPLICE_GAP_SAMPLES - b.first_index
                        }
                        _ => 0,
                    };
                }
                b.t0_ns += self.shift.0;
                b.first_index += self.shift.2;
                self.next_index = Some(b.first_index + b.samples_mv.len() as u64);
            }
            SourceItem::Truth { t_ns, .. } => *t_ns += self.shift.0,
        }
        let available = item.available_ns();
        self.last_t_ns = Some(self.last_t_ns.map_or(available, |l| l.max(available)));
        item
    }
}

/// A session file played at its real pace, as both the video and the ECG source, or as the
/// video source only, next to a live ECG board.
#[derive(Debug, Clone)]
pub struct PlaySpec {
    /// The session file.
    pub path: PathBuf,
    /// Play it again from the start when it ends.
    pub looped: bool,
    /// `Some` plays only the file's video (and truth), restamped onto this live clock at the
    /// moment each frame is shown, as a grabber would stamp it; the ECG then comes from a
    /// board. `None` plays video and ECG on the file's own clock.
    pub video_only: Option<SessionClock>,
    /// Session seconds played per wall second (see [`Pacer`]): 1 at the real pace.
    pub speed: f64,
}

impl OpenSource for PlaySpec {
    fn name(&self) -> String {
        format!("session file {}", self.path.display())
    }

    fn streams(&self) -> Streams {
        Streams {
            video: true,
            ecg: self.video_only.is_none(),
        }
    }

    fn open(&self) -> Result<Box<dyn Source>, SourceError> {
        let reader =
            SessionReader::open_skipping_bad_frames(&self.path).map_err(|e| SourceError::Open {
                source_name: self.name(),
                message: e.to_string(),
            })?;
        Ok(Box::new(PlaySource {
            path: self.path.clone(),
            reader,
            pacer: Pacer::new(self.speed),
            pending: None,
            restamp: self.video_only,
            bad_frames_reported: 0,
        }))
    }

    fn restart_on_end(&self) -> bool {
        self.looped
    }
}

/// An open [`PlaySpec`].
struct PlaySource {
    /// For error messages.
    path: PathBuf,
    /// The file's events in file order.
    reader: SessionReader,
    /// Real-time pacing.
    pacer: Pacer,
    /// An item read but not yet due.
    pending: Option<SourceItem>,
    /// The live clock to restamp video onto, when the ECG comes from elsewhere.
    restamp: Option<SessionClock>,
    /// Bad frames the reader skipped that [`Source::take_bad_frames`] has already reported.
    bad_frames_reported: u64,
}

impl PlaySource {
    /// The next item of the file, skipping what is not a source item (recorded labels).
    fn read(&mut self) -> Result<Option<SourceItem>, SourceError> {
        for event in self.reader.by_ref() {
            let event = event.map_err(|e| SourceError::Read {
                source_name: format!("session file {}", self.path.display()),
                message: e.to_string(),
            })?;
            let item = match event {
                SessionEvent::Frame(f) => SourceItem::Frame(f),
                SessionEvent::Ecg(_) if self.restamp.is_some() => continue,
                SessionEvent::Ecg(b) => SourceItem::Ecg(b),
                SessionEvent::TruthView { t_ns, view } => SourceItem::Truth { t_ns, view },
                SessionEvent::TruthRPeak { .. } | SessionEvent::Label { .. } => continue,
            };
            return Ok(Some(item));
        }
        Ok(None)
    }
}

impl Source for PlaySource {
    fn next(&mut self, stop: &Stop) -> Result<Pulled, SourceError> {
        let item = match self.pending.take() {
            Some(item) => item,
            None => match self.read()? {
                Some(item) => item,
                None => return Ok(Pulled::End),
            },
        };
        match wait_due(&mut self.pacer, &item, stop) {
            Due::Reached(shown) => Ok(Pulled::Item(match self.restamp {
                Some(clock) => restamped(item, clock.at(shown)),
                None => item,
            })),
            Due::NotYet => {
                self.pending = Some(item);
                Ok(Pulled::Idle)
            }
            Due::Stopping => Ok(Pulled::Idle),
        }
    }

    fn take_bad_frames(&mut self) -> (u64, Option<String>) {
        let (total, last) = self.reader.bad_frames();
        let new = total.saturating_sub(self.bad_frames_reported);
        self.bad_frames_reported = total;
        (new, last.filter(|_| new > 0).map(str::to_string))
    }
}

/// `item` moved to session time `t_ns` (frames and truth; ECG is never restamped).
fn restamped(mut item: SourceItem, t_ns: u64) -> SourceItem {
    match &mut item {
        SourceItem::Frame(frame) => frame.t_ns = t_ns,
        SourceItem::Truth { t_ns: t, .. } => *t = t_ns,
        SourceItem::Ecg(_) => {}
    }
    item
}

/// The simulated cart in real time, as both the video and the ECG source.
#[derive(Debug)]
pub struct SimSpec {
    /// The scan to simulate; each opening after the first adds its count to the seed, so a
    /// looping simulation does not repeat itself.
    pub config: SimConfig,
    /// Openings so far.
    openings: AtomicU64,
}

impl SimSpec {
    /// A simulator source for `config` (checked when opened).
    pub fn new(config: SimConfig) -> SimSpec {
        SimSpec {
            config,
            openings: AtomicU64::new(0),
        }
    }
}

impl OpenSource for SimSpec {
    fn name(&self) -> String {
        "simulator".to_string()
    }

    fn streams(&self) -> Streams {
        Streams {
            video: true,
            ecg: true,
        }
    }

    fn open(&self) -> Result<Box<dyn Source>, SourceError> {
        let n = self.openings.fetch_add(1, Ordering::Relaxed);
        let config = SimConfig {
            seed: self.config.seed.wrapping_add(n),
            ..self.config.clone()
        };
        let simulator = Simulator::new(config).map_err(|e| SourceError::Open {
            source_name: self.name(),
            message: e.to_string(),
        })?;
        Ok(Box::new(SimSource {
            simulator,
            pacer: Pacer::default(),
            pending: Vec::new(),
        }))
    }

    fn restart_on_end(&self) -> bool {
        true
    }
}

/// An open [`SimSpec`].
struct SimSource {
    /// The simulation, in delivery order.
    simulator: Simulator,
    /// Real-time pacing.
    pacer: Pacer,
    /// Items of the current simulator event not yet delivered, last first.
    pending: Vec<SourceItem>,
}

impl Source for SimSource {
    fn next(&mut self, stop: &Stop) -> Result<Pulled, SourceError> {
        if self.pending.is_empty() {
            loop {
                match self.simulator.next() {
                    None => return Ok(Pulled::End),
                    Some(SimEvent::Frame { frame, truth }) => {
                        // Truth first: a beat resolved by this frame can then use it.
                        let t_ns = frame.t_ns;
                        self.pending.push(SourceItem::Frame(frame));
                        self.pending.push(SourceItem::Truth { t_ns, view: truth });
                        break;
                    }
                    Some(SimEvent::Ecg(block)) => {
                        self.pending.push(SourceItem::Ecg(block));
                        break;
                    }
                    Some(SimEvent::RPeak { .. }) => continue,
                }
            }
        }
        let Some(item) = self.pending.last() else {
            return Ok(Pulled::Idle);
        };
        match wait_due(&mut self.pacer, item, stop) {
            Due::Reached(_) => Ok(self.pending.pop().map_or(Pulled::Idle, Pulled::Item)),
            Due::NotYet | Due::Stopping => Ok(Pulled::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::PixelFormat;

    fn frame(seq: u64, t_ns: u64) -> SourceItem {
        SourceItem::Frame(Frame {
            seq,
            t_ns,
            width: 2,
            height: 1,
            stride: 2,
            format: PixelFormat::Grey8,
            data: vec![0, 0],
        })
    }

    fn ecg(first_index: u64, t0_ns: u64) -> SourceItem {
        SourceItem::Ecg(EcgBlock {
            first_index,
            t0_ns,
            fs_hz: 500.0,
            samples_mv: vec![0.0; 20],
            lead_off: false,
        })
    }

    #[test]
    fn splicer_moves_a_restarted_source_after_the_previous_opening() {
        let mut s = Splicer::new();
        s.begin();
        assert_eq!(s.splice(frame(5, 1_000)), frame(5, 1_000));
        assert_eq!(s.splice(ecg(0, 0)), ecg(0, 0));
        assert_eq!(s.splice(frame(6, 2_000_000_000)), frame(6, 2_000_000_000));
        // The file starts over at time 0, frame 5, sample 0.
        s.begin();
        let first = s.splice(frame(5, 1_000));
        assert_eq!(first, frame(7, 2_000_000_000 + SPLICE_GAP_NS));
        assert_eq!(
            s.splice(ecg(0, 0)),
            ecg(
                20 + SPLICE_GAP_SAMPLES,
                2_000_000_000 + SPLICE_GAP_NS - 1_000
            )
        );
        assert_eq!(
            s.splice(frame(6, 1_000_001_000)),
            frame(8, 3_000_000_000 + SPLICE_GAP_NS)
        );
    }

    #[test]
    fn splicer_leaves_a_live_clock_alone() {
        let mut s = Splicer::new();
        s.begin();
        s.splice(frame(1, 1_000_000_000));
        s.begin();
        // A device reconnected later on the monotonic clock: times already move on.
        assert_eq!(s.splice(frame(9, 5_000_000_000)), frame(9, 5_000_000_000));
    }

    #[test]
    fn pacer_spaces_items_by_session_time() {
        let mut p = Pacer::default();
        let first = p.due(5_000_000_000);
        let later = p.due(5_250_000_000);
        assert_eq!(later - first, Duration::from_millis(250));
        assert_eq!(p.due(4_000_000_000), first, "late items are due at once");
    }

    #[test]
    fn a_faster_pacer_divides_session_time_by_its_speed() {
        let mut p = Pacer::new(8.0);
        let first = p.due(1_000_000_000);
        assert_eq!(p.due(3_000_000_000) - first, Duration::from_millis(250));
        let mut unusable = Pacer::new(f64::NAN);
        let first = unusable.due(0);
        assert_eq!(unusable.due(40_000_000) - first, Duration::from_millis(40));
    }

    #[test]
    fn source_errors_name_the_source_once() {
        let named = SourceError::Open {
            source_name: "ECG port /dev/x".into(),
            message: "cannot open ECG port /dev/x: No such file or directory; check the cable"
                .into(),
        };
        assert_eq!(
            named.to_string(),
            "cannot open ECG port /dev/x: No such file or directory; check the cable"
        );
        let bare = SourceError::Open {
            source_name: "simulator".into(),
            message: "fps must be positive".into(),
        };
        assert_eq!(
            bare.to_string(),
            "cannot open simulator: fps must be positive"
        );
        let read = SourceError::Read {
            source_name: "session file a.mcap".into(),
            message: "a chunk fails its CRC check".into(),
        };
        assert_eq!(
            read.to_string(),
            "session file a.mcap: a chunk fails its CRC check"
        );
    }

    #[test]
    fn stop_interrupts_a_sleep() {
        let stop = Stop::new();
        stop.set();
        let t = Instant::now();
        assert!(!stop.sleep_until(t + Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
