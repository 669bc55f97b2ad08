//! Protocol a: ECG as text lines, one sample per line, as simple boards and hobby front ends
//! (an AD8232 on a microcontroller, a bench ECG simulator) send it.
//!
//! A line is one or more comma-separated decimal numbers (one per lead), ended by LF (a CR
//! before it is ignored); the configured lead picks the column, scaled by a configured number of
//! millivolts per unit. A column reading `!` is a sample taken with the electrodes off (the
//! convention of the common AD8232 example sketches). Blank lines are ignored. The full rules
//! are in `board/ecg-protocol.md`.
//!
//! Text has no sample counter, so indices come from counting lines: every line after the
//! first good sample is one sample slot, and a line that cannot be read (noise, a lost byte)
//! still advances the index by one, so the samples after it keep their places. What a text
//! stream cannot tell is how many lines vanished while the port was closed; after a reconnect
//! [`crate::serial::stream::EcgStream`] estimates that from arrival times.

use super::{Decoded, LinkStats, Sample, SerialError};

/// Longest line accepted, in bytes before the LF: eight leads of `-12345.678` with separators
/// fit in a third of it, and a limit stops a stream without newlines from growing memory.
pub const MAX_LINE: usize = 128;

/// The most columns a line may be asked for: more leads than any ECG front end has.
pub const MAX_LEAD: usize = 15;

/// Settings of protocol a.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsciiConfig {
    /// Column holding the lead to use, counting from 0: multi-lead boards print all their
    /// leads on one line.
    pub lead: usize,
    /// Millivolts per unit of the numbers sent: boards print microvolts, millivolts or raw
    /// converter counts, while the quality thresholds downstream are in millivolts.
    pub mv_per_unit: f64,
}

impl Default for AsciiConfig {
    /// Column 0, values in millivolts.
    fn default() -> AsciiConfig {
        AsciiConfig {
            lead: 0,
            mv_per_unit: 1.0,
        }
    }
}

impl AsciiConfig {
    /// Checks the lead and the scale, naming the flag to fix.
    pub fn validate(&self) -> Result<(), SerialError> {
        if self.lead > MAX_LEAD {
            return Err(SerialError::Config {
                problem: format!(
                    "--lead {} is beyond the {} columns an ASCII line may have; count columns \
                     from 0",
                    self.lead,
                    MAX_LEAD + 1
                ),
            });
        }
        if !(self.mv_per_unit.is_finite() && self.mv_per_unit > 0.0) {
            return Err(SerialError::Config {
                problem: format!(
                    "--scale {} must be a positive number of millivolts per unit (1 for \
                     millivolts, 0.001 for microvolts)",
                    self.mv_per_unit
                ),
            });
        }
        Ok(())
    }
}

/// Push-driven decoder of protocol a.
#[derive(Debug, Clone)]
pub struct AsciiDecoder {
    /// Column and scale.
    config: AsciiConfig,
    /// The current line's bytes, without the LF.
    line: Vec<u8>,
    /// The current line passed [`MAX_LINE`]: its bytes are dropped up to the LF, then it counts
    /// as one bad line.
    overlong: bool,
    /// An LF has been seen since the link (re)opened, so the current line began at a line
    /// start; before that the bytes are the tail of a line sent before we listened.
    synced: bool,
    /// A good sample has been decoded: from then on every line is a sample slot (before, bad
    /// lines are a header or start-up chatter, not lost samples).
    started: bool,
    /// Index the next sample gets.
    next_index: u64,
    /// Complete lines since the first LF, for messages that point at a line.
    line_no: u64,
    /// Counters.
    stats: LinkStats,
}

impl AsciiDecoder {
    /// A decoder with `config` (validated by the caller, see [`AsciiConfig::validate`]).
    pub fn new(config: AsciiConfig) -> AsciiDecoder {
        AsciiDecoder {
            config,
            line: Vec::with_capacity(MAX_LINE),
            overlong: false,
            synced: false,
            started: false,
            next_index: 0,
            line_no: 0,
            stats: LinkStats::default(),
        }
    }

    /// Decodes `bytes`, appending a [`Decoded`] per completed line to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        self.stats.bytes += bytes.len() as u64;
        for &b in bytes {
            if !self.synced {
                self.stats.skipped_bytes += 1;
                self.synced = b == b'\n';
                continue;
            }
            if b == b'\n' {
                self.end_line(out);
            } else if self.overlong {
                self.stats.skipped_bytes += 1;
            } else if self.line.len() == MAX_LINE {
                self.stats.skipped_bytes += self.line.len() as u64 + 1;
                self.line.clear();
                self.overlong = true;
            } else {
                self.line.push(b);
            }
        }
    }

    /// The link was re-established: the partial line belongs to the old connection, and the
    /// first line of the new one is probably partial too, so decoding restarts at the next LF.
    pub fn reconnected(&mut self) {
        self.line.clear();
        self.overlong = false;
        self.synced = false;
    }

    /// The counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Handles the line just ended by an LF.
    fn end_line(&mut self, out: &mut Vec<Decoded>) {
        self.line_no += 1;
        let parsed = if self.overlong {
            Err(LineProblem::TooLong)
        } else {
            parse_line(&self.line, self.config)
        };
        self.line.clear();
        self.overlong = false;
        match parsed {
            Ok(None) => {}
            Ok(Some((mv, lead_off))) => {
                self.started = true;
                self.stats.lines += 1;
                self.stats.samples += 1;
                out.push(Decoded::Sample(Sample {
                    index: self.next_index,
                    mv,
                    lead_off,
                }));
                self.next_index += 1;
            }
            Err(problem) if self.started => {
                self.stats.bad_lines += 1;
                self.stats.lost_samples += 1;
                if matches!(problem, LineProblem::MissingColumn { .. }) {
                    self.stats.missing_lead += 1;
                }
                self.stats.note(format!("line {}: {problem}", self.line_no));
                out.push(Decoded::Lost {
                    first_index: self.next_index,
                    count: 1,
                });
                self.next_index += 1;
            }
            Err(problem) => {
                // Before the first sample: a header line or boot message, not a lost sample.
                self.stats.note(format!(
                    "line {} (before the first sample, ignored): {problem}",
                    self.line_no
                ));
            }
        }
    }
}

/// Why a line gave no sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// Not UTF-8: usually a baud-rate mismatch or a board speaking the binary protocol.
    NotText,
    /// Fewer columns than the configured lead needs: a wrong `--lead`.
    MissingColumn {
        /// Columns the line has.
        columns: usize,
        /// The configured lead (column index from 0).
        lead: usize,
    },
    /// The lead's column is not a finite decimal number.
    NotANumber {
        /// The column index.
        lead: usize,
        /// The start of what was there, quoted in the message.
        text: String,
    },
    /// The line ran past [`MAX_LINE`] bytes without an LF.
    TooLong,
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineProblem::NotText => {
                write!(f, "is not text (a baud-rate mismatch, or a binary board?)")
            }
            LineProblem::MissingColumn { columns, lead } => write!(
                f,
                "has {columns} column(s), lead {lead} needs {} (check --lead, counted from 0)",
                lead + 1
            ),
            LineProblem::NotANumber { lead, text } => {
                write!(f, "column {lead} is {text:?}, not a number")
            }
            LineProblem::TooLong => write!(f, "is longer than {MAX_LINE} bytes"),
        }
    }
}

/// Reads one line (without its LF): `Ok(None)` for a blank line, `Ok(Some((mv, lead_off)))`
/// for a sample, the problem otherwise. Pure, so it is tested on its own.
pub fn parse_line(line: &[u8], config: AsciiConfig) -> Result<Option<(f32, bool)>, LineProblem> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| LineProblem::NotText)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let Some(field) = text.split(',').nth(config.lead) else {
        return Err(LineProblem::MissingColumn {
            columns: text.split(',').count(),
            lead: config.lead,
        });
    };
    let field = field.trim();
    if field == "!" {
        return Ok(Some((0.0, true)));
    }
    // Only plain decimal notation: f64's parser would also take "inf" and "NaN".
    let plain = !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    let value = plain
        .then(|| field.parse::<f64>().ok())
        .flatten()
        .map(|v| v * config.mv_per_unit)
        .filter(|mv| mv.is_finite() && mv.abs() <= f64::from(f32::MAX));
    match value {
        Some(mv) => Ok(Some((mv as f32, false))),
        None => Err(LineProblem::NotANumber {
            lead: config.lead,
            text: field.chars().take(24).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(lead: usize, scale: f64) -> AsciiDecoder {
        AsciiDecoder::new(AsciiConfig {
            lead,
            mv_per_unit: scale,
        })
    }

    fn samples(out: &[Decoded]) -> Vec<(u64, f32, bool)> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Sample(s) => Some((s.index, s.mv, s.lead_off)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_columns_scale_and_lead_off() {
        let c = AsciiConfig {
            lead: 1,
            mv_per_unit: 0.001,
        };
        assert_eq!(parse_line(b"10, 250 ,3", c), Ok(Some((0.25, false))));
        assert_eq!(parse_line(b"10,-1.5e3\r", c), Ok(Some((-1.5, false))));
        assert_eq!(parse_line(b"10,!", c), Ok(Some((0.0, true))));
        assert_eq!(parse_line(b"  \r", c), Ok(None));
        assert_eq!(
            parse_line(b"10", c),
            Err(LineProblem::MissingColumn {
                columns: 1,
                lead: 1
            })
        );
        assert!(
            parse_line(b"10", c)
                .unwrap_err()
                .to_string()
                .contains("needs 2")
        );
        assert!(parse_line(b"1,inf", c).is_err());
        assert!(parse_line(b"1,NaN", c).is_err());
        assert!(parse_line(b"1,1e999", c).is_err());
        assert!(parse_line(b"1,", c).is_err());
        assert!(parse_line(b"1,--3", c).is_err());
        assert!(parse_line(b"1,\xff\xfe", c).is_err());
    }

    #[test]
    fn first_partial_line_is_dropped_and_indices_count_lines() {
        let mut d = decoder(0, 1.0);
        let mut out = Vec::new();
        d.push(b".25\n0.5\n-1\r\n\n!\n", &mut out);
        assert_eq!(
            samples(&out),
            vec![(0, 0.5, false), (1, -1.0, false), (2, 0.0, true)]
        );
        assert_eq!(d.stats().skipped_bytes, 4);
        assert_eq!(d.stats().samples, 3);
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let text = b"junk\nECG\n1\n2\n3x\n4\n\n5\n";
        let mut whole = Vec::new();
        let mut d1 = decoder(0, 1.0);
        d1.push(text, &mut whole);
        let mut split = Vec::new();
        let mut d2 = decoder(0, 1.0);
        for b in text {
            d2.push(std::slice::from_ref(b), &mut split);
        }
        assert_eq!(whole, split);
        assert_eq!(d1.stats(), d2.stats());
        // "ECG" comes before the first sample: ignored. "3x" after it: one lost sample.
        assert_eq!(
            whole,
            vec![
                Decoded::Sample(Sample {
                    index: 0,
                    mv: 1.0,
                    lead_off: false
                }),
                Decoded::Sample(Sample {
                    index: 1,
                    mv: 2.0,
                    lead_off: false
                }),
                Decoded::Lost {
                    first_index: 2,
                    count: 1
                },
                Decoded::Sample(Sample {
                    index: 3,
                    mv: 4.0,
                    lead_off: false
                }),
                Decoded::Sample(Sample {
                    index: 4,
                    mv: 5.0,
                    lead_off: false
                }),
            ]
        );
        assert_eq!(d1.stats().bad_lines, 1);
        assert_eq!(d1.stats().lost_samples, 1);
        assert!(
            d1.stats()
                .last_problem
                .as_deref()
                .unwrap()
                .contains("line 4")
        );
    }

    #[test]
    fn overlong_line_is_one_lost_sample() {
        let mut d = decoder(0, 1.0);
        let mut out = Vec::new();
        d.push(b"\n1\n", &mut out);
        d.push(&[b'7'; 1000], &mut out);
        d.push(b"\n2\n", &mut out);
        assert_eq!(
            out,
            vec![
                Decoded::Sample(Sample {
                    index: 0,
                    mv: 1.0,
                    lead_off: false
                }),
                Decoded::Lost {
                    first_index: 1,
                    count: 1
                },
                Decoded::Sample(Sample {
                    index: 2,
                    mv: 2.0,
                    lead_off: false
                }),
            ]
        );
        assert_eq!(d.stats().skipped_bytes, 1 + 1000);
    }

    #[test]
    fn missing_column_counts_as_missing_lead() {
        let mut d = decoder(2, 1.0);
        let mut out = Vec::new();
        d.push(b"\n1,2,3\n1,2\n", &mut out);
        assert_eq!(samples(&out), vec![(0, 3.0, false)]);
        assert_eq!(d.stats().missing_lead, 1);
    }

    #[test]
    fn reconnect_drops_the_partial_line() {
        let mut d = decoder(0, 1.0);
        let mut out = Vec::new();
        d.push(b"\n1\n2", &mut out);
        d.reconnected();
        d.push(b"7\n3\n", &mut out);
        assert_eq!(samples(&out), vec![(0, 1.0, false), (1, 3.0, false)]);
    }

    #[test]
    fn config_is_checked() {
        assert!(AsciiConfig::default().validate().is_ok());
        let bad_scale = AsciiConfig {
            mv_per_unit: 0.0,
            ..AsciiConfig::default()
        };
        assert!(
            bad_scale
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--scale")
        );
        let bad_lead = AsciiConfig {
            lead: 99,
            ..AsciiConfig::default()
        };
        assert!(
            bad_lead
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--lead")
        );
    }
}
