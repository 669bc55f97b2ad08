//! `pipeline.encode`: encoding every incoming frame ahead of its beat gives the labels that
//! encoding the phases gives, and leaves nothing to encode when a beat closes but in a beat
//! whose image region is estimated anew. On an encoder this fast the phases leave nothing
//! even there: the beat's real phase frames are encoded, under the region the beat will have,
//! while the QRS detector holds its closing R-peak (`daemon::speculate`). A third run with
//! nothing encoded ahead (`pipeline.lookahead = false`) gives the very same labels: features
//! encoded ahead are only ever used for the frame and preprocessing they were encoded from.
//!
//! The demo model's encoder is fast enough on tract to run on every frame, so the every-frame
//! path is tested here on the CPU; on a cart it is TensorRT's (`auto` picks it only on the
//! GPU, which this test also checks: on tract `auto` encodes phases).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echoview::bundle::Bundle;
use echoview::daemon::config::Config;
use echoview::daemon::encode::EncodeMode;
use echoview::daemon::infer::ModelStage;
use echoview::daemon::notify::Notifier;
use echoview::daemon::protocol::{Message, StatusMsg, ViewMsg};
use echoview::daemon::source::PlaySpec;
use echoview::daemon::{Daemon, ModelIdentity};
use echoview::engine::{self, EngineKind};
use echoview::sim::record::record;
use echoview::sim::{ScanScript, SimConfig};
use echoview::views::View;

/// Beats in the session: enough for the steady state after the first beat.
const BEATS: u32 = 10;

/// Frame rate of the session: the simulator's lowest, so that tract can encode every frame
/// of the demo model in real time on a two-core machine (40 ms between frames). When it
/// cannot (a machine loaded by other work), every-frame mode rightly misses: the queue of
/// frames to encode drops the oldest.
const FPS: f64 = 25.0;

/// The largest share of real time the encoder may take per frame for the every-frame check:
/// runs at 55% and 74% passed it, a run at 148% (a loaded machine) could not.
const KEEPS_UP: f64 = 0.8;

/// Writes a session of one view (so each beat keeps the last beat's image region, and a
/// frame encoded ahead matches the beat's own input bit for bit).
fn session(dir: &Path) -> PathBuf {
    let path = dir.join("a4c.mcap");
    let config = SimConfig {
        seed: 21,
        scan: ScanScript::from_views(&[View::A4c], BEATS),
        fps: FPS,
        ..SimConfig::default()
    };
    record(config, &path).unwrap();
    path
}

/// Plays `session` once through an in-process daemon with `encode` (or, with `lookahead`
/// off, nothing encoded ahead) on tract and returns the views and the last status.
fn serve(
    dir: &Path,
    session: &Path,
    encode: EncodeMode,
    lookahead: bool,
) -> (Vec<ViewMsg>, StatusMsg) {
    let bundle = Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")).unwrap();
    let mut config = Config::default();
    config.socket.path = dir.join(format!("{}-{lookahead}.sock", encode.name()));
    config.pipeline.encode = encode;
    config.pipeline.lookahead = lookahead;
    let model = ModelStage::new(&bundle, engine::open(&bundle, EngineKind::Tract).unwrap());
    let daemon = Daemon::new(
        config.clone(),
        vec![Arc::new(PlaySpec {
            path: session.to_path_buf(),
            looped: false,
            video_only: None,
            speed: 1.0,
        })],
        Box::new(model),
        ModelIdentity::of(&bundle),
        Notifier::disabled(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(daemon.run(async {
                let _ = stop_rx.await;
            }))
    });
    let start = Instant::now();
    while !config.socket.path.exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let stream = UnixStream::connect(&config.socket.path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let (mut views, mut statuses) = (Vec::new(), Vec::<StatusMsg>::new());
    // The session's beats, less the one before its first R-peak and the one after its last.
    while views.len() < BEATS as usize - 2 || statuses.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{} views",
            views.len()
        );
        let line = lines.next().expect("connection closed").unwrap();
        match Message::from_line(&line).unwrap().expect("a known message") {
            Message::View(v) => views.push(v),
            Message::Status(s) => statuses.push(*s),
            Message::Hello(_) => {}
        }
    }
    stop_tx.send(()).unwrap();
    server.join().unwrap().unwrap();
    (views, statuses.pop().unwrap())
}

/// Whether two views are of the same heartbeat: the same start and end on the session's
/// clock (beat numbers depend on where each run's gating started).
fn same_beat(a: &ViewMsg, b: &ViewMsg) -> bool {
    a.start == b.start && a.t == b.t
}

#[test]
fn every_frame_gives_the_same_labels_with_nothing_left_to_encode_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let session = session(dir.path());
    // On tract, auto encodes the predicted phases.
    let (phases, phases_status) = serve(dir.path(), &session, EncodeMode::Auto, true);
    let (every, every_status) = serve(dir.path(), &session, EncodeMode::EveryFrame, true);
    assert_eq!(phases_status.engine.encode.as_deref(), Some("phases"));
    assert_eq!(every_status.engine.encode.as_deref(), Some("every-frame"));
    for status in [&phases_status, &every_status] {
        assert_eq!(status.engine.device.as_deref(), Some("cpu"));
        let ms = status
            .engine
            .frame_ms
            .expect("the per-frame latency is reported");
        assert!(ms > 0.0 && ms < 1000.0, "{ms} ms");
        assert_eq!(status.drops.beats, 0, "{status:?}");
    }
    assert!(
        every_status.beats.frames_encoded_ahead > phases_status.beats.frames_encoded_ahead,
        "every frame: {} encoded ahead, phases: {}",
        every_status.beats.frames_encoded_ahead,
        phases_status.beats.frames_encoded_ahead
    );
    // The same beats (by their times), the same labels and confidences.
    let compared: Vec<(u64, &str, &str)> = every
        .iter()
        .filter_map(|e| {
            let p = phases.iter().find(|p| same_beat(p, e))?;
            assert!(
                (p.confidence - e.confidence).abs() < 1e-5,
                "beat {}: {} vs {}",
                e.beat,
                p.confidence,
                e.confidence
            );
            Some((e.beat, p.label.as_str(), e.label.as_str()))
        })
        .collect();
    assert!(compared.len() >= BEATS as usize - 3, "{compared:?}");
    assert!(compared.iter().all(|(_, p, e)| p == e), "{compared:?}");
    // Nothing encoded ahead: every beat encodes its own frames at the cut. Features encoded
    // ahead (predicted, speculated on a held R-peak, under a region worked out ahead) must
    // give exactly these labels.
    let (own, own_status) = serve(dir.path(), &session, EncodeMode::Phases, false);
    assert_eq!(own_status.beats.frames_encoded_ahead, 0);
    let same: Vec<(u64, &str, &str)> = own
        .iter()
        .filter_map(|o| {
            let p = phases.iter().find(|p| same_beat(p, o))?;
            assert!(
                (p.confidence - o.confidence).abs() < 1e-5,
                "beat {}: {} ahead vs {} at the cut",
                o.beat,
                p.confidence,
                o.confidence
            );
            Some((o.beat, p.label.as_str(), o.label.as_str()))
        })
        .collect();
    assert!(same.len() >= BEATS as usize - 3, "{same:?}");
    assert!(same.iter().all(|(_, p, o)| p == o), "{same:?}");
    // From the second beat on, every frame was encoded before its beat closed, except in a
    // beat whose image region was estimated anew (the mask moved): its T frames differ from
    // those encoded under the last beat's region, in either mode.
    let t = 8;
    let at_cut: Vec<(u64, u32, u32)> = every
        .iter()
        .filter_map(|e| {
            let p = phases.iter().find(|p| same_beat(p, e))?;
            Some((e.beat, e.encoded_at_cut, p.encoded_at_cut))
        })
        .collect();
    eprintln!(
        "(beat, encoded at the cut with every frame, with phases): {at_cut:?}; {:?} ms per \
         frame at {FPS} fps",
        every_status.engine.frame_ms
    );
    assert!(
        every[0].encoded_at_cut > 0,
        "the first beat has no region to encode under"
    );
    // The property needs an encoder that keeps up with the frames (`auto` demands more of the
    // GPU: `encode::HEADROOM`); a machine loaded by other work cannot give tract that (60 ms
    // per frame was seen here under a load of 8), and then the check is not made.
    let ms = every_status.engine.frame_ms.unwrap_or(f64::INFINITY);
    if ms * FPS / 1000.0 > KEEPS_UP {
        eprintln!("not checked: {ms} ms per frame at {FPS} fps leaves no headroom here");
        return;
    }
    for &(beat, every_frame, _) in &at_cut[1..] {
        assert!(
            every_frame == 0 || every_frame == t,
            "beat {beat}: {every_frame} encoded at the cut: {at_cut:?}"
        );
    }
    // Phases: what the RR prediction missed, and a new region's frames, were encoded while
    // the R-peak was held, so nothing is left (one beat of slack for a machine whose load
    // delayed the speculation).
    let left = at_cut[1..]
        .iter()
        .filter(|&&(_, _, phases)| phases != 0)
        .count();
    assert!(
        left <= 1,
        "{left} beats had missed phases left at the cut: {at_cut:?}"
    );
}
