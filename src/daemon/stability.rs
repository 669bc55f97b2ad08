//! Label stability: a `stable` label with hysteresis next to each beat's raw label.
//!
//! A per-beat classifier flickers when the probe sits between two views or a single beat is
//! noisy; a sonographer watching a screen needs a label that changes only when the evidence
//! does. The rule, applied beat by beat:
//!
//! * a beat labelled with the current stable view keeps it and clears any challenger;
//! * a beat labelled with another view at confidence `>= confident` (default 0.9) takes over
//!   at once: one unmistakable beat is enough;
//! * otherwise the other view becomes the challenger, and takes over after `agree_beats`
//!   (default 2) consecutive beats agreeing on it; a beat for a third view restarts the count;
//! * an `unknown` beat is an abstention: it neither counts for nor breaks a challenger's run,
//!   but `unknown_beats` (default 3) consecutive unknown beats make the stable label `unknown`
//!   (the probe has left every view it knows);
//! * a gap of more than `max_gap_s` (default 5 s) between beats (video lost, probe lifted)
//!   forgets everything: the stable label restarts as `unknown`, since the old view says
//!   nothing about what the probe will show next.
//!
//! The stable label starts as `unknown`. The module is pure: beats in, labels out.

use serde::Deserialize;

use crate::classify::Label;
use crate::views::View;

/// The hysteresis settings (`[stability]` in the config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StabilityConfig {
    /// Consecutive beats agreeing on a new view that make it the stable label (at least 1;
    /// 1 means the stable label follows every confident-enough beat).
    pub agree_beats: u32,
    /// A beat for a new view at least this confident makes it stable at once (0 to 1; above
    /// 1 disables the shortcut).
    pub confident: f32,
    /// Consecutive `unknown` beats that make the stable label `unknown` (at least 1).
    pub unknown_beats: u32,
    /// Longest gap between consecutive beats, in seconds, over which the stable label
    /// survives.
    pub max_gap_s: f64,
}

impl Default for StabilityConfig {
    fn default() -> StabilityConfig {
        StabilityConfig {
            agree_beats: 2,
            confident: 0.9,
            unknown_beats: 3,
            max_gap_s: 5.0,
        }
    }
}

impl StabilityConfig {
    /// Checks the ranges; the error names the key and the allowed values.
    pub fn validate(&self) -> Result<(), String> {
        if self.agree_beats == 0 {
            return Err("agree_beats must be at least 1".into());
        }
        if self.unknown_beats == 0 {
            return Err("unknown_beats must be at least 1".into());
        }
        if !(self.confident.is_finite() && self.confident > 0.0) {
            return Err(format!(
                "confident = {} must be a probability above 0 (above 1 disables it)",
                self.confident
            ));
        }
        if !(self.max_gap_s.is_finite() && self.max_gap_s > 0.0) {
            return Err(format!(
                "max_gap_s = {} must be a positive number of seconds",
                self.max_gap_s
            ));
        }
        Ok(())
    }
}

/// What the stabiliser says after a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stable {
    /// The stable label now.
    pub label: Label,
    /// It differs from the stable label before this beat.
    pub changed: bool,
}

/// The hysteresis state. See the module documentation for the rule.
#[derive(Debug, Clone)]
pub struct Stabilizer {
    /// The rule's settings.
    config: StabilityConfig,
    /// The label published as stable.
    stable: Label,
    /// A view challenging the stable label and its run of agreeing beats.
    challenger: Option<(View, u32)>,
    /// Consecutive unknown beats so far.
    unknown_run: u32,
    /// End time of the previous beat, to detect gaps.
    last_end_ns: Option<u64>,
}

impl Stabilizer {
    /// A stabiliser starting at `unknown`.
    pub fn new(config: StabilityConfig) -> Stabilizer {
        Stabilizer {
            config,
            stable: Label::Unknown,
            challenger: None,
            unknown_run: 0,
            last_end_ns: None,
        }
    }

    /// The stable label now.
    pub fn stable(&self) -> Label {
        self.stable
    }

    /// Takes one beat ending at `end_ns` with its raw `label` and `confidence`, in beat order.
    pub fn push(&mut self, end_ns: u64, label: Label, confidence: f32) -> Stable {
        let before = self.stable;
        let max_gap_ns = (self.config.max_gap_s * 1e9) as u64;
        if self
            .last_end_ns
            .is_some_and(|last| end_ns > last.saturating_add(max_gap_ns))
        {
            self.stable = Label::Unknown;
            self.challenger = None;
            self.unknown_run = 0;
        }
        self.last_end_ns = Some(end_ns);
        match label {
            Label::View(view) => {
                self.unknown_run = 0;
                if self.stable == label {
                    self.challenger = None;
                } else if confidence >= self.config.confident {
                    self.stable = label;
                    self.challenger = None;
                } else {
                    let run = match self.challenger {
                        Some((v, n)) if v == view => n + 1,
                        _ => 1,
                    };
                    if run >= self.config.agree_beats {
                        self.stable = label;
                        self.challenger = None;
                    } else {
                        self.challenger = Some((view, run));
                    }
                }
            }
            Label::Unknown => {
                self.unknown_run += 1;
                if self.unknown_run >= self.config.unknown_beats {
                    self.stable = Label::Unknown;
                    self.challenger = None;
                }
            }
        }
        Stable {
            label: self.stable,
            changed: self.stable != before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAX: Label = Label::View(View::Plax);
    const A4C: Label = Label::View(View::A4c);
    const A2C: Label = Label::View(View::A2c);
    const UNK: Label = Label::Unknown;

    /// Feeds beats one second apart; returns the stable label after each.
    fn run(config: StabilityConfig, beats: &[(Label, f32)]) -> Vec<Label> {
        let mut s = Stabilizer::new(config);
        beats
            .iter()
            .enumerate()
            .map(|(i, &(label, p))| s.push((i as u64 + 1) * 1_000_000_000, label, p).label)
            .collect()
    }

    #[test]
    fn a_new_view_needs_two_agreeing_beats() {
        let got = run(
            StabilityConfig::default(),
            &[
                (PLAX, 0.6),
                (PLAX, 0.6),
                (A4C, 0.7),
                (PLAX, 0.6),
                (A4C, 0.7),
                (A4C, 0.7),
            ],
        );
        assert_eq!(got, vec![UNK, PLAX, PLAX, PLAX, PLAX, A4C]);
    }

    #[test]
    fn one_confident_beat_is_enough() {
        let got = run(
            StabilityConfig::default(),
            &[(PLAX, 0.95), (A4C, 0.89), (A4C, 0.9)],
        );
        assert_eq!(got, vec![PLAX, PLAX, A4C]);
    }

    #[test]
    fn a_third_view_restarts_the_count() {
        let got = run(
            StabilityConfig::default(),
            &[(PLAX, 0.95), (A4C, 0.6), (A2C, 0.6), (A4C, 0.6), (A4C, 0.6)],
        );
        assert_eq!(got, vec![PLAX, PLAX, PLAX, PLAX, A4C]);
    }

    #[test]
    fn unknown_abstains_and_three_in_a_row_clear_the_label() {
        let got = run(
            StabilityConfig::default(),
            &[
                (PLAX, 0.95),
                (A4C, 0.6),
                (UNK, 0.3),
                (A4C, 0.6), // the unknown beat did not break A4C's run
                (UNK, 0.3),
                (UNK, 0.3),
                (UNK, 0.3),
            ],
        );
        assert_eq!(got, vec![PLAX, PLAX, PLAX, A4C, A4C, A4C, UNK]);
    }

    #[test]
    fn k_and_threshold_are_configurable() {
        let config = StabilityConfig {
            agree_beats: 3,
            confident: 1.5,
            unknown_beats: 1,
            max_gap_s: 5.0,
        };
        let got = run(
            config,
            &[(PLAX, 0.99), (PLAX, 0.99), (PLAX, 0.99), (UNK, 0.2)],
        );
        assert_eq!(got, vec![UNK, UNK, PLAX, UNK]);
    }

    #[test]
    fn a_long_gap_forgets_the_stable_label() {
        let mut s = Stabilizer::new(StabilityConfig::default());
        assert_eq!(s.push(1_000_000_000, PLAX, 0.95).label, PLAX);
        let after_gap = s.push(7_000_000_001, A4C, 0.6);
        assert_eq!(after_gap.label, UNK);
        assert!(after_gap.changed);
        assert_eq!(s.push(8_000_000_000, A4C, 0.6).label, A4C);
        let same = s.push(9_000_000_000, A4C, 0.6);
        assert!(!same.changed);
    }

    #[test]
    fn validation_names_the_bad_key() {
        let bad = StabilityConfig {
            agree_beats: 0,
            ..StabilityConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("agree_beats"));
        let bad = StabilityConfig {
            confident: f32::NAN,
            ..StabilityConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("confident"));
        assert!(StabilityConfig::default().validate().is_ok());
    }
}
