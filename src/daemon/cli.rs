//! The `echoview run` and `echoview watch` subcommands: arguments and top-level flow.
//!
//! Like the rest of the command line, a thin layer: settings from the config file with the
//! flags on top, then the library's [`Daemon`] (or [`crate::watch`]) does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::ModelArgs;
use crate::engine::EngineKind;

use super::Daemon;
use super::config::{Config, PlayEcg, SourceKind};
use super::log::{self, Level};
use super::notify::Notifier;

/// `echoview run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file [default: /etc/echoview/echoview.toml; built-in defaults if it is
    /// absent]. A file named here must exist.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Play this session file at its real pace as the video and ECG source.
    #[arg(long, value_name = "SESSION", conflicts_with = "sim")]
    pub play: Option<PathBuf>,
    /// With --play: start the file again when it ends.
    #[arg(long = "loop", requires = "play")]
    pub looped: bool,
    /// With --play: play this many session seconds per wall second [default: 1, the real
    /// pace]. For soak tests: hours of heartbeats in minutes. Not with --ecg.
    #[arg(long, value_name = "X", requires = "play")]
    pub speed: Option<f64>,
    /// Run the simulated cart in real time as the video and ECG source ([sim] in the config).
    #[arg(long)]
    pub sim: bool,
    /// Capture video from this V4L2 device (a path, or a name under /dev/v4l/by-id); the
    /// source becomes the live cart ([video] in the config).
    #[arg(long, value_name = "DEVICE", conflicts_with = "play")]
    pub video: Option<String>,
    /// Read the ECG board on this serial port ([ecg] in the config gives protocol and rate).
    /// With --play, the file then supplies only the video.
    #[arg(long, value_name = "PORT")]
    pub ecg: Option<PathBuf>,
    /// The label socket [default: /run/echoview/labels.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Model bundle folder [default: the config's, $ECHOVIEW_MODEL, the active installed
    /// model, else the demo model].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Inference engine [default: the config's, else auto: TensorRT when it passes every
    /// check, else tract].
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
    /// Record the live session into rotating MCAP files in this folder.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
}

impl RunArgs {
    /// The settings: the config file, then these flags on top, checked.
    pub fn settings(&self) -> anyhow::Result<Config> {
        let loaded = Config::load(self.config.as_deref())?;
        if let Some(warning) = &loaded.warning {
            log::log(Level::Warning, warning);
        }
        let mut config = loaded.config;
        if let Some(play) = &self.play {
            config.source.kind = Some(SourceKind::Play);
            config.source.play = Some(play.clone());
            config.source.looped = self.looped;
            if self.speed.is_some() {
                config.source.speed = self.speed;
            }
        }
        if self.sim {
            config.source.kind = Some(SourceKind::Sim);
        }
        if let Some(device) = &self.video {
            config.source.kind = Some(SourceKind::Live);
            config.video.device = device.clone();
        }
        if let Some(port) = &self.ecg {
            config.ecg.port = port.clone();
            // The simulator brings its own ECG; `doctor --sim --ecg PORT` still probes the
            // port, and `run` refuses the pair (see `run`).
            match config.source.kind {
                Some(SourceKind::Play) => config.source.ecg = Some(PlayEcg::Serial),
                Some(SourceKind::Sim) => {}
                _ => config.source.kind = Some(SourceKind::Live),
            }
        }
        if let Some(socket) = &self.socket {
            config.socket.path = socket.clone();
        }
        if let Some(engine) = self.engine {
            config.model.engine = engine.name().to_string();
        }
        if let Some(dir) = &self.record {
            config.record.dir = Some(dir.clone());
        }
        if self.model.is_some() || config.model.dir.is_none() {
            let engine = config
                .model
                .engine_kind()
                .map_err(|m| anyhow::anyhow!("model.engine: {m}"))?;
            let args = ModelArgs {
                model: self.model.clone().or(config.model.dir.clone()),
                engine,
            };
            config.model.dir = Some(args.model_dir());
        }
        let origin = match &loaded.path {
            Some(p) => format!("{} with the command line", p.display()),
            None => "command line".to_string(),
        };
        config.validate(&origin)?;
        Ok(config)
    }
}

/// Runs the daemon until SIGTERM or SIGINT (SIGHUP is logged and ignored); exits 0 after a
/// clean stop.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.sim && (args.video.is_some() || args.ecg.is_some()) {
        anyhow::bail!(
            "--sim simulates both video and ECG; drop --video/--ecg, or drop --sim to use the devices"
        );
    }
    let config = args.settings()?;
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        log::log(
            Level::Warning,
            format_args!("NOTIFY_SOCKET is unusable ({e}); not notifying systemd"),
        );
        Notifier::disabled()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Signals first, so a stop during start-up is a clean stop too.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        // SIGHUP's default action kills the process mid-write (a terminal closing, a careless
        // `kill -HUP` by habit): it is caught and answered in the log instead.
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let daemon = Daemon::from_config(config, notifier)?;
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => log::log(
                        Level::Notice,
                        "SIGHUP ignored: the configuration is read at start only; restart the \
                         service (systemctl restart echoview) to apply changes",
                    ),
                }
            }
        };
        let report = daemon.run(shutdown).await?;
        log::log(
            Level::Notice,
            format_args!("stopped after publishing {} beats", report.beats_published),
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `echoview watch`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The daemon's label socket.
    #[arg(long, value_name = "PATH", default_value = "/run/echoview/labels.sock")]
    pub socket: PathBuf,
    /// One plain line per message instead of a redrawn screen (the default when stdout is
    /// not a terminal).
    #[arg(long)]
    pub plain: bool,
}

/// Shows the live labels until interrupted, reconnecting when the daemon restarts.
pub fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let plain = args.plain || !std::io::stdout().is_terminal();
    crate::watch::watch(&args.socket, plain, std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}
