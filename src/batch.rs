//! `echoview batch`: replay many sessions at once on all cores.
//!
//! Separate from `echoview replay`, which streams one session after another to stdout for a
//! person or a pipe to watch: a batch run writes beats to a file (`--jsonl`), shows a
//! progress bar with an ETA instead, and ends with a table of every session, so its
//! interleaved output never mixes with the line-per-beat contract of `replay`.
//!
//! Sessions run in parallel, one per worker (`--jobs`); each worker holds one pipeline at a
//! time, and beats travel to the single writer through a bounded channel, so memory stays at
//! `jobs` pipelines plus [`CHANNEL_LINES`] lines however many sessions there are. A session
//! that fails is reported and skipped; the rest go on, and the exit status says whether any
//! failed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bundle::Bundle;
use crate::engine::{self, EngineKind};
use crate::imagefeed::{GatedFeed, GatingMode, describe, replay_gated};
use crate::pipeline::{BeatReport, BeatSink, Pipeline, PipelineStats};
use crate::replay::BeatLine;

/// Beat lines that may wait for the writer; a worker blocks beyond this, so a slow disk
/// slows the workers instead of filling memory.
pub const CHANNEL_LINES: usize = 1024;

/// `echoview batch`
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Session files (MCAP) to replay.
    #[arg(required = true, value_name = "SESSION")]
    pub sessions: Vec<PathBuf>,
    /// Sessions replayed at once [default: the number of cores].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Write one JSON line per beat here (as `echoview replay` prints them).
    #[arg(long, value_name = "OUT")]
    pub jsonl: Option<PathBuf>,
    /// The model and engine.
    #[command(flatten)]
    pub model: crate::cli::ModelArgs,
    /// How beats are cut (as for `echoview replay`).
    #[arg(long, value_enum, default_value = "auto")]
    pub gating: GatingMode,
}

/// What a worker tells the writer.
enum Message {
    /// A beat's JSON line (without the newline).
    Beat(String),
    /// A session finished (or failed): its index in the list and its row of the table.
    Done(usize, Outcome),
}

/// One session's row of the final table.
#[derive(Debug, Clone)]
struct Outcome {
    /// The pipeline's counters (what was done before any failure).
    stats: PipelineStats,
    /// The gating used, in words.
    gating: String,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// Sends each beat's line to the writer.
struct ChannelSink<'a> {
    /// The writer's channel.
    tx: &'a SyncSender<Message>,
    /// The session's name for the `session` field.
    session: &'a str,
    /// The model's labels.
    labels: &'a [crate::views::View],
}

impl BeatSink for ChannelSink<'_> {
    fn beat(&mut self, report: &BeatReport) -> std::io::Result<()> {
        let line = serde_json::to_string(&BeatLine::new(self.session, self.labels, report))?;
        self.tx
            .send(Message::Beat(line))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "writer stopped"))
    }
}

/// Replays one session into the channel.
fn replay_one(
    path: &Path,
    bundle: &Bundle,
    kind: EngineKind,
    gating: GatingMode,
    tx: &SyncSender<Message>,
) -> Outcome {
    let engine = match engine::open(bundle, kind) {
        Ok(engine) => engine,
        Err(err) => {
            return Outcome {
                stats: PipelineStats::default(),
                gating: String::new(),
                error: Some(format!("{}: {err}", path.display())),
            };
        }
    };
    let mut pipeline = Pipeline::new(bundle, engine);
    let mut feed = GatedFeed::new(gating, Default::default());
    let name = path.display().to_string();
    let mut sink = ChannelSink {
        tx,
        session: &name,
        labels: &bundle.labels,
    };
    let result = replay_gated(path, &mut pipeline, &mut sink, &mut feed);
    let stats = pipeline.stats();
    Outcome {
        // A file that failed before its first frame was never gated at all.
        gating: if stats.cut.frames == 0 {
            "-".into()
        } else {
            describe(feed.stats())
        },
        stats,
        error: result.err().map(|e| e.to_string()),
    }
}

/// Runs `echoview batch`.
pub fn run(args: &BatchArgs) -> anyhow::Result<ExitCode> {
    let bundle = args.model.load_bundle()?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, args.sessions.len().max(1));
    let mut out: Box<dyn Write> = match &args.jsonl {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::sink()),
    };
    let bar = ProgressBar::with_draw_target(
        Some(args.sessions.len() as u64),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} sessions, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .context("progress bar template")?,
    );

    let next = AtomicUsize::new(0);
    let (tx, rx) = sync_channel::<Message>(CHANNEL_LINES);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; args.sessions.len()];
    let mut write_error = None;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, bundle, sessions) = (&next, &bundle, &args.sessions);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = sessions.get(i) else { break };
                    let outcome = replay_one(path, bundle, args.model.engine, args.gating, &tx);
                    if tx.send(Message::Done(i, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for message in rx {
            match message {
                Message::Beat(line) => {
                    if write_error.is_none()
                        && let Err(err) = writeln!(out, "{line}")
                    {
                        write_error = Some(err);
                    }
                }
                Message::Done(i, outcome) => {
                    if let Some(err) = &outcome.error {
                        // A hidden bar prints nothing, so errors go straight to stderr then.
                        if bar.is_hidden() {
                            eprintln!("echoview: error: {err}");
                        } else {
                            bar.println(format!("echoview: error: {err}"));
                        }
                    }
                    outcomes[i] = Some(outcome);
                    bar.inc(1);
                }
            }
        }
    });
    bar.finish_and_clear();
    out.flush().context("writing the beat lines")?;
    if let Some(err) = write_error {
        return Err(err).context("writing the beat lines");
    }

    let mut table = std::io::stdout().lock();
    let failed = print_table(&mut table, &args.sessions, &outcomes)?;
    if failed > 0 {
        eprintln!(
            "echoview: error: {failed} of {} sessions failed (see above); the others were replayed",
            args.sessions.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the summary table; returns how many sessions failed.
fn print_table(
    out: &mut dyn Write,
    sessions: &[PathBuf],
    outcomes: &[Option<Outcome>],
) -> anyhow::Result<usize> {
    writeln!(
        out,
        "{:<40} {:>6} {:>7} {:>6} {:>8} {:>8} {:>9}  gating",
        "session", "status", "frames", "beats", "unknown", "skipped", "correct"
    )?;
    let mut failed = 0;
    for (path, outcome) in sessions.iter().zip(outcomes) {
        let name = path.display().to_string();
        let Some(o) = outcome else {
            failed += 1;
            writeln!(out, "{name:<40} {:>6}", "lost")?;
            continue;
        };
        let s = &o.stats;
        let status = if o.error.is_some() {
            failed += 1;
            "FAILED"
        } else {
            "ok"
        };
        let correct = if s.beats_with_truth > 0 {
            format!(
                "{:.1}%",
                100.0 * s.beats_correct as f64 / s.beats_with_truth as f64
            )
        } else {
            "-".into()
        };
        writeln!(
            out,
            "{name:<40} {status:>6} {:>7} {:>6} {:>8} {:>8} {correct:>9}  {}",
            s.cut.frames,
            s.beats_classified,
            s.beats_unknown,
            s.cut.beats_skipped(),
            o.gating
        )?;
    }
    Ok(failed)
}
