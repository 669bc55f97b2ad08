//! Which frames to encode once the beat's closing R-peak is known but not yet confirmed.
//!
//! The QRS detector finds an R-peak 85-145 ms after it happens but confirms it only after a
//! further 220 ms hold, in case a larger peak follows (`ecg::qrs`); the beat is cut at the
//! confirmation. During the hold the beat's end is known provisionally
//! ([`crate::ecg::QrsDetector::provisional`]), and the video has long passed all its phases,
//! so the frames the gate will pick are known exactly, not predicted from the last RR interval
//! as [`super::lookahead`] must. The inference thread encodes them in the 120-220 ms left
//! before the cut (two to four encoder passes on tract), into the feature cache; when the beat
//! is confirmed they are cache hits, and only the head remains after the cut.
//!
//! The known phases supersede the predicted ones: the gating thread drops the predictions
//! still waiting in the inbox and holds the [`super::lookahead::Lookahead`] until the cut.
//! A candidate that a larger peak replaces starts the speculation again on the new beat; one
//! that is rejected leaves frames encoded for nothing. Neither can put a wrong label out: the
//! cache is keyed by the frame and its exact preprocessing, and a beat is still classified
//! only when the gate cuts it.
//!
//! The beat's frames are known together, so the inference thread is handed them together: it
//! works out the image region the beat will be preprocessed under before encoding them
//! (`Preprocessor::expect_beat`), and a beat whose region is estimated anew (a view change, a
//! mask that moved) finds its frames encoded ahead too, which the prediction, made under the
//! last beat's region, never could.
//!
//! [`Speculation`] is the pure part: told of the provisional beat after each input, it says
//! which phase times are due; the gating thread looks up the frame nearest each by the gate's
//! rule.

use crate::gate::phase_ns;

/// Hands out the phase times of the beat the provisional R-peak would close.
#[derive(Debug, Clone)]
pub struct Speculation {
    /// T: frames per beat.
    frames_per_beat: u64,
    /// The beat speculated on, `(start_ns, end_ns)`, until it is cut or replaced.
    beat: Option<(u64, u64)>,
    /// The next phase of `beat` not yet handed out.
    next_phase: u64,
}

impl Speculation {
    /// Speculation for beats of `frames_per_beat` frames, on no beat yet.
    pub fn new(frames_per_beat: usize) -> Speculation {
        Speculation {
            frames_per_beat: frames_per_beat.max(1) as u64,
            beat: None,
            next_phase: 0,
        }
    }

    /// Notes the beat the provisional R-peak would close now (`None` while none is held).
    /// Returns `true` when it is a beat not speculated on before: its phases are handed out
    /// from the first, and the frames handed out for an earlier one are void. A provisional
    /// peak that disappears changes nothing: it was either confirmed (the cut follows) or
    /// rejected (the frames handed out are wasted, not wrong).
    pub fn provisional(&mut self, beat: Option<(u64, u64)>) -> bool {
        let Some((start_ns, end_ns)) = beat else {
            return false;
        };
        if end_ns <= start_ns || self.beat == Some((start_ns, end_ns)) {
            return false;
        }
        self.beat = Some((start_ns, end_ns));
        self.next_phase = 0;
        true
    }

    /// T: the phases of a beat, all handed out at once when the video has passed them.
    pub fn frames_per_beat(&self) -> usize {
        self.frames_per_beat as usize
    }

    /// A beat was cut: the speculation on it is over (its frames are cached or being
    /// encoded with the beat).
    pub fn beat_cut(&mut self) {
        self.beat = None;
    }

    /// The next phase time of the provisional beat whose nearest frame is known now that the
    /// video has reached `latest_frame_ns`, or `None`. Call until `None` after each input.
    pub fn due(&mut self, latest_frame_ns: u64) -> Option<u64> {
        let (start_ns, end_ns) = self.beat?;
        if self.next_phase >= self.frames_per_beat {
            return None;
        }
        let t = phase_ns(start_ns, end_ns, self.next_phase, self.frames_per_beat);
        if latest_frame_ns < t {
            return None;
        }
        self.next_phase += 1;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn drain(s: &mut Speculation, latest_ms: u64) -> Vec<u64> {
        std::iter::from_fn(|| s.due(latest_ms * MS))
            .map(|t| t / MS)
            .collect()
    }

    #[test]
    fn speculates_on_nothing_until_a_beat_is_provisional() {
        let mut s = Speculation::new(4);
        assert!(!s.provisional(None));
        assert!(drain(&mut s, 10_000).is_empty());
    }

    #[test]
    fn hands_out_the_provisional_beats_phases_once_each() {
        let mut s = Speculation::new(4);
        // Beat 1000..1800 ms, its R-peak held at 2000 ms: every phase is behind the video.
        assert!(s.provisional(Some((1000 * MS, 1800 * MS))));
        assert_eq!(drain(&mut s, 2000), vec![1000, 1200, 1400, 1600]);
        // Asked again after the next input: the same beat, nothing new.
        assert!(!s.provisional(Some((1000 * MS, 1800 * MS))));
        assert!(drain(&mut s, 2040).is_empty());
        // Confirmed: the provisional peak is gone, then the beat is cut.
        assert!(!s.provisional(None));
        s.beat_cut();
        assert!(drain(&mut s, 2100).is_empty());
    }

    #[test]
    fn a_replaced_candidate_starts_again_on_the_new_beat() {
        let mut s = Speculation::new(2);
        assert!(s.provisional(Some((1000 * MS, 1700 * MS))));
        assert_eq!(drain(&mut s, 1900), vec![1000, 1350]);
        // A larger peak 100 ms later takes the candidate's place.
        assert!(s.provisional(Some((1000 * MS, 1800 * MS))));
        assert_eq!(drain(&mut s, 1950), vec![1000, 1400]);
    }

    #[test]
    fn phases_the_video_has_not_reached_wait_for_it() {
        // Video lagging the ECG: a phase is handed out only once a frame at or after it has
        // arrived, since no later frame could be nearer to it by then.
        let mut s = Speculation::new(4);
        assert!(s.provisional(Some((1000 * MS, 1800 * MS))));
        assert_eq!(drain(&mut s, 1300), vec![1000, 1200]);
        assert_eq!(drain(&mut s, 1650), vec![1400, 1600]);
    }

    #[test]
    fn an_empty_or_backward_beat_is_ignored() {
        let mut s = Speculation::new(4);
        assert!(!s.provisional(Some((1000 * MS, 1000 * MS))));
        assert!(!s.provisional(Some((1000 * MS, 900 * MS))));
        assert!(drain(&mut s, 5000).is_empty());
    }
}
