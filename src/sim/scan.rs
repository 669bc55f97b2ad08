//! Scan scripts: which views the simulated sonographer shows, in what order, for how long.
//!
//! A scan is a list of segments; each holds one view for a whole number of heartbeats, and the
//! probe cuts to the next segment's view at an R-peak, so every heartbeat (R to next R) shows a
//! single view and carries an unambiguous truth label. A script comes either from a view list
//! on the command line ([`ScanScript::from_view_list`]) or from a TOML scan file
//! ([`ScanScript::from_toml`]):
//!
//! ```toml
//! # Segments play in file order.
//! [[segment]]
//! view = "PLAX"          # one of the 11 view names, case-insensitive
//! beats = 6              # heartbeats to hold the view, 1..=10000
//!
//! [[segment]]
//! view = "A4C"
//! beats = 8
//! depth_cm = 17.0        # optional: imaging depth in cm, 6..=24
//! gain = 1.3             # optional: overall gain factor, 0.25..=4
//! tilt_deg = -4.0        # optional: probe rotation in degrees, -30..=30
//! shift_cm = [0.5, -0.3] # optional: probe offset (lateral, axial) in cm, each -5..=5
//! speckle_seed = 1234    # optional: fixes this segment's speckle pattern
//! bpm = 95.0             # optional: base heart rate in this segment, inside the config range
//! ```
//!
//! Settings left out are drawn at random per segment from the simulation seed. Any other key is
//! rejected with an error naming the file and the key, so a typo never silently falls back to a
//! random value. Ranges are checked when the script is validated as part of a `SimConfig`.

use std::path::Path;

use serde::Deserialize;

use super::SimError;
use crate::views::View;

/// One stretch of the scan that shows a single view.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The view shown, which is also the truth label of every frame in the segment.
    pub view: View,
    /// Heartbeats (R to next R) the view is held; the segment starts and ends at R-peaks.
    pub beats: u32,
    /// Imaging depth in cm; `None` draws a view-typical depth, so the model sees zoom variety.
    pub depth_cm: Option<f64>,
    /// Overall gain factor (1 = nominal); `None` draws one at random.
    pub gain: Option<f64>,
    /// Probe rotation in degrees; `None` draws a few degrees at random.
    pub tilt_deg: Option<f64>,
    /// Probe offset (lateral, axial) in cm; `None` draws a small random offset.
    pub shift_cm: Option<[f64; 2]>,
    /// Seed of this segment's speckle; `None` derives it from the simulation seed.
    pub speckle_seed: Option<u64>,
    /// Base heart rate in beats per minute while in this segment; `None` uses the config's.
    pub bpm: Option<f64>,
}

impl Segment {
    /// A segment with every optional setting drawn at random.
    pub fn new(view: View, beats: u32) -> Segment {
        Segment {
            view,
            beats,
            depth_cm: None,
            gain: None,
            tilt_deg: None,
            shift_cm: None,
            speckle_seed: None,
            bpm: None,
        }
    }
}

/// The whole scan, played from the first segment to the last.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanScript {
    /// The segments in playing order.
    pub segments: Vec<Segment>,
}

/// The scan file as written, before view names are resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanFile {
    /// The `[[segment]]` tables in file order.
    segment: Vec<SegmentFile>,
}

/// One `[[segment]]` table of a scan file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    /// View name as written; resolved with [`View::from_name`].
    view: String,
    /// See [`Segment::beats`].
    beats: u32,
    /// See [`Segment::depth_cm`].
    depth_cm: Option<f64>,
    /// See [`Segment::gain`].
    gain: Option<f64>,
    /// See [`Segment::tilt_deg`].
    tilt_deg: Option<f64>,
    /// See [`Segment::shift_cm`].
    shift_cm: Option<[f64; 2]>,
    /// See [`Segment::speckle_seed`].
    speckle_seed: Option<u64>,
    /// See [`Segment::bpm`].
    bpm: Option<f64>,
}

impl ScanScript {
    /// `beats_per_view` heartbeats of each view in `views`, in order.
    pub fn from_views(views: &[View], beats_per_view: u32) -> ScanScript {
        ScanScript {
            segments: views
                .iter()
                .map(|&v| Segment::new(v, beats_per_view))
                .collect(),
        }
    }

    /// Parses a command-line view list: `all` (the 11 views in canonical order) or
    /// comma-separated view names such as `PLAX,A4C,psax-mid`.
    pub fn from_view_list(list: &str, beats_per_view: u32) -> Result<ScanScript, SimError> {
        if list.trim().eq_ignore_ascii_case("all") {
            return Ok(ScanScript::from_views(&View::ALL, beats_per_view));
        }
        let mut views = Vec::new();
        for item in list.split(',') {
            let view = item.parse::<View>().map_err(|e| SimError::ViewList {
                list: list.to_string(),
                message: if item.trim().is_empty() {
                    "empty view name (a doubled or trailing comma?)".to_string()
                } else {
                    e.to_string()
                },
            })?;
            views.push(view);
        }
        Ok(ScanScript::from_views(&views, beats_per_view))
    }

    /// Parses the TOML scan format described in the module documentation. `source` names the
    /// text in error messages (normally the file path).
    pub fn from_toml(text: &str, source: &str) -> Result<ScanScript, SimError> {
        let file: ScanFile = toml::from_str(text).map_err(|e| SimError::ScanFile {
            source_name: source.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut segments = Vec::with_capacity(file.segment.len());
        for (i, s) in file.segment.into_iter().enumerate() {
            let view = s.view.parse::<View>().map_err(|e| SimError::ScanFile {
                source_name: source.to_string(),
                message: format!("segment {} (counting from 1): {e}", i + 1),
            })?;
            segments.push(Segment {
                view,
                beats: s.beats,
                depth_cm: s.depth_cm,
                gain: s.gain,
                tilt_deg: s.tilt_deg,
                shift_cm: s.shift_cm,
                speckle_seed: s.speckle_seed,
                bpm: s.bpm,
            });
        }
        if segments.is_empty() {
            return Err(SimError::ScanFile {
                source_name: source.to_string(),
                message: "no [[segment]] tables; a scan needs at least one".to_string(),
            });
        }
        Ok(ScanScript { segments })
    }

    /// Reads and parses a TOML scan file.
    pub fn load(path: &Path) -> Result<ScanScript, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ScanScript::from_toml(&text, &path.display().to_string())
    }

    /// Heartbeats in the whole scan.
    pub fn total_beats(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.beats)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[segment]]
view = "PLAX"
beats = 6

[[segment]]
view = "a4c"
beats = 8
depth_cm = 17.0
gain = 1.3
tilt_deg = -4.0
shift_cm = [0.5, -0.3]
speckle_seed = 1234
bpm = 95.0
"#;

    #[test]
    fn documented_example_parses() {
        let s = ScanScript::from_toml(EXAMPLE, "example.toml").unwrap();
        assert_eq!(s.segments.len(), 2);
        assert_eq!(s.segments[0], Segment::new(View::Plax, 6));
        let a4c = &s.segments[1];
        assert_eq!(a4c.view, View::A4c);
        assert_eq!(a4c.beats, 8);
        assert_eq!(a4c.depth_cm, Some(17.0));
        assert_eq!(a4c.shift_cm, Some([0.5, -0.3]));
        assert_eq!(a4c.speckle_seed, Some(1234));
        assert_eq!(a4c.bpm, Some(95.0));
        assert_eq!(s.total_beats(), 14);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = "[[segment]]\nview = \"PLAX\"\nbeats = 3\ndepht_cm = 12.0\n";
        let err = ScanScript::from_toml(text, "scans/demo.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scans/demo.toml"), "{err}");
        assert!(err.contains("depht_cm"), "{err}");
        let top = "beats_per_view = 3\n[[segment]]\nview = \"PLAX\"\nbeats = 3\n";
        let err = ScanScript::from_toml(top, "top.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("top.toml") && err.contains("beats_per_view"),
            "{err}"
        );
    }

    #[test]
    fn bad_view_and_empty_scan_are_rejected() {
        let err = ScanScript::from_toml("[[segment]]\nview = \"A6C\"\nbeats = 2\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("A6C") && err.contains("segment 1"));
        let err = ScanScript::from_toml("", "empty.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty.toml"), "{err}");
    }

    #[test]
    fn view_list_parses_all_and_names() {
        let all = ScanScript::from_view_list("all", 3).unwrap();
        assert_eq!(all.segments.len(), 11);
        assert_eq!(all.total_beats(), 33);
        let two = ScanScript::from_view_list("PLAX, psax-mid", 2).unwrap();
        let views: Vec<View> = two.segments.iter().map(|s| s.view).collect();
        assert_eq!(views, vec![View::Plax, View::PsaxMid]);
        let err = ScanScript::from_view_list("PLAX,,A4C", 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty view name"), "{err}");
        let err = ScanScript::from_view_list("PLAX,A9C", 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("A9C"), "{err}");
    }
}
