//! Replays a session file as a stream of decoded events, in file order.
//!
//! Sessions run to gigabytes, so the reader never holds more than one chunk: it drives the
//! MCAP crate's sans-io linear reader from a buffered file. Every chunk's CRC is checked
//! before any of its messages is delivered, so an event that comes out is an event that was
//! written; damage or a cut shows up as one final error after the intact messages.
//!
//! Messages come out in file order, which is the order the recorder wrote them. Within one
//! channel log times never decrease (the writer enforces it and the reader checks it); across
//! channels they may interleave, e.g. an ECG block is stamped with its first sample's time and
//! so can be earlier than a frame written before it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mcap::records::{MetadataIndex, Record, op};
use mcap::sans_io::{
    LinearReadEvent, LinearReader, LinearReaderOptions, SummaryReadEvent, SummaryReader,
    SummaryReaderOptions,
};
use mcap::{MAGIC, McapError};

use super::SessionEvent;
use super::cdr::{self, CompressedImageMsg, ImageMsg};
use super::error::SessionError;
use super::schema::{
    EcgIn, FORMAT_VERSION, KEY_FORMAT_VERSION, METADATA_NAME, Stream, TruthRPeakIn, TruthViewIn,
};
use crate::media::{EcgBlock, Frame, PixelFormat};
use crate::views::{UnknownView, View};

/// Largest record or chunk (compressed or not) the reader accepts. Far above any real chunk
/// (1 MiB plus one frame), it only stops a damaged length field from allocating gigabytes.
const RECORD_LIMIT: usize = 256 * 1024 * 1024;

/// Read buffer size; chunk data is requested in 64 KiB pieces.
const READ_BUFFER: usize = 64 * 1024;

/// Totals from the summary section of a finished session, known before reading any message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Number of messages per topic, unknown topics included, so a caller can size progress
    /// bars or see at once whether a session has truth.
    pub message_counts: BTreeMap<String, u64>,
    /// Log time of the earliest message, nanoseconds on the session clock.
    pub start_ns: u64,
    /// Log time of the latest message.
    pub end_ns: u64,
}

/// Where the messages of one MCAP channel go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Decoded as this stream.
    Known(Stream),
    /// Not ours: skipped and counted under its topic (forward compatibility).
    Skip(String),
}

/// Streams [`SessionEvent`]s out of a session file. Iterate it; after the first error it
/// yields nothing more.
pub struct SessionReader {
    /// The file's bytes, read as the MCAP reader asks for them.
    source: BufReader<File>,
    /// Bytes of the file not yet read, to cap read requests a damaged length field inflates.
    remaining: u64,
    /// The MCAP crate's record-level state machine.
    mcap: LinearReader,
    /// Turns records into events; separate from `mcap` so both can be borrowed at once.
    decoder: Decoder,
    /// Totals from the summary section, for finished files.
    summary: Option<SessionSummary>,
    /// The first event, read by [`SessionReader::open`] to collect the metadata before it.
    pending: Option<Result<SessionEvent, SessionError>>,
    /// Set once the stream ended or failed.
    done: bool,
}

impl SessionReader {
    /// Opens a session file for streaming.
    ///
    /// Fails for a file that is not MCAP or is from a newer format version. A file that is
    /// cut short or damaged opens fine: the iterator delivers what is intact, then the error.
    /// Opening reads the summary (finished files only) and everything up to the first message.
    pub fn open(path: &Path) -> Result<SessionReader, SessionError> {
        SessionReader::open_with(path, false)
    }

    /// Opens a session file for playing to a live pipeline, which can lose a frame but should
    /// not lose the rest of the file to it: a video message that does not decode to a valid
    /// frame (pixels of the wrong length, a JPEG without a readable header, a frame out of
    /// order) is skipped and counted ([`SessionReader::bad_frames`]) instead of ending the
    /// stream. Every other fault ends it as with [`SessionReader::open`].
    pub fn open_skipping_bad_frames(path: &Path) -> Result<SessionReader, SessionError> {
        SessionReader::open_with(path, true)
    }

    /// [`SessionReader::open`], skipping bad frames when `skip_bad_frames` is set.
    fn open_with(path: &Path, skip_bad_frames: bool) -> Result<SessionReader, SessionError> {
        let read_err = |source| SessionError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        check_magic(path, &mut file)?;

        let summary = read_summary(&mut file, len);
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;

        let options = LinearReaderOptions::default()
            .with_prevalidate_chunk_crcs(true)
            .with_validate_data_section_crc(true)
            .with_validate_summary_section_crc(true)
            .with_check_finishes_after_end_magic(true)
            .with_record_length_limit(RECORD_LIMIT);
        let mut reader = SessionReader {
            source: BufReader::with_capacity(READ_BUFFER, file),
            remaining: len,
            mcap: LinearReader::new_with_options(options),
            decoder: Decoder {
                skip_bad_frames,
                ..Decoder::new(path)
            },
            summary: None,
            pending: None,
            done: false,
        };
        if let Some((totals, metadata)) = summary {
            reader.summary = Some(totals);
            if let Some(metadata) = metadata {
                reader.decoder.metadata = metadata;
                reader.decoder.metadata_complete = true;
            }
        }
        let head = reader.advance();
        reader.done = !matches!(head, Some(Ok(_)));
        reader.pending = head;
        reader.check_version()?;
        Ok(reader)
    }

    /// The session's `echoview` metadata (format version, writer, source, ...), all records
    /// merged in file order. For a finished file this is complete from the start; for a file
    /// cut short, it holds the records read so far, which includes everything the writer
    /// recorded before its first message.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.decoder.metadata
    }

    /// Totals from the summary section; `None` when the file was never finished (or its
    /// summary is unreadable), in which case only reading it through tells.
    pub fn summary(&self) -> Option<&SessionSummary> {
        self.summary.as_ref()
    }

    /// Whether the session carries simulator truth (`/truth/view` or `/truth/rpeak`), known up
    /// front for finished files; `None` when there is no summary to say.
    pub fn has_truth(&self) -> Option<bool> {
        self.summary.as_ref().map(|s| {
            [Stream::TruthView, Stream::TruthRPeak]
                .into_iter()
                .any(|t| s.message_counts.get(t.spec().topic).is_some_and(|&n| n > 0))
        })
    }

    /// Video messages skipped so far because they did not decode to a valid frame (only with
    /// [`SessionReader::open_skipping_bad_frames`]), and why the latest one was.
    pub fn bad_frames(&self) -> (u64, Option<&str>) {
        (
            self.decoder.bad_frames,
            self.decoder.last_bad_frame.as_deref(),
        )
    }

    /// Messages on channels this reader does not know, per topic, skipped so far.
    pub fn skipped(&self) -> &BTreeMap<String, u64> {
        &self.decoder.skipped
    }

    /// Events delivered so far.
    pub fn messages_read(&self) -> u64 {
        self.decoder.messages_read
    }

    /// Refuses a file whose `format_version` is newer than [`FORMAT_VERSION`] (or unreadable),
    /// before any of it is misread.
    fn check_version(&self) -> Result<(), SessionError> {
        let Some(found) = self.decoder.metadata.get(KEY_FORMAT_VERSION) else {
            return Ok(());
        };
        match found.trim().parse::<u32>() {
            Ok(v) if v <= FORMAT_VERSION => Ok(()),
            _ => Err(SessionError::NewerFormat {
                path: self.decoder.path.clone(),
                found: found.clone(),
                supported: FORMAT_VERSION,
            }),
        }
    }

    /// Reads records until one becomes an event, the file ends, or something is wrong.
    fn advance(&mut self) -> Option<Result<SessionEvent, SessionError>> {
        loop {
            let event = match self.mcap.next_event()? {
                Ok(event) => event,
                Err(e) => return Some(Err(self.decoder.mcap_error(e))),
            };
            match event {
                LinearReadEvent::ReadRequest(n) => {
                    let cap = usize::try_from(self.remaining.max(1)).unwrap_or(usize::MAX);
                    let buf = self.mcap.insert(n.clamp(1, cap));
                    let got = match read_retrying(&mut self.source, buf) {
                        Ok(got) => got,
                        Err(source) => {
                            return Some(Err(SessionError::Read {
                                path: self.decoder.path.clone(),
                                source,
                            }));
                        }
                    };
                    self.remaining = self.remaining.saturating_sub(got as u64);
                    self.mcap.notify_read(got);
                }
                LinearReadEvent::Record { opcode, data } => {
                    match self.decoder.record(opcode, data) {
                        Ok(None) => {}
                        Ok(Some(event)) => return Some(Ok(event)),
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }
}

impl Iterator for SessionReader {
    type Item = Result<SessionEvent, SessionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.pending.take() {
            return Some(item);
        }
        if self.done {
            return None;
        }
        let item = self.advance();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

/// Record-level state: which channel is which, metadata, and the per-channel order checks.
struct Decoder {
    /// The file, for error messages.
    path: PathBuf,
    /// Schema id to (name, encoding), to check a known topic is what we think it is.
    schemas: HashMap<u16, (String, String)>,
    /// Channel id to where its messages go.
    channels: HashMap<u16, Route>,
    /// Merged `echoview` metadata.
    metadata: BTreeMap<String, String>,
    /// The metadata came whole from the summary; records met while streaming are not merged
    /// again, which would let an early record overwrite a later one.
    metadata_complete: bool,
    /// Skipped messages per unknown topic.
    skipped: BTreeMap<String, u64>,
    /// Events delivered.
    messages_read: u64,
    /// Last log time per stream, to reject time going backwards on a channel.
    last_t_ns: [Option<u64>; Stream::ALL.len()],
    /// Last frame number, to unwrap the 32-bit MCAP sequence field.
    last_seq: Option<u64>,
    /// The data section has ended; summary records repeat what was read and are skipped.
    past_data_end: bool,
    /// Skip video messages that do not decode, rather than end the stream there.
    skip_bad_frames: bool,
    /// Video messages skipped so.
    bad_frames: u64,
    /// Why the latest of them was skipped.
    last_bad_frame: Option<String>,
}

impl Decoder {
    /// A decoder that has seen no records yet.
    fn new(path: &Path) -> Decoder {
        Decoder {
            path: path.to_path_buf(),
            schemas: HashMap::new(),
            channels: HashMap::new(),
            metadata: BTreeMap::new(),
            metadata_complete: false,
            skipped: BTreeMap::new(),
            messages_read: 0,
            last_t_ns: [None; Stream::ALL.len()],
            last_seq: None,
            past_data_end: false,
            skip_bad_frames: false,
            bad_frames: 0,
            last_bad_frame: None,
        }
    }

    /// Translates an MCAP-layer failure into what it means for the recording.
    fn mcap_error(&self, e: McapError) -> SessionError {
        let path = self.path.clone();
        let messages_read = self.messages_read;
        match e {
            McapError::UnexpectedEof => SessionError::Truncated {
                path,
                messages_read,
            },
            McapError::Io(source) => SessionError::Read { path, source },
            McapError::BadChunkCrc { .. } => SessionError::Corrupt {
                path,
                messages_read,
                detail: format!("a chunk fails its CRC check ({e}); its messages are not used"),
            },
            other => SessionError::Corrupt {
                path,
                messages_read,
                detail: other.to_string(),
            },
        }
    }

    /// A [`SessionError::Corrupt`] for this file at the current message count.
    fn corrupt(&self, detail: String) -> SessionError {
        SessionError::Corrupt {
            path: self.path.clone(),
            messages_read: self.messages_read,
            detail,
        }
    }

    /// Handles one record; returns the event it carries, if any.
    fn record(&mut self, opcode: u8, data: &[u8]) -> Result<Option<SessionEvent>, SessionError> {
        if opcode == op::DATA_END {
            self.past_data_end = true;
        }
        let wanted = matches!(
            opcode,
            op::SCHEMA | op::CHANNEL | op::MESSAGE | op::METADATA
        );
        if self.past_data_end || !wanted {
            return Ok(None);
        }
        let record = mcap::parse_record(opcode, data)
            .map_err(|e| self.corrupt(format!("record {opcode:#04x} does not parse: {e}")))?;
        match record {
            Record::Schema { header, .. } => {
                self.schemas
                    .insert(header.id, (header.name, header.encoding));
                Ok(None)
            }
            Record::Channel(channel) => {
                self.channel(channel)?;
                Ok(None)
            }
            Record::Metadata(m) => {
                if m.name == METADATA_NAME && !self.metadata_complete {
                    self.metadata.extend(m.metadata);
                }
                Ok(None)
            }
            Record::Message { header, data } => {
                let stream = match self.channels.get(&header.channel_id) {
                    Some(Route::Known(stream)) => *stream,
                    Some(Route::Skip(topic)) => {
                        match self.skipped.get_mut(topic) {
                            Some(n) => *n += 1,
                            None => {
                                self.skipped.insert(topic.clone(), 1);
                            }
                        }
                        return Ok(None);
                    }
                    None => {
                        return Err(self.corrupt(format!(
                            "a message refers to channel {}, which was never defined",
                            header.channel_id
                        )));
                    }
                };
                let event = match self.message(stream, header.log_time, header.sequence, &data) {
                    Ok(event) => event,
                    Err(detail) => {
                        let error = SessionError::BadMessage {
                            path: self.path.clone(),
                            topic: stream.spec().topic.to_string(),
                            t_ns: header.log_time,
                            detail,
                        };
                        let video = matches!(stream, Stream::Video | Stream::VideoCompressed);
                        if !(self.skip_bad_frames && video) {
                            return Err(error);
                        }
                        self.bad_frames += 1;
                        self.last_bad_frame = Some(error.to_string());
                        return Ok(None);
                    }
                };
                self.last_t_ns[stream.index()] = Some(header.log_time);
                self.messages_read += 1;
                Ok(Some(event))
            }
            _ => Ok(None),
        }
    }

    /// Registers a channel, checking that a topic of ours carries the schema we decode.
    fn channel(&mut self, channel: mcap::records::Channel) -> Result<(), SessionError> {
        let route = match Stream::from_topic(&channel.topic) {
            None => Route::Skip(channel.topic.clone()),
            Some(stream) => {
                let spec = stream.spec();
                let (schema_name, schema_encoding) = match self.schemas.get(&channel.schema_id) {
                    Some((name, encoding)) => (name.as_str(), encoding.as_str()),
                    None if channel.schema_id == 0 => ("no schema", ""),
                    None => {
                        return Err(self.corrupt(format!(
                            "channel {} refers to schema {}, which was never defined",
                            channel.topic, channel.schema_id
                        )));
                    }
                };
                if schema_name != spec.schema_name
                    || schema_encoding != spec.schema_encoding
                    || channel.message_encoding != spec.message_encoding
                {
                    return Err(SessionError::UnexpectedChannel {
                        path: self.path.clone(),
                        topic: channel.topic,
                        found: format!(
                            "{schema_name} ({schema_encoding}) in {}",
                            channel.message_encoding
                        ),
                        expected: format!(
                            "{} ({}) in {}",
                            spec.schema_name, spec.schema_encoding, spec.message_encoding
                        ),
                    });
                }
                Route::Known(stream)
            }
        };
        match self.channels.get(&channel.id) {
            Some(existing) if *existing != route => Err(self.corrupt(format!(
                "channel id {} is defined twice, with different topics",
                channel.id
            ))),
            _ => {
                self.channels.insert(channel.id, route);
                Ok(())
            }
        }
    }

    /// Decodes one message of a known stream; the error says what is wrong with it.
    fn message(
        &mut self,
        stream: Stream,
        t_ns: u64,
        sequence: u32,
        data: &[u8],
    ) -> Result<SessionEvent, String> {
        if let Some(prev) = self.last_t_ns[stream.index()]
            && t_ns < prev
        {
            return Err(format!(
                "its time goes back from {prev} ns; a channel's messages must be in time order"
            ));
        }
        match stream {
            Stream::Video | Stream::VideoCompressed => {
                let frame = if stream == Stream::Video {
                    decode_frame(t_ns, sequence, self.last_seq, data)?
                } else {
                    decode_compressed_frame(t_ns, sequence, self.last_seq, data)?
                };
                self.last_seq = Some(frame.seq);
                Ok(SessionEvent::Frame(frame))
            }
            Stream::Ecg => {
                let msg: EcgIn = parse_json(data)?;
                if msg.t0_ns != t_ns {
                    return Err(format!(
                        "t0_ns {} differs from the message time; they must be equal",
                        msg.t0_ns
                    ));
                }
                if !(msg.fs_hz.is_finite() && msg.fs_hz > 0.0) {
                    return Err(format!("sampling rate {} Hz is not positive", msg.fs_hz));
                }
                Ok(SessionEvent::Ecg(EcgBlock {
                    first_index: msg.first_index,
                    t0_ns: msg.t0_ns,
                    fs_hz: msg.fs_hz,
                    samples_mv: msg
                        .samples_mv
                        .into_iter()
                        .map(|s| s.unwrap_or(f32::NAN))
                        .collect(),
                    lead_off: msg.lead_off,
                }))
            }
            Stream::TruthView => {
                let msg: TruthViewIn = parse_json(data)?;
                let view = View::from_name(&msg.view)
                    .ok_or_else(|| UnknownView(msg.view.clone()).to_string())?;
                Ok(SessionEvent::TruthView { t_ns, view })
            }
            Stream::TruthRPeak => {
                let msg: TruthRPeakIn = parse_json(data)?;
                Ok(SessionEvent::TruthRPeak {
                    t_ns,
                    sample_index: msg.sample_index,
                })
            }
            Stream::Labels => {
                let value: serde_json::Value = parse_json(data)?;
                if !value.is_object() {
                    return Err("a label must be a JSON object".to_string());
                }
                Ok(SessionEvent::Label { t_ns, value })
            }
        }
    }
}

/// Parses a JSON payload, keeping serde's position information in the error.
fn parse_json<'a, T: serde::Deserialize<'a>>(data: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(data).map_err(|e| format!("malformed JSON: {e}"))
}

/// Rebuilds a frame from a `/video` message, checking that its sizes add up.
fn decode_frame(
    t_ns: u64,
    sequence: u32,
    last_seq: Option<u64>,
    data: &[u8],
) -> Result<Frame, String> {
    let msg = ImageMsg::decode(data)?;
    check_stamp(t_ns, msg.sec, msg.nanosec)?;
    let format = cdr::format_from_encoding(msg.encoding).ok_or_else(|| {
        format!(
            "image encoding {:?} is not one echoview reads ({})",
            msg.encoding,
            cdr::ENCODINGS_READ
        )
    })?;
    let row = format.min_stride(msg.width);
    // Uncompressed formats always have a length; 0 only makes the check below fail.
    let need = format.image_len(msg.step, msg.height).unwrap_or(0);
    let formula = match format {
        PixelFormat::Nv12 => "step * (height + ceil(height / 2))",
        _ => "step * height",
    };
    if u64::from(msg.step) < row || msg.data.len() as u64 != need {
        return Err(format!(
            "{} bytes of pixels with step {} do not make a {}x{} {} image (rows of {} bytes, \
             {formula} = {})",
            msg.data.len(),
            msg.step,
            msg.width,
            msg.height,
            msg.encoding,
            row,
            need
        ));
    }
    let seq = unwrap_seq(last_seq, sequence)?;
    let frame = Frame {
        seq,
        t_ns,
        width: msg.width,
        height: msg.height,
        stride: msg.step,
        format,
        data: msg.data.to_vec(),
    };
    frame.validate()?;
    Ok(frame)
}

/// Rebuilds a Motion-JPEG frame from a `/video/compressed` message; its size is read from the
/// JPEG's own header.
fn decode_compressed_frame(
    t_ns: u64,
    sequence: u32,
    last_seq: Option<u64>,
    data: &[u8],
) -> Result<Frame, String> {
    let msg = CompressedImageMsg::decode(data)?;
    check_stamp(t_ns, msg.sec, msg.nanosec)?;
    if msg.format != cdr::JPEG_FORMAT {
        return Err(format!(
            "compressed format {:?} is not one echoview reads ({})",
            msg.format,
            cdr::JPEG_FORMAT
        ));
    }
    let info = crate::jpeg::info(msg.data).map_err(|e| e.to_string())?;
    let frame = Frame {
        seq: unwrap_seq(last_seq, sequence)?,
        t_ns,
        width: info.width,
        height: info.height,
        stride: 0,
        format: PixelFormat::Mjpeg,
        data: msg.data.to_vec(),
    };
    frame.validate()?;
    Ok(frame)
}

/// Checks that a message's header stamp is its log time.
fn check_stamp(t_ns: u64, sec: i32, nanosec: u32) -> Result<(), String> {
    let stamp = u64::try_from(sec)
        .ok()
        .filter(|_| nanosec < 1_000_000_000)
        .map(|sec| sec * 1_000_000_000 + u64::from(nanosec));
    if stamp != Some(t_ns) {
        return Err(format!(
            "header stamp {sec}.{nanosec:09} s differs from the message time"
        ));
    }
    Ok(())
}

/// The frame number whose low 32 bits are `sequence`: the first one after `last`, which the
/// writer guarantees is less than 2^31 ahead.
fn unwrap_seq(last: Option<u64>, sequence: u32) -> Result<u64, String> {
    let Some(last) = last else {
        return Ok(u64::from(sequence));
    };
    let mut seq = (last & !u64::from(u32::MAX)) | u64::from(sequence);
    if seq <= last {
        seq = seq
            .checked_add(1 << 32)
            .ok_or_else(|| "frame number overflows 64 bits".to_string())?;
    }
    if seq - last >= 1 << 31 {
        return Err(format!(
            "frame sequence {sequence} does not follow frame {last}; frame numbers must increase"
        ));
    }
    Ok(seq)
}

/// Reads into `buf`, retrying reads a signal interrupted (which are not end of file).
fn read_retrying(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match source.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Checks the MCAP magic at the start, telling a foreign file from one cut inside its magic.
fn check_magic(path: &Path, file: &mut File) -> Result<(), SessionError> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match read_retrying(file, &mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(source) => {
                return Err(SessionError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    let head = &head[..got];
    if head == &MAGIC[..got] && got < MAGIC.len() {
        return Err(SessionError::Truncated {
            path: path.to_path_buf(),
            messages_read: 0,
        });
    }
    if head != MAGIC {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        return Err(SessionError::NotMcap {
            path: path.to_path_buf(),
            found: format!(
                "it starts with {} instead of the MCAP magic 89 4d 43 41 50 30 0d 0a",
                hex.join(" ")
            ),
        });
    }
    Ok(())
}

/// Reads the summary section of a finished file: totals, and the merged metadata if every
/// `echoview` record it indexes reads back. `None` for unfinished or damaged files, which the
/// linear read then reports properly.
fn read_summary(
    file: &mut File,
    len: u64,
) -> Option<(SessionSummary, Option<BTreeMap<String, String>>)> {
    let mut reader = SummaryReader::new_with_options(
        SummaryReaderOptions::default()
            .with_file_size(len)
            .with_record_length_limit(RECORD_LIMIT),
    );
    while let Some(event) = reader.next_event() {
        match event.ok()? {
            SummaryReadEvent::ReadRequest(n) => {
                let got = read_retrying(file, reader.insert(n)).ok()?;
                reader.notify_read(got);
            }
            SummaryReadEvent::SeekRequest(to) => {
                let pos = file.seek(to).ok()?;
                reader.notify_seeked(pos);
            }
        }
    }
    let summary = reader.finish()?;
    let stats = summary.stats?;
    let mut message_counts = BTreeMap::new();
    for (id, count) in &stats.channel_message_counts {
        let channel = summary.channels.get(id)?;
        *message_counts.entry(channel.topic.clone()).or_insert(0) += count;
    }
    let totals = SessionSummary {
        message_counts,
        start_ns: stats.message_start_time,
        end_ns: stats.message_end_time,
    };
    // The metadata is only complete from the summary if every metadata record is indexed;
    // otherwise the linear read collects it.
    if summary.metadata_indexes.len() as u64 != u64::from(stats.metadata_count) {
        return Some((totals, None));
    }
    let mut indexes: Vec<&MetadataIndex> = summary
        .metadata_indexes
        .iter()
        .filter(|m| m.name == METADATA_NAME)
        .collect();
    indexes.sort_by_key(|m| m.offset);
    let mut metadata = Some(BTreeMap::new());
    for index in indexes {
        match read_metadata_record(file, len, index) {
            Some(entries) => metadata.as_mut()?.extend(entries),
            None => {
                metadata = None;
                break;
            }
        }
    }
    Some((totals, metadata))
}

/// Reads the metadata record a summary index points at, or `None` if it is not one.
fn read_metadata_record(
    file: &mut File,
    len: u64,
    index: &MetadataIndex,
) -> Option<BTreeMap<String, String>> {
    // Opcode and length prefix the record body.
    const PREFIX: u64 = 9;
    let end = index.offset.checked_add(index.length)?;
    if index.length < PREFIX || end > len || index.length > RECORD_LIMIT as u64 {
        return None;
    }
    let mut buf = vec![0u8; usize::try_from(index.length).ok()?];
    file.seek(SeekFrom::Start(index.offset)).ok()?;
    file.read_exact(&mut buf).ok()?;
    let (prefix, body) = buf.split_at(PREFIX as usize);
    let body_len = u64::from_le_bytes(prefix[1..].try_into().ok()?);
    if prefix[0] != op::METADATA || body_len != index.length - PREFIX {
        return None;
    }
    match mcap::parse_record(op::METADATA, body).ok()? {
        Record::Metadata(m) if m.name == METADATA_NAME => Some(m.metadata),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_unwraps_across_the_32_bit_boundary() {
        let max = u64::from(u32::MAX);
        assert_eq!(unwrap_seq(None, 7), Ok(7));
        assert_eq!(unwrap_seq(Some(max - 1), u32::MAX), Ok(max));
        assert_eq!(unwrap_seq(Some(max), 0), Ok(max + 1));
        assert_eq!(unwrap_seq(Some(max - 5), 3), Ok(max + 4));
        assert_eq!(unwrap_seq(Some(max + 1), 1), Ok(max + 2));
        // A repeated or backwards frame number is an error, not a jump of 2^32.
        assert!(unwrap_seq(Some(10), 10).is_err());
        assert!(unwrap_seq(Some(10), 9).is_err());
        assert!(unwrap_seq(Some(u64::MAX - 1), 0).is_err());
    }
}
