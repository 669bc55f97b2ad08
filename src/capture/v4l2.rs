//! The V4L2 grabber: a [`FrameSource`] over a video capture device (feature `v4l`).
//!
//! Opening resolves the configured name ([`device_path`]), checks the node streams video,
//! enumerates what it offers, chooses a mode ([`negotiate::choose`]), asks the driver for it and
//! records what the driver granted ([`Negotiated`]). Frames stream through memory-mapped driver
//! buffers; each is copied out (so the buffer goes straight back to the driver), stamped with
//! the kernel's capture time, numbered from the driver's sequence numbers ([`Sequencer`]) and,
//! for Motion-JPEG, completed with the standard Huffman tables ([`crate::jpeg`]) so that what
//! is recorded is a plain JPEG.
//!
//! Times: the kernel stamps buffers on `CLOCK_MONOTONIC`, which is also the clock of
//! [`Instant`] on Linux. The source is given the [`Instant`] at which the session clock reads
//! zero, and every other source of the session (the ECG) stamps with `origin.elapsed()`, so
//! frames and ECG share one clock. Drivers that do not stamp on the monotonic clock are
//! stamped when the buffer is dequeued instead.
//!
//! Failures never end the source: an open that fails, an I/O error, an unplugged device, or a
//! stream that stalls closes the device and schedules a reopen ([`Reconnect`]); the status says
//! what happened. The `v4l` crate (0.14) panics in a few places on unexpected driver replies
//! and on some close errors; those calls are fenced with `catch_unwind`, so such a panic
//! becomes a failed attempt (its message still reaches stderr through the panic hook) rather
//! than the end of the daemon.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapabilityFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC, Fraction};

use super::negotiate::{self, Interval, Mode, NegotiateError, Negotiated, Offer, Rates, Request};
use super::reconnect::{Link as LinkState, Reconnect};
use super::sequence::Sequencer;
use super::{CaptureConfig, CaptureError, CaptureStatus, FrameSource, device_path};
use crate::jpeg;
use crate::media::{Frame, PixelFormat};

/// Reads `CLOCK_MONOTONIC`, the clock V4L2 drivers stamp buffers with, in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through a pointer to a live local.
    // CLOCK_MONOTONIC exists on every Linux kernel, so it cannot fail with these arguments.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Why an attempt to open the device failed.
enum OpenFailure {
    /// Worth retrying: the device is absent, busy, or failed an ioctl.
    Transient(String),
    /// The device does not offer what is configured; retried, but reported as such.
    Negotiation(NegotiateError),
}

impl From<NegotiateError> for OpenFailure {
    fn from(e: NegotiateError) -> OpenFailure {
        OpenFailure::Negotiation(e)
    }
}

/// Runs a call into the `v4l` crate, turning an I/O error or a panic into a transient failure
/// that names the operation.
fn guarded<T>(what: &str, call: impl FnOnce() -> io::Result<T>) -> Result<T, OpenFailure> {
    match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpenFailure::Transient(format!("{what} failed: {e}"))),
        Err(_) => Err(OpenFailure::Transient(format!(
            "{what}: the driver replied with values the v4l crate cannot represent"
        ))),
    }
}

/// What a device is and what it offers; for setting up a cart.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// The node opened.
    pub path: PathBuf,
    /// Driver name (`uvcvideo`, ...).
    pub driver: String,
    /// Card name, as the device reports it.
    pub card: String,
    /// Bus location (`usb-0000:00:14.0-2`, ...), which tells two identical grabbers apart.
    pub bus: String,
    /// Every format, size and rate echoview can use.
    pub offers: Vec<Offer>,
    /// Formats the device offers that echoview does not read, as `FOURCC (description)`.
    pub unusable: Vec<String>,
}

/// An open device: its stream and what was negotiated.
struct Link {
    /// The mmap stream; owns the buffers and (through its handle) the file descriptor.
    stream: Stream<'static>,
    /// The mode in use.
    negotiated: Negotiated,
    /// The granted frame period, for numbering frames across restarts.
    period_ns: Option<u64>,
    /// Monotonic time of opening or of the last delivered frame, for stall detection.
    progress_ns: u64,
}

/// Frames from a V4L2 capture device; see the module documentation.
pub struct V4l2Source {
    /// What to open and ask for.
    config: CaptureConfig,
    /// `CLOCK_MONOTONIC` reading at session time zero.
    origin_ns: u64,
    /// The open device, if any.
    link: Option<Link>,
    /// When to try again after failures.
    reconnect: Reconnect,
    /// Frame numbers and drop counts.
    sequencer: Sequencer,
    /// What callers see.
    status: CaptureStatus,
}

impl V4l2Source {
    /// A source for `config` whose frames are stamped on the session clock that reads zero at
    /// `origin`, and opens the device.
    ///
    /// A device that is absent or fails to open is not an error here (it may be plugged in
    /// later): the status says why and [`FrameSource::poll_frame`] keeps trying. An invalid
    /// configuration, or a device that offers nothing matching it, is an error.
    pub fn open(config: CaptureConfig, origin: Instant) -> Result<V4l2Source, CaptureError> {
        config.validate()?;
        let elapsed = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let now = monotonic_ns();
        let mut source = V4l2Source {
            origin_ns: now.saturating_sub(elapsed),
            link: None,
            reconnect: Reconnect::new(config.backoff, now),
            sequencer: Sequencer::new(),
            status: CaptureStatus {
                device: config.device.clone(),
                ..CaptureStatus::default()
            },
            config,
        };
        match source.try_open() {
            Err(e @ (CaptureError::Negotiation { .. } | CaptureError::Config(_))) => Err(e),
            Ok(()) | Err(CaptureError::Disconnected { .. }) => Ok(source),
        }
    }

    /// Opens `device` (a path or by-id name) and lists what it offers, without streaming.
    pub fn probe(device: &str) -> Result<DeviceInfo, CaptureError> {
        let path = device_path(device);
        let request = Request {
            format: None,
            width: 1920,
            height: 1080,
            fps: 30.0,
        };
        let probed = panic::catch_unwind(AssertUnwindSafe(|| {
            let dev = open_node(&path)?;
            describe(&dev, &path, &request)
        }));
        let disconnected = |reason: String| CaptureError::Disconnected {
            device: device.to_string(),
            reason,
            retry_in_ms: 0,
            failed_attempts: 1,
        };
        match probed {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(OpenFailure::Transient(reason))) => Err(disconnected(reason)),
            Ok(Err(OpenFailure::Negotiation(source))) => Err(CaptureError::Negotiation {
                device: device.to_string(),
                source,
            }),
            Err(_) => Err(disconnected(
                "the driver replied with values the v4l crate cannot represent".to_string(),
            )),
        }
    }

    /// Opens the device if it is closed; on failure schedules the next attempt.
    fn try_open(&mut self) -> Result<(), CaptureError> {
        if self.link.is_some() {
            return Ok(());
        }
        let now = monotonic_ns();
        let path = device_path(&self.config.device);
        self.status.path = Some(path.clone());
        match open_link(&self.config, &path) {
            Ok((link, card)) => {
                self.reconnect.connected(now);
                self.sequencer.stream_started();
                self.status.connected = true;
                self.status.card = Some(card);
                self.status.negotiated = Some(link.negotiated.clone());
                self.status.failed_attempts = 0;
                self.status.reconnects = self.reconnect.reconnects();
                self.link = Some(Link {
                    progress_ns: now,
                    ..link
                });
                Ok(())
            }
            Err(OpenFailure::Transient(reason)) => {
                self.reconnect.attempt_failed(now);
                Err(self.disconnected(reason, now))
            }
            Err(OpenFailure::Negotiation(source)) => {
                self.reconnect.attempt_failed(now);
                let err = CaptureError::Negotiation {
                    device: self.config.device.clone(),
                    source,
                };
                self.note_down(err.to_string());
                Err(err)
            }
        }
    }

    /// Closes the device after a failure and schedules the reopening.
    fn lose(&mut self, reason: String) -> CaptureError {
        let mut reason = reason;
        if let Some(link) = self.link.take()
            && let Err(leak) = close(link)
        {
            reason = format!("{reason}; {leak}");
        }
        let now = monotonic_ns();
        self.reconnect.lost(now);
        self.disconnected(reason, now)
    }

    /// Updates the status for a closed device and returns the matching error.
    fn disconnected(&mut self, reason: String, now: u64) -> CaptureError {
        self.note_down(reason.clone());
        CaptureError::Disconnected {
            device: self.config.device.clone(),
            reason,
            retry_in_ms: self.reconnect.wait_ns(now) / 1_000_000,
            failed_attempts: self.status.failed_attempts,
        }
    }

    /// Records that the device is down and why.
    fn note_down(&mut self, reason: String) {
        self.status.connected = false;
        self.status.last_error = Some(reason);
        self.status.failed_attempts = match self.reconnect.link() {
            LinkState::Down {
                failed_attempts, ..
            } => failed_attempts,
            LinkState::Up { .. } => 0,
        };
    }

    /// Waits up to `max_wait` for the next buffer of the open device and turns it into a
    /// frame; `Ok(None)` when none came or it was discarded, `Err` with a reason when the
    /// device failed or stalled.
    fn dequeue(&mut self, max_wait: Duration) -> Result<Option<Frame>, String> {
        let stall_ns = self.config.stall_timeout_ms * 1_000_000;
        let Some(link) = self.link.as_mut() else {
            return Ok(None);
        };
        // Wait on the descriptor first: the v4l crate re-queues its last buffer before it
        // dequeues, so a dequeue that timed out inside it would queue that buffer twice.
        let now = monotonic_ns();
        let stall_left = (link.progress_ns + stall_ns).saturating_sub(now);
        let wait = max_wait.min(Duration::from_nanos(stall_left));
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        match link.stream.handle().poll(libc::POLLIN, ms) {
            Ok(0) => {
                if monotonic_ns() >= link.progress_ns + stall_ns {
                    return Err(format!(
                        "no usable frame for {} ms (is there a video signal on the grabber's \
                         input?)",
                        self.config.stall_timeout_ms
                    ));
                }
                return Ok(None);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(format!("waiting for a frame failed: {e}")),
        }
        let taken = panic::catch_unwind(AssertUnwindSafe(|| {
            link.stream.next().map(|(buf, meta)| {
                let used = (meta.bytesused as usize).min(buf.len());
                (buf[..used].to_vec(), *meta)
            })
        }));
        let (bytes, meta) = match taken {
            Ok(Ok(taken)) => taken,
            Ok(Err(e)) => return Err(format!("streaming failed: {e}")),
            Err(_) => return Err("the v4l crate panicked while dequeuing".to_string()),
        };
        let negotiated = &link.negotiated;
        let period_ns = link.period_ns;
        let stamped_by_kernel =
            meta.flags & BufferFlags::TIMESTAMP_MASK == BufferFlags::TIMESTAMP_MONOTONIC;
        let captured_ns = if stamped_by_kernel {
            let secs = u64::try_from(meta.timestamp.sec).unwrap_or(0);
            let micros = u64::try_from(meta.timestamp.usec).unwrap_or(0);
            secs.saturating_mul(1_000_000_000)
                .saturating_add(micros.saturating_mul(1_000))
        } else {
            monotonic_ns()
        };
        let format = negotiated.granted.format;
        let (width, height, stride) = (
            negotiated.granted.width,
            negotiated.granted.height,
            negotiated.stride,
        );
        let Some(t_ns) = captured_ns.checked_sub(self.origin_ns) else {
            // Captured before the session clock started: not part of the session.
            self.status.discarded += 1;
            return Ok(None);
        };
        if self.status.last_frame_ns.is_some_and(|last| t_ns < last) {
            self.status.discarded += 1;
            return Ok(None);
        }
        // Numbered before the checks below, so a damaged frame leaves a gap downstream (it is
        // missing) without counting as a drop as well.
        let seq = self.sequencer.frame(meta.sequence, t_ns, period_ns);
        if meta.flags.contains(BufferFlags::ERROR) || bytes.is_empty() {
            self.status.discarded += 1;
            return Ok(None);
        }
        let data = match format.image_len(stride, height) {
            Some(len) if (bytes.len() as u64) < len => {
                self.status.discarded += 1;
                self.status.last_error = Some(format!(
                    "discarded a frame of {} bytes, a {}x{} {} image needs {len}",
                    bytes.len(),
                    width,
                    height,
                    format.name()
                ));
                return Ok(None);
            }
            Some(_) => bytes,
            None => match complete_jpeg(&bytes, width, height) {
                Ok(jpeg) => jpeg,
                Err(reason) => {
                    self.status.discarded += 1;
                    self.status.last_error = Some(format!("discarded an MJPEG frame: {reason}"));
                    return Ok(None);
                }
            },
        };
        link.progress_ns = monotonic_ns();
        self.reconnect.frame_received();
        self.status.frames += 1;
        self.status.dropped = self.sequencer.dropped();
        self.status.lost_reconnecting = self.sequencer.estimated_lost();
        self.status.last_frame_ns = Some(t_ns);
        Ok(Some(Frame {
            seq,
            t_ns,
            width,
            height,
            stride,
            format,
            data,
        }))
    }
}

impl FrameSource for V4l2Source {
    fn poll_frame(&mut self, max_wait: Duration) -> Result<Option<Frame>, CaptureError> {
        if self.link.is_none() {
            let wait = Duration::from_nanos(self.reconnect.wait_ns(monotonic_ns()));
            if wait > max_wait {
                std::thread::sleep(max_wait);
                return Ok(None);
            }
            std::thread::sleep(wait);
            self.try_open()?;
        }
        match self.dequeue(max_wait) {
            Ok(frame) => Ok(frame),
            Err(reason) => Err(self.lose(reason)),
        }
    }

    fn status(&self) -> &CaptureStatus {
        &self.status
    }
}

/// Stops streaming and releases the buffers and the descriptor.
///
/// The v4l crate's destructors panic when stopping or releasing fails with anything but ENODEV
/// (device gone), and a second panic while the first unwinds would abort the daemon. So the
/// stream is stopped here first: if that fails for another reason the link is leaked instead
/// of dropped (one set of buffers and a descriptor, per such failure), and the returned text
/// says so for the status.
fn close(mut link: Link) -> Result<(), String> {
    let stopped = panic::catch_unwind(AssertUnwindSafe(|| {
        v4l::io::traits::Stream::stop(&mut link.stream)
    }));
    match stopped {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENODEV) => {}
        Ok(Err(e)) => {
            std::mem::forget(link);
            return Err(format!(
                "stopping the stream failed ({e}); its buffers were leaked"
            ));
        }
        Err(_) => {
            std::mem::forget(link);
            return Err("stopping the stream panicked; its buffers were leaked".to_string());
        }
    }
    // Stopping worked or the device is gone: the destructors stop again and unmap, which
    // cannot fail in a way they do not tolerate, but stay fenced all the same.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(link)));
    Ok(())
}

/// A Motion-JPEG frame made complete (standard Huffman tables inserted when missing), after
/// checking it declares the negotiated size.
fn complete_jpeg(bytes: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let complete = jpeg::with_standard_tables(bytes).map_err(|e| e.to_string())?;
    let info = jpeg::info(&complete).map_err(|e| e.to_string())?;
    if (info.width, info.height) != (width, height) {
        return Err(format!(
            "its image is {}x{}, the driver granted {width}x{height}",
            info.width, info.height
        ));
    }
    Ok(complete.into_owned())
}

/// Opens a node and checks that it streams video.
fn open_node(path: &std::path::Path) -> Result<Device, OpenFailure> {
    let dev = Device::with_path(path)
        .map_err(|e| OpenFailure::Transient(format!("cannot open {}: {e}", path.display())))?;
    let caps = guarded("VIDIOC_QUERYCAP", || dev.query_caps())?;
    let needed = CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING;
    if !caps.capabilities.contains(needed) {
        return Err(OpenFailure::Negotiation(NegotiateError::NotCaptureNode {
            path: path.display().to_string(),
            caps: format!("{:?}", caps.capabilities),
        }));
    }
    Ok(dev)
}

/// Identifies an open node and enumerates its offers; stepwise size ranges become one offer
/// at the size closest to `request`.
fn describe(
    dev: &Device,
    path: &std::path::Path,
    request: &Request,
) -> Result<DeviceInfo, OpenFailure> {
    let caps = guarded("VIDIOC_QUERYCAP", || dev.query_caps())?;
    let mut offers = Vec::new();
    let mut unusable = Vec::new();
    for desc in guarded("VIDIOC_ENUM_FMT", || dev.enum_formats())? {
        let Some(format) = PixelFormat::from_fourcc(desc.fourcc.repr) else {
            let code = String::from_utf8_lossy(&desc.fourcc.repr).into_owned();
            unusable.push(format!("{code} ({})", desc.description));
            continue;
        };
        let sizes = match dev.enum_framesizes(desc.fourcc) {
            Ok(sizes) => sizes.into_iter().map(|s| s.size).collect(),
            // Drivers that do not enumerate sizes take any size and adjust it in S_FMT.
            Err(_) => Vec::new(),
        };
        if sizes.is_empty() {
            offers.push(Offer {
                format,
                width: request.width,
                height: request.height,
                rates: rates(dev, desc.fourcc, request.width, request.height),
            });
        }
        for size in sizes {
            let (width, height) = match size {
                FrameSizeEnum::Discrete(d) => (d.width, d.height),
                FrameSizeEnum::Stepwise(s) => (
                    negotiate::nearest_step(request.width, s.min_width, s.max_width, s.step_width),
                    negotiate::nearest_step(
                        request.height,
                        s.min_height,
                        s.max_height,
                        s.step_height,
                    ),
                ),
            };
            offers.push(Offer {
                format,
                width,
                height,
                rates: rates(dev, desc.fourcc, width, height),
            });
        }
    }
    Ok(DeviceInfo {
        path: path.to_path_buf(),
        driver: caps.driver,
        card: caps.card,
        bus: caps.bus,
        offers,
        unusable,
    })
}

/// The frame rates a device offers at one format and size.
fn rates(dev: &Device, fourcc: FourCC, width: u32, height: u32) -> Rates {
    let interval = |f: Fraction| Interval {
        num: f.numerator,
        den: f.denominator,
    };
    let Ok(list) = dev.enum_frameintervals(fourcc, width, height) else {
        return Rates::Unknown;
    };
    let mut discrete = Vec::new();
    for item in list {
        match item.interval {
            FrameIntervalEnum::Discrete(f) => discrete.push(interval(f)),
            FrameIntervalEnum::Stepwise(s) => {
                return Rates::Range {
                    min: interval(s.min),
                    max: interval(s.max),
                };
            }
        }
    }
    if discrete.is_empty() {
        Rates::Unknown
    } else {
        Rates::Discrete(discrete)
    }
}

/// Opens the configured device, negotiates, and prepares the stream (streaming starts with the
/// first dequeue). Returns the link and the card's name.
fn open_link(
    config: &CaptureConfig,
    path: &std::path::Path,
) -> Result<(Link, String), OpenFailure> {
    let opened = panic::catch_unwind(AssertUnwindSafe(|| {
        let dev = open_node(path)?;
        let info = describe(&dev, path, &config.request())?;
        let asked = negotiate::choose(&config.request(), &info.offers).map_err(|e| match e {
            NegotiateError::NothingUsable { .. } if !info.unusable.is_empty() => {
                NegotiateError::NothingUsable {
                    offered: format!("; it offers {}", info.unusable.join(", ")),
                }
            }
            other => other,
        })?;
        let negotiated = set_mode(&dev, asked)?;
        let mut stream = guarded("VIDIOC_REQBUFS", || {
            Stream::with_buffers(&dev, Type::VideoCapture, config.buffers)
        })?;
        stream.set_timeout(Duration::from_millis(config.stall_timeout_ms));
        // Queue every buffer but the first and start streaming now, so that even the first
        // frame is waited for by polling, within the caller's time: on an active stream the
        // v4l crate's `next` queues buffer 0 itself before its first dequeue. A driver that
        // granted fewer buffers refuses the surplus indices, which ends the loop.
        for index in 1..config.buffers as usize {
            if CaptureStream::queue(&mut stream, index).is_err() {
                break;
            }
        }
        guarded("VIDIOC_STREAMON", || {
            v4l::io::traits::Stream::start(&mut stream)
        })?;
        let card = format!("{} ({}, {})", info.card, info.driver, info.bus);
        let period_ns = negotiated.granted.interval.and_then(Interval::period_ns);
        Ok((
            Link {
                stream,
                negotiated,
                period_ns,
                progress_ns: 0,
            },
            card,
        ))
    }));
    opened.unwrap_or_else(|_| {
        Err(OpenFailure::Transient(
            "the driver replied with values the v4l crate cannot represent".to_string(),
        ))
    })
}

/// Asks the driver for `asked` and reads back what it set.
fn set_mode(dev: &Device, asked: Mode) -> Result<Negotiated, OpenFailure> {
    let request = Format::new(
        asked.width,
        asked.height,
        FourCC::new(&asked.format.fourcc()),
    );
    let set = guarded("VIDIOC_S_FMT", || dev.set_format(&request))?;
    let Some(format) = PixelFormat::from_fourcc(set.fourcc.repr) else {
        return Err(NegotiateError::FormatRefused {
            asked: asked.format.name(),
            granted: String::from_utf8_lossy(&set.fourcc.repr).into_owned(),
        }
        .into());
    };
    // A driver without frame-rate control refuses S_PARM; the rate is then whatever the
    // source delivers, reported as unstated.
    let params = match asked.interval {
        Some(i) => dev
            .set_params(&Parameters::new(Fraction::new(i.num, i.den)))
            .or_else(|_| dev.params()),
        None => dev.params(),
    };
    let interval = params
        .ok()
        .map(|p| Interval {
            num: p.interval.numerator,
            den: p.interval.denominator,
        })
        .filter(|i| i.period_ns().is_some());
    let granted = Mode {
        format,
        width: set.width,
        height: set.height,
        interval,
    };
    Ok(Negotiated::new(asked, granted, set.stride, set.size)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Backoff;
    use crate::preprocess::{ImageRegion, PreprocessConfig, Preprocessor, Rect};

    /// The device under test, from the environment (see the `capture` module documentation).
    fn hardware_config() -> CaptureConfig {
        let Ok(device) = std::env::var("ECHOVIEW_V4L2_DEVICE") else {
            panic!(
                "set ECHOVIEW_V4L2_DEVICE to the grabber's node or by-id name to run the \
                 hardware tests (see the capture module documentation)"
            );
        };
        let mut config = CaptureConfig::new(&device);
        if let Ok(format) = std::env::var("ECHOVIEW_V4L2_FORMAT") {
            config.format = Some(
                PixelFormat::from_name(&format)
                    .unwrap_or_else(|| panic!("ECHOVIEW_V4L2_FORMAT={format} is not a format")),
            );
        }
        if let Ok(size) = std::env::var("ECHOVIEW_V4L2_SIZE") {
            let parsed = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
            let Some((w, h)) = parsed else {
                panic!("ECHOVIEW_V4L2_SIZE={size} is not WIDTHxHEIGHT");
            };
            (config.width, config.height) = (w, h);
        }
        if let Ok(fps) = std::env::var("ECHOVIEW_V4L2_FPS") {
            config.fps = fps
                .parse()
                .unwrap_or_else(|_| panic!("ECHOVIEW_V4L2_FPS={fps} is not a number"));
        }
        config
    }

    /// Takes `n` frames, allowing a few transient failures on the way.
    fn take(source: &mut V4l2Source, n: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut failures = 0;
        while frames.len() < n {
            match source.next_frame() {
                Ok(f) => frames.push(f),
                Err(e) if e.is_transient() && failures < 5 => {
                    failures += 1;
                    eprintln!("transient: {e}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        frames
    }

    #[test]
    fn v4l2_source_is_send() {
        fn send<T: Send>() {}
        send::<V4l2Source>();
    }

    #[test]
    fn an_absent_device_is_retried_not_fatal() {
        let dir = std::env::temp_dir().join("echoview-no-such-grabber");
        let mut config = CaptureConfig::new(&dir.join("video-index0").display().to_string());
        config.backoff = Backoff {
            initial_ms: 20,
            max_ms: 40,
        };
        let mut source = V4l2Source::open(config, Instant::now()).unwrap();
        let status = source.status().clone();
        assert!(!status.connected);
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot open")),
            "{status:?}"
        );
        // Polling waits out the backoff, tries again and reports the failure.
        let started = Instant::now();
        let err = loop {
            match source.poll_frame(Duration::from_millis(100)) {
                Ok(None) => {}
                Ok(Some(f)) => panic!("a frame from nowhere: {f:?}"),
                Err(e) => break e,
            }
        };
        assert!(err.is_transient(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(15));
        assert_eq!(source.status().failed_attempts, 2);
        let err = V4l2Source::probe("/dev/null").unwrap_err().to_string();
        assert!(err.contains("VIDIOC_QUERYCAP failed"), "{err}");
    }

    #[test]
    #[ignore = "needs a V4L2 grabber: see the capture module documentation"]
    fn v4l2_probe_lists_the_offers() {
        let config = hardware_config();
        let info = V4l2Source::probe(&config.device).unwrap();
        eprintln!(
            "{} {} {} at {}",
            info.card,
            info.driver,
            info.bus,
            info.path.display()
        );
        for offer in &info.offers {
            eprintln!("  {offer}");
        }
        eprintln!("  not usable: {:?}", info.unusable);
        assert!(
            !info.offers.is_empty(),
            "the grabber offers no usable format"
        );
    }

    #[test]
    #[ignore = "needs a V4L2 grabber: see the capture module documentation"]
    fn v4l2_captures_numbered_stamped_frames_that_preprocess() {
        let origin = Instant::now();
        let mut source = V4l2Source::open(hardware_config(), origin).unwrap();
        let frames = take(&mut source, 90);
        let status = source.status().clone();
        eprintln!("{status:#?}");
        let negotiated = status.negotiated.expect("negotiated once connected");
        eprintln!(
            "granted {} ({:?})",
            negotiated.granted,
            negotiated.differences()
        );
        for pair in frames.windows(2) {
            assert!(pair[1].seq > pair[0].seq, "frame numbers increase");
            assert!(pair[1].t_ns > pair[0].t_ns, "capture times increase");
        }
        let elapsed = u64::try_from(origin.elapsed().as_nanos()).unwrap();
        let last = frames.last().expect("90 frames");
        assert!(last.t_ns <= elapsed, "stamps are on the session clock");
        let span_s = (last.t_ns - frames[0].t_ns) as f64 / 1e9;
        let fps = (frames.len() - 1) as f64 / span_s;
        eprintln!("measured {fps:.2} fps");
        if let Some(i) = negotiated.granted.interval {
            assert!(fps > 0.5 * i.fps(), "{fps:.2} fps for a granted {i}");
        }
        let g = negotiated.granted;
        let mut pre = Preprocessor::new(PreprocessConfig {
            width: 288,
            height: 288,
            mean: 0.2,
            std: 0.25,
            crop: None,
        });
        let region = ImageRegion::unmasked(Rect {
            x: 0,
            y: 0,
            width: g.width,
            height: g.height,
        });
        let mut out = vec![0.0; pre.tensor_len()];
        for f in &frames {
            assert_eq!((f.format, f.width, f.height), (g.format, g.width, g.height));
            f.validate().unwrap();
            pre.prepare_frame(f, &region, &mut out).unwrap();
        }
    }

    #[test]
    #[ignore = "needs a V4L2 grabber and a person to unplug it: see the capture module docs"]
    fn v4l2_recovers_after_unplug() {
        if std::env::var("ECHOVIEW_V4L2_REPLUG").as_deref() != Ok("1") {
            panic!("set ECHOVIEW_V4L2_REPLUG=1 to run this test, then unplug and replug");
        }
        let mut source = V4l2Source::open(hardware_config(), Instant::now()).unwrap();
        let before = take(&mut source, 10);
        eprintln!("unplug the grabber now, then plug it back in (30 s)");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut saw_loss = false;
        let mut after = Vec::new();
        while Instant::now() < deadline && after.len() < 10 {
            match source.poll_frame(Duration::from_millis(250)) {
                Ok(Some(f)) if saw_loss => after.push(f),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    assert!(e.is_transient());
                    saw_loss = true;
                }
            }
        }
        let status = source.status();
        eprintln!("{status:#?}");
        assert!(saw_loss, "the unplug was not noticed");
        assert_eq!(after.len(), 10, "frames did not resume within 30 s");
        assert!(status.reconnects >= 1);
        let gap = after[0].seq - before.last().map_or(0, |f| f.seq);
        assert!(gap > 1, "the outage shows as a gap in frame numbers");
    }
}
