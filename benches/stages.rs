//! QRS detection and tract inference under divan (`cargo bench --bench stages`), next to
//! `benches/preprocess.rs`; `echoview bench` times the same stages end to end and judges the
//! budgets.
//!
//! * `qrs`: the streaming detector over the first 5 minutes of MIT-BIH record 100 (360 Hz);
//!   divan's time per iteration divided into 300 s is the real-time factor.
//! * `encoder` / `head`: one pass on tract with the demo bundle (128x128; the 288 px bench
//!   bundle takes seconds per sample on a loaded machine, which `echoview bench` handles
//!   with fewer, longer runs).

use std::path::Path;

use divan::Bencher;
use echoview::bundle::Bundle;
use echoview::ecg::{QrsDetector, SampleFormat, read_samples};
use echoview::engine::{self, EngineKind};

fn main() {
    divan::main();
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[divan::bench(sample_count = 20)]
fn qrs(bencher: Bencher) {
    let samples = read_samples(
        &root().join("tests/data/mitbih/100.i16"),
        SampleFormat::I16Le,
    )
    .unwrap();
    let samples = &samples[..360 * 300];
    bencher.bench_local(|| {
        let mut detector = QrsDetector::new(360.0).unwrap();
        let mut peaks = 0usize;
        for &s in samples {
            peaks += usize::from(detector.push(s).is_some());
        }
        divan::black_box(peaks)
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn encoder(bencher: Bencher) {
    let bundle = Bundle::load(&root().join("models/demo")).unwrap();
    let mut engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let m = &bundle.manifest.input;
    let image = vec![0.1f32; (m.channels * m.width * m.height) as usize];
    let mut features = vec![0.0f32; bundle.feature_dim()];
    bencher.bench_local(|| engine.encode(&image, &mut features).unwrap());
}

#[divan::bench(sample_count = 20)]
fn head(bencher: Bencher) {
    let bundle = Bundle::load(&root().join("models/demo")).unwrap();
    let mut engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let features = vec![0.1f32; bundle.frames_per_beat() * bundle.feature_dim()];
    bencher.bench_local(|| divan::black_box(engine.head(&features).unwrap()));
}
