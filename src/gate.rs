//! ECG gating: cut the video into heartbeats and pick frames at fixed cardiac phases.
//!
//! A heartbeat runs from one R-peak to the next. For a model trained on T frames per beat we
//! pick, for each phase i/T (i = 0..T), the frame nearest in time to `R + i/T * RR`. Sampling
//! by phase rather than by frame count makes a beat at 50 bpm and one at 150 bpm look alike to
//! the temporal head, which is the point of gating.
//!
//! The gate is pure and push-driven: the pipeline pushes frame timestamps, R-peak times and
//! spans of bad ECG, and pulls [`GateEvent`]s. R-peaks arrive late (the QRS detector confirms a
//! beat a few hundred milliseconds after it), so a closed beat waits until a frame at or after
//! its end has arrived before its frames are picked; then no later frame could be nearer to any
//! of its phases.

use std::collections::VecDeque;

/// Most frame timestamps remembered; with the pruning below this is never reached in normal
/// operation, it only bounds memory when R-peaks stop arriving while video keeps flowing.
const MAX_FRAMES: usize = 4096;
/// Most closed beats waiting for frames; beyond this the video has stalled, and the oldest
/// beat is skipped for missing frames rather than held forever.
const MAX_PENDING: usize = 8;
/// Most bad-ECG spans remembered.
const MAX_BAD_SPANS: usize = 256;

/// How heartbeats are cut and when a beat is skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// T: frames picked per beat, at phases i/T.
    pub frames_per_beat: usize,
    /// Shortest plausible RR interval (0.27 s, about 220 bpm); shorter means a false detection.
    pub min_rr_ns: u64,
    /// Longest plausible RR interval (2.0 s, 30 bpm); longer means a missed beat or a pause.
    pub max_rr_ns: u64,
    /// A phase whose nearest frame is further away than this has no usable frame: the video
    /// dropped frames there, and the beat is skipped rather than fed a frame of another phase.
    pub max_frame_offset_ns: u64,
}

impl GateConfig {
    /// The defaults for `frames_per_beat` frames: RR within 0.27-2.0 s, frames within 50 ms.
    pub fn new(frames_per_beat: usize) -> GateConfig {
        GateConfig {
            frames_per_beat,
            min_rr_ns: 270_000_000,
            max_rr_ns: 2_000_000_000,
            max_frame_offset_ns: 50_000_000,
        }
    }
}

/// A frame as the gate sees it: which one, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStamp {
    /// Capture sequence number, the key the pipeline uses to find the pixels.
    pub seq: u64,
    /// Capture time on the session clock.
    pub t_ns: u64,
}

/// How a heartbeat's boundaries were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// From R-peaks detected in the ECG (live, or an export's ECG waveform or R-wave times).
    Ecg,
    /// From fixed time windows, while no usable ECG is there: phases are not cardiac phases.
    Time,
    /// From the periodic motion of the image itself, for cines exported without any ECG.
    Image,
}

impl Gating {
    /// The name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Gating::Ecg => "ecg",
            Gating::Time => "time",
            Gating::Image => "image",
        }
    }
}

/// A heartbeat with its gated frames, ready for classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Running number of R-R intervals since the stream began, skipped ones included, so a
    /// consumer can see gaps.
    pub beat: u64,
    /// Time of the R-peak that opens the beat.
    pub start_ns: u64,
    /// Time of the R-peak that closes the beat.
    pub end_ns: u64,
    /// The T gated frames in phase order (a frame may repeat when the video is slow).
    pub frames: Vec<FrameStamp>,
    /// How the boundaries were found.
    pub gating: Gating,
}

impl Heartbeat {
    /// Heart rate implied by this beat's RR interval.
    pub fn hr_bpm(&self) -> f64 {
        60e9 / (self.end_ns - self.start_ns) as f64
    }
}

/// Why a beat was not classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The RR interval is outside the plausible range.
    ImplausibleRr,
    /// Some phase had no frame close enough (dropped or missing video).
    MissingFrames,
    /// The ECG was flat, saturated, noisy or off during the beat.
    BadEcgQuality,
    /// Set by the pipeline, not the gate: the gated frames were malformed (a buffer shorter
    /// than its header says, a size change mid-beat) or no longer held.
    UnusableFrames,
}

impl SkipReason {
    /// The name used in summaries and JSON.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::ImplausibleRr => "implausible_rr",
            SkipReason::MissingFrames => "missing_frames",
            SkipReason::BadEcgQuality => "bad_ecg_quality",
            SkipReason::UnusableFrames => "unusable_frames",
        }
    }
}

/// A beat the gate refused, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedBeat {
    /// Running beat number, as in [`Heartbeat::beat`].
    pub beat: u64,
    /// Time of the opening R-peak.
    pub start_ns: u64,
    /// Time of the closing R-peak.
    pub end_ns: u64,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// What the gate produces.
#[derive(Debug, Clone, PartialEq)]
pub enum GateEvent {
    /// A beat to classify.
    Beat(Heartbeat),
    /// A beat that will not be classified.
    Skipped(SkippedBeat),
}

/// A closed R-R interval waiting for its frames.
#[derive(Debug, Clone, Copy)]
struct PendingBeat {
    beat: u64,
    start_ns: u64,
    end_ns: u64,
    /// How the boundary that closed it was found.
    gating: Gating,
}

/// Time of phase `i` of `frames_per_beat` in the beat from `start_ns` to `end_ns`:
/// `R + i/T * RR`, the instant whose nearest frame the gate picks for that phase. Whatever
/// predicts the gate's picks (the daemon's lookahead and speculation) uses this same rule.
pub fn phase_ns(start_ns: u64, end_ns: u64, i: u64, frames_per_beat: u64) -> u64 {
    start_ns + end_ns.saturating_sub(start_ns) * i / frames_per_beat.max(1)
}

/// The item of `items` (in time order, `time` giving each one's time) nearest to `t_ns`: the
/// closer of the items either side of it, the earlier on a tie. The gate picks phase frames
/// by this rule, and whatever predicts its picks (`BeatCutter::frame_near`) must use the same.
pub fn nearest_in_time<T>(items: &VecDeque<T>, t_ns: u64, time: impl Fn(&T) -> u64) -> Option<&T> {
    let after = items.partition_point(|item| time(item) < t_ns);
    [
        after.checked_sub(1).and_then(|i| items.get(i)),
        items.get(after),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|item| time(item).abs_diff(t_ns))
}

/// The heartbeat gate. See the module documentation.
#[derive(Debug)]
pub struct Gate {
    /// Limits and T.
    config: GateConfig,
    /// Recent frames in time order, pruned to what pending and future beats can still use.
    frames: VecDeque<FrameStamp>,
    /// The most recent R-peak: the start of the beat now in progress.
    last_r_ns: Option<u64>,
    /// Closed beats waiting for a frame at or after their end.
    pending: VecDeque<PendingBeat>,
    /// Recent spans of bad ECG quality, `(start, end)`.
    bad_ecg: VecDeque<(u64, u64)>,
    /// Number the next closed beat gets.
    next_beat: u64,
    /// Events ready for the consumer.
    events: VecDeque<GateEvent>,
}

impl Gate {
    /// A gate that picks `config.frames_per_beat` frames per beat.
    pub fn new(config: GateConfig) -> Gate {
        Gate {
            config,
            frames: VecDeque::new(),
            last_r_ns: None,
            pending: VecDeque::new(),
            bad_ecg: VecDeque::new(),
            next_beat: 0,
            events: VecDeque::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Records a frame. Frames must arrive in time order; one that does not is ignored, since
    /// the capture clock never runs backwards and such a frame cannot be placed.
    pub fn push_frame(&mut self, frame: FrameStamp) {
        if self
            .frames
            .back()
            .is_some_and(|last| frame.t_ns <= last.t_ns)
        {
            return;
        }
        if self.frames.len() == MAX_FRAMES {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
        self.resolve_ready();
        self.prune_frames();
    }

    /// Records a detected R-peak, closing the beat that the previous R-peak opened.
    pub fn push_r_peak(&mut self, t_ns: u64) {
        self.push_boundary(t_ns, Gating::Ecg);
    }

    /// Records a beat boundary found some other way than by the QRS detector (an export's
    /// R-wave times, the image's motion, a time window); the beat it closes is marked with
    /// `gating`.
    pub fn push_boundary(&mut self, t_ns: u64, gating: Gating) {
        let Some(start_ns) = self.last_r_ns else {
            self.last_r_ns = Some(t_ns);
            return;
        };
        if t_ns <= start_ns {
            return;
        }
        self.last_r_ns = Some(t_ns);
        let beat = PendingBeat {
            beat: self.next_beat,
            start_ns,
            end_ns: t_ns,
            gating,
        };
        self.next_beat += 1;
        let rr = t_ns - start_ns;
        if rr < self.config.min_rr_ns || rr > self.config.max_rr_ns {
            self.skip(beat, SkipReason::ImplausibleRr);
            return;
        }
        if self.pending.len() == MAX_PENDING
            && let Some(oldest) = self.pending.pop_front()
        {
            self.skip(oldest, SkipReason::MissingFrames);
        }
        self.pending.push_back(beat);
        self.resolve_ready();
    }

    /// The beat an R-peak at `end_ns` would close, `(start_ns, end_ns)`, when the gate would go
    /// on to pick its frames: a beat is open before `end_ns`, the RR interval is plausible and
    /// no bad ECG is known inside it. For work done on a beat before its R-peak is confirmed
    /// (`BeatCutter::provisional_beat`); the gate itself is left as it is.
    pub fn beat_closed_by(&self, end_ns: u64) -> Option<(u64, u64)> {
        let start_ns = self.last_r_ns.filter(|&s| s < end_ns)?;
        let rr = end_ns - start_ns;
        let plausible = (self.config.min_rr_ns..=self.config.max_rr_ns).contains(&rr);
        let bad = self
            .bad_ecg
            .iter()
            .any(|&(s, e)| s <= end_ns && e >= start_ns);
        (plausible && !bad).then_some((start_ns, end_ns))
    }

    /// Marks `[start_ns, end_ns]` as bad ECG: beats overlapping it are skipped. Must be pushed
    /// before the R-peak that closes an affected beat is resolved, which holds when the quality
    /// monitor sees samples before the (delayed) QRS detector confirms them.
    pub fn mark_bad_ecg(&mut self, start_ns: u64, end_ns: u64) {
        if let Some(last) = self.bad_ecg.back_mut()
            && start_ns <= last.1
        {
            last.1 = last.1.max(end_ns);
            return;
        }
        if self.bad_ecg.len() == MAX_BAD_SPANS {
            self.bad_ecg.pop_front();
        }
        self.bad_ecg.push_back((start_ns, end_ns));
    }

    /// Forgets the open beat, so the next R-peak starts a new one instead of closing a beat
    /// across a gap (the ECG stream was interrupted).
    pub fn reset_rhythm(&mut self) {
        self.last_r_ns = None;
    }

    /// End of stream: resolves every waiting beat with the frames there are.
    pub fn finish(&mut self) {
        while let Some(beat) = self.pending.pop_front() {
            self.resolve(beat);
        }
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<GateEvent> {
        self.events.pop_front()
    }

    /// Resolves the pending beats whose end the video has passed.
    fn resolve_ready(&mut self) {
        let Some(latest) = self.frames.back().map(|f| f.t_ns) else {
            return;
        };
        while let Some(beat) = self.pending.front().copied() {
            if latest < beat.end_ns {
                break;
            }
            self.pending.pop_front();
            self.resolve(beat);
        }
    }

    fn resolve(&mut self, beat: PendingBeat) {
        if self
            .bad_ecg
            .iter()
            .any(|&(s, e)| s <= beat.end_ns && e >= beat.start_ns)
        {
            self.skip(beat, SkipReason::BadEcgQuality);
            return;
        }
        let t = self.config.frames_per_beat as u64;
        let mut picked = Vec::with_capacity(self.config.frames_per_beat);
        for i in 0..t {
            let phase_t = phase_ns(beat.start_ns, beat.end_ns, i, t);
            match self.nearest_frame(phase_t) {
                Some(f) if f.t_ns.abs_diff(phase_t) <= self.config.max_frame_offset_ns => {
                    picked.push(f)
                }
                _ => {
                    self.skip(beat, SkipReason::MissingFrames);
                    return;
                }
            }
        }
        self.events.push_back(GateEvent::Beat(Heartbeat {
            beat: beat.beat,
            start_ns: beat.start_ns,
            end_ns: beat.end_ns,
            frames: picked,
            gating: beat.gating,
        }));
    }

    fn nearest_frame(&self, t_ns: u64) -> Option<FrameStamp> {
        nearest_in_time(&self.frames, t_ns, |f| f.t_ns).copied()
    }

    fn skip(&mut self, beat: PendingBeat, reason: SkipReason) {
        self.events.push_back(GateEvent::Skipped(SkippedBeat {
            beat: beat.beat,
            start_ns: beat.start_ns,
            end_ns: beat.end_ns,
            reason,
        }));
    }

    /// Drops frames no beat can use any more: those before the oldest beat still to be
    /// resolved (pending, or the one in progress), less the allowed frame offset.
    fn prune_frames(&mut self) {
        let Some(latest) = self.frames.back().map(|f| f.t_ns) else {
            return;
        };
        // A beat in progress longer than the longest plausible RR will be skipped anyway, so
        // no more than one maximal beat of history is ever needed for it.
        let horizon = latest.saturating_sub(self.config.max_rr_ns);
        let oldest_needed = match self.pending.front() {
            Some(beat) => beat.start_ns,
            None => self.last_r_ns.map_or(horizon, |r| r.max(horizon)),
        };
        let keep_from = oldest_needed.saturating_sub(self.config.max_frame_offset_ns);
        // Keep one frame before the cut so a phase right at the cut still has both neighbours.
        while self.frames.len() > 1 && self.frames[1].t_ns < keep_from {
            self.frames.pop_front();
        }
        while self.bad_ecg.front().is_some_and(|&(_, e)| e < keep_from) {
            self.bad_ecg.pop_front();
        }
    }

    /// Frames currently remembered (for tests of boundedness).
    pub fn frames_held(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Feeds frames at `fps` from `from_ms` to `to_ms`; sequence numbers follow from time.
    fn feed_frames(gate: &mut Gate, fps: u64, from_ms: u64, to_ms: u64) {
        let step = 1_000_000_000 / fps;
        let mut t = from_ms * MS;
        while t <= to_ms * MS {
            gate.push_frame(FrameStamp {
                seq: t / step,
                t_ns: t,
            });
            t += step;
        }
    }

    /// Plays a stream as a live source delivers it: frames at `fps` up to `to_ms`, and each
    /// R-peak 300 ms after it happened (the detector's confirmation delay).
    fn play(gate: &mut Gate, fps: u64, r_peaks_ms: &[u64], to_ms: u64) {
        let mut fed_to = 0;
        for &r in r_peaks_ms {
            feed_frames(gate, fps, fed_to, r + 300);
            fed_to = r + 301;
            gate.push_r_peak(r * MS);
        }
        feed_frames(gate, fps, fed_to, to_ms);
    }

    fn events(gate: &mut Gate) -> Vec<GateEvent> {
        std::iter::from_fn(|| gate.next_event()).collect()
    }

    #[test]
    fn picks_the_frame_nearest_each_phase() {
        let mut gate = Gate::new(GateConfig::new(4));
        // 100 fps: a frame every 10 ms. R at 1000 and 1800 ms: phases at 1000, 1200, 1400, 1600.
        feed_frames(&mut gate, 100, 0, 990);
        gate.push_r_peak(1000 * MS);
        feed_frames(&mut gate, 100, 1000, 1790);
        gate.push_r_peak(1800 * MS);
        assert!(
            events(&mut gate).is_empty(),
            "must wait for a frame at the beat's end"
        );
        feed_frames(&mut gate, 100, 1800, 1800);
        let ev = events(&mut gate);
        let [GateEvent::Beat(beat)] = ev.as_slice() else {
            panic!("expected one beat, got {ev:?}");
        };
        let times: Vec<u64> = beat.frames.iter().map(|f| f.t_ns / MS).collect();
        assert_eq!(times, vec![1000, 1200, 1400, 1600]);
        assert_eq!(beat.beat, 0);
        assert!((beat.hr_bpm() - 75.0).abs() < 1e-9);
    }

    #[test]
    fn a_beat_carries_the_gating_of_the_boundary_that_closed_it() {
        let mut gate = Gate::new(GateConfig::new(4));
        feed_frames(&mut gate, 100, 0, 990);
        gate.push_r_peak(1000 * MS);
        feed_frames(&mut gate, 100, 1000, 1790);
        gate.push_boundary(1800 * MS, Gating::Image);
        feed_frames(&mut gate, 100, 1800, 2590);
        gate.push_r_peak(2600 * MS);
        feed_frames(&mut gate, 100, 2600, 2700);
        let gatings: Vec<Gating> = events(&mut gate)
            .into_iter()
            .map(|event| match event {
                GateEvent::Beat(beat) => beat.gating,
                GateEvent::Skipped(skipped) => panic!("unexpected skip {skipped:?}"),
            })
            .collect();
        assert_eq!(gatings, vec![Gating::Image, Gating::Ecg]);
    }

    #[test]
    fn phase_between_frames_takes_the_closer_one() {
        let mut gate = Gate::new(GateConfig::new(3));
        // 30 fps frames at 0, 33.3, 66.7 ... ms; beat 0..900 ms gives phases at 0, 300, 600 ms.
        feed_frames(&mut gate, 30, 0, 1000);
        gate.push_r_peak(0);
        gate.push_r_peak(900 * MS);
        let ev = events(&mut gate);
        let [GateEvent::Beat(beat)] = ev.as_slice() else {
            panic!("expected one beat, got {ev:?}");
        };
        let step = 1_000_000_000 / 30;
        let expected: Vec<u64> = [0u64, 300, 600]
            .iter()
            .map(|ms| ((ms * MS + step / 2) / step) * step)
            .collect();
        let got: Vec<u64> = beat.frames.iter().map(|f| f.t_ns).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn implausible_rr_is_skipped_and_counted_in_beat_numbers() {
        let mut gate = Gate::new(GateConfig::new(2));
        // 200 ms is 300 bpm (a false detection); 1000 -> 3500 ms is a 2.5 s pause.
        play(&mut gate, 50, &[0, 200, 1000, 3500, 4300], 5000);
        let ev = events(&mut gate);
        let summary: Vec<(u64, Option<SkipReason>)> = ev
            .iter()
            .map(|e| match e {
                GateEvent::Beat(b) => (b.beat, None),
                GateEvent::Skipped(s) => (s.beat, Some(s.reason)),
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, Some(SkipReason::ImplausibleRr)),
                (1, None),
                (2, Some(SkipReason::ImplausibleRr)),
                (3, None)
            ]
        );
    }

    #[test]
    fn dropped_frames_skip_the_beat() {
        let mut gate = Gate::new(GateConfig::new(4));
        // The video drops 200 ms around the third phase (1000 + 2 * 250 = 1500 ms).
        feed_frames(&mut gate, 30, 0, 1300);
        gate.push_r_peak(1000 * MS);
        feed_frames(&mut gate, 30, 1301, 1400);
        feed_frames(&mut gate, 30, 1600, 2300);
        gate.push_r_peak(2000 * MS);
        feed_frames(&mut gate, 30, 2301, 2400);
        let ev = events(&mut gate);
        assert!(
            matches!(
                ev.as_slice(),
                [GateEvent::Skipped(SkippedBeat {
                    reason: SkipReason::MissingFrames,
                    ..
                })]
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn bad_ecg_overlapping_the_beat_skips_it() {
        let mut gate = Gate::new(GateConfig::new(2));
        gate.mark_bad_ecg(1500 * MS, 1600 * MS);
        play(&mut gate, 50, &[0, 1000, 2000, 3000], 4000);
        let reasons: Vec<Option<SkipReason>> = events(&mut gate)
            .iter()
            .map(|e| match e {
                GateEvent::Beat(_) => None,
                GateEvent::Skipped(s) => Some(s.reason),
            })
            .collect();
        assert_eq!(reasons, vec![None, Some(SkipReason::BadEcgQuality), None]);
    }

    #[test]
    fn stalled_video_bounds_pending_beats() {
        let mut gate = Gate::new(GateConfig::new(2));
        feed_frames(&mut gate, 50, 0, 100);
        for k in 0..50u64 {
            gate.push_r_peak(k * 800 * MS);
        }
        let ev = events(&mut gate);
        assert_eq!(ev.len(), 49 - MAX_PENDING);
        assert!(ev.iter().all(|e| matches!(
            e,
            GateEvent::Skipped(SkippedBeat {
                reason: SkipReason::MissingFrames,
                ..
            })
        )));
        gate.finish();
        assert_eq!(events(&mut gate).len(), MAX_PENDING);
    }

    #[test]
    fn frame_memory_stays_bounded_without_r_peaks() {
        let mut gate = Gate::new(GateConfig::new(8));
        feed_frames(&mut gate, 60, 0, 120_000);
        // No R-peak: one maximal beat (2 s) of frames plus the offset margin.
        assert!(gate.frames_held() <= 2 * 60 + 10, "{}", gate.frames_held());
        gate.push_r_peak(120_000 * MS);
        feed_frames(&mut gate, 60, 120_001, 240_000);
        assert!(gate.frames_held() <= 2 * 60 + 10, "{}", gate.frames_held());
    }

    #[test]
    fn out_of_order_inputs_are_ignored() {
        let mut gate = Gate::new(GateConfig::new(2));
        feed_frames(&mut gate, 50, 0, 2000);
        gate.push_frame(FrameStamp {
            seq: 1,
            t_ns: 10 * MS,
        });
        gate.push_r_peak(500 * MS);
        gate.push_r_peak(400 * MS);
        gate.push_r_peak(1300 * MS);
        let ev = events(&mut gate);
        let [GateEvent::Beat(beat)] = ev.as_slice() else {
            panic!("{ev:?}");
        };
        assert_eq!((beat.start_ns, beat.end_ns), (500 * MS, 1300 * MS));
    }
}
