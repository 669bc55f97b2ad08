//! The channels of a session file: their topics, schemas, encodings and JSON payloads.
//!
//! Writer and reader both take every name from here, so the two cannot drift apart, and
//! `docs/session-format.md` documents exactly this table.

use serde::{Deserialize, Serialize};

use super::cdr;

/// One kind of message a session carries; each is one MCAP channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Captured video frames (`sensor_msgs/msg/Image`, CDR).
    Video,
    /// Blocks of ECG samples (JSON).
    Ecg,
    /// The simulator's true view, one message per frame (JSON).
    TruthView,
    /// The simulator's true R-peaks, one message per beat (JSON).
    TruthRPeak,
    /// Labels the pipeline published (JSON, free-form object).
    Labels,
    /// Captured Motion-JPEG frames (`sensor_msgs/msg/CompressedImage`, CDR), kept compressed
    /// as the grabber sent them.
    VideoCompressed,
}

/// Schema name, schema encoding, schema text and message encoding of one channel.
pub struct ChannelSpec {
    /// The MCAP topic.
    pub topic: &'static str,
    /// The schema's name (`sensor_msgs/msg/Image`, `echoview.EcgBlock`, ...).
    pub schema_name: &'static str,
    /// How the schema text is written (`ros2msg` or `jsonschema`).
    pub schema_encoding: &'static str,
    /// The schema itself, which Foxglove uses to decode and to offer message paths.
    pub schema_text: &'static str,
    /// How message payloads are written (`cdr` or `json`).
    pub message_encoding: &'static str,
}

impl Stream {
    /// Every stream, in the order the writer's per-stream tables are indexed.
    pub const ALL: [Stream; 6] = [
        Stream::Video,
        Stream::Ecg,
        Stream::TruthView,
        Stream::TruthRPeak,
        Stream::Labels,
        Stream::VideoCompressed,
    ];

    /// Position in [`Stream::ALL`], for per-stream arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stream a topic belongs to, if it is one of ours.
    pub fn from_topic(topic: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.spec().topic == topic)
    }

    /// The channel definition of this stream.
    pub fn spec(self) -> ChannelSpec {
        match self {
            Stream::Video => ChannelSpec {
                topic: "/video",
                schema_name: cdr::SCHEMA_NAME,
                schema_encoding: cdr::SCHEMA_ENCODING,
                schema_text: cdr::SCHEMA_TEXT,
                message_encoding: cdr::MESSAGE_ENCODING,
            },
            Stream::Ecg => json_spec("/ecg", "echoview.EcgBlock", ECG_SCHEMA),
            Stream::TruthView => json_spec("/truth/view", "echoview.TruthView", TRUTH_VIEW_SCHEMA),
            Stream::TruthRPeak => {
                json_spec("/truth/rpeak", "echoview.TruthRPeak", TRUTH_RPEAK_SCHEMA)
            }
            Stream::Labels => json_spec("/labels", "echoview.Label", LABEL_SCHEMA),
            Stream::VideoCompressed => ChannelSpec {
                topic: "/video/compressed",
                schema_name: cdr::COMPRESSED_SCHEMA_NAME,
                schema_encoding: cdr::SCHEMA_ENCODING,
                schema_text: cdr::COMPRESSED_SCHEMA_TEXT,
                message_encoding: cdr::MESSAGE_ENCODING,
            },
        }
    }
}

/// The spec of a JSON channel; they differ only in topic, schema name and schema text.
fn json_spec(
    topic: &'static str,
    schema_name: &'static str,
    schema_text: &'static str,
) -> ChannelSpec {
    ChannelSpec {
        topic,
        schema_name,
        schema_encoding: "jsonschema",
        schema_text,
        message_encoding: "json",
    }
}

/// Name of the MCAP metadata records that carry session-level key/value pairs.
pub const METADATA_NAME: &str = "echoview";

/// Metadata key holding the session format version, which readers check before decoding.
pub const KEY_FORMAT_VERSION: &str = "format_version";

/// Metadata key holding the echoview version that wrote the file, for tracing a bad file to
/// the software that made it.
pub const KEY_WRITER: &str = "writer";

/// The format version this code writes and the newest it reads. Bumped only for changes an
/// older reader would misread; new channels and new JSON fields do not bump it.
pub const FORMAT_VERSION: u32 = 1;

/// A time as `{sec, nsec}`, the shape Foxglove recognises as a timestamp in JSON messages.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Time {
    /// Whole seconds on the session clock.
    pub sec: u64,
    /// Nanoseconds past `sec`, below one second.
    pub nsec: u32,
}

impl Time {
    /// Splits a session-clock time in nanoseconds.
    pub fn from_ns(t_ns: u64) -> Time {
        Time {
            sec: t_ns / 1_000_000_000,
            nsec: (t_ns % 1_000_000_000) as u32,
        }
    }
}

/// `/ecg` payload as written; borrows the samples so writing a block copies nothing extra.
#[derive(Serialize)]
pub struct EcgOut<'a> {
    /// Time of the first sample, for Foxglove's plots and message lists.
    pub timestamp: Time,
    /// Index of the first sample since the ECG stream began.
    pub first_index: u64,
    /// Time of the first sample in nanoseconds (the message's log time, kept in the payload so
    /// the block is self-contained when exported).
    pub t0_ns: u64,
    /// Sampling rate in Hz.
    pub fs_hz: f64,
    /// Samples in millivolts; non-finite samples become `null`, as JSON has no NaN.
    pub samples_mv: &'a [f32],
    /// The front end reported the leads off.
    pub lead_off: bool,
}

/// `/ecg` payload as read; unknown fields are ignored so later writers may add some.
#[derive(Deserialize)]
pub struct EcgIn {
    /// See [`EcgOut::first_index`].
    pub first_index: u64,
    /// See [`EcgOut::t0_ns`].
    pub t0_ns: u64,
    /// See [`EcgOut::fs_hz`].
    pub fs_hz: f64,
    /// See [`EcgOut::samples_mv`]; `null` reads back as NaN.
    pub samples_mv: Vec<Option<f32>>,
    /// See [`EcgOut::lead_off`].
    pub lead_off: bool,
}

/// `/truth/view` payload as written.
#[derive(Serialize)]
pub struct TruthViewOut {
    /// The frame's time, for Foxglove.
    pub timestamp: Time,
    /// The view name as [`crate::views::View::name`] spells it.
    pub view: &'static str,
}

/// `/truth/view` payload as read.
#[derive(Deserialize)]
pub struct TruthViewIn {
    /// The view name; parsed with [`crate::views::View::from_name`].
    pub view: String,
}

/// `/truth/rpeak` payload as written.
#[derive(Serialize)]
pub struct TruthRPeakOut {
    /// The R-peak's time, for Foxglove.
    pub timestamp: Time,
    /// Index of the ECG sample at the R-peak, in the `/ecg` sample numbering.
    pub sample_index: u64,
}

/// `/truth/rpeak` payload as read.
#[derive(Deserialize)]
pub struct TruthRPeakIn {
    /// See [`TruthRPeakOut::sample_index`].
    pub sample_index: u64,
}

/// JSON Schema of `/ecg`; the `time`-titled timestamp is how Foxglove spots a time field.
const ECG_SCHEMA: &str = r#"{
  "title": "echoview.EcgBlock",
  "description": "A block of consecutive single-lead ECG samples; the message log time is the first sample's time",
  "type": "object",
  "properties": {
    "timestamp": {
      "title": "time",
      "description": "Session-clock time of the first sample",
      "type": "object",
      "properties": {
        "sec": { "type": "integer", "minimum": 0 },
        "nsec": { "type": "integer", "minimum": 0, "maximum": 999999999 }
      }
    },
    "first_index": { "type": "integer", "minimum": 0, "description": "Index of the first sample since the ECG stream began" },
    "t0_ns": { "type": "integer", "minimum": 0, "description": "Session-clock time of the first sample, nanoseconds" },
    "fs_hz": { "type": "number", "exclusiveMinimum": 0, "description": "Sampling rate, Hz" },
    "samples_mv": { "type": "array", "items": { "type": ["number", "null"] }, "description": "Samples in millivolts; null marks a non-finite sample" },
    "lead_off": { "type": "boolean", "description": "The front end reported the leads off" }
  },
  "required": ["first_index", "t0_ns", "fs_hz", "samples_mv", "lead_off"]
}"#;

/// JSON Schema of `/truth/view`; the enum lets Foxglove offer the view names.
const TRUTH_VIEW_SCHEMA: &str = r#"{
  "title": "echoview.TruthView",
  "description": "The simulator's true view at this frame time",
  "type": "object",
  "properties": {
    "timestamp": {
      "title": "time",
      "type": "object",
      "properties": {
        "sec": { "type": "integer", "minimum": 0 },
        "nsec": { "type": "integer", "minimum": 0, "maximum": 999999999 }
      }
    },
    "view": {
      "type": "string",
      "enum": ["PLAX", "PSAX-ves", "PSAX-base", "PSAX-mid", "PSAX-apical", "A2C", "A3C", "A4C", "A5C", "Suprasternal", "Subcostal"]
    }
  },
  "required": ["view"]
}"#;

/// JSON Schema of `/truth/rpeak`.
const TRUTH_RPEAK_SCHEMA: &str = r#"{
  "title": "echoview.TruthRPeak",
  "description": "A true R-peak from the simulator; the message log time is the R time",
  "type": "object",
  "properties": {
    "timestamp": {
      "title": "time",
      "type": "object",
      "properties": {
        "sec": { "type": "integer", "minimum": 0 },
        "nsec": { "type": "integer", "minimum": 0, "maximum": 999999999 }
      }
    },
    "sample_index": { "type": "integer", "minimum": 0, "description": "ECG sample index of the R-peak" }
  },
  "required": ["sample_index"]
}"#;

/// JSON Schema of `/labels`: any object, because the label's fields belong to the publisher.
const LABEL_SCHEMA: &str = r#"{
  "title": "echoview.Label",
  "description": "A label the pipeline published; any JSON object, its fields are defined by the publisher",
  "type": "object"
}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::View;

    #[test]
    fn json_schemas_parse_and_name_their_required_fields() {
        let ecg = serde_json::to_value(EcgOut {
            timestamp: Time::from_ns(1_500_000_000),
            first_index: 1,
            t0_ns: 1_500_000_000,
            fs_hz: 500.0,
            samples_mv: &[0.5, f32::NAN],
            lead_off: false,
        })
        .unwrap();
        let view = serde_json::to_value(TruthViewOut {
            timestamp: Time::from_ns(7),
            view: View::A4c.name(),
        })
        .unwrap();
        let rpeak = serde_json::to_value(TruthRPeakOut {
            timestamp: Time::from_ns(7),
            sample_index: 3,
        })
        .unwrap();
        for (stream, msg) in [
            (Stream::Ecg, ecg),
            (Stream::TruthView, view),
            (Stream::TruthRPeak, rpeak),
        ] {
            let schema: serde_json::Value = serde_json::from_str(stream.spec().schema_text)
                .unwrap_or_else(|e| panic!("{stream:?} schema: {e}"));
            let props = schema["properties"].as_object().unwrap();
            for field in msg.as_object().unwrap().keys() {
                assert!(props.contains_key(field), "{stream:?} lacks {field}");
            }
            for field in schema["required"].as_array().unwrap() {
                assert!(
                    msg.get(field.as_str().unwrap()).is_some(),
                    "{stream:?} {field}"
                );
            }
        }
        let label: serde_json::Value = serde_json::from_str(LABEL_SCHEMA).unwrap();
        assert_eq!(label["type"], "object");
    }

    #[test]
    fn truth_view_schema_lists_every_view() {
        let schema: serde_json::Value = serde_json::from_str(TRUTH_VIEW_SCHEMA).unwrap();
        let names: Vec<&str> = schema["properties"]["view"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, View::ALL.map(View::name));
    }

    #[test]
    fn topics_are_unique_and_found_again() {
        for s in Stream::ALL {
            assert_eq!(Stream::from_topic(s.spec().topic), Some(s));
            assert_eq!(Stream::ALL[s.index()], s);
        }
        assert_eq!(Stream::from_topic("/video/h264"), None);
    }

    #[test]
    fn time_splits_at_the_second() {
        let t = Time::from_ns(3_000_000_007);
        assert_eq!((t.sec, t.nsec), (3, 7));
    }
}
