//! Image-derived gating: heartbeat boundaries found from the video alone, for cines exported
//! without any ECG (most DICOM cine exports carry none).
//!
//! The heart is the only thing in an echo image that moves periodically, and its largest
//! motion is the contraction: the chambers are largest at end-diastole, which sits at the
//! ECG R-peak, and smallest at end-systole. So:
//!
//! 1. the image region is found as preprocessing finds it (the box of changing pixels, static
//!    overlays masked: [`Preprocessor::find_region`]) and every frame is shrunk to a small
//!    thumbnail of it ([`Preprocessor::prepare_frame_pixels`]), which averages speckle away;
//! 2. each thumbnail pixel is high-passed in time (its moving mean over
//!    [`ImageGateConfig::detrend_s`] subtracted), so probe drift and slow gain changes do not
//!    count as motion;
//! 3. the motion signal is the thumbnails' projection on their first principal component,
//!    the pattern that varies most from frame to frame, i.e. the contraction. Its sign is
//!    chosen so that the signal is high when the region is dark (blood is dark, and the
//!    chambers hold most blood at end-diastole);
//! 4. its period is the lag of the highest autocorrelation within
//!    `min_bpm..=max_bpm`, when the cine spans at least two of the longest periods; a shorter
//!    cine (a 30-frame DICOM loop holds one or two beats) is checked instead by its images
//!    returning: the frames at two end-diastoles must look alike;
//! 5. one boundary per cycle: the end-diastolic maxima of the signal, at least 0.6 periods
//!    apart, refined between frames by a parabola through the peak and its neighbours, and
//!    shifted by [`ImageGateConfig::offset_ns`] (end-diastole to R-peak).
//!
//! Everything is pure and deterministic (a fixed power-iteration start, no randomness), so
//! replays of one file give the same beats.

use crate::media::Frame;
use crate::preprocess::{PreprocessConfig, PreprocessError, Preprocessor};

/// Power-iteration steps for the first principal component; the cardiac component usually
/// dominates by far, so this converges in a handful, and a fixed count keeps runs identical.
const POWER_STEPS: usize = 40;
/// Peaks closer than this fraction of the period are one peak (the strongest is kept).
const MIN_PEAK_SPACING: f64 = 0.6;
/// A frame-to-frame change this many times the 90th percentile of the changes is a scene cut.
const CUT_FACTOR: f64 = 3.0;
/// ... and only if the mean absolute change exceeds this many grey levels, so a still
/// cine's tiny noise-driven changes never count as cuts.
const CUT_MIN_LEVEL: f64 = 4.0;
/// Fewest frames that can show a cycle at all.
const MIN_FRAMES: usize = 6;

/// How image gating finds beats.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGateConfig {
    /// Lowest heart rate considered: the longest period the autocorrelation searches.
    pub min_bpm: f64,
    /// Highest heart rate considered: the shortest period searched, and the closest two
    /// boundaries may be.
    pub max_bpm: f64,
    /// Side of the square thumbnail each frame is reduced to. Small enough to average
    /// speckle and keep the principal component cheap, large enough to keep the chambers.
    pub thumbnail: u32,
    /// Window of the moving mean subtracted from each thumbnail pixel, seconds; longer than
    /// the longest period, so a cycle survives and drift does not.
    pub detrend_s: f64,
    /// Least autocorrelation at the period (or image correlation between two
    /// end-diastoles, for short cines) for the video to count as periodic. Noise and a
    /// frozen probe stay well below; a steady view of a beating heart is above 0.8.
    pub min_correlation: f64,
    /// Frames used to find the image region, evenly spread over the cine (the region finder
    /// keeps every frame it is given in memory).
    pub region_frames: usize,
    /// Added to each end-diastole time to estimate the R-peak: end-diastole follows the
    /// R-wave by the electromechanical delay, so a negative value moves boundaries back onto
    /// R. 0 by default; measure it against ECG gating for a given scanner.
    pub offset_ns: i64,
}

impl Default for ImageGateConfig {
    /// 40-200 bpm, 48-pixel thumbnails, 2 s detrending, correlation at least 0.5, region from
    /// 64 frames, no offset.
    fn default() -> ImageGateConfig {
        ImageGateConfig {
            min_bpm: 40.0,
            max_bpm: 200.0,
            thumbnail: 48,
            detrend_s: 2.0,
            min_correlation: 0.5,
            region_frames: 64,
            offset_ns: 0,
        }
    }
}

/// Why no beats could be found from the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageGateError {
    /// The configuration cannot work.
    #[error("image gating configuration: {0}")]
    Config(String),
    /// Too few frames to hold even one cycle.
    #[error(
        "{frames} frames cannot show a heartbeat; image gating needs at least {needed} \
         frames covering a whole beat"
    )]
    TooFewFrames {
        /// Frames given.
        frames: usize,
        /// Fewest accepted.
        needed: usize,
    },
    /// Frame times do not increase, so frames cannot be placed on a time axis.
    #[error(
        "frame {seq} at {t_ns} ns does not come after the frame before it; image gating \
         needs frames in capture order with increasing times (fix the frame times of the export)"
    )]
    Unordered {
        /// Sequence number of the offending frame.
        seq: u64,
        /// Its time.
        t_ns: u64,
    },
    /// The frames cannot be reduced to thumbnails (malformed, or changing size).
    #[error("cannot read the frames for image gating: {0}")]
    Frames(#[from] PreprocessError),
    /// The cine is shorter than one cycle at the slowest heart rate searched.
    #[error(
        "the cine spans {span_ms:.0} ms and shows no two end-diastoles at {min_bpm}-{max_bpm} \
         bpm; image gating needs at least one whole heartbeat"
    )]
    TooShort {
        /// Time from the first to the last frame.
        span_ms: f64,
        /// Heart-rate range searched.
        min_bpm: f64,
        /// See `min_bpm`.
        max_bpm: f64,
    },
    /// The image does not move periodically within the heart-rate range.
    #[error(
        "no heartbeat found in the image: the best periodicity is {best:.2}, below \
         {threshold:.2} (a frozen probe, noise, or a view changing mid-cine); gate this cine \
         with ECG or by time instead"
    )]
    NoPeriodicity {
        /// Highest correlation found.
        best: f64,
        /// Threshold in force.
        threshold: f64,
    },
}

/// Beat boundary times (ns, session clock, ascending) found from the video `frames` alone:
/// one per cardiac cycle, at end-diastole plus [`ImageGateConfig::offset_ns`]. See the module
/// documentation for how.
pub fn find_beats(frames: &[Frame], config: &ImageGateConfig) -> Result<Vec<u64>, ImageGateError> {
    check_config(config)?;
    if frames.len() < MIN_FRAMES {
        return Err(ImageGateError::TooFewFrames {
            frames: frames.len(),
            needed: MIN_FRAMES,
        });
    }
    for pair in frames.windows(2) {
        if pair[1].t_ns <= pair[0].t_ns {
            return Err(ImageGateError::Unordered {
                seq: pair[1].seq,
                t_ns: pair[1].t_ns,
            });
        }
    }
    let times: Vec<u64> = frames.iter().map(|f| f.t_ns).collect();
    let mut thumbs = thumbnails(frames, config)?;
    let d = (config.thumbnail * config.thumbnail) as usize;
    // Each stretch between scene cuts is one steady view: analysed on its own, so a cut's
    // jump does not pass for motion. The cine fails only when no stretch shows a beat.
    let mut boundaries = Vec::new();
    let mut first_error = None;
    let cuts = scene_cuts(&thumbs);
    let mut end = thumbs.len();
    for &start in cuts.iter().rev() {
        let part = thumbs.split_off(start);
        let part_times = &times[start..end];
        end = start;
        if part.len() < MIN_FRAMES {
            continue;
        }
        let (t0, dt, signal, brightness) = motion_signal(part_times, part, d, config.detrend_s);
        match cycle_peaks(&signal, &brightness, dt, config, part_times) {
            Ok(peaks) => boundaries.extend(peaks.into_iter().filter_map(|k| {
                let t = t0 as f64 + k * dt + config.offset_ns as f64;
                (t >= 0.0).then(|| t.round() as u64)
            })),
            Err(err) => first_error = Some(err),
        }
    }
    match first_error {
        Some(err) if boundaries.is_empty() => Err(err),
        _ => {
            boundaries.sort_unstable();
            Ok(boundaries)
        }
    }
}

/// Where the scene changes at once (a view switch, a cut in an edited loop): the starts of
/// the stretches between cuts, ascending, always beginning with 0. A cut is a frame whose
/// mean absolute change from the one before is [`CUT_FACTOR`] times the 90th percentile of
/// the changes, and large in absolute terms: a beating heart changes by similar amounts from
/// frame to frame (the percentile, not the median, because diastasis barely moves), while a
/// switch of view replaces the whole image at once.
fn scene_cuts(thumbs: &[Vec<f32>]) -> Vec<usize> {
    let change: Vec<f64> = thumbs
        .windows(2)
        .map(|w| {
            let sum: f64 = w[0]
                .iter()
                .zip(&w[1])
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum();
            sum / w[0].len().max(1) as f64
        })
        .collect();
    let mut sorted = change.clone();
    sorted.sort_by(f64::total_cmp);
    let typical = sorted.get(sorted.len() * 9 / 10).copied().unwrap_or(0.0);
    let mut starts = vec![0];
    starts.extend(
        change
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > CUT_FACTOR * typical && c > CUT_MIN_LEVEL)
            .map(|(i, _)| i + 1),
    );
    starts
}

/// Refuses settings that cannot find a beat.
fn check_config(config: &ImageGateConfig) -> Result<(), ImageGateError> {
    let bad = |why: &str| Err(ImageGateError::Config(why.to_string()));
    if !(config.min_bpm >= 10.0 && config.max_bpm > config.min_bpm && config.max_bpm <= 400.0) {
        return bad("heart rates must satisfy 10 <= min_bpm < max_bpm <= 400");
    }
    if !(4..=256).contains(&config.thumbnail) {
        return bad("thumbnail must be 4..=256 pixels");
    }
    if !(config.detrend_s.is_finite() && config.detrend_s > 0.0) {
        return bad("detrend_s must be a positive number of seconds");
    }
    if !(0.0..=1.0).contains(&config.min_correlation) {
        return bad("min_correlation must lie in 0..=1");
    }
    if config.region_frames < 2 {
        return bad("region_frames must be at least 2");
    }
    Ok(())
}

/// Each frame's thumbnail of the image region, as `f32`, `thumbnail^2` values per frame.
fn thumbnails(frames: &[Frame], config: &ImageGateConfig) -> Result<Vec<Vec<f32>>, ImageGateError> {
    let mut pre = Preprocessor::new(PreprocessConfig {
        width: config.thumbnail,
        height: config.thumbnail,
        mean: 0.0,
        std: 1.0,
        crop: None,
    });
    let n = frames.len();
    let take = config.region_frames.min(n);
    let sample: Vec<&Frame> = (0..take)
        .map(|i| &frames[i * (n - 1) / (take - 1).max(1)])
        .collect();
    let region = pre.find_region(&sample)?;
    let mut pixels = vec![0u8; pre.tensor_len()];
    frames
        .iter()
        .map(|f| {
            pre.prepare_frame_pixels(f, &region, &mut pixels)?;
            Ok(pixels.iter().map(|&p| f32::from(p)).collect())
        })
        .collect()
}

/// The motion signal on a uniform time grid: `(t0_ns, dt_ns, signal, brightness)`, where
/// `signal[k]` is the first-principal-component score at `t0 + k * dt` and `brightness[k]`
/// the detrended mean of the thumbnail there.
fn motion_signal(
    times: &[u64],
    mut thumbs: Vec<Vec<f32>>,
    d: usize,
    detrend_s: f64,
) -> (u64, f64, Vec<f64>, Vec<f64>) {
    let n = thumbs.len();
    let mut intervals: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    intervals.sort_unstable();
    let dt = intervals[intervals.len() / 2] as f64;

    // High-pass each pixel: subtract its mean over the frames within detrend_s / 2.
    let half = (detrend_s * 1e9 / 2.0) as u64;
    let mut prefix = vec![vec![0f64; d]; n + 1];
    for i in 0..n {
        for j in 0..d {
            prefix[i + 1][j] = prefix[i][j] + f64::from(thumbs[i][j]);
        }
    }
    let mut brightness_raw = vec![0f64; n];
    for i in 0..n {
        let lo = times.partition_point(|&t| t + half < times[i]);
        let hi = times.partition_point(|&t| t <= times[i] + half);
        let count = (hi - lo) as f64;
        let mut sum = 0.0;
        for j in 0..d {
            let mean = (prefix[hi][j] - prefix[lo][j]) / count;
            let v = f64::from(thumbs[i][j]) - mean;
            thumbs[i][j] = v as f32;
            sum += v;
        }
        brightness_raw[i] = sum / d as f64;
    }
    drop(prefix);

    let scores = first_component(&thumbs, d);
    let grid = |values: &[f64]| resample(times, values, dt);
    let signal = grid(&scores);
    let brightness = grid(&brightness_raw);
    (times[0], dt, signal, brightness)
}

/// Scores of each row on the rows' first principal component (rows already centred by the
/// detrending), by power iteration from the row of largest norm.
fn first_component(rows: &[Vec<f32>], d: usize) -> Vec<f64> {
    let norm2 = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    let start = rows
        .iter()
        .enumerate()
        .max_by(|a, b| norm2(a.1).total_cmp(&norm2(b.1)))
        .map_or(0, |(i, _)| i);
    let mut v: Vec<f64> = rows[start].iter().map(|&x| f64::from(x)).collect();
    let mut scores = vec![0f64; rows.len()];
    for _ in 0..POWER_STEPS {
        let len = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if len == 0.0 {
            break;
        }
        v.iter_mut().for_each(|x| *x /= len);
        for (s, row) in scores.iter_mut().zip(rows) {
            *s = row.iter().zip(&v).map(|(&r, &w)| f64::from(r) * w).sum();
        }
        let mut next = vec![0f64; d];
        for (s, row) in scores.iter().zip(rows) {
            for (n, &r) in next.iter_mut().zip(row) {
                *n += s * f64::from(r);
            }
        }
        v = next;
    }
    scores
}

/// `values` sampled at `times`, linearly interpolated onto the grid `times[0] + k * dt`.
fn resample(times: &[u64], values: &[f64], dt: f64) -> Vec<f64> {
    let (first, last) = (times[0], times[times.len() - 1]);
    let steps = ((last - first) as f64 / dt).floor() as usize + 1;
    let mut out = Vec::with_capacity(steps);
    let mut i = 0;
    for k in 0..steps {
        let t = first as f64 + k as f64 * dt;
        while i + 2 < times.len() && (times[i + 1] as f64) < t {
            i += 1;
        }
        let (ta, tb) = (times[i] as f64, times[(i + 1).min(times.len() - 1)] as f64);
        let u = if tb > ta {
            ((t - ta) / (tb - ta)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let b = values[(i + 1).min(values.len() - 1)];
        out.push(values[i] + u * (b - values[i]));
    }
    out
}

/// Pearson correlation of `a` and `b` (equal lengths); 0 when either is constant.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    if a.len() < 2 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x - ma, y - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// The end-diastolic peaks of `signal` (grid step `dt` ns), as fractional grid positions.
fn cycle_peaks(
    signal: &[f64],
    brightness: &[f64],
    dt: f64,
    config: &ImageGateConfig,
    times: &[u64],
) -> Result<Vec<f64>, ImageGateError> {
    // Blood is dark and fills the chambers at end-diastole: orient the signal to peak there.
    let oriented: Vec<f64> = if pearson(signal, brightness) > 0.0 {
        signal.iter().map(|v| -v).collect()
    } else {
        signal.to_vec()
    };
    // A light [1 2 1] smoothing: symmetric, so it moves no peak.
    let s: Vec<f64> = (0..oriented.len())
        .map(|k| {
            let a = oriented[k.saturating_sub(1)];
            let c = oriented[(k + 1).min(oriented.len() - 1)];
            (a + 2.0 * oriented[k] + c) / 4.0
        })
        .collect();
    let n = s.len();
    let min_lag = ((60e9 / config.max_bpm) / dt).floor().max(1.0) as usize;
    let max_lag = ((60e9 / config.min_bpm) / dt).ceil() as usize;
    let span_ms = (times[times.len() - 1] - times[0]) as f64 / 1e6;
    let too_short = || ImageGateError::TooShort {
        span_ms,
        min_bpm: config.min_bpm,
        max_bpm: config.max_bpm,
    };

    if n > 2 * max_lag {
        // Long enough for every period searched to repeat: autocorrelation.
        let r: Vec<f64> = (0..=max_lag + 1)
            .map(|lag| {
                if lag < min_lag.saturating_sub(1) || lag >= n {
                    0.0
                } else {
                    pearson(&s[..n - lag], &s[lag..])
                }
            })
            .collect();
        let local_max = |l: usize| r[l] >= r[l - 1] && r[l] >= r[l + 1];
        let best = (min_lag.max(1)..=max_lag)
            .filter(|&l| local_max(l))
            .map(|l| r[l])
            .fold(f64::MIN, f64::max);
        if best < config.min_correlation {
            return Err(ImageGateError::NoPeriodicity {
                best: best.max(-1.0),
                threshold: config.min_correlation,
            });
        }
        // The shortest lag nearly as good as the best is the period, not a multiple of it.
        let period = (min_lag.max(1)..=max_lag)
            .find(|&l| local_max(l) && r[l] >= 0.85 * best)
            .unwrap_or(max_lag);
        let period = refine(&r, period);
        // Many cycles: a maximum on the first or last sample is left out, as the moving mean
        // is one-sided there and the true peak may lie outside the cine.
        return Ok(pick_peaks(&s, MIN_PEAK_SPACING * period, false));
    }

    // A short cine: find the end-diastoles directly and check that the image returns.
    let peaks = pick_peaks(&s, min_lag as f64, true);
    let plausible: Vec<(f64, f64)> = peaks
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| (b - a) >= min_lag as f64 && (b - a) <= max_lag as f64)
        .collect();
    if plausible.is_empty() {
        return Err(too_short());
    }
    // The signal at two end-diastoles a cycle apart must match, the stretch between them
    // must swing away and back: correlate the first cycle with the signal one period later.
    let mut best = f64::MIN;
    for &(a, b) in &plausible {
        let lag = (b - a).round() as usize;
        let score = if n > lag + 2 {
            pearson(&s[..n - lag], &s[lag..])
        } else {
            0.0
        };
        let swing = cycle_swing(&s, a, b);
        best = best.max(score.min(swing));
    }
    if best < config.min_correlation {
        return Err(ImageGateError::NoPeriodicity {
            best,
            threshold: config.min_correlation,
        });
    }
    Ok(peaks)
}

/// How clearly the signal dips between two peaks at grid positions `a` and `b`: the depth of
/// the lowest point below the lower peak, over the signal's whole range (1: it spans the
/// range, 0: no dip).
fn cycle_swing(s: &[f64], a: f64, b: f64) -> f64 {
    let (ia, ib) = (a.round() as usize, (b.round() as usize).min(s.len() - 1));
    let lo = s[ia..=ib].iter().copied().fold(f64::MAX, f64::min);
    let (min, max) = s
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    if max <= min {
        return 0.0;
    }
    (s[ia].min(s[ib]) - lo) / (max - min)
}

/// The lag of an autocorrelation maximum, refined between grid steps by a parabola.
fn refine(r: &[f64], lag: usize) -> f64 {
    if lag == 0 || lag + 1 >= r.len() {
        return lag as f64;
    }
    lag as f64 + parabola(r[lag - 1], r[lag], r[lag + 1])
}

/// Offset (-0.5..0.5) of the vertex of the parabola through `(-1, a)`, `(0, b)`, `(1, c)`.
fn parabola(a: f64, b: f64, c: f64) -> f64 {
    let den = a - 2.0 * b + c;
    if den >= 0.0 {
        return 0.0;
    }
    (0.5 * (a - c) / den).clamp(-0.5, 0.5)
}

/// The maxima of `s` standing clearly above its middle, strongest first kept, none closer
/// than `spacing` grid steps to a kept one; returned in time order at sub-step positions.
/// With `edges`, a maximum on the first or last sample counts too when it is near the top of
/// the range (a short cine cut at end-diastole, as R-triggered exports are).
fn pick_peaks(s: &[f64], spacing: f64, edges: bool) -> Vec<f64> {
    let n = s.len();
    if n < 3 {
        return Vec::new();
    }
    let mut sorted = s.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((n - 1) as f64 * p).round() as usize];
    let (low, high) = (q(0.05), q(0.95));
    let mid = (low + high) / 2.0;
    let edge_min = low + 0.85 * (high - low);
    let mut candidates: Vec<(usize, f64)> = (0..n)
        .filter(|&k| {
            let v = s[k];
            match k {
                0 => edges && v > s[1] && v >= edge_min,
                k if k == n - 1 => edges && v > s[k - 1] && v >= edge_min,
                k => v >= s[k - 1] && v > s[k + 1] && v > mid,
            }
        })
        .map(|k| (k, s[k]))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<f64> = Vec::new();
    for (k, _) in candidates {
        let pos = if k == 0 || k == n - 1 {
            k as f64
        } else {
            k as f64 + parabola(s[k - 1], s[k], s[k + 1])
        };
        if kept.iter().all(|&p| (p - pos).abs() >= spacing) {
            kept.push(pos);
        }
    }
    kept.sort_by(f64::total_cmp);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::PixelFormat;

    const MS: u64 = 1_000_000;

    /// A 64x48 grey frame at `t_ms` showing a dark disc (a chamber) in a bright sector whose
    /// radius follows `radius(t_ms)`, with a static bright label in a corner.
    fn frame(seq: u64, t_ms: f64, radius: f64) -> Frame {
        let (w, h) = (64u32, 48u32);
        let mut data = vec![0u8; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) as usize;
                if x < 8 && y < 4 {
                    data[i] = 250;
                    continue;
                }
                let (dx, dy) = (f64::from(x) - 36.0, f64::from(y) - 26.0);
                let d = (dx * dx + dy * dy).sqrt();
                let inside_sector = (12..60).contains(&x) && (6..46).contains(&y);
                // Texture that is static over time, so only the disc moves.
                let texture = ((x * 7 + y * 13) % 23) as f64;
                data[i] = if !inside_sector {
                    0
                } else if d < radius {
                    20
                } else {
                    (150.0 + texture) as u8
                };
            }
        }
        Frame {
            seq,
            t_ns: (t_ms * 1e6).round() as u64,
            width: w,
            height: h,
            stride: w,
            format: PixelFormat::Grey8,
            data,
        }
    }

    /// Radius of the chamber at phase `x` of the beat (0 at R): largest at R, smallest at
    /// 0.37, refilling after, like the simulator's ventricle.
    fn chamber(x: f64) -> f64 {
        let lv = if x < 0.37 {
            0.5 * (1.0 + (std::f64::consts::PI * x / 0.37).cos())
        } else {
            (x - 0.37) / 0.63
        };
        8.0 + 6.0 * lv
    }

    /// Frames at `fps` for `secs` with R-peaks every `rr_ms`, the first at `first_r_ms`.
    fn cine(fps: f64, secs: f64, rr_ms: f64, first_r_ms: f64) -> Vec<Frame> {
        let n = (secs * fps) as u64;
        (0..n)
            .map(|i| {
                let t = i as f64 * 1e3 / fps;
                let x = ((t - first_r_ms) / rr_ms).rem_euclid(1.0);
                frame(i, t, chamber(x))
            })
            .collect()
    }

    fn r_peaks(secs: f64, rr_ms: f64, first_r_ms: f64) -> Vec<f64> {
        (0..)
            .map(|k| first_r_ms + k as f64 * rr_ms)
            .take_while(|&t| t < secs * 1e3)
            .collect()
    }

    fn assert_matches(found: &[u64], truth: &[f64], tolerance_ms: f64, first_edge: bool) {
        for &t in found {
            let t = t as f64 / 1e6;
            let err = truth.iter().map(|r| (r - t).abs()).fold(f64::MAX, f64::min);
            assert!(
                err <= tolerance_ms,
                "boundary {t} ms is {err} ms from any R: {truth:?}"
            );
        }
        // Every R-peak is found, but one at the very end of the cine may be missed.
        let inside = truth.iter().filter(|&&r| first_edge || r > 50.0).count();
        assert!(
            found.len() + 1 >= inside && found.len() <= inside,
            "{found:?} vs {truth:?}"
        );
    }

    #[test]
    fn finds_each_end_diastole_of_a_long_cine() {
        for (rr, fps) in [(857.0, 30.0), (500.0, 25.0), (1300.0, 60.0)] {
            let frames = cine(fps, 8.0, rr, 210.0);
            let found = find_beats(&frames, &ImageGateConfig::default()).unwrap();
            let truth = r_peaks(8.0, rr, 210.0);
            assert_matches(&found, &truth, 1e3 / fps, true);
            assert!(found.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn a_thirty_frame_cine_gives_its_beats() {
        // One second at 30 fps, 80 bpm: end-diastoles at 100 and 850 ms.
        let frames = cine(30.0, 1.0, 750.0, 100.0);
        let found = find_beats(&frames, &ImageGateConfig::default()).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_matches(&found, &[100.0, 850.0], 34.0, true);
    }

    #[test]
    fn offset_shifts_every_boundary() {
        let frames = cine(30.0, 6.0, 800.0, 100.0);
        let plain = find_beats(&frames, &ImageGateConfig::default()).unwrap();
        let shifted = find_beats(
            &frames,
            &ImageGateConfig {
                offset_ns: -40 * MS as i64,
                ..ImageGateConfig::default()
            },
        )
        .unwrap();
        let expected: Vec<u64> = plain
            .iter()
            .filter(|&&t| t >= 40 * MS)
            .map(|t| t - 40 * MS)
            .collect();
        assert_eq!(shifted, expected);
    }

    #[test]
    fn a_frozen_or_noisy_image_is_not_periodic() {
        let still: Vec<Frame> = (0..200).map(|i| frame(i, i as f64 * 33.3, 10.0)).collect();
        let err = find_beats(&still, &ImageGateConfig::default()).unwrap_err();
        assert!(matches!(err, ImageGateError::NoPeriodicity { .. }), "{err}");
        // A chamber whose size jumps at random from frame to frame.
        let mut state = 12345u64;
        let noisy: Vec<Frame> = (0..200)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                frame(
                    i,
                    i as f64 * 33.3,
                    8.0 + 6.0 * ((state >> 33) as f64 / 2f64.powi(31)),
                )
            })
            .collect();
        let err = find_beats(&noisy, &ImageGateConfig::default()).unwrap_err();
        assert!(matches!(err, ImageGateError::NoPeriodicity { .. }), "{err}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let frames = cine(30.0, 1.0, 800.0, 0.0);
        assert!(matches!(
            find_beats(&frames[..3], &ImageGateConfig::default()),
            Err(ImageGateError::TooFewFrames { frames: 3, .. })
        ));
        let mut swapped = frames.clone();
        swapped.swap(4, 5);
        let err = find_beats(&swapped, &ImageGateConfig::default()).unwrap_err();
        assert!(err.to_string().contains("frame 4"), "{err}");
        let mut short = frames.clone();
        short[7].data.truncate(10);
        assert!(matches!(
            find_beats(&short, &ImageGateConfig::default()),
            Err(ImageGateError::Frames(_))
        ));
        let config = ImageGateConfig {
            min_bpm: 200.0,
            max_bpm: 40.0,
            ..ImageGateConfig::default()
        };
        assert!(matches!(
            find_beats(&frames, &config),
            Err(ImageGateError::Config(_))
        ));
        // Half a beat at 40 bpm: no two end-diastoles.
        let half = cine(30.0, 0.6, 1500.0, 0.0);
        assert!(matches!(
            find_beats(&half, &ImageGateConfig::default()),
            Err(ImageGateError::TooShort { .. } | ImageGateError::NoPeriodicity { .. })
        ));
    }
}
