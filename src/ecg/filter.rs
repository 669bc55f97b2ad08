//! Small fixed-cost signal-processing blocks shared by the QRS detector and the quality monitor.
//!
//! Everything here is allocated once at construction and then runs per sample without touching
//! the heap, because the detector must keep up with a live serial stream on a shared CPU.

use std::f64::consts::PI;

/// A second-order IIR section (Butterworth by construction), run in transposed direct form II.
///
/// Biquads are designed from the sampling rate at run time so one detector serves every rate
/// between 250 and 1000 Hz with the same corner frequencies in Hz.
#[derive(Debug, Clone)]
pub(crate) struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    z: [f64; 2],
}

impl Biquad {
    /// Butterworth (Q = 1/sqrt 2) low-pass with corner `fc_hz` at rate `fs_hz` (bilinear transform).
    pub(crate) fn low_pass(fc_hz: f64, fs_hz: f64) -> Biquad {
        let (cos_w, alpha) = Self::prewarp(fc_hz, fs_hz);
        let b1 = 1.0 - cos_w;
        Self::normalised(
            [b1 / 2.0, b1, b1 / 2.0],
            1.0 + alpha,
            [-2.0 * cos_w, 1.0 - alpha],
        )
    }

    /// Butterworth (Q = 1/sqrt 2) high-pass with corner `fc_hz` at rate `fs_hz` (bilinear transform).
    pub(crate) fn high_pass(fc_hz: f64, fs_hz: f64) -> Biquad {
        let (cos_w, alpha) = Self::prewarp(fc_hz, fs_hz);
        let b0 = (1.0 + cos_w) / 2.0;
        Self::normalised(
            [b0, -2.0 * b0, b0],
            1.0 + alpha,
            [-2.0 * cos_w, 1.0 - alpha],
        )
    }

    fn prewarp(fc_hz: f64, fs_hz: f64) -> (f64, f64) {
        let w0 = 2.0 * PI * fc_hz / fs_hz;
        (w0.cos(), w0.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2))
    }

    fn normalised(b: [f64; 3], a0: f64, a: [f64; 2]) -> Biquad {
        Biquad {
            b: [b[0] / a0, b[1] / a0, b[2] / a0],
            a: [a[0] / a0, a[1] / a0],
            z: [0.0; 2],
        }
    }

    /// Filters one sample.
    pub(crate) fn step(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.z[0];
        self.z[0] = self.b[1] * x - self.a[0] * y + self.z[1];
        self.z[1] = self.b[2] * x - self.a[1] * y;
        y
    }
}

/// A fixed-capacity history of the most recent samples, addressed by absolute sample index.
///
/// Absolute indexing lets the detector look back at "sample 12345" without tracking offsets,
/// and the power-of-two capacity makes the wrap a mask instead of a division.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    data: Vec<f32>,
    mask: usize,
    /// Absolute index the next pushed sample gets.
    next: u64,
}

impl Ring {
    /// A ring holding at least `min_len` samples (rounded up to a power of two).
    pub(crate) fn new(min_len: usize) -> Ring {
        let len = min_len.max(2).next_power_of_two();
        Ring {
            data: vec![0.0; len],
            mask: len - 1,
            next: 0,
        }
    }

    /// Appends the sample with index `self.next()`.
    pub(crate) fn push(&mut self, v: f32) {
        self.data[(self.next as usize) & self.mask] = v;
        self.next += 1;
    }

    /// Index the next pushed sample will get (equals the number of samples pushed).
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Oldest index still held.
    pub(crate) fn oldest(&self) -> u64 {
        self.next.saturating_sub(self.data.len() as u64)
    }

    /// The sample at absolute `index`, clamped into the held range so callers near the start of
    /// the stream or at the edge of the history get the nearest real sample, never garbage.
    pub(crate) fn at(&self, index: u64) -> f32 {
        if self.next == 0 {
            return 0.0;
        }
        let i = index.clamp(self.oldest(), self.next - 1);
        self.data[(i as usize) & self.mask]
    }
}

/// Running sum over the last `len` values, for moving-window integration.
///
/// Summing in f64 keeps the add/subtract drift far below any threshold over days of samples.
#[derive(Debug, Clone)]
pub(crate) struct MovingSum {
    data: Vec<f64>,
    pos: usize,
    sum: f64,
}

impl MovingSum {
    /// A window of `len` samples (at least one).
    pub(crate) fn new(len: usize) -> MovingSum {
        MovingSum {
            data: vec![0.0; len.max(1)],
            pos: 0,
            sum: 0.0,
        }
    }

    /// Adds `v`, drops the value `len` samples old, and returns the window mean.
    pub(crate) fn step(&mut self, v: f64) -> f64 {
        self.sum += v - self.data[self.pos];
        self.data[self.pos] = v;
        self.pos = (self.pos + 1) % self.data.len();
        // Rounding can leave a tiny negative sum after a large value leaves the window.
        self.sum.max(0.0) / self.data.len() as f64
    }
}
