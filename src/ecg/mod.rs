//! ECG: streaming QRS detection with refined R peaks, signal quality, scoring and file input.
//!
//! Gating cuts the echo video into heartbeats from one R peak to the next, so this module must
//! find every R peak, place it on the true R wave, and do so live, sample by sample, with a
//! known worst-case delay.
//!
//! # QRS detection ([`QrsDetector`])
//!
//! A Pan-Tompkins / Hamilton-Tompkins detector, entirely causal:
//!
//! 1. **Filtering.** A 5-15 Hz band-pass (two Butterworth biquads designed for the actual
//!    rate), a first difference, squaring and a 150 ms moving-window integration turn each QRS
//!    into one smooth hump while P and T waves, baseline wander and mains hum shrink.
//! 2. **Candidates.** Maxima of the integrated signal are held for 220 ms (pre-blanking): a
//!    larger peak inside that time (the QRS after a tall P wave, a beat after a noise spike)
//!    replaces the held one, and so does one still rising when the time is up.
//! 3. **Adaptive thresholds.** A candidate is a beat when it reaches 0.3125 of the way from the
//!    noise level to the QRS level, each the median of the last eight peak heights of its
//!    kind. Medians, not running means, so one artefact cannot lift the threshold over the next
//!    beats. Because only ratios of heights matter, the detector is amplitude-invariant: ADC
//!    counts and millivolts give the same beats. A candidate between 0.2 and 0.3125 is still a
//!    beat when its slope is QRS-like (at least 0.4 of the recent median) and it is 400 ms or
//!    more after the previous beat: small ectopic beats would otherwise need searchback, which
//!    the delay bound rarely leaves time for. Before the first beat there are no levels: the
//!    first beat must stand five times above the median of the integrated signal (so a noise
//!    bump at switch-on is not beat one) and is compared with the largest candidate so far.
//! 4. **Refractory period and T waves.** Nothing within 200 ms of a beat is a beat; within
//!    360 ms a candidate whose steepest band-passed slope is under half that of the previous
//!    QRS is a T wave (T waves are slow, the QRS is steep) and counts as noise.
//! 5. **Searchback.** When 1.5 median RR intervals pass without a beat, a beat was probably
//!    missed: its amplitude dropped below a threshold learnt from earlier beats (an ectopic or
//!    paced beat, a change of electrical axis, a noisy stretch). The largest candidate since the
//!    last beat is accepted if it reaches half the threshold; either way its height joins the
//!    QRS levels, and if nothing reached half the threshold the levels are halved. Without this
//!    the threshold, fed only by accepted beats, would never come down after an amplitude drop
//!    (or after an artefact taken for a beat) and detection would stop for good. A beat found
//!    this way is usually known to be missing only half an RR interval after it happened, so
//!    within the delay bound searchback mostly re-teaches the threshold rather than reports;
//!    the slope-qualified lower threshold of step 3 catches most such beats in time.
//! 6. **R-peak refinement.** The filters and the integration window delay the detection by
//!    85-145 ms, by an amount that varies with QRS width and shape, so the integrated maximum
//!    is not where R is. Gating needs the R instant itself (a 30 ms error is a video frame), so
//!    the detector searches the unfiltered input from 180 ms to 20 ms before the integrated
//!    maximum for the largest deviation from the local baseline (median of the window plus
//!    100 ms each side, which reaches the PR and ST segments). It keeps to the polarity of
//!    recent beats unless the opposite deflection is twice as large: in a biphasic QRS with R and
//!    S of similar size, switching between them from beat to beat would jitter the timing by
//!    the R-S distance.
//!
//! A beat is reported 220 ms after its integrated maximum, which is at most 180 ms after the R
//! peak, so every beat is confirmed within [`MAX_DELAY_S`] (400 ms) of its R peak; searchback
//! beats that would arrive later are not reported, though they still adapt the threshold.
//!
//! A beat in sight is announced before it is confirmed: [`QrsDetector::provisional`] says
//! where the maximum the integrated signal has just passed, and then the candidate held for
//! it, would be confirmed (the same decision rules and refinement, run ahead without changing
//! any state), so a consumer can start on a beat at least 120 ms, and typically 220-290 ms,
//! before it is confirmed. On the six records below, from the first beat on, 13065 of the
//! 13071 beats were announced at the very index they were then confirmed at; 0.16
//! announcements per beat were not confirmed (mostly an early maximum on the rise of the QRS,
//! a median 11-61 ms from the beat), and the confirmed beats are exactly those of the
//! detector without announcements (`tests/ecg_mitbih.rs`).
//!
//! Measured on six full MIT-BIH records (100, 102, 104, 105, 106, 108; 13051 beats; EC57 rule,
//! 150 ms window), pooled: sensitivity 0.9972, positive predictivity 0.9954, mean R-peak timing
//! error 3.97 ms (test `tests/ecg_mitbih.rs`). Resampled to 250, 500 and 1000 Hz: sensitivity
//! 0.9972, predictivity 0.9952-0.9959, error 3.96-4.19 ms; scaled to millivolts: the same
//! counts. It runs tens of thousands of times faster than real time.
//!
//! # Signal quality ([`QualityMonitor`])
//!
//! Flags one-second windows as flat, saturated, lead-off or noisy so that gating can skip beats
//! in bad ECG; see [`quality`].
//!
//! # Offline use
//!
//! [`read_samples`] reads a whole file (raw int16 or CSV, checking that the file really has the
//! format asked for), [`detect_all`] runs the detector over it, and [`score()`] compares
//! detections with reference annotations the EC57 way.

mod error;
mod filter;
pub mod qrs;
pub mod quality;
pub mod record;
pub mod score;
#[cfg(test)]
pub(crate) mod synth;

pub use error::EcgError;
pub use qrs::{MAX_DELAY_S, ProvisionalPeak, QrsDetector, RPeak};
pub use quality::{QualityFlags, QualityMonitor, QualitySpan};
pub use record::{SampleFormat, detect_all, read_samples};
pub use score::{EC57_WINDOW_S, Score, score};
