//! The ECG checks: the port opens, samples arrive at the configured rate, and the signal is
//! good enough to gate on, measured by listening for a while with the daemon's own reader
//! and quality monitor.

use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use super::{Check, Status};
use crate::ecg::{QualityFlags, QualityMonitor};
use crate::serial::command::{BeatLine, BeatReporter, ListenArgs};
use crate::serial::reader::monotonic_now;
use crate::serial::{LinkStats, ReaderEvent, SerialReader};

/// What listening measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct EcgFacts {
    /// The port as configured.
    pub port: String,
    /// The configured sampling rate.
    pub fs_hz: f64,
    /// Seconds listened.
    pub listened_s: f64,
    /// Samples received.
    pub samples: u64,
    /// The rate the reader's clock fitted to the sample arrivals (0 when too few came).
    pub fitted_hz: f64,
    /// The link counters at the end.
    pub link: LinkStats,
    /// Disconnections while listening, with the last reason.
    pub disconnects: (u32, Option<String>),
    /// Complete 1-s quality windows, and how many were good.
    pub windows: (u32, u32),
    /// Flags seen in the bad windows, counted: lead off, flat, saturated, noisy.
    pub bad: [u32; 4],
    /// Beats detected, and the median heart rate among them.
    pub beats: (u64, Option<f64>),
}

/// Listens to the ECG board `args` describes for `seconds` and returns the three ECG
/// checks: `ecg.port`, `ecg.rate`, `ecg.quality`.
pub(super) fn checks(args: &ListenArgs, seconds: f64) -> Vec<Check> {
    let port = args.port.display().to_string();
    match listen(args, seconds) {
        Ok(facts) => vec![
            Check::ok(
                "ecg.port",
                &port,
                "opens, and is read as the daemon reads it",
            ),
            judge_rate(&facts),
            judge_quality(&facts),
        ],
        Err((detail, fix)) => vec![
            Check::problem("ecg.port", Status::Fail, port, detail, fix),
            Check::skip("ecg.rate", "the port does not open"),
            Check::skip("ecg.quality", "the port does not open"),
        ],
    }
}

/// Reads the port for `seconds`; `Err((why, fix))` when it cannot be opened.
fn listen(args: &ListenArgs, seconds: f64) -> Result<EcgFacts, (String, String)> {
    let path: &PathBuf = &args.port;
    if !path.exists() {
        return Err((
            format!("{} does not exist", path.display()),
            "plug in the ECG adapter and check `ls -l /dev/serial/by-id/`; the udev rule \
             (board/jetson/README.md) names it /dev/echoview-ecg; or name the port with --ecg"
                .to_string(),
        ));
    }
    let config = args
        .reader_config()
        .map_err(|e| (e.to_string(), "correct the ECG flags".to_string()))?;
    let mut monitor = QualityMonitor::new(args.fs).map_err(|e| {
        (
            e.to_string(),
            "give the board's sampling rate with --ecg-fs (250 to 1000 Hz)".to_string(),
        )
    })?;
    let mut reporter =
        BeatReporter::new(args.fs).map_err(|e| (e.to_string(), "correct --ecg-fs".to_string()))?;
    let reader = SerialReader::spawn(config, monotonic_now()).map_err(|e| {
        (
            e.to_string(),
            "check the port's permissions (the service runs in group dialout; run doctor as \
             root or in that group) and that no other program holds it"
                .to_string(),
        )
    })?;
    let mut facts = EcgFacts {
        port: path.display().to_string(),
        fs_hz: args.fs,
        ..EcgFacts::default()
    };
    let mut beats: Vec<BeatLine> = Vec::new();
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds.max(0.1));
    while start.elapsed() < limit {
        match reader.recv_timeout(Duration::from_millis(50)) {
            Ok(ReaderEvent::Ecg(block)) => {
                facts.samples += block.samples_mv.len() as u64;
                for &x in &block.samples_mv {
                    if let Some(span) = monitor.push(x) {
                        tally(&mut facts, span.flags);
                    }
                }
                reporter.block(&block, &mut beats);
            }
            Ok(ReaderEvent::Stats(stats)) => facts.link = stats,
            Ok(ReaderEvent::Disconnected { reason, .. }) => {
                facts.disconnects.0 += 1;
                facts.disconnects.1 = Some(reason);
            }
            Ok(ReaderEvent::Ended { reason }) => {
                if let Some(reason) = reason {
                    facts.disconnects.0 += 1;
                    facts.disconnects.1 = Some(reason);
                }
                break;
            }
            Ok(ReaderEvent::Connected { .. } | ReaderEvent::Lost { .. }) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    facts.listened_s = start.elapsed().as_secs_f64();
    let summary = reader.stop();
    reporter.finish(&mut beats);
    facts.fitted_hz = summary.fitted_rate_hz;
    facts.link = summary.stats;
    let mut rates: Vec<f64> = beats.iter().filter_map(|b| b.hr_bpm).collect();
    let hr = (!rates.is_empty()).then(|| super::model::median(&mut rates));
    facts.beats = (beats.len() as u64, hr);
    Ok(facts)
}

/// Counts one quality window.
fn tally(facts: &mut EcgFacts, flags: QualityFlags) {
    facts.windows.0 += 1;
    if flags.is_good() {
        facts.windows.1 += 1;
        return;
    }
    for (i, on) in [flags.lead_off, flags.flat, flags.saturated, flags.noisy]
        .into_iter()
        .enumerate()
    {
        facts.bad[i] += u32::from(on);
    }
}

/// The verdict on the sample rate and the link.
pub(super) fn judge_rate(f: &EcgFacts) -> Check {
    const NAME: &str = "ecg.rate";
    if f.samples == 0 {
        let why = f
            .disconnects
            .1
            .as_deref()
            .map_or(String::new(), |r| format!(" (last error: {r})"));
        return Check::problem(
            NAME,
            Status::Fail,
            format!("0 samples in {:.1} s", f.listened_s),
            format!("the port opens but no sample arrived{why}"),
            "check that the board is powered and connected to this port, and that \
             --ecg-protocol and the baud rate match it (board/ecg-protocol.md)",
        );
    }
    // The clock's fitted rate is exact once a few seconds have come; the plain count over
    // the listening time stands in before that.
    let measured = if f.fitted_hz > 0.0 {
        f.fitted_hz
    } else {
        f.samples as f64 / f.listened_s.max(1e-3)
    };
    let off = measured / f.fs_hz - 1.0;
    let value = format!(
        "{measured:.1} Hz ({:+.2}% against {} Hz), {}",
        off * 100.0,
        f.fs_hz,
        f.link
    );
    if off.abs() > 0.05 {
        return Check::problem(
            NAME,
            Status::Fail,
            value,
            "samples arrive at a rate other than the configured one: beat times and heart \
             rates would be wrong",
            format!(
                "set --ecg-fs (or the daemon's ECG rate) to the board's rate, about {:.0} Hz",
                measured
            ),
        );
    }
    let problems = f.link.problems();
    if problems > 0 || f.disconnects.0 > 0 {
        return Check::problem(
            NAME,
            Status::Warn,
            value,
            format!(
                "the rate is right, but the link had {problems} problems and {} disconnects",
                f.disconnects.0
            ),
            "check the cable and connector; CRC errors or bad lines at a steady rate mean a \
             wrong baud rate or protocol",
        );
    }
    Check::ok(
        NAME,
        value,
        "samples arrive at the configured rate, no link errors",
    )
}

/// The verdict on the signal.
pub(super) fn judge_quality(f: &EcgFacts) -> Check {
    const NAME: &str = "ecg.quality";
    let (windows, good) = f.windows;
    if windows == 0 {
        return Check::problem(
            NAME,
            Status::Warn,
            format!("{} samples", f.samples),
            "too few samples for one 1-s quality window",
            "listen longer (--ecg-seconds 10) once samples arrive",
        );
    }
    let share = f64::from(good) / f64::from(windows);
    let hr = f
        .beats
        .1
        .map_or("no heart rate".to_string(), |hr| format!("{hr:.0} bpm"));
    let value = format!(
        "{:.0}% of {windows} 1-s windows good, {} beats, {hr}",
        share * 100.0,
        f.beats.0
    );
    if share >= 0.9 && f.beats.0 > 0 {
        return Check::ok(NAME, value, "good enough to gate on");
    }
    let names = ["leads off", "flat", "saturated", "noisy"];
    let worst = f
        .bad
        .iter()
        .enumerate()
        // The most frequent flag; on a tie the first in `names`, which lists the most
        // actionable first (leads off says exactly what to fix).
        .min_by_key(|(_, n)| std::cmp::Reverse(**n))
        .filter(|(_, n)| **n > 0)
        .map(|(i, _)| names[i]);
    let fix = match worst {
        Some("leads off") | Some("flat") => {
            "check the electrodes and lead wires on the patient (or the simulator) and the \
             cable to the board"
        }
        Some("saturated") => {
            "check electrode contact (a dry or loose electrode rails the amplifier)"
        }
        Some(_) => "check electrode contact and the ground lead; keep the cable away from mains",
        None => {
            "no beat was detected: check lead placement, or that --ecg-lead picks the right lead"
        }
    };
    let status = if share >= 0.5 && f.beats.0 > 0 {
        Status::Warn
    } else {
        Status::Fail
    };
    let detail = match worst {
        Some(w) => format!("mostly {w}: beats in bad windows are gated by time, not ECG"),
        None => "no heartbeat detected".to_string(),
    };
    Check::problem(NAME, status, value, detail, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> EcgFacts {
        EcgFacts {
            port: "/dev/echoview-ecg".into(),
            fs_hz: 500.0,
            listened_s: 10.0,
            samples: 5000,
            fitted_hz: 500.2,
            windows: (9, 9),
            beats: (11, Some(68.0)),
            ..EcgFacts::default()
        }
    }

    #[test]
    fn rate_verdicts() {
        assert_eq!(judge_rate(&facts()).status, Status::Ok);
        let none = EcgFacts {
            samples: 0,
            fitted_hz: 0.0,
            ..facts()
        };
        assert_eq!(judge_rate(&none).status, Status::Fail);
        let half = EcgFacts {
            fitted_hz: 250.0,
            ..facts()
        };
        let c = judge_rate(&half);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("about 250 Hz"));
        let mut crc = facts();
        crc.link.crc_errors = 3;
        assert_eq!(judge_rate(&crc).status, Status::Warn);
    }

    #[test]
    fn quality_verdicts_name_the_dominant_problem() {
        assert_eq!(judge_quality(&facts()).status, Status::Ok);
        let off = EcgFacts {
            windows: (9, 1),
            bad: [8, 8, 0, 0],
            beats: (0, None),
            ..facts()
        };
        let c = judge_quality(&off);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("leads off"), "{}", c.detail);
        assert!(c.fix.unwrap().contains("electrodes"));
        let noisy = EcgFacts {
            windows: (10, 7),
            bad: [0, 0, 0, 3],
            ..facts()
        };
        assert_eq!(judge_quality(&noisy).status, Status::Warn);
    }

    #[test]
    fn a_missing_port_fails_and_skips_the_rest() {
        let args = ListenArgs {
            port: PathBuf::from("/nonexistent/ttyECG"),
            protocol: crate::serial::command::ProtocolArg::Binary,
            fs: 500.0,
            lead: 0,
            baud: 115_200,
            scale: 1.0,
            video_lag_ms: 0.0,
        };
        let c = checks(&args, 0.2);
        assert_eq!(c[0].status, Status::Fail);
        assert!(c[0].detail.contains("/nonexistent/ttyECG does not exist"));
        assert_eq!((c[1].status, c[2].status), (Status::Skip, Status::Skip));
    }
}
