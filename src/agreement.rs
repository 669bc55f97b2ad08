//! Agreement between two sets of beat boundaries: image-derived gating against ECG gating.
//!
//! Image gating finds end-diastole, which follows the R-wave by a roughly constant
//! electromechanical delay, so the two are compared after removing one constant offset: the
//! median of the differences between each image boundary and its nearest R-peak. Then each
//! R-peak is matched to at most one image boundary within a tolerance, in time order; what
//! is left over on either side counts as missed or extra.

/// How well a set of boundaries agrees with the reference R-peaks.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// The constant offset removed (image minus reference), milliseconds.
    pub offset_ms: f64,
    /// Median absolute time error of matched boundaries after the offset, milliseconds.
    pub median_ms: f64,
    /// 90th percentile of the same, milliseconds.
    pub p90_ms: f64,
    /// Reference R-peaks considered (those inside the compared span).
    pub reference: usize,
    /// Of those, matched by an image boundary.
    pub matched: usize,
    /// Image boundaries matching no R-peak.
    pub extra: usize,
}

impl Agreement {
    /// Fraction of reference R-peaks matched (1 when there are none).
    pub fn matched_fraction(&self) -> f64 {
        if self.reference == 0 {
            1.0
        } else {
            self.matched as f64 / self.reference as f64
        }
    }
}

/// Compares `found` with `reference` (both ascending, ns), counting only reference R-peaks
/// within `span` (the stretch the finder saw), matching within `tolerance_ns` after the
/// constant offset. `None` when either set is empty.
pub fn compare(
    found: &[u64],
    reference: &[u64],
    span: (u64, u64),
    tolerance_ns: u64,
) -> Option<Agreement> {
    let reference: Vec<u64> = reference
        .iter()
        .copied()
        .filter(|&r| r >= span.0 && r <= span.1)
        .collect();
    if found.is_empty() || reference.is_empty() {
        return None;
    }
    let nearest = |t: i128| {
        reference
            .iter()
            .map(|&r| t - r as i128)
            .min_by_key(|d| d.abs())
            .unwrap_or(0)
    };
    let mut diffs: Vec<i128> = found.iter().map(|&b| nearest(b as i128)).collect();
    diffs.sort_unstable();
    let offset = diffs[diffs.len() / 2];

    // Greedy one-to-one matching in time order: both lists ascend, so a two-pointer walk
    // pairs each R-peak with the first unused boundary within tolerance.
    let shifted: Vec<i128> = found.iter().map(|&b| b as i128 - offset).collect();
    let tol = i128::from(tolerance_ns);
    let (mut i, mut errors) = (0usize, Vec::new());
    for &r in &reference {
        let r = r as i128;
        while i < shifted.len() && shifted[i] < r - tol {
            i += 1;
        }
        if i < shifted.len() && (shifted[i] - r).abs() <= tol {
            errors.push((shifted[i] - r).unsigned_abs() as f64 / 1e6);
            i += 1;
        }
    }
    let matched = errors.len();
    errors.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        if errors.is_empty() {
            f64::NAN
        } else {
            errors[((errors.len() - 1) as f64 * q).round() as usize]
        }
    };
    let in_span = found
        .iter()
        .filter(|&&b| {
            let b = b as i128 - offset;
            b >= span.0 as i128 - tol && b <= span.1 as i128 + tol
        })
        .count();
    Some(Agreement {
        offset_ms: offset as f64 / 1e6,
        median_ms: quantile(0.5),
        p90_ms: quantile(0.9),
        reference: reference.len(),
        matched,
        extra: in_span.saturating_sub(matched),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn removes_the_offset_and_counts_misses_and_extras() {
        let reference: Vec<u64> = (1..=10).map(|k| k * 800 * MS).collect();
        // Every boundary 50 ms late, give or take 0/10/20 ms; beat 5 missed; one extra.
        let mut found: Vec<u64> = (1..=10)
            .filter(|&k| k != 5)
            .map(|k| k * 800 * MS + 50 * MS + (k % 3) * 10 * MS)
            .collect();
        found.push(4_400 * MS);
        found.sort_unstable();
        let a = compare(&found, &reference, (0, 9_000 * MS), 150 * MS).unwrap();
        // Offsets 60, 70, 50, 70 (k=4), 60, 50, 70, 60, 50 and the extra's -400: median 60.
        assert_eq!(a.offset_ms, 60.0);
        assert_eq!((a.reference, a.matched, a.extra), (10, 9, 1));
        assert_eq!(a.median_ms, 10.0);
        assert_eq!(a.p90_ms, 10.0);
        assert!((a.matched_fraction() - 0.9).abs() < 1e-12);
    }

    #[test]
    fn reference_outside_the_span_is_not_counted() {
        let reference = [100 * MS, 1_000 * MS, 2_000 * MS];
        let a = compare(&[1_000 * MS], &reference, (500 * MS, 1_500 * MS), 100 * MS).unwrap();
        assert_eq!(
            (a.reference, a.matched, a.extra, a.median_ms),
            (1, 1, 0, 0.0)
        );
        assert!(compare(&[], &reference, (0, u64::MAX), 1).is_none());
    }
}
