//! The daemon's settings: a TOML file (`/etc/echoview/echoview.toml` by default), then the
//! command-line flags on top.
//!
//! Every section and key is optional and has a built-in default; `systemd/echoview.toml`
//! documents them all. Unknown keys are refused with the file, line and key named, because a
//! misspelt key that silently keeps its default is how a cart ends up misconfigured.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;

use crate::capture::CaptureConfig;
use crate::ecg::QrsDetector;
use crate::engine::EngineKind;
use crate::media::PixelFormat;
use crate::serial::{AsciiConfig, BinaryConfig, EcgStream, Protocol, ReaderConfig, StreamConfig};
use crate::sim::{ScanScript, SimConfig};

use super::encode::EncodeMode;
use super::stability::StabilityConfig;

/// Where the config file is looked for when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/echoview/echoview.toml";

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's account: line, column, key and what was expected.
        message: String,
    },
    /// A value is out of range.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// The config file, or `command line`.
        origin: String,
        /// The key, as `section.key`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Everything the daemon can be told.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where video and ECG come from.
    pub source: SourceConfig,
    /// The video grabber, for `source.kind = "live"`.
    pub video: VideoSection,
    /// The ECG board, for `source.kind = "live"` (or next to a played file).
    pub ecg: EcgSection,
    /// The simulator, for `source.kind = "sim"`.
    pub sim: SimSection,
    /// The model bundle and engine.
    pub model: ModelSection,
    /// The label socket.
    pub socket: SocketConfig,
    /// The stable label's hysteresis.
    pub stability: StabilityConfig,
    /// Beat cutting when the ECG is unusable.
    pub gating: GatingSection,
    /// Session recording.
    pub record: RecordConfig,
    /// Queues and the watchdog.
    pub pipeline: PipelineSection,
}

/// The kinds of source the daemon can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The cart: video from the grabber in `[video]`, ECG from the board in `[ecg]`.
    Live,
    /// A session file played at its real pace (video, and ECG unless `source.ecg` says
    /// `serial`).
    Play,
    /// The simulated cart in real time (video and ECG).
    Sim,
}

/// `[source]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Which source; none configured is an error at start, so a cart never runs on a source
    /// nobody chose.
    pub kind: Option<SourceKind>,
    /// The session file, for `play`.
    pub play: Option<PathBuf>,
    /// Play the file again from the start when it ends (`play`).
    #[serde(rename = "loop")]
    pub looped: bool,
    /// With `play`: session seconds played per wall second (default 1, the real pace). Soak
    /// tests play faster to cover hours of heartbeats in minutes; a cart never needs it.
    pub speed: Option<f64>,
    /// With `play`: where the ECG comes from, the file's own (`session`, the default) or the
    /// board in `[ecg]` (`serial`), for bench tests of a board against recorded video.
    pub ecg: Option<PlayEcg>,
}

/// The fastest `source.speed`: beyond it the pacing is no longer the limit (the gating thread
/// and the input queue are), so a larger number would only hide that.
pub const MAX_PLAY_SPEED: f64 = 1000.0;

impl SourceConfig {
    /// Session seconds played per wall second: `speed`, else 1.
    pub fn play_speed(&self) -> f64 {
        self.speed.unwrap_or(1.0)
    }
}

/// Where a played session's ECG comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlayEcg {
    /// The ECG recorded in the file.
    Session,
    /// The serial board in `[ecg]`; the file supplies only video.
    Serial,
}

/// `[video]`: the grabber.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoSection {
    /// Device path, or a name under /dev/v4l/by-id; the Jetson package's udev rule makes
    /// `/dev/echoview-video`, which survives replugging.
    pub device: String,
    /// Pixel format (`YUYV`, `UYVY`, `NV12`, `GREY`, `RGB3`, `MJPG`), or `auto` for the best
    /// one offered at the size and rate.
    pub format: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second to ask for.
    pub fps: f64,
    /// Driver buffers.
    pub buffers: u32,
    /// A grabber that sends nothing for this long is reopened (some go silent when their
    /// input signal is lost instead of failing).
    pub stall_timeout_ms: u64,
}

impl Default for VideoSection {
    fn default() -> VideoSection {
        let capture = CaptureConfig::new(DEFAULT_VIDEO_DEVICE);
        VideoSection {
            device: capture.device,
            format: "auto".into(),
            width: capture.width,
            height: capture.height,
            fps: capture.fps,
            buffers: capture.buffers,
            stall_timeout_ms: capture.stall_timeout_ms,
        }
    }
}

/// The grabber's device node made by the Jetson package's udev rule.
pub const DEFAULT_VIDEO_DEVICE: &str = "/dev/echoview-video";
/// The ECG adapter's device node made by the Jetson package's udev rule.
pub const DEFAULT_ECG_PORT: &str = "/dev/echoview-ecg";

impl VideoSection {
    /// The capture configuration, checked.
    pub fn capture_config(&self) -> Result<CaptureConfig, String> {
        let format = match self.format.trim() {
            f if f.eq_ignore_ascii_case("auto") => None,
            f => Some(PixelFormat::from_name(f).ok_or_else(|| {
                format!(
                    "format {f:?} is not one of auto, YUYV, UYVY, NV12, GREY, RGB3, MJPG                      (`v4l2-ctl --list-formats-ext -d DEVICE` shows what the grabber offers)"
                )
            })?),
        };
        let config = CaptureConfig {
            device: self.device.clone(),
            format,
            width: self.width,
            height: self.height,
            fps: self.fps,
            buffers: self.buffers,
            stall_timeout_ms: self.stall_timeout_ms,
            ..CaptureConfig::new(&self.device)
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// `[ecg]`: the ECG board on its serial port (see board/ecg-protocol.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EcgSection {
    /// Serial device; the Jetson package's udev rule makes `/dev/echoview-ecg`.
    pub port: PathBuf,
    /// Wire protocol: `binary` (framed, with CRC) or `ascii` (one sample per line).
    pub protocol: String,
    /// The board's sampling rate in Hz (250 to 1000).
    pub fs_hz: f64,
    /// The lead: column (ascii) or channel (binary), from 0.
    pub lead: usize,
    /// Line speed in baud.
    pub baud: u32,
    /// ascii only: millivolts per unit of the numbers sent (0.001 for microvolts).
    pub mv_per_unit: f64,
    /// How much the cart's video lags this ECG, in ms, from the tap test.
    pub video_lag_ms: f64,
}

impl Default for EcgSection {
    fn default() -> EcgSection {
        EcgSection {
            port: PathBuf::from(DEFAULT_ECG_PORT),
            protocol: "binary".into(),
            fs_hz: 500.0,
            lead: 0,
            baud: 115_200,
            mv_per_unit: 1.0,
            video_lag_ms: 0.0,
        }
    }
}

impl EcgSection {
    /// The serial reader's configuration, checked.
    pub fn reader_config(&self) -> Result<ReaderConfig, String> {
        let protocol = match self.protocol.trim() {
            p if p.eq_ignore_ascii_case("binary") => {
                Protocol::Binary(BinaryConfig { lead: self.lead })
            }
            p if p.eq_ignore_ascii_case("ascii") => Protocol::Ascii(AsciiConfig {
                lead: self.lead,
                mv_per_unit: self.mv_per_unit,
            }),
            p => return Err(format!("protocol {p:?} is not \"binary\" or \"ascii\"")),
        };
        if !self.video_lag_ms.is_finite() {
            return Err(format!(
                "video_lag_ms {} is not a number",
                self.video_lag_ms
            ));
        }
        let mut stream = StreamConfig::new(protocol, self.fs_hz);
        // Clamped only to stay an integer; the stream refuses anything beyond a few seconds.
        stream.video_lag_ns = (self.video_lag_ms * 1e6).round().clamp(-1e15, 1e15) as i64;
        // The detector checks the rate it can work at, the stream the lead, scale and lag,
        // each with its own message.
        QrsDetector::new(self.fs_hz).map_err(|e| e.to_string())?;
        EcgStream::new(&stream).map_err(|e| e.to_string())?;
        let mut config = ReaderConfig::new(&self.port, stream);
        config.baud = self.baud;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// `[sim]`: the simulated scan.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSection {
    /// Seed of the first scan; each repetition adds one.
    pub seed: u64,
    /// Views to scan, `all` or a list such as `PLAX,A4C`.
    pub views: String,
    /// Heartbeats on each view.
    pub beats_per_view: u32,
    /// Mean heart rate.
    pub bpm: f64,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frame rate.
    pub fps: f64,
}

impl Default for SimSection {
    fn default() -> SimSection {
        SimSection {
            seed: 1,
            views: "all".into(),
            beats_per_view: 4,
            bpm: 70.0,
            width: 320,
            height: 240,
            fps: 30.0,
        }
    }
}

impl SimSection {
    /// The simulator configuration, checked.
    pub fn sim_config(&self) -> Result<SimConfig, String> {
        let scan = ScanScript::from_view_list(&self.views, self.beats_per_view)
            .map_err(|e| e.to_string())?;
        let config = SimConfig {
            seed: self.seed,
            scan,
            width: self.width,
            height: self.height,
            fps: self.fps,
            base_bpm: self.bpm,
            min_bpm: (self.bpm * 0.7).max(40.0),
            max_bpm: (self.bpm * 1.4).min(180.0),
            ..SimConfig::default()
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The bundle folder; unset means `$ECHOVIEW_MODEL`, then the active slot of the model
    /// store (`/var/lib/echoview/models/active`), then the installed demo bundle.
    pub dir: Option<PathBuf>,
    /// The inference engine: `auto` (TensorRT when it passes every check, else tract),
    /// `tensorrt` or `tract`.
    pub engine: String,
    /// The TensorRT encoder plan; unset means `encoder.plan` in the bundle folder.
    pub plan: Option<PathBuf>,
    /// With `engine = "auto"`, rebuild a missing or stale plan in the background (serving on
    /// tract meanwhile) and switch to TensorRT when it loads (`daemon::planswitch`).
    pub plan_rebuild: bool,
    /// The command that builds the plan: `board/build-engine.sh` (trtexec), as the package
    /// installs it.
    pub plan_builder: PathBuf,
}

/// Where the package installs `board/build-engine.sh`.
pub const DEFAULT_PLAN_BUILDER: &str = "/usr/share/echoview/board/build-engine.sh";

impl Default for ModelSection {
    fn default() -> ModelSection {
        ModelSection {
            dir: None,
            engine: EngineKind::Auto.name().into(),
            plan: None,
            plan_rebuild: true,
            plan_builder: PathBuf::from(DEFAULT_PLAN_BUILDER),
        }
    }
}

impl ModelSection {
    /// The engine named by `engine`.
    pub fn engine_kind(&self) -> Result<EngineKind, String> {
        EngineKind::from_str(&self.engine, true).map_err(|_| {
            let names: Vec<String> = EngineKind::value_variants()
                .iter()
                .map(|k| k.name().to_string())
                .collect();
            format!(
                "{:?} is not an engine; use one of: {}",
                self.engine,
                names.join(", ")
            )
        })
    }
}

/// `[socket]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// The socket file.
    pub path: PathBuf,
    /// Its permission bits, in octal.
    pub mode: String,
    /// The group that owns it, so viewers in that group may connect; unset keeps the
    /// daemon's group.
    pub group: Option<String>,
    /// Most clients at once; more are refused.
    pub max_clients: usize,
    /// Messages queued per client; a client that falls this far behind is disconnected.
    pub client_queue: usize,
    /// Bytes a client may send (the daemon reads nothing from clients); more disconnects it.
    pub max_client_bytes: usize,
}

impl Default for SocketConfig {
    fn default() -> SocketConfig {
        SocketConfig {
            path: PathBuf::from("/run/echoview/labels.sock"),
            mode: "0660".into(),
            group: None,
            max_clients: 16,
            client_queue: 32,
            max_client_bytes: 4096,
        }
    }
}

impl SocketConfig {
    /// `mode` as permission bits.
    pub fn mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.mode.trim(), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "{:?} is not octal permission bits such as \"0660\"",
                    self.mode
                )
            })
    }
}

/// `[gating]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatingSection {
    /// Seconds of video without an ECG-gated beat before time gating takes over.
    pub ecg_timeout_s: f64,
    /// Length of a time-gated beat, seconds.
    pub window_s: f64,
}

impl Default for GatingSection {
    fn default() -> GatingSection {
        GatingSection {
            ecg_timeout_s: 4.0,
            window_s: 1.0,
        }
    }
}

/// `[record]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Folder for the session files; unset means no recording.
    pub dir: Option<PathBuf>,
    /// Start a new file after this many minutes.
    pub rotate_minutes: f64,
    /// Start a new file once the current one reaches this many MB.
    pub rotate_mb: u64,
    /// Stop recording while the disk has less than this many MB free.
    pub min_free_mb: u64,
    /// Seconds between flushes; a crash loses at most this much (or one chunk).
    pub flush_s: f64,
}

impl Default for RecordConfig {
    fn default() -> RecordConfig {
        RecordConfig {
            dir: None,
            rotate_minutes: 10.0,
            rotate_mb: 1024,
            min_free_mb: 1024,
            flush_s: 1.0,
        }
    }
}

/// `[pipeline]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// Source items queued for the gating thread.
    pub input_queue: usize,
    /// Items queued for the recorder.
    pub record_queue: usize,
    /// A thread that has not made progress for this many seconds is wedged: the watchdog
    /// stops being fed and the status says `stalled`.
    pub stall_s: f64,
    /// Encode the frames the open beat will most likely pick while waiting for it to close
    /// (`daemon::lookahead`), and the frames it will pick once the QRS detector holds its
    /// closing R-peak (`daemon::speculate`); off only to measure what it saves.
    pub lookahead: bool,
    /// Which frames to encode ahead (with `lookahead` on): `auto` (every frame while the
    /// GPU keeps up, else the predicted phases), `phases` or `every-frame`
    /// (`daemon::encode`).
    pub encode: EncodeMode,
}

impl Default for PipelineSection {
    fn default() -> PipelineSection {
        PipelineSection {
            input_queue: 64,
            record_queue: 256,
            stall_s: 5.0,
            lookahead: true,
            encode: EncodeMode::Auto,
        }
    }
}

/// The result of loading: the settings, and a warning for the operator when the default
/// file was absent.
#[derive(Debug)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// The file they came from, if any.
    pub path: Option<PathBuf>,
    /// Something to log (the default file is missing: built-in defaults in use).
    pub warning: Option<String>,
}

impl Config {
    /// Loads `explicit`, which must exist, or else [`DEFAULT_CONFIG`], which may be absent
    /// (built-in defaults, with a warning).
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        // Refuses a file another user could write: it decides what the cart shows.
        match super::trust::read_config(&path) {
            Ok(text) => Ok(Loaded {
                config: Config::parse(&text, &path)?,
                path: Some(path),
                warning: None,
            }),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded {
                config: Config::default(),
                path: None,
                warning: Some(format!(
                    "no config file at {}; using built-in defaults (see systemd/echoview.toml)",
                    path.display()
                )),
            }),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and checks the text of the config file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Checks every range; `origin` names the file or `command line` in the error.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            message,
        };
        if self.source.kind == Some(SourceKind::Play) && self.source.play.is_none() {
            return Err(bad(
                "source.play",
                "source.kind = \"play\" needs the session file in source.play".into(),
            ));
        }
        let serial_ecg = match self.source.kind {
            Some(SourceKind::Live) => true,
            Some(SourceKind::Play) => self.source.ecg == Some(PlayEcg::Serial),
            _ => false,
        };
        if let Some(speed) = self.source.speed {
            if !(speed.is_finite() && speed > 0.0 && speed <= MAX_PLAY_SPEED) {
                return Err(bad(
                    "source.speed",
                    format!(
                        "{speed} is not a speed: give a number above 0 and at most \
                         {MAX_PLAY_SPEED}"
                    ),
                ));
            }
            if serial_ecg && speed != 1.0 {
                return Err(bad(
                    "source.speed",
                    format!(
                        "{speed} with a live ECG board: the board sends in real time, so the \
                         video must play at speed 1 (remove source.speed or --speed)"
                    ),
                ));
            }
        }
        if self.source.kind == Some(SourceKind::Live) {
            self.video.capture_config().map_err(|m| bad("video", m))?;
        }
        if serial_ecg {
            self.ecg.reader_config().map_err(|m| bad("ecg", m))?;
        }
        if self.source.kind == Some(SourceKind::Sim) {
            self.sim.sim_config().map_err(|m| bad("sim", m))?;
        }
        self.model
            .engine_kind()
            .map_err(|m| bad("model.engine", m))?;
        self.socket.mode_bits().map_err(|m| bad("socket.mode", m))?;
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(bad(key, "must be at least 1".into()))
            } else {
                Ok(())
            }
        };
        positive("socket.max_clients", self.socket.max_clients)?;
        positive("socket.client_queue", self.socket.client_queue)?;
        positive("pipeline.input_queue", self.pipeline.input_queue)?;
        positive("pipeline.record_queue", self.pipeline.record_queue)?;
        self.stability.validate().map_err(|m| bad("stability", m))?;
        let seconds = |key: &str, v: f64, min: f64, max: f64| {
            if v.is_finite() && (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(bad(
                    key,
                    format!("{v} must be between {min} and {max} seconds"),
                ))
            }
        };
        seconds("gating.ecg_timeout_s", self.gating.ecg_timeout_s, 1.0, 60.0)?;
        seconds("gating.window_s", self.gating.window_s, 0.3, 2.0)?;
        seconds(
            "record.rotate_minutes",
            self.record.rotate_minutes * 60.0,
            60.0,
            86_400.0,
        )?;
        seconds("record.flush_s", self.record.flush_s, 0.1, 60.0)?;
        seconds("pipeline.stall_s", self.pipeline.stall_s, 0.5, 600.0)?;
        if self.record.rotate_mb == 0 {
            return Err(bad("record.rotate_mb", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/echoview/test.toml"))
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket.path, Path::new("/run/echoview/labels.sock"));
        assert_eq!(c.socket.mode_bits().unwrap(), 0o660);
        assert_eq!(c.stability.agree_beats, 2);
        assert_eq!(c.model.engine_kind().unwrap(), EngineKind::Auto);
        assert_eq!(c.source.kind, None);
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
            [source]
            kind = "play"
            play = "/srv/a.mcap"
            loop = true
            [socket]
            path = "/tmp/x.sock"
            mode = "0600"
            group = "video"
            [stability]
            agree_beats = 3
            confident = 0.95
            [record]
            dir = "/var/lib/echoview"
            rotate_mb = 64
            "#,
        )
        .unwrap();
        assert_eq!(c.source.kind, Some(SourceKind::Play));
        assert!(c.source.looped);
        assert_eq!(c.socket.group.as_deref(), Some("video"));
        assert_eq!(c.socket.mode_bits().unwrap(), 0o600);
        assert_eq!(c.stability.agree_beats, 3);
        assert_eq!(c.stability.unknown_beats, 3, "unset keys keep defaults");
        assert_eq!(c.record.rotate_mb, 64);
    }

    #[test]
    fn unknown_keys_are_refused_with_file_and_key_named() {
        let err = parse("[socket]\npath = \"/tmp/x\"\ngroop = \"video\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/echoview/test.toml"), "{text}");
        assert!(text.contains("groop"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        let err = parse("[sockets]\n").unwrap_err().to_string();
        assert!(err.contains("sockets"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[socket]\nmode = \"rw\"", "socket.mode"),
            ("[model]\nengine = \"cuda\"", "model.engine"),
            ("[gating]\nwindow_s = 5.0", "gating.window_s"),
            ("[stability]\nagree_beats = 0", "agree_beats"),
            ("[source]\nkind = \"play\"", "source.play"),
            ("[source]\nkind = \"sim\"\n[sim]\nviews = \"XYZ\"", "sim"),
            ("[socket]\nclient_queue = 0", "socket.client_queue"),
            (
                "[source]\nkind = \"live\"\n[video]\nformat = \"H264\"",
                "video",
            ),
            ("[source]\nkind = \"live\"\n[video]\nfps = 0.0", "video"),
            (
                "[source]\nkind = \"live\"\n[ecg]\nprotocol = \"hl7\"",
                "ecg",
            ),
            ("[source]\nkind = \"live\"\n[ecg]\nfs_hz = 50.0", "ecg"),
            (
                "[source]\nkind = \"live\"\n[ecg]\nvideo_lag_ms = 9000.0",
                "ecg",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = parse("[source]\nkind = \"camera\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("camera") && err.contains("kind"), "{err}");
    }

    #[test]
    fn a_live_cart_parses_into_capture_and_serial_settings() {
        let c = parse(
            r#"
            [source]
            kind = "live"
            [video]
            device = "usb-grabber-video-index0"
            format = "mjpg"
            width = 1280
            height = 720
            [ecg]
            port = "/dev/ttyUSB0"
            protocol = "ascii"
            fs_hz = 250.0
            mv_per_unit = 0.001
            video_lag_ms = -35.0
            "#,
        )
        .unwrap();
        let capture = c.video.capture_config().unwrap();
        assert_eq!(capture.format, Some(PixelFormat::Mjpeg));
        assert_eq!((capture.width, capture.height), (1280, 720));
        let reader = c.ecg.reader_config().unwrap();
        assert_eq!(reader.port, Path::new("/dev/ttyUSB0"));
        assert_eq!(reader.stream.fs_hz, 250.0);
        assert_eq!(reader.stream.video_lag_ns, -35_000_000);
        assert_eq!(reader.stream.protocol.name(), "ascii");
        // Defaults name the udev rule's stable nodes.
        let d = Config::default();
        assert_eq!(d.video.device, DEFAULT_VIDEO_DEVICE);
        assert_eq!(d.ecg.port, Path::new(DEFAULT_ECG_PORT));
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Config::load(Some(&missing)).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("nope.toml"));
        let file = dir.path().join("echoview.toml");
        std::fs::write(&file, "[socket]\nmax_clients = 2\n").unwrap();
        let loaded = Config::load(Some(&file)).unwrap();
        assert_eq!(loaded.config.socket.max_clients, 2);
        assert!(loaded.warning.is_none());
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../systemd/echoview.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.socket.path, Path::new("/run/echoview/labels.sock"));
    }
}
