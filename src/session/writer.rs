//! Records a session: frames, ECG, truth and labels into one MCAP file on one clock.
//!
//! Chunks are compressed in memory and written whole, so a crash leaves only complete chunks
//! behind (plus at most one partly written one, which readers report as a cut): the loss is
//! bounded by [`CHUNK_SIZE`] bytes of messages. [`SessionWriter::finish`] adds the summary and
//! index that let Foxglove seek; a file without them still reads linearly.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use mcap::records::{MessageHeader, Metadata};
use mcap::{Compression, WriteOptions};
use serde::Serialize;

use super::cdr::{self, CompressedImageMsg, ImageMsg};
use super::error::SessionError;
use super::schema::{
    EcgOut, FORMAT_VERSION, KEY_FORMAT_VERSION, KEY_WRITER, METADATA_NAME, Stream, Time,
    TruthRPeakOut, TruthViewOut,
};
use crate::media::{EcgBlock, Frame};
use crate::views::View;

/// Target uncompressed size of one chunk. Small enough that a crash loses under a second of
/// 320x240 video, large enough that zstd compresses well and Foxglove reads few chunks.
pub const CHUNK_SIZE: u64 = 1024 * 1024;

/// The MCAP `sequence` field is 32 bits; frame numbers are unwrapped on reading by assuming
/// consecutive frames are less than half that range apart, which the writer enforces.
const MAX_SEQ_STEP: u64 = 1 << 31;

/// Writes one session file. Messages must be written in time order per channel.
pub struct SessionWriter {
    /// Where the file is, for error messages.
    path: PathBuf,
    /// The MCAP writer over a buffered file.
    mcap: mcap::Writer<BufWriter<File>>,
    /// MCAP channel id of each stream, registered on its first message so a session without
    /// truth has no truth channel.
    channel_ids: [Option<u16>; Stream::ALL.len()],
    /// Per-channel message counter for the MCAP `sequence` field of non-video channels, so
    /// tools can spot a lost message; video uses the frame number instead.
    counters: [u32; Stream::ALL.len()],
    /// Last log time written per channel, to refuse time going backwards on a channel.
    last_t_ns: [Option<u64>; Stream::ALL.len()],
    /// Last frame number written, to keep frame numbers increasing and unwrappable.
    last_seq: Option<u64>,
    /// Reused serialisation buffer, so a message costs no allocation once warmed up.
    buf: Vec<u8>,
}

impl SessionWriter {
    /// Creates a new session file at `path`, refusing to overwrite an existing file.
    ///
    /// Writes the `echoview` metadata record with the format version and writer version at
    /// once, so even a file cut short a moment later says what it is.
    pub fn create(path: &Path) -> Result<SessionWriter, SessionError> {
        SessionWriter::create_with_chunk_size(path, CHUNK_SIZE)
    }

    /// [`SessionWriter::create`] with another chunk size, so tests can make many chunks from
    /// little data.
    pub(super) fn create_with_chunk_size(
        path: &Path,
        chunk_size: u64,
    ) -> Result<SessionWriter, SessionError> {
        let create_err = |source| SessionError::Create {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create_new(path).map_err(create_err)?;
        let options = WriteOptions::new()
            .compression(Some(Compression::Zstd))
            .chunk_size(Some(chunk_size))
            // Buffer each chunk in memory and write it whole: with seeking, the writer leaves
            // placeholder lengths on disk until a chunk ends, which a crash turns into garbage.
            .disable_seeking(true)
            // Compress on the calling thread: output bytes then do not depend on the CPU count.
            .compression_threads(0)
            .library(format!(
                "echoview {} ({})",
                env!("CARGO_PKG_VERSION"),
                mcap::LIBRARY_IDENTIFIER
            ));
        let mcap = options
            .create(BufWriter::new(file))
            .map_err(|e| SessionError::Write {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let mut writer = SessionWriter {
            path: path.to_path_buf(),
            mcap,
            channel_ids: [None; Stream::ALL.len()],
            counters: [0; Stream::ALL.len()],
            last_t_ns: [None; Stream::ALL.len()],
            last_seq: None,
            buf: Vec::new(),
        };
        let own = BTreeMap::from([
            (KEY_FORMAT_VERSION.to_string(), FORMAT_VERSION.to_string()),
            (
                KEY_WRITER.to_string(),
                format!("echoview {}", env!("CARGO_PKG_VERSION")),
            ),
        ]);
        writer.put_metadata(own)?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records session-level key/value pairs (source, simulator seed, operator, ...) in an
    /// `echoview` metadata record. Call it right after [`SessionWriter::create`]: records
    /// before the first message survive a crash and are seen by a reader at once.
    ///
    /// May be called more than once; readers merge the records in file order. The keys
    /// `format_version` and `writer` belong to the writer and are refused.
    pub fn write_metadata(
        &mut self,
        entries: &BTreeMap<String, String>,
    ) -> Result<(), SessionError> {
        if let Some(key) = [KEY_FORMAT_VERSION, KEY_WRITER]
            .into_iter()
            .find(|k| entries.contains_key(*k))
        {
            return Err(self.invalid(
                "session metadata",
                format!("the key {key:?} is set by the writer itself; use another key name"),
            ));
        }
        self.put_metadata(entries.clone())
    }

    /// Writes one `echoview` metadata record; the writer's own keys go through here too.
    fn put_metadata(&mut self, metadata: BTreeMap<String, String>) -> Result<(), SessionError> {
        let record = Metadata {
            name: METADATA_NAME.to_string(),
            metadata,
        };
        self.mcap
            .write_metadata(&record)
            .map_err(|e| self.write_err(e))
    }

    /// Records one video frame at its capture time: an uncompressed frame on `/video`, a
    /// Motion-JPEG frame on `/video/compressed`.
    ///
    /// The frame must pass [`Frame::validate`], come later than the previous frame of its
    /// channel and carry a larger frame number than any frame before (gaps are fine: they are
    /// drops). Exactly the image's bytes are stored ([`Frame::image_bytes`]); bytes past them
    /// are not part of the image and are dropped.
    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let what = || format!("frame {}", frame.seq);
        frame.validate().map_err(|e| self.invalid(what(), e))?;
        let sec = i32::try_from(frame.t_ns / 1_000_000_000).map_err(|_| {
            self.invalid(
                what(),
                format!(
                    "time {} ns is past the 68 years a ROS timestamp holds; the session clock \
                     must start near zero",
                    frame.t_ns
                ),
            )
        })?;
        let sequence = self
            .check_seq(frame.seq)
            .map_err(|e| self.invalid(what(), e))?;
        let stream = if frame.format.is_compressed() {
            Stream::VideoCompressed
        } else {
            Stream::Video
        };
        self.check_time(stream, frame.t_ns)
            .map_err(|e| self.invalid(what(), e))?;
        let nanosec = (frame.t_ns % 1_000_000_000) as u32;
        let mut buf = std::mem::take(&mut self.buf);
        let encoded = match cdr::encoding_name(frame.format) {
            Some(encoding) => ImageMsg {
                sec,
                nanosec,
                frame_id: cdr::FRAME_ID,
                height: frame.height,
                width: frame.width,
                encoding,
                is_bigendian: 0,
                step: frame.stride,
                data: frame.image_bytes(),
            }
            .encode(&mut buf),
            None => CompressedImageMsg {
                sec,
                nanosec,
                frame_id: cdr::FRAME_ID,
                format: cdr::JPEG_FORMAT,
                data: frame.image_bytes(),
            }
            .encode(&mut buf),
        };
        let result = match encoded {
            Ok(()) => self.put(stream, frame.t_ns, sequence, &buf),
            Err(e) => Err(self.invalid(what(), e)),
        };
        self.buf = buf;
        result?;
        self.last_seq = Some(frame.seq);
        Ok(())
    }

    /// Records a block of ECG samples; its log time is the first sample's time.
    ///
    /// The sampling rate must be finite and positive. Non-finite samples are stored as JSON
    /// `null` and read back as NaN.
    pub fn write_ecg(&mut self, block: &EcgBlock) -> Result<(), SessionError> {
        let what = || format!("ECG block at sample {}", block.first_index);
        if !(block.fs_hz.is_finite() && block.fs_hz > 0.0) {
            return Err(self.invalid(
                what(),
                format!(
                    "sampling rate {} Hz must be finite and positive",
                    block.fs_hz
                ),
            ));
        }
        self.check_time(Stream::Ecg, block.t0_ns)
            .map_err(|e| self.invalid(what(), e))?;
        let payload = EcgOut {
            timestamp: Time::from_ns(block.t0_ns),
            first_index: block.first_index,
            t0_ns: block.t0_ns,
            fs_hz: block.fs_hz,
            samples_mv: &block.samples_mv,
            lead_off: block.lead_off,
        };
        self.put_json(Stream::Ecg, block.t0_ns, &payload)
    }

    /// Records the simulator's true view at a frame time.
    pub fn write_truth_view(&mut self, t_ns: u64, view: View) -> Result<(), SessionError> {
        self.check_time(Stream::TruthView, t_ns)
            .map_err(|e| self.invalid("truth view", e))?;
        let payload = TruthViewOut {
            timestamp: Time::from_ns(t_ns),
            view: view.name(),
        };
        self.put_json(Stream::TruthView, t_ns, &payload)
    }

    /// Records a true R-peak: its time and the index of its ECG sample.
    pub fn write_truth_rpeak(&mut self, t_ns: u64, sample_index: u64) -> Result<(), SessionError> {
        self.check_time(Stream::TruthRPeak, t_ns)
            .map_err(|e| self.invalid("truth R-peak", e))?;
        let payload = TruthRPeakOut {
            timestamp: Time::from_ns(t_ns),
            sample_index,
        };
        self.put_json(Stream::TruthRPeak, t_ns, &payload)
    }

    /// Records a label the pipeline published. It must be a JSON object, the shape Foxglove
    /// can browse; its fields are the publisher's business.
    pub fn write_label(
        &mut self,
        t_ns: u64,
        label: &serde_json::Value,
    ) -> Result<(), SessionError> {
        if !label.is_object() {
            return Err(self.invalid(
                "label",
                format!("a label must be a JSON object, got {label}"),
            ));
        }
        self.check_time(Stream::Labels, t_ns)
            .map_err(|e| self.invalid("label", e))?;
        self.put_json(Stream::Labels, t_ns, label)
    }

    /// Ends the current chunk and hands everything written so far to the operating system, so
    /// it survives a crash of this process (not a power loss: that needs [`Self::finish`]).
    pub fn flush(&mut self) -> Result<(), SessionError> {
        self.mcap.flush().map_err(|e| self.write_err(e))
    }

    /// Writes the summary and index, and syncs the file to disk. Without this call (on a
    /// crash) the file still reads linearly but Foxglove cannot seek in it. Dropping the
    /// writer instead still writes the summary, but ignores errors and does not sync.
    pub fn finish(self) -> Result<(), SessionError> {
        let SessionWriter { path, mut mcap, .. } = self;
        let write_err = |detail: String| SessionError::Write {
            path: path.clone(),
            detail,
        };
        mcap.finish().map_err(|e| write_err(e.to_string()))?;
        let file = mcap
            .into_inner()
            .into_inner()
            .map_err(|e| write_err(e.error().to_string()))?;
        file.sync_all().map_err(|e| write_err(e.to_string()))
    }

    /// Checks that frame numbers increase by less than [`MAX_SEQ_STEP`], so the 32-bit MCAP
    /// sequence field unwraps to the true number on reading; returns that field.
    fn check_seq(&self, seq: u64) -> Result<u32, String> {
        match self.last_seq {
            None if seq > u64::from(u32::MAX) => Err(format!(
                "the first frame number {seq} must fit in 32 bits; start numbering at the \
                 capture's first frame"
            )),
            Some(last) if seq <= last => Err(format!(
                "frame number {seq} does not follow the previous frame {last}; frame numbers \
                 must increase"
            )),
            Some(last) if seq - last >= MAX_SEQ_STEP => Err(format!(
                "frame number jumps from {last} to {seq}, more than the 2^31 a session can \
                 represent; start a new session"
            )),
            _ => Ok(seq as u32),
        }
    }

    /// Checks that `t_ns` does not go back in time on `stream`.
    fn check_time(&self, stream: Stream, t_ns: u64) -> Result<(), String> {
        if let Some(prev) = self.last_t_ns[stream.index()]
            && t_ns < prev
        {
            return Err(format!(
                "time {t_ns} ns is before the previous {} message at {prev} ns; messages on a \
                 channel must be written in time order",
                stream.spec().topic
            ));
        }
        Ok(())
    }

    /// Serialises a JSON payload into the reused buffer and writes it with the channel's next
    /// sequence number.
    fn put_json<T: Serialize + ?Sized>(
        &mut self,
        stream: Stream,
        t_ns: u64,
        payload: &T,
    ) -> Result<(), SessionError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = match serde_json::to_writer(&mut buf, payload) {
            Ok(()) => {
                let counter = &mut self.counters[stream.index()];
                let sequence = *counter;
                *counter = counter.wrapping_add(1);
                self.put(stream, t_ns, sequence, &buf)
            }
            Err(e) => Err(self.invalid(stream.spec().topic, e.to_string())),
        };
        self.buf = buf;
        result
    }

    /// Writes one message with log and publish time `t_ns`, then records the time for the
    /// order check (only on success, so a refused message does not move the clock).
    fn put(
        &mut self,
        stream: Stream,
        t_ns: u64,
        sequence: u32,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let channel_id = self.channel_id(stream)?;
        let header = MessageHeader {
            channel_id,
            sequence,
            log_time: t_ns,
            publish_time: t_ns,
        };
        self.mcap
            .write_to_known_channel(&header, payload)
            .map_err(|e| self.write_err(e))?;
        self.last_t_ns[stream.index()] = Some(t_ns);
        Ok(())
    }

    /// The channel id of `stream`, registering its schema and channel on first use.
    fn channel_id(&mut self, stream: Stream) -> Result<u16, SessionError> {
        if let Some(id) = self.channel_ids[stream.index()] {
            return Ok(id);
        }
        let spec = stream.spec();
        let id = self
            .mcap
            .add_schema(
                spec.schema_name,
                spec.schema_encoding,
                spec.schema_text.as_bytes(),
            )
            .and_then(|schema_id| {
                self.mcap.add_channel(
                    schema_id,
                    spec.topic,
                    spec.message_encoding,
                    &BTreeMap::new(),
                )
            })
            .map_err(|e| self.write_err(e))?;
        self.channel_ids[stream.index()] = Some(id);
        Ok(id)
    }

    /// An [`SessionError::InvalidInput`] for this file.
    fn invalid(&self, what: impl Into<String>, detail: impl Into<String>) -> SessionError {
        SessionError::InvalidInput {
            path: self.path.clone(),
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// A [`SessionError::Write`] for this file, with the I/O cause unwrapped so it reads well.
    fn write_err(&self, e: mcap::McapError) -> SessionError {
        let detail = match e {
            mcap::McapError::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        SessionError::Write {
            path: self.path.clone(),
            detail,
        }
    }
}
