//! The simulator's own pseudo-random numbers.
//!
//! Synthetic recordings are test fixtures and training data, so the same seed must give the
//! same bytes forever; a generator from an external crate could change its stream in a minor
//! release. xoshiro256** (Blackman & Vigna) is small, fast and well tested; SplitMix64 expands
//! a 64-bit seed into its state as the authors recommend. Each consumer (heart rhythm, ECG
//! noise, patient, every segment) draws from its own stream derived from the seed and a tag,
//! so adding a draw in one place never shifts the numbers seen by another.

/// One step of SplitMix64: advances `state` and returns a well-mixed 64-bit value.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stream tags, one per independent consumer of randomness.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// RR intervals and ectopic beats.
    Rhythm = 1,
    /// ECG baseline wander, mains phase and muscle noise.
    EcgNoise = 2,
    /// The simulated patient's anatomy.
    Patient = 3,
    /// Per-segment probe and machine settings.
    Segment = 4,
    /// Per-segment speckle pattern.
    Speckle = 5,
    /// Frame timestamp jitter.
    FrameJitter = 6,
}

/// A xoshiro256** generator.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    /// The 256-bit generator state; never all zero because SplitMix64 fills it.
    s: [u64; 4],
    /// Second normal deviate of the last Box-Muller pair, handed out on the next call.
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator seeded from one 64-bit value.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// The generator for one consumer (`stream`) and item (`index`, e.g. a segment number)
    /// of the simulation seeded with `seed`.
    pub(crate) fn derive(seed: u64, stream: Stream, index: u64) -> Rng {
        let mut sm = seed;
        let a = splitmix64(&mut sm);
        let mut sm2 = a ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = splitmix64(&mut sm2);
        let mut sm3 = b ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        Rng::new(splitmix64(&mut sm3))
    }

    /// The next 64 random bits (xoshiro256**).
    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits of resolution.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A standard normal deviate (Box-Muller; pairs are cached).
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = {
            let mut r = Rng::derive(7, Stream::Rhythm, 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::derive(7, Stream::Rhythm, 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::derive(7, Stream::Rhythm, 1);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let d: Vec<u64> = {
            let mut r = Rng::derive(7, Stream::Patient, 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn xoshiro_matches_reference_vector() {
        // Reference: xoshiro256** with state {1, 2, 3, 4} yields 11520, 0, 1509978240,
        // 1215971899390074240 (from the authors' C implementation).
        let mut r = Rng {
            s: [1, 2, 3, 4],
            spare_normal: None,
        };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            vec![11520, 0, 1_509_978_240, 1_215_971_899_390_074_240]
        );
    }

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let mut r = Rng::new(42);
        let n = 200_000;
        let (mut su, mut sn, mut sn2) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            su += u;
            let z = r.normal();
            sn += z;
            sn2 += z * z;
        }
        let n = n as f64;
        assert!((su / n - 0.5).abs() < 0.005);
        assert!((sn / n).abs() < 0.01);
        assert!((sn2 / n - 1.0).abs() < 0.02);
    }
}
