//! The CI-sized fuzz pass: every fuzz target's body (fuzz/src/lib.rs) over its committed seed
//! corpus (fuzz/corpus/<target>/, which also holds every crash libFuzzer found, as a
//! regression), then over a bounded number of deterministic mutations of those seeds.
//!
//! It needs neither nightly nor libFuzzer, finishes in seconds, and replays exactly (fixed
//! seed). The real, coverage-guided runs are documented in docs/reliability.md.
//!
//! The seeds are written by the ignored test `write_seeds` (run it after a format change):
//! `cargo test --release --test fuzz_regressions -- --ignored write_seeds`.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use echoview::media::{EcgBlock, Frame, PixelFormat};
use echoview::serial::binary::{Frame as WireFrame, SampleWidth};
use echoview::session::SessionWriter;

/// A fuzz target: its corpus folder name and its body.
type Target = (&'static str, fn(&[u8]));

/// Every target, as named in fuzz/Cargo.toml.
const TARGETS: [Target; 6] = [
    ("serial_ecg", bodies::serial_ecg),
    ("session_reader", bodies::session_reader),
    ("daemon_config", bodies::daemon_config),
    ("bundle_manifest", bodies::bundle_manifest),
    ("socket_client", bodies::socket_client),
    ("dicom_reader", bodies::dicom_reader),
];

/// Mutations tried per seed in CI: enough to shake out shallow bugs in a few seconds in all.
const MUTATIONS_PER_SEED: usize = 1000;

/// Mutations per DICOM seed in CI: each input is a file written, opened and decoded up to 64
/// frames (about 10 ms), so the shared number would take two minutes; libFuzzer covers it
/// properly (docs/reliability.md).
const DICOM_MUTATIONS_PER_SEED: usize = 50;

/// Mutations per seed of `target`: `ECHOVIEW_FUZZ_MUTATIONS` for a longer blind run (where
/// libFuzzer is not available), else [`MUTATIONS_PER_SEED`] ([`DICOM_MUTATIONS_PER_SEED`]
/// for the DICOM reader).
fn mutations_per_seed(target: &str) -> usize {
    std::env::var("ECHOVIEW_FUZZ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if target == "dicom_reader" {
            DICOM_MUTATIONS_PER_SEED
        } else {
            MUTATIONS_PER_SEED
        })
}

/// The generator's seed: `ECHOVIEW_FUZZ_SEED` to explore other inputs, else a fixed one.
fn rng_seed() -> u64 {
    std::env::var("ECHOVIEW_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0ec4_0b1e_5eed_0001)
}

/// Runs only the target named by `ECHOVIEW_FUZZ_TARGET`, if set.
fn selected(target: &str) -> bool {
    std::env::var("ECHOVIEW_FUZZ_TARGET").map_or(true, |t| t == target)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed inputs of one target, in name order (so failures replay in order).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// xorshift64*: a fixed-seed generator, so every CI run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that hit parsers' edge cases more often than random ones.
const INTERESTING: [u8; 12] = [
    0, 1, 0x7f, 0x80, 0xff, b'\n', b',', b'-', b'.', b'"', b'=', b'[',
];

/// One libFuzzer-style mutation of `input`, with `other` available for splicing.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => out.insert(at, rng.next() as u8),
            3 if at < out.len() => {
                let n = 1 + rng.below((out.len() - at).min(16));
                out.drain(at..at + n);
            }
            4 => out.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(64));
                out.splice(at..at, other[from..from + n].iter().copied());
            }
            _ if at < out.len() => {
                // Repeat a run, as a stuck sender or a duplicated record does.
                let n = 1 + rng.below((out.len() - at).min(32));
                let run = out[at..at + n].to_vec();
                out.splice(at..at, run);
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

#[test]
fn every_target_survives_its_corpus_and_bounded_mutations() {
    let mut rng = Rng(rng_seed());
    for (target, body) in TARGETS {
        if !selected(target) {
            continue;
        }
        let per_seed = mutations_per_seed(target);
        let started = std::time::Instant::now();
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} is empty");
        for (name, bytes) in &seeds {
            // A failure names the input: replay it with the fuzzer binary or this test.
            eprintln!("{target}: corpus/{name}");
            body(bytes);
        }
        let mut tried = 0;
        for (i, (name, bytes)) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1) % seeds.len()].1;
            for m in 0..per_seed {
                let input = mutate(&mut rng, bytes, other);
                let outcome = std::panic::catch_unwind(|| body(&input));
                assert!(
                    outcome.is_ok(),
                    "{target}: mutation {m} of corpus/{name} failed; input (hex): {}",
                    input.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                tried += 1;
            }
        }
        let took = started.elapsed().as_secs_f64();
        eprintln!(
            "{target}: {} seeds, {tried} mutations in {took:.1} s ({:.0} execs/s)",
            seeds.len(),
            tried as f64 / took
        );
    }
}

/// Writes the generated seeds. Ignored: run by hand after a format change, then commit.
#[test]
#[ignore]
fn write_seeds() {
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    // Serial: byte 0 = mode (bit 0 binary, bits 1-3 lead, bit 4 replug), bytes 1-2 chunking.
    let ascii: String = (0..120i32)
        .map(|i| format!("{},{}\n", i * 37 % 200 - 100, i % 7))
        .collect();
    put(
        "serial_ecg",
        "ascii-lead0",
        &[&[0x00, 0x12, 0x34], ascii.as_bytes()].concat(),
    );
    put(
        "serial_ecg",
        "ascii-lead1-replug",
        &[&[0x12, 0x56, 0x78], ascii.as_bytes()].concat(),
    );
    let mut wire = Vec::new();
    for (k, width) in [SampleWidth::I16, SampleWidth::I24].into_iter().enumerate() {
        for f in 0..6u32 {
            WireFrame {
                // A gap after frame 3 and a counter reset in the second half.
                counter: if k == 1 {
                    f * 8
                } else {
                    1000 + f * 8 + u32::from(f > 3) * 16
                },
                width,
                channels: 2,
                lead_off: if f == 2 { 1 } else { 0 },
                counts: (0..16).map(|i| (i * 311 % 4000) - 2000).collect(),
            }
            .encode(&mut wire)
            .unwrap();
        }
        wire.extend_from_slice(b"\x00garbage\xff");
    }
    put(
        "serial_ecg",
        "binary-lead0",
        &[&[0x01, 0x9a, 0xbc], &wire[..]].concat(),
    );
    put(
        "serial_ecg",
        "binary-lead1-replug",
        &[&[0x13, 0xde, 0xf0], &wire[..]].concat(),
    );

    // Session: a small finished file, and the same cut short (no summary, as after a crash).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mcap");
    let mut writer = SessionWriter::create(&path).unwrap();
    writer
        .write_metadata(&BTreeMap::from([(
            "source".to_string(),
            "fuzz seed".to_string(),
        )]))
        .unwrap();
    for i in 0..4u64 {
        writer
            .write_frame(&Frame {
                seq: i,
                t_ns: i * 33_000_000,
                width: 8,
                height: 8,
                stride: 8,
                format: PixelFormat::Grey8,
                data: (0..64).map(|p| (p * 4 + i) as u8).collect(),
            })
            .unwrap();
        writer
            .write_ecg(&EcgBlock {
                first_index: i * 16,
                t0_ns: i * 32_000_000,
                fs_hz: 500.0,
                samples_mv: (0..16).map(|s| (s as f32 * 0.1).sin()).collect(),
                lead_off: i == 2,
            })
            .unwrap();
    }
    writer.finish().unwrap();
    let finished = std::fs::read(&path).unwrap();
    put("session_reader", "finished", &finished);
    put(
        "session_reader",
        "cut-short",
        &finished[..finished.len() * 2 / 3],
    );

    // Config: the shipped example and a small one.
    let example =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/echoview.toml"))
            .unwrap_or_default();
    if !example.is_empty() {
        put("daemon_config", "shipped-example", &example);
    }
    put(
        "daemon_config",
        "small",
        b"[source]\nkind = \"sim\"\n\n[socket]\npath = \"/run/echoview/labels.sock\"\nmode = \"0660\"\nmax_clients = 16\n\n[record]\ndir = \"/var/lib/echoview\"\nrotate_mb = 1\n",
    );

    // Bundle: the demo model's manifest.
    let manifest =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml"))
            .unwrap();
    put("bundle_manifest", "demo", &manifest);

    // Socket: a client that says a little, one that says too much.
    put("socket_client", "quiet", b"hello?\n");
    put("socket_client", "chatty", &[b'x'; 600]);

    // DICOM: the small fixtures of tests/data/dicom, one per encoding family (the large
    // real exports would make each mutation slow without reaching other code).
    for name in DICOM_SEEDS {
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/dicom")
                .join(name),
        )
        .unwrap();
        put("dicom_reader", name, &bytes);
    }
}

/// The DICOM fixtures used as seeds: bare dataset, big endian with a frame time vector,
/// explicit VR big endian, JPEG lossless, JPEG 2000 (YBR_ICT), 8- and 16-bit palette, native
/// YBR_FULL_422, RLE with R-wave times, a cine with an ECG waveform.
const DICOM_SEEDS: [&str; 10] = [
    "bare_dataset_mono1",
    "be_mono12_ftv.dcm",
    "ExplVR_BigEnd.dcm",
    "jpeg_lossless_mono.dcm",
    "jpeg2k_ybr_ict.dcm",
    "palette8_implicit.dcm",
    "palette16.dcm",
    "ybr_full_422_native.dcm",
    "rle_ybr_full_rwave.dcm",
    "ecg_waveform_cine.dcm",
];

/// libFuzzer's first find: a damaged 7 KB DICOM file whose element declares a length of
/// gigabytes made dicom-object allocate (and zero) it before reading: 3.9 GB of memory. The
/// reader now refuses it from its declared lengths, naming the element.
#[test]
fn dicom_lengths_are_checked_before_allocation() {
    let path = corpus_dir("dicom_reader").join("oom-dicom-3g9");
    let err = echoview::dicom::DicomCine::open(&path)
        .expect_err("a damaged file is refused")
        .to_string();
    assert!(err.contains("more than the whole file"), "{err}");
    assert!(err.contains("oom-dicom-3g9"), "names the file: {err}");
}

/// libFuzzer's second find: a 1.5 KB Part 10 file whose file meta header declares an element
/// of 3.9 GB (its VR bytes damaged) made the meta header parser allocate it: 3.8 GB and 15 s.
/// The meta group's lengths are now checked before it is parsed.
#[test]
fn dicom_meta_header_lengths_are_checked_before_allocation() {
    // The third, from the run after that fix: a group length (0002,0000) of 4 GB (2.2 GB).
    // The fourth: an element with a damaged tag, (0001,0000), inside the group length, before
    // the damaged one (3.2 GB).
    for name in [
        "oom-dicom-meta-3g8",
        "oom-dicom-meta-grouplen",
        "oom-dicom-meta-othergroup",
    ] {
        let path = corpus_dir("dicom_reader").join(name);
        let err = echoview::dicom::DicomCine::open(&path)
            .expect_err("a damaged header is refused")
            .to_string();
        assert!(err.contains("more than the whole file"), "{err}");
        assert!(err.contains("Part 10 header"), "{err}");
        assert!(err.contains(name), "names the file: {err}");
    }
}
