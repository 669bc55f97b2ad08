//! Round trips through real files, and the reader's behaviour on cut, damaged and foreign ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mcap::records::MessageHeader;
use serde_json::json;

use super::schema::Stream;
use super::*;
use crate::media::{EcgBlock, Frame, PixelFormat};
use crate::views::View;

/// A deterministic pixel pattern that differs per frame, so a mixed-up frame is caught.
fn frame(seq: u64, t_ns: u64, width: u32, height: u32, stride: u32, format: PixelFormat) -> Frame {
    let data = (0..stride as usize * height as usize)
        .map(|i| (i as u64 * 31 + seq * 7) as u8)
        .collect();
    Frame {
        seq,
        t_ns,
        width,
        height,
        stride,
        format,
        data,
    }
}

fn ecg(first_index: u64, t0_ns: u64, n: usize) -> EcgBlock {
    EcgBlock {
        first_index,
        t0_ns,
        fs_hz: 500.0,
        samples_mv: (0..n)
            .map(|i| ((first_index + i as u64) as f32 * 0.37).sin() * 1.25)
            .collect(),
        lead_off: first_index.is_multiple_of(3),
    }
}

fn source_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("source".to_string(), "sim seed=7".to_string()),
        ("created_by".to_string(), "session tests".to_string()),
    ])
}

/// Writes a session with every stream interleaved as a recorder would; returns what it wrote.
fn write_session(path: &Path, chunk_size: u64, frames: u64) -> Vec<SessionEvent> {
    let mut w = SessionWriter::create_with_chunk_size(path, chunk_size).unwrap();
    w.write_metadata(&source_metadata()).unwrap();
    let mut events = Vec::new();
    for i in 0..frames {
        let t = 1_000_000_000 + i * 33_333_333;
        let f = if i % 2 == 0 {
            frame(i + 100, t, 33, 5, 35, PixelFormat::Grey8)
        } else {
            frame(i + 100, t, 8, 3, 20, PixelFormat::Yuyv)
        };
        w.write_frame(&f).unwrap();
        events.push(SessionEvent::Frame(f));
        let view = View::ALL[(i / 4) as usize % View::ALL.len()];
        w.write_truth_view(t, view).unwrap();
        events.push(SessionEvent::TruthView { t_ns: t, view });
        let block = ecg(i * 16, t, 16);
        w.write_ecg(&block).unwrap();
        events.push(SessionEvent::Ecg(block));
        if i % 5 == 4 {
            w.write_truth_rpeak(t + 1_000, i * 16 + 3).unwrap();
            events.push(SessionEvent::TruthRPeak {
                t_ns: t + 1_000,
                sample_index: i * 16 + 3,
            });
            let value = json!({"view": "A4C", "confidence": 0.75, "beat": i});
            w.write_label(t + 2_000, &value).unwrap();
            events.push(SessionEvent::Label {
                t_ns: t + 2_000,
                value,
            });
        }
    }
    w.finish().unwrap();
    events
}

fn read_all(path: &Path) -> (Vec<SessionEvent>, Option<SessionError>) {
    let reader = SessionReader::open(path).unwrap();
    let mut events = Vec::new();
    for item in reader {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn every_stream_round_trips_with_metadata_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let written = write_session(&path, CHUNK_SIZE, 20);

    let mut reader = SessionReader::open(&path).unwrap();
    let meta = reader.metadata().clone();
    assert_eq!(meta["source"], "sim seed=7");
    assert_eq!(meta["created_by"], "session tests");
    assert_eq!(meta["format_version"], FORMAT_VERSION.to_string());
    assert!(meta["writer"].starts_with("echoview "), "{meta:?}");
    assert_eq!(reader.has_truth(), Some(true));
    let summary = reader.summary().unwrap().clone();
    assert_eq!(summary.message_counts["/video"], 20);
    assert_eq!(summary.message_counts["/labels"], 4);
    assert_eq!(summary.start_ns, 1_000_000_000);
    assert_eq!(summary.end_ns, 1_000_000_000 + 19 * 33_333_333 + 2_000);

    let read: Vec<SessionEvent> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(read, written);
    assert_eq!(reader.messages_read(), written.len() as u64);
    assert!(reader.skipped().is_empty());
}

#[test]
fn a_session_without_truth_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut w = SessionWriter::create(&path).unwrap();
    w.write_frame(&frame(0, 5, 4, 2, 4, PixelFormat::Grey8))
        .unwrap();
    w.finish().unwrap();
    let reader = SessionReader::open(&path).unwrap();
    assert_eq!(reader.has_truth(), Some(false));
    assert_eq!(reader.summary().unwrap().message_counts.len(), 1);
}

#[test]
fn pixels_past_the_image_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut f = frame(1, 10, 4, 2, 5, PixelFormat::Grey8);
    let image = f.clone();
    f.data.extend_from_slice(&[9, 9, 9]);
    let mut w = SessionWriter::create(&path).unwrap();
    w.write_frame(&f).unwrap();
    w.finish().unwrap();
    assert_eq!(read_all(&path).0, vec![SessionEvent::Frame(image)]);
}

#[test]
fn ecg_samples_keep_their_exact_bits_and_non_finite_ones_read_as_nan() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    // Finite f32 across magnitudes from a fixed generator: JSON must not round any of them.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut samples: Vec<f32> = (0..20_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let exponent = 100 + (state % 56) as u32; // 2^-27 .. 2^28
            f32::from_bits(((state >> 32) as u32 & 0x807f_ffff) | exponent << 23)
        })
        .collect();
    samples.extend([0.0, -0.0, f32::MIN_POSITIVE, 1.0e-3, -12.5]);
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    let block = EcgBlock {
        first_index: 0,
        t0_ns: 0,
        fs_hz: 1000.0 / 3.0,
        samples_mv: samples.iter().copied().chain(specials).collect(),
        lead_off: false,
    };
    let mut w = SessionWriter::create(&path).unwrap();
    w.write_ecg(&block).unwrap();
    w.finish().unwrap();
    let (events, err) = read_all(&path);
    assert!(err.is_none(), "{err:?}");
    let [SessionEvent::Ecg(back)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(back.fs_hz, block.fs_hz);
    let (finite, rest) = back.samples_mv.split_at(samples.len());
    for (a, b) in samples.iter().zip(finite) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a} read back as {b}");
    }
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|s| s.is_nan()));
}

#[test]
fn frame_numbers_survive_the_32_bit_sequence_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let first = u64::from(u32::MAX) - 2;
    let seqs = [
        first,
        first + 1,
        first + 3,
        first + 4,
        first + 9,
        first + 70_000,
    ];
    let mut w = SessionWriter::create(&path).unwrap();
    let frames: Vec<Frame> = seqs
        .iter()
        .enumerate()
        .map(|(i, &s)| frame(s, i as u64 * 10, 2, 2, 2, PixelFormat::Grey8))
        .collect();
    for f in &frames {
        w.write_frame(f).unwrap();
    }
    w.finish().unwrap();
    let read: Vec<u64> = read_all(&path)
        .0
        .into_iter()
        .map(|e| match e {
            SessionEvent::Frame(f) => f.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(read, seqs);
}

#[test]
fn large_sessions_are_cut_into_several_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut w = SessionWriter::create(&path).unwrap();
    let mut written = Vec::new();
    // 320x240 grey frames of 75 KiB; 60 of them are over four default chunks.
    for i in 0..60 {
        let f = frame(i, i * 33_333_333, 320, 240, 320, PixelFormat::Grey8);
        w.write_frame(&f).unwrap();
        written.push(SessionEvent::Frame(f));
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let summary = mcap::Summary::read(&bytes).unwrap().unwrap();
    let chunks = summary.stats.unwrap().chunk_count;
    assert!((4..=6).contains(&chunks), "{chunks} chunks");
    let (read, err) = read_all(&path);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(read, written);
}

#[test]
fn a_cut_file_yields_its_intact_chunks_then_a_truncation_error() {
    let dir = tempfile::tempdir().unwrap();
    let full_path = temp_path(&dir, "full.mcap");
    let written = write_session(&full_path, 2048, 30);
    let bytes = std::fs::read(&full_path).unwrap();
    let cut_path = temp_path(&dir, "cut.mcap");
    let mut previous = 0;
    let mut saw_partial = false;
    let cuts = (0..bytes.len()).filter(|c| *c < 600 || c % 97 == 0 || bytes.len() - c < 600);
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let reader = match SessionReader::open(&cut_path) {
            Ok(reader) => reader,
            Err(SessionError::Truncated { messages_read, .. }) if cut < 8 => {
                assert_eq!(messages_read, 0);
                continue;
            }
            Err(e) => panic!("cut at {cut}: {e}"),
        };
        if cut > 600 {
            assert_eq!(reader.metadata()["source"], "sim seed=7", "cut at {cut}");
        }
        let items: Vec<_> = reader.collect();
        let (last, events) = items.split_last().unwrap();
        let events: Vec<SessionEvent> =
            events.iter().map(|e| e.as_ref().unwrap().clone()).collect();
        match last {
            Err(SessionError::Truncated { messages_read, .. }) => {
                assert_eq!(*messages_read as usize, events.len(), "cut at {cut}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
        assert_eq!(events[..], written[..events.len()], "cut at {cut}");
        assert!(events.len() >= previous, "cut at {cut}");
        previous = events.len();
        saw_partial |= !events.is_empty() && events.len() < written.len();
    }
    assert!(saw_partial, "no cut landed between chunks");
    assert_eq!(
        previous,
        written.len(),
        "a cut in the summary keeps every message"
    );
}

#[test]
fn damaged_bytes_give_an_error_and_never_a_wrong_event() {
    let dir = tempfile::tempdir().unwrap();
    let full_path = temp_path(&dir, "full.mcap");
    let written = write_session(&full_path, 2048, 12);
    let bytes = std::fs::read(&full_path).unwrap();
    let bad_path = temp_path(&dir, "bad.mcap");
    let offsets = (0..bytes.len()).filter(|c| *c < 400 || c % 23 == 0 || bytes.len() - c < 700);
    let mut checked = 0;
    for offset in offsets {
        // A low bit or a whole byte, alternating, so both kinds of damage are seen quickly.
        let flip = if offset % 2 == 0 { 0x01u8 } else { 0xff };
        let mut bad = bytes.clone();
        bad[offset] ^= flip;
        std::fs::write(&bad_path, &bad).unwrap();
        checked += 1;
        let Ok(reader) = SessionReader::open(&bad_path) else {
            continue;
        };
        let items: Vec<_> = reader.collect();
        assert!(
            items.last().is_some_and(Result::is_err),
            "flip {flip:#x} at {offset} went unnoticed"
        );
        let events = items.iter().map_while(|i| i.as_ref().ok());
        for (i, e) in events.enumerate() {
            assert_eq!(e, &written[i], "flip {flip:#x} at {offset}");
        }
    }
    assert!(checked > 1000, "{checked} offsets");
}

#[test]
fn a_crash_loses_only_the_chunk_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "live.mcap");
    let mut w = SessionWriter::create(&path).unwrap();
    w.write_metadata(&source_metadata()).unwrap();
    let frames: Vec<Frame> = (0..6)
        .map(|i| frame(i, i * 10, 16, 4, 16, PixelFormat::Grey8))
        .collect();
    for f in &frames[..5] {
        w.write_frame(f).unwrap();
    }
    w.flush().unwrap();
    w.write_frame(&frames[5]).unwrap();
    // What a crash now would leave on disk.
    let crashed = temp_path(&dir, "crashed.mcap");
    std::fs::copy(&path, &crashed).unwrap();
    w.finish().unwrap();

    let reader = SessionReader::open(&crashed).unwrap();
    assert_eq!(reader.summary(), None);
    assert_eq!(reader.has_truth(), None);
    assert_eq!(reader.metadata()["source"], "sim seed=7");
    let items: Vec<_> = reader.collect();
    assert_eq!(items.len(), 6, "{items:?}");
    for (item, f) in items[..5].iter().zip(&frames) {
        assert_eq!(item.as_ref().unwrap(), &SessionEvent::Frame(f.clone()));
    }
    let err = items[5].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("crashed.mcap") && err.contains("after 5 intact messages"),
        "{err}"
    );
}

#[test]
fn foreign_and_empty_files_are_named_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "notes.txt");
    std::fs::write(&path, "{\"hello\": 1}\n").unwrap();
    let err = SessionReader::open(&path).err().unwrap().to_string();
    assert!(err.contains("notes.txt is not an MCAP session"), "{err}");
    assert!(err.contains("7b 22 68 65"), "{err}");

    let empty = temp_path(&dir, "empty.mcap");
    std::fs::write(&empty, b"").unwrap();
    let err = SessionReader::open(&empty).err().unwrap();
    assert!(
        matches!(
            err,
            SessionError::Truncated {
                messages_read: 0,
                ..
            }
        ),
        "{err}"
    );

    let missing = temp_path(&dir, "missing.mcap");
    let err = SessionReader::open(&missing).err().unwrap().to_string();
    assert!(err.contains("missing.mcap"), "{err}");
}

#[test]
fn the_writer_refuses_what_the_format_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut w = SessionWriter::create(&path).unwrap();
    let err = SessionWriter::create(&path).err().unwrap().to_string();
    assert!(
        err.contains("s.mcap") && err.contains("never overwritten"),
        "{err}"
    );

    w.write_frame(&frame(5, 100, 4, 2, 4, PixelFormat::Grey8))
        .unwrap();
    let cases: Vec<(SessionError, &str)> = vec![
        (
            w.write_frame(&frame(5, 200, 4, 2, 4, PixelFormat::Grey8))
                .unwrap_err(),
            "frame numbers must increase",
        ),
        (
            w.write_frame(&frame(6, 99, 4, 2, 4, PixelFormat::Grey8))
                .unwrap_err(),
            "in time order",
        ),
        (
            w.write_frame(&frame(6, 200, 4, 2, 3, PixelFormat::Grey8))
                .unwrap_err(),
            "stride 3 is shorter",
        ),
        (
            w.write_frame(&frame(6 + (1 << 31), 200, 4, 2, 4, PixelFormat::Grey8))
                .unwrap_err(),
            "start a new session",
        ),
        (
            w.write_ecg(&EcgBlock {
                fs_hz: 0.0,
                ..ecg(0, 0, 4)
            })
            .unwrap_err(),
            "finite and positive",
        ),
        (
            w.write_label(5, &json!(["A4C"])).unwrap_err(),
            "must be a JSON object",
        ),
        (
            w.write_metadata(&BTreeMap::from([("writer".into(), "me".into())]))
                .unwrap_err(),
            "set by the writer",
        ),
    ];
    for (err, expected) in cases {
        let text = err.to_string();
        assert!(matches!(err, SessionError::InvalidInput { .. }), "{text}");
        assert!(text.contains("s.mcap") && text.contains(expected), "{text}");
    }
    // The refused writes left the session intact and writable.
    w.write_frame(&frame(6, 200, 4, 2, 4, PixelFormat::Grey8))
        .unwrap();
    w.finish().unwrap();
    assert_eq!(read_all(&path).0.len(), 2);
}

/// Writes an MCAP file by hand, to feed the reader what our writer never would.
struct RawFile {
    writer: mcap::Writer<std::io::BufWriter<std::fs::File>>,
    time: u64,
}

impl RawFile {
    fn create(path: &Path, metadata: &[(&str, &str)]) -> RawFile {
        let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let mut writer = mcap::Writer::new(file).unwrap();
        let metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        writer
            .write_metadata(&mcap::records::Metadata {
                name: "echoview".into(),
                metadata,
            })
            .unwrap();
        RawFile { writer, time: 0 }
    }

    fn channel(&mut self, topic: &str, schema: &str, encoding: &str, text: &str) -> u16 {
        let schema = self
            .writer
            .add_schema(schema, "jsonschema", text.as_bytes())
            .unwrap();
        self.writer
            .add_channel(schema, topic, encoding, &BTreeMap::new())
            .unwrap()
    }

    fn ours(&mut self, stream: Stream) -> u16 {
        let spec = stream.spec();
        let schema = self
            .writer
            .add_schema(
                spec.schema_name,
                spec.schema_encoding,
                spec.schema_text.as_bytes(),
            )
            .unwrap();
        self.writer
            .add_channel(schema, spec.topic, spec.message_encoding, &BTreeMap::new())
            .unwrap()
    }

    fn message(&mut self, channel_id: u16, payload: &[u8]) {
        self.time += 1;
        let header = MessageHeader {
            channel_id,
            sequence: 0,
            log_time: self.time,
            publish_time: self.time,
        };
        self.writer
            .write_to_known_channel(&header, payload)
            .unwrap();
    }

    fn finish(mut self) {
        self.writer.finish().unwrap();
    }
}

#[test]
fn unknown_channels_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut raw = RawFile::create(&path, &[("format_version", "1")]);
    let imu = raw.channel("/imu", "x.Imu", "json", "{}");
    let labels = raw.ours(Stream::Labels);
    raw.message(imu, b"{\"ax\": 1}");
    raw.message(labels, b"{\"view\": \"PLAX\", \"extra\": [1, 2]}");
    raw.message(imu, b"{\"ax\": 2}");
    raw.finish();
    let mut reader = SessionReader::open(&path).unwrap();
    let events: Vec<_> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(
        events,
        vec![SessionEvent::Label {
            t_ns: 2,
            value: json!({"view": "PLAX", "extra": [1, 2]})
        }]
    );
    assert_eq!(reader.skipped(), &BTreeMap::from([("/imu".to_string(), 2)]));
    assert_eq!(reader.summary().unwrap().message_counts["/imu"], 2);
}

/// Reads a hand-made file and returns the first error's text.
fn first_error(path: &Path) -> String {
    match SessionReader::open(path) {
        Err(e) => e.to_string(),
        Ok(reader) => reader
            .filter_map(Result::err)
            .next()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    }
}

#[test]
fn bad_messages_on_known_channels_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let view_path = temp_path(&dir, "view.mcap");
    let mut raw = RawFile::create(&view_path, &[]);
    let ch = raw.ours(Stream::TruthView);
    raw.message(ch, b"{\"view\": \"A6C\"}");
    raw.finish();
    let err = first_error(&view_path);
    assert!(
        err.contains("view.mcap") && err.contains("/truth/view"),
        "{err}"
    );
    assert!(
        err.contains("unknown view \"A6C\"") && err.contains("PSAX-mid"),
        "{err}"
    );

    let json_path = temp_path(&dir, "json.mcap");
    let mut raw = RawFile::create(&json_path, &[]);
    let ch = raw.ours(Stream::Ecg);
    raw.message(ch, b"{\"first_index\": 0, \"t0_ns\": ");
    raw.finish();
    let err = first_error(&json_path);
    assert!(
        err.contains("/ecg") && err.contains("malformed JSON"),
        "{err}"
    );

    let video_path = temp_path(&dir, "video.mcap");
    let mut raw = RawFile::create(&video_path, &[]);
    let ch = raw.ours(Stream::Video);
    let pixels = [0u8; 10];
    let mut payload = Vec::new();
    cdr::ImageMsg {
        sec: 0,
        nanosec: 1,
        frame_id: "x",
        height: 3,
        width: 4,
        encoding: "mono8",
        is_bigendian: 0,
        step: 4,
        data: &pixels,
    }
    .encode(&mut payload)
    .unwrap();
    raw.message(ch, &payload);
    raw.finish();
    let err = first_error(&video_path);
    assert!(
        err.contains("/video") && err.contains("10 bytes of pixels"),
        "{err}"
    );
    assert!(err.contains("step * height = 12"), "{err}");
}

#[test]
fn a_known_topic_with_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut raw = RawFile::create(&path, &[]);
    let ch = raw.channel("/video", "foxglove.CompressedImage", "json", "{}");
    raw.message(ch, b"{}");
    raw.finish();
    let err = first_error(&path);
    assert!(
        err.contains("channel /video is foxglove.CompressedImage"),
        "{err}"
    );
    assert!(
        err.contains("sensor_msgs/msg/Image (ros2msg) in cdr"),
        "{err}"
    );
}

#[test]
fn a_newer_format_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    RawFile::create(&path, &[("format_version", "2")]).finish();
    let err = first_error(&path);
    assert!(
        err.contains("session format 2") && err.contains("update echoview"),
        "{err}"
    );
}

#[test]
fn time_going_back_on_a_channel_is_refused_on_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "s.mcap");
    let mut raw = RawFile::create(&path, &[]);
    let ch = raw.ours(Stream::TruthRPeak);
    raw.time = 10;
    raw.message(ch, b"{\"sample_index\": 1}");
    raw.time = 5;
    raw.message(ch, b"{\"sample_index\": 2}");
    raw.finish();
    let err = first_error(&path);
    assert!(
        err.contains("/truth/rpeak at 6 ns") && err.contains("goes back"),
        "{err}"
    );
}
