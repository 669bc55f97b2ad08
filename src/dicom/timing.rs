//! Frame times of a cine: carts record them in one of three attributes, and the gate needs a
//! time for every frame to place cardiac phases.
//!
//! Pure: [`frame_times`] turns the attribute values into times; reading them is [`super::read`]'s.

/// Which attribute the frame times came from, reported by `echoview dicom info` so a QA
/// engineer can tell a cart's nominal rate from a measured vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingSource {
    /// Frame Time (0018,1063): one interval for every frame.
    FrameTime,
    /// Frame Time Vector (0018,1065): one interval per frame, the first one 0.
    FrameTimeVector,
    /// Cine Rate (0018,0040): frames per second.
    CineRate,
    /// A single-frame image: one frame at time 0.
    SingleFrame,
}

impl TimingSource {
    /// The attribute's name as people know it from DICOM viewers.
    pub fn name(self) -> &'static str {
        match self {
            TimingSource::FrameTime => "Frame Time",
            TimingSource::FrameTimeVector => "Frame Time Vector",
            TimingSource::CineRate => "Cine Rate",
            TimingSource::SingleFrame => "single frame",
        }
    }
}

/// The timing attributes of a cine as found in the file (absent ones `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimingAttributes {
    /// Frame Time (0018,1063), milliseconds.
    pub frame_time_ms: Option<f64>,
    /// Frame Time Vector (0018,1065), milliseconds from the previous frame.
    pub frame_time_vector_ms: Option<Vec<f64>>,
    /// Cine Rate (0018,0040), frames per second.
    pub cine_rate: Option<f64>,
    /// Whether Frame Increment Pointer (0028,0009) names the Frame Time Vector, which then
    /// wins over a Frame Time that may also be present.
    pub pointer_is_vector: bool,
}

/// Frame times in nanoseconds from the first frame, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameTimes {
    /// The attribute used.
    pub source: TimingSource,
    /// One time per frame, strictly increasing, the first 0.
    pub times_ns: Vec<u64>,
}

impl FrameTimes {
    /// The mean frame interval in milliseconds (0 for a single frame), for display.
    pub fn mean_interval_ms(&self) -> f64 {
        match (self.times_ns.first(), self.times_ns.last()) {
            (Some(&a), Some(&b)) if self.times_ns.len() > 1 => {
                (b - a) as f64 / 1e6 / (self.times_ns.len() - 1) as f64
            }
            _ => 0.0,
        }
    }
}

/// Why the timing attributes cannot give frame times; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimingError {
    /// A multi-frame image without any timing attribute.
    #[error(
        "has {0} frames but no Frame Time (0018,1063), Frame Time Vector (0018,1065) or Cine \
         Rate (0018,0040)"
    )]
    Missing(u32),
    /// An interval or rate that is not a positive finite number.
    #[error("{attribute} holds {value}, which is not a positive number of {unit}")]
    NotPositive {
        /// The attribute.
        attribute: &'static str,
        /// The value found.
        value: f64,
        /// Its unit.
        unit: &'static str,
    },
    /// A Frame Time Vector whose length is not the number of frames.
    #[error("Frame Time Vector (0018,1065) has {values} values for {frames} frames")]
    VectorLength {
        /// Values in the vector.
        values: usize,
        /// Frames in the image.
        frames: u32,
    },
}

/// Longest frame interval accepted, in milliseconds: a cine slower than 1 frame/s is not a
/// cine, and a huge value would overflow the clock.
const MAX_INTERVAL_MS: f64 = 10_000.0;

/// The frame times of `frames` frames. Priority: the Frame Time Vector when the Frame
/// Increment Pointer names it, then Frame Time, then the vector, then Cine Rate; a single
/// frame needs none of them.
pub fn frame_times(frames: u32, attrs: &TimingAttributes) -> Result<FrameTimes, TimingError> {
    let uniform = |source, interval_ms: f64| FrameTimes {
        source,
        times_ns: (0..u64::from(frames))
            .map(|i| (i as f64 * interval_ms * 1e6).round() as u64)
            .collect(),
    };
    let check = |attribute, value: f64, unit| {
        if value.is_finite() && value > 0.0 && value <= MAX_INTERVAL_MS {
            Ok(value)
        } else {
            Err(TimingError::NotPositive {
                attribute,
                value,
                unit,
            })
        }
    };
    if let (true, Some(v)) = (attrs.pointer_is_vector, &attrs.frame_time_vector_ms) {
        return vector_times(frames, v);
    }
    if let Some(ft) = attrs.frame_time_ms {
        let ft = check("Frame Time (0018,1063)", ft, "milliseconds")?;
        return Ok(uniform(TimingSource::FrameTime, ft));
    }
    if let Some(v) = &attrs.frame_time_vector_ms {
        return vector_times(frames, v);
    }
    if let Some(rate) = attrs.cine_rate {
        let rate = check("Cine Rate (0018,0040)", rate, "frames per second")?;
        return Ok(uniform(TimingSource::CineRate, 1000.0 / rate));
    }
    if frames <= 1 {
        return Ok(FrameTimes {
            source: TimingSource::SingleFrame,
            times_ns: vec![0],
        });
    }
    Err(TimingError::Missing(frames))
}

/// Times from a Frame Time Vector: each value is the time since the previous frame, and the
/// first (nominally 0) is ignored so the first frame stays at 0.
fn vector_times(frames: u32, vector_ms: &[f64]) -> Result<FrameTimes, TimingError> {
    if vector_ms.len() != frames as usize {
        return Err(TimingError::VectorLength {
            values: vector_ms.len(),
            frames,
        });
    }
    let mut times_ns = Vec::with_capacity(vector_ms.len());
    let mut t_ms = 0.0;
    for (i, &dt) in vector_ms.iter().enumerate() {
        if i > 0 {
            if !(dt.is_finite() && dt > 0.0 && dt <= MAX_INTERVAL_MS) {
                return Err(TimingError::NotPositive {
                    attribute: "Frame Time Vector (0018,1065)",
                    value: dt,
                    unit: "milliseconds",
                });
            }
            t_ms += dt;
        }
        times_ns.push((t_ms * 1e6).round() as u64);
    }
    Ok(FrameTimes {
        source: TimingSource::FrameTimeVector,
        times_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_time_spaces_frames_evenly() {
        let attrs = TimingAttributes {
            frame_time_ms: Some(33.333),
            ..Default::default()
        };
        let t = frame_times(3, &attrs).unwrap();
        assert_eq!(t.source, TimingSource::FrameTime);
        assert_eq!(t.times_ns, vec![0, 33_333_000, 66_666_000]);
    }

    #[test]
    fn vector_accumulates_intervals_and_wins_when_pointed_to() {
        let attrs = TimingAttributes {
            frame_time_ms: Some(10.0),
            frame_time_vector_ms: Some(vec![0.0, 20.0, 30.0]),
            pointer_is_vector: true,
            ..Default::default()
        };
        let t = frame_times(3, &attrs).unwrap();
        assert_eq!(t.source, TimingSource::FrameTimeVector);
        assert_eq!(t.times_ns, vec![0, 20_000_000, 50_000_000]);
        let t = frame_times(
            3,
            &TimingAttributes {
                pointer_is_vector: false,
                ..attrs
            },
        )
        .unwrap();
        assert_eq!(t.source, TimingSource::FrameTime);
    }

    #[test]
    fn cine_rate_is_frames_per_second() {
        let attrs = TimingAttributes {
            cine_rate: Some(50.0),
            ..Default::default()
        };
        assert_eq!(
            frame_times(2, &attrs).unwrap().times_ns,
            vec![0, 20_000_000]
        );
    }

    #[test]
    fn bad_or_missing_timing_is_refused() {
        assert_eq!(
            frame_times(5, &TimingAttributes::default()),
            Err(TimingError::Missing(5))
        );
        let single = frame_times(1, &TimingAttributes::default()).unwrap();
        assert_eq!(single.times_ns, vec![0]);
        let zero = TimingAttributes {
            frame_time_ms: Some(0.0),
            ..Default::default()
        };
        assert!(matches!(
            frame_times(2, &zero),
            Err(TimingError::NotPositive { .. })
        ));
        let short = TimingAttributes {
            frame_time_vector_ms: Some(vec![0.0, 10.0]),
            ..Default::default()
        };
        assert!(matches!(
            frame_times(3, &short),
            Err(TimingError::VectorLength { .. })
        ));
        let nan = TimingAttributes {
            frame_time_vector_ms: Some(vec![0.0, f64::NAN]),
            ..Default::default()
        };
        assert!(frame_times(2, &nan).is_err());
    }
}
