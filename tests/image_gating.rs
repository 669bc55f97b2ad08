//! Image gating against ECG gating on simulated sessions: the boundaries found from the video
//! alone (through the windowed feed replay uses) are compared with the R-peaks the QRS
//! detector finds in the same session's ECG.
//!
//! Run with `--nocapture` to see the per-session figures the README quotes.

use echoview::agreement::{Agreement, compare};
use echoview::beats::Input;
use echoview::ecg::detect_all;
use echoview::imagefeed::{GatedFeed, GatingMode};
use echoview::imagegate::ImageGateConfig;
use echoview::sim::{ScanScript, SimConfig, SimEvent, Simulator};
use echoview::views::View;

/// A boundary within this of an R-peak (after the constant offset) matches it: a third of
/// the shortest beat simulated (150 bpm), so a boundary can match only its own beat.
const TOLERANCE_NS: u64 = 130_000_000;

/// One simulated session's boundaries: `(image, ecg, span)`.
fn run(config: SimConfig) -> (Vec<u64>, Vec<u64>, (u64, u64)) {
    let sim = Simulator::new(config).unwrap();
    let mut feed = GatedFeed::new(GatingMode::Image, ImageGateConfig::default());
    let (mut samples, mut fs, mut t0) = (Vec::new(), 0.0, None);
    let (mut first, mut last) = (u64::MAX, 0);
    let mut image = Vec::new();
    let drain = |feed: &mut GatedFeed, image: &mut Vec<u64>| {
        while let Some(input) = feed.next_input() {
            if let Input::Boundary { t_ns, .. } = input {
                image.push(t_ns);
            }
        }
    };
    for event in sim {
        match event {
            SimEvent::Frame { frame, truth } => {
                first = first.min(frame.t_ns);
                last = last.max(frame.t_ns);
                let t_ns = frame.t_ns;
                feed.push(Input::Frame(frame));
                feed.push(Input::Truth { t_ns, view: truth });
            }
            SimEvent::Ecg(block) => {
                t0.get_or_insert(block.t0_ns);
                fs = block.fs_hz;
                samples.extend_from_slice(&block.samples_mv);
            }
            SimEvent::RPeak { .. } => {}
        }
        drain(&mut feed, &mut image);
    }
    feed.finish();
    drain(&mut feed, &mut image);
    let t0 = t0.unwrap_or(0) as f64;
    let ecg = detect_all(&samples, fs)
        .unwrap()
        .into_iter()
        .map(|p| (t0 + p.index as f64 * 1e9 / fs).round() as u64)
        .collect();
    (image, ecg, (first, last))
}

fn session(seed: u64, bpm: f64, fps: f64, views: &[View], beats: u32) -> SimConfig {
    SimConfig {
        seed,
        scan: ScanScript::from_views(views, beats),
        fps,
        base_bpm: bpm,
        min_bpm: (bpm * 0.7).max(40.0),
        max_bpm: (bpm * 1.4).min(180.0),
        ..SimConfig::default()
    }
}

#[test]
fn image_gating_agrees_with_ecg_gating_on_simulated_sessions() {
    use View::*;
    let cases = [
        session(1, 70.0, 30.0, &View::ALL, 3),
        session(2, 50.0, 30.0, &[Plax, A4c, Subcostal], 5),
        session(3, 110.0, 25.0, &[PsaxMid, A2c, Suprasternal], 6),
        session(4, 90.0, 60.0, &[A5c, PsaxVes, A3c], 5),
        session(5, 140.0, 30.0, &[PsaxBase, PsaxApical, A4c], 8),
        session(6, 60.0, 30.0, &[Plax, A2c, A3c, Subcostal], 4),
    ];
    let (mut reference, mut matched, mut extra) = (0, 0, 0);
    for config in cases {
        let label = format!(
            "seed {} {} bpm {} fps {} views",
            config.seed,
            config.base_bpm,
            config.fps,
            config.scan.segments.len()
        );
        let (image, ecg, span) = run(config);
        if std::env::var_os("IMAGE_GATING_DEBUG").is_some() {
            let ms = |v: &[u64]| v.iter().map(|t| t / 1_000_000).collect::<Vec<_>>();
            println!("image {:?}\necg   {:?}", ms(&image), ms(&ecg));
        }
        let a: Agreement = compare(&image, &ecg, span, TOLERANCE_NS)
            .unwrap_or_else(|| panic!("{label}: no boundaries ({image:?})"));
        println!(
            "{label}: offset {:+.1} ms, median {:.1} ms, p90 {:.1} ms, matched {}/{} ({:.1}%), extra {}",
            a.offset_ms,
            a.median_ms,
            a.p90_ms,
            a.matched,
            a.reference,
            100.0 * a.matched_fraction(),
            a.extra
        );
        reference += a.reference;
        matched += a.matched;
        extra += a.extra;
        assert!(a.offset_ms.abs() <= 60.0, "{label}: offset {a:?}");
        assert!(a.median_ms <= 25.0 && a.p90_ms <= 60.0, "{label}: {a:?}");
        assert!(a.matched_fraction() >= 0.6, "{label}: {a:?}");
    }
    let fraction = matched as f64 / reference as f64;
    println!(
        "all: matched {matched}/{reference} ({:.1}%), extra {extra}",
        100.0 * fraction
    );
    assert!(fraction >= 0.8, "{matched}/{reference}");
    assert!(extra as f64 <= 0.2 * reference as f64, "{extra} extra");
}
