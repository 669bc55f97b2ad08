//! Synthetic ECG for the unit tests: Gaussian P-QRS-T complexes at known R instants, with
//! baseline wander and deterministic noise, so tests know the exact truth and need no files.

use std::f64::consts::PI;

/// Shape of the synthetic beats (millivolts and seconds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    /// R-wave height; negative for an inverted lead.
    pub r_mv: f64,
    /// T-wave height (positive), peaking 300 ms after R.
    pub t_mv: f64,
    /// T-wave width (standard deviation); wider T waves are slower and easier to reject.
    pub t_sigma_s: f64,
}

impl Default for Beat {
    fn default() -> Beat {
        Beat {
            r_mv: 1.0,
            t_mv: 0.3,
            t_sigma_s: 0.045,
        }
    }
}

/// A small deterministic generator (xorshift64*), so tests are repeatable.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
    }
}

/// R instants (seconds) for `n` beats at `mean_rr_s` with +-`jitter` relative variation.
pub(crate) fn r_times(n: usize, mean_rr_s: f64, jitter: f64, rng: &mut Rng) -> Vec<f64> {
    let mut t = 0.6;
    (0..n)
        .map(|_| {
            let r = t;
            t += mean_rr_s * (1.0 + jitter * (2.0 * rng.uniform() - 1.0));
            r
        })
        .collect()
}

fn gauss(t: f64, centre: f64, sigma: f64) -> f64 {
    let z = (t - centre) / sigma;
    (-0.5 * z * z).exp()
}

/// Samples `duration_s` of ECG at `fs_hz` with a beat of shape `beats[i]` at `r_times[i]`,
/// 0.15 mV of 0.3 Hz baseline wander and white noise of `noise_mv` RMS.
pub(crate) fn ecg(
    fs_hz: f64,
    duration_s: f64,
    r_times: &[f64],
    beats: &[Beat],
    noise_mv: f64,
    rng: &mut Rng,
) -> Vec<f32> {
    let n = (duration_s * fs_hz).round() as usize;
    let mut x = vec![0.0f64; n];
    for (i, v) in x.iter_mut().enumerate() {
        let t = i as f64 / fs_hz;
        *v = 0.15 * (2.0 * PI * 0.3 * t).sin() + noise_mv * rng.normal();
    }
    for (&tr, b) in r_times.iter().zip(beats) {
        let lo = (((tr - 0.4) * fs_hz).max(0.0)) as usize;
        let hi = (((tr + 0.6) * fs_hz) as usize).min(n);
        let s = b.r_mv.signum();
        for (i, v) in x.iter_mut().enumerate().take(hi).skip(lo) {
            let t = i as f64 / fs_hz;
            *v += 0.12 * gauss(t, tr - 0.16, 0.025)
                + s * (-0.12 * gauss(t, tr - 0.028, 0.008) + b.r_mv.abs() * gauss(t, tr, 0.009)
                    - 0.25 * b.r_mv.abs() * gauss(t, tr + 0.03, 0.01))
                + b.t_mv * gauss(t, tr + 0.3, b.t_sigma_s);
        }
    }
    x.into_iter().map(|v| v as f32).collect()
}
