//! The label socket's messages: newline-delimited JSON objects, each carrying the protocol
//! version `"v"` and its `"type"`.
//!
//! The daemon writes three types: `hello` once per connection (which model is speaking),
//! `view` once per classified heartbeat, and `status` once per second. A reader ignores types
//! it does not know and fields it does not know, so the daemon may add both without a new
//! version; a change that breaks a reader bumps [`PROTOCOL_VERSION`]. People read the
//! description in `docs/protocol.md`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The version every message carries as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a line from the socket could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line is not a JSON object with `v` and `type`, or a known type lacks a field.
    #[error("not an echoview protocol message ({detail}): {line}")]
    Malformed {
        /// What the parser said.
        detail: String,
        /// The line, cut to a readable length.
        line: String,
    },
    /// The daemon speaks a newer protocol than this reader.
    #[error(
        "the daemon speaks protocol version {found}, this program understands {PROTOCOL_VERSION}; \
         update echoview"
    )]
    NewerVersion {
        /// The version in the message.
        found: u64,
    },
}

/// One message on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Sent first on every connection.
    Hello(Hello),
    /// One classified heartbeat.
    View(ViewMsg),
    /// The daemon's health, once per second (boxed: by far the largest message).
    Status(Box<StatusMsg>),
}

impl Message {
    /// The `type` field's value.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::View(_) => "view",
            Message::Status(_) => "status",
        }
    }

    /// The message as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        #[derive(Serialize)]
        struct Envelope<'a, T: Serialize> {
            v: u32,
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            body: &'a T,
        }
        fn line<T: Serialize>(kind: &'static str, body: &T) -> String {
            let envelope = Envelope {
                v: PROTOCOL_VERSION,
                kind,
                body,
            };
            // Plain structs of strings, numbers and string-keyed maps always serialise.
            let mut s = serde_json::to_string(&envelope).unwrap_or_default();
            s.push('\n');
            s
        }
        match self {
            Message::Hello(m) => line(self.kind(), m),
            Message::View(m) => line(self.kind(), m),
            Message::Status(m) => line(self.kind(), m),
        }
    }

    /// Reads one line. `Ok(None)` for a message type this version does not know (a newer
    /// daemon may send more), so readers skip it.
    pub fn from_line(line: &str) -> Result<Option<Message>, ProtocolError> {
        let malformed = |detail: String| ProtocolError::Malformed {
            detail,
            line: line.chars().take(200).collect(),
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| malformed(e.to_string()))?;
        let version = value
            .get("v")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| malformed("no numeric \"v\"".into()))?;
        if version > u64::from(PROTOCOL_VERSION) {
            return Err(ProtocolError::NewerVersion { found: version });
        }
        let kind = value
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| malformed("no string \"type\"".into()))?;
        // Decoded again from the text, not from `value`, whose maps lose the key order that
        // `probs` keeps.
        let parsed = match kind {
            "hello" => serde_json::from_str(line).map(Message::Hello),
            "view" => serde_json::from_str(line).map(Message::View),
            "status" => serde_json::from_str(line).map(|s| Message::Status(Box::new(s))),
            _ => return Ok(None),
        };
        parsed.map(Some).map_err(|e| malformed(e.to_string()))
    }
}

/// `hello`: who is speaking, so a viewer can show and log the model behind every label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version, repeated for readers that only look at `hello`.
    pub protocol: u32,
    /// The daemon's version (`echoview 0.1.0`), for bug reports.
    pub daemon: String,
    /// The model bundle producing the labels.
    pub model: ModelInfo,
    /// The inference engine running it (`tract`, `tensorrt`).
    pub engine: String,
    /// Why the engine is not TensorRT, when `auto` fell back to tract (a message for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The same as a stable code (`plan_stale`, `library_missing`, ...) for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The labels a `view` may carry, in the model's order, `unknown` last.
    pub labels: Vec<String>,
    /// Frames gated per heartbeat (T).
    pub frames_per_beat: usize,
    /// The rule turning raw labels into the `stable` label.
    pub stability: StabilityInfo,
}

/// A model bundle's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// sha256 of `manifest.toml`, which pins every file of the bundle.
    pub hash: String,
}

/// The stability rule in force (see `daemon::stability`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityInfo {
    /// Consecutive agreeing beats that change the stable label.
    pub agree_beats: u32,
    /// A beat at least this confident changes it at once.
    pub confident: f32,
    /// Consecutive `unknown` beats that make it `unknown`.
    pub unknown_beats: u32,
}

/// `view`: one classified heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewMsg {
    /// Time of the beat's end (its closing boundary), seconds on the session clock.
    pub t: f64,
    /// Time of the beat's start, seconds.
    pub start: f64,
    /// The daemon's running heartbeat number; skipped and dropped beats take numbers too, so
    /// a gap shows beats that were not published.
    pub beat: u64,
    /// This beat's own label: a view name or `unknown`.
    pub label: String,
    /// The label after hysteresis: what a viewer should display.
    pub stable: String,
    /// Probability of the most probable view.
    pub confidence: f32,
    /// Probability of every view, in the model's label order.
    pub probs: Probs,
    /// Weight of the spatial branch in the head's mix.
    pub alpha: f32,
    /// How the beat was cut: `ecg` (R-peaks) or `time` (fixed windows while the ECG is
    /// unusable).
    pub gating: String,
    /// Heart rate from the beat's RR interval; `null` for time-gated beats.
    pub hr_bpm: Option<f64>,
    /// Milliseconds from the delivery of the beat's closing boundary to publication.
    pub latency_ms: f64,
    /// Milliseconds from the beat being cut (its end confirmed and its frames there) to
    /// publication: the model's share of `latency_ms`.
    #[serde(default)]
    pub inference_ms: f64,
    /// Frames the encoder ran on after the beat was cut; the others were encoded ahead.
    #[serde(default)]
    pub encoded_at_cut: u32,
    /// The view the source truly showed (simulator and simulated sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<String>,
}

/// Probabilities keyed by view name, kept in the model's order (a JSON object whose key
/// order is the label order, which a plain map would sort away).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probs(pub Vec<(String, f32)>);

impl Serialize for Probs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, p) in &self.0 {
            // Four decimals are plenty for people and keep lines short.
            map.serialize_entry(name, &((p * 1e4).round() / 1e4))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Probs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Probs, D::Error> {
        struct ProbsVisitor;
        impl<'de> Visitor<'de> for ProbsVisitor {
            type Value = Probs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of view name to probability")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Probs, A::Error> {
                let mut entries = Vec::new();
                while let Some((name, p)) = access.next_entry::<String, f32>()? {
                    entries.push((name, p));
                }
                Ok(Probs(entries))
            }
        }
        deserializer.deserialize_map(ProbsVisitor)
    }
}

/// `status`: the daemon's health, sent every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMsg {
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// `starting` (sources not yet opened), `running`, `waiting` (no video: nothing to
    /// classify) or `stalled` (a thread stopped making progress; the watchdog will act).
    pub state: String,
    /// The video stream.
    pub video: StreamStatus,
    /// The ECG stream.
    pub ecg: EcgStatus,
    /// How beats are being cut now: `ecg`, `time` (ECG unusable) or `none` (no video yet).
    pub gating: String,
    /// The inference engine.
    pub engine: EngineStatus,
    /// Heartbeat counters since start.
    pub beats: BeatCounts,
    /// Things thrown away to keep up, since start.
    pub drops: Drops,
    /// Faults since start.
    pub errors: Errors,
    /// Session recording.
    pub recording: RecordingStatus,
    /// Clients connected to the socket now.
    pub clients: u64,
}

/// One input stream's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Data arrived within the last second.
    pub up: bool,
    /// The source delivering it (`session file x.mcap`, `simulator`), `null` if none.
    pub source: Option<String>,
    /// The source's state: `opening`, `open`, `down` (failed; retrying), `ended` (a file
    /// played to its end) or `none`.
    pub state: String,
    /// Frames per second over the last status interval.
    pub fps: f64,
    /// Frames received since start.
    pub frames: u64,
    /// The source's last fault, while it is down.
    pub error: Option<String>,
}

/// The ECG stream's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcgStatus {
    /// Samples arrived within the last second.
    pub up: bool,
    /// The source delivering it, `null` if none.
    pub source: Option<String>,
    /// The source's state, as for video.
    pub state: String,
    /// Samples per second over the last status interval.
    pub samples_per_s: f64,
    /// Samples received since start.
    pub samples: u64,
    /// `good`, `poor` (recent beats skipped for noise), `lead_off` (the front end says so),
    /// `no_r_peaks` (no beat detected lately) or `lost` (no ECG while video flows).
    pub quality: String,
    /// The source's last fault, while it is down.
    pub error: Option<String>,
}

/// The engine and whether it is the one asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The engine running the model.
    pub name: String,
    /// Why it is not the engine asked for, when it is a fallback.
    pub fallback: Option<String>,
    /// The same as a stable code (`plan_stale`, `library_missing`, ...) for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Where the encoder runs, `gpu` (TensorRT) or `cpu` (tract), so a field engineer sees at
    /// a glance whether the cart uses its GPU (status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Per-frame encoder latency in milliseconds (preprocessing and one encoder pass,
    /// averaged over recent frames encoded ahead): what decides whether every frame can be
    /// encoded. Absent until a frame has been encoded ahead (status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_ms: Option<f64>,
    /// Which frames are encoded ahead now: `phases` or `every-frame`; absent without
    /// lookahead (status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<String>,
    /// The background rebuild of a missing or stale TensorRT plan, once one was started
    /// (status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_rebuild: Option<PlanRebuildStatus>,
}

impl EngineStatus {
    /// Whether `other` names the same engine for the same reason: what `hello` carries, so
    /// only a change of it (not of the latency or the rebuild) re-greets clients.
    pub fn same_engine(&self, other: &EngineStatus) -> bool {
        self.name == other.name
            && self.fallback == other.fallback
            && self.fallback_reason == other.fallback_reason
    }
}

/// The state of a background plan rebuild (`daemon::planswitch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRebuildStatus {
    /// `running` (building and checking the plan), `switched` (TensorRT runs the encoder
    /// now), `load_failed` (the new plan was built but TensorRT cannot run it: the engine's
    /// fallback says why) or `build_failed` (the build command failed).
    pub state: String,
    /// The plan being built.
    pub plan: String,
    /// What went wrong, for the failed states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Heartbeat counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BeatCounts {
    /// Beats classified and published.
    pub classified: u64,
    /// Of those, labelled `unknown`.
    pub unknown: u64,
    /// Of those, cut by time windows.
    pub time_gated: u64,
    /// Beats not classified, by reason (`bad_ecg_quality`, `implausible_rr`, ...).
    pub skipped: BTreeMap<String, u64>,
    /// Frames encoded ahead of their beat's end (`pipeline.lookahead`).
    #[serde(default)]
    pub frames_encoded_ahead: u64,
}

/// Drop counters: each says where the daemon shed load instead of falling behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drops {
    /// Source items (frames, ECG blocks) dropped because gating was behind.
    pub input: u64,
    /// Beats replaced by a fresher one before inference reached them.
    pub beats: u64,
    /// Published messages the hub could not take (the server was behind).
    pub published: u64,
    /// Items not recorded because the recorder was behind.
    pub record: u64,
    /// Clients disconnected because they did not read.
    pub clients: u64,
}

/// Fault counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Beats the engine failed on.
    pub engine: u64,
    /// Times a failing engine was reopened or replaced by the fallback (`engine` says which
    /// runs now). Added in protocol 1 without a version change: old readers ignore it.
    #[serde(default)]
    pub engine_restarts: u64,
    /// Source failures (open or read).
    pub source: u64,
    /// Connections refused because the peer's credentials are not root, the daemon's user or
    /// the socket's group (see `daemon::peer`). Added in protocol 1 without a version change.
    #[serde(default)]
    pub clients_refused: u64,
    /// Recording failures.
    pub record: u64,
    /// ECG the detector could not take (e.g. an unsupported sampling rate).
    pub ecg: u64,
    /// Frames dropped where they entered because they were malformed (pixels of the wrong
    /// length, a JPEG cut short): each costs that frame only. Added in protocol 1 without a
    /// version change: old readers ignore it.
    #[serde(default)]
    pub frames: u64,
    /// The latest fault, for people.
    pub last: Option<String>,
}

/// Recording state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingStatus {
    /// `off` (not configured), `on`, `stopped` (disk below the floor; classifying goes on)
    /// or `failed` (the last write failed; retrying).
    pub state: String,
    /// The file being written.
    pub file: Option<String>,
    /// Files started since the daemon started.
    pub files: u64,
    /// Free space where recordings go, in MB.
    pub free_mb: Option<u64>,
    /// Why recording is not on, when it is not.
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ViewMsg {
        ViewMsg {
            t: 12.5,
            start: 11.7,
            beat: 17,
            label: "A4C".into(),
            stable: "A4C".into(),
            confidence: 0.93,
            probs: Probs(vec![("PLAX".into(), 0.07), ("A4C".into(), 0.93)]),
            alpha: 0.5,
            gating: "ecg".into(),
            hr_bpm: Some(75.0),
            latency_ms: 412.0,
            inference_ms: 21.5,
            encoded_at_cut: 1,
            truth: None,
        }
    }

    #[test]
    fn view_line_is_versioned_json_with_ordered_probs() {
        let line = Message::View(view()).to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert!(
            line.starts_with(r#"{"v":1,"type":"view","t":12.5,"#),
            "{line}"
        );
        assert!(
            line.contains(r#""probs":{"PLAX":0.07,"A4C":0.93}"#),
            "{line}"
        );
        assert!(!line.contains("truth"), "absent truth is left out: {line}");
        let back = Message::from_line(&line).unwrap().unwrap();
        assert_eq!(back, Message::View(view()));
    }

    #[test]
    fn time_gated_beat_has_null_heart_rate() {
        let msg = ViewMsg {
            hr_bpm: None,
            gating: "time".into(),
            ..view()
        };
        let line = Message::View(msg).to_line();
        assert!(line.contains(r#""hr_bpm":null"#), "{line}");
    }

    #[test]
    fn unknown_types_and_fields_are_skipped_newer_versions_refused() {
        assert_eq!(
            Message::from_line(r#"{"v":1,"type":"future","x":1}"#).unwrap(),
            None
        );
        let mut value = serde_json::to_value(view()).unwrap();
        value["v"] = 1.into();
        value["type"] = "view".into();
        value["new_field"] = "ignored".into();
        assert!(matches!(
            Message::from_line(&value.to_string()),
            Ok(Some(Message::View(_)))
        ));
        assert!(matches!(
            Message::from_line(r#"{"v":2,"type":"view"}"#),
            Err(ProtocolError::NewerVersion { found: 2 })
        ));
        let err = Message::from_line(r#"{"v":1,"type":"view","t":1}"#).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        assert!(Message::from_line("not json").is_err());
    }

    #[test]
    fn status_round_trips() {
        let status = StatusMsg {
            uptime_s: 3.0,
            state: "running".into(),
            video: StreamStatus {
                up: true,
                source: Some("simulator".into()),
                state: "open".into(),
                fps: 30.0,
                frames: 90,
                error: None,
            },
            ecg: EcgStatus {
                up: false,
                source: None,
                state: "none".into(),
                samples_per_s: 0.0,
                samples: 0,
                quality: "lost".into(),
                error: None,
            },
            gating: "time".into(),
            engine: EngineStatus {
                name: "tract".into(),
                fallback: Some("the plan p is stale".into()),
                fallback_reason: Some("plan_stale".into()),
                ..EngineStatus::default()
            },
            beats: BeatCounts {
                skipped: BTreeMap::from([("bad_ecg_quality".into(), 2)]),
                ..BeatCounts::default()
            },
            drops: Drops::default(),
            errors: Errors::default(),
            recording: RecordingStatus {
                state: "off".into(),
                ..RecordingStatus::default()
            },
            clients: 2,
        };
        let line = Message::Status(Box::new(status.clone())).to_line();
        assert!(line.starts_with(r#"{"v":1,"type":"status","#));
        assert_eq!(
            Message::from_line(&line).unwrap(),
            Some(Message::Status(Box::new(status)))
        );
    }
}
