//! `echoview eval`: replay labelled sessions through the model and score the labels.
//!
//! Each session runs through the same pipeline as `echoview replay` (with the same choice of
//! gating); its beats are collected with their probabilities, scored against the truth
//! ([`truth`]: the session's truth channel or a CSV) by [`score`], per beat and per session
//! (the view of highest mean probability over the session's beats), and written by
//! [`report`] as `report.json` and confusion-matrix PNGs. A session that fails is reported
//! and left out; the others are still scored.

pub mod report;
pub mod score;
pub mod truth;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::bundle::Bundle;
use crate::classify::Label;
use crate::engine::{self, EngineKind};
use crate::imagefeed::{GatedFeed, GatingMode, replay_gated};
use crate::pipeline::{BeatReport, BeatSink, Pipeline};
use crate::views::View;
use score::{Confusion, Scores, session_label};
use truth::TruthTable;

/// `echoview eval`
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Session files (MCAP) to score.
    #[arg(required = true, value_name = "SESSION")]
    pub sessions: Vec<PathBuf>,
    /// Folder for report.json and the confusion-matrix PNGs (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: PathBuf,
    /// Truth as CSV (`file,label` or `file,beat,label`) instead of the sessions' truth channel.
    #[arg(long, value_name = "CSV")]
    pub truth: Option<PathBuf>,
    /// The model and engine.
    #[command(flatten)]
    pub model: crate::cli::ModelArgs,
    /// How beats are cut (as for `echoview replay`).
    #[arg(long, value_enum, default_value = "auto")]
    pub gating: GatingMode,
}

/// One classified beat, as scoring needs it.
#[derive(Debug, Clone)]
pub struct ScoredBeat {
    /// Running beat number in its session.
    pub beat: u64,
    /// The published label (`None`: unknown).
    pub label: Option<View>,
    /// Probabilities in the model's label order.
    pub probs: Vec<f32>,
    /// The true view, when known.
    pub truth: Option<View>,
}

/// Collects a session's beats.
#[derive(Debug, Default)]
struct Collect(Vec<ScoredBeat>);

impl BeatSink for Collect {
    fn beat(&mut self, report: &BeatReport) -> std::io::Result<()> {
        let c = &report.classification;
        self.0.push(ScoredBeat {
            beat: report.beat.beat,
            label: match c.label {
                Label::View(v) => Some(v),
                Label::Unknown => None,
            },
            probs: c.probs.clone(),
            truth: report.truth,
        });
        Ok(())
    }
}

/// One session's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SessionResult {
    /// The file as given.
    pub file: String,
    /// Beats classified.
    pub beats: usize,
    /// Of those, with truth (scored).
    pub scored: usize,
    /// The session's true view (the CSV's, else the most frequent beat truth).
    pub truth: Option<&'static str>,
    /// The view of highest mean probability over its beats.
    pub label: Option<&'static str>,
    /// Why the session could not be scored (read to the end), if it could not.
    pub error: Option<String>,
}

/// Everything the report holds.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The model, as `name version (hash)`.
    pub model: String,
    /// Gating mode asked for.
    pub gating: &'static str,
    /// Per session.
    pub sessions: Vec<SessionResult>,
    /// Scores over beats.
    pub per_beat: Scores,
    /// Scores over sessions.
    pub per_session: Scores,
    /// Confusion over beats (rows truth, columns label, last column unknown).
    pub beat_confusion: Confusion,
    /// Confusion over sessions.
    pub session_confusion: Confusion,
}

/// Scores sessions' beats: `sessions` holds `(file, beats, csv truth)` per session.
pub fn evaluate(
    labels: &[View],
    sessions: &[(String, Vec<ScoredBeat>, Option<truth::SessionTruth>)],
) -> (Confusion, Confusion, Vec<SessionResult>) {
    let mut beats_cm = Confusion::default();
    let mut sessions_cm = Confusion::default();
    let mut results = Vec::new();
    for (file, beats, csv) in sessions {
        let mut counts = [0usize; View::ALL.len()];
        let mut scored = 0;
        for b in beats {
            let truth = csv
                .as_ref()
                .and_then(|t| t.beats.get(&b.beat).copied().or(t.whole))
                .or(b.truth);
            if let Some(t) = truth {
                beats_cm.add(t, b.label);
                counts[t.index()] += 1;
                scored += 1;
            }
        }
        let majority = counts
            .iter()
            .enumerate()
            .max_by_key(|&(i, n)| (*n, usize::MAX - i))
            .filter(|&(_, &n)| n > 0)
            .map(|(i, _)| View::ALL[i]);
        let truth = csv.as_ref().and_then(|t| t.whole).or(majority);
        let probs: Vec<Vec<f32>> = beats.iter().map(|b| b.probs.clone()).collect();
        let label = session_label(labels, &probs);
        if let (Some(t), Some(_)) = (truth, label) {
            sessions_cm.add(t, label);
        }
        results.push(SessionResult {
            file: file.clone(),
            beats: beats.len(),
            scored,
            truth: truth.map(View::name),
            label: label.map(View::name),
            error: None,
        });
    }
    (beats_cm, sessions_cm, results)
}

/// Runs `echoview eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let bundle = args.model.load_bundle()?;
    let table = match &args.truth {
        Some(path) => Some(TruthTable::load(path)?),
        None => None,
    };
    let mut collected = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    for path in &args.sessions {
        let (beats, error) = replay_one(path, &bundle, args.model.engine, args.gating)?;
        let file = path.display().to_string();
        if let Some(err) = error {
            eprintln!("echoview: error: {err}");
            errors.push((file.clone(), err));
        }
        let csv = table.as_ref().and_then(|t| t.get(path)).cloned();
        collected.push((file, beats, csv));
    }
    let (beat_confusion, session_confusion, mut sessions) = evaluate(&bundle.labels, &collected);
    for s in &mut sessions {
        s.error = errors
            .iter()
            .find(|(f, _)| *f == s.file)
            .map(|(_, e)| e.clone());
    }
    let evaluation = Evaluation {
        model: bundle.identity(),
        gating: match args.gating {
            GatingMode::Auto => "auto",
            GatingMode::Ecg => "ecg",
            GatingMode::Image => "image",
        },
        sessions,
        per_beat: beat_confusion.scores(),
        per_session: session_confusion.scores(),
        beat_confusion,
        session_confusion,
    };
    report::write(&args.report, &evaluation)
        .with_context(|| format!("writing the report to {}", args.report.display()))?;
    let b = &evaluation.per_beat;
    eprintln!(
        "{} beats scored: accuracy {:.1}%, micro F1 {:.3}, macro F1 {:.3}, {} unknown; {} sessions: \
         accuracy {:.1}%; report in {}",
        b.total,
        100.0 * b.accuracy,
        b.micro_f1,
        b.macro_f1,
        b.unknown,
        evaluation.per_session.total,
        100.0 * evaluation.per_session.accuracy,
        args.report.display()
    );
    if !errors.is_empty() {
        anyhow::bail!(
            "{} of {} sessions could not be read to the end (their beats before the fault are scored)",
            errors.len(),
            args.sessions.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Replays one session, returning its beats and, if it failed midway, why.
fn replay_one(
    path: &Path,
    bundle: &Bundle,
    kind: EngineKind,
    gating: GatingMode,
) -> anyhow::Result<(Vec<ScoredBeat>, Option<String>)> {
    let engine = engine::open(bundle, kind)?;
    let mut pipeline = Pipeline::new(bundle, engine);
    let mut feed = GatedFeed::new(gating, Default::default());
    let mut sink = Collect::default();
    let result = replay_gated(path, &mut pipeline, &mut sink, &mut feed);
    Ok((sink.0, result.err().map(|e| e.to_string())))
}
