//! The sample clock: session-clock times for ECG sample indices.
//!
//! A serial ECG sample is taken on the board's crystal and reaches us after a delay that is
//! never shorter than some minimum (conversion, frame assembly, transmission at the baud rate,
//! USB polling) but often longer, by tens of milliseconds, when the adapter or the kernel
//! buffers. Stamping each sample with its arrival time would copy that jitter onto R-peak
//! times, so a frame or two of gating error. Instead the sample index, which is exact, gives
//! the time: `t(n) = a + n · T`, and only the line `(a, T)` is estimated from arrivals.
//!
//! Arrival = sample time + minimum delay + jitter, with jitter never negative, so the right
//! line lies under every (index, arrival) point and touches the least delayed ones: a lower
//! envelope, or minimum-delay, fit. Of all lines under the points the clock takes the one
//! highest at the points' mean index (the linear programme of Moon, Skelly and Towsley's
//! clock-skew estimator), which is the lower convex hull edge above that index. Points are
//! first reduced to the least delayed arrival per one-second bucket, and the fit uses the last
//! minute of buckets, so the slope `T` follows the crystal's drift (tens of ppm, changing with
//! temperature over minutes) and a bad minute is forgotten.
//!
//! The fitted times include the minimum delay, a constant the video/ECG offset calibration
//! absorbs (see `board/ecg-protocol.md`). Because the line lies under the newest arrival, no
//! sample is ever stamped later than it arrived.
//!
//! Accuracy (unit test `tracks_drift_through_jitter`, 500 Hz, 40 ms frames, arrival jitter
//! uniform over 0-30 ms plus a 300 ms stall every 4 s, crystal 80 ppm slow drifting to 100
//! over the three minutes): after the first 5 s every sample time is within 0.75 ms of the
//! truth, 0.1 ms RMS; `board/ecg-protocol.md` lists the other cases tested.

use std::collections::VecDeque;

use super::SerialError;

/// Tuning of the fit; the defaults suit serial ECG at 250 to 1000 Hz.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockParams {
    /// Index span of one bucket, in seconds: only the least delayed arrival of each bucket is
    /// kept, so a second of buffering costs nothing.
    pub bucket_s: f64,
    /// Span of buckets the fit uses, in seconds: long enough for several near-minimum
    /// arrivals, short enough to follow drift changes.
    pub window_s: f64,
    /// Span the buckets must cover before the slope is fitted rather than carried over;
    /// shorter spans give the nominal (or previously fitted) rate.
    pub drift_span_s: f64,
    /// Largest rate error fitted, in parts per million of the nominal rate: a board's crystal
    /// is within 100 ppm and a ceramic resonator within 5000; beyond 20000 the configured rate
    /// is simply wrong and the fit would only follow noise.
    pub max_drift_ppm: f64,
}

impl Default for ClockParams {
    /// 1 s buckets, 64 s window, slope fitted from 4 s on, at most 2 % rate error.
    fn default() -> ClockParams {
        ClockParams {
            bucket_s: 1.0,
            window_s: 64.0,
            drift_span_s: 4.0,
            max_drift_ppm: 20_000.0,
        }
    }
}

/// The least delayed arrival in one bucket, relative to the clock's origin.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// Sample index minus the origin's.
    x: f64,
    /// Arrival minus the origin's arrival minus `x` nominal periods, in ns: the delay plus the
    /// accumulated rate error, the quantity the fit draws a line under.
    r: f64,
}

/// Drift-tracking, jitter-rejecting map from sample index to session-clock time.
///
/// Pure and push-driven: feed `(index, arrival_ns)` of the newest sample of every read with
/// [`SampleClock::push`], ask for times with [`SampleClock::time_ns`].
#[derive(Debug, Clone)]
pub struct SampleClock {
    /// Nominal sampling period in ns.
    period_ns: f64,
    /// Samples per bucket.
    bucket_len: u64,
    /// Buckets kept.
    window_buckets: u64,
    /// Bucket span from which the slope is fitted, in samples.
    drift_span: f64,
    /// Largest residual slope, in ns per sample.
    max_slope: f64,
    /// The first point pushed, `(index, arrival_ns)`: residuals are taken relative to it so
    /// the fit works on small numbers whatever the session length.
    origin: Option<(u64, u64)>,
    /// `(bucket number, least delayed point)`, oldest first.
    buckets: VecDeque<(u64, Point)>,
    /// The latest point: the line must pass under it too, or the newest samples could be
    /// stamped later than they arrived (its bucket's minimum may lie at an earlier index).
    newest: Option<Point>,
    /// Fitted residual slope in ns per sample (the rate error times the period).
    slope: f64,
    /// Fitted residual at `x = 0`.
    offset: f64,
    /// Work space for the hull.
    hull: Vec<Point>,
}

impl SampleClock {
    /// A clock for samples nominally at `fs_hz`, with default tuning.
    pub fn new(fs_hz: f64) -> Result<SampleClock, SerialError> {
        SampleClock::with_params(fs_hz, ClockParams::default())
    }

    /// A clock for samples nominally at `fs_hz`, tuned by `params`.
    pub fn with_params(fs_hz: f64, params: ClockParams) -> Result<SampleClock, SerialError> {
        if !(fs_hz.is_finite() && (1.0..=100_000.0).contains(&fs_hz)) {
            return Err(SerialError::Config {
                problem: format!(
                    "--fs {fs_hz}: the ECG sampling rate must be 1 to 100000 Hz, as the board \
                     is configured"
                ),
            });
        }
        let ClockParams {
            bucket_s,
            window_s,
            drift_span_s,
            max_drift_ppm,
        } = params;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(positive(bucket_s)
            && positive(window_s)
            && window_s >= 2.0 * bucket_s
            && drift_span_s.is_finite()
            && drift_span_s >= 0.0
            && max_drift_ppm.is_finite()
            && (0.0..=100_000.0).contains(&max_drift_ppm))
        {
            return Err(SerialError::Config {
                problem: format!(
                    "clock tuning {params:?}: buckets and window must be positive with the \
                     window at least two buckets, the drift span non-negative, the drift limit \
                     0 to 100000 ppm"
                ),
            });
        }
        let period_ns = 1e9 / fs_hz;
        let bucket_len = ((bucket_s * fs_hz).round() as u64).max(1);
        Ok(SampleClock {
            period_ns,
            bucket_len,
            window_buckets: (window_s / bucket_s).round().max(2.0) as u64,
            drift_span: drift_span_s * fs_hz,
            max_slope: max_drift_ppm * 1e-6 * period_ns,
            origin: None,
            buckets: VecDeque::new(),
            newest: None,
            slope: 0.0,
            offset: 0.0,
            hull: Vec::new(),
        })
    }

    /// Records that sample `index` had arrived by `arrival_ns` (the newest sample of a read,
    /// stamped right after the read returned), and refits.
    pub fn push(&mut self, index: u64, arrival_ns: u64) {
        let (i0, t0) = *self.origin.get_or_insert((index, arrival_ns));
        let x = index as f64 - i0 as f64;
        let r = (arrival_ns as f64 - t0 as f64) - x * self.period_ns;
        let point = Point { x, r };
        self.newest = Some(point);
        let bucket = index / self.bucket_len;
        let at = self.buckets.partition_point(|(b, _)| *b < bucket);
        match self.buckets.get_mut(at) {
            Some((b, p)) if *b == bucket => {
                if r < p.r {
                    *p = point;
                }
            }
            _ => self.buckets.insert(at, (bucket, point)),
        }
        let newest = self.buckets.back().map_or(bucket, |(b, _)| *b);
        while self
            .buckets
            .front()
            .is_some_and(|(b, _)| b + self.window_buckets <= newest)
        {
            self.buckets.pop_front();
        }
        self.refit();
    }

    /// Forgets the arrivals (keeping the fitted rate) after a discontinuity whose index jump is
    /// only estimated (a reconnect without sample counters, a board restart): old points would
    /// hold the line to the old alignment.
    pub fn rebase(&mut self) {
        self.buckets.clear();
        self.newest = None;
    }

    /// Session-clock time of sample `index`; `None` before the first push.
    pub fn time_ns(&self, index: u64) -> Option<u64> {
        let (i0, t0) = self.origin?;
        let x = index as f64 - i0 as f64;
        let t = t0 as f64 + x * (self.period_ns + self.slope) + self.offset;
        Some(t.round().max(0.0) as u64)
    }

    /// The last sample index whose time is at or before `t_ns` (the inverse of
    /// [`SampleClock::time_ns`]); `None` before the first push or before sample 0.
    pub fn index_at(&self, t_ns: u64) -> Option<u64> {
        let (i0, t0) = self.origin?;
        let x = (t_ns as f64 - t0 as f64 - self.offset) / (self.period_ns + self.slope);
        let index = i0 as f64 + x.floor();
        (index >= 0.0).then_some(index as u64)
    }

    /// The fitted rate error of the board against the nominal rate, in parts per million
    /// (positive: the board samples slower than nominal), for the operator to see.
    pub fn drift_ppm(&self) -> f64 {
        self.slope / self.period_ns * 1e6
    }

    /// The board's sampling rate as fitted, in Hz.
    pub fn fitted_rate_hz(&self) -> f64 {
        1e9 / (self.period_ns + self.slope)
    }

    /// Buckets the fit currently rests on (0 before any push or after a rebase).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Fits slope and offset to the bucket minima.
    fn refit(&mut self) {
        let (Some((_, first)), Some((_, last))) = (self.buckets.front(), self.buckets.back())
        else {
            return;
        };
        if last.x - first.x >= self.drift_span && self.buckets.len() >= 2 {
            self.slope = self.hull_slope().clamp(-self.max_slope, self.max_slope);
        }
        let slope = self.slope;
        self.offset = self
            .buckets
            .iter()
            .map(|(_, p)| p)
            .chain(&self.newest)
            .map(|p| p.r - slope * p.x)
            .fold(f64::INFINITY, f64::min);
    }

    /// Slope of the lower convex hull edge above the points' mean index: the line under all
    /// points that is highest there.
    fn hull_slope(&mut self) -> f64 {
        let hull = &mut self.hull;
        hull.clear();
        let mut sum_x = 0.0;
        for &(_, p) in &self.buckets {
            sum_x += p.x;
            // Monotone chain: pop while the last two points and p turn clockwise or are
            // collinear, so the hull bulges downwards.
            while let [.., o, a] = hull[..] {
                let cross = (a.x - o.x) * (p.r - o.r) - (a.r - o.r) * (p.x - o.x);
                if cross > 0.0 {
                    break;
                }
                hull.pop();
            }
            hull.push(p);
        }
        let mean_x = sum_x / self.buckets.len() as f64;
        hull.windows(2)
            .find(|e| e[1].x >= mean_x)
            .map_or(self.slope, |e| (e[1].r - e[0].r) / (e[1].x - e[0].x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic generator for the synthetic jitter.
    struct XorShift(u64);

    impl XorShift {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Errors of live sample times (computed right after each read, as the reader does) for a
    /// board at `fs` whose rate error goes linearly from `ppm0` to `ppm1` over `seconds`,
    /// sending `frame` samples per frame, each arriving 4 ms + `jitter(rng)` after its last
    /// sample was taken. Returns `(time from start in s, error in ms)` per sample.
    fn run(
        fs: f64,
        seconds: f64,
        ppm0: f64,
        ppm1: f64,
        frame: u64,
        jitter: &mut dyn FnMut(&mut XorShift, u64) -> f64,
    ) -> Vec<(f64, f64)> {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut clock = SampleClock::new(fs).unwrap();
        let n_total = (seconds * fs) as u64;
        // True sample times: the period drifts linearly, so integrate it.
        let t_start = 5e9; // the session clock started before the ECG
        let mut truth = Vec::with_capacity(n_total as usize);
        let mut t = t_start;
        for n in 0..n_total {
            truth.push(t);
            let ppm = ppm0 + (ppm1 - ppm0) * n as f64 / n_total as f64;
            t += 1e9 / fs * (1.0 + ppm * 1e-6);
        }
        let base_delay = 4e6;
        let mut errors = Vec::new();
        let mut last_arrival = 0.0f64;
        for (k, first) in (0..n_total).step_by(frame as usize).enumerate() {
            let last = (first + frame).min(n_total) - 1;
            // Serial data cannot overtake itself: arrivals are in order.
            let arrival =
                (truth[last as usize] + base_delay + jitter(&mut rng, k as u64)).max(last_arrival);
            last_arrival = arrival;
            clock.push(last, arrival as u64);
            for n in first..=last {
                let est = clock.time_ns(n).unwrap() as f64;
                let err_ms = (est - truth[n as usize] - base_delay) * 1e-6;
                errors.push(((truth[n as usize] - t_start) * 1e-9, err_ms));
            }
        }
        errors
    }

    fn summary(errors: &[(f64, f64)], after_s: f64) -> (f64, f64) {
        let settled: Vec<f64> = errors
            .iter()
            .filter(|(t, _)| *t >= after_s)
            .map(|(_, e)| *e)
            .collect();
        let max = settled.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        let rms = (settled.iter().map(|e| e * e).sum::<f64>() / settled.len() as f64).sqrt();
        (max, rms)
    }

    #[test]
    fn exact_arrivals_give_exact_times() {
        let mut clock = SampleClock::new(500.0).unwrap();
        for k in 0..100u64 {
            let n = k * 20 + 19;
            clock.push(n, 1_000_000 + n * 2_000_000);
        }
        for n in [0u64, 19, 1000, 1999, 5000] {
            assert_eq!(clock.time_ns(n), Some(1_000_000 + n * 2_000_000));
        }
        assert_eq!(clock.index_at(1_000_000 + 777 * 2_000_000), Some(777));
        assert_eq!(clock.index_at(1_000_000 + 777 * 2_000_000 - 1), Some(776));
        assert_eq!(clock.drift_ppm(), 0.0);
    }

    #[test]
    fn tracks_drift_through_jitter() {
        // Uniform 0-30 ms jitter, and every 97th frame stalled 300 ms (a USB hiccup).
        let mut jitter = |rng: &mut XorShift, k: u64| {
            let stall = if k % 97 == 50 { 300e6 } else { 0.0 };
            rng.unit() * 30e6 + stall
        };
        let errors = run(500.0, 180.0, 80.0, 100.0, 20, &mut jitter);
        let (max, rms) = summary(&errors, 5.0);
        eprintln!("uniform 0-30 ms, 80->100 ppm: max {max:.3} ms, rms {rms:.3} ms");
        assert!(max < 1.0, "max error {max} ms");
        assert!(rms < 0.4, "rms error {rms} ms");
        // Even the first seconds are within the jitter's range, never later than arrival.
        let (max_all, _) = summary(&errors, 0.0);
        assert!(max_all < 30.0, "start-up error {max_all} ms");
    }

    #[test]
    fn rare_fast_arrivals_suffice() {
        // Mostly 10-40 ms late; only one frame in 50 gets through in under 1 ms.
        let mut jitter = |rng: &mut XorShift, k: u64| {
            if k % 50 == 7 {
                rng.unit() * 1e6
            } else {
                10e6 + rng.unit() * 30e6
            }
        };
        let errors = run(1000.0, 120.0, -40.0, -40.0, 40, &mut jitter);
        let (max, rms) = summary(&errors, 10.0);
        eprintln!("sparse minima, -40 ppm: max {max:.3} ms, rms {rms:.3} ms");
        assert!(max < 2.0, "max error {max} ms");
        assert!(rms < 1.0, "rms error {rms} ms");
    }

    #[test]
    fn follows_a_resonator_rate_error() {
        // A ceramic resonator 0.3 % slow: far beyond crystal drift, still tracked.
        let mut jitter = |rng: &mut XorShift, _| rng.unit() * 20e6;
        let errors = run(250.0, 90.0, 3000.0, 3000.0, 10, &mut jitter);
        let (max, _) = summary(&errors, 10.0);
        eprintln!("3000 ppm: max {max:.3} ms");
        assert!(max < 1.5, "max error {max} ms");
    }

    #[test]
    fn never_later_than_arrival() {
        let mut rng = XorShift(7);
        let mut clock = SampleClock::new(500.0).unwrap();
        for k in 0..3000u64 {
            let n = k * 20 + 19;
            let arrival = n * 2_000_000 + (rng.unit() * 30e6) as u64;
            clock.push(n, arrival);
            assert!(clock.time_ns(n).unwrap() <= arrival, "read {k}");
        }
    }

    #[test]
    fn rebase_keeps_the_rate_and_takes_the_new_alignment() {
        let mut clock = SampleClock::new(500.0).unwrap();
        let period = 2_000_000.0 * (1.0 + 200e-6);
        for k in 0..1000u64 {
            let n = k * 20 + 19;
            clock.push(n, (n as f64 * period) as u64);
        }
        assert!(
            (clock.drift_ppm() - 200.0).abs() < 1.0,
            "{}",
            clock.drift_ppm()
        );
        // Resumed with an index guessed 10 samples (20 ms) too high.
        clock.rebase();
        assert_eq!(clock.buckets(), 0);
        let n = 30_019u64;
        let arrival = ((n - 10) as f64 * period) as u64;
        clock.push(n, arrival);
        assert_eq!(clock.time_ns(n), Some(arrival));
        assert!((clock.drift_ppm() - 200.0).abs() < 1.0);
    }

    #[test]
    fn settings_are_checked() {
        assert!(SampleClock::new(0.0).is_err());
        assert!(SampleClock::new(f64::NAN).is_err());
        let p = ClockParams {
            window_s: 0.5,
            ..ClockParams::default()
        };
        assert!(SampleClock::with_params(500.0, p).is_err());
        assert_eq!(SampleClock::new(500.0).unwrap().time_ns(0), None);
    }
}
