//! `echoview doctor`: checks that a cart can run, each with a status, the value measured and,
//! for every problem, the fix.
//!
//! A field engineer runs it after installing, after moving a cart, and whenever labels stop;
//! the install script runs it last. Each check measures something real (opens the device,
//! listens to the ECG, runs the model) and hands the measurement to a pure judge function,
//! so the verdicts are tested without hardware. The checks:
//!
//! | name | what is measured |
//! | --- | --- |
//! | `video.device` | the capture device node exists and opens for reading |
//! | `video.stream` | the format and frame rate it delivers (feature `v4l`) |
//! | `ecg.port` | the ECG serial port exists and opens |
//! | `ecg.rate` | samples arrive at the configured rate; link errors |
//! | `ecg.quality` | fraction of good 1-s windows over `--ecg-seconds`, heart rate |
//! | `model.bundle` | the bundle's hashes |
//! | `model.selftest` | the reference input through the engine matches the exporter |
//! | `engine.tensorrt` | TensorRT runtime, plan and GPU (when built with TensorRT) |
//! | `engine.latency` | median encoder time per frame and head time per beat |
//! | `socket` | the socket's folder and group |
//! | `disk` | free space for recordings against the configured floor |
//! | `clock` | the wall clock's year, and that it runs with the monotonic clock |

pub mod command;
mod ecg;
mod model;
mod system;
mod video;

use std::fmt;
use std::time::Instant;

use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as configured.
    Ok,
    /// Works, but something is off that may cost labels (the fix says what).
    Warn,
    /// Does not work: the cart cannot do its job until the fix is applied.
    Fail,
    /// Not checked, and why (not configured, or not in this build).
    Skip,
}

impl Status {
    /// The lowercase name used in both outputs.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`, so the table's column widths apply.
        f.pad(self.name())
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Stable dotted name (`ecg.rate`), for scripts that read the JSON.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was measured, in units a person reads (`29.97 fps`, `412 MB free`).
    pub value: String,
    /// Why this verdict, in a sentence.
    pub detail: String,
    /// What to do about a warning or failure; `None` when there is nothing to do.
    pub fix: Option<String>,
    /// How long the check took, in milliseconds (set by the runner).
    pub ms: f64,
}

impl Check {
    /// A passing check.
    pub fn ok(name: &'static str, value: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            value: value.into(),
            detail: detail.into(),
            fix: None,
            ms: 0.0,
        }
    }

    /// A check with a problem and its fix.
    pub fn problem(
        name: &'static str,
        status: Status,
        value: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status,
            value: value.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
            ms: 0.0,
        }
    }

    /// A check not run, and why.
    pub fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skip,
            value: String::new(),
            detail: detail.into(),
            fix: None,
            ms: 0.0,
        }
    }
}

/// Runs `check`, stamping every result it returns with the time it took (shared equally
/// when one measurement yields several checks).
pub fn timed(check: impl FnOnce() -> Vec<Check>) -> Vec<Check> {
    let start = Instant::now();
    let mut checks = check();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let share = ms / checks.len().max(1) as f64;
    for c in &mut checks {
        c.ms = (share * 10.0).round() / 10.0;
    }
    checks
}

/// Everything `doctor` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The build that ran the checks (`echoview --version`).
    pub version: &'static str,
    /// True when no check failed.
    pub ok: bool,
    /// Checks that failed.
    pub failed: usize,
    /// Checks that warned.
    pub warnings: usize,
    /// Wall time of the whole run, milliseconds.
    pub elapsed_ms: f64,
    /// Every check, in the order of the module table.
    pub checks: Vec<Check>,
}

impl Report {
    /// The report for `checks`, which took `elapsed_ms`.
    pub fn new(checks: Vec<Check>, elapsed_ms: f64) -> Report {
        let count = |s| checks.iter().filter(|c| c.status == s).count();
        let failed = count(Status::Fail);
        Report {
            version: crate::version::LONG,
            ok: failed == 0,
            failed,
            warnings: count(Status::Warn),
            elapsed_ms: elapsed_ms.round(),
            checks,
        }
    }
}

impl fmt::Display for Report {
    /// The human-readable form: one line per check, the fix indented below a problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "echoview doctor: echoview {}", self.version)?;
        for c in &self.checks {
            let value = if c.value.is_empty() {
                String::new()
            } else {
                format!("{}: ", c.value)
            };
            writeln!(f, "{:<4}  {:<15} {value}{}", c.status, c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "      {:<15} fix: {fix}", "")?;
            }
        }
        write!(
            f,
            "{} checks: {} failed, {} warnings ({:.1} s)",
            self.checks.len(),
            self.failed,
            self.warnings,
            self.elapsed_ms / 1e3
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_makes_the_report_fail_and_warnings_do_not() {
        let report = Report::new(
            vec![
                Check::ok("a", "1", "fine"),
                Check::problem("b", Status::Warn, "2", "meh", "do x"),
                Check::skip("c", "not built"),
            ],
            5.0,
        );
        assert!(report.ok);
        assert_eq!((report.failed, report.warnings), (0, 1));
        let report = Report::new(
            vec![Check::problem("d", Status::Fail, "", "broken", "do y")],
            5.0,
        );
        assert!(!report.ok);
        let text = report.to_string();
        assert!(
            text.contains("fail  d") && text.contains("fix: do y"),
            "{text}"
        );
    }

    #[test]
    fn json_names_each_status_in_lowercase() {
        let json = serde_json::to_value(Check::skip("c", "why")).unwrap();
        assert_eq!(json["status"], "skip");
        assert_eq!(json["fix"], serde_json::Value::Null);
    }
}
