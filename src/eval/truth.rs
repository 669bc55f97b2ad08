//! Truth given in a CSV file, for sessions without a truth channel (real recordings labelled
//! by a sonographer): `file,label` labels a whole session, `file,beat,label` one beat (by its
//! running beat number, as `echoview replay` prints it). A header line naming the columns is
//! allowed; `#` starts a comment line.
//!
//! A file is matched by the path as given on the command line or by its file name alone, so
//! one CSV serves whichever folder the sessions are replayed from.

use std::collections::BTreeMap;
use std::path::Path;

use crate::views::View;

/// Why a truth CSV was refused.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// The file could not be read.
    #[error("cannot read the truth file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A line is not `file,label` or `file,beat,label`.
    #[error("{path} line {line}: {why}; expected `file,label` or `file,beat,label`")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The truth for one session file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTruth {
    /// The view the whole session shows, from a `file,label` line.
    pub whole: Option<View>,
    /// Views of single beats, from `file,beat,label` lines.
    pub beats: BTreeMap<u64, View>,
}

/// Truth per file, keyed by the file as written in the CSV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TruthTable {
    /// Entries by the file column.
    files: BTreeMap<String, SessionTruth>,
}

impl TruthTable {
    /// Reads a truth CSV.
    pub fn load(path: &Path) -> Result<TruthTable, TruthError> {
        let text = std::fs::read_to_string(path).map_err(|source| TruthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        TruthTable::parse(&text, &path.display().to_string())
    }

    /// Parses CSV text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<TruthTable, TruthError> {
        let mut table = TruthTable::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| TruthError::Line {
                path: source.to_string(),
                line: i + 1,
                why,
            };
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let label_col = cols.last().copied().unwrap_or("");
            if i == 0 && label_col.eq_ignore_ascii_case("label") {
                continue;
            }
            let view = View::from_name(label_col)
                .ok_or_else(|| err(format!("{label_col:?} is not a view name")))?;
            let entry = match cols.as_slice() {
                [file, _] | [file, _, _] if !file.is_empty() => {
                    table.files.entry((*file).to_string()).or_default()
                }
                _ => return Err(err(format!("{} columns", cols.len()))),
            };
            if let [_, beat, _] = cols.as_slice() {
                let beat = beat
                    .parse::<u64>()
                    .map_err(|_| err(format!("beat {beat:?} is not a beat number")))?;
                entry.beats.insert(beat, view);
            } else {
                entry.whole = Some(view);
            }
        }
        Ok(table)
    }

    /// The truth for `session`: by the path as given, else by its file name.
    pub fn get(&self, session: &Path) -> Option<&SessionTruth> {
        self.files.get(&session.display().to_string()).or_else(|| {
            let name = session.file_name()?.to_str()?;
            self.files.get(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_session_and_beat_lines() {
        let t = TruthTable::parse(
            "file,beat,label\n# comment\na.mcap,PLAX\ndata/b.mcap, 3, a4c\ndata/b.mcap,4,A4C\n",
            "t.csv",
        )
        .unwrap();
        assert_eq!(
            t.get(Path::new("x/a.mcap")).unwrap().whole,
            Some(View::Plax)
        );
        let b = t.get(Path::new("data/b.mcap")).unwrap();
        assert_eq!(b.whole, None);
        assert_eq!(b.beats.get(&3), Some(&View::A4c));
        assert!(t.get(Path::new("c.mcap")).is_none());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = TruthTable::parse("a.mcap,PLAX\nb.mcap,XYZ\n", "t.csv").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = TruthTable::parse("a.mcap,x,PLAX\n", "t.csv").unwrap_err();
        assert!(err.to_string().contains("beat"), "{err}");
        let err = TruthTable::parse("PLAX\n", "t.csv").unwrap_err();
        assert!(err.to_string().contains("1 columns"), "{err}");
    }
}
