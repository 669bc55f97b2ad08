//! The cart's own devices as daemon sources: the ECG board on a serial port and the video
//! grabber on V4L2.
//!
//! Both stamp on one session clock, [`SessionClock`]: the monotonic clock, read as nanoseconds
//! since the daemon started. The serial reader stamps each read's arrival with it (and fits
//! the board's sample clock to those stamps, see `serial::clock`); the V4L2 source converts
//! the driver's monotonic capture timestamps onto it. A session file played as the video
//! source next to a live ECG is restamped onto it too (`source::PlaySpec`), so whatever the
//! mix, a frame and an ECG sample taken at the same moment carry the same time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::CaptureConfig;
use crate::serial::SerialError;
use crate::serial::reader::{Now, ReaderConfig, ReaderEvent, SerialReader};

use super::source::{
    MAX_BLOCK, OpenSource, Pulled, Source, SourceError, SourceItem, Stop, Streams,
};

/// The daemon's session clock: zero when the daemon started, monotonic, shared by every
/// source so their items line up.
#[derive(Debug, Clone, Copy)]
pub struct SessionClock {
    /// The instant the session clock reads zero.
    origin: Instant,
}

impl SessionClock {
    /// A clock that reads zero now.
    pub fn start() -> SessionClock {
        SessionClock {
            origin: Instant::now(),
        }
    }

    /// The instant at which the clock read zero.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The session time of `instant` (zero for instants before the origin).
    pub fn at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The clock as the serial reader takes it.
    pub fn as_now(&self) -> Now {
        let clock = *self;
        Arc::new(move || clock.at(Instant::now()))
    }
}

/// The ECG board on a serial port.
#[derive(Debug, Clone)]
pub struct SerialSpec {
    /// Port, protocol, rate and video lag.
    pub reader: ReaderConfig,
    /// The clock arrivals are stamped on.
    pub clock: SessionClock,
}

impl OpenSource for SerialSpec {
    fn name(&self) -> String {
        format!("ECG port {}", self.reader.port.display())
    }

    fn streams(&self) -> Streams {
        Streams {
            video: false,
            ecg: true,
        }
    }

    fn open(&self) -> Result<Box<dyn Source>, SourceError> {
        let reader = SerialReader::spawn(self.reader.clone(), self.clock.as_now()).map_err(
            |e: SerialError| SourceError::Open {
                source_name: self.name(),
                message: e.to_string(),
            },
        )?;
        Ok(Box::new(SerialSource {
            port: self.reader.port.clone(),
            reader,
            last_data: Instant::now(),
            silence_reopen: self.reader.silence_reopen,
        }))
    }
}

/// An open [`SerialSpec`]: the reader thread's events, turned into source items.
struct SerialSource {
    /// For error messages.
    port: PathBuf,
    /// The reader thread (stopped when this is dropped).
    reader: SerialReader,
    /// When ECG last arrived (or the port was opened).
    last_data: Instant,
    /// Silence after which this opening ends, so the daemon reopens the port.
    silence_reopen: Duration,
}

impl Source for SerialSource {
    fn next(&mut self, stop: &Stop) -> Result<Pulled, SourceError> {
        if stop.is_set() {
            return Ok(Pulled::Idle);
        }
        let event = match self.reader.recv_timeout(MAX_BLOCK) {
            Ok(ReaderEvent::Ecg(block)) => {
                self.last_data = Instant::now();
                return Ok(Pulled::Item(SourceItem::Ecg(block)));
            }
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.check_silence()?;
                return Ok(Pulled::Idle);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(self.read_error("the reader thread ended".into()));
            }
        };
        match event {
            ReaderEvent::Ecg(block) => Ok(Pulled::Item(SourceItem::Ecg(block))),
            // Lost samples show up as a gap in the next block's indices, which the gating
            // stage treats as a break; the counters reach the status through the link stats.
            ReaderEvent::Connected { .. } | ReaderEvent::Lost { .. } | ReaderEvent::Stats(_) => {
                self.check_silence()?;
                Ok(Pulled::Idle)
            }
            // The daemon owns reconnecting (one backoff policy for every source, and the
            // status shows the port down meanwhile), so an unplugged adapter ends this
            // opening.
            ReaderEvent::Disconnected { reason, .. } => Err(self.read_error(reason)),
            ReaderEvent::Ended { reason: None } => Ok(Pulled::End),
            ReaderEvent::Ended {
                reason: Some(reason),
            } => Err(self.read_error(reason)),
        }
    }
}

impl SerialSource {
    /// Ends this opening when the open port has been silent too long (see
    /// [`ReaderConfig::silence_reopen`]): the daemon then reports the ECG down and reopens it.
    fn check_silence(&self) -> Result<(), SourceError> {
        let silent = self.last_data.elapsed();
        if silent > self.silence_reopen {
            return Err(self.read_error(format!(
                "no ECG for {:.1} s although the port is open: the board or its adapter stopped \
                 sending; reopening the port (check the board's power and cable if this repeats)",
                silent.as_secs_f64()
            )));
        }
        Ok(())
    }

    fn read_error(&self, message: String) -> SourceError {
        SourceError::Read {
            source_name: format!("ECG port {}", self.port.display()),
            message,
        }
    }
}

/// The video grabber on V4L2.
#[derive(Debug, Clone)]
pub struct VideoSpec {
    /// Device and mode.
    pub capture: CaptureConfig,
    /// The clock frames are stamped on.
    pub clock: SessionClock,
}

impl OpenSource for VideoSpec {
    fn name(&self) -> String {
        format!("capture device {}", self.capture.device)
    }

    fn streams(&self) -> Streams {
        Streams {
            video: true,
            ecg: false,
        }
    }

    #[cfg(feature = "v4l")]
    fn open(&self) -> Result<Box<dyn Source>, SourceError> {
        let source =
            crate::capture::v4l2::V4l2Source::open(self.capture.clone(), self.clock.origin())
                .map_err(|e| SourceError::Open {
                    source_name: self.name(),
                    message: e.to_string(),
                })?;
        Ok(Box::new(VideoSource { source }))
    }

    #[cfg(not(feature = "v4l"))]
    fn open(&self) -> Result<Box<dyn Source>, SourceError> {
        Err(SourceError::Open {
            source_name: self.name(),
            message: "this echoview was built without V4L2 capture; install the Jetson \
                      package or build with `cargo build --release --features v4l`"
                .into(),
        })
    }
}

/// An open [`VideoSpec`].
#[cfg(feature = "v4l")]
struct VideoSource {
    /// The grabber; it reconnects by itself, but the daemon is told of each loss so the
    /// status shows the video down.
    source: crate::capture::v4l2::V4l2Source,
}

#[cfg(feature = "v4l")]
impl Source for VideoSource {
    fn next(&mut self, stop: &Stop) -> Result<Pulled, SourceError> {
        use crate::capture::FrameSource;
        if stop.is_set() {
            return Ok(Pulled::Idle);
        }
        match self.source.poll_frame(MAX_BLOCK) {
            Ok(Some(frame)) => Ok(Pulled::Item(SourceItem::Frame(frame))),
            Ok(None) => Ok(Pulled::Idle),
            Err(e) => Err(SourceError::Read {
                source_name: format!("capture device {}", self.source.status().device),
                message: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long the tests wait for a pty reader to deliver.
    const TEST_WAIT: Duration = Duration::from_secs(5);

    use crate::media::EcgBlock;
    use crate::serial::emulator::WireFormat;
    use crate::serial::{
        BinaryConfig, Emulator, EmulatorConfig, Protocol, SampleWidth, StreamConfig,
    };

    fn pull_ecg(source: &mut dyn Source, stop: &Stop) -> Vec<EcgBlock> {
        let deadline = Instant::now() + TEST_WAIT;
        let mut blocks = Vec::new();
        let mut samples = 0;
        while samples < 400 && Instant::now() < deadline {
            if let Pulled::Item(SourceItem::Ecg(block)) = source.next(stop).unwrap() {
                samples += block.samples_mv.len();
                blocks.push(block);
            }
        }
        blocks
    }

    /// A board emulator sending 16-bit binary samples at its own pace on a pty, and a reader
    /// configured for it (lead 0, 500 Hz).
    fn binary_board() -> (Emulator, ReaderConfig) {
        let format = WireFormat::Binary {
            width: SampleWidth::I16,
        };
        let emulator = Emulator::open_pty(EmulatorConfig {
            speed: None,
            ..EmulatorConfig::new(format)
        })
        .unwrap();
        let stream = StreamConfig::new(Protocol::Binary(BinaryConfig { lead: 0 }), 500.0);
        let reader = ReaderConfig::new(emulator.device(), stream);
        (emulator, reader)
    }

    #[test]
    fn a_serial_board_on_a_pty_delivers_ecg_on_the_session_clock() {
        let (mut emulator, reader) = binary_board();
        let clock = SessionClock::start();
        let spec = SerialSpec { reader, clock };
        assert!(spec.streams().ecg && !spec.streams().video);
        let mut source = spec.open().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..10u64 {
            emulator
                .send(&EcgBlock {
                    first_index: i * 50,
                    t0_ns: i * 100_000_000,
                    fs_hz: 500.0,
                    samples_mv: (0..50).map(|k| (k as f32 * 0.01).sin()).collect(),
                    lead_off: false,
                })
                .unwrap();
        }
        let stop = Stop::new();
        let blocks = pull_ecg(source.as_mut(), &stop);
        let samples: usize = blocks.iter().map(|b| b.samples_mv.len()).sum();
        assert!(samples >= 400, "got {samples} samples");
        let now = clock.at(Instant::now());
        for block in &blocks {
            assert!(block.t0_ns <= now, "stamped on the session clock");
        }
        let first = &blocks[0];
        assert!((first.samples_mv[1] - 0.01f32.sin()).abs() < 2e-3);
    }

    #[test]
    fn a_board_that_goes_silent_on_an_open_port_ends_the_opening_and_reopens() {
        let (mut emulator, mut reader) = binary_board();
        reader.silence_reopen = Duration::from_millis(400);
        let spec = SerialSpec {
            reader,
            clock: SessionClock::start(),
        };
        let block = |i: u64| EcgBlock {
            first_index: i * 50,
            t0_ns: i * 100_000_000,
            fs_hz: 500.0,
            samples_mv: vec![0.1; 50],
            lead_off: false,
        };
        let stop = Stop::new();
        let mut source = spec.open().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..10 {
            emulator.send(&block(i)).unwrap();
        }
        assert!(!pull_ecg(source.as_mut(), &stop).is_empty());
        // The board stays connected (the pty is open) but sends nothing more.
        let silent_since = Instant::now();
        let err = loop {
            match source.next(&stop) {
                Ok(Pulled::Idle) => {}
                Ok(other) => panic!("a silent board delivered {other:?}"),
                Err(e) => break e.to_string(),
            }
            assert!(
                silent_since.elapsed() < TEST_WAIT,
                "silence never ended the opening"
            );
        };
        assert!(
            err.contains("no ECG for") && err.contains("reopening"),
            "{err}"
        );
        assert!(silent_since.elapsed() >= Duration::from_millis(300));
        // The daemon then reopens the port; a board that talks again is read again.
        drop(source);
        let mut source = spec.open().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for i in 10..20 {
            emulator.send(&block(i)).unwrap();
        }
        assert!(!pull_ecg(source.as_mut(), &stop).is_empty());
    }

    #[test]
    fn a_missing_port_fails_to_open_with_its_name() {
        let stream = StreamConfig::new(Protocol::Binary(BinaryConfig { lead: 0 }), 500.0);
        let spec = SerialSpec {
            reader: ReaderConfig::new("/dev/echoview-no-such-port", stream),
            clock: SessionClock::start(),
        };
        let err = spec.open().err().expect("no such port").to_string();
        assert!(err.contains("/dev/echoview-no-such-port"), "{err}");
        // Said once: the serial error names the port, and the source adds nothing to it.
        assert_eq!(
            err.matches("cannot open ECG port").count(),
            1,
            "context repeated: {err}"
        );
    }

    #[cfg(not(feature = "v4l"))]
    #[test]
    fn without_v4l_the_video_source_says_how_to_get_it() {
        let spec = VideoSpec {
            capture: CaptureConfig::new("/dev/video0"),
            clock: SessionClock::start(),
        };
        let err = spec.open().err().expect("no v4l").to_string();
        assert!(err.contains("--features v4l"), "{err}");
    }
}
