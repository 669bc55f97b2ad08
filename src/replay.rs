//! `echoview replay`: run recorded sessions through the pipeline and print one JSON object per
//! heartbeat.
//!
//! The JSON sink is one of the pipeline's [`BeatSink`]s; reading the session and writing the
//! lines are the only I/O here, so the same pipeline serves replay, the daemon and tests.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::bundle::Bundle;
use crate::imagefeed::{GatedFeed, GatingMode, replay_gated};
use crate::imagegate::ImageGateConfig;
use crate::pipeline::{BeatReport, BeatSink, Pipeline, PipelineError, PipelineStats};
use crate::recording::RecordingError;
use crate::views::View;

/// Why a session could not be replayed to the end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording (session or DICOM export) could not be read (the beats before the
    /// fault were still reported).
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The pipeline stopped.
    #[error("{path}: {source}")]
    Pipeline {
        /// The session being replayed.
        path: String,
        /// What stopped it.
        source: PipelineError,
    },
}

/// One line of `echoview replay` output.
#[derive(Debug, Serialize)]
pub struct BeatLine<'a> {
    /// The session file the beat came from.
    pub session: &'a str,
    /// Time of the beat's end (its closing R-peak), seconds on the session clock.
    pub t: f64,
    /// Running beat number within the session (skipped beats count too).
    pub beat: u64,
    /// Time of the beat's opening R-peak, seconds.
    pub start: f64,
    /// The published label: a view name or `unknown`.
    pub label: &'static str,
    /// Probability of the most probable view.
    pub confidence: f32,
    /// Probability of every view, in the model's label order.
    #[serde(serialize_with = "serialize_probs")]
    pub probs: (&'a [View], &'a [f32]),
    /// Weight of the spatial branch in the head's mix.
    pub alpha: f32,
    /// How the beat's boundaries were found (`ecg`).
    pub gating: &'static str,
    /// Heart rate from this beat's RR interval.
    pub hr_bpm: f64,
    /// The true view, when the session carries one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<&'static str>,
}

fn serialize_probs<S: serde::Serializer>(
    probs: &(&[View], &[f32]),
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(probs.0.len()))?;
    for (view, p) in probs.0.iter().zip(probs.1) {
        // Four decimals are plenty for people and keep lines short.
        map.serialize_entry(view.name(), &((p * 1e4).round() / 1e4))?;
    }
    map.end()
}

impl<'a> BeatLine<'a> {
    /// The line for `report` from `session`, with probabilities in `labels` order.
    pub fn new(session: &'a str, labels: &'a [View], report: &'a BeatReport) -> BeatLine<'a> {
        let c = &report.classification;
        BeatLine {
            session,
            t: report.beat.end_ns as f64 / 1e9,
            beat: report.beat.beat,
            start: report.beat.start_ns as f64 / 1e9,
            label: c.label.name(),
            confidence: c.confidence,
            probs: (labels, &c.probs),
            alpha: c.alpha,
            gating: report.beat.gating.name(),
            hr_bpm: (report.beat.hr_bpm() * 10.0).round() / 10.0,
            truth: report.truth.map(View::name),
        }
    }
}

/// Writes each classified beat as one JSON line, flushed at once so a viewer sees it live.
pub struct JsonLinesSink<'a, W: Write> {
    /// Where lines go (stdout for the command).
    out: W,
    /// The session's name for the `session` field.
    session: &'a str,
    /// The model's labels, for `probs`.
    labels: &'a [View],
}

impl<'a, W: Write> JsonLinesSink<'a, W> {
    /// A sink writing lines for `session` to `out`.
    pub fn new(out: W, session: &'a str, labels: &'a [View]) -> Self {
        JsonLinesSink {
            out,
            session,
            labels,
        }
    }
}

impl<W: Write> BeatSink for JsonLinesSink<'_, W> {
    fn beat(&mut self, report: &BeatReport) -> std::io::Result<()> {
        let line = BeatLine::new(self.session, self.labels, report);
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

/// Replays the recording at `path` (a session or a DICOM export) through `pipeline`, gated by
/// its ECG, else by its image (see [`crate::imagefeed`]), sending beats to `sink`. Returns the run's counters; on a read error midway, the beats before it
/// have already gone to the sink.
pub fn replay_session(
    path: &Path,
    pipeline: &mut Pipeline,
    sink: &mut dyn BeatSink,
) -> Result<PipelineStats, ReplayError> {
    let mut feed = GatedFeed::new(GatingMode::Auto, ImageGateConfig::default());
    replay_gated(path, pipeline, sink, &mut feed)
}

/// A human summary of one session's run, for stderr.
pub fn summary(path: &Path, bundle: &Bundle, engine: &str, stats: &PipelineStats) -> String {
    let mut s = format!(
        "{}: {} frames, {} ECG samples, {} R-peaks; {} beats labelled ({} unknown), {} skipped",
        path.display(),
        stats.cut.frames,
        stats.cut.ecg_samples,
        stats.cut.r_peaks,
        stats.beats_classified,
        stats.beats_unknown,
        stats.cut.beats_skipped(),
    );
    if !stats.cut.skipped.is_empty() {
        let reasons: Vec<String> = stats
            .cut
            .skipped
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        s += &format!(" ({})", reasons.join(", "));
    }
    if stats.beats_with_truth > 0 {
        s += &format!(
            "; {}/{} correct against truth ({:.1}%)",
            stats.beats_correct,
            stats.beats_with_truth,
            100.0 * stats.beats_correct as f64 / stats.beats_with_truth as f64
        );
    }
    if stats.cut.ecg_restarts > 0 {
        s += &format!("; ECG stream restarted {} times", stats.cut.ecg_restarts);
    }
    s + &format!(
        "; {} frames encoded; model {}, engine {engine}",
        stats.frames_encoded,
        bundle.identity()
    )
}
