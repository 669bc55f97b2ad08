//! Serial ECG: the cart's ECG board (or any serial ECG front end) as a live source, on the
//! session clock the video shares.
//!
//! Gating cuts video at R peaks, so an ECG sample's time matters as much as its value: a
//! 30 ms error moves the cut by a video frame. This module therefore keeps two promises:
//! every sample carries the right index even across corruption and unplugging, and every
//! index maps to a session-clock time that serial buffering jitter does not move.
//!
//! # Layers
//!
//! - Decoding, pure and push-driven (bytes in, [`Decoded`] samples and losses out), one module
//!   per wire protocol, both specified in `board/ecg-protocol.md`:
//!   [`ascii`] (one sample per text line, a column chosen by lead) and [`binary`] (our framed
//!   protocol for a cart's ECG board: sync word, sample counter, i16/i24 samples, lead-off bits,
//!   [`crc`] CRC-16/CCITT-FALSE). Decoders resynchronise after garbage, count CRC errors and
//!   lost samples, and advance the sample index over every loss, so samples never shift.
//! - Timing, pure: [`clock::SampleClock`] maps sample indices to times with a minimum-delay
//!   (lower envelope) fit of arrival time against index, tracking the board crystal's drift;
//!   [`stream::EcgStream`] joins a decoder and the clock and emits timestamped
//!   [`crate::media::EcgBlock`]s, applying the calibrated video/ECG offset.
//! - I/O: [`reader::SerialReader`] runs a blocking reader thread over a serial port (or a pty,
//!   or a capture file), reconnects with backoff, and hands events over a bounded channel;
//!   [`emulator::Emulator`] writes ECG blocks in either protocol at the true sample rate, so a
//!   cart can be tested end to end without a patient.
//! - Commands: [`command`] holds the `echoview ecg listen` and `echoview sim --ecg-serial`
//!   arguments and their implementations.

pub mod ascii;
pub mod binary;
pub mod clock;
pub mod command;
pub mod crc;
pub mod emulator;
mod error;
pub mod reader;
pub mod stream;

use std::fmt;

pub use ascii::{AsciiConfig, AsciiDecoder};
pub use binary::{BinaryConfig, BinaryDecoder, SampleWidth};
pub use clock::{ClockParams, SampleClock};
pub use emulator::{Emulator, EmulatorConfig};
pub use error::SerialError;
pub use reader::{ReaderConfig, ReaderEvent, SerialReader};
pub use stream::{EcgStream, StreamConfig, StreamEvent};

/// One ECG sample of the configured lead, as a decoder delivers it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Index since the stream began, counting lost samples, so it is the sample's position on
    /// the board's sampling grid and converts to a time.
    pub index: u64,
    /// Value in millivolts, the unit of [`crate::media::EcgBlock::samples_mv`].
    pub mv: f32,
    /// The front end reported the lead's electrodes off: the value is not ECG.
    pub lead_off: bool,
}

/// What a decoder makes of the bytes pushed into it, in stream order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoded {
    /// A sample of the configured lead.
    Sample(Sample),
    /// Samples `first_index..first_index + count` were sent but never decoded (a sequence gap,
    /// a corrupted frame or line); the next sample's index accounts for them.
    Lost {
        /// Index of the first missing sample.
        first_index: u64,
        /// How many are missing.
        count: u64,
    },
    /// The board's sample counter went backwards (it was reset or power-cycled), so how many
    /// samples were missed is unknown; the decoder's next index is a guess that the consumer
    /// should correct from arrival times (as [`stream::EcgStream`] does).
    Restart,
}

/// Link health counters, cumulative since the decoder was made; what a field engineer reads to
/// judge a cable or a board.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    /// Bytes received.
    pub bytes: u64,
    /// Samples of the configured lead delivered.
    pub samples: u64,
    /// Binary frames that passed their CRC.
    pub frames: u64,
    /// ASCII lines that gave a sample.
    pub lines: u64,
    /// Bytes discarded while looking for the start of a frame or line (noise, a partial line
    /// at connection, the body of a corrupted frame).
    pub skipped_bytes: u64,
    /// Binary frames whose CRC did not match: line noise or a baud-rate mismatch.
    pub crc_errors: u64,
    /// Sync words followed by an impossible header: noise that looked like a sync word, or a
    /// board speaking another protocol version.
    pub bad_headers: u64,
    /// ASCII lines that could not be read as a sample (after the first good one).
    pub bad_lines: u64,
    /// Frames or lines without the configured lead (a wrong `--lead`).
    pub missing_lead: u64,
    /// Samples known to be missing: sequence gaps, corrupted lines, and estimates after
    /// reconnects and board restarts.
    pub lost_samples: u64,
    /// Times the board's sample counter went backwards (board reset).
    pub restarts: u64,
    /// Times the link was re-established after an I/O error or unplugging.
    pub reconnects: u64,
    /// The latest problem in words (which line, what was wrong), for the operator.
    pub last_problem: Option<String>,
}

impl LinkStats {
    /// Sum of the problem counters: a change means something new went wrong.
    pub fn problems(&self) -> u64 {
        self.skipped_bytes
            + self.crc_errors
            + self.bad_headers
            + self.bad_lines
            + self.missing_lead
            + self.lost_samples
            + self.restarts
            + self.reconnects
    }

    /// Records `problem` as the latest one.
    pub(crate) fn note(&mut self, problem: String) {
        self.last_problem = Some(problem);
    }
}

impl fmt::Display for LinkStats {
    /// One line: the sample count, then every non-zero problem counter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} samples", self.samples)?;
        if self.frames > 0 {
            write!(f, " in {} frames", self.frames)?;
        }
        let counters = [
            (self.crc_errors, "CRC errors"),
            (self.bad_headers, "bad frame headers"),
            (self.bad_lines, "bad lines"),
            (self.missing_lead, "frames/lines without the lead"),
            (self.lost_samples, "samples lost"),
            (self.skipped_bytes, "bytes skipped"),
            (self.restarts, "board restarts"),
            (self.reconnects, "reconnects"),
        ];
        for (n, what) in counters {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

/// Which wire protocol the port speaks, with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    /// Text lines, one sample per line (protocol a).
    Ascii(AsciiConfig),
    /// Framed binary with counter and CRC (protocol b).
    Binary(BinaryConfig),
}

impl Protocol {
    /// Checks the settings, naming the bad one and the fix.
    pub fn validate(&self) -> Result<(), SerialError> {
        match self {
            Protocol::Ascii(c) => c.validate(),
            Protocol::Binary(c) => c.validate(),
        }
    }

    /// The protocol's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Ascii(_) => "ascii",
            Protocol::Binary(_) => "binary",
        }
    }
}

/// A decoder for either protocol, so the reader handles both alike.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// Protocol a.
    Ascii(AsciiDecoder),
    /// Protocol b.
    Binary(BinaryDecoder),
}

impl Decoder {
    /// A decoder for `protocol`, after checking its settings.
    pub fn new(protocol: &Protocol) -> Result<Decoder, SerialError> {
        protocol.validate()?;
        Ok(match protocol {
            Protocol::Ascii(c) => Decoder::Ascii(AsciiDecoder::new(*c)),
            Protocol::Binary(c) => Decoder::Binary(BinaryDecoder::new(*c)),
        })
    }

    /// Decodes `bytes`, appending what they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        match self {
            Decoder::Ascii(d) => d.push(bytes, out),
            Decoder::Binary(d) => d.push(bytes, out),
        }
    }

    /// The link was broken and re-established: drops the partial frame or line, whose rest
    /// was lost with the connection.
    pub fn reconnected(&mut self) {
        match self {
            Decoder::Ascii(d) => d.reconnected(),
            Decoder::Binary(d) => d.reconnected(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &LinkStats {
        match self {
            Decoder::Ascii(d) => d.stats(),
            Decoder::Binary(d) => d.stats(),
        }
    }

    /// Whether the protocol numbers its samples, so gaps after a reconnect are known exactly
    /// rather than estimated from arrival times.
    pub fn counts_samples(&self) -> bool {
        matches!(self, Decoder::Binary(_))
    }
}
