//! Which frames to encode before their beat closes.
//!
//! A beat is known only when the R-peak that ends it has been confirmed, a few hundred
//! milliseconds after the fact; encoding its T frames only then puts T encoder passes between
//! the beat's end and its label. But hearts beat regularly: the beat now open most likely
//! lasts about as long as the one just cut, so its phases, and the frames the gate will pick
//! for them, can be predicted as the video arrives. The inference thread encodes those frames
//! while it would otherwise wait, into the feature cache; when the beat closes, the frames
//! that were predicted right are cache hits and only the head (and the odd frame the
//! prediction missed) remains.
//!
//! The prediction serves until the QRS detector finds the R-peak that closes the beat: from
//! then on the beat's real phases are known (`daemon::speculate`), replace the predicted
//! ones still waiting, and [`Lookahead::superseded`] holds the prediction until the cut.
//!
//! A wrong prediction costs idle encoder time, never a wrong label: the cache is keyed by the
//! frame and the exact preprocessing, so a beat uses speculative features only for frames it
//! really picked under the region it really has.
//!
//! [`Lookahead`] is the pure part: told of each beat cut and of the video's progress, it says
//! which phase times are now due; the gating thread looks up the frame nearest each.

use crate::gate::phase_ns;

/// Predicts the phase times of the beat now open.
#[derive(Debug, Clone)]
pub struct Lookahead {
    /// T: frames per beat.
    frames_per_beat: u64,
    /// The open beat as predicted: start and length, once a beat has been cut.
    open: Option<(u64, u64)>,
    /// The next phase of the open beat not yet handed out.
    next_phase: u64,
}

impl Lookahead {
    /// A predictor for beats of `frames_per_beat` frames; it predicts nothing until the
    /// first beat is cut.
    pub fn new(frames_per_beat: usize) -> Lookahead {
        Lookahead {
            frames_per_beat: frames_per_beat.max(1) as u64,
            open: None,
            next_phase: 0,
        }
    }

    /// A beat `[start_ns, end_ns)` was cut: the next is predicted to start at its end and to
    /// last as long. Phases the video has already passed come out of the next [`Self::due`].
    pub fn beat_cut(&mut self, start_ns: u64, end_ns: u64) {
        if end_ns <= start_ns {
            return;
        }
        // A beat cut late (after a dropped one) must not move the prediction backwards.
        if self.open.is_some_and(|(start, _)| end_ns < start) {
            return;
        }
        self.open = Some((end_ns, end_ns - start_ns));
        self.next_phase = 0;
    }

    /// The open beat's end is known now (the QRS detector holds its R-peak, see
    /// `daemon::speculate`): its real phases replace the predicted ones, so no more of
    /// these are handed out until the next [`Self::beat_cut`].
    pub fn superseded(&mut self) {
        self.next_phase = self.frames_per_beat;
    }

    /// The next phase time whose nearest frame is known now that the video has reached
    /// `latest_frame_ns` (no later frame can be nearer to it), or `None`. Call until `None`
    /// after each frame.
    pub fn due(&mut self, latest_frame_ns: u64) -> Option<u64> {
        let (start, rr) = self.open?;
        if self.next_phase >= self.frames_per_beat {
            return None;
        }
        let phase_ns = phase_ns(start, start + rr, self.next_phase, self.frames_per_beat);
        if latest_frame_ns < phase_ns {
            return None;
        }
        self.next_phase += 1;
        Some(phase_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn drain(l: &mut Lookahead, latest_ms: u64) -> Vec<u64> {
        std::iter::from_fn(|| l.due(latest_ms * MS))
            .map(|t| t / MS)
            .collect()
    }

    #[test]
    fn predicts_nothing_before_the_first_beat() {
        let mut l = Lookahead::new(4);
        assert!(drain(&mut l, 10_000).is_empty());
    }

    #[test]
    fn hands_out_each_predicted_phase_once_the_video_passes_it() {
        let mut l = Lookahead::new(4);
        // Beat 1000..1800 ms was cut at 2100 ms (after the detector confirmed the R-peak):
        // the open beat is predicted at 1800..2600, phases 1800, 2000, 2200, 2400.
        l.beat_cut(1000 * MS, 1800 * MS);
        assert_eq!(drain(&mut l, 2100), vec![1800, 2000]);
        assert_eq!(drain(&mut l, 2150), Vec::<u64>::new());
        assert_eq!(drain(&mut l, 2200), vec![2200]);
        assert_eq!(drain(&mut l, 2900), vec![2400]);
        assert!(drain(&mut l, 5000).is_empty(), "T phases per beat, no more");
        // The next cut restarts the prediction from its end.
        l.beat_cut(1800 * MS, 2700 * MS);
        assert_eq!(drain(&mut l, 2900), vec![2700]);
    }

    #[test]
    fn a_late_cut_of_an_older_beat_does_not_move_the_prediction_back() {
        let mut l = Lookahead::new(2);
        l.beat_cut(2000 * MS, 3000 * MS);
        l.beat_cut(1000 * MS, 1900 * MS);
        assert_eq!(drain(&mut l, 3000), vec![3000]);
        l.beat_cut(5 * MS, 5 * MS);
        assert_eq!(drain(&mut l, 4000), vec![3500]);
    }
}
