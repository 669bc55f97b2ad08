//! The command line: argument definitions and the subcommands' top-level flow.
//!
//! Each subcommand is a thin layer: parse, call library code, print. Errors travel up as
//! `anyhow` with context naming the file or flag at fault; `main` prints them and picks the
//! exit code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bundle::Bundle;
use crate::clips::{ClipOptions, cut_session};
use crate::ecg::{SampleFormat, detect_all, read_samples};
use crate::engine::{self, EngineKind};
use crate::media::PixelFormat;
use crate::pipeline::Pipeline;
use crate::preprocess::PreprocessConfig;
use crate::replay::{JsonLinesSink, summary};
use crate::selftest;
use crate::serial::Emulator;
use crate::serial::command::{EcgSerialArgs, ListenArgs, listen};
use crate::serial::reader::monotonic_now;
use crate::session::SessionWriter;
use crate::sim::{LeadOffMode, LeadOffStretch, ScanScript, SimConfig, SimEvent, Simulator};

/// Live echocardiography view guidance: ECG-gated view classification of ultrasound video.
#[derive(Debug, Parser)]
#[command(name = "echoview", version = crate::version::LONG, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate a short scan of every view and label it, beat by beat (no hardware needed).
    Demo(DemoArgs),
    /// Simulate an ultrasound cart (ECG + video of the 11 views) into a session file.
    Sim(SimArgs),
    /// Label every heartbeat of recorded sessions or DICOM cine exports; one JSON object per
    /// beat on stdout.
    Replay(ReplayArgs),
    /// Run the live daemon: classify every heartbeat and publish labels on a Unix socket.
    Run(crate::daemon::cli::RunArgs),
    /// Show the daemon's live labels and status in the terminal.
    Watch(crate::daemon::cli::WatchArgs),
    /// Cut the gated, preprocessed frames of every heartbeat into training clips (NumPy).
    Clips(ClipsArgs),
    /// Score the model's labels on sessions with known views: accuracy, F1, confusion matrix.
    Eval(crate::eval::EvalArgs),
    /// Replay many sessions in parallel: beats to a JSON-lines file, a progress bar, a table.
    Batch(crate::batch::BatchArgs),
    /// ECG tools.
    #[command(subcommand)]
    Ecg(EcgCommand),
    /// Model bundle tools.
    #[command(subcommand)]
    Model(ModelCommand),
    /// DICOM export tools.
    #[command(subcommand)]
    Dicom(crate::dicom::info::DicomCommand),
    /// Check that this cart can run: devices, ECG signal, model, socket, disk, clock.
    Doctor(crate::doctor::command::DoctorArgs),
    /// Measure the pipeline's stages on a bundle and check the performance budgets.
    Bench(crate::bench::cli::BenchArgs),
}

/// `echoview ecg ...`
#[derive(Debug, Subcommand)]
pub enum EcgCommand {
    /// Detect R-peaks in an ECG file; prints one R-peak sample index per line.
    Detect(DetectArgs),
    /// Read a serial ECG board live and print one JSON line per beat (the field ECG check).
    Listen(ListenArgs),
}

/// `echoview model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Verify a bundle's hashes and run its reference self-test on an engine.
    Check(CheckArgs),
    /// Vet a bundle and make it the active model (two slots; the old one is kept).
    Install(crate::model_store::command::InstallArgs),
    /// Show the two model slots and which is active.
    List(crate::model_store::command::ListArgs),
    /// Make the previously active model active again.
    Rollback(crate::model_store::command::RollbackArgs),
}

/// Which model bundle and engine to run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model bundle folder [default: $ECHOVIEW_MODEL, else the active installed model
    /// (/var/lib/echoview/models/active), else the bundled demo model].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Inference engine: auto runs TensorRT when its plan and library pass every check, else
    /// tract (saying why on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineKind,
}

impl ModelArgs {
    /// The bundle folder to use: the flag, `$ECHOVIEW_MODEL`, the active slot of the model
    /// store (`echoview model install`), an installed demo bundle, or the demo bundle of the
    /// source tree this binary was built from.
    pub fn model_dir(&self) -> PathBuf {
        if let Some(dir) = &self.model {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("ECHOVIEW_MODEL") {
            return dir.into();
        }
        let active = Path::new(crate::model_store::DEFAULT_STORE).join(crate::model_store::ACTIVE);
        if active.join("manifest.toml").exists() {
            return active;
        }
        let installed = Path::new("/usr/share/echoview/models/demo");
        if installed.join("manifest.toml").exists() {
            return installed.to_path_buf();
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
    }

    /// Loads and verifies the bundle.
    pub fn load_bundle(&self) -> anyhow::Result<Bundle> {
        let dir = self.model_dir();
        Bundle::load(&dir).with_context(|| {
            format!(
                "loading model bundle {} (choose another with --model DIR)",
                dir.display()
            )
        })
    }
}

/// Pixel formats on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// 8-bit greyscale.
    Grey,
    /// Packed YUV 4:2:2.
    Yuyv,
}

impl From<FormatArg> for PixelFormat {
    fn from(f: FormatArg) -> PixelFormat {
        match f {
            FormatArg::Grey => PixelFormat::Grey8,
            FormatArg::Yuyv => PixelFormat::Yuyv,
        }
    }
}

/// What to simulate (shared by `sim` and `demo`).
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// Seed: the same seed and options give the same session, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Views to scan, in order: `all` or a comma-separated list such as `PLAX,A4C`.
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub views: String,
    /// Heartbeats to stay on each view.
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub beats_per_view: u32,
    /// A TOML scan file scripting the scan in detail (overrides --views and --beats-per-view).
    #[arg(long, value_name = "FILE")]
    pub scan: Option<PathBuf>,
}

impl ScanArgs {
    fn script(&self) -> anyhow::Result<ScanScript> {
        Ok(match &self.scan {
            Some(path) => ScanScript::load(path)?,
            None => {
                ScanScript::from_view_list(&self.views, self.beats_per_view).context("--views")?
            }
        })
    }
}

/// `echoview sim`
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The session file to write (MCAP); may be left out with --ecg-serial.
    #[arg(long, value_name = "FILE.mcap", required_unless_present = "ecg_serial")]
    pub out: Option<PathBuf>,
    /// The simulated ECG on a serial line, as a cart's ECG board sends it.
    #[command(flatten)]
    pub ecg: EcgSerialArgs,
    /// The scan.
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Frame width in pixels.
    #[arg(long, default_value_t = 320)]
    pub width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 240)]
    pub height: u32,
    /// Pixel format of the video.
    #[arg(long, value_enum, default_value = "grey")]
    pub format: FormatArg,
    /// Video frame rate.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// ECG sampling rate in Hz.
    #[arg(long, default_value_t = 500.0, value_name = "HZ")]
    pub ecg_hz: f64,
    /// Mean heart rate in beats per minute.
    #[arg(long, default_value_t = 70.0)]
    pub bpm: f64,
    /// Probability that a beat is a premature ectopic beat.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub ectopic: f64,
    /// Mains interference frequency (50 or 60 Hz).
    #[arg(long, default_value_t = 50.0, value_name = "HZ")]
    pub mains_hz: f64,
    /// Scale all ECG noise (baseline wander, mains hum, muscle noise) by this factor.
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub noise: f64,
    /// A stretch of bad ECG, `START_S:DURATION_S[:flat|railed|noise]`: leads off reading
    /// 0 mV or the rail, or leads on under a motion-artefact burst; repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_lead_off)]
    pub lead_off: Vec<LeadOffStretch>,
}

fn parse_lead_off(spec: &str) -> Result<LeadOffStretch, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let number = |s: &str, what: &str| {
        s.trim().parse::<f64>().map_err(|_| {
            format!(
                "{what} {s:?} is not a number in {spec:?} (START_S:DURATION_S[:flat|railed|noise])"
            )
        })
    };
    let (start_s, duration_s) = match parts.as_slice() {
        [s, d] | [s, d, _] => (number(s, "start")?, number(d, "duration")?),
        _ => {
            return Err(format!(
                "{spec:?} is not START_S:DURATION_S[:flat|railed|noise]"
            ));
        }
    };
    let mode = match parts.get(2).map(|m| m.trim().to_ascii_lowercase()) {
        None => LeadOffMode::Flat,
        Some(m) if m == "flat" => LeadOffMode::Flat,
        Some(m) if m == "railed" => LeadOffMode::Railed,
        Some(m) if m == "noise" => LeadOffMode::Noise,
        Some(m) => return Err(format!("lead-off mode {m:?} must be flat, railed or noise")),
    };
    Ok(LeadOffStretch {
        start_s,
        duration_s,
        mode,
    })
}

impl SimArgs {
    /// The simulator configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        let defaults = SimConfig::default();
        let config = SimConfig {
            seed: self.scan.seed,
            scan: self.scan.script()?,
            width: self.width,
            height: self.height,
            format: self.format.into(),
            fps: self.fps,
            ecg_fs_hz: self.ecg_hz,
            base_bpm: self.bpm,
            min_bpm: (self.bpm * 0.7).max(40.0),
            max_bpm: (self.bpm * 1.4).min(180.0),
            ectopic_prob: self.ectopic,
            mains_hz: self.mains_hz,
            baseline_wander_mv: defaults.baseline_wander_mv * self.noise,
            mains_mv: defaults.mains_mv * self.noise,
            emg_mv: defaults.emg_mv * self.noise,
            lead_off: self.lead_off.clone(),
            ..defaults
        };
        config.validate()?;
        Ok(config)
    }
}

/// `echoview demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The scan to simulate.
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Keep the simulated session here [default: a file in the temporary directory].
    #[arg(long, value_name = "FILE.mcap")]
    pub out: Option<PathBuf>,
    /// The model and engine.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `echoview replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Session files (MCAP) or DICOM cine exports to replay, in order. DICOM files are told
    /// by content (Part 10 `DICM` marker, or a bare dataset), whatever their name.
    #[arg(required = true, value_name = "SESSION")]
    pub sessions: Vec<PathBuf>,
    /// The model and engine.
    #[command(flatten)]
    pub model: ModelArgs,
    /// How beats are cut: from the ECG, from the image's motion, or ECG when the session has
    /// one and image otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub gating: crate::imagefeed::GatingMode,
}

/// `echoview clips`
#[derive(Debug, Args)]
pub struct ClipsArgs {
    /// Session files (MCAP) or DICOM cine exports to cut.
    #[arg(required = true, value_name = "SESSION")]
    pub sessions: Vec<PathBuf>,
    /// Output folder: NAME.npy and NAME.json per session NAME.mcap or export NAME.dcm.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Model input size in pixels (square), as the model to train will have it.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Frames per heartbeat (T), as the model to train will have it.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Label every beat with this view instead of the session's truth (a recording known to
    /// show one view).
    #[arg(long, value_name = "VIEW")]
    pub label: Option<crate::views::View>,
    /// How beats are cut: from the ECG, from the image's motion, or ECG when the session has
    /// one and image otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub gating: crate::imagefeed::GatingMode,
}

/// `echoview ecg detect`
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Sampling rate of the file in Hz.
    #[arg(long, value_name = "HZ")]
    pub fs: f64,
    /// File format: `i16` (little-endian int16) or `csv` (one value per line).
    #[arg(long, value_parser = parse_sample_format)]
    pub format: SampleFormat,
    /// The ECG file.
    pub file: PathBuf,
}

fn parse_sample_format(name: &str) -> Result<SampleFormat, String> {
    SampleFormat::from_name(name).ok_or_else(|| format!("{name:?} is not a format; use i16 or csv"))
}

/// `echoview model check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The bundle folder.
    pub dir: PathBuf,
    /// Inference engine to run the self-test on (auto: TensorRT if it passes every check,
    /// else tract; tensorrt: fail with the reason instead of falling back).
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineKind,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo(&args),
        Command::Sim(args) => {
            let config = args.config()?;
            let mut emulator = args.ecg.open(config.ecg_fs_hz, &mut std::io::stderr())?;
            simulate(&config, args.out.as_deref(), emulator.as_mut())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let bundle = args.model.load_bundle()?;
            replay(&args.sessions, &bundle, args.model.engine, args.gating)
        }
        Command::Clips(args) => clips(&args),
        Command::Eval(args) => crate::eval::run(&args),
        Command::Batch(args) => crate::batch::run(&args),
        Command::Dicom(command) => crate::dicom::info::run(&command),
        Command::Run(args) => crate::daemon::cli::run(&args),
        Command::Watch(args) => crate::daemon::cli::watch(&args),
        Command::Doctor(args) => crate::doctor::command::run(&args),
        Command::Bench(args) => crate::bench::cli::run(&args),
        Command::Ecg(EcgCommand::Detect(args)) => {
            let samples = read_samples(&args.file, args.format)?;
            let peaks = detect_all(&samples, args.fs)
                .with_context(|| format!("detecting R-peaks in {}", args.file.display()))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for peak in peaks {
                writeln!(out, "{}", peak.index)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ecg(EcgCommand::Listen(args)) => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                // A second Ctrl-C ends at once, should the first not be honoured.
                signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
                    .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
                    .context("installing the Ctrl-C handler")?;
            }
            let mut out = std::io::stdout().lock();
            listen(
                &args,
                monotonic_now(),
                &mut out,
                &mut std::io::stderr(),
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Model(ModelCommand::Check(args)) => {
            let bundle = Bundle::load(&args.dir)
                .with_context(|| format!("loading model bundle {}", args.dir.display()))?;
            let mut engine = open_engine(&bundle, args.engine)?;
            let report = selftest::run(&bundle, engine.as_mut())?;
            println!("{} on {}: {report}", bundle.identity(), engine.name());
            Ok(ExitCode::SUCCESS)
        }
        Command::Model(ModelCommand::Install(args)) => crate::model_store::command::install(&args),
        Command::Model(ModelCommand::List(args)) => crate::model_store::command::list(&args),
        Command::Model(ModelCommand::Rollback(args)) => {
            crate::model_store::command::rollback(&args)
        }
    }
}

/// Writes the session `config` describes to `out` and streams its ECG through `emulator`,
/// in real time (each where given).
fn simulate(
    config: &SimConfig,
    out: Option<&Path>,
    mut emulator: Option<&mut Emulator>,
) -> anyhow::Result<()> {
    let simulator = Simulator::new(config.clone())?;
    let mut writer = match out {
        Some(out) => {
            let mut writer = SessionWriter::create(out)?;
            let metadata = BTreeMap::from([
                ("source".to_string(), "echoview sim".to_string()),
                ("sim.seed".to_string(), config.seed.to_string()),
                ("sim.config".to_string(), format!("{config:?}")),
            ]);
            writer.write_metadata(&metadata)?;
            Some(writer)
        }
        None => None,
    };
    let (mut frames, mut beats, mut last_ns) = (0u64, 0u64, 0u64);
    for event in simulator {
        if let (Some(emulator), SimEvent::Ecg(block)) = (emulator.as_deref_mut(), &event) {
            emulator.send(block)?;
        }
        let Some(writer) = writer.as_mut() else {
            continue;
        };
        match &event {
            SimEvent::Frame { frame, .. } => {
                frames += 1;
                last_ns = frame.t_ns;
            }
            SimEvent::RPeak { .. } => beats += 1,
            SimEvent::Ecg(_) => {}
        }
        crate::sim::record::write_event(writer, &event)?;
    }
    if let Some(emulator) = emulator {
        let s = emulator.stats();
        eprintln!(
            "sent {} ECG samples to {} ({} blocks dropped by the device)",
            s.samples,
            emulator.device().display(),
            s.dropped_blocks
        );
    }
    if let (Some(writer), Some(out)) = (writer, out) {
        writer.finish()?;
        eprintln!(
            "wrote {}: {:.1} s, {frames} frames of {}x{} {} at {} fps, {beats} heartbeats",
            out.display(),
            last_ns as f64 / 1e9,
            config.width,
            config.height,
            config.format.name(),
            config.fps,
        );
    }
    Ok(())
}

/// Opens the engine `kind` for `bundle`, saying on stderr why `auto` fell back to tract.
fn open_engine(bundle: &Bundle, kind: EngineKind) -> anyhow::Result<Box<dyn engine::Engine>> {
    let selected = engine::select(bundle, kind, &engine::TrtOptions::for_bundle(bundle))?;
    if let Some(reason) = &selected.fallback {
        eprintln!(
            "engine: tract (TensorRT not used, {}: {reason})",
            reason.code()
        );
    }
    Ok(selected.engine)
}

/// Replays `sessions` in order, printing beats on stdout and a summary per session on stderr.
/// Fails (after reporting every session) when any session could not be read to the end.
fn replay(
    sessions: &[PathBuf],
    bundle: &Bundle,
    kind: EngineKind,
    gating: crate::imagefeed::GatingMode,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut failed = 0;
    for path in sessions {
        let engine = open_engine(bundle, kind)?;
        let mut pipeline = Pipeline::new(bundle, engine);
        let name = path.display().to_string();
        let mut sink = JsonLinesSink::new(stdout.lock(), &name, &bundle.labels);
        let mut feed = crate::imagefeed::GatedFeed::new(gating, Default::default());
        let result = crate::imagefeed::replay_gated(path, &mut pipeline, &mut sink, &mut feed);
        eprintln!(
            "{}; {}",
            summary(path, bundle, pipeline.engine_name(), &pipeline.stats()),
            crate::imagefeed::describe(feed.stats())
        );
        if let Err(err) = result {
            if let crate::replay::ReplayError::Pipeline {
                source: crate::pipeline::PipelineError::Sink(io),
                ..
            } = &err
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("echoview: error: {err}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} sessions could not be replayed to the end",
            sessions.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Cuts training clips from every session, reporting and skipping the ones that fail.
fn clips(args: &ClipsArgs) -> anyhow::Result<ExitCode> {
    if !(8..=1024).contains(&args.size) || !(1..=64).contains(&args.frames) {
        bail!("--size must be 8..=1024 and --frames 1..=64");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output folder {}", args.out.display()))?;
    let options = ClipOptions {
        preprocess: PreprocessConfig {
            width: args.size,
            height: args.size,
            mean: 0.0,
            std: 1.0,
            crop: None,
        },
        frames_per_beat: args.frames,
        label: args.label,
        gating: args.gating,
    };
    let mut failed = 0;
    for session in &args.sessions {
        match cut_session(session, &args.out, &options) {
            Ok(s) => eprintln!(
                "{}: {} beats -> {} ({} skipped)",
                session.display(),
                s.beats,
                s.npy.display(),
                s.skipped
            ),
            Err(err) => {
                eprintln!("echoview: error: {err}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} sessions could not be cut to the end",
            args.sessions.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Simulates the demo scan into a session file, then replays it with the model.
fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    // Check the model before spending time on the simulation.
    let bundle = args.model.load_bundle()?;
    let config = SimConfig {
        seed: args.scan.seed,
        scan: args.scan.script()?,
        ..SimConfig::default()
    };
    config.validate()?;
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("echoview-demo-{}.mcap", std::process::id()))
    });
    simulate(&config, Some(&out), None)?;
    let code = replay(
        std::slice::from_ref(&out),
        &bundle,
        args.model.engine,
        crate::imagefeed::GatingMode::Auto,
    )?;
    if args.out.is_none() {
        // The temporary session has served its purpose; a failure to delete it is harmless.
        let _ = std::fs::remove_file(&out);
    } else {
        eprintln!(
            "session kept at {}; replay it with: echoview replay {}",
            out.display(),
            out.display()
        );
    }
    Ok(code)
}
