//! Live video capture: the [`FrameSource`] interface and, behind the `v4l` feature, the V4L2
//! grabber that implements it.
//!
//! A source hands out [`Frame`]s as they are captured, stamped on the session clock and
//! numbered so that a gap is a drop, and keeps a [`CaptureStatus`] saying what was negotiated
//! with the device, how many frames were dropped and whether the device is connected. When the
//! device is unplugged or fails, the source does not end: [`FrameSource::next_frame`] returns
//! [`CaptureError::Disconnected`] and, on the next calls, reopens the device on a backoff
//! schedule ([`reconnect`]), so the daemon keeps running and resumes by itself.
//!
//! The decisions are pure and tested without hardware: the choice of format, size and rate
//! ([`negotiate`]), the retry schedule ([`reconnect`]) and the frame numbering with drop counts
//! ([`sequence`]). The device layer (`v4l2`, feature `v4l`) only enumerates, asks and copies.
//!
//! # Running the hardware tests
//!
//! The tests that need a real grabber are ignored by default. A field engineer runs them on the
//! cart, with the grabber plugged in and a video signal on its input:
//!
//! ```text
//! apt-get install -y libclang-dev        # once: the v4l crate generates its bindings with it
//! ECHOVIEW_V4L2_DEVICE=/dev/v4l/by-id/usb-<grabber>-video-index0 \
//!     cargo test --release --features v4l -- --ignored v4l2
//! ```
//!
//! `ECHOVIEW_V4L2_DEVICE` names the device as the configuration would (a path, or a name under
//! `/dev/v4l/by-id/`). Optional: `ECHOVIEW_V4L2_FORMAT` (e.g. `MJPG`), `ECHOVIEW_V4L2_SIZE`
//! (e.g. `1920x1080`), `ECHOVIEW_V4L2_FPS` (e.g. `30`). The unplug test additionally needs
//! `ECHOVIEW_V4L2_REPLUG=1` and asks, on stderr, for the grabber to be unplugged and plugged
//! back in within 30 seconds. Each test prints the negotiated mode and the status it ends with.

pub mod negotiate;
pub mod reconnect;
pub mod sequence;
#[cfg(feature = "v4l")]
pub mod v4l2;

use std::path::PathBuf;
use std::time::Duration;

use crate::media::{Frame, PixelFormat};

pub use negotiate::{Interval, Mode, NegotiateError, Negotiated, Offer, Rates, Request};
pub use reconnect::Backoff;

/// Where the by-id links of V4L2 devices live: names there survive replugging and reboots,
/// unlike `/dev/videoN`, whose number depends on enumeration order.
pub const BY_ID_DIR: &str = "/dev/v4l/by-id";

/// How long [`FrameSource::next_frame`] waits per poll: short, so the blocking loop stays
/// cheap to interrupt when it is wrapped in a thread that checks a stop flag.
pub const POLL_SLICE: Duration = Duration::from_millis(250);

/// A source of captured frames.
pub trait FrameSource {
    /// Waits at most about `max_wait` for the next frame: `Ok(None)` when none came in that
    /// time (or a received buffer was discarded; see [`CaptureStatus::discarded`]). For callers
    /// that must stay responsive, such as a daemon thread with a watchdog.
    ///
    /// A [`CaptureError::Disconnected`] is transient: the source reopens the device by itself
    /// on later calls, so the caller logs it and calls again. Other errors need a person (the
    /// configuration or the device is wrong), but calling again is still safe.
    fn poll_frame(&mut self, max_wait: Duration) -> Result<Option<Frame>, CaptureError>;

    /// Blocks until the next frame is captured and returns it; errors as for
    /// [`FrameSource::poll_frame`].
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        loop {
            if let Some(frame) = self.poll_frame(POLL_SLICE)? {
                return Ok(frame);
            }
        }
    }

    /// What was negotiated, the counters, and whether the device is connected.
    fn status(&self) -> &CaptureStatus;
}

/// Why no frame came.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The device could not be opened or stopped delivering; the source retries by itself.
    #[error(
        "capture device {device}: {reason}; retrying in {retry_in_ms} ms (failed attempts so \
         far: {failed_attempts})"
    )]
    Disconnected {
        /// The device as configured.
        device: String,
        /// What failed, as the operating system or the driver said it.
        reason: String,
        /// Time until the next attempt.
        retry_in_ms: u64,
        /// Attempts that failed since the device was last streaming.
        failed_attempts: u32,
    },
    /// The device offers nothing that matches the configuration, or ignored it.
    #[error("capture device {device}: {source}")]
    Negotiation {
        /// The device as configured.
        device: String,
        /// What does not match.
        source: NegotiateError,
    },
    /// The capture configuration is invalid.
    #[error("capture configuration: {0}")]
    Config(String),
}

impl CaptureError {
    /// Whether the source recovers by itself (the device may come back).
    pub fn is_transient(&self) -> bool {
        matches!(self, CaptureError::Disconnected { .. })
    }
}

/// How to capture: which device, and the mode to ask it for.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureConfig {
    /// The device: a path (`/dev/video0`, `/dev/v4l/by-id/...`), or a name under
    /// [`BY_ID_DIR`]; see [`device_path`]. A by-id name is what a cart should be configured
    /// with, as it names the grabber rather than an enumeration slot.
    pub device: String,
    /// The pixel format, or `None` for the best one the device offers at the size and rate.
    pub format: Option<PixelFormat>,
    /// Frame width in pixels; the image region (crop) is configured for this size.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second to ask for.
    pub fps: f64,
    /// Driver buffers to stream with: enough to ride out a late reader without drops, few
    /// enough to keep latency down.
    pub buffers: u32,
    /// A stream that delivers no usable frame for this long (counted from opening, or from
    /// the last frame) is treated as lost and reopened; some grabbers stop sending when their
    /// input signal goes away instead of failing.
    pub stall_timeout_ms: u64,
    /// Retry spacing after a failure.
    pub backoff: Backoff,
}

impl CaptureConfig {
    /// A configuration for `device` at 1920x1080, 30 fps, any format, 4 buffers, a 2 s stall
    /// timeout and the default backoff.
    pub fn new(device: &str) -> CaptureConfig {
        CaptureConfig {
            device: device.to_string(),
            format: None,
            width: 1920,
            height: 1080,
            fps: 30.0,
            buffers: 4,
            stall_timeout_ms: 2_000,
            backoff: Backoff::default(),
        }
    }

    /// Checks every setting against what capture can work with.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let bad = |what: String| Err(CaptureError::Config(what));
        if self.device.trim().is_empty() {
            return bad(
                "no capture device is configured; set the device path or by-id name".into(),
            );
        }
        if !(1..=8192).contains(&self.width) || !(1..=8192).contains(&self.height) {
            return bad(format!(
                "size {}x{} is outside 1..=8192 pixels per side",
                self.width, self.height
            ));
        }
        if !(self.fps.is_finite() && (1.0..=240.0).contains(&self.fps)) {
            return bad(format!("rate {} fps is outside 1..=240", self.fps));
        }
        if !(2..=32).contains(&self.buffers) {
            return bad(format!(
                "{} buffers is outside 2..=32 (streaming needs one being filled while one is read)",
                self.buffers
            ));
        }
        if !(100..=60_000).contains(&self.stall_timeout_ms) {
            return bad(format!(
                "stall timeout {} ms is outside 100..=60000",
                self.stall_timeout_ms
            ));
        }
        let b = self.backoff;
        if b.initial_ms == 0 || b.max_ms < b.initial_ms || b.max_ms > 60_000 {
            return bad(format!(
                "backoff {} ms to {} ms must start above 0 and end between the start and 60000",
                b.initial_ms, b.max_ms
            ));
        }
        Ok(())
    }

    /// The mode request the configuration makes.
    pub fn request(&self) -> Request {
        Request {
            format: self.format,
            width: self.width,
            height: self.height,
            fps: self.fps,
        }
    }
}

/// Where a capture source stands, for the service log and the operator's screen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CaptureStatus {
    /// The device as configured.
    pub device: String,
    /// The device node last opened, after resolving the configured name.
    pub path: Option<PathBuf>,
    /// The driver and card names of the last opened device, to tell grabbers apart in logs.
    pub card: Option<String>,
    /// Whether the device is open and streaming now.
    pub connected: bool,
    /// The mode asked for and granted on the last connection.
    pub negotiated: Option<Negotiated>,
    /// Frames delivered.
    pub frames: u64,
    /// Frames the driver skipped (gaps in its sequence numbers): the host did not keep up.
    /// Discarded frames are not counted here, but their numbers are skipped all the same.
    pub dropped: u64,
    /// Frames estimated lost while the device was being reconnected.
    pub lost_reconnecting: u64,
    /// Frames received but not delivered: flagged as damaged by the driver, empty, shorter
    /// than an image, JPEG frames whose headers do not parse or declare another size, or
    /// frames stamped before the session started or before the previous frame.
    pub discarded: u64,
    /// Times the device came back after being lost.
    pub reconnects: u64,
    /// Failed attempts to open the device since it last streamed.
    pub failed_attempts: u32,
    /// The most recent failure, as reported; kept after recovery for the log.
    pub last_error: Option<String>,
    /// Session-clock time of the last delivered frame.
    pub last_frame_ns: Option<u64>,
}

/// The device node a configured name stands for: a name with a `/` is a path as given;
/// `videoN` is `/dev/videoN`; any other name is a link in [`BY_ID_DIR`]. Resolved again on
/// every reconnection, because a replugged grabber's by-id link then points at a new node.
pub fn device_path(name: &str) -> PathBuf {
    let name = name.trim();
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let is_node = name
        .strip_prefix("video")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if is_node {
        PathBuf::from("/dev").join(name)
    } else {
        PathBuf::from(BY_ID_DIR).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_resolve_to_nodes() {
        assert_eq!(device_path("/dev/video2"), PathBuf::from("/dev/video2"));
        assert_eq!(device_path(" video0 "), PathBuf::from("/dev/video0"));
        assert_eq!(
            device_path("usb-MACROSILICON_USB_Video-video-index0"),
            PathBuf::from("/dev/v4l/by-id/usb-MACROSILICON_USB_Video-video-index0")
        );
        assert_eq!(
            device_path("videograbber"),
            PathBuf::from("/dev/v4l/by-id/videograbber")
        );
        assert_eq!(
            device_path("./dev/fake"),
            PathBuf::from("./dev/fake"),
            "relative paths too"
        );
    }

    #[test]
    fn config_defaults_validate_and_limits_are_named() {
        let ok = CaptureConfig::new("video0");
        assert!(ok.validate().is_ok());
        let cases = [
            (CaptureConfig::new(" "), "no capture device"),
            (
                CaptureConfig {
                    width: 0,
                    ..ok.clone()
                },
                "size 0x1080",
            ),
            (
                CaptureConfig {
                    fps: 0.0,
                    ..ok.clone()
                },
                "rate 0 fps",
            ),
            (
                CaptureConfig {
                    fps: f64::NAN,
                    ..ok.clone()
                },
                "rate NaN",
            ),
            (
                CaptureConfig {
                    buffers: 1,
                    ..ok.clone()
                },
                "1 buffers",
            ),
            (
                CaptureConfig {
                    stall_timeout_ms: 10,
                    ..ok.clone()
                },
                "stall timeout 10 ms",
            ),
            (
                CaptureConfig {
                    backoff: Backoff {
                        initial_ms: 0,
                        max_ms: 10,
                    },
                    ..ok.clone()
                },
                "backoff 0 ms",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err();
            assert!(!err.is_transient());
            assert!(err.to_string().contains(expected), "{err}");
        }
        assert_eq!(ok.request().fps, 30.0);
    }
}
