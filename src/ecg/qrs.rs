//! Streaming, causal QRS detection with R-peak refinement (Pan-Tompkins family).
//!
//! See the module documentation of [`crate::ecg`] for the algorithm and the reasons behind it.
//! Every duration below is in seconds and converted to samples once, so one set of constants
//! serves every supported sampling rate.

use super::EcgError;
use super::filter::{Biquad, MovingSum, Ring};

/// Lowest sampling rate the detector accepts; below it the 15 Hz band edge nears Nyquist and
/// R-peak timing resolution (4 ms at 250 Hz) is as coarse as gating tolerates.
pub const MIN_FS_HZ: f64 = 250.0;
/// Highest sampling rate the detector accepts; the rings and the baseline work grow with the
/// rate and nothing above 1 kHz adds information to a QRS complex.
pub const MAX_FS_HZ: f64 = 1000.0;

/// Detection band: Pan and Tompkins' 5-15 Hz, where QRS energy dominates P, T and baseline wander.
const BAND_LOW_HZ: f64 = 5.0;
const BAND_HIGH_HZ: f64 = 15.0;
/// Moving-window integration length, about the widest normal QRS.
const MWI_S: f64 = 0.150;
/// A peak of the integrated signal is declared once it falls to half, or at the latest this long
/// after its maximum, so a broad hump is never held indefinitely.
const PEAK_TIMEOUT_S: f64 = 0.095;
/// A candidate is held this long after its integrated maximum so that a larger peak close behind
/// it (the QRS after a tall P wave, the real beat after a noise spike) replaces it.
const PRE_BLANK_S: f64 = 0.220;
/// The R peak lies at most this far before the integrated maximum (filter plus window lag; the
/// lag measured on MIT-BIH is 85-145 ms, wide beats more).
const REFINE_BEFORE_S: f64 = 0.180;
/// ... and at least this far before it.
const REFINE_AFTER_S: f64 = 0.020;
/// The baseline for refinement is the median of the search window widened by this on each side,
/// which reaches into the PR and ST segments.
const BASELINE_MARGIN_S: f64 = 0.100;
/// The refined polarity follows recent beats unless the opposite deflection is this many times
/// larger, so a biphasic QRS is timed at the same wave beat after beat.
const POLARITY_BIAS: f32 = 2.0;
/// Weight of the newest beat in the running polarity estimate.
const POLARITY_MEMORY: f32 = 0.25;
/// Upper bound on the confirmation delay, from the R peak to the sample that reports it: a beat
/// is decided `PRE_BLANK_S` after its integrated maximum, which is at most `REFINE_BEFORE_S`
/// after the R peak; searchback beats that would come later are not reported.
pub const MAX_DELAY_S: f64 = REFINE_BEFORE_S + PRE_BLANK_S;
/// No two beats closer than this: the ventricles cannot depolarise again so soon.
const REFRACTORY_S: f64 = 0.200;
/// Within this interval after a beat a candidate may be a T wave and must prove its slope.
const T_WAVE_WINDOW_S: f64 = 0.360;
/// A T-wave suspect whose steepest slope is below this share of the previous QRS's is a T wave.
const T_WAVE_SLOPE_RATIO: f64 = 0.5;
/// Detection threshold position between the noise and QRS peak levels (Hamilton-Tompkins).
const THRESHOLD_FRACTION: f64 = 0.3125;
/// A lower threshold for candidates that also look like a QRS by slope: small ectopic or paced
/// beats that the main threshold misses and the bounded delay leaves no time to search back for.
const WEAK_THRESHOLD_FRACTION: f64 = 0.2;
/// A weak candidate needs at least this share of the median slope of recent beats ...
const WEAK_SLOPE_RATIO: f64 = 0.4;
/// ... and must come at least this long after the previous beat (beyond most T waves).
const WEAK_MIN_INTERVAL_S: f64 = 0.400;
/// Searchback runs when no beat was found for this many median RR intervals.
const SEARCHBACK_RR_FACTOR: f64 = 1.5;
/// RR interval assumed for searchback timing before two beats have been found.
const DEFAULT_RR_S: f64 = 1.0;
/// Searchback accepts a candidate above this share of the detection threshold.
const SEARCHBACK_THRESHOLD_RATIO: f64 = 0.5;
/// When searchback finds no candidate above its threshold, the QRS levels are multiplied by this
/// (slopes by its square root, since integrated heights go with amplitude squared): a QRS that
/// shrank by more than searchback's margin is found again after a few RR intervals, while a
/// pause of a few seconds does not bring the threshold down into the noise.
const QRS_LEVEL_DECAY: f64 = 0.5;
/// The first beat of a stream must be this many times the median of the integrated signal:
/// with no QRS level learnt yet, this keeps a noise bump at switch-on from becoming beat one.
const STARTUP_SNR: f64 = 5.0;
/// Peak-level, slope and RR histories are this long; medians of eight resist single artefacts.
const HISTORY: usize = 8;
/// Input and slope history kept for look-back (refinement reaches back under 0.7 s).
const RING_S: f64 = 2.0;

/// One detected heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RPeak {
    /// Sample index of the refined R peak since the stream began (the first pushed sample is 0);
    /// gating cuts video at this instant, so it is the true extremum, not the filtered detection.
    pub index: u64,
    /// Signed deviation of the R peak from the local baseline, in input units (mV, ADC counts);
    /// negative for beats whose dominant deflection points down.
    pub amplitude: f32,
    /// Samples since the previous reported R peak; `None` for the first beat of the stream.
    pub rr_samples: Option<u64>,
    /// Index of the sample whose push reported this beat, so consumers can see the actual delay
    /// (`confirmed_at - index`), which never exceeds [`QrsDetector::max_delay_samples`].
    pub confirmed_at: u64,
    /// The beat was recovered by searchback (below the normal threshold, accepted because the
    /// RR interval ran long); such beats are less certain.
    pub searchback: bool,
}

/// A beat the detector has found but not yet confirmed: from the first sample past the
/// integrated maximum, through pre-blanking (220 ms after that maximum) in case a larger peak
/// follows. Consumers that must act as soon as a beat ends (the daemon encodes the beat's
/// frames ahead of the cut) can start on it: in the common case the beat is confirmed at this
/// very index, and when it is not (a larger peak replaces the candidate) nothing has been
/// reported, so at worst their work was wasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisionalPeak {
    /// Sample index the R peak would be reported at: refined as confirmation refines it, so
    /// work keyed on it is reused when the beat is confirmed.
    pub index: u64,
    /// Index of the sample whose push first announced this peak, so consumers can see how
    /// long before confirmation they knew (`RPeak::confirmed_at - announced_at`).
    pub announced_at: u64,
}

/// What the decision rules make of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Within the refractory period of the last beat: ignored altogether.
    Refractory,
    /// A beat.
    Beat,
    /// Not a beat: it counts as noise and may serve searchback.
    Noise,
}

/// A peak of the integrated signal waiting for a decision.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index of the integrated-signal maximum: the (filter-delayed) time base of all decisions.
    mwi_index: u64,
    /// Height of the integrated-signal maximum.
    height: f64,
    /// Steepest band-passed slope in the QRS window, for T-wave and weak-beat discrimination.
    slope: f64,
}

/// The last accepted beat, as the decision logic needs it.
#[derive(Debug, Clone, Copy)]
struct LastBeat {
    mwi_index: u64,
    slope: f64,
    r_index: u64,
}

/// Fixed-length history of recent values with a median, for levels, slopes and RR intervals.
#[derive(Debug, Clone, Copy)]
struct History {
    values: [f64; HISTORY],
    len: usize,
    next: usize,
}

impl History {
    fn new() -> History {
        History {
            values: [0.0; HISTORY],
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, v: f64) {
        self.values[self.next] = v;
        self.next = (self.next + 1) % HISTORY;
        self.len = (self.len + 1).min(HISTORY);
    }

    /// Multiplies every value: decays a level without forgetting the spread of the history.
    fn scale(&mut self, factor: f64) {
        self.values.iter_mut().for_each(|v| *v *= factor);
    }

    fn median(&self) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let mut v = self.values;
        let s = &mut v[..self.len];
        s.sort_unstable_by(f64::total_cmp);
        let m = self.len / 2;
        Some(if self.len % 2 == 1 {
            s[m]
        } else {
            (s[m - 1] + s[m]) / 2.0
        })
    }
}

/// Durations converted to samples at construction.
#[derive(Debug, Clone, Copy)]
struct Samples {
    mwi: u64,
    peak_timeout: u64,
    pre_blank: u64,
    refine_before: u64,
    refine_after: u64,
    baseline_margin: u64,
    max_delay: u64,
    refractory: u64,
    t_wave_window: u64,
    weak_min_interval: u64,
}

/// Streaming QRS detector: push samples one at a time, receive refined R peaks.
///
/// Amplitude-invariant (all thresholds adapt to the signal), so ADC counts and millivolts work
/// alike. Memory is allocated once in [`QrsDetector::new`]; [`QrsDetector::push`] never allocates.
#[derive(Debug, Clone)]
pub struct QrsDetector {
    fs_hz: f64,
    len: Samples,
    /// Index the next pushed sample gets.
    n: u64,
    /// First sample, subtracted from all input so the high-pass starts without a step transient
    /// (ADC data can sit thousands of counts off zero).
    offset: Option<f64>,
    /// Last finite input, substituted for NaN or infinite samples so that one glitch from the
    /// front end cannot poison the IIR states forever.
    last_finite: f64,
    high_pass: Biquad,
    low_pass: Biquad,
    prev_band: f64,
    mwi: MovingSum,
    /// Input (offset removed), searched for the true R peak.
    raw: Ring,
    /// Slope of the band-passed signal, for T-wave and weak-beat discrimination.
    slope: Ring,
    /// Work space for the baseline median, sized once so refinement never allocates.
    scratch: Vec<f32>,
    /// Running polarity of recent R peaks in [-1, 1]; positive means upward deflections.
    polarity: f32,
    // Peak finder on the integrated signal: running maximum, its index, previous value.
    pk_max: f64,
    pk_index: u64,
    pk_prev: f64,
    /// Candidate held during pre-blanking.
    pending: Option<Candidate>,
    /// Where `pending` would be confirmed, when the decision rules would accept it now.
    provisional: Option<ProvisionalPeak>,
    qrs_levels: History,
    noise_levels: History,
    qrs_slopes: History,
    rr: History,
    /// Largest candidate seen before the first beat, to seed the threshold at start-up.
    startup_max: f64,
    /// Integrated signal, for the noise floor before the first beat.
    mwi_ring: Ring,
    /// Integrated-signal index of the last beat or the last searchback, whichever is later:
    /// searchback runs once per 1.5 RR intervals without a beat.
    quiet_since: u64,
    last: Option<LastBeat>,
    /// Best sub-threshold candidate since the last beat, for searchback.
    searchback: Option<Candidate>,
}

impl QrsDetector {
    /// A detector for a stream sampled at `fs_hz` (250 to 1000 Hz, which includes MIT-BIH's 360).
    pub fn new(fs_hz: f64) -> Result<QrsDetector, EcgError> {
        if !(fs_hz.is_finite() && (MIN_FS_HZ..=MAX_FS_HZ).contains(&fs_hz)) {
            return Err(EcgError::UnsupportedRate { fs_hz });
        }
        let samples = |s: f64| (s * fs_hz).round() as u64;
        let len = Samples {
            mwi: samples(MWI_S),
            peak_timeout: samples(PEAK_TIMEOUT_S),
            pre_blank: samples(PRE_BLANK_S),
            refine_before: samples(REFINE_BEFORE_S),
            refine_after: samples(REFINE_AFTER_S),
            baseline_margin: samples(BASELINE_MARGIN_S),
            max_delay: samples(REFINE_BEFORE_S) + samples(PRE_BLANK_S),
            refractory: samples(REFRACTORY_S),
            t_wave_window: samples(T_WAVE_WINDOW_S),
            weak_min_interval: samples(WEAK_MIN_INTERVAL_S),
        };
        let ring = samples(RING_S) as usize;
        Ok(QrsDetector {
            fs_hz,
            len,
            n: 0,
            offset: None,
            last_finite: 0.0,
            high_pass: Biquad::high_pass(BAND_LOW_HZ, fs_hz),
            low_pass: Biquad::low_pass(BAND_HIGH_HZ, fs_hz),
            prev_band: 0.0,
            mwi: MovingSum::new(len.mwi as usize),
            raw: Ring::new(ring),
            slope: Ring::new(ring),
            scratch: Vec::with_capacity(ring.next_power_of_two()),
            polarity: 0.0,
            pk_max: 0.0,
            pk_index: 0,
            pk_prev: 0.0,
            pending: None,
            provisional: None,
            qrs_levels: History::new(),
            noise_levels: History::new(),
            qrs_slopes: History::new(),
            rr: History::new(),
            startup_max: 0.0,
            mwi_ring: Ring::new(ring),
            quiet_since: 0,
            last: None,
            searchback: None,
        })
    }

    /// The sampling rate this detector was built for.
    pub fn fs_hz(&self) -> f64 {
        self.fs_hz
    }

    /// Upper bound on `confirmed_at - index` for every reported beat, in samples
    /// ([`MAX_DELAY_S`] at this rate): consumers must buffer at least this much.
    pub fn max_delay_samples(&self) -> u64 {
        self.len.max_delay
    }

    /// Feeds one sample; returns a beat when one is confirmed (at most one per sample).
    pub fn push(&mut self, sample: f32) -> Option<RPeak> {
        let x = if sample.is_finite() {
            f64::from(sample)
        } else {
            self.last_finite
        };
        self.last_finite = x;
        let x = x - *self.offset.get_or_insert(x);
        let band = self.low_pass.step(self.high_pass.step(x));
        let d = band - self.prev_band;
        self.prev_band = band;
        let m = self.mwi.step(d * d);
        self.mwi_ring.push(m as f32);
        self.raw.push(x as f32);
        self.slope.push(d as f32);
        let now = self.n;
        self.n += 1;

        if let Some(c) = self.find_peak(m, now) {
            self.offer(c, now);
        } else if self.pk_max > 0.0 && self.pk_index + 1 == now {
            self.announce(now);
        }
        // Searchback only runs with no candidate held, so this push reports at most one beat.
        if let Some(beat) = self.check_searchback(now) {
            return Some(beat);
        }
        let c = self.pending?;
        // A larger peak still rising will replace the held one when it is declared, so the held
        // one is not decided now (this defers only candidates that are never reported).
        if now < c.mwi_index + self.len.pre_blank || self.pk_max > c.height {
            return None;
        }
        self.pending = None;
        self.provisional = None;
        self.decide(c, now)
    }

    /// The beat held for confirmation, or the larger peak about to take its place, if the
    /// decision rules would accept it as things stand (see [`ProvisionalPeak`]). Changes only
    /// when the integrated signal passes a maximum and when a candidate is declared, replaced
    /// or decided; `None` while no beat is in sight and while the one in sight would be
    /// rejected.
    pub fn provisional(&self) -> Option<ProvisionalPeak> {
        self.provisional
    }

    /// Flushes at end of stream: decides the candidate still held as if no more samples came.
    pub fn finish(mut self) -> Option<RPeak> {
        let now = self.n.checked_sub(1)?;
        if self.pk_max > 0.0 {
            let c = self.candidate(self.pk_max, self.pk_index);
            self.pk_max = 0.0;
            self.offer(c, now);
        }
        let c = self.pending.take()?;
        self.decide(c, now)
    }

    /// Peak finder on the integrated signal (Hamilton-Tompkins): a maximum is declared once the
    /// signal falls to half of it, or a timeout after it.
    fn find_peak(&mut self, m: f64, now: u64) -> Option<Candidate> {
        let rising = m > self.pk_prev;
        self.pk_prev = m;
        if rising && m > self.pk_max {
            self.pk_max = m;
            self.pk_index = now;
            return None;
        }
        if self.pk_max > 0.0
            && (m < self.pk_max / 2.0 || now - self.pk_index > self.len.peak_timeout)
        {
            let c = self.candidate(self.pk_max, self.pk_index);
            self.pk_max = 0.0;
            return Some(c);
        }
        None
    }

    fn candidate(&self, height: f64, mwi_index: u64) -> Candidate {
        let from = mwi_index.saturating_sub(self.len.mwi);
        let slope = (from..=mwi_index)
            .map(|i| f64::from(self.slope.at(i)).abs())
            .fold(0.0, f64::max);
        Candidate {
            mwi_index,
            height,
            slope,
        }
    }

    /// Pre-blanking: a larger peak arriving while a candidate is held replaces it. A candidate
    /// that becomes the held one is judged at once, without changing any state, for
    /// [`Self::provisional`].
    fn offer(&mut self, c: Candidate, now: u64) {
        match self.pending {
            Some(p) if p.height >= c.height => {}
            _ => {
                self.pending = Some(c);
                let p = self.predict(c, now);
                self.set_provisional(p);
            }
        }
    }

    /// On the first sample past a maximum of the integrated signal: that maximum is most
    /// likely the peak [`Self::find_peak`] will declare once the signal has fallen to half
    /// (35-95 ms on), so [`Self::provisional`] announces it now if it would take the held
    /// candidate's place. A larger maximum still to come is announced in its turn.
    fn announce(&mut self, now: u64) {
        let c = self.candidate(self.pk_max, self.pk_index);
        if self.pending.is_some_and(|p| p.height >= c.height) {
            return;
        }
        let p = self.predict(c, now);
        self.set_provisional(p);
    }

    /// Replaces the provisional peak, keeping when it was first announced if it stays put.
    fn set_provisional(&mut self, p: Option<ProvisionalPeak>) {
        self.provisional = match (self.provisional, p) {
            (Some(old), Some(new)) if old.index == new.index => Some(old),
            _ => p,
        };
    }

    /// Where `c` would be confirmed if it were decided now: the same rules and refinement as
    /// [`Self::decide`], which nothing changes until then (searchback and the other decisions
    /// wait while a candidate is held), so the prediction holds unless a larger peak replaces
    /// `c`. Two inputs do move: before the first beat the start-up noise floor, and the
    /// baseline of the refinement, which gains the samples still to come; neither moves the
    /// R peak in the common case, since the largest deviation from a baseline is the same
    /// sample whatever the baseline, unless the polarity choice flips.
    fn predict(&mut self, c: Candidate, now: u64) -> Option<ProvisionalPeak> {
        let startup_max = if self.last.is_none() {
            self.startup_max.max(c.height)
        } else {
            self.startup_max
        };
        if self.verdict(c, startup_max) != Verdict::Beat {
            return None;
        }
        let (index, _) = self.locate(c.mwi_index);
        Some(ProvisionalPeak {
            index: self.last.map_or(index, |l| index.max(l.r_index + 1)),
            announced_at: now,
        })
    }

    /// Median of the integrated signal over the held history: before the first beat, the only
    /// measure of noise there is (a QRS occupies a small part of any two seconds).
    fn noise_floor(&mut self) -> f64 {
        self.scratch.clear();
        let ring = &self.mwi_ring;
        self.scratch
            .extend((ring.oldest()..ring.next()).map(|i| ring.at(i)));
        if self.scratch.is_empty() {
            return 0.0;
        }
        let mid = self.scratch.len() / 2;
        f64::from(*self.scratch.select_nth_unstable_by(mid, f32::total_cmp).1)
    }

    /// Integrated-signal height at `fraction` of the way from the noise level to the QRS level.
    fn threshold(&self, fraction: f64) -> f64 {
        self.threshold_with(fraction, self.startup_max)
    }

    /// [`Self::threshold`] with `startup_max` standing for the largest candidate before the
    /// first beat, so a prediction can count a candidate not yet decided.
    fn threshold_with(&self, fraction: f64, startup_max: f64) -> f64 {
        let noise = self.noise_levels.median().unwrap_or(0.0);
        let qrs = self.qrs_levels.median().unwrap_or(startup_max);
        noise + fraction * (qrs - noise)
    }

    fn decide(&mut self, c: Candidate, now: u64) -> Option<RPeak> {
        if self.last.is_none() {
            self.startup_max = self.startup_max.max(c.height);
        }
        match self.verdict(c, self.startup_max) {
            Verdict::Refractory => None,
            Verdict::Beat => {
                let refined = self.refine(c.mwi_index);
                Some(self.accept(c, now, false, refined))
            }
            Verdict::Noise => {
                self.noise_levels.push(c.height);
                let since = self.last.map(|l| c.mwi_index.saturating_sub(l.mwi_index));
                if since.is_none_or(|s| s >= self.len.t_wave_window)
                    && self.searchback.is_none_or(|s| c.height > s.height)
                {
                    self.searchback = Some(c);
                }
                None
            }
        }
    }

    /// The decision rules for candidate `c`, with `startup_max` as the largest candidate before
    /// the first beat. Changes no state but the refinement's work space (the start-up noise
    /// floor is a median), so [`Self::predict`] can ask ahead of [`Self::decide`].
    fn verdict(&mut self, c: Candidate, startup_max: f64) -> Verdict {
        let since = self.last.map(|l| c.mwi_index.saturating_sub(l.mwi_index));
        if since.is_some_and(|s| s < self.len.refractory) {
            return Verdict::Refractory;
        }
        let t_wave = match (since, self.last) {
            (Some(s), Some(l)) => {
                s < self.len.t_wave_window && c.slope < T_WAVE_SLOPE_RATIO * l.slope
            }
            _ => false,
        };
        let startup_ok = self.last.is_some() || c.height >= STARTUP_SNR * self.noise_floor();
        let strong = c.height >= self.threshold_with(THRESHOLD_FRACTION, startup_max);
        let weak = c.height >= self.threshold_with(WEAK_THRESHOLD_FRACTION, startup_max)
            && self
                .qrs_slopes
                .median()
                .is_none_or(|m| c.slope >= WEAK_SLOPE_RATIO * m)
            && since.is_none_or(|s| s >= self.len.weak_min_interval);
        if !t_wave && startup_ok && (strong || weak) {
            Verdict::Beat
        } else {
            Verdict::Noise
        }
    }

    /// Searchback: once per 1.5 median RR intervals without a beat, the largest candidate since
    /// the last beat (or the last searchback) joins the QRS levels, so the threshold follows a
    /// signal whose QRS amplitude dropped (paced or ectopic beats, a lead change, an artefact
    /// taken for a beat). If it reaches half the threshold it is a beat, reported when still
    /// within the delay bound; otherwise the QRS levels decay.
    fn check_searchback(&mut self, now: u64) -> Option<RPeak> {
        if self.pending.is_some() {
            return None;
        }
        self.last?;
        // Until two beats give an RR interval, assume 60 bpm: a first "beat" that was really a
        // switch-on artefact must not leave the threshold above every later QRS for ever.
        let rr = self.rr.median().unwrap_or(self.fs_hz * DEFAULT_RR_S);
        if ((now - self.quiet_since) as f64) <= SEARCHBACK_RR_FACTOR * rr {
            return None;
        }
        self.quiet_since = now;
        let threshold = SEARCHBACK_THRESHOLD_RATIO * self.threshold(THRESHOLD_FRACTION);
        let best = self.searchback.take();
        if let Some(c) = best {
            self.qrs_levels.push(c.height);
            self.qrs_slopes.push(c.slope);
        }
        let Some(c) = best.filter(|c| c.height >= threshold) else {
            self.qrs_levels.scale(QRS_LEVEL_DECAY);
            self.qrs_slopes.scale(QRS_LEVEL_DECAY.sqrt());
            return None;
        };
        // The R peak is at least REFINE_AFTER before the integrated maximum.
        if now - c.mwi_index + self.len.refine_after > self.len.max_delay {
            return None;
        }
        let refined = self.refine(c.mwi_index);
        if now - refined.0 > self.len.max_delay {
            return None;
        }
        Some(self.accept(c, now, true, refined))
    }

    fn accept(&mut self, c: Candidate, now: u64, searchback: bool, refined: (u64, f32)) -> RPeak {
        if !searchback {
            self.qrs_levels.push(c.height);
            self.qrs_slopes.push(c.slope);
        }
        let (mut index, amplitude) = refined;
        let mut rr_samples = None;
        if let Some(l) = self.last {
            self.rr.push(c.mwi_index.saturating_sub(l.mwi_index) as f64);
            // Keeps reported beats strictly increasing even if two refinements land together.
            index = index.max(l.r_index + 1);
            rr_samples = Some(index - l.r_index);
        }
        self.last = Some(LastBeat {
            mwi_index: c.mwi_index,
            slope: c.slope,
            r_index: index,
        });
        self.quiet_since = c.mwi_index;
        self.searchback = None;
        RPeak {
            index,
            amplitude,
            rr_samples,
            confirmed_at: now,
            searchback,
        }
    }

    /// Locates the true R peak for a detection whose integrated maximum is at `mwi_index`: the
    /// largest deviation of the input from its local median in the window where the QRS must
    /// lie, preferring the polarity of recent beats. Returns the index and the signed deviation,
    /// and makes the polarity of this beat part of the recent beats'.
    fn refine(&mut self, mwi_index: u64) -> (u64, f32) {
        let pick = self.locate(mwi_index);
        let sign = if pick.1 >= 0.0 { 1.0 } else { -1.0 };
        self.polarity = (1.0 - POLARITY_MEMORY) * self.polarity + POLARITY_MEMORY * sign;
        pick
    }

    /// [`Self::refine`] without learning the polarity, so a prediction leaves it as it was.
    fn locate(&mut self, mwi_index: u64) -> (u64, f32) {
        let oldest = self.raw.oldest();
        let newest = self.raw.next().saturating_sub(1);
        let lo = mwi_index.saturating_sub(self.len.refine_before).max(oldest);
        let hi = mwi_index
            .saturating_sub(self.len.refine_after)
            .clamp(lo, newest.max(lo));
        let base_lo = lo.saturating_sub(self.len.baseline_margin).max(oldest);
        let base_hi = (hi + self.len.baseline_margin).min(newest.max(hi));
        self.scratch.clear();
        self.scratch
            .extend((base_lo..=base_hi).map(|i| self.raw.at(i)));
        let mid = self.scratch.len() / 2;
        let baseline = *self.scratch.select_nth_unstable_by(mid, f32::total_cmp).1;
        let (mut up, mut down) = ((lo, 0.0f32), (lo, 0.0f32));
        for i in lo..=hi {
            let v = self.raw.at(i) - baseline;
            if v > up.1 {
                up = (i, v);
            }
            if v < down.1 {
                down = (i, v);
            }
        }
        let (w_up, w_down) = if self.polarity >= 0.0 {
            (POLARITY_BIAS, 1.0)
        } else {
            (1.0, POLARITY_BIAS)
        };
        if up.1 * w_up >= -down.1 * w_down {
            up
        } else {
            down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecg::synth::{Beat, Rng, ecg, r_times};

    /// Runs a detector over `x` sample by sample, asserting the delay bound on every beat.
    fn run(x: &[f32], fs_hz: f64) -> Vec<RPeak> {
        let mut d = QrsDetector::new(fs_hz).unwrap();
        let bound = d.max_delay_samples();
        let mut out = Vec::new();
        for (i, &s) in x.iter().enumerate() {
            if let Some(p) = d.push(s) {
                assert_eq!(
                    p.confirmed_at, i as u64,
                    "a beat is stamped with the sample that confirmed it"
                );
                assert!(
                    p.confirmed_at - p.index <= bound,
                    "delay {} > bound {bound}",
                    p.confirmed_at - p.index
                );
                out.push(p);
            }
        }
        out.extend(d.finish());
        out
    }

    /// Matches detections to true R instants: returns (matched, false, missed, worst error s).
    fn compare(peaks: &[RPeak], truth: &[f64], fs_hz: f64) -> (usize, usize, usize, f64) {
        let mut used = vec![false; peaks.len()];
        let (mut hit, mut worst) = (0, 0.0f64);
        for &t in truth {
            let near = peaks
                .iter()
                .enumerate()
                .filter(|(i, p)| !used[*i] && (p.index as f64 / fs_hz - t).abs() < 0.15)
                .min_by(|a, b| {
                    let ea = (a.1.index as f64 / fs_hz - t).abs();
                    let eb = (b.1.index as f64 / fs_hz - t).abs();
                    ea.total_cmp(&eb)
                });
            if let Some((i, p)) = near {
                used[i] = true;
                hit += 1;
                worst = worst.max((p.index as f64 / fs_hz - t).abs());
            }
        }
        (hit, peaks.len() - hit, truth.len() - hit, worst)
    }

    #[test]
    fn rejects_unsupported_rates() {
        for fs in [
            0.0,
            100.0,
            249.9,
            1000.1,
            2000.0,
            f64::NAN,
            f64::INFINITY,
            -360.0,
        ] {
            let err = QrsDetector::new(fs).unwrap_err();
            assert!(err.to_string().contains("250 to 1000 Hz"), "{err}");
        }
        for fs in [250.0, 360.0, 500.0, 1000.0] {
            assert!(QrsDetector::new(fs).is_ok());
        }
    }

    #[test]
    fn finds_every_beat_on_the_r_peak_at_all_rates() {
        for fs in [250.0, 360.0, 500.0, 1000.0] {
            let mut rng = Rng::new(7);
            let truth = r_times(70, 0.8, 0.15, &mut rng);
            let beats = vec![Beat::default(); truth.len()];
            let x = ecg(fs, 60.0, &truth, &beats, 0.02, &mut rng);
            let peaks = run(&x, fs);
            let (hit, fp, missed, worst) = compare(&peaks, &truth, fs);
            assert_eq!((fp, missed), (0, 0), "fs {fs}: {hit} hits");
            // The R peak is exact to a sample or two of noise, far inside a video frame.
            assert!(worst <= 0.008, "fs {fs}: worst R error {worst} s");
        }
    }

    /// A minute of beats whose T waves are 90 % as tall as their R waves: the R times and
    /// the signal at `fs`.
    fn tall_t_waves(fs: f64) -> (Vec<f64>, Vec<f32>) {
        let mut rng = Rng::new(11);
        let truth = r_times(60, 0.9, 0.1, &mut rng);
        let tall_t = Beat {
            r_mv: 1.0,
            t_mv: 0.9,
            t_sigma_s: 0.04,
        };
        let x = ecg(fs, 56.0, &truth, &vec![tall_t; truth.len()], 0.02, &mut rng);
        (truth, x)
    }

    #[test]
    fn ignores_tall_t_waves() {
        let fs = 360.0;
        let (truth, x) = tall_t_waves(fs);
        let (_, fp, missed, _) = compare(&run(&x, fs), &truth, fs);
        assert_eq!((fp, missed), (0, 0));
    }

    #[test]
    fn amplitude_does_not_matter() {
        let fs = 360.0;
        let mut rng = Rng::new(3);
        let truth = r_times(40, 0.75, 0.1, &mut rng);
        let x = ecg(
            fs,
            32.0,
            &truth,
            &vec![Beat::default(); truth.len()],
            0.02,
            &mut rng,
        );
        let reference: Vec<u64> = run(&x, fs).iter().map(|p| p.index).collect();
        assert_eq!(reference.len(), truth.len());
        // ADC counts with an offset (200 units per mV around 1024) and microvolt-scale input.
        for (gain, offset) in [(200.0f32, 1024.0f32), (0.001, 0.0)] {
            let y: Vec<f32> = x.iter().map(|v| v * gain + offset).collect();
            let idx: Vec<u64> = run(&y, fs).iter().map(|p| p.index).collect();
            assert_eq!(idx, reference, "gain {gain}");
        }
    }

    #[test]
    fn inverted_lead_is_timed_on_the_negative_peak() {
        let fs = 500.0;
        let mut rng = Rng::new(5);
        let truth = r_times(40, 0.8, 0.1, &mut rng);
        let inverted = Beat {
            r_mv: -1.2,
            ..Beat::default()
        };
        let x = ecg(
            fs,
            34.0,
            &truth,
            &vec![inverted; truth.len()],
            0.02,
            &mut rng,
        );
        let peaks = run(&x, fs);
        let (_, fp, missed, worst) = compare(&peaks, &truth, fs);
        assert_eq!((fp, missed), (0, 0));
        assert!(worst <= 0.008, "worst {worst}");
        assert!(
            peaks.iter().all(|p| p.amplitude < -0.8),
            "amplitudes are signed deviations"
        );
    }

    #[test]
    fn follows_a_sudden_drop_in_qrs_amplitude() {
        // A lead change or paced rhythm: QRS falls to a quarter. Searchback must pull the
        // threshold down within a few beats and keep it there.
        let fs = 360.0;
        let mut rng = Rng::new(13);
        let truth = r_times(80, 0.8, 0.05, &mut rng);
        let beats: Vec<Beat> = (0..truth.len())
            .map(|i| {
                if i < 30 {
                    Beat::default()
                } else {
                    Beat {
                        r_mv: 0.25,
                        t_mv: 0.08,
                        t_sigma_s: 0.045,
                    }
                }
            })
            .collect();
        let x = ecg(fs, 66.0, &truth, &beats, 0.01, &mut rng);
        let peaks = run(&x, fs);
        let (_, fp, missed, _) = compare(&peaks, &truth, fs);
        assert_eq!(fp, 0);
        assert!(missed <= 6, "missed {missed} beats after the drop");
        let last_forty = &truth[truth.len() - 40..];
        assert_eq!(compare(&peaks, last_forty, fs).0, 40, "detection recovered");
    }

    #[test]
    fn recovers_from_an_artefact_taken_for_the_first_beat() {
        // An electrode pop at switch-on, far larger than any QRS, becomes beat one; searchback
        // must bring the threshold it set down to the real beats within seconds.
        let fs = 500.0;
        let mut rng = Rng::new(31);
        let truth = r_times(40, 0.8, 0.05, &mut rng);
        let mut x = ecg(
            fs,
            33.0,
            &truth,
            &vec![Beat::default(); truth.len()],
            0.02,
            &mut rng,
        );
        for v in &mut x[100..140] {
            *v += 20.0;
        }
        let peaks = run(&x, fs);
        let late: Vec<f64> = truth.iter().copied().filter(|&t| t > 5.0).collect();
        let (hit, _, _, _) = compare(&peaks, &late, fs);
        assert_eq!(hit, late.len(), "every beat after the first 5 s is found");
        let early_false = peaks
            .iter()
            .filter(|p| compare(&[**p], &truth, fs).1 == 1)
            .count();
        assert_eq!(early_false, 1, "only the artefact itself is a false beat");
    }

    #[test]
    fn a_pause_of_a_few_seconds_gives_no_false_beats() {
        // Sinus arrest: searchback finds nothing in the gap and must not lower the threshold
        // into the noise before the rhythm resumes.
        let fs = 360.0;
        let mut rng = Rng::new(37);
        let mut truth = r_times(20, 0.8, 0.05, &mut rng);
        let resume = truth[19] + 3.5;
        truth.extend(
            r_times(20, 0.8, 0.05, &mut rng)
                .iter()
                .map(|t| t - 0.6 + resume),
        );
        let x = ecg(
            fs,
            resume + 16.5,
            &truth,
            &vec![Beat::default(); truth.len()],
            0.03,
            &mut rng,
        );
        let (_, fp, missed, _) = compare(&run(&x, fs), &truth, fs);
        assert_eq!((fp, missed), (0, 0));
    }

    #[test]
    fn reports_rr_intervals_between_reported_peaks() {
        let fs = 250.0;
        let mut rng = Rng::new(17);
        let truth = r_times(20, 1.0, 0.2, &mut rng);
        let x = ecg(
            fs,
            21.0,
            &truth,
            &vec![Beat::default(); truth.len()],
            0.02,
            &mut rng,
        );
        let peaks = run(&x, fs);
        assert_eq!(peaks.len(), truth.len());
        assert_eq!(peaks[0].rr_samples, None);
        for w in peaks.windows(2) {
            assert_eq!(w[1].rr_samples, Some(w[1].index - w[0].index));
        }
    }

    #[test]
    fn flat_input_gives_no_beats() {
        assert!(run(&vec![0.0; 20_000], 500.0).is_empty());
        assert!(run(&vec![-512.0; 20_000], 500.0).is_empty());
    }

    #[test]
    fn survives_non_finite_samples() {
        let fs = 360.0;
        let mut rng = Rng::new(19);
        let truth = r_times(30, 0.8, 0.1, &mut rng);
        let mut x = ecg(
            fs,
            25.0,
            &truth,
            &vec![Beat::default(); truth.len()],
            0.02,
            &mut rng,
        );
        for i in [3000, 3001, 5000] {
            x[i] = f32::NAN;
        }
        x[7000] = f32::INFINITY;
        let (_, fp, missed, _) = compare(&run(&x, fs), &truth, fs);
        assert_eq!((fp, missed), (0, 0));
    }

    #[test]
    fn finish_flushes_the_last_beat() {
        let fs = 360.0;
        let mut rng = Rng::new(23);
        let truth = r_times(12, 0.8, 0.0, &mut rng);
        let last = *truth.last().unwrap();
        // Stop 100 ms after the last R: too early for push to confirm it.
        let x = ecg(
            fs,
            last + 0.1,
            &truth,
            &vec![Beat::default(); truth.len()],
            0.02,
            &mut rng,
        );
        let mut d = QrsDetector::new(fs).unwrap();
        let pushed: Vec<RPeak> = x.iter().filter_map(|&s| d.push(s)).collect();
        assert_eq!(pushed.len(), truth.len() - 1);
        let flushed = d.finish().expect("the last beat is still held");
        assert!((flushed.index as f64 / fs - last).abs() < 0.01);
    }

    /// Runs a detector over `x` asking for the provisional peak after every sample; returns
    /// the confirmed beats and, per beat, the provisional peak held on the sample before it
    /// was confirmed.
    fn run_provisional(x: &[f32], fs_hz: f64) -> Vec<(RPeak, Option<ProvisionalPeak>)> {
        let mut d = QrsDetector::new(fs_hz).unwrap();
        let mut held = None;
        let mut out = Vec::new();
        for &s in x {
            if let Some(p) = d.push(s) {
                out.push((p, held));
            }
            held = d.provisional();
        }
        out
    }

    #[test]
    fn every_beat_is_provisional_first_at_the_index_it_is_confirmed_at() {
        for fs in [250.0, 360.0, 1000.0] {
            let mut rng = Rng::new(41);
            let truth = r_times(60, 0.85, 0.15, &mut rng);
            let beats = vec![Beat::default(); truth.len()];
            let x = ecg(fs, 53.0, &truth, &beats, 0.02, &mut rng);
            let reference: Vec<RPeak> = run(&x, fs);
            let with = run_provisional(&x, fs);
            // Asking changes nothing: the same beats, confirmed on the same samples.
            let confirmed: Vec<RPeak> = with.iter().map(|(p, _)| *p).collect();
            assert_eq!(confirmed, reference[..confirmed.len()]);
            // finish() flushes at most the one beat still held.
            assert!(reference.len() - confirmed.len() <= 1);
            for (p, held) in &with {
                let held = held.unwrap_or_else(|| panic!("fs {fs}: {p:?} came unannounced"));
                assert_eq!(held.index, p.index, "fs {fs}: {p:?}");
                // Known at least a tenth of a second before the confirmation.
                assert!(
                    (p.confirmed_at - held.announced_at) as f64 >= 0.1 * fs,
                    "fs {fs}: announced at {}, confirmed at {}",
                    held.announced_at,
                    p.confirmed_at
                );
            }
        }
    }

    #[test]
    fn nothing_is_provisional_before_a_beat_or_on_flat_input() {
        let mut d = QrsDetector::new(500.0).unwrap();
        assert_eq!(d.provisional(), None);
        for _ in 0..10_000 {
            d.push(0.0);
            assert_eq!(d.provisional(), None);
        }
    }

    #[test]
    fn a_t_wave_candidate_is_never_provisional() {
        // Tall T waves are candidates the rules reject: they must not be announced either.
        let fs = 360.0;
        let (_, x) = tall_t_waves(fs);
        let confirmed: Vec<u64> = run(&x, fs).iter().map(|p| p.index).collect();
        let mut d = QrsDetector::new(fs).unwrap();
        // From the first beat on: before it the start-up rules are still learning the levels.
        let mut announced = vec![confirmed[0]];
        for &s in &x {
            d.push(s);
            if let Some(p) = d.provisional()
                && p.index > confirmed[0]
                && announced.last() != Some(&p.index)
            {
                announced.push(p.index);
            }
        }
        assert_eq!(announced[..confirmed.len()], confirmed[..]);
        assert!(announced.len() <= confirmed.len() + 1, "{announced:?}");
    }

    #[test]
    fn delay_bound_is_400_ms() {
        assert!((MAX_DELAY_S - 0.4).abs() < 1e-9);
        for fs in [250.0, 360.0, 1000.0] {
            let d = QrsDetector::new(fs).unwrap();
            assert_eq!(d.max_delay_samples(), (0.4 * fs).round() as u64);
        }
    }
}
