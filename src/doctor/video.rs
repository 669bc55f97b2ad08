//! The video checks: the capture device node is there and opens, and (with the `v4l`
//! feature) it streams the configured format at the configured rate.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use super::{Check, Status};
use crate::capture::{CaptureConfig, device_path};

/// `video.device` and `video.stream` for `config`, streaming for `seconds`.
pub(super) fn checks(config: &CaptureConfig, seconds: f64) -> Vec<Check> {
    let device = node(config);
    if device.status == Status::Fail {
        return vec![
            device,
            Check::skip("video.stream", "the device does not open"),
        ];
    }
    vec![device, stream(config, seconds)]
}

/// Whether the node exists, is a character device and opens for reading and writing (V4L2
/// streaming needs both).
fn node(config: &CaptureConfig) -> Check {
    const NAME: &str = "video.device";
    let path = device_path(&config.device);
    let shown = path.display().to_string();
    let fix_missing = "check the grabber's USB cable and power, then `ls -l /dev/v4l/by-id/`; \
                       the udev rule (board/jetson/README.md) names it /dev/echoview-video; or \
                       name the device with --video";
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Check::problem(
                NAME,
                Status::Fail,
                shown,
                format!("no such device: {} does not exist", path.display()),
                fix_missing,
            );
        }
        Err(e) => {
            return Check::problem(NAME, Status::Fail, shown, e.to_string(), fix_missing);
        }
    };
    if !meta.file_type().is_char_device() {
        return Check::problem(
            NAME,
            Status::Fail,
            shown,
            "exists but is not a device node",
            "name the capture device (a /dev/video* node or its /dev/v4l/by-id/ link)",
        );
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(_) => Check::ok(NAME, shown, "present, and opens for capture"),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Check::problem(
            NAME,
            Status::Fail,
            shown,
            format!("cannot open it: {e}"),
            "run doctor as root or in group video (the service runs in group video); the \
             udev rule sets the node's group",
        ),
        Err(e) => Check::problem(
            NAME,
            Status::Fail,
            shown,
            format!("cannot open it: {e}"),
            "another program may hold the grabber (`fuser -v` on the node); replug it",
        ),
    }
}

/// The stream check without V4L2 support: says so.
#[cfg(not(feature = "v4l"))]
fn stream(_config: &CaptureConfig, _seconds: f64) -> Check {
    Check::skip(
        "video.stream",
        "this build has no V4L2 capture (cargo feature v4l); the Jetson package is built with it",
    )
}

/// Streams for `seconds` and measures what comes.
#[cfg(feature = "v4l")]
fn stream(config: &CaptureConfig, seconds: f64) -> Check {
    use crate::capture::FrameSource;
    use crate::capture::v4l2::V4l2Source;
    use std::time::{Duration, Instant};

    const NAME: &str = "video.stream";
    let shown = config.device.clone();
    let mut source = match V4l2Source::open(config.clone(), Instant::now()) {
        Ok(source) => source,
        Err(e) => {
            return Check::problem(
                NAME,
                Status::Fail,
                shown,
                e.to_string(),
                "list what the device offers (`v4l2-ctl --list-formats-ext -d DEVICE`) and \
                 configure a format, size and rate it has (--video-format, --video-size, \
                 --video-fps)",
            );
        }
    };
    let start = Instant::now();
    let mut times = Vec::new();
    let mut last_error = None;
    while start.elapsed().as_secs_f64() < seconds {
        match source.poll_frame(Duration::from_millis(100)) {
            Ok(Some(frame)) => times.push(frame.t_ns),
            Ok(None) => {}
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    let status = source.status().clone();
    let mode = status
        .negotiated
        .as_ref()
        .map_or("nothing negotiated".to_string(), |n| n.granted.to_string());
    let rate = match (times.first(), times.last()) {
        (Some(first), Some(last)) if times.len() >= 2 && last > first => {
            (times.len() - 1) as f64 * 1e9 / (last - first) as f64
        }
        _ => 0.0,
    };
    judge_stream(
        &mode,
        times.len() as u64,
        rate,
        config.fps,
        status.dropped,
        last_error.or(status.last_error),
    )
}

/// The verdict on a stream that delivered `frames` in `mode` at `rate` fps when `fps` was
/// asked, with `dropped` frames skipped by the driver.
#[cfg_attr(not(feature = "v4l"), allow(dead_code))]
pub(super) fn judge_stream(
    mode: &str,
    frames: u64,
    rate: f64,
    fps: f64,
    dropped: u64,
    error: Option<String>,
) -> Check {
    const NAME: &str = "video.stream";
    let value =
        format!("{mode}, {frames} frames at {rate:.2} fps (asked {fps}), {dropped} dropped");
    if frames < 2 {
        let why = error.map_or(String::new(), |e| format!(": {e}"));
        return Check::problem(
            NAME,
            Status::Fail,
            value,
            format!("the device opens but delivers no frames{why}"),
            "check that the ultrasound cart's video output is on and cabled to the grabber's \
             input, and its resolution matches",
        );
    }
    let off = rate / fps - 1.0;
    if off.abs() > 0.1 {
        return Check::problem(
            NAME,
            Status::Fail,
            value,
            "frames arrive at a rate far from the configured one",
            "set the cart's video output and --video-fps to the same rate",
        );
    }
    if off.abs() > 0.02 || dropped > 0 {
        return Check::problem(
            NAME,
            Status::Warn,
            value,
            "frames arrive, but the rate is off or frames were dropped",
            "reduce CPU load (power profile to maximum) or the configured size",
        );
    }
    Check::ok(
        NAME,
        value,
        "streams the configured mode at the configured rate",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_verdicts() {
        assert_eq!(
            judge_stream("YUYV 1920x1080", 60, 29.97, 30.0, 0, None).status,
            Status::Ok
        );
        assert_eq!(
            judge_stream("YUYV 1920x1080", 60, 29.97, 30.0, 3, None).status,
            Status::Warn
        );
        assert_eq!(
            judge_stream("YUYV 1920x1080", 30, 15.0, 30.0, 0, None).status,
            Status::Fail
        );
        let none = judge_stream("MJPG 1920x1080", 0, 0.0, 30.0, 0, Some("no signal".into()));
        assert_eq!(none.status, Status::Fail);
        assert!(none.detail.contains("no signal"));
    }

    #[test]
    fn a_missing_device_fails_naming_it() {
        let c = checks(&CaptureConfig::new("/nonexistent/video9"), 0.1);
        assert_eq!(c[0].status, Status::Fail);
        assert!(
            c[0].detail.contains("no such device: /nonexistent/video9"),
            "{:?}",
            c[0]
        );
        assert_eq!(c[1].status, Status::Skip);
    }

    #[test]
    fn a_file_that_is_not_a_device_fails() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let c = checks(&CaptureConfig::new(&file.path().display().to_string()), 0.1);
        assert_eq!(c[0].status, Status::Fail);
        assert!(c[0].detail.contains("not a device node"));
    }
}
