//! Which frames the inference thread encodes ahead of their beat: the predicted phases only,
//! or every frame that arrives.
//!
//! Encoding the predicted phases (`daemon::lookahead`) costs T encoder passes per beat, but a
//! prediction that misses (the heart rate changed) leaves frames to encode after the cut.
//! An encoder fast enough to run on every incoming frame (TensorRT on the Jetson's GPU) makes
//! the prediction unnecessary: every frame the gate can pick is already in the feature cache
//! when its beat closes, whatever the beat's length. Only an encoder with headroom may do
//! that, or the frames it falls behind on would delay the beats themselves; [`every_frame`]
//! decides from the measured per-frame latency and the frame rate, both kept here.
//!
//! Pure logic: the gating thread feeds it frame times, the inference thread its timings.

use serde::Deserialize;

/// `pipeline.encode`: which frames to encode ahead of their beat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncodeMode {
    /// Every frame while the engine runs on the GPU and keeps up with the frame rate with
    /// [`HEADROOM`] to spare, else the predicted phases.
    #[default]
    Auto,
    /// The predicted phases only (T frames per beat).
    Phases,
    /// Every frame, whatever the engine (for testing on tract with a small model, and for a
    /// cart known to keep up).
    EveryFrame,
}

impl EncodeMode {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            EncodeMode::Auto => "auto",
            EncodeMode::Phases => "phases",
            EncodeMode::EveryFrame => "every-frame",
        }
    }
}

/// The largest share of real time the encoder may spend on frames encoded ahead in `auto`
/// mode: the rest stays free for the beats' own work (the head, frames the region change
/// made new) and for bursts of frames, so a closed beat never waits behind a queue.
pub const HEADROOM: f64 = 0.5;

/// Frames waiting to be encoded ahead when every frame is: about a second of 60 fps video,
/// so the frames of the open beat that arrived before the last beat's region was known can
/// be posted again at the cut without pushing out the newest ones.
pub const EVERY_FRAME_QUEUE: usize = 64;

/// Feature cache entries when every frame is encoded: the frames of the beat being
/// classified and of the beat now open, at up to 60 fps and 40 bpm (3 s of video), so the
/// open beat's early frames are still cached when it closes.
pub const EVERY_FRAME_CACHE: usize = 180;

/// Weight of the newest sample in the running averages: about the last ten samples count,
/// so one slow pass (a page fault, a GPU clock change) does not flip the decision.
const SMOOTHING: f64 = 0.1;

/// An exponentially weighted running average.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Average {
    /// The average so far; `None` before the first sample.
    value: Option<f64>,
}

impl Average {
    /// Adds a sample; a non-finite or negative one is ignored (a clock that stepped).
    pub fn push(&mut self, sample: f64) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + SMOOTHING * (sample - v),
        });
    }

    /// The average, once there is a sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// The video's frame rate, from the capture times of the frames.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameRate {
    /// Capture time of the newest frame seen.
    last_ns: Option<u64>,
    /// Average interval between frames, in nanoseconds.
    interval_ns: Average,
}

impl FrameRate {
    /// Notes the newest frame's capture time; a time seen already or earlier is ignored.
    pub fn frame(&mut self, t_ns: u64) {
        match self.last_ns {
            Some(last) if t_ns <= last => {}
            Some(last) => {
                self.interval_ns.push((t_ns - last) as f64);
                self.last_ns = Some(t_ns);
            }
            None => self.last_ns = Some(t_ns),
        }
    }

    /// Frames per second, once two frames have been seen.
    pub fn per_second(&self) -> Option<f64> {
        self.interval_ns
            .get()
            .filter(|ns| *ns > 0.0)
            .map(|ns| 1e9 / ns)
    }
}

/// Whether to encode every frame now: always or never when the mode says so; in `auto` mode
/// only on the GPU, once the per-frame latency `frame_ms` at `fps` keeps the encoder busy
/// for at most [`HEADROOM`] of real time.
pub fn every_frame(
    mode: EncodeMode,
    on_gpu: bool,
    frame_ms: Option<f64>,
    fps: Option<f64>,
) -> bool {
    match mode {
        EncodeMode::Phases => false,
        EncodeMode::EveryFrame => true,
        EncodeMode::Auto => match (frame_ms, fps) {
            (Some(ms), Some(fps)) => on_gpu && ms * fps / 1000.0 <= HEADROOM,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_frame_rate_comes_from_the_frame_intervals() {
        let mut rate = FrameRate::default();
        assert_eq!(rate.per_second(), None);
        rate.frame(1000 * MS);
        assert_eq!(rate.per_second(), None, "one frame has no rate");
        for i in 1..=30 {
            rate.frame(1000 * MS + i * 40 * MS);
        }
        let fps = rate.per_second().unwrap();
        assert!((fps - 25.0).abs() < 1e-6, "{fps}");
        rate.frame(1000 * MS);
        assert!(
            (rate.per_second().unwrap() - 25.0).abs() < 1e-6,
            "old frames ignored"
        );
    }

    #[test]
    fn the_average_follows_slowly_and_ignores_nonsense() {
        let mut a = Average::default();
        a.push(f64::NAN);
        assert_eq!(a.get(), None);
        a.push(10.0);
        assert_eq!(a.get(), Some(10.0));
        a.push(20.0);
        assert!((a.get().unwrap() - 11.0).abs() < 1e-9);
        a.push(-5.0);
        assert!((a.get().unwrap() - 11.0).abs() < 1e-9);
    }

    #[test]
    fn auto_encodes_every_frame_only_on_a_gpu_with_headroom() {
        let auto = EncodeMode::Auto;
        // 30 fps: 16 ms per frame is 48% of real time, 17 ms is 51%.
        assert!(every_frame(auto, true, Some(16.0), Some(30.0)));
        assert!(!every_frame(auto, true, Some(17.0), Some(30.0)));
        assert!(
            !every_frame(auto, false, Some(1.0), Some(30.0)),
            "tract: phases"
        );
        assert!(
            !every_frame(auto, true, None, Some(30.0)),
            "not measured yet"
        );
        assert!(
            !every_frame(auto, true, Some(1.0), None),
            "no frame rate yet"
        );
        assert!(every_frame(EncodeMode::EveryFrame, false, None, None));
        assert!(!every_frame(
            EncodeMode::Phases,
            true,
            Some(0.1),
            Some(30.0)
        ));
    }

    #[test]
    fn modes_parse_from_the_config_names() {
        #[derive(Deserialize)]
        struct T {
            encode: EncodeMode,
        }
        for mode in [EncodeMode::Auto, EncodeMode::Phases, EncodeMode::EveryFrame] {
            let t: T = toml::from_str(&format!("encode = \"{}\"", mode.name())).unwrap();
            assert_eq!(t.encode, mode);
        }
        assert!(toml::from_str::<T>("encode = \"all\"").is_err());
    }
}
