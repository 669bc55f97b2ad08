//! Beat-by-beat scoring of a detector against reference annotations (ANSI/AAMI EC57 style).
//!
//! A detection within `window_s` (EC57: 150 ms) of a reference beat is a true positive; each
//! reference and each detection is matched at most once; unmatched references are false
//! negatives and unmatched detections false positives. Nothing is excluded (no learning period,
//! no edge trimming): the figures are for the whole signal as given, which is the stricter choice.
//! Scores add, so per-record results pool into gross statistics.

use std::ops::{Add, AddAssign};

use super::EcgError;

/// The EC57 match window: detections up to 150 ms from a reference beat count as hits.
pub const EC57_WINDOW_S: f64 = 0.150;

/// Beat-detection counts and timing error, poolable across records with `+`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// Reference beats matched by a detection (true positives).
    pub tp: u64,
    /// Detections that matched no reference beat (false positives).
    pub fp: u64,
    /// Reference beats no detection matched (false negatives); `fn` is a keyword.
    pub fn_: u64,
    /// Sum over matched pairs of |detection - reference| in milliseconds; kept as a sum (not a
    /// mean) so that pooling weights every beat equally.
    pub total_abs_error_ms: f64,
}

impl Score {
    /// Sensitivity TP / (TP + FN): the share of real beats found (1.0 when there were none).
    pub fn sensitivity(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Positive predictivity TP / (TP + FP): the share of detections that are real beats
    /// (1.0 when nothing was detected).
    pub fn ppv(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Mean |detection - reference| over matched beats in milliseconds (0 when none matched):
    /// the R-peak timing accuracy that gating depends on.
    pub fn mean_abs_error_ms(&self) -> f64 {
        if self.tp == 0 {
            0.0
        } else {
            self.total_abs_error_ms / self.tp as f64
        }
    }

    /// Number of reference beats scored against.
    pub fn reference_beats(&self) -> u64 {
        self.tp + self.fn_
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

impl Add for Score {
    type Output = Score;
    fn add(self, rhs: Score) -> Score {
        Score {
            tp: self.tp + rhs.tp,
            fp: self.fp + rhs.fp,
            fn_: self.fn_ + rhs.fn_,
            total_abs_error_ms: self.total_abs_error_ms + rhs.total_abs_error_ms,
        }
    }
}

impl AddAssign for Score {
    fn add_assign(&mut self, rhs: Score) {
        *self = *self + rhs;
    }
}

impl std::iter::Sum for Score {
    fn sum<I: Iterator<Item = Score>>(iter: I) -> Score {
        iter.fold(Score::default(), Add::add)
    }
}

/// Scores `detected` sample indices against `reference` sample indices at rate `fs_hz`.
///
/// Inputs need not be sorted (copies are sorted). Each reference takes the nearest still
/// unmatched detection within the window; scanning both lists in time order makes this greedy
/// match the same as EC57's for beats more than two windows apart, which is every physiological
/// rhythm at 150 ms.
pub fn score(
    reference: &[u64],
    detected: &[u64],
    fs_hz: f64,
    window_s: f64,
) -> Result<Score, EcgError> {
    if !(fs_hz.is_finite() && fs_hz > 0.0) {
        return Err(EcgError::InvalidScoring {
            what: format!("sampling rate {fs_hz} Hz; pass the positive rate of the record"),
        });
    }
    if !(window_s.is_finite() && window_s > 0.0) {
        return Err(EcgError::InvalidScoring {
            what: format!("match window {window_s} s; pass a positive window (EC57 uses 0.150 s)"),
        });
    }
    let mut refs = reference.to_vec();
    refs.sort_unstable();
    let mut dets = detected.to_vec();
    dets.sort_unstable();
    let window = (window_s * fs_hz).round() as u64;
    let mut used = vec![false; dets.len()];
    let mut s = Score::default();
    // First detection that may still match the current or a later reference.
    let mut lo = 0;
    for &r in &refs {
        while lo < dets.len() && dets[lo] + window < r {
            lo += 1;
        }
        let mut best: Option<(usize, u64)> = None;
        let mut j = lo;
        while j < dets.len() && dets[j] <= r + window {
            if !used[j] {
                let err = dets[j].abs_diff(r);
                if best.is_none_or(|(_, e)| err < e) {
                    best = Some((j, err));
                }
            }
            j += 1;
        }
        match best {
            Some((j, err)) => {
                used[j] = true;
                s.tp += 1;
                s.total_abs_error_ms += err as f64 * 1000.0 / fs_hz;
            }
            None => s.fn_ += 1,
        }
    }
    s.fp = used.iter().filter(|u| !**u).count() as u64;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hits_misses_and_false_detections() {
        // 100 Hz: the 150 ms window is 15 samples.
        let reference = [100, 200, 300, 400];
        let detected = [102, 214, 330, 395, 500];
        let s = score(&reference, &detected, 100.0, EC57_WINDOW_S).unwrap();
        // 330 is 30 samples from 300: outside the window, so 300 is missed and 330 is false.
        assert_eq!((s.tp, s.fp, s.fn_), (3, 2, 1));
        assert!((s.mean_abs_error_ms() - (20.0 + 140.0 + 50.0) / 3.0).abs() < 1e-9);
        assert!((s.sensitivity() - 0.75).abs() < 1e-12);
        assert!((s.ppv() - 0.6).abs() < 1e-12);
        assert_eq!(s.reference_beats(), 4);
    }

    #[test]
    fn window_edge_is_inclusive_and_each_beat_matches_once() {
        let s = score(&[100], &[115], 100.0, 0.150).unwrap();
        assert_eq!((s.tp, s.fp, s.fn_), (1, 0, 0));
        let s = score(&[100], &[116], 100.0, 0.150).unwrap();
        assert_eq!((s.tp, s.fp, s.fn_), (0, 1, 1));
        // Two detections on one beat: one hit, one false positive.
        let s = score(&[100], &[99, 103], 100.0, 0.150).unwrap();
        assert_eq!((s.tp, s.fp, s.fn_), (1, 1, 0));
        assert!(
            (s.mean_abs_error_ms() - 10.0).abs() < 1e-9,
            "the nearer one is matched"
        );
        // One detection between two close beats matches only one of them.
        let s = score(&[100, 120], &[110], 100.0, 0.150).unwrap();
        assert_eq!((s.tp, s.fp, s.fn_), (1, 0, 1));
    }

    #[test]
    fn unsorted_input_is_accepted() {
        let a = score(&[300, 100, 200], &[201, 99, 305], 360.0, EC57_WINDOW_S).unwrap();
        let b = score(&[100, 200, 300], &[99, 201, 305], 360.0, EC57_WINDOW_S).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn scores_pool_by_addition() {
        let a = score(&[100, 200], &[101, 260], 100.0, EC57_WINDOW_S).unwrap();
        let b = score(&[100], &[110], 100.0, EC57_WINDOW_S).unwrap();
        let pooled: Score = [a, b].into_iter().sum();
        assert_eq!(pooled, a + b);
        assert_eq!((pooled.tp, pooled.fp, pooled.fn_), (2, 1, 1));
        assert!(
            (pooled.mean_abs_error_ms() - 55.0).abs() < 1e-9,
            "(10 + 100) / 2 beats"
        );
        let mut c = a;
        c += b;
        assert_eq!(c, pooled);
    }

    #[test]
    fn empty_lists_have_defined_ratios() {
        let s = score(&[], &[], 360.0, EC57_WINDOW_S).unwrap();
        assert_eq!(
            (s.sensitivity(), s.ppv(), s.mean_abs_error_ms()),
            (1.0, 1.0, 0.0)
        );
        let s = score(&[5, 500], &[], 360.0, EC57_WINDOW_S).unwrap();
        assert_eq!((s.fn_, s.sensitivity()), (2, 0.0));
    }

    #[test]
    fn rejects_meaningless_parameters() {
        for (fs, w) in [
            (0.0, 0.15),
            (-1.0, 0.15),
            (f64::NAN, 0.15),
            (360.0, 0.0),
            (360.0, f64::INFINITY),
        ] {
            let err = score(&[1], &[1], fs, w).unwrap_err();
            assert!(matches!(err, EcgError::InvalidScoring { .. }), "{err}");
        }
    }
}
