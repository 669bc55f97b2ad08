//! Bodies of echoview's fuzz targets: every parser that reads bytes from outside the process.
//!
//! Each function takes arbitrary bytes, feeds them to one parser the way the daemon does, and
//! panics only when a promise the parser makes is broken (a panic inside the parser counts
//! too). The same bodies run under libFuzzer (`fuzz_targets/`, see docs/reliability.md) and,
//! without nightly, in `tests/fuzz_regressions.rs` over the committed corpus plus bounded
//! deterministic mutations, so a crash found once stays fixed.
//!
//! Bodies may use only echoview's public API and std: the regression test includes this file
//! as a module of the main crate's test.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use echoview::daemon::config::Config;
use echoview::daemon::socket::{ClientLimits, Hub};
use echoview::serial::{AsciiConfig, BinaryConfig, EcgStream, Protocol, StreamConfig, StreamEvent};

/// Splits `data` into chunks whose lengths come from `seed`, the way a serial port's reads
/// split a byte stream at arbitrary points (1 to 64 bytes, sometimes one byte at a time).
fn chunks(data: &[u8], seed: u32) -> Vec<&[u8]> {
    let mut state = seed | 1;
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        // xorshift32: deterministic, so a crash replays exactly.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = if state & 7 == 0 {
            1
        } else {
            (state >> 8) as usize % 64 + 1
        };
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The serial ECG decoders (ASCII and binary protocol) behind [`EcgStream`].
///
/// Byte 0 picks the protocol (bit 0), the lead (bits 1-3) and whether the port is unplugged
/// and replugged halfway (bit 4); bytes 1-2 seed the chunking; the rest is the wire. Promises
/// checked: no panic, every value finite, sample indices never go backwards or overlap,
/// block times never go backwards, and reconnecting mid-stream keeps all that.
pub fn serial_ecg(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (seed, wire) = match rest {
        [a, b, wire @ ..] => (u32::from(*a) << 8 | u32::from(*b), wire),
        _ => (0, rest),
    };
    let lead = usize::from(mode >> 1 & 7);
    let protocol = if mode & 1 == 0 {
        Protocol::Ascii(AsciiConfig {
            lead,
            mv_per_unit: 0.001,
        })
    } else {
        Protocol::Binary(BinaryConfig { lead })
    };
    let Ok(mut stream) = EcgStream::new(&StreamConfig::new(protocol, 500.0)) else {
        return;
    };
    let pieces = chunks(wire, seed);
    let replug_at = (mode & 0x10 != 0).then_some(pieces.len() / 2);
    let mut out = Vec::new();
    let mut next_index = 0u64;
    let mut last_t0 = 0u64;
    let mut arrival_ns = 1_000_000_000u64;
    for (i, piece) in pieces.iter().enumerate() {
        if replug_at == Some(i) {
            stream.reconnected();
            arrival_ns += 500_000_000;
        }
        // Reads arrive about as fast as a 115200-baud line delivers them.
        arrival_ns += 87_000 * piece.len() as u64;
        stream.push(piece, arrival_ns, &mut out);
        for event in out.drain(..) {
            match event {
                StreamEvent::Ecg(block) => {
                    assert!(
                        block.first_index >= next_index,
                        "block at {} overlaps samples up to {next_index}",
                        block.first_index
                    );
                    assert!(block.t0_ns >= last_t0, "block time went backwards");
                    assert!(
                        block.samples_mv.iter().all(|v| v.is_finite()),
                        "a decoded value is not finite"
                    );
                    next_index = block.first_index + block.samples_mv.len() as u64;
                    last_t0 = block.t0_ns;
                }
                StreamEvent::Lost {
                    first_index, count, ..
                } => {
                    assert!(
                        first_index >= next_index,
                        "a loss overlaps delivered samples"
                    );
                    next_index = first_index + count;
                }
            }
        }
    }
    assert!(
        stream.next_index() >= next_index,
        "the stream's index fell behind its output"
    );
}

/// A file path private to this process, for parsers that read files.
fn scratch_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("echoview-fuzz-{}-{name}", std::process::id()))
}

/// The MCAP session reader: `data` is the whole file, read strictly and skipping bad frames.
/// Promises checked: no panic, after the first error the reader yields nothing more, and
/// every bad frame skipped is counted with a reason.
pub fn session_reader(data: &[u8]) {
    let path = scratch_path("session.mcap");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    // Strict, as replay reads; then skipping bad frames, as the daemon's player reads.
    let opened = [
        echoview::session::SessionReader::open(&path),
        echoview::session::SessionReader::open_skipping_bad_frames(&path),
    ];
    for mut reader in opened.into_iter().flatten() {
        let _ = reader.metadata().len();
        let _ = reader.summary();
        let mut failed = false;
        // A file of n bytes cannot hold more than n events; the bound catches a reader that
        // loops without consuming input.
        for count in 0.. {
            let Some(event) = reader.next() else { break };
            assert!(!failed, "the reader went on after an error");
            assert!(
                count <= data.len(),
                "more events than bytes: the reader loops"
            );
            failed = event.is_err();
        }
        let (bad, last) = reader.bad_frames();
        assert_eq!(
            bad > 0,
            last.is_some(),
            "bad frames counted without a reason"
        );
        assert!(bad as usize <= data.len(), "more bad frames than bytes");
    }
    let _ = std::fs::remove_file(&path);
}

/// The daemon's config parser: `data` is the file's text. Promises checked: no panic, and a
/// config that parses also passes its own validation.
pub fn daemon_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = std::path::Path::new("/etc/echoview/echoview.toml");
    if let Ok(config) = Config::parse(text, origin) {
        assert!(
            config.validate("again").is_ok(),
            "a parsed config fails validation"
        );
    }
}

/// The model bundle's manifest parser and checks: `data` is `manifest.toml`. Promise checked:
/// no panic (the files it names do not exist, so loading ends in an error at the latest
/// there).
pub fn bundle_manifest(data: &[u8]) {
    let dir = scratch_path("bundle");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let ok = std::fs::File::create(dir.join("manifest.toml"))
        .and_then(|mut f| f.write_all(data))
        .is_ok();
    if ok {
        let _ = echoview::bundle::Bundle::load(&dir);
    }
}

/// The most a fuzzed client may send: small, so inputs cross the limit.
const FUZZ_MAX_BYTES_IN: usize = 512;

/// What the label socket reads from a client: bytes are counted and discarded, and a client
/// that sends more than the limit is disconnected. `data` is what the client sends, in
/// chunks. Promises checked: the hub greets the client, never panics, disconnects it exactly
/// when it sent more than the limit, and otherwise keeps delivering labels.
pub fn socket_client(data: &[u8]) {
    let Ok(runtime) = tokio_runtime() else {
        return;
    };
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let limits = ClientLimits {
            max_clients: 2,
            queue: 4,
            max_bytes_in: FUZZ_MAX_BYTES_IN,
        };
        let mut hub = Hub::new("{\"type\":\"hello\"}\n".into(), limits, stop);
        let (mut client, ours) = tokio::io::duplex(4096);
        assert!(hub.add(ours), "the hub refused its only client");
        let mut hello = [0u8; 17];
        let greeted = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut hello))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        assert!(greeted, "no hello");
        let mut sent = 0usize;
        for piece in chunks(data, data.len() as u32) {
            if client.write_all(piece).await.is_err() {
                break;
            }
            sent += piece.len();
            tokio::task::yield_now().await;
        }
        // Let the client task read what was sent.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let line: Arc<str> = "{\"type\":\"view\"}\n".into();
        hub.publish(&line);
        let mut got = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut got)).await;
        let delivered = matches!(read, Ok(Ok(16)));
        if sent > FUZZ_MAX_BYTES_IN {
            assert!(!delivered, "a client over the input limit was kept");
        } else {
            assert!(delivered, "a client within the input limit was dropped");
        }
        let _ = stop_tx.send(true);
        hub.close(Duration::from_secs(1)).await;
    });
}

/// A single-threaded runtime, as each socket fuzz input needs its own hub.
fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The most frames a DICOM input decodes: enough to cross every frame-dependent path (frame
/// offsets, per-frame fragments, time vectors) while keeping one input fast.
const DICOM_MAX_FRAMES: usize = 64;

/// The DICOM reader (`echoview::dicom`): `data` is the whole file, a Part 10 file or a bare
/// dataset, read as replay reads it (open, summary, then inputs in time order with frames
/// decoded one by one). Promises checked: no panic; every decoded frame has the size the
/// summary gives and passes [`echoview::media::Frame::validate`]; frame times and sequence
/// numbers never go backwards; nothing comes after the first error.
pub fn dicom_reader(data: &[u8]) {
    let path = scratch_path("cine.dcm");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = echoview::dicom::is_dicom(&path);
    if let Ok(cine) = echoview::dicom::DicomCine::open(&path) {
        let (rows, columns) = (cine.summary().rows, cine.summary().columns);
        if let Ok(inputs) = echoview::dicom::DicomInputs::new(cine) {
            let mut failed = false;
            let mut frames = 0usize;
            let mut last: Option<(u64, u64)> = None;
            for input in inputs {
                assert!(!failed, "the cine's inputs went on after an error");
                match input {
                    Ok(echoview::beats::Input::Frame(frame)) => {
                        assert_eq!(
                            (frame.width, frame.height),
                            (columns, rows),
                            "a frame's size differs from the summary's"
                        );
                        assert!(frame.validate().is_ok(), "a decoded frame is not valid");
                        if let Some((seq, t_ns)) = last {
                            assert!(frame.seq > seq, "frame numbers went backwards");
                            assert!(frame.t_ns >= t_ns, "frame times went backwards");
                        }
                        last = Some((frame.seq, frame.t_ns));
                        frames += 1;
                        if frames >= DICOM_MAX_FRAMES {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => failed = true,
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}
