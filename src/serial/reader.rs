//! The reader thread: a serial port (or a pty, or a capture file) read continuously into an
//! [`EcgStream`], its events handed to the consumer over a bounded channel.
//!
//! Reading gets a thread of its own because arrival times are the clock's raw material: a read
//! that waits behind the consumer's work is stamped late. Blocking reads with a short timeout
//! keep the thread responsive to [`SerialReader::stop`] without busy polling.
//!
//! The channel is bounded so a stalled consumer cannot grow memory without limit. When it is
//! full the thread waits (checking for stop) instead of dropping events, so nothing is lost
//! silently; meanwhile the kernel's receive buffer fills, and if the stall outlasts it the
//! board's bytes are dropped there, which the binary protocol's counter reports as lost
//! samples. Late reads only look more delayed to the clock, which ignores them.
//!
//! A character device is opened as a serial port (raw 8N1 at the configured baud, input
//! flushed so stale bytes are not stamped as fresh). The first open happens in
//! [`SerialReader::spawn`], so a wrong path fails at once with a message; after that, a read
//! error or hang-up (an unplugged adapter) makes the thread reopen the same path with doubling
//! backoff, reporting each attempt, until it succeeds or is stopped. A stable path such as
//! `/dev/serial/by-id/...` therefore survives replugging. A regular file is read as a capture
//! to its end, which ends the stream.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, SerialPort, TTYPort};

use super::stream::{EcgStream, StreamConfig, StreamEvent};
use super::{LinkStats, SerialError};
use crate::media::EcgBlock;

/// The session clock as a function: nanoseconds, monotonic, shared with the video source so
/// both stamp on one clock.
pub type Now = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A session clock that starts at zero now, for when no video source supplies one.
pub fn monotonic_now() -> Now {
    let origin = Instant::now();
    Arc::new(move || u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Where and how to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderConfig {
    /// Serial device (better a stable `/dev/serial/by-id/...` link, which survives replugging)
    /// or a capture file.
    pub port: PathBuf,
    /// Line speed in baud (ignored by pseudo-terminals and files).
    pub baud: u32,
    /// Protocol, rate, lead and video lag.
    pub stream: StreamConfig,
    /// Events the channel holds before the thread waits for the consumer.
    pub capacity: usize,
    /// Longest a read blocks: how quickly the thread notices a stop.
    pub poll: Duration,
    /// Wait before the first reopen after the link is lost.
    pub backoff_first: Duration,
    /// Longest wait between reopen attempts (the wait doubles up to this).
    pub backoff_max: Duration,
    /// Longest silence on an open port before the daemon reopens it. A board that hangs (a
    /// firmware fault, a USB adapter that stops passing data) keeps the port open but sends
    /// nothing; reading on would wait forever, while reopening resets the adapter and, with
    /// most boards, their streaming.
    pub silence_reopen: Duration,
}

impl ReaderConfig {
    /// Defaults for `port` and `stream`: 115200 baud, 256 events, 50 ms polls, reopening
    /// after 100 ms, then at most every 5 s; a port silent for 3 s is reopened.
    pub fn new(port: impl Into<PathBuf>, stream: StreamConfig) -> ReaderConfig {
        ReaderConfig {
            port: port.into(),
            baud: 115_200,
            stream,
            capacity: 256,
            poll: Duration::from_millis(50),
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            silence_reopen: Duration::from_secs(3),
        }
    }

    /// Checks the settings the stream does not check itself.
    pub fn validate(&self) -> Result<(), SerialError> {
        let problem = if self.baud == 0 {
            Some("--baud must be the board's line speed, e.g. 115200".to_string())
        } else if self.capacity == 0 {
            Some("the reader's channel needs room for at least one event".to_string())
        } else if self.poll.is_zero() || self.backoff_first.is_zero() {
            Some("the reader's poll and backoff times must be positive".to_string())
        } else if self.backoff_max < self.backoff_first {
            Some("the longest reconnect backoff must not be shorter than the first".to_string())
        } else {
            None
        };
        problem.map_or(Ok(()), |problem| Err(SerialError::Config { problem }))
    }
}

/// What the reader thread reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ReaderEvent {
    /// The port is open and being read; `attempt` 0 is the first open, later ones reconnects.
    Connected {
        /// Reconnects so far.
        attempt: u32,
    },
    /// Consecutive samples with their session-clock times.
    Ecg(EcgBlock),
    /// Samples that never arrived (see [`StreamEvent::Lost`]).
    Lost {
        /// Index of the first missing sample.
        first_index: u64,
        /// How many.
        count: u64,
        /// Estimated from arrival times rather than counted.
        estimated: bool,
    },
    /// The link counters after a read that raised one of the problem counters.
    Stats(LinkStats),
    /// The port failed or could not be reopened; the thread tries again after `retry_in`.
    Disconnected {
        /// The operating system's reason, with the port's name.
        reason: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
    /// A capture file ended (`reason` is `None`) or failed; no more events follow.
    Ended {
        /// Why reading stopped early, if it did.
        reason: Option<String>,
    },
}

/// What the thread leaves behind when it stops.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReaderSummary {
    /// The final link counters.
    pub stats: LinkStats,
    /// The board's sampling rate as the clock fitted it, in Hz (0 if no sample came).
    pub fitted_rate_hz: f64,
    /// Its deviation from the configured rate, in ppm.
    pub drift_ppm: f64,
}

/// Handle of a running reader thread; dropping it stops the thread.
#[derive(Debug)]
pub struct SerialReader {
    /// Events from the thread.
    events: Receiver<ReaderEvent>,
    /// Set to ask the thread to finish.
    stop: Arc<AtomicBool>,
    /// The thread; taken when joined.
    thread: Option<JoinHandle<ReaderSummary>>,
}

impl SerialReader {
    /// Opens the port (failing at once if it cannot) and starts the thread; its first event
    /// is [`ReaderEvent::Connected`] with attempt 0. `now` stamps arrivals.
    pub fn spawn(config: ReaderConfig, now: Now) -> Result<SerialReader, SerialError> {
        config.validate()?;
        let stream = EcgStream::new(&config.stream)?;
        let port = Port::open(&config.port, config.baud, config.poll)?;
        let (tx, events) = sync_channel(config.capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ecg-serial".to_string())
            .spawn(move || {
                let mut worker = Worker {
                    config,
                    stream,
                    tx,
                    stop: flag,
                    now,
                };
                worker.run(port)
            })
            .map_err(|source| SerialError::Thread { source })?;
        Ok(SerialReader {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// The channel of events, for `recv`, `recv_timeout` or iteration.
    pub fn events(&self) -> &Receiver<ReaderEvent> {
        &self.events
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<ReaderEvent, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// Stops the thread (within one poll interval) and returns its summary.
    pub fn stop(mut self) -> ReaderSummary {
        self.finish()
    }

    fn finish(&mut self) -> ReaderSummary {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for SerialReader {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An open source of bytes.
enum Port {
    /// A serial device or pseudo-terminal.
    Tty(TTYPort),
    /// A capture file, read to its end.
    File(File),
}

impl Port {
    /// Opens `path` as a serial port at `baud` (reads time out after `poll`) if it is a
    /// character device, as a capture file if it is a regular file.
    fn open(path: &Path, baud: u32, poll: Duration) -> Result<Port, SerialError> {
        let meta = std::fs::metadata(path).map_err(|e| SerialError::open(path, e))?;
        if meta.file_type().is_char_device() {
            let tty = serialport::new(path.to_string_lossy(), baud)
                .timeout(poll)
                .open_native()
                .map_err(|e| SerialError::open(path, e.into()))?;
            // Bytes queued before we opened would be stamped as arriving now.
            tty.clear(ClearBuffer::Input)
                .map_err(|e| SerialError::open(path, e.into()))?;
            Ok(Port::Tty(tty))
        } else if meta.is_file() {
            Ok(Port::File(
                File::open(path).map_err(|e| SerialError::open(path, e))?,
            ))
        } else {
            Err(SerialError::open(
                path,
                std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "neither a serial device nor a regular capture file",
                ),
            ))
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Port::Tty(t) => t.read(buf),
            Port::File(f) => f.read(buf),
        }
    }

    fn is_file(&self) -> bool {
        matches!(self, Port::File(_))
    }
}

/// The thread's state.
struct Worker {
    /// Port, timing and backoff settings.
    config: ReaderConfig,
    /// Decoder and clock; survives reconnects so indices and the fit carry on.
    stream: EcgStream,
    /// The bounded channel to the consumer.
    tx: SyncSender<ReaderEvent>,
    /// Set by [`SerialReader::stop`] or its drop.
    stop: Arc<AtomicBool>,
    /// Stamps arrivals on the session clock.
    now: Now,
}

impl Worker {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Hands `event` to the consumer, waiting while the channel is full; false when the
    /// consumer is gone or a stop was asked for.
    fn send(&self, event: ReaderEvent) -> bool {
        let mut event = event;
        loop {
            match self.tx.try_send(event) {
                Ok(()) => return true,
                Err(TrySendError::Full(e)) => {
                    if self.stopped() {
                        return false;
                    }
                    event = e;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// Reads until stopped, the consumer leaves, or a capture file ends.
    fn run(&mut self, port: Port) -> ReaderSummary {
        let mut port = Some(port);
        let mut buf = vec![0u8; 4096];
        let mut events = Vec::new();
        let mut problems = 0;
        let mut attempt = 0u32;
        let mut alive = self.send(ReaderEvent::Connected { attempt });
        while alive && !self.stopped() {
            let Some(p) = port.as_mut() else {
                match self.reopen() {
                    Some(p) => {
                        port = Some(p);
                        self.stream.reconnected();
                        attempt += 1;
                        alive = self.send(ReaderEvent::Connected { attempt });
                    }
                    None => alive = false,
                }
                continue;
            };
            let failure = match p.read(&mut buf) {
                Ok(0) if p.is_file() => {
                    self.send(ReaderEvent::Ended { reason: None });
                    break;
                }
                // A terminal reads 0 bytes only after a hang-up.
                Ok(0) => "the other end hung up".to_string(),
                Ok(n) => {
                    let arrival = (self.now)();
                    self.stream.push(&buf[..n], arrival, &mut events);
                    for e in events.drain(..) {
                        alive = alive
                            && self.send(match e {
                                StreamEvent::Ecg(b) => ReaderEvent::Ecg(b),
                                StreamEvent::Lost {
                                    first_index,
                                    count,
                                    estimated,
                                } => ReaderEvent::Lost {
                                    first_index,
                                    count,
                                    estimated,
                                },
                            });
                    }
                    let stats = self.stream.stats();
                    if stats.problems() != problems {
                        problems = stats.problems();
                        alive = alive && self.send(ReaderEvent::Stats(stats));
                    }
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) if p.is_file() => {
                    self.send(ReaderEvent::Ended {
                        reason: Some(format!("{}: {e}", self.config.port.display())),
                    });
                    break;
                }
                Err(e) => e.to_string(),
            };
            port = None;
            alive = self.send(ReaderEvent::Disconnected {
                reason: format!("{}: {failure}", self.config.port.display()),
                retry_in: self.config.backoff_first,
            });
        }
        let clock = self.stream.clock();
        ReaderSummary {
            stats: self.stream.stats(),
            fitted_rate_hz: if clock.buckets() > 0 {
                clock.fitted_rate_hz()
            } else {
                0.0
            },
            drift_ppm: clock.drift_ppm(),
        }
    }

    /// Reopens the port with doubling backoff, reporting each failure; `None` when stopped
    /// or the consumer left first.
    fn reopen(&self) -> Option<Port> {
        let mut wait = self.config.backoff_first;
        loop {
            if !self.sleep(wait) {
                return None;
            }
            match Port::open(&self.config.port, self.config.baud, self.config.poll) {
                Ok(port) => return Some(port),
                Err(e) => {
                    wait = wait.saturating_mul(2).min(self.config.backoff_max);
                    let reported = self.send(ReaderEvent::Disconnected {
                        reason: e.to_string(),
                        retry_in: wait,
                    });
                    if !reported {
                        return None;
                    }
                }
            }
        }
    }

    /// Sleeps `total`, waking every poll interval to honour a stop; false if stopped.
    fn sleep(&self, total: Duration) -> bool {
        let end = Instant::now() + total;
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(self.config.poll));
        }
    }
}
