//! Performance figures and the budgets the cart needs (`echoview bench`).
//!
//! The measuring is split in two so that the arithmetic can be tested without a clock:
//! this module holds the pure part (summarising timing samples, reading a peer file, judging
//! the budgets), [`measure`] times the real stages, and [`cli`] strings them together for the
//! command line. On a shared or loaded machine absolute times drift from run to run, so the
//! budget on the encoder is a ratio against onnxruntime measured just before, with the same
//! thread count (`benches/peers/run.sh` writes the peer file).

pub mod cli;
pub mod measure;

use serde::{Deserialize, Serialize};

/// Median and 90th percentile of repeated timings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Middle sample: the typical cost, robust to a few runs slowed by other processes.
    pub median_ms: f64,
    /// 90th percentile: what a label waits for on a bad beat.
    pub p90_ms: f64,
    /// Samples summarised, so a reader can tell a quick run from a careful one.
    pub runs: usize,
}

impl Summary {
    /// Summarises `samples_ms`; `None` when there are none (nothing was timed).
    pub fn of(samples_ms: &[f64]) -> Option<Summary> {
        if samples_ms.is_empty() || samples_ms.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        // Nearest rank: the smallest sample at or above 90 % of the samples.
        let rank = (0.9 * n as f64).ceil() as usize;
        Some(Summary {
            median_ms: median,
            p90_ms: sorted[rank.clamp(1, n) - 1],
            runs: n,
        })
    }
}

/// One runtime's timings in a peer file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerTimings {
    /// One encoder pass (one frame).
    pub encoder: Summary,
    /// One head pass (one beat).
    pub head: Summary,
}

/// What `benches/peers/peers.py` writes (only the parts the budgets use).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerFile {
    /// The bundle the peers ran, to refuse comparing different models.
    pub model: PeerModel,
    /// onnxruntime timings keyed by intra-op thread count (`"1"`, `"2"`).
    pub onnxruntime: std::collections::BTreeMap<String, PeerTimings>,
    /// PyTorch timings keyed by thread count, when torch was available.
    #[serde(default)]
    pub torch: std::collections::BTreeMap<String, PeerTimings>,
    /// Encoder passes per heartbeat for echoview and the naive clip pipeline.
    pub passes_per_beat: PassesPerBeat,
}

/// The bundle a peer file measured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerModel {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
}

/// Encoder passes one heartbeat costs in each design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassesPerBeat {
    /// Video rate the naive count assumes.
    pub fps: f64,
    /// Heart rate the naive count assumes.
    pub bpm: f64,
    /// echoview: the T gated frames, once each.
    pub echoview: f64,
    /// Research code: every frame of every overlapping 16-frame clip.
    pub naive_clip16: f64,
}

/// Why a peer file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Not valid JSON of the expected shape.
    #[error("{path}: not a peers file ({message}); write one with benches/peers/run.sh --out FILE")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// It measured another bundle.
    #[error(
        "{path} measured {theirs}, this bench measures {ours}; rerun benches/peers/run.sh --model on the same bundle"
    )]
    OtherModel {
        /// The file.
        path: String,
        /// Its bundle.
        theirs: String,
        /// Ours.
        ours: String,
    },
}

impl PeerFile {
    /// Parses `text` (from `path`, for messages) and checks it measured bundle `name` `version`.
    pub fn parse(text: &str, path: &str, name: &str, version: &str) -> Result<PeerFile, PeerError> {
        let file: PeerFile = serde_json::from_str(text).map_err(|e| PeerError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if file.model.name != name || file.model.version != version {
            return Err(PeerError::OtherModel {
                path: path.to_string(),
                theirs: format!("{} {}", file.model.name, file.model.version),
                ours: format!("{name} {version}"),
            });
        }
        Ok(file)
    }
}

/// The figures the budgets are judged on (milliseconds unless named otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// tract threads the encoder ran with.
    pub threads: usize,
    /// Encoder per frame.
    pub encoder: Summary,
    /// The daemon's post-cut latency: from the beat being cut (its closing R-peak confirmed
    /// by the QRS detector) to the label's publication, the view message's `inference_ms`.
    /// The detection delay before the cut is left out: no causal detector avoids it, and the
    /// budget is about what the engine adds once a beat has closed.
    pub post_cut_latency: Option<Summary>,
    /// Preprocessing of one 1080p YUYV frame.
    pub preprocess: Summary,
    /// QRS detection speed as a multiple of real time.
    pub qrs_realtime_factor: f64,
    /// Peak resident memory with the model loaded and run, MiB.
    pub peak_rss_mb: f64,
    /// Heap allocations per frame in steady state, when counted (a counting allocator is
    /// only installed in `tests/alloc.rs`, so the bench itself cannot count).
    pub allocations_per_frame: Option<f64>,
}

/// One budget's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `pass`, `fail`, or `not measured` (with `detail` saying how to measure it).
    pub status: &'static str,
    /// The measured value, in the budget's unit.
    pub value: Option<f64>,
    /// The limit it is judged against.
    pub limit: Option<f64>,
    /// How the value and limit were obtained.
    pub detail: String,
}

impl Verdict {
    /// `value <= limit` (or `>=` when `at_least`) passes.
    fn judge(value: f64, limit: f64, at_least: bool, detail: String) -> Verdict {
        let ok = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        Verdict {
            status: if ok { "pass" } else { "fail" },
            value: Some(value),
            limit: Some(limit),
            detail,
        }
    }

    /// A budget this run could not judge, and why.
    fn unmeasured(detail: String) -> Verdict {
        Verdict {
            status: "not measured",
            value: None,
            limit: None,
            detail,
        }
    }
}

/// Encoder time may be at most this multiple of onnxruntime's at the same thread count.
pub const ENCODER_RATIO_LIMIT: f64 = 1.3;
/// Label latency may exceed one encoder pass by at most this much (ms).
pub const LATENCY_SLACK_MS: f64 = 10.0;
/// Preprocessing of one 1080p frame (ms).
pub const PREPROCESS_LIMIT_MS: f64 = 2.0;
/// QRS detection, multiple of real time.
pub const QRS_MIN_FACTOR: f64 = 1000.0;
/// Peak resident memory (MiB).
pub const RSS_LIMIT_MB: f64 = 250.0;

/// Judges every budget of issue 8 on `figures`, using `peers` for the encoder ratio.
pub fn budgets(
    figures: &Figures,
    peers: Option<&PeerFile>,
) -> std::collections::BTreeMap<&'static str, Verdict> {
    let mut out = std::collections::BTreeMap::new();
    let threads = figures.threads.to_string();
    let encoder = match peers.map(|p| p.onnxruntime.get(&threads)) {
        Some(Some(ort)) if ort.encoder.median_ms > 0.0 => Verdict::judge(
            figures.encoder.median_ms / ort.encoder.median_ms,
            ENCODER_RATIO_LIMIT,
            false,
            format!(
                "tract {:.2} ms / onnxruntime {:.2} ms per frame, median, {threads} thread(s)",
                figures.encoder.median_ms, ort.encoder.median_ms
            ),
        ),
        Some(_) => Verdict::unmeasured(format!(
            "the peers file has no onnxruntime figure for {threads} thread(s)"
        )),
        None => Verdict::unmeasured(
            "needs a peer figure: benches/peers/run.sh --out FILE, then --peer-json FILE".into(),
        ),
    };
    out.insert("encoder_vs_onnxruntime", encoder);
    let latency = match figures.post_cut_latency {
        Some(l) => Verdict::judge(
            l.median_ms,
            figures.encoder.median_ms + LATENCY_SLACK_MS,
            false,
            format!(
                "median post-cut latency (inference_ms: beat cut -> label published) vs one \
                 encoder pass ({:.1} ms, this run) + {LATENCY_SLACK_MS} ms; the QRS detection \
                 delay before the cut is reported apart",
                figures.encoder.median_ms
            ),
        ),
        None => Verdict::unmeasured(
            "no daemon figure: skipped (--no-daemon) or no label in time (see label_latency_error)"
                .into(),
        ),
    };
    out.insert("label_latency", latency);
    out.insert(
        "preprocess",
        Verdict::judge(
            figures.preprocess.median_ms,
            PREPROCESS_LIMIT_MS,
            false,
            "median ms per 1920x1080 YUYV frame".into(),
        ),
    );
    out.insert(
        "qrs_realtime",
        Verdict::judge(
            figures.qrs_realtime_factor,
            QRS_MIN_FACTOR,
            true,
            "record duration / detection time".into(),
        ),
    );
    out.insert(
        "peak_rss",
        Verdict::judge(
            figures.peak_rss_mb,
            RSS_LIMIT_MB,
            false,
            "VmHWM in MiB after loading and running the model".into(),
        ),
    );
    let allocs = match figures.allocations_per_frame {
        Some(n) => Verdict::judge(n, 0.0, false, "allocations per frame, steady state".into()),
        None => Verdict::unmeasured(
            "counted by a counting allocator in cargo test --release --test alloc".into(),
        ),
    };
    out.insert("zero_frame_allocations", allocs);
    out
}

/// Whether the engine can encode a beat's frames while the beat lasts, which encoding ahead
/// needs to leave only the head after the cut: one beat's work (T encoder passes and a head
/// pass, one at a time on the inference thread) against the beat's length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Heart rate of the simulated scan.
    pub bpm: f64,
    /// One beat's length at that rate, ms.
    pub beat_ms: f64,
    /// T: encoder passes a beat needs.
    pub frames_per_beat: usize,
    /// T encoder passes plus a head pass, ms (medians from this run).
    pub work_per_beat_ms: f64,
    /// `work_per_beat_ms < beat_ms`: the encoder is fast enough to encode every frame a beat
    /// picks before the beat closes. Necessary for encoding ahead to leave only the head
    /// after the cut, not sufficient: a mispredicted frame, or a backlog of beats encoded
    /// after their cut, still costs passes after it (the measured `encoded_at_cut` shows them).
    pub kept_up: bool,
    /// The fastest heart rate at which it would keep up: `60000 / work_per_beat_ms`.
    pub max_bpm: f64,
}

impl Throughput {
    /// Judges `frames_per_beat` passes of `encoder_ms` and one of `head_ms` against a beat at
    /// `bpm`.
    pub fn of(bpm: f64, frames_per_beat: usize, encoder_ms: f64, head_ms: f64) -> Throughput {
        let beat_ms = 60_000.0 / bpm;
        let work_per_beat_ms = frames_per_beat as f64 * encoder_ms + head_ms;
        Throughput {
            bpm,
            beat_ms,
            frames_per_beat,
            work_per_beat_ms,
            kept_up: work_per_beat_ms < beat_ms,
            max_bpm: 60_000.0 / work_per_beat_ms.max(1e-9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(ms: f64) -> Summary {
        Summary {
            median_ms: ms,
            p90_ms: ms,
            runs: 1,
        }
    }

    fn figures() -> Figures {
        Figures {
            threads: 1,
            encoder: summary(100.0),
            post_cut_latency: Some(summary(105.0)),
            preprocess: summary(1.5),
            qrs_realtime_factor: 2000.0,
            peak_rss_mb: 200.0,
            allocations_per_frame: None,
        }
    }

    const PEERS: &str = r#"{"model":{"name":"m","version":"1","dir":"x"},
        "onnxruntime":{"1":{"encoder":{"median_ms":80.0,"p90_ms":90.0,"runs":5},
                            "head":{"median_ms":1.0,"p90_ms":1.0,"runs":5}}},
        "passes_per_beat":{"fps":30.0,"bpm":75.0,"echoview":8.0,"naive_clip16":384.0}}"#;

    #[test]
    fn summary_takes_median_and_nearest_rank_p90() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
        assert_eq!(s.median_ms, 5.5);
        assert_eq!(s.p90_ms, 9.0);
        assert_eq!(s.runs, 10);
        assert_eq!(Summary::of(&[3.0]).unwrap().p90_ms, 3.0);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn budgets_pass_and_fail_at_their_limits() {
        let peers = PeerFile::parse(PEERS, "p.json", "m", "1").unwrap();
        let b = budgets(&figures(), Some(&peers));
        // 100 / 80 = 1.25 <= 1.3.
        assert_eq!(b["encoder_vs_onnxruntime"].status, "pass");
        assert_eq!(b["label_latency"].status, "pass");
        assert_eq!(b["preprocess"].status, "pass");
        assert_eq!(b["qrs_realtime"].status, "pass");
        assert_eq!(b["peak_rss"].status, "pass");
        assert_eq!(b["zero_frame_allocations"].status, "not measured");

        let slow = Figures {
            encoder: summary(120.0),
            post_cut_latency: Some(summary(131.0)),
            preprocess: summary(2.5),
            qrs_realtime_factor: 999.0,
            peak_rss_mb: 251.0,
            allocations_per_frame: Some(3.0),
            ..figures()
        };
        let b = budgets(&slow, Some(&peers));
        for name in [
            "encoder_vs_onnxruntime",
            "label_latency",
            "preprocess",
            "qrs_realtime",
            "peak_rss",
            "zero_frame_allocations",
        ] {
            assert_eq!(b[name].status, "fail", "{name}: {:?}", b[name]);
        }
    }

    #[test]
    fn encoder_budget_needs_a_peer_at_the_same_thread_count() {
        let peers = PeerFile::parse(PEERS, "p.json", "m", "1").unwrap();
        let two = Figures {
            threads: 2,
            ..figures()
        };
        assert_eq!(
            budgets(&two, Some(&peers))["encoder_vs_onnxruntime"].status,
            "not measured"
        );
        assert_eq!(
            budgets(&figures(), None)["encoder_vs_onnxruntime"].status,
            "not measured"
        );
    }

    #[test]
    fn throughput_says_whether_t_passes_fit_in_a_beat() {
        // 8 x 100 ms + 1 ms = 801 ms: fits a 70 bpm beat (857 ms), not a 75 bpm one (800 ms).
        let t = Throughput::of(70.0, 8, 100.0, 1.0);
        assert!(t.kept_up);
        assert!((t.beat_ms - 857.14).abs() < 0.01, "{t:?}");
        assert!((t.max_bpm - 74.91).abs() < 0.01, "{t:?}");
        assert!(!Throughput::of(75.0, 8, 100.0, 1.0).kept_up);
    }

    #[test]
    fn peer_file_of_another_bundle_is_refused() {
        let err = PeerFile::parse(PEERS, "p.json", "m", "2").unwrap_err();
        assert!(err.to_string().contains("m 1"), "{err}");
        assert!(PeerFile::parse("{}", "p.json", "m", "1").is_err());
    }
}
