//! `echoview doctor`: arguments, the order of the checks, and the two output forms.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::{Check, Report, Status, ecg, model, system, timed, video};
use crate::capture::CaptureConfig;
use crate::daemon::cli::RunArgs;
use crate::daemon::config::{Config, PlayEcg, SourceKind};
use crate::media::PixelFormat;
use crate::serial::command::{ListenArgs, ProtocolArg};

/// `echoview doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The daemon's settings, exactly as `echoview run` takes them.
    #[command(flatten)]
    pub run: RunArgs,
    /// Pixel format to ask the capture device for (YUYV, UYVY, NV12, GREY, RGB24, MJPEG)
    /// [default: the config's `video.format`]. The device itself is `--video`, as for `run`.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub video_format: Option<PixelFormat>,
    /// Frame size to ask for, WIDTHxHEIGHT [default: the config's].
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub video_size: Option<(u32, u32)>,
    /// Frame rate to ask for and to expect [default: the config's].
    #[arg(long, value_name = "FPS")]
    pub video_fps: Option<f64>,
    /// Seconds to stream video for the rate measurement.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub video_seconds: f64,
    /// Wire protocol of the ECG board (board/ecg-protocol.md) [default: the config's]. The
    /// port itself is `--ecg`, as for `run`.
    #[arg(long, value_enum)]
    pub ecg_protocol: Option<ProtocolArg>,
    /// The ECG board's sampling rate in Hz [default: the config's].
    #[arg(long, value_name = "HZ")]
    pub ecg_fs: Option<f64>,
    /// ECG line speed in baud [default: the config's].
    #[arg(long)]
    pub ecg_baud: Option<u32>,
    /// ECG lead: the column (ASCII) or channel (binary), from 0 [default: the config's].
    #[arg(long, value_name = "N")]
    pub ecg_lead: Option<usize>,
    /// ASCII ECG only: millivolts per unit of the numbers sent [default: the config's].
    #[arg(long, value_name = "MV")]
    pub ecg_scale: Option<f64>,
    /// Seconds to listen to the ECG for the rate and signal-quality checks.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub ecg_seconds: f64,
    /// Timed inferences per network for the latency check (the median is reported).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub latency_runs: usize,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_format(name: &str) -> Result<PixelFormat, String> {
    let upper = name.trim().to_ascii_uppercase();
    PixelFormat::from_name(name)
        .or_else(|| {
            let bytes: [u8; 4] = upper.as_bytes().try_into().ok()?;
            PixelFormat::from_fourcc(bytes)
        })
        .ok_or_else(|| {
            format!("{name:?} is not a format; use YUYV, UYVY, NV12, GREY, RGB24 or MJPEG")
        })
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not WIDTHxHEIGHT, such as 1920x1080");
    let (w, h) = text.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

impl DoctorArgs {
    /// The device to check: the configured grabber (`--video` sets it) when the source is
    /// live or not configured.
    fn video_device(&self, config: &Config) -> Option<String> {
        (self.run.video.is_some() || matches!(config.source.kind, None | Some(SourceKind::Live)))
            .then(|| config.video.device.clone())
    }

    /// The port to check: the configured board (`--ecg` sets it) when the ECG is live or no
    /// source is configured.
    fn ecg_port(&self, config: &Config) -> Option<PathBuf> {
        let serial = match config.source.kind {
            None | Some(SourceKind::Live) => true,
            Some(SourceKind::Play) => config.source.ecg == Some(PlayEcg::Serial),
            Some(SourceKind::Sim) => false,
        };
        (serial || self.run.ecg.is_some()).then(|| config.ecg.port.clone())
    }

    fn listen_args(&self, port: PathBuf, config: &Config) -> ListenArgs {
        let ecg = &config.ecg;
        let configured = if ecg.protocol.trim().eq_ignore_ascii_case("ascii") {
            ProtocolArg::Ascii
        } else {
            ProtocolArg::Binary
        };
        ListenArgs {
            port,
            protocol: self.ecg_protocol.unwrap_or(configured),
            fs: self.ecg_fs.unwrap_or(ecg.fs_hz),
            lead: self.ecg_lead.unwrap_or(ecg.lead),
            baud: self.ecg_baud.unwrap_or(ecg.baud),
            scale: self.ecg_scale.unwrap_or(ecg.mv_per_unit),
            video_lag_ms: ecg.video_lag_ms,
        }
    }

    fn capture_config(&self, device: &str, config: &Config) -> CaptureConfig {
        let video = &config.video;
        let (width, height) = self.video_size.unwrap_or((video.width, video.height));
        let configured_format = video.capture_config().ok().and_then(|c| c.format);
        CaptureConfig {
            format: self.video_format.or(configured_format),
            width,
            height,
            fps: self.video_fps.unwrap_or(video.fps),
            buffers: video.buffers,
            stall_timeout_ms: video.stall_timeout_ms,
            ..CaptureConfig::new(device)
        }
    }
}

/// Why a live check was not run for a configured session or simulator source.
fn not_live(config: &Config, what: &str, flag: &str) -> String {
    let source = match config.source.kind {
        Some(SourceKind::Play) => "a session file",
        Some(SourceKind::Sim) => "the simulator",
        Some(SourceKind::Live) | None => "nothing",
    };
    format!(
        "the configured source is {source}, not a live {what}; name one with --{flag} to check it"
    )
}

/// Runs every check and prints the report; fails (exit status 1) when a check fails.
pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let report = match args.run.settings() {
        Ok(config) => Report::new(checks(args, &config), ms(start)),
        Err(e) => Report::new(
            vec![Check::problem(
                "config",
                Status::Fail,
                args.run
                    .config
                    .as_ref()
                    .map_or(crate::daemon::config::DEFAULT_CONFIG.to_string(), |p| {
                        p.display().to_string()
                    }),
                format!("{e:#}"),
                "correct the file (systemd/echoview.toml documents every key) or the flag",
            )],
            ms(start),
        ),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Every check, in the module table's order. The ECG listens on its own thread meanwhile,
/// so the whole run takes about `--ecg-seconds`.
fn checks(args: &DoctorArgs, config: &Config) -> Vec<Check> {
    let origin = match &args.run.config {
        Some(p) => p.display().to_string(),
        None if std::path::Path::new(crate::daemon::config::DEFAULT_CONFIG).exists() => {
            crate::daemon::config::DEFAULT_CONFIG.to_string()
        }
        None => "built-in defaults".to_string(),
    };
    let mut out = vec![Check::ok("config", origin, "loads and validates")];
    std::thread::scope(|scope| {
        let ecg_thread = args.ecg_port(config).map(|port| {
            let listen = args.listen_args(port, config);
            let seconds = args.ecg_seconds;
            scope.spawn(move || timed(|| ecg::checks(&listen, seconds)))
        });
        out.extend(match args.video_device(config) {
            Some(device) => {
                let capture = args.capture_config(&device, config);
                timed(|| video::checks(&capture, args.video_seconds))
            }
            None => vec![
                Check::skip("video.device", not_live(config, "capture device", "video")),
                Check::skip("video.stream", not_live(config, "capture device", "video")),
            ],
        });
        let model_dir = config.model.dir.clone().unwrap_or_default();
        let engine = config
            .model
            .engine_kind()
            .unwrap_or(crate::engine::EngineKind::Tract);
        let model_checks = timed(|| model::checks(&model_dir, engine, args.latency_runs));
        let ecg_checks = match ecg_thread {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                vec![Check::problem(
                    "ecg.port",
                    Status::Fail,
                    "",
                    "the ECG check crashed",
                    "report this with the command line used",
                )]
            }),
            None => ["ecg.port", "ecg.rate", "ecg.quality"]
                .into_iter()
                .map(|name| Check::skip(name, not_live(config, "ECG board", "ecg")))
                .collect(),
        };
        out.extend(ecg_checks);
        out.extend(model_checks);
    });
    out.extend(timed(|| {
        vec![system::judge_socket(&system::socket_facts(&config.socket))]
    }));
    out.extend(timed(|| vec![system::disk(&config.record)]));
    out.extend(timed(|| vec![system::clock(Duration::from_millis(100))]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_formats_parse() {
        assert_eq!(parse_size("1920x1080"), Ok((1920, 1080)));
        assert!(parse_size("1920").is_err());
        assert_eq!(parse_format("yuyv"), Ok(PixelFormat::Yuyv));
        assert!(parse_format("H264").unwrap_err().contains("MJPEG"));
    }
}
