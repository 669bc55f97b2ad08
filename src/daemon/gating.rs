//! The daemon's gating stage: heartbeats from the ECG while it is usable, from fixed time
//! windows while it is not.
//!
//! The [`BeatCutter`] cuts beats at R-peaks. When the ECG is lost, the leads are off or no
//! beat passes the gate for `ecg_timeout_s` of video, a cart must keep guiding the probe, so
//! this stage cuts the video into fixed windows of `window_s` instead: a second [`Gate`] fed
//! synthetic boundaries, whose beats are marked [`BeatGating::Time`] and carry no heart rate.
//! The first beat the ECG gate passes again switches back.
//!
//! The stage is pure and push-driven like the cutter it wraps: push [`SourceItem`]s in time
//! order, pull [`GatedEvent`]s. Each beat leaves with copies of its frames, so inference can
//! run on another thread while input keeps flowing.

use std::collections::VecDeque;

use crate::beats::{BeatCutter, CutEvent, CutStats, Input};
use crate::ecg::EcgError;
use crate::gate::{FrameStamp, Gate, GateConfig, GateEvent, Heartbeat, SkipReason, SkippedBeat};
use crate::media::Frame;
use crate::views::View;

use super::source::SourceItem;

/// Truth labels remembered for time-gated beats (a few seconds of frames).
const MAX_TRUTH: usize = 512;
/// ECG that has not reached the latest frame's time by this much is `lost`.
const ECG_LOST_NS: u64 = 1_000_000_000;
/// A beat skipped for noise this recently makes the ECG quality `poor`.
const POOR_FOR_NS: u64 = 5_000_000_000;

/// Settings of the fallback (`[gating]` in the config file).
#[derive(Debug, Clone, PartialEq)]
pub struct GatingConfig {
    /// T: frames per beat, from the model.
    pub frames_per_beat: usize,
    /// Session time without an ECG-gated beat after which time gating takes over.
    pub ecg_timeout_ns: u64,
    /// Length of a time-gated beat.
    pub window_ns: u64,
}

/// How a beat's boundaries were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatGating {
    /// R-peaks detected in the ECG.
    Ecg,
    /// Fixed time windows (the ECG was unusable).
    Time,
}

impl BeatGating {
    /// The name in messages: `ecg` or `time`.
    pub fn name(self) -> &'static str {
        match self {
            BeatGating::Ecg => "ecg",
            BeatGating::Time => "time",
        }
    }
}

/// How the stage is cutting beats now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No frame yet.
    Idle,
    /// At R-peaks.
    Ecg,
    /// In fixed windows.
    Time,
}

impl Mode {
    /// The name in the status message: `none`, `ecg` or `time`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "none",
            Mode::Ecg => "ecg",
            Mode::Time => "time",
        }
    }
}

/// What the ECG looks like now, for the status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcgQuality {
    /// Beats are being detected and passed.
    Good,
    /// Beats were skipped for noise lately.
    Poor,
    /// The front end reports the leads off.
    LeadOff,
    /// Samples arrive but no R-peak was detected lately.
    NoRPeaks,
    /// No ECG reaches the time of the video.
    Lost,
}

impl EcgQuality {
    /// The name in the status message.
    pub fn name(self) -> &'static str {
        match self {
            EcgQuality::Good => "good",
            EcgQuality::Poor => "poor",
            EcgQuality::LeadOff => "lead_off",
            EcgQuality::NoRPeaks => "no_r_peaks",
            EcgQuality::Lost => "lost",
        }
    }
}

/// A heartbeat ready for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedBeat {
    /// The daemon's running beat number (skipped beats take numbers too).
    pub number: u64,
    /// The beat: its boundaries and the stamps of its gated frames.
    pub beat: Heartbeat,
    /// How it was cut.
    pub gating: BeatGating,
    /// Its T frames in phase order, copied out of the history.
    pub frames: Vec<Frame>,
    /// The view it truly showed, when the source carries truth.
    pub truth: Option<View>,
}

/// What the stage produces.
#[derive(Debug, Clone, PartialEq)]
pub enum GatedEvent {
    /// A beat to classify.
    Beat(GatedBeat),
    /// A beat that will not be classified.
    Skipped {
        /// The daemon's running beat number.
        number: u64,
        /// The beat and why it was skipped.
        skipped: SkippedBeat,
    },
}

/// The stage. See the module documentation.
#[derive(Debug)]
pub struct GatingStage {
    /// The fallback's settings.
    config: GatingConfig,
    /// ECG gating and the frame history.
    cutter: BeatCutter,
    /// The time-window gate, while time gating.
    time_gate: Option<Gate>,
    /// Where the next time window closes.
    next_boundary_ns: u64,
    /// The session time up to which ECG gating is known to work: the end of its latest beat,
    /// or the first frame (a grace period to start with).
    ecg_good_until_ns: Option<u64>,
    /// The latest frame's time.
    latest_frame_ns: Option<u64>,
    /// The latest ECG sample's time, and whether its block was flagged lead-off.
    latest_ecg: Option<(u64, bool)>,
    /// R-peaks the cutter had detected when last looked at, and the ECG time of the last
    /// increase.
    r_peaks: (u64, Option<u64>),
    /// End of the latest beat skipped for bad ECG.
    last_poor_ns: Option<u64>,
    /// Recent truth labels, for time-gated beats.
    truth: VecDeque<(u64, View)>,
    /// Number of the next beat.
    next_number: u64,
    /// Events ready for the consumer.
    events: VecDeque<GatedEvent>,
}

impl GatingStage {
    /// A stage before any input.
    pub fn new(config: GatingConfig) -> GatingStage {
        GatingStage {
            cutter: BeatCutter::new(config.frames_per_beat),
            config,
            time_gate: None,
            next_boundary_ns: 0,
            ecg_good_until_ns: None,
            latest_frame_ns: None,
            latest_ecg: None,
            r_peaks: (0, None),
            last_poor_ns: None,
            // Full size from the start: growing it would allocate on the per-frame path.
            truth: VecDeque::with_capacity(MAX_TRUTH),
            next_number: 0,
            events: VecDeque::new(),
        }
    }

    /// The ECG gating counters (frames, samples, R-peaks, skips by reason).
    pub fn stats(&self) -> &CutStats {
        self.cutter.stats()
    }

    /// The held frame nearest to `t_ns` (see [`BeatCutter::frame_near`]).
    pub fn frame_near(&self, t_ns: u64) -> Option<&Frame> {
        self.cutter.frame_near(t_ns)
    }

    /// The beat the detector's provisional R-peak would close (see
    /// [`BeatCutter::provisional_beat`]).
    pub fn provisional_beat(&self) -> Option<(u64, u64)> {
        self.cutter.provisional_beat()
    }

    /// The held frames captured at or after `t_ns`, oldest first (see
    /// [`BeatCutter::frames_since`]).
    pub fn frames_since(&self, t_ns: u64) -> impl Iterator<Item = &Frame> {
        self.cutter.frames_since(t_ns)
    }

    /// Capture time of the newest frame held.
    pub fn latest_frame_ns(&self) -> Option<u64> {
        self.cutter.latest_frame_ns()
    }

    /// How beats are being cut now.
    pub fn mode(&self) -> Mode {
        match (self.latest_frame_ns, &self.time_gate) {
            (None, _) => Mode::Idle,
            (Some(_), Some(_)) => Mode::Time,
            (Some(_), None) => Mode::Ecg,
        }
    }

    /// The ECG's state at the latest input.
    pub fn quality(&self) -> EcgQuality {
        let Some((ecg_ns, lead_off)) = self.latest_ecg else {
            return EcgQuality::Lost;
        };
        let now = self.latest_frame_ns.unwrap_or(0).max(ecg_ns);
        if now > ecg_ns + ECG_LOST_NS {
            return EcgQuality::Lost;
        }
        if lead_off {
            return EcgQuality::LeadOff;
        }
        let last_peak = self.r_peaks.1.unwrap_or(0);
        if now > last_peak + self.config.ecg_timeout_ns {
            return EcgQuality::NoRPeaks;
        }
        if self
            .last_poor_ns
            .is_some_and(|t| now <= t.saturating_add(POOR_FOR_NS))
        {
            return EcgQuality::Poor;
        }
        EcgQuality::Good
    }

    /// Feeds one item. Fails only on ECG the detector cannot take (an unsupported rate);
    /// the stage stays usable.
    pub fn push(&mut self, item: SourceItem) -> Result<(), EcgError> {
        match item {
            SourceItem::Truth { t_ns, view } => {
                if self.truth.len() == MAX_TRUTH {
                    self.truth.pop_front();
                }
                self.truth.push_back((t_ns, view));
                self.cutter.push(Input::Truth { t_ns, view })?;
            }
            SourceItem::Ecg(block) => {
                let end = block.sample_time_ns(block.samples_mv.len().saturating_sub(1));
                self.latest_ecg = Some((end, block.lead_off));
                // A first block counts as a fresh start for the R-peak clock.
                if self.r_peaks.1.is_none() {
                    self.r_peaks.1 = Some(block.t0_ns);
                }
                let result = self.cutter.push(Input::Ecg(block));
                let peaks = self.cutter.stats().r_peaks;
                if peaks > self.r_peaks.0 {
                    self.r_peaks = (peaks, Some(end));
                }
                self.collect_cut();
                result?;
            }
            SourceItem::Frame(frame) => {
                let stamp = FrameStamp {
                    seq: frame.seq,
                    t_ns: frame.t_ns,
                };
                if self.latest_frame_ns.is_some_and(|t| stamp.t_ns <= t) {
                    // Out of order: neither gate could place it.
                    return Ok(());
                }
                self.latest_frame_ns = Some(stamp.t_ns);
                self.ecg_good_until_ns.get_or_insert(stamp.t_ns);
                self.cutter.push(Input::Frame(frame))?;
                self.collect_cut();
                self.time_gate_frame(stamp);
            }
        }
        Ok(())
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<GatedEvent> {
        self.events.pop_front()
    }

    /// Moves the cutter's events out, with frames copied; an ECG beat ends time gating.
    fn collect_cut(&mut self) {
        while let Some(event) = self.cutter.next_event() {
            match event {
                CutEvent::Beat { beat, truth } => {
                    self.time_gate = None;
                    self.ecg_good_until_ns = Some(
                        self.ecg_good_until_ns
                            .map_or(beat.end_ns, |t| t.max(beat.end_ns)),
                    );
                    self.emit_beat(beat, BeatGating::Ecg, truth);
                }
                CutEvent::Skipped(skipped) => {
                    if skipped.reason == SkipReason::BadEcgQuality {
                        self.last_poor_ns = Some(skipped.end_ns);
                    }
                    self.emit_skip(skipped);
                }
            }
        }
    }

    /// Drives the time-window gate with one frame, entering time gating when ECG gating
    /// has produced nothing for too long.
    fn time_gate_frame(&mut self, stamp: FrameStamp) {
        let t = stamp.t_ns;
        let good_until = self.ecg_good_until_ns.unwrap_or(t);
        if self.time_gate.is_none() && t > good_until.saturating_add(self.config.ecg_timeout_ns) {
            let mut gate = Gate::new(GateConfig::new(self.config.frames_per_beat));
            gate.push_r_peak(t);
            self.time_gate = Some(gate);
            self.next_boundary_ns = t + self.config.window_ns;
        }
        let Some(gate) = self.time_gate.as_mut() else {
            return;
        };
        while self.next_boundary_ns <= t {
            gate.push_r_peak(self.next_boundary_ns);
            self.next_boundary_ns += self.config.window_ns;
        }
        gate.push_frame(stamp);
        let mut ready = Vec::new();
        while let Some(event) = gate.next_event() {
            ready.push(event);
        }
        for event in ready {
            match event {
                GateEvent::Beat(beat) => {
                    let truth = self.truth_at(beat.end_ns);
                    self.emit_beat(beat, BeatGating::Time, truth);
                }
                GateEvent::Skipped(skipped) => {
                    self.cutter.count_skip(skipped.reason.name());
                    self.emit_skip(skipped);
                }
            }
        }
    }

    /// The truth label in force at `t_ns`.
    fn truth_at(&self, t_ns: u64) -> Option<View> {
        let i = self.truth.partition_point(|&(t, _)| t <= t_ns);
        i.checked_sub(1)
            .and_then(|i| self.truth.get(i))
            .map(|&(_, v)| v)
    }

    /// Queues a beat with copies of its frames, or a skip when they are gone.
    fn emit_beat(&mut self, beat: Heartbeat, gating: BeatGating, truth: Option<View>) {
        let frames: Option<Vec<Frame>> = self
            .cutter
            .frames_of(&beat)
            .map(|frames| frames.into_iter().cloned().collect());
        let Some(frames) = frames else {
            let reason = SkipReason::UnusableFrames;
            self.cutter.count_skip(reason.name());
            self.emit_skip(SkippedBeat {
                beat: beat.beat,
                start_ns: beat.start_ns,
                end_ns: beat.end_ns,
                reason,
            });
            return;
        };
        let number = self.take_number();
        self.events.push_back(GatedEvent::Beat(GatedBeat {
            number,
            beat,
            gating,
            frames,
            truth,
        }));
    }

    /// Queues a skipped beat.
    fn emit_skip(&mut self, skipped: SkippedBeat) {
        let number = self.take_number();
        self.events
            .push_back(GatedEvent::Skipped { number, skipped });
    }

    fn take_number(&mut self) -> u64 {
        let n = self.next_number;
        self.next_number += 1;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{LeadOffMode, LeadOffStretch, ScanScript, SimConfig, SimEvent, Simulator};

    const S: u64 = 1_000_000_000;

    fn config() -> GatingConfig {
        GatingConfig {
            frames_per_beat: 4,
            ecg_timeout_ns: 3 * S,
            window_ns: S,
        }
    }

    /// Runs a simulated scan through the stage; returns every event with the mode and
    /// quality right after it, and the stage.
    fn run(
        sim: SimConfig,
        drop_ecg_after_ns: Option<u64>,
    ) -> (Vec<(GatedEvent, Mode)>, GatingStage) {
        let mut stage = GatingStage::new(config());
        let mut out = Vec::new();
        for event in Simulator::new(sim).unwrap() {
            let item = match event {
                SimEvent::Frame { frame, .. } => SourceItem::Frame(frame),
                SimEvent::Ecg(b) if drop_ecg_after_ns.is_some_and(|t| b.t0_ns >= t) => continue,
                SimEvent::Ecg(b) => SourceItem::Ecg(b),
                SimEvent::RPeak { .. } => continue,
            };
            stage.push(item).unwrap();
            while let Some(e) = stage.next_event() {
                out.push((e, stage.mode()));
            }
        }
        (out, stage)
    }

    fn sim(beats: u32) -> SimConfig {
        SimConfig {
            scan: ScanScript::from_views(&[View::Plax], beats),
            ..SimConfig::default()
        }
    }

    fn beats(events: &[(GatedEvent, Mode)]) -> Vec<&GatedBeat> {
        events
            .iter()
            .filter_map(|(e, _)| match e {
                GatedEvent::Beat(b) => Some(b),
                GatedEvent::Skipped { .. } => None,
            })
            .collect()
    }

    #[test]
    fn good_ecg_gates_by_r_peaks_with_frames_copied() {
        let (events, stage) = run(sim(10), None);
        let beats = beats(&events);
        assert!(beats.len() >= 7, "{}", beats.len());
        for b in &beats {
            assert_eq!(b.gating, BeatGating::Ecg);
            assert_eq!(b.frames.len(), 4);
            let seqs: Vec<u64> = b.frames.iter().map(|f| f.seq).collect();
            let stamps: Vec<u64> = b.beat.frames.iter().map(|f| f.seq).collect();
            assert_eq!(seqs, stamps);
        }
        let numbers: Vec<u64> = events
            .iter()
            .map(|(e, _)| match e {
                GatedEvent::Beat(b) => b.number,
                GatedEvent::Skipped { number, .. } => *number,
            })
            .collect();
        assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
        assert_eq!(stage.mode(), Mode::Ecg);
        assert_eq!(stage.quality(), EcgQuality::Good);
    }

    #[test]
    fn the_provisional_beat_and_its_phase_frames_are_those_the_gate_then_cuts() {
        // A wandering heart rate with ectopic beats: the RR prediction misses, the provisional
        // beat must not. After each item, as the daemon's gating thread looks.
        let cfg = SimConfig {
            ectopic_prob: 0.05,
            rr_jitter: 0.05,
            ..sim(40)
        };
        let t = config().frames_per_beat as u64;
        let mut stage = GatingStage::new(config());
        let mut held: Option<((u64, u64), Vec<u64>)> = None;
        let (mut cut, mut matched) = (0usize, 0usize);
        for event in Simulator::new(cfg).unwrap() {
            let item = match event {
                SimEvent::Frame { frame, .. } => SourceItem::Frame(frame),
                SimEvent::Ecg(b) => SourceItem::Ecg(b),
                SimEvent::RPeak { .. } => continue,
            };
            stage.push(item).unwrap();
            while let Some(e) = stage.next_event() {
                if let GatedEvent::Beat(b) = e {
                    cut += 1;
                    let stamps: Vec<u64> = b.beat.frames.iter().map(|f| f.seq).collect();
                    if held.as_ref().is_some_and(|(beat, frames)| {
                        *beat == (b.beat.start_ns, b.beat.end_ns) && *frames == stamps
                    }) {
                        matched += 1;
                    }
                }
            }
            // The phase frames as the gating thread looks them up, once the video has passed
            // the last phase.
            if let (Some((start, end)), Some(latest)) =
                (stage.provisional_beat(), stage.latest_frame_ns())
                && latest >= crate::gate::phase_ns(start, end, t - 1, t)
            {
                let frames = (0..t)
                    .filter_map(|i| stage.frame_near(crate::gate::phase_ns(start, end, i, t)))
                    .map(|f| f.seq)
                    .collect();
                held = Some(((start, end), frames));
            }
        }
        assert!(cut >= 30, "{cut} beats");
        // The first beat is cut with no beat before it to have been provisional.
        assert!(
            matched + 1 >= cut,
            "{matched} of {cut} beats were speculated right"
        );
    }

    #[test]
    fn lost_ecg_falls_back_to_time_windows() {
        // ECG stops at 4 s; video goes on to the end.
        let (events, stage) = run(sim(16), Some(4 * S));
        let beats = beats(&events);
        let time: Vec<&&GatedBeat> = beats
            .iter()
            .filter(|b| b.gating == BeatGating::Time)
            .collect();
        assert!(time.len() >= 3, "{beats:?}");
        for b in &time {
            assert_eq!(b.beat.end_ns - b.beat.start_ns, S);
            assert_eq!(b.frames.len(), 4);
        }
        // Time gating began no earlier than the timeout after the last ECG beat.
        let last_ecg = beats
            .iter()
            .filter(|b| b.gating == BeatGating::Ecg)
            .map(|b| b.beat.end_ns)
            .max()
            .unwrap();
        assert!(time[0].beat.start_ns >= last_ecg + 3 * S);
        assert_eq!(stage.mode(), Mode::Time);
        assert_eq!(stage.quality(), EcgQuality::Lost);
    }

    #[test]
    fn leads_off_then_on_goes_to_time_and_back_to_ecg() {
        let cfg = SimConfig {
            lead_off: vec![LeadOffStretch {
                start_s: 4.0,
                duration_s: 7.0,
                mode: LeadOffMode::Flat,
            }],
            ..sim(24)
        };
        let (events, _) = run(cfg, None);
        let seq: Vec<BeatGating> = beats(&events).iter().map(|b| b.gating).collect();
        let first_time = seq.iter().position(|g| *g == BeatGating::Time).unwrap();
        let back = seq[first_time..]
            .iter()
            .position(|g| *g == BeatGating::Ecg)
            .unwrap();
        assert!(back > 0);
        assert!(
            seq[first_time + back..]
                .iter()
                .all(|g| *g == BeatGating::Ecg)
        );
        // While off, the mode said so.
        assert!(events.iter().any(|(_, m)| *m == Mode::Time));
    }
}
