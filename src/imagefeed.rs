//! Choosing a session's gating (ECG or image) and running image gating over a stream of any
//! length: the adapter between a session's inputs and the beat cutter.
//!
//! [`crate::imagegate::find_beats`] works on a slice of frames held in memory. A recorded
//! session can last minutes, so [`GatedFeed`] analyses it in overlapping windows of
//! [`WINDOW_NS`]: each window's boundaries are kept up to [`MARGIN_NS`] before its end (the
//! end-diastoles near a window's edge are found again, with both neighbours, by the next
//! window, which starts [`CONTEXT_NS`] before that cut), and the frames, truth labels and
//! boundaries up to the cut are handed on in time order. Memory stays at one window of frames.
//!
//! In [`GatingMode::Auto`] the feed holds the first [`AUTO_DECIDE_NS`] of inputs: ECG among
//! them means ECG gating (everything passes through untouched), none means image gating.
//! Image gating drops the session's ECG, so the beats come from the image alone even where an
//! ECG exists (to compare the two).
//!
//! Pure and push-driven: push [`Input`]s, pull the inputs for the cutter.

use std::collections::VecDeque;
use std::path::Path;

use crate::beats::Input;
use crate::gate::Gating;
use crate::imagegate::{ImageGateConfig, find_beats};
use crate::media::Frame;
use crate::pipeline::{BeatSink, Pipeline, PipelineStats};
use crate::recording::{Recording, RecordingError};
use crate::replay::ReplayError;

/// Span of frames analysed at once: several beats even at 40 bpm, so the autocorrelation
/// sees the period repeat, yet a small fraction of a long session in memory.
pub const WINDOW_NS: u64 = 8_000_000_000;
/// Boundaries this close to the end of a window are left to the next window, which sees
/// both sides of them; more than the longest beat's worth of a peak's neighbourhood.
pub const MARGIN_NS: u64 = 1_500_000_000;
/// Frames kept from before a window's cut as the start of the next window, so a peak right
/// after the cut has a detrending window and neighbours.
pub const CONTEXT_NS: u64 = 2_500_000_000;
/// In auto mode, how much of a session is looked at for ECG before choosing image gating.
pub const AUTO_DECIDE_NS: u64 = 5_000_000_000;

/// How beats are cut from a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatingMode {
    /// ECG gating when the session has an ECG, image gating when it has none.
    Auto,
    /// R-peaks from the session's ECG (a session without ECG yields no beats).
    Ecg,
    /// End-diastoles found in the image; the session's ECG is ignored.
    Image,
}

/// What the feed did, for summaries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedStats {
    /// The gating chosen (`None` until auto mode has decided).
    pub gating: Option<Gating>,
    /// Windows analysed for image gating.
    pub windows: u64,
    /// Of those, windows in which no beat was found.
    pub windows_failed: u64,
    /// Why the latest failing window failed, for the summary.
    pub last_error: Option<String>,
    /// Boundaries handed on from image gating.
    pub boundaries: u64,
    /// ECG blocks dropped because image gating was in force.
    pub ecg_dropped: u64,
    /// The recording was too short to find beats in and was taken as one whole heartbeat
    /// (a single-beat cine loop).
    pub single_loop: bool,
}

/// Session inputs in, inputs for the cutter out, with image-derived boundaries added when
/// image gating is in force. See the module documentation.
#[derive(Debug)]
pub struct GatedFeed {
    /// How image gating finds beats.
    config: ImageGateConfig,
    /// The decision so far: `None` while auto mode is still looking.
    decided: Option<Gating>,
    /// Auto mode's held inputs, in arrival order, until it decides.
    held: Vec<Input>,
    /// The image window: context frames before `pending_from`, then frames not yet handed on.
    frames: Vec<Frame>,
    /// Index in `frames` of the first frame not yet handed on.
    pending_from: usize,
    /// Truth labels not yet handed on, `(t_ns, view)`.
    truth: VecDeque<Input>,
    /// Inputs ready for the cutter.
    out: VecDeque<Input>,
    /// The latest boundary handed on.
    last_boundary: Option<u64>,
    /// Everything before this time has been handed on (the previous window's cut).
    handed_to: u64,
    /// Counters.
    stats: FeedStats,
}

impl GatedFeed {
    /// A feed gating by `mode`, finding image beats with `config`.
    pub fn new(mode: GatingMode, config: ImageGateConfig) -> GatedFeed {
        let decided = match mode {
            GatingMode::Auto => None,
            GatingMode::Ecg => Some(Gating::Ecg),
            GatingMode::Image => Some(Gating::Image),
        };
        GatedFeed {
            config,
            decided,
            held: Vec::new(),
            frames: Vec::new(),
            pending_from: 0,
            truth: VecDeque::new(),
            out: VecDeque::new(),
            last_boundary: None,
            handed_to: 0,
            stats: FeedStats {
                gating: decided,
                ..FeedStats::default()
            },
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &FeedStats {
        &self.stats
    }

    /// Feeds one session input.
    pub fn push(&mut self, input: Input) {
        match self.decided {
            None => {
                // R-wave times (a DICOM export's) are ECG gating already done.
                let has_ecg = matches!(
                    input,
                    Input::Ecg(_)
                        | Input::Boundary {
                            gating: Gating::Ecg,
                            ..
                        }
                );
                self.held.push(input);
                if has_ecg {
                    self.decide(Gating::Ecg);
                } else if self.held_span() >= AUTO_DECIDE_NS {
                    self.decide(Gating::Image);
                }
            }
            Some(Gating::Image) => self.push_image(input),
            Some(_) => self.out.push_back(input),
        }
    }

    /// End of the session: analyses what is left and hands everything on.
    pub fn finish(&mut self) {
        if self.decided.is_none() {
            self.decide(Gating::Image);
        }
        if self.decided == Some(Gating::Image) {
            self.analyse(true);
        }
    }

    /// The next input for the cutter, if any.
    pub fn next_input(&mut self) -> Option<Input> {
        self.out.pop_front()
    }

    /// Time covered by auto mode's held frames.
    fn held_span(&self) -> u64 {
        let mut times = self.held.iter().filter_map(|i| match i {
            Input::Frame(f) => Some(f.t_ns),
            _ => None,
        });
        let first = times.next();
        let last = times.next_back();
        match (first, last) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    /// Settles auto mode on `gating` and replays the held inputs through it.
    fn decide(&mut self, gating: Gating) {
        self.decided = Some(gating);
        self.stats.gating = Some(gating);
        for input in std::mem::take(&mut self.held) {
            self.push(input);
        }
    }

    /// Image gating: collects frames and truth, analysing a window once one is full.
    fn push_image(&mut self, input: Input) {
        match input {
            Input::Frame(frame) => {
                // Out-of-order frames cannot be placed in time; the cutter drops them too.
                if self.frames.last().is_some_and(|l| frame.t_ns <= l.t_ns) {
                    return;
                }
                self.frames.push(frame);
                let span = self.frames.last().map_or(0, |l| l.t_ns) - self.frames[0].t_ns;
                if span >= WINDOW_NS {
                    self.analyse(false);
                }
            }
            Input::Truth { .. } => self.truth.push_back(input),
            Input::Ecg(_) => self.stats.ecg_dropped += 1,
            // Boundaries from elsewhere would mix two gatings in one stream.
            Input::Boundary { .. } => {}
        }
    }

    /// Finds the boundaries of the window and hands on everything before its cut (all of it
    /// when `last`).
    fn analyse(&mut self, last: bool) {
        let Some(end) = self.frames.last().map(|f| f.t_ns) else {
            self.flush_truth(u64::MAX);
            return;
        };
        let cut = if last {
            u64::MAX
        } else {
            end.saturating_sub(MARGIN_NS)
        };
        let mut boundaries = Vec::new();
        if self.pending_from < self.frames.len() {
            self.stats.windows += 1;
            match find_beats(&self.frames, &self.config) {
                Ok(found) => boundaries = found,
                Err(err) => {
                    self.stats.windows_failed += 1;
                    self.stats.last_error = Some(err.to_string());
                }
            }
        }
        if last && boundaries.is_empty() && self.stats.boundaries == 0 {
            boundaries = self.single_loop();
        }
        let min_gap = (60e9 / self.config.max_bpm) as u64;
        let mut kept = Vec::new();
        for b in boundaries {
            let fresh = self.last_boundary.is_none_or(|l| b >= l + min_gap);
            // Earlier boundaries were the previous window's to hand on.
            let in_span = b >= self.handed_to && b < cut;
            if fresh && in_span {
                self.last_boundary = Some(b);
                kept.push(b);
            }
        }
        self.stats.boundaries += kept.len() as u64;

        // Hand on, in time order, boundaries, frames and truth before the cut; a boundary
        // goes before a frame of the same time, a frame before its truth label.
        let pending_end = self.frames.partition_point(|f| f.t_ns < cut);
        let mut kept = kept.into_iter().peekable();
        for frame in &self.frames[self.pending_from..pending_end] {
            while let Some(b) = kept.next_if(|&b| b <= frame.t_ns) {
                self.out.push_back(Input::Boundary {
                    t_ns: b,
                    gating: Gating::Image,
                });
            }
            while let Some(t) = self.truth.front().and_then(truth_time)
                && t < frame.t_ns
            {
                self.out.extend(self.truth.pop_front());
            }
            self.out.push_back(Input::Frame(frame.clone()));
        }
        for b in kept {
            self.out.push_back(Input::Boundary {
                t_ns: b,
                gating: Gating::Image,
            });
        }
        self.flush_truth(if last { u64::MAX } else { cut });
        self.pending_from = pending_end;
        self.handed_to = cut;
        // Keep the context the next window needs before its first new frame.
        let keep_from = self
            .frames
            .partition_point(|f| f.t_ns < cut.saturating_sub(CONTEXT_NS));
        self.frames.drain(..keep_from.min(self.pending_from));
        self.pending_from -= keep_from.min(self.pending_from);
    }

    /// A whole recording too short for its heartbeats to be found, lasting as long as one
    /// heartbeat can (within the configured rates): taken as one heartbeat from its first
    /// frame to its last. Carts export cine loops of whole beats, often exactly one, and
    /// such a loop has no second end-diastole to find. Nothing otherwise.
    fn single_loop(&mut self) -> Vec<u64> {
        let (Some(first), Some(end)) = (self.frames.first(), self.frames.last()) else {
            return Vec::new();
        };
        if self.handed_to != 0 {
            return Vec::new();
        }
        let span = end.t_ns.saturating_sub(first.t_ns);
        let shortest = (60e9 / self.config.max_bpm) as u64;
        let longest = (60e9 / self.config.min_bpm) as u64;
        if !(shortest..=longest).contains(&span) {
            return Vec::new();
        }
        self.stats.single_loop = true;
        vec![first.t_ns, end.t_ns]
    }

    /// Hands on the truth labels before `cut`.
    fn flush_truth(&mut self, cut: u64) {
        while let Some(t) = self.truth.front().and_then(truth_time)
            && t < cut
        {
            self.out.extend(self.truth.pop_front());
        }
    }
}

/// Reads the recording at `path` (a session or a DICOM export) through `feed` and hands every resulting input to `consume`,
/// finishing the feed at the end. On a read error midway the inputs read before it are still
/// handed on (the feed is finished first), then the error is returned. Recorded labels and
/// truth R-peaks are for evaluation, not inputs, and are left out.
pub fn feed_session<E: From<RecordingError>>(
    path: &Path,
    feed: &mut GatedFeed,
    mut consume: impl FnMut(Input) -> Result<(), E>,
) -> Result<(), E> {
    let mut read = || -> Result<(), E> {
        for input in Recording::open(path)? {
            feed.push(input?);
            while let Some(input) = feed.next_input() {
                consume(input)?;
            }
        }
        Ok(())
    };
    let outcome = read();
    feed.finish();
    while let Some(input) = feed.next_input() {
        consume(input)?;
    }
    outcome
}

/// Replays the session at `path` through `pipeline` gated as `feed` decides, sending beats
/// to `sink`; [`crate::replay::replay_session`] with a choice of gating. On a read error
/// midway the beats before it have already gone to the sink.
pub fn replay_gated(
    path: &Path,
    pipeline: &mut Pipeline,
    sink: &mut dyn BeatSink,
    feed: &mut GatedFeed,
) -> Result<PipelineStats, ReplayError> {
    let pipeline_err = |source| ReplayError::Pipeline {
        path: path.display().to_string(),
        source,
    };
    feed_session(path, feed, |input| {
        pipeline.push(input, sink).map_err(pipeline_err)
    })?;
    pipeline.finish(sink).map_err(pipeline_err)?;
    Ok(pipeline.stats())
}

/// The summary's words on gating: which, and for image gating how the windows went.
pub fn describe(stats: &FeedStats) -> String {
    let Some(gating) = stats.gating else {
        return "gating undecided (no frames)".into();
    };
    let mut s = format!("gating {}", gating.name());
    if gating == Gating::Image {
        s += &format!(
            " ({} boundaries from {} windows",
            stats.boundaries, stats.windows
        );
        if stats.windows_failed > 0 {
            s += &format!(", {} without beats", stats.windows_failed);
            if let Some(err) = &stats.last_error {
                s += &format!(", last: {err}");
            }
        }
        if stats.ecg_dropped > 0 {
            s += &format!(", {} ECG blocks ignored", stats.ecg_dropped);
        }
        if stats.single_loop {
            s += ", too short to find beats in: taken as one heartbeat, first frame to last";
        }
        s += ")";
    }
    s
}

/// The time of a truth input (the only kind held in the truth queue).
fn truth_time(input: &Input) -> Option<u64> {
    match input {
        Input::Truth { t_ns, .. } => Some(*t_ns),
        _ => None,
    }
}
