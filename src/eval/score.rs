//! Scoring a labelled set: the confusion matrix of true views against published labels, and
//! what follows from it. Pure arithmetic, no I/O.
//!
//! A label of `unknown` is an abstention: it counts against accuracy and recall (the beat was
//! not labelled correctly) but not against any view's precision (no view was claimed).
//! Micro precision is therefore correct labels over labels that named a view, micro recall
//! correct labels over all scored items, and micro F1 their harmonic mean; without
//! abstentions all three equal accuracy. Macro F1 is the mean of the per-view F1 over the views
//! that occur in the truth or in the labels, so a view the set never shows neither helps nor
//! hurts.

use serde::Serialize;

use crate::views::View;

/// Counts of (true view, published label) pairs; the label `None` is `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// `counts[t][p]`: items of true view `View::ALL[t]` labelled `View::ALL[p]`, with
    /// `p == View::ALL.len()` for `unknown`.
    pub counts: Vec<Vec<u64>>,
}

impl Default for Confusion {
    fn default() -> Confusion {
        Confusion {
            counts: vec![vec![0; View::ALL.len() + 1]; View::ALL.len()],
        }
    }
}

/// Precision, recall and F1 of one view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// The view.
    pub view: &'static str,
    /// Items truly showing it.
    pub support: u64,
    /// Items labelled with it.
    pub predicted: u64,
    /// Correct over labelled with it (0 when never labelled).
    pub precision: f64,
    /// Correct over truly showing it (0 when never shown).
    pub recall: f64,
    /// Harmonic mean of the two (0 when both are 0).
    pub f1: f64,
}

/// Everything reported for one confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Items scored.
    pub total: u64,
    /// Labelled with their true view.
    pub correct: u64,
    /// Labelled `unknown`.
    pub unknown: u64,
    /// `correct / total`.
    pub accuracy: f64,
    /// Correct over items labelled with a view.
    pub micro_precision: f64,
    /// Correct over all items (equals accuracy).
    pub micro_recall: f64,
    /// Harmonic mean of micro precision and recall.
    pub micro_f1: f64,
    /// Mean per-view F1 over the views present in truth or labels.
    pub macro_f1: f64,
    /// Per view, in canonical order, only the views present in truth or labels.
    pub per_class: Vec<ClassScores>,
}

/// `a / b`, or 0 when `b` is 0.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Harmonic mean, 0 when both are 0.
fn harmonic(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

impl Confusion {
    /// Counts one item of true view `truth` labelled `label` (`None`: unknown).
    pub fn add(&mut self, truth: View, label: Option<View>) {
        let p = label.map_or(View::ALL.len(), View::index);
        self.counts[truth.index()][p] += 1;
    }

    /// The scores this matrix gives.
    pub fn scores(&self) -> Scores {
        let n = View::ALL.len();
        let total: u64 = self.counts.iter().flatten().sum();
        let correct: u64 = (0..n).map(|i| self.counts[i][i]).sum();
        let unknown: u64 = self.counts.iter().map(|row| row[n]).sum();
        let micro_precision = ratio(correct, total - unknown);
        let micro_recall = ratio(correct, total);
        let per_class: Vec<ClassScores> = View::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, view)| {
                let support: u64 = self.counts[i].iter().sum();
                let predicted: u64 = self.counts.iter().map(|row| row[i]).sum();
                if support == 0 && predicted == 0 {
                    return None;
                }
                let precision = ratio(self.counts[i][i], predicted);
                let recall = ratio(self.counts[i][i], support);
                Some(ClassScores {
                    view: view.name(),
                    support,
                    predicted,
                    precision,
                    recall,
                    f1: harmonic(precision, recall),
                })
            })
            .collect();
        let macro_f1 = if per_class.is_empty() {
            0.0
        } else {
            per_class.iter().map(|c| c.f1).sum::<f64>() / per_class.len() as f64
        };
        Scores {
            total,
            correct,
            unknown,
            accuracy: micro_recall,
            micro_precision,
            micro_recall,
            micro_f1: harmonic(micro_precision, micro_recall),
            macro_f1,
            per_class,
        }
    }
}

/// The view with the highest mean probability over a session's beats, `probs` per beat in
/// `labels` order; `None` without beats. The mean rather than a vote, so a session of
/// confident beats outweighs a few hesitant ones; ties go to the earlier label.
pub fn session_label(labels: &[View], probs: &[Vec<f32>]) -> Option<View> {
    if probs.is_empty() {
        return None;
    }
    let mut mean = vec![0f64; labels.len()];
    for beat in probs {
        for (m, &p) in mean.iter_mut().zip(beat) {
            *m += f64::from(p);
        }
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, &m) in mean.iter().enumerate() {
        if best.is_none_or(|(_, b)| m > b) {
            best = Some((i, m));
        }
    }
    best.map(|(i, _)| labels[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use View::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn scores_a_hand_computed_matrix() {
        // Truth PLAX x4: PLAX, PLAX, PLAX, A4C. Truth A4C x3: A4C, A4C, unknown.
        // Truth A2C x2: A4C, A2C.
        let mut c = Confusion::default();
        for (t, p) in [
            (Plax, Some(Plax)),
            (Plax, Some(Plax)),
            (Plax, Some(Plax)),
            (Plax, Some(A4c)),
            (A4c, Some(A4c)),
            (A4c, Some(A4c)),
            (A4c, None),
            (A2c, Some(A4c)),
            (A2c, Some(A2c)),
        ] {
            c.add(t, p);
        }
        let s = c.scores();
        assert_eq!((s.total, s.correct, s.unknown), (9, 6, 1));
        assert!(close(s.accuracy, 6.0 / 9.0));
        assert!(close(s.micro_precision, 6.0 / 8.0));
        assert!(close(s.micro_recall, 6.0 / 9.0));
        // 2 * (3/4) * (2/3) / (3/4 + 2/3) = 1 / (17/12) = 12/17.
        assert!(close(s.micro_f1, 12.0 / 17.0));
        let names: Vec<&str> = s.per_class.iter().map(|c| c.view).collect();
        assert_eq!(names, ["PLAX", "A2C", "A4C"]);
        // PLAX: P 3/3, R 3/4, F1 6/7. A2C: P 1/1, R 1/2, F1 2/3. A4C: P 2/4, R 2/3, F1 4/7.
        let plax = &s.per_class[0];
        assert_eq!((plax.support, plax.predicted), (4, 3));
        assert!(close(plax.precision, 1.0) && close(plax.recall, 0.75));
        assert!(close(plax.f1, 6.0 / 7.0));
        assert!(close(s.per_class[1].f1, 2.0 / 3.0));
        let a4c = &s.per_class[2];
        assert!(close(a4c.precision, 0.5) && close(a4c.recall, 2.0 / 3.0));
        assert!(close(a4c.f1, 4.0 / 7.0));
        assert!(close(s.macro_f1, (6.0 / 7.0 + 2.0 / 3.0 + 4.0 / 7.0) / 3.0));
    }

    #[test]
    fn a_perfect_set_and_an_empty_one() {
        let mut c = Confusion::default();
        c.add(Subcostal, Some(Subcostal));
        c.add(A5c, Some(A5c));
        let s = c.scores();
        assert!(close(s.accuracy, 1.0) && close(s.micro_f1, 1.0) && close(s.macro_f1, 1.0));
        let empty = Confusion::default().scores();
        assert_eq!((empty.total, empty.accuracy, empty.macro_f1), (0, 0.0, 0.0));
        assert!(empty.per_class.is_empty());
    }

    #[test]
    fn a_view_only_predicted_counts_in_macro_f1() {
        // One PLAX beat labelled A3C: PLAX F1 0, A3C F1 0 (precision 0), macro 0.
        let mut c = Confusion::default();
        c.add(Plax, Some(A3c));
        let s = c.scores();
        assert_eq!(s.per_class.len(), 2);
        assert_eq!(s.macro_f1, 0.0);
        assert_eq!(s.per_class[1].predicted, 1);
    }

    #[test]
    fn session_label_is_the_highest_mean_probability() {
        let labels = [Plax, A4c, A2c];
        // Two hesitant A4C votes lose to one confident PLAX beat on the mean.
        let probs = vec![
            vec![0.9, 0.05, 0.05],
            vec![0.3, 0.4, 0.3],
            vec![0.3, 0.4, 0.3],
        ];
        assert_eq!(session_label(&labels, &probs), Some(Plax));
        assert_eq!(session_label(&labels, &[]), None);
        assert_eq!(session_label(&labels, &[vec![0.5, 0.5, 0.0]]), Some(Plax));
    }
}
