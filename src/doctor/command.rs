//! `echoview doctor`: arguments, the order of the checks, and the two output forms.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::{Check, Report, Status, ecg, model, system, timed, video};
use crate::capture::CaptureConfig;
use crate::daemon::cli::RunArgs;
use crate::daemon::config::{Config, SourceKind};
use crate::media::PixelFormat;
use crate::serial::command::{ListenArgs, ProtocolArg};

/// The capture device the Jetson install's udev rule creates (board/jetson/).
pub const DEFAULT_VIDEO: &str = "/dev/echoview-video";

/// The ECG serial port the Jetson install's udev rule creates (board/jetson/).
pub const DEFAULT_ECG: &str = "/dev/echoview-ecg";

/// `echoview doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The daemon's settings, exactly as `echoview run` takes them.
    #[command(flatten)]
    pub run: RunArgs,
    /// Capture device to check (a path, /dev/v4l/by-id/ name or videoN) [default: /dev/echoview-video,
    /// unless the configured source is a session file or the simulator].
    #[arg(long, value_name = "DEVICE")]
    pub video: Option<String>,
    /// Pixel format to ask the capture device for (YUYV, UYVY, NV12, GREY, RGB24, MJPEG)
    /// [default: the best it offers].
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub video_format: Option<PixelFormat>,
    /// Frame size to ask for, WIDTHxHEIGHT.
    #[arg(long, value_name = "WxH", default_value = "1920x1080", value_parser = parse_size)]
    pub video_size: (u32, u32),
    /// Frame rate to ask for and to expect.
    #[arg(long, value_name = "FPS", default_value_t = 30.0)]
    pub video_fps: f64,
    /// Seconds to stream video for the rate measurement.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub video_seconds: f64,
    /// ECG serial port to check [default: /dev/echoview-ecg, unless the configured source
    /// is a session file or the simulator].
    #[arg(long, value_name = "PORT")]
    pub ecg: Option<PathBuf>,
    /// Wire protocol of the ECG board (board/ecg-protocol.md).
    #[arg(long, value_enum, default_value = "binary")]
    pub ecg_protocol: ProtocolArg,
    /// The ECG board's sampling rate in Hz.
    #[arg(long, value_name = "HZ", default_value_t = 500.0)]
    pub ecg_fs: f64,
    /// ECG line speed in baud.
    #[arg(long, default_value_t = 115_200)]
    pub ecg_baud: u32,
    /// ECG lead: the column (ASCII) or channel (binary), from 0.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub ecg_lead: usize,
    /// ASCII ECG only: millivolts per unit of the numbers sent.
    #[arg(long, default_value_t = 1.0, value_name = "MV")]
    pub ecg_scale: f64,
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
    /// The device to check: the flag, or the stable name when the configured source is live.
    fn video_device(&self, config: &Config) -> Option<String> {
        self.video.clone().or_else(|| {
            config
                .source
                .kind
                .is_none()
                .then(|| DEFAULT_VIDEO.to_string())
        })
    }

    /// The port to check, on the same rule.
    fn ecg_port(&self, config: &Config) -> Option<PathBuf> {
        self.ecg.clone().or_else(|| {
            config
                .source
                .kind
                .is_none()
                .then(|| PathBuf::from(DEFAULT_ECG))
        })
    }

    fn listen_args(&self, port: PathBuf) -> ListenArgs {
        ListenArgs {
            port,
            protocol: self.ecg_protocol,
            fs: self.ecg_fs,
            lead: self.ecg_lead,
            baud: self.ecg_baud,
            scale: self.ecg_scale,
            video_lag_ms: 0.0,
        }
    }

    fn capture_config(&self, device: &str) -> CaptureConfig {
        CaptureConfig {
            format: self.video_format,
            width: self.video_size.0,
            height: self.video_size.1,
            fps: self.video_fps,
            ..CaptureConfig::new(device)
        }
    }
}

/// Why a live check was not run for a configured session or simulator source.
fn not_live(config: &Config, what: &str, flag: &str) -> String {
    let source = match config.source.kind {
        Some(SourceKind::Play) => "a session file",
        Some(SourceKind::Sim) => "the simulator",
        None => "nothing",
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
            let listen = args.listen_args(port);
            let seconds = args.ecg_seconds;
            scope.spawn(move || timed(|| ecg::checks(&listen, seconds)))
        });
        out.extend(match args.video_device(config) {
            Some(device) => {
                let capture = args.capture_config(&device);
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
