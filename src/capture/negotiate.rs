//! Choosing a capture mode from what a device offers, and checking what the driver granted.
//!
//! Pure functions over lists of offers, so the choice is tested without a device: the V4L2
//! layer enumerates the device into [`Offer`]s, calls [`choose`], asks the driver for the
//! chosen [`Mode`], and compares the reply with [`Negotiated::new`].
//!
//! The choice, in order of importance:
//! 1. the configured format, if one is configured;
//! 2. the size closest to the configured one (an image region configured in pixels only fits
//!    the size it was drawn on), the larger on a tie;
//! 3. a rate at least the configured one (gating needs the frames);
//! 4. the format that carries luma most directly: `GREY`, `NV12`, `YUYV`, `UYVY`, `RGB3`, and
//!    `MJPG` last (lossy, and each frame costs a decode);
//! 5. a rate the driver states over one it does not, then the rate closest to the configured.

use std::cmp::Reverse;
use std::fmt;

use crate::media::PixelFormat;

/// Formats in order of preference when the configuration leaves the format open.
const PREFERENCE: [PixelFormat; 6] = [
    PixelFormat::Grey8,
    PixelFormat::Nv12,
    PixelFormat::Yuyv,
    PixelFormat::Uyvy,
    PixelFormat::Rgb24,
    PixelFormat::Mjpeg,
];

/// A frame interval as V4L2 states it: `num / den` seconds per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval {
    /// Numerator, seconds.
    pub num: u32,
    /// Denominator.
    pub den: u32,
}

impl Interval {
    /// Frames per second; 0 for a degenerate interval with a zero numerator or denominator.
    pub fn fps(self) -> f64 {
        if self.num == 0 || self.den == 0 {
            return 0.0;
        }
        f64::from(self.den) / f64::from(self.num)
    }

    /// The frame period in nanoseconds, if the interval is not degenerate.
    pub fn period_ns(self) -> Option<u64> {
        (self.num != 0 && self.den != 0)
            .then(|| (u64::from(self.num) * 1_000_000_000).div_ceil(u64::from(self.den)))
    }

    /// The interval of `fps` frames per second, to a thousandth of a frame per second
    /// (59.94 becomes 1000/59940), reduced.
    pub fn from_fps(fps: f64) -> Interval {
        let den = (fps * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        let g = gcd(1000, den);
        Interval {
            num: 1000 / g,
            den: den / g,
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} fps ({}/{} s)", self.fps(), self.num, self.den)
    }
}

/// Greatest common divisor, for reducing intervals.
fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// The frame rates a device offers for one format and size.
#[derive(Debug, Clone, PartialEq)]
pub enum Rates {
    /// These intervals exactly.
    Discrete(Vec<Interval>),
    /// Any interval between these (the driver rounds to its steps).
    Range {
        /// The shortest interval (fastest rate).
        min: Interval,
        /// The longest interval (slowest rate).
        max: Interval,
    },
    /// The driver does not enumerate rates; it runs at whatever its source delivers.
    Unknown,
}

/// One format and size a device offers, with its rates.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frame rates at this format and size.
    pub rates: Rates,
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}x{}", self.format.name(), self.width, self.height)?;
        match &self.rates {
            Rates::Discrete(list) => {
                let fps: Vec<String> = list.iter().map(|i| format!("{:.2}", i.fps())).collect();
                write!(f, " @ {} fps", fps.join("/"))
            }
            Rates::Range { min, max } => {
                write!(f, " @ {:.2}..{:.2} fps", max.fps(), min.fps())
            }
            Rates::Unknown => write!(f, " @ unstated fps"),
        }
    }
}

/// What the configuration asks of the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The pixel format, or `None` for the best one offered.
    pub format: Option<PixelFormat>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: f64,
}

/// A capture mode: what is asked of the driver, or what it granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frame interval; `None` when the driver does not state one.
    pub interval: Option<Interval>,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}x{}", self.format.name(), self.width, self.height)?;
        match self.interval {
            Some(i) => write!(f, " at {i}"),
            None => write!(f, " at an unstated rate"),
        }
    }
}

/// Why no mode could be chosen or the granted one cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NegotiateError {
    /// The configured format is not among the device's offers.
    #[error(
        "the configured format {wanted} is not offered; the device offers: {offered}; configure \
         one of those or leave the format open"
    )]
    FormatNotOffered {
        /// The configured format's name.
        wanted: &'static str,
        /// The offers, for the message.
        offered: String,
    },
    /// The device offers no format echoview reads.
    #[error(
        "the device offers no format echoview reads (GREY, YUYV, UYVY, NV12, RGB3, MJPG){offered}; \
         check that this is the video node of the grabber (for UVC devices, `video-index0`)"
    )]
    NothingUsable {
        /// What it does offer, as ": H264, ..." or empty.
        offered: String,
    },
    /// The node is not a video capture device that streams: for UVC grabbers, the second node
    /// of each device carries metadata, not video.
    #[error(
        "{path} is not a streaming video capture node (it offers {caps}); for a UVC grabber use \
         its `video-index0` link under /dev/v4l/by-id"
    )]
    NotCaptureNode {
        /// The node opened.
        path: String,
        /// What it offers, as the driver lists its capabilities.
        caps: String,
    },
    /// The driver set a different pixel format than asked, which the frames would then not
    /// match.
    #[error("asked the driver for {asked}, it set {granted}; the device cannot be used this way")]
    FormatRefused {
        /// The format asked for.
        asked: &'static str,
        /// The format the driver set.
        granted: String,
    },
    /// The driver's row length or buffer size cannot hold the granted image.
    #[error("the driver's layout does not hold a {mode} image: {detail}")]
    BadLayout {
        /// The granted mode.
        mode: String,
        /// What does not add up.
        detail: String,
    },
}

/// The cost of a rate for a request, lower is better: how far short of the request it falls,
/// whether the driver states it, how far above the request it is (in millihertz).
type RateCost = (u64, bool, u64);

/// The best interval of `rates` for `fps`, and its cost.
fn best_rate(rates: &Rates, fps: f64) -> (Option<Interval>, RateCost) {
    let cost = |got: f64| -> RateCost {
        let milli = |v: f64| (v * 1000.0).round().max(0.0) as u64;
        (milli(fps - got), false, milli(got - fps))
    };
    match rates {
        Rates::Discrete(list) => list
            .iter()
            .filter(|i| i.fps() > 0.0)
            .map(|&i| (Some(i), cost(i.fps())))
            .min_by_key(|&(_, c)| c)
            .unwrap_or((None, (0, true, 0))),
        Rates::Range { min, max } => {
            let (fast, slow) = (min.fps(), max.fps());
            if fps >= fast {
                (Some(*min), cost(fast))
            } else if fps <= slow {
                (Some(*max), cost(slow))
            } else {
                (Some(Interval::from_fps(fps)), cost(fps))
            }
        }
        Rates::Unknown => (None, (0, true, 0)),
    }
}

/// Chooses the mode to ask the driver for; see the module documentation for the order of
/// preference. Ties go to the earlier offer.
pub fn choose(request: &Request, offers: &[Offer]) -> Result<Mode, NegotiateError> {
    if offers.is_empty() {
        return Err(NegotiateError::NothingUsable {
            offered: String::new(),
        });
    }
    let candidates = offers
        .iter()
        .filter(|o| request.format.is_none_or(|f| f == o.format));
    let best = candidates
        .map(|o| {
            let size_cost = u64::from(o.width.abs_diff(request.width))
                + u64::from(o.height.abs_diff(request.height));
            let area = u64::from(o.width) * u64::from(o.height);
            let (interval, (short, unstated, excess)) = best_rate(&o.rates, request.fps);
            let rank = PREFERENCE.iter().position(|&f| f == o.format);
            let key = (size_cost, Reverse(area), short, rank, unstated, excess);
            (key, o, interval)
        })
        .min_by_key(|(key, _, _)| *key);
    let Some((_, offer, interval)) = best else {
        return Err(NegotiateError::FormatNotOffered {
            wanted: request.format.map_or("(any)", PixelFormat::name),
            offered: describe(offers),
        });
    };
    Ok(Mode {
        format: offer.format,
        width: offer.width,
        height: offer.height,
        interval,
    })
}

/// The offers as one line for messages.
pub fn describe(offers: &[Offer]) -> String {
    let list: Vec<String> = offers.iter().map(Offer::to_string).collect();
    list.join(", ")
}

/// The size in a stepwise range closest to `want`: V4L2 drivers that scale offer a range
/// `min..=max` in steps, and the enumeration layer turns it into one concrete offer with this.
pub fn nearest_step(want: u32, min: u32, max: u32, step: u32) -> u32 {
    let (lo, hi) = (min.min(max), min.max(max));
    let clamped = want.clamp(lo, hi);
    if step <= 1 {
        return clamped;
    }
    let k = (clamped - lo + step / 2) / step;
    let v = u64::from(lo) + u64::from(k) * u64::from(step);
    // Rounding up can pass `max` when the range is not a whole number of steps.
    if v > u64::from(hi) {
        hi - (hi - lo) % step
    } else {
        v as u32
    }
}

/// The mode asked for and the one the driver granted, with the driver's buffer layout: what
/// the capture reports, so a field engineer sees at once when a grabber ignored the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// What was asked for, from [`choose`].
    pub asked: Mode,
    /// What the driver set and reports back.
    pub granted: Mode,
    /// Bytes per row the driver uses (0 for compressed formats).
    pub stride: u32,
    /// Bytes the driver reserves per frame: a whole image, or for compressed formats the
    /// largest frame.
    pub buffer_size: u32,
}

impl Negotiated {
    /// Checks that the granted mode can be captured as asked: same format, rows long enough,
    /// buffers large enough. A different size or rate is allowed (the driver's last word) and
    /// shown by [`Negotiated::differences`].
    pub fn new(
        asked: Mode,
        granted: Mode,
        stride: u32,
        buffer_size: u32,
    ) -> Result<Negotiated, NegotiateError> {
        if granted.format != asked.format {
            return Err(NegotiateError::FormatRefused {
                asked: asked.format.name(),
                granted: granted.format.name().to_string(),
            });
        }
        let bad = |detail: String| NegotiateError::BadLayout {
            mode: granted.to_string(),
            detail,
        };
        if granted.width == 0 || granted.height == 0 {
            return Err(bad("the size is zero".to_string()));
        }
        // Compressed frames have no rows; drivers report a stride of 0 or the width.
        let stride = if granted.format.is_compressed() {
            0
        } else {
            stride
        };
        let row = granted.format.min_stride(granted.width);
        if u64::from(stride) < row {
            return Err(bad(format!("rows of {stride} bytes, a row needs {row}")));
        }
        if let Some(need) = granted.format.image_len(stride, granted.height)
            && u64::from(buffer_size) < need
        {
            return Err(bad(format!(
                "buffers of {buffer_size} bytes, an image needs {need}"
            )));
        }
        Ok(Negotiated {
            asked,
            granted,
            stride,
            buffer_size,
        })
    }

    /// How the granted mode differs from the one asked for, one line per difference; empty
    /// when the driver granted exactly what was asked.
    pub fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (a, g) = (&self.asked, &self.granted);
        if (a.width, a.height) != (g.width, g.height) {
            out.push(format!(
                "size {}x{} instead of {}x{}",
                g.width, g.height, a.width, a.height
            ));
        }
        match (a.interval, g.interval) {
            (Some(ai), Some(gi)) if (ai.fps() - gi.fps()).abs() > 0.005 => {
                out.push(format!("rate {gi} instead of {ai}"));
            }
            (Some(ai), None) => out.push(format!("rate unstated instead of {ai}")),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fps(list: &[u32]) -> Rates {
        Rates::Discrete(list.iter().map(|&f| Interval { num: 1, den: f }).collect())
    }

    fn offer(format: PixelFormat, width: u32, height: u32, rates: Rates) -> Offer {
        Offer {
            format,
            width,
            height,
            rates,
        }
    }

    fn request(format: Option<PixelFormat>, width: u32, height: u32, fps: f64) -> Request {
        Request {
            format,
            width,
            height,
            fps,
        }
    }

    /// A typical USB HDMI grabber: uncompressed 1080p only at 5 fps, MJPEG at full rate.
    fn usb_grabber() -> Vec<Offer> {
        vec![
            offer(PixelFormat::Yuyv, 1920, 1080, fps(&[5])),
            offer(PixelFormat::Yuyv, 1280, 720, fps(&[10])),
            offer(PixelFormat::Yuyv, 640, 480, fps(&[60, 30])),
            offer(PixelFormat::Mjpeg, 1920, 1080, fps(&[60, 30])),
            offer(PixelFormat::Mjpeg, 1280, 720, fps(&[60, 30])),
        ]
    }

    #[test]
    fn size_first_then_rate_then_format() {
        let m = choose(&request(None, 1920, 1080, 30.0), &usb_grabber()).unwrap();
        assert_eq!(
            m.format,
            PixelFormat::Mjpeg,
            "YUYV 1080p falls short at 5 fps"
        );
        assert_eq!((m.width, m.height), (1920, 1080));
        assert_eq!(m.interval, Some(Interval { num: 1, den: 30 }));
        let m = choose(&request(None, 640, 480, 30.0), &usb_grabber()).unwrap();
        assert_eq!(m.format, PixelFormat::Yuyv);
        assert_eq!(m.interval, Some(Interval { num: 1, den: 30 }));
        // A configured format wins even when it falls short on rate.
        let m = choose(
            &request(Some(PixelFormat::Yuyv), 1920, 1080, 30.0),
            &usb_grabber(),
        )
        .unwrap();
        assert_eq!(
            (m.format, m.interval),
            (PixelFormat::Yuyv, Some(Interval { num: 1, den: 5 }))
        );
    }

    #[test]
    fn uncompressed_preferred_when_rates_are_met() {
        let offers = vec![
            offer(PixelFormat::Mjpeg, 1920, 1080, fps(&[30])),
            offer(PixelFormat::Rgb24, 1920, 1080, fps(&[30])),
            offer(PixelFormat::Uyvy, 1920, 1080, fps(&[60, 30])),
            offer(PixelFormat::Nv12, 1920, 1080, fps(&[30])),
        ];
        let m = choose(&request(None, 1920, 1080, 30.0), &offers).unwrap();
        assert_eq!(m.format, PixelFormat::Nv12);
        // A faster rate than asked is no shortfall, so preference still decides.
        let m = choose(&request(None, 1920, 1080, 50.0), &offers).unwrap();
        assert_eq!(
            (m.format, m.interval),
            (PixelFormat::Uyvy, Some(Interval { num: 1, den: 60 }))
        );
    }

    #[test]
    fn nearest_size_and_larger_on_a_tie() {
        let offers = vec![
            offer(PixelFormat::Grey8, 800, 600, fps(&[30])),
            offer(PixelFormat::Grey8, 1000, 700, fps(&[30])),
            offer(PixelFormat::Grey8, 1024, 768, fps(&[30])),
        ];
        let m = choose(&request(None, 900, 650, 30.0), &offers).unwrap();
        assert_eq!(
            (m.width, m.height),
            (1000, 700),
            "equally far: the larger wins"
        );
        let m = choose(&request(None, 810, 600, 30.0), &offers).unwrap();
        assert_eq!((m.width, m.height), (800, 600));
    }

    #[test]
    fn rates_closest_above_then_stated_over_unstated() {
        let offers = vec![
            offer(PixelFormat::Yuyv, 640, 480, Rates::Unknown),
            offer(PixelFormat::Yuyv, 640, 480, fps(&[25, 50, 60])),
        ];
        let m = choose(&request(None, 640, 480, 30.0), &offers).unwrap();
        assert_eq!(m.interval, Some(Interval { num: 1, den: 50 }));
        let m = choose(&request(None, 640, 480, 24.0), &offers).unwrap();
        assert_eq!(m.interval, Some(Interval { num: 1, den: 25 }));
        let only_unknown = &offers[..1];
        assert_eq!(
            choose(&request(None, 640, 480, 30.0), only_unknown)
                .unwrap()
                .interval,
            None
        );
    }

    #[test]
    fn ranges_clamp_the_requested_rate() {
        let range = Rates::Range {
            min: Interval { num: 1, den: 60 },
            max: Interval { num: 1, den: 5 },
        };
        let offers = [offer(PixelFormat::Grey8, 640, 480, range)];
        let at = |f: f64| {
            choose(&request(None, 640, 480, f), &offers)
                .unwrap()
                .interval
        };
        assert_eq!(
            at(29.97),
            Some(Interval {
                num: 100,
                den: 2997
            })
        );
        assert_eq!(at(120.0), Some(Interval { num: 1, den: 60 }));
        assert_eq!(at(1.0), Some(Interval { num: 1, den: 5 }));
    }

    #[test]
    fn missing_format_and_empty_device_are_explained() {
        let err = choose(
            &request(Some(PixelFormat::Grey8), 640, 480, 30.0),
            &usb_grabber(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GREY is not offered"), "{err}");
        assert!(err.contains("MJPG 1920x1080 @ 60.00/30.00 fps"), "{err}");
        assert!(matches!(
            choose(&request(None, 640, 480, 30.0), &[]),
            Err(NegotiateError::NothingUsable { .. })
        ));
    }

    #[test]
    fn stepwise_sizes_snap_to_the_grid() {
        assert_eq!(nearest_step(1920, 16, 4096, 16), 1920);
        assert_eq!(nearest_step(1921, 16, 4096, 16), 1920);
        assert_eq!(nearest_step(1930, 16, 4096, 16), 1936);
        assert_eq!(nearest_step(5000, 16, 4090, 16), 4080, "never past max");
        assert_eq!(nearest_step(1, 16, 4096, 16), 16);
        assert_eq!(nearest_step(333, 1, 4096, 0), 333);
    }

    #[test]
    fn intervals_from_fps() {
        assert_eq!(Interval::from_fps(30.0), Interval { num: 1, den: 30 });
        assert_eq!(Interval::from_fps(59.94), Interval { num: 50, den: 2997 });
        assert_eq!(Interval { num: 1, den: 25 }.period_ns(), Some(40_000_000));
        assert_eq!(Interval { num: 0, den: 25 }.period_ns(), None);
        assert_eq!(Interval { num: 1, den: 0 }.fps(), 0.0);
    }

    #[test]
    fn granted_modes_are_checked_and_differences_listed() {
        let asked = Mode {
            format: PixelFormat::Yuyv,
            width: 1920,
            height: 1080,
            interval: Some(Interval { num: 1, den: 30 }),
        };
        let exact = Negotiated::new(asked, asked, 3840, 3840 * 1080).unwrap();
        assert!(exact.differences().is_empty());
        let smaller = Mode {
            width: 1280,
            height: 720,
            interval: Some(Interval { num: 1, den: 10 }),
            ..asked
        };
        let n = Negotiated::new(asked, smaller, 2560, 2560 * 720).unwrap();
        assert_eq!(n.differences().len(), 2, "{:?}", n.differences());
        let other = Mode {
            format: PixelFormat::Mjpeg,
            ..asked
        };
        assert!(matches!(
            Negotiated::new(asked, other, 0, 1 << 20),
            Err(NegotiateError::FormatRefused { .. })
        ));
        assert!(matches!(
            Negotiated::new(asked, asked, 3000, 3840 * 1080),
            Err(NegotiateError::BadLayout { .. })
        ));
        assert!(matches!(
            Negotiated::new(asked, asked, 3840, 3840 * 1000),
            Err(NegotiateError::BadLayout { .. })
        ));
        let mjpeg = Mode {
            format: PixelFormat::Mjpeg,
            ..asked
        };
        let n = Negotiated::new(mjpeg, mjpeg, 1920, 1 << 20).unwrap();
        assert_eq!(n.stride, 0, "compressed frames have no rows");
    }
}
