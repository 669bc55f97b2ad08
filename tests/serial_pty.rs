//! Serial ECG end to end over real pseudo-terminal pairs: emulator or hand-made bytes on the
//! master side, [`SerialReader`] (thread, port, decoder, clock) on the slave side, reached
//! through a symlink as a cart reaches its board through `/dev/serial/by-id/`.
//!
//! Every sample carries a value that encodes its index, so misalignment is caught exactly.
//! Synchronisation is by channel (events from the reader), never by sleeping; pacing runs
//! faster than real time with the reader told the matching rate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use echoview::media::EcgBlock;
use echoview::serial::binary::{Frame, SampleWidth};
use echoview::serial::command::{ListenArgs, ProtocolArg, listen};
use echoview::serial::emulator::{Encoder, WireFormat};
use echoview::serial::reader::{Now, monotonic_now};
use echoview::serial::{
    AsciiConfig, BinaryConfig, Decoded, Decoder, EcgStream, Emulator, EmulatorConfig, LinkStats,
    Protocol, ReaderConfig, ReaderEvent, SerialReader, StreamConfig, StreamEvent,
};
use serialport::{SerialPort, TTYPort};

const FS: f64 = 500.0;
const BLOCK: usize = 20;
/// Values repeat with this period, so a sample's value names its index modulo it.
const PERIOD: u64 = 1999;

/// The value sent for sample `index`: `index mod 1999` µV, offset to be signed.
fn value(index: u64) -> f32 {
    ((index % PERIOD) as f64 * 0.001 - 0.999) as f32
}

/// What `value(index)` reads as after the wire format's quantisation.
fn on_wire(format: WireFormat, index: u64) -> f32 {
    let v = value(index);
    match format {
        WireFormat::Ascii { mv_per_unit } => {
            (format!("{:.3}", f64::from(v) / mv_per_unit)
                .parse::<f64>()
                .unwrap()
                * mv_per_unit) as f32
        }
        WireFormat::Binary { width } => width.to_mv(width.from_mv(v)),
    }
}

fn block(k: u64) -> EcgBlock {
    let first = k * BLOCK as u64;
    EcgBlock {
        first_index: first,
        t0_ns: (first as f64 * 1e9 / FS) as u64,
        fs_hz: FS,
        samples_mv: (first..first + BLOCK as u64).map(value).collect(),
        lead_off: false,
    }
}

fn protocol(format: WireFormat) -> Protocol {
    match format {
        WireFormat::Ascii { mv_per_unit } => Protocol::Ascii(AsciiConfig {
            lead: 0,
            mv_per_unit,
        }),
        WireFormat::Binary { .. } => Protocol::Binary(BinaryConfig::default()),
    }
}

const ASCII: WireFormat = WireFormat::Ascii { mv_per_unit: 1.0 };
const BINARY: WireFormat = WireFormat::Binary {
    width: SampleWidth::I16,
};

/// A pseudo-terminal whose slave is reached through a symlink that can be re-pointed, as
/// udev re-points `/dev/serial/by-id/...` when a board is replugged.
struct Link {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Link {
    fn new() -> Link {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecg");
        Link { _dir: dir, path }
    }

    /// A new pty pair with the link pointing at its slave: `(master, slave)`; the slave is
    /// only held so the pty lives until the test drops it.
    fn plug(&self) -> (TTYPort, TTYPort) {
        let (mut master, slave) = TTYPort::pair().expect("a pseudo-terminal pair");
        master.set_timeout(Duration::from_secs(5)).unwrap();
        let tmp = self.path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(slave.name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        (master, slave)
    }
}

/// Everything the reader delivered, in order.
#[derive(Default)]
struct Seen {
    /// `(index, value, lead_off)` per sample.
    samples: Vec<(u64, f32, bool)>,
    /// `(first_index, t0_ns, len, received_ns)` per block.
    blocks: Vec<(u64, u64, usize, u64)>,
    lost: Vec<(u64, u64, bool)>,
    stats: LinkStats,
    connects: Vec<u32>,
    disconnects: usize,
    ended: bool,
}

struct Rx {
    reader: SerialReader,
    now: Now,
    seen: Seen,
}

impl Rx {
    fn start(path: &Path, stream: StreamConfig) -> Rx {
        // The session began 10 s before the ECG was plugged in, as on a cart.
        let clock = monotonic_now();
        let now: Now = Arc::new(move || clock() + 10_000_000_000);
        let mut config = ReaderConfig::new(path, stream);
        config.poll = Duration::from_millis(20);
        config.backoff_first = Duration::from_millis(10);
        config.backoff_max = Duration::from_millis(50);
        let reader = SerialReader::spawn(config, Arc::clone(&now)).expect("reader");
        let mut rx = Rx {
            reader,
            now,
            seen: Seen::default(),
        };
        rx.until(|s| !s.connects.is_empty());
        rx
    }

    /// Takes events until `done` holds; fails the test after 5 s.
    fn until(&mut self, mut done: impl FnMut(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .reader
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no event in time ({e}); stats {:?}", self.seen.stats));
            let s = &mut self.seen;
            match event {
                ReaderEvent::Connected { attempt } => s.connects.push(attempt),
                ReaderEvent::Ecg(b) => {
                    let received = (self.now)();
                    s.blocks
                        .push((b.first_index, b.t0_ns, b.samples_mv.len(), received));
                    for (i, &mv) in b.samples_mv.iter().enumerate() {
                        s.samples.push((b.first_index + i as u64, mv, b.lead_off));
                    }
                }
                ReaderEvent::Lost {
                    first_index,
                    count,
                    estimated,
                } => s.lost.push((first_index, count, estimated)),
                ReaderEvent::Stats(stats) => s.stats = stats,
                ReaderEvent::Disconnected { .. } => s.disconnects += 1,
                ReaderEvent::Ended { .. } => s.ended = true,
            }
        }
    }
}

/// Checks that samples have consecutive indices except across the reported losses, that
/// every value is the one sent for its index, and that block times increase. For a `paced`
/// stream also that no sample is stamped after the moment its block was received (a burst of
/// seconds of data in one go can break that: block starts are held back to keep increasing).
fn check_exact(seen: &Seen, format: WireFormat, fs: f64, paced: bool) {
    let mut expected = seen.samples[0].0;
    let mut lost = seen.lost.iter().peekable();
    for &(index, mv, _) in &seen.samples {
        while let Some(&&(first, count, _)) = lost.peek() {
            if first == expected {
                expected += count;
                lost.next();
            } else {
                break;
            }
        }
        assert_eq!(index, expected, "sample index");
        assert_eq!(mv, on_wire(format, index), "value of sample {index}");
        expected += 1;
    }
    let period_ns = 1e9 / fs;
    for pair in seen.blocks.windows(2) {
        let (first, t0, len, _) = pair[0];
        assert!(pair[1].1 > t0, "times increase: {pair:?}");
        assert!(pair[1].0 >= first + len as u64);
    }
    for &(_, t0, len, received) in seen.blocks.iter().filter(|_| paced) {
        assert!(t0 + ((len - 1) as f64 * period_ns) as u64 <= received);
    }
}

fn end_to_end(format: WireFormat) {
    let link = Link::new();
    let (master, _slave) = link.plug();
    let speed = 20.0;
    // The reader is told the rate the samples really arrive at.
    let mut rx = Rx::start(&link.path, StreamConfig::new(protocol(format), FS * speed));
    let mut config = EmulatorConfig::new(format);
    config.speed = Some(speed);
    let mut emulator = Emulator::new(Box::new(master), "pty master", config).unwrap();
    for k in 0..100 {
        emulator.send(&block(k)).unwrap();
    }
    rx.until(|s| s.samples.last().is_some_and(|x| x.0 == 1999));
    let seen = &rx.seen;
    assert_eq!(seen.samples.len(), 2000);
    assert_eq!(seen.samples[0].0, 0);
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
    check_exact(seen, format, FS * speed, true);
    assert_eq!(emulator.stats().dropped_blocks, 0);
    let summary = rx.reader.stop();
    assert_eq!(summary.stats.samples, 2000);
    assert_eq!(summary.stats.crc_errors + summary.stats.bad_lines, 0);
}

#[test]
fn binary_end_to_end() {
    end_to_end(BINARY);
}

#[test]
fn ascii_end_to_end() {
    end_to_end(ASCII);
}

/// `echoview sim --ecg-serial pty`: the emulator makes the pseudo-terminal and names the end
/// a listener opens.
#[test]
fn emulator_on_its_own_pty() {
    let mut config = EmulatorConfig::new(WireFormat::Binary {
        width: SampleWidth::I24,
    });
    config.speed = None;
    let mut emulator = Emulator::open_pty(config).unwrap();
    let mut rx = Rx::start(emulator.device(), StreamConfig::new(protocol(BINARY), FS));
    for k in 0..50 {
        emulator.send(&block(k)).unwrap();
    }
    rx.until(|s| s.samples.last().is_some_and(|x| x.0 == 999));
    check_exact(&rx.seen, config.format, FS, false);
    assert!(rx.seen.lost.is_empty());
}

#[test]
fn open_errors_name_the_port_and_the_fix() {
    let missing = Path::new("/dev/serial/by-id/no-such-ecg-board");
    let stream = StreamConfig::new(protocol(BINARY), FS);
    let err = SerialReader::spawn(ReaderConfig::new(missing, stream), monotonic_now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-ecg-board"), "{err}");
    assert!(err.contains("plugged in"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = SerialReader::spawn(ReaderConfig::new(dir.path(), stream), monotonic_now())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither a serial device nor a regular capture file"),
        "{err}"
    );
    let mut bad = ReaderConfig::new(missing, StreamConfig::new(protocol(BINARY), 0.0));
    let err = SerialReader::spawn(bad.clone(), monotonic_now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--fs 0"), "{err}");
    bad.stream.fs_hz = FS;
    bad.baud = 0;
    let err = SerialReader::spawn(bad, monotonic_now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--baud"), "{err}");
}

#[test]
fn binary_garbage_crc_errors_and_a_dropped_block() {
    let link = Link::new();
    let (mut master, _slave) = link.plug();
    let mut rx = Rx::start(&link.path, StreamConfig::new(protocol(BINARY), FS));
    let mut encoder = Encoder::new(BINARY);
    let mut bytes = b"boot v1.2\r\n\xA5\x5A\x01\x02garbage\xA5".to_vec();
    for k in 0..60 {
        let mut frame = Vec::new();
        encoder.encode(&block(k), &mut frame);
        match k {
            // Corrupted in a sample byte: dropped, its 20 samples lost.
            10 => frame[15] ^= 0x01,
            // Never sent (a board's full transmit buffer).
            20 => continue,
            // Noise on the line between frames, with a false sync word.
            30 => bytes.extend(b"\x00\xFF\xA5\x5A\x01\x7F\x00\x00"),
            _ => {}
        }
        bytes.extend(frame);
    }
    master.write_all(&bytes).unwrap();
    rx.until(|s| s.samples.last().is_some_and(|x| x.0 == 1199));
    let seen = &rx.seen;
    assert_eq!(seen.lost, vec![(200, 20, false), (400, 20, false)]);
    assert_eq!(seen.samples.len(), 1200 - 40);
    check_exact(seen, BINARY, FS, false);
    let stats = rx.reader.stop().stats;
    assert_eq!(stats.crc_errors, 1);
    assert_eq!(stats.lost_samples, 40);
    assert_eq!(stats.frames, 58);
    assert!(stats.bad_headers >= 2, "{stats:?}");
    assert!(stats.skipped_bytes >= 11 + 12 + 8, "{stats:?}");
}

#[test]
fn ascii_garbage_lines_keep_the_indices() {
    let link = Link::new();
    let (mut master, _slave) = link.plug();
    let mut rx = Rx::start(&link.path, StreamConfig::new(protocol(ASCII), FS));
    let mut encoder = Encoder::new(ASCII);
    let mut bytes = b"ECG ready\n".to_vec();
    for k in 0..30 {
        let mut text = Vec::new();
        encoder.encode(&block(k), &mut text);
        bytes.extend(text);
    }
    // Sample 301's line arrives garbled (a lost byte and noise).
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    let garbled_line = 2 + 301; // "ECG ready", the emulator's leading empty line
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push_str(if i == garbled_line { "0.1#4" } else { line });
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
    master.write_all(out.as_bytes()).unwrap();
    rx.until(|s| s.samples.last().is_some_and(|x| x.0 == 599));
    let seen = &rx.seen;
    assert_eq!(seen.lost, vec![(301, 1, false)]);
    assert_eq!(seen.samples.len(), 599);
    check_exact(seen, ASCII, FS, false);
    let stats = rx.reader.stop().stats;
    assert_eq!(stats.bad_lines, 1);
    assert_eq!(stats.samples, 599);
}

/// A writer standing for the cable: writes reach the current pty, or vanish while unplugged.
#[derive(Clone, Default)]
struct Cable(Arc<Mutex<Option<TTYPort>>>);

impl Write for Cable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut port = self.0.lock().unwrap();
        if let Some(p) = port.as_mut() {
            p.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A board that keeps sampling while its cable is pulled out and plugged back in: the reader
/// must report the disconnect, reconnect through the re-pointed link, and place the samples
/// after the outage at their true indices.
fn unplug_and_replug(format: WireFormat) -> Seen {
    let link = Link::new();
    let (master, slave) = link.plug();
    let cable = Cable::default();
    *cable.0.lock().unwrap() = Some(master);
    let speed = 10.0;
    let mut rx = Rx::start(&link.path, StreamConfig::new(protocol(format), FS * speed));
    let stop = Arc::new(AtomicBool::new(false));
    let board = {
        let (cable, stop) = (cable.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut config = EmulatorConfig::new(format);
            config.speed = Some(speed);
            let mut emulator = Emulator::new(Box::new(cable), "cable", config).unwrap();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) && k < 100_000 {
                emulator.send(&block(k)).unwrap();
                k += 1;
            }
        })
    };
    rx.until(|s| s.samples.last().is_some_and(|x| x.0 >= 500 * speed as u64));
    let before = rx.seen.samples.last().unwrap().0;
    // Unplug: the pty goes away, the reader sees the hang-up.
    drop(cable.0.lock().unwrap().take());
    drop(slave);
    rx.until(|s| s.disconnects > 0);
    // Replug some 200 ms (1000 samples at this speed) later, on a new pty.
    std::thread::sleep(Duration::from_millis(200));
    let (master, _slave2) = link.plug();
    *cable.0.lock().unwrap() = Some(master);
    rx.until(|s| s.connects.contains(&1));
    rx.until(|s| s.samples.last().is_some_and(|x| x.0 > before + 3000));
    stop.store(true, Ordering::Relaxed);
    board.join().unwrap();
    let seen = std::mem::take(&mut rx.seen);
    assert_eq!(seen.connects, vec![0, 1]);
    assert_eq!(seen.lost.len(), 1, "{:?}", seen.lost);
    seen
}

#[test]
fn binary_reconnect_counts_the_outage_exactly() {
    let seen = unplug_and_replug(BINARY);
    let (_, count, estimated) = seen.lost[0];
    assert!(!estimated);
    assert!(count >= 500, "{count}");
    check_exact(&seen, BINARY, FS * 10.0, true);
}

#[test]
fn ascii_reconnect_estimates_the_outage_from_time() {
    let seen = unplug_and_replug(ASCII);
    let (first, count, estimated) = seen.lost[0];
    assert!(estimated);
    // Text has no counter: the first sample after the outage is placed by its arrival time.
    // Its value names its true index (mod 1999); the estimate must be within the arrival
    // jitter, allowed 50 ms on this shared machine.
    let &(index, mv, _) = seen.samples.iter().find(|s| s.0 == first + count).unwrap();
    let sent = (0..PERIOD).find(|&r| on_wire(ASCII, r) == mv).unwrap();
    let offset = (sent + PERIOD - index % PERIOD) % PERIOD;
    let error = if offset > PERIOD / 2 {
        offset as i64 - PERIOD as i64
    } else {
        offset as i64
    };
    let tolerance = (0.050 * FS * 10.0) as i64;
    eprintln!("ASCII reconnect: estimated {count} lost samples, index off by {error}");
    assert!(error.abs() <= tolerance, "index off by {error} samples");
    // After the estimate, samples are consecutive with the values sent after the first.
    let after: Vec<_> = seen.samples.iter().filter(|s| s.0 >= index).collect();
    for s in after {
        let true_index = (s.0 as i64 + error) as u64;
        assert_eq!(s.1, on_wire(ASCII, true_index));
    }
}

#[test]
fn listen_reports_beats_from_a_capture_file() {
    // 20 s of a 75 bpm synthetic ECG as the board would send it, recorded to a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.bin");
    let mut config = EmulatorConfig::new(BINARY);
    config.speed = None;
    let mut emulator = Emulator::open(&path, config).unwrap();
    let rr = 400u64;
    for k in 0..500u64 {
        let first = k * BLOCK as u64;
        let samples = (first..first + BLOCK as u64)
            .map(|i| {
                let d = (i as i64 - 200).rem_euclid(rr as i64) as f64;
                let d = d.min(rr as f64 - d) / FS;
                (1.2 * (-(d / 0.012).powi(2) / 2.0).exp()) as f32
            })
            .collect();
        let b = EcgBlock {
            first_index: first,
            t0_ns: first * 2_000_000,
            fs_hz: FS,
            samples_mv: samples,
            lead_off: false,
        };
        // Block 300 is missing from the capture: bridged, and its beat flagged.
        if k != 300 {
            emulator.send(&b).unwrap();
        }
    }
    drop(emulator);
    let args = ListenArgs {
        port: path,
        protocol: ProtocolArg::Binary,
        fs: FS,
        lead: 0,
        baud: 115_200,
        scale: 1.0,
        video_lag_ms: 0.0,
    };
    let mut out = Vec::new();
    let mut log = Vec::new();
    let stop = AtomicBool::new(false);
    let summary = listen(&args, monotonic_now(), &mut out, &mut log, &stop).unwrap();
    let log = String::from_utf8(log).unwrap();
    let beats: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summary.beats, beats.len() as u64);
    assert_eq!(beats.len(), 25, "{log}");
    for (k, beat) in beats.iter().enumerate() {
        let index = beat["index"].as_u64().unwrap();
        assert!(index.abs_diff(200 + rr * k as u64) <= 1, "{beat}");
        if k > 0 {
            assert_eq!(beat["rr_ms"].as_f64(), Some(800.0), "{beat}");
            assert_eq!(beat["hr_bpm"].as_f64(), Some(75.0));
        }
        let gap = beat["quality"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("gap"));
        // Samples 6000..6020 are missing; the beat at 6200 has them in its RR interval.
        assert_eq!(gap, index.abs_diff(6200) <= 1, "{beat}");
    }
    assert_eq!(summary.reader.stats.lost_samples, 20);
    assert!(log.contains("20 samples lost"), "{log}");
    assert!(log.contains("25 beats"), "{log}");
}

/// `listen`'s log, sent to the test as it is written, so the test can wait for a report.
struct ChannelLog(std::sync::mpsc::Sender<String>);

impl Write for ChannelLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The test may have stopped listening; the log is best effort anyway.
        let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn listen_reports_link_problems_and_stops_on_request() {
    let link = Link::new();
    let (mut master, _slave) = link.plug();
    let args = ListenArgs {
        port: link.path.clone(),
        protocol: ProtocolArg::Ascii,
        fs: FS,
        lead: 0,
        baud: 115_200,
        scale: 1.0,
        video_lag_ms: 0.0,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, log) = std::sync::mpsc::channel();
    let listener = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            listen(&args, monotonic_now(), &mut out, &mut ChannelLog(tx), &stop)
        })
    };
    let mut text = String::new();
    let mut wait_for = |what: &str| {
        while !text.contains(what) {
            let chunk = log.recv_timeout(Duration::from_secs(5));
            text.push_str(&chunk.unwrap_or_else(|_| panic!("no {what:?} in {text}")));
        }
    };
    // Bytes written before the port is open would be flushed as stale.
    wait_for("listening on");
    master.write_all(b"\n0.1\n0.2\nbad\n0.3\n").unwrap();
    // Ctrl-C once the bad line has been reported.
    wait_for("1 bad lines");
    stop.store(true, Ordering::Relaxed);
    let summary = listener.join().unwrap().unwrap();
    text.extend(log.try_iter());
    assert!(
        text.contains("(latest: line 3: column 0 is \"bad\", not a number)"),
        "{text}"
    );
    assert!(text.contains("0 beats; link: 3 samples"), "{text}");
    assert_eq!(summary.beats, 0);
    assert_eq!(summary.reader.stats.samples, 3);
}

/// Deterministic bytes for the robustness tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Random bytes, in random-sized pieces, never panic a decoder or the stream, and whatever
/// comes out is consistent: indices increase, losses account for every skipped index.
#[test]
fn random_bytes_never_panic_or_misalign() {
    let protocols = [
        protocol(ASCII),
        protocol(BINARY),
        Protocol::Binary(BinaryConfig { lead: 3 }),
        Protocol::Ascii(AsciiConfig {
            lead: 2,
            mv_per_unit: 0.001,
        }),
    ];
    for (seed, p) in protocols.into_iter().enumerate() {
        let mut rng = XorShift(0x1234_5678 + seed as u64);
        // Bias some input towards the protocols' own bytes so deeper paths are reached.
        let mut input = rng.bytes(300_000);
        for i in (0..input.len()).step_by(97) {
            input[i] = [b'\n', b',', b'-', b'.', 0xA5, 0x5A, b'1'][rng.next() as usize % 7];
        }
        let mut decoder = Decoder::new(&p).unwrap();
        let mut stream = EcgStream::new(&StreamConfig::new(p, FS)).unwrap();
        let mut decoded = Vec::new();
        let mut events = Vec::new();
        let mut at = 0;
        let mut t = 0u64;
        while at < input.len() {
            let n = (rng.next() % 700) as usize + 1;
            let piece = &input[at..(at + n).min(input.len())];
            decoder.push(piece, &mut decoded);
            t += rng.next() % 50_000_000;
            stream.push(piece, t, &mut events);
            if rng.next().is_multiple_of(50) {
                stream.reconnected();
            }
            at += n;
        }
        let mut next = None;
        for d in &decoded {
            match *d {
                Decoded::Sample(s) => {
                    assert!(next.is_none_or(|n| s.index == n));
                    next = Some(s.index + 1);
                }
                Decoded::Lost { first_index, count } => {
                    assert!(next.is_none_or(|n| first_index == n));
                    next = Some(first_index + count);
                }
                Decoded::Restart => {}
            }
        }
        let mut next = None;
        let mut last_t = None;
        for e in &events {
            match e {
                StreamEvent::Ecg(b) => {
                    assert!(next.is_none_or(|n| b.first_index == n));
                    assert!(last_t.is_none_or(|t| b.t0_ns > t));
                    next = Some(b.first_index + b.samples_mv.len() as u64);
                    last_t = Some(b.t0_ns);
                    assert!(b.samples_mv.iter().all(|v| v.is_finite()));
                }
                StreamEvent::Lost {
                    first_index, count, ..
                } => {
                    assert!(next.is_none_or(|n| *first_index == n));
                    next = Some(first_index + count);
                }
            }
        }
        assert_eq!(decoder.stats().bytes, input.len() as u64);
    }
}

/// Valid frames mixed into random garbage are all recovered, with their indices.
#[test]
fn frames_are_recovered_from_garbage() {
    let mut rng = XorShift(99);
    let mut encoder = Encoder::new(BINARY);
    let mut input = Vec::new();
    for k in 0..400 {
        let junk = (rng.next() % 40) as usize;
        input.extend(rng.bytes(junk));
        if rng.next().is_multiple_of(5) {
            input.extend([0xA5, 0x5A, 0x01]);
        }
        encoder.encode(&block(k), &mut input);
    }
    let mut decoder = Decoder::new(&protocol(BINARY)).unwrap();
    let mut out = Vec::new();
    decoder.push(&input, &mut out);
    let samples: Vec<(u64, f32)> = out
        .iter()
        .filter_map(|d| match d {
            Decoded::Sample(s) => Some((s.index, s.mv)),
            _ => None,
        })
        .collect();
    assert_eq!(samples.len(), 400 * BLOCK);
    for (i, (index, mv)) in samples.into_iter().enumerate() {
        assert_eq!(index, i as u64);
        assert_eq!(mv, on_wire(BINARY, index));
    }
    assert_eq!(decoder.stats().lost_samples, 0);
    assert_eq!(decoder.stats().restarts, 0);
    // The frame type is public so firmware authors can generate reference frames.
    let mut reference = Vec::new();
    Frame {
        counter: 0,
        width: SampleWidth::I16,
        channels: 1,
        lead_off: 0,
        counts: vec![1],
    }
    .encode(&mut reference)
    .unwrap();
    assert_eq!(reference.len(), 14);
}
