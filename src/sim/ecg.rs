//! The simulated heart rhythm and single-lead ECG.
//!
//! The rhythm is planned once, up front, as a list of R-peak times: the scan is counted in
//! heartbeats, so the R-peaks decide how long the recording lasts, and the same list drives the
//! ECG waveform, the R-peak truth and the wall motion of the video. RR intervals follow a
//! slowly drifting heart rate modulated by respiration (respiratory sinus arrhythmia), a 0.1 Hz
//! Mayer wave and random jitter, clamped to the configured rate range; an optional premature
//! ventricular beat arrives early and is followed by a compensatory pause.
//!
//! The waveform is the sum-of-Gaussians beat model of McSharry et al. (ECGSYN, IEEE TBME 2003)
//! written directly in time: each beat adds Gaussian P, Q, R, S and (asymmetric, two-Gaussian) T
//! waves placed relative to its R-peak, with the T wave moving with the preceding RR as the QT
//! interval does. Because the R wave is a Gaussian centred on the planned R time and the Q and S
//! waves are too far away to shift its maximum measurably, the planned times are the exact
//! R-peak truth. Noise is added on top: baseline wander (respiration plus a random drift), mains
//! hum and bursty muscle noise; lead-off stretches replace the signal with 0 mV or the rail.

use std::f64::consts::TAU;

use super::config::{LeadOffMode, LeadOffStretch, NOISE_BURST_MV, RAIL_MV, SimConfig};
use super::rng::{Rng, Stream};

/// Extra time after the last R-peak, as a fraction of the following RR, so a QRS detector has
/// the samples it needs to confirm the final beat and the recording does not end on an R-peak.
const TAIL_FRACTION: f64 = 0.5;

/// One Gaussian component of a beat.
#[derive(Debug, Clone, Copy)]
struct Wave {
    /// Peak amplitude in mV (negative for Q, S and inverted T waves).
    amp: f64,
    /// Centre relative to the R-peak, in seconds.
    mu: f64,
    /// Width in seconds.
    sigma: f64,
}

/// How a beat was conducted, which decides its ECG morphology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeatKind {
    /// Normal sinus beat: P wave, narrow QRS, upright T.
    Sinus,
    /// Premature ventricular beat: no P wave, wide tall QRS, inverted T.
    Ectopic,
}

/// One heartbeat's R-peak and the waves drawn around it.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    /// R-peak time in seconds from the start of the recording (negative for the beat before).
    pub r_s: f64,
    /// Conduction, which sets the ECG morphology and the strength of the contraction.
    pub kind: BeatKind,
    /// The Gaussian components.
    waves: Vec<Wave>,
}

/// The planned rhythm of the whole recording.
#[derive(Debug, Clone)]
pub(crate) struct Rhythm {
    /// All R-peaks in time order: one before the recording starts, the N+1 peaks that bound the
    /// scan's N beats, and one after the end, so every instant lies between two R-peaks.
    pub beats: Vec<Beat>,
    /// For each scan segment, the index in `beats` of the R-peak that starts it.
    pub segment_start: Vec<usize>,
    /// Recording length in seconds.
    pub duration_s: f64,
    /// Respiration frequency, shared by the sinus arrhythmia and the baseline wander.
    pub resp_hz: f64,
    /// Respiration phase at time zero.
    pub resp_phase: f64,
}

/// Per-patient ECG wave amplitudes and intervals.
#[derive(Debug, Clone, Copy)]
struct Morphology {
    /// P wave amplitude, mV.
    p: f64,
    /// PR interval (P centre to R), s.
    pr: f64,
    /// Q wave depth, mV.
    q: f64,
    /// R wave amplitude, mV.
    r: f64,
    /// S wave depth, mV.
    s: f64,
    /// T wave amplitude, mV.
    t: f64,
    /// R wave width, s.
    qrs_sigma: f64,
}

impl Morphology {
    /// Draws a normal adult morphology (R about 1-1.5 mV).
    fn draw(rng: &mut Rng) -> Morphology {
        Morphology {
            p: rng.range(0.10, 0.20),
            pr: rng.range(0.14, 0.18),
            q: rng.range(0.05, 0.15),
            r: rng.range(1.0, 1.5),
            s: rng.range(0.15, 0.35),
            t: rng.range(0.20, 0.40),
            qrs_sigma: rng.range(0.009, 0.012),
        }
    }

    /// The waves of one beat; `rr_before` (s) sets the QT as Bazett's sqrt(RR) scaling does
    /// and `resp` (-1..1) modulates amplitudes the way breathing moves the heart's axis.
    fn waves(&self, kind: BeatKind, rr_before: f64, resp: f64) -> Vec<Wave> {
        let k = (rr_before / 0.857).sqrt().clamp(0.75, 1.25);
        let amp = 1.0 + 0.05 * resp;
        let w = |amp, mu, sigma| Wave { amp, mu, sigma };
        match kind {
            BeatKind::Sinus => vec![
                w(self.p * amp, -self.pr, 0.022),
                w(-self.q * amp, -0.028, 0.008),
                w(self.r * amp, 0.0, self.qrs_sigma),
                w(-self.s * amp, 0.030, 0.009),
                w(0.75 * self.t * amp, 0.245 * k, 0.050 * k),
                w(0.45 * self.t * amp, 0.29 * k, 0.032 * k),
            ],
            BeatKind::Ectopic => vec![
                w(1.3 * self.r * amp, 0.0, 0.024),
                w(-0.45 * self.r * amp, 0.072, 0.022),
                w(-(0.5 * self.t + 0.15) * amp, 0.30 * k, 0.065),
            ],
        }
    }
}

/// Ornstein-Uhlenbeck step: keeps unit variance with correlation time `tau` over `dt`.
fn ou_step(x: f64, dt: f64, tau: f64, rng: &mut Rng) -> f64 {
    let a = (-dt / tau).exp();
    x * a + (1.0 - a * a).sqrt() * rng.normal()
}

/// Plans the R-peaks of the whole scan.
pub(crate) fn plan_rhythm(cfg: &SimConfig) -> Rhythm {
    let mut rng = Rng::derive(cfg.seed, Stream::Rhythm, 0);
    let morph = Morphology::draw(&mut rng);
    let resp_hz = rng.range(0.18, 0.32);
    let resp_phase = rng.range(0.0, TAU);
    let mayer_phase = rng.range(0.0, TAU);
    let rr_min = 60.0 / cfg.max_bpm;
    let rr_max = 60.0 / cfg.min_bpm;
    // Slow heart-rate drift in bpm, scaled with the requested beat-to-beat variability.
    let drift_sd = 75.0 * cfg.rr_jitter;
    let mut drift = 0.0;
    let nominal_rr = |t: f64, bpm: f64, drift: f64, rng: &mut Rng| -> f64 {
        let hr = (bpm + drift).clamp(cfg.min_bpm, cfg.max_bpm);
        let modulation = 1.0
            + cfg.rsa * (TAU * resp_hz * t + resp_phase).sin()
            + 0.5 * cfg.rsa * (TAU * 0.1 * t + mayer_phase).sin()
            + cfg.rr_jitter * rng.normal();
        (60.0 / hr * modulation).clamp(rr_min, rr_max)
    };
    let resp_at = |t: f64| (TAU * resp_hz * t + resp_phase).sin();

    let seg_bpm: Vec<f64> = cfg
        .scan
        .segments
        .iter()
        .map(|s| s.bpm.unwrap_or(cfg.base_bpm))
        .collect();
    let mut beat_bpm = Vec::new();
    for (s, seg) in cfg.scan.segments.iter().enumerate() {
        beat_bpm.extend(std::iter::repeat_n(seg_bpm[s], seg.beats as usize));
    }

    // R times: r[0] before the start, r[1..=n+1] bound the scan's beats, r[n+2] after the end.
    let rr_pre = nominal_rr(0.0, seg_bpm[0], drift, &mut rng);
    let r0 = rng.range(0.35, 0.75) * rr_pre;
    let mut r = vec![r0 - rr_pre, r0];
    let mut kinds = vec![BeatKind::Sinus, BeatKind::Sinus];
    let mut pause: Option<f64> = None;
    for (k, &bpm) in beat_bpm.iter().enumerate() {
        let t = r[r.len() - 1];
        let rr = nominal_rr(t, bpm, drift, &mut rng);
        drift = ou_step(drift / drift_sd.max(1e-9), rr, 20.0, &mut rng) * drift_sd;
        let (interval, kind) = if let Some(p) = pause.take() {
            (p, BeatKind::Sinus)
        } else if k >= 1 && rng.chance(cfg.ectopic_prob) {
            let coupling = (rng.range(0.55, 0.75) * rr).clamp(rr_min, rr_max);
            pause = Some((2.0 * rr - coupling).clamp(rr_min, rr_max));
            (coupling, BeatKind::Ectopic)
        } else {
            (rr, BeatKind::Sinus)
        };
        r.push(t + interval);
        kinds.push(kind);
    }
    let last = r[r.len() - 1];
    let bpm_last = beat_bpm.last().copied().unwrap_or(cfg.base_bpm);
    let rr_post = pause.unwrap_or_else(|| nominal_rr(last, bpm_last, drift, &mut rng));
    r.push(last + rr_post);
    kinds.push(BeatKind::Sinus);
    let duration_s = last + TAIL_FRACTION * rr_post;

    let beats = r
        .iter()
        .zip(&kinds)
        .enumerate()
        .map(|(i, (&r_s, &kind))| {
            let rr_before = if i == 0 { rr_pre } else { r_s - r[i - 1] };
            Beat {
                r_s,
                kind,
                waves: morph.waves(kind, rr_before, resp_at(r_s)),
            }
        })
        .collect();

    let mut segment_start = Vec::with_capacity(cfg.scan.segments.len());
    let mut first = 1;
    for seg in &cfg.scan.segments {
        segment_start.push(first);
        first += seg.beats as usize;
    }
    Rhythm {
        beats,
        segment_start,
        duration_s,
        resp_hz,
        resp_phase,
    }
}

impl Rhythm {
    /// Time of R-peak `i` in whole nanoseconds (0 for the one before the recording), the
    /// single rounding used for R-peak events, segment spans and frame truth alike.
    pub(crate) fn r_ns(&self, i: usize) -> u64 {
        (self.beats[i].r_s * 1e9).round().max(0.0) as u64
    }

    /// The beat containing time `t_ns` (index `i` with `r_ns(i) <= t_ns < r_ns(i + 1)`,
    /// clamped to the planned range) and the cardiac phase there, 0 at the R-peak rising to 1
    /// at the next.
    pub(crate) fn locate(&self, t_ns: u64) -> (usize, f64) {
        let after = self
            .beats
            .partition_point(|b| (b.r_s * 1e9).round() <= t_ns as f64);
        let i = after
            .saturating_sub(1)
            .min(self.beats.len().saturating_sub(2));
        let (r0, r1) = (self.beats[i].r_s, self.beats[i + 1].r_s);
        let t_s = t_ns as f64 * 1e-9;
        (i, ((t_s - r0) / (r1 - r0)).clamp(0.0, 1.0 - 1e-9))
    }

    /// The scan segment that beat `i` (as returned by [`Rhythm::locate`]) belongs to; the
    /// beats before the first and after the last R-peak of the scan belong to the first and
    /// last segment.
    pub(crate) fn segment_of(&self, beat: usize) -> usize {
        self.segment_start
            .partition_point(|&s| s <= beat)
            .saturating_sub(1)
    }

    /// Indices in `beats` of the R-peaks inside the recording, in time order.
    pub(crate) fn recorded_peaks(&self) -> std::ops::Range<usize> {
        1..self.beats.len() - 1
    }
}

/// Noise-free ECG at time `t_s` in mV, from the beats whose waves reach it.
fn clean_ecg(beats: &[Beat], lo: usize, t_s: f64) -> f64 {
    let mut v = 0.0;
    for b in beats[lo..].iter().take_while(|b| b.r_s - 0.5 < t_s) {
        for w in &b.waves {
            let d = t_s - b.r_s - w.mu;
            if d.abs() < 6.0 * w.sigma {
                v += w.amp * (-0.5 * d * d / (w.sigma * w.sigma)).exp();
            }
        }
    }
    v
}

/// Sample-by-sample ECG generator (noise states advance with every sample, so samples must be
/// drawn in order).
#[derive(Debug, Clone)]
pub(crate) struct EcgSynth {
    /// Sampling rate, Hz.
    fs: f64,
    /// Index of the next sample.
    next: u64,
    /// First beat whose waves can still reach the next sample.
    lo: usize,
    /// Noise stream.
    rng: Rng,
    /// Baseline wander amplitude, mV.
    wander_mv: f64,
    /// Respiration frequency and phase, for the respiratory part of the wander.
    resp: (f64, f64),
    /// Random drift part of the wander (unit-variance OU state).
    drift: f64,
    /// Mains frequency (Hz), amplitude (mV) and phase.
    mains: (f64, f64, f64),
    /// EMG RMS, mV.
    emg_mv: f64,
    /// Muscle activity envelope (unit-variance OU state), which makes the EMG come in bursts.
    emg_env: f64,
    /// Lead-off stretches.
    lead_off: Vec<LeadOffStretch>,
}

impl EcgSynth {
    /// A generator for `cfg` whose respiration matches `rhythm`.
    pub(crate) fn new(cfg: &SimConfig, rhythm: &Rhythm) -> EcgSynth {
        let mut rng = Rng::derive(cfg.seed, Stream::EcgNoise, 0);
        let mains_phase = rng.range(0.0, TAU);
        EcgSynth {
            fs: cfg.ecg_fs_hz,
            next: 0,
            lo: 0,
            rng,
            wander_mv: cfg.baseline_wander_mv,
            resp: (rhythm.resp_hz, rhythm.resp_phase),
            drift: 0.0,
            mains: (cfg.mains_hz, cfg.mains_mv, mains_phase),
            emg_mv: cfg.emg_mv,
            emg_env: 0.0,
            lead_off: cfg.lead_off.clone(),
        }
    }

    /// How the front end reads at sample `n`: `None` with the leads on.
    pub(crate) fn lead_off_at(&self, n: u64) -> Option<LeadOffMode> {
        let t = n as f64 / self.fs;
        self.lead_off
            .iter()
            .find(|l| t >= l.start_s && t < l.start_s + l.duration_s)
            .map(|l| l.mode)
    }

    /// The next sample in mV and whether the leads were off for it.
    pub(crate) fn next_sample(&mut self, beats: &[Beat]) -> (f32, bool) {
        let n = self.next;
        self.next += 1;
        let t = n as f64 / self.fs;
        let dt = 1.0 / self.fs;
        while self.lo + 1 < beats.len() && beats[self.lo].r_s + 1.0 < t {
            self.lo += 1;
        }
        // Noise states advance even while the leads are off, so a lead-off stretch changes
        // only its own samples.
        self.drift = ou_step(self.drift, dt, 4.0, &mut self.rng);
        self.emg_env = ou_step(self.emg_env, dt, 1.5, &mut self.rng);
        let white = self.rng.normal();
        let (resp_hz, resp_phase) = self.resp;
        let wander =
            self.wander_mv * (0.7 * (TAU * resp_hz * t + resp_phase).sin() + 0.3 * self.drift);
        let (mains_hz, mains_mv, mains_phase) = self.mains;
        let hum = mains_mv * (TAU * mains_hz * t + mains_phase).sin();
        // Mean of 0.5 + |N(0,1)| is about 1.3, so the envelope averages to 1.
        let emg = self.emg_mv * (0.5 + self.emg_env.abs()) / 1.3 * white;
        let v = clean_ecg(beats, self.lo, t) + wander + hum + emg;
        match self.lead_off_at(n) {
            None => (v as f32, false),
            Some(LeadOffMode::Flat) => (0.0, true),
            Some(LeadOffMode::Railed) => (RAIL_MV, true),
            Some(LeadOffMode::Noise) => (v as f32 + NOISE_BURST_MV * burst(n), false),
        }
    }
}

/// Uniform noise in [-1, 1) for sample `n`, from a hash of its index rather than the
/// generator, so a burst changes only its own samples (as a lead-off stretch does).
fn burst(n: u64) -> f32 {
    let h = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let unit = (h >> 40) as f32 / (1u64 << 24) as f32;
    2.0 * unit - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scan::ScanScript;
    use crate::views::View;

    fn cfg(beats: u32) -> SimConfig {
        SimConfig {
            scan: ScanScript::from_views(&[View::A4c], beats),
            ..SimConfig::default()
        }
    }

    #[test]
    fn clean_r_peak_is_the_waveform_maximum() {
        let mut c = cfg(20);
        c.ectopic_prob = 0.3;
        let rhythm = plan_rhythm(&c);
        assert!(rhythm.beats.iter().any(|b| b.kind == BeatKind::Ectopic));
        for (i, b) in rhythm.beats.iter().enumerate().skip(1).take(20) {
            let lo = i - 1;
            let step = 1e-5;
            let best = (-300..=300)
                .map(|j| b.r_s + j as f64 * step)
                .max_by(|x, y| {
                    clean_ecg(&rhythm.beats, lo, *x).total_cmp(&clean_ecg(&rhythm.beats, lo, *y))
                })
                .unwrap_or(f64::NAN);
            assert!((best - b.r_s).abs() < 3e-4, "beat {i}: {best} vs {}", b.r_s);
        }
    }

    #[test]
    fn ectopic_beats_are_premature_with_compensatory_pause() {
        let mut c = cfg(300);
        c.ectopic_prob = 0.2;
        c.rr_jitter = 0.0;
        c.rsa = 0.0;
        let rhythm = plan_rhythm(&c);
        let rr_nominal = 60.0 / c.base_bpm;
        let mut seen = 0;
        for i in 2..rhythm.beats.len() - 1 {
            if rhythm.beats[i].kind != BeatKind::Ectopic {
                continue;
            }
            seen += 1;
            let before = rhythm.beats[i].r_s - rhythm.beats[i - 1].r_s;
            let after = rhythm.beats[i + 1].r_s - rhythm.beats[i].r_s;
            assert!(before < 0.8 * rr_nominal, "coupling {before}");
            assert!(after > 1.2 * rr_nominal, "pause {after}");
            assert!((before + after - 2.0 * rr_nominal).abs() < 0.02 * rr_nominal);
        }
        assert!(seen > 20, "only {seen} ectopic beats");
    }

    #[test]
    fn locate_gives_phase_and_segment() {
        let c = SimConfig {
            scan: ScanScript::from_views(&[View::Plax, View::A4c], 3),
            ..SimConfig::default()
        };
        let r = plan_rhythm(&c);
        assert_eq!(r.beats.len(), 3 + 3 + 3);
        assert_eq!(r.segment_start, vec![1, 4]);
        let (i, x) = r.locate(0);
        assert_eq!(i, 0);
        assert!(x > 0.0 && x < 1.0);
        let mid = 0.5 * (r.beats[4].r_s + r.beats[5].r_s);
        let (i, x) = r.locate((mid * 1e9).round() as u64);
        assert_eq!(i, 4);
        assert!((x - 0.5).abs() < 1e-6);
        assert_eq!(r.segment_of(0), 0);
        assert_eq!(r.segment_of(3), 0);
        assert_eq!(r.segment_of(4), 1);
        assert_eq!(r.segment_of(8), 1);
        assert!(r.duration_s > r.beats[7].r_s && r.duration_s < r.beats[8].r_s);
    }
}
