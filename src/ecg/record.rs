//! Whole-file ECG input for offline use (the `echoview ecg detect` command and tests).
//!
//! The live path streams samples into [`QrsDetector`] directly; this module only turns a file
//! into samples, checking that the file really is in the format the operator named, because a
//! CSV read as int16 (or the reverse) yields a plausible-looking but meaningless signal.

use std::path::Path;

use super::{EcgError, QrsDetector, RPeak};

/// How the samples of an ECG file are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Raw little-endian signed 16-bit integers, one per sample (MIT-BIH style ADC counts).
    I16Le,
    /// Text, one numeric value per line; the first non-empty line may be a non-numeric header.
    Csv,
}

impl SampleFormat {
    /// The name used on the command line (`i16`, `csv`).
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::I16Le => "i16",
            SampleFormat::Csv => "csv",
        }
    }

    /// Parses a name as [`SampleFormat::name`] writes it, ignoring case.
    pub fn from_name(name: &str) -> Option<SampleFormat> {
        [SampleFormat::I16Le, SampleFormat::Csv]
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Reads every sample of the file at `path`, encoded as `format`.
pub fn read_samples(path: &Path, format: SampleFormat) -> Result<Vec<f32>, EcgError> {
    let bytes = std::fs::read(path).map_err(|source| EcgError::Io {
        path: path.to_owned(),
        source,
    })?;
    let problem = |problem: String| EcgError::Format {
        path: path.to_owned(),
        problem,
    };
    if bytes.is_empty() {
        return Err(problem(format!(
            "the file is empty (0 bytes); expected {} ECG samples",
            format.name()
        )));
    }
    match format {
        SampleFormat::I16Le => parse_i16(&bytes).map_err(problem),
        SampleFormat::Csv => parse_csv(&bytes).map_err(problem),
    }
}

/// Detects every R peak of a whole recording sampled at `fs_hz`, including the beats that only
/// the end-of-stream flush can confirm.
pub fn detect_all(samples: &[f32], fs_hz: f64) -> Result<Vec<RPeak>, EcgError> {
    let mut detector = QrsDetector::new(fs_hz)?;
    let mut peaks: Vec<RPeak> = samples.iter().filter_map(|&s| detector.push(s)).collect();
    peaks.extend(detector.finish());
    Ok(peaks)
}

fn parse_i16(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if looks_like_text(bytes) {
        return Err(format!(
            "asked for i16 but the file is text ({} bytes of printable characters and line breaks, \
             starting {:?}); a CSV file needs --format csv",
            bytes.len(),
            preview(bytes)
        ));
    }
    if !bytes.len().is_multiple_of(2) {
        return Err(format!(
            "i16 needs an even number of bytes (2 per sample) but the file has {}; the last byte \
             (offset {}) is half a sample, so the file is truncated or not int16 (use --format csv \
             for text)",
            bytes.len(),
            bytes.len() - 1
        ));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect())
}

fn parse_csv(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(format!(
            "asked for csv but the file is binary (a zero byte at offset {at}); a raw int16 file \
             needs --format i16"
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "asked for csv but the file is not text (invalid UTF-8 at byte {}); a raw int16 file \
             needs --format i16",
            e.valid_up_to()
        )
    })?;
    let mut samples = Vec::new();
    let mut seen_first = false;
    for (n, line) in text.lines().enumerate() {
        let field = line.trim();
        if field.is_empty() {
            continue;
        }
        let first = !seen_first;
        seen_first = true;
        match field.parse::<f32>() {
            Ok(v) if v.is_finite() => samples.push(v),
            Ok(_) => {
                return Err(format!(
                    "line {}: {field:?} is not a finite number; replace gaps with a real value",
                    n + 1
                ));
            }
            // Only the first non-empty line may be a header such as `mv` or `sample`.
            Err(_) if first => {}
            Err(_) => {
                return Err(format!(
                    "line {}: {:?} is not a number; csv needs one numeric value per line \
                     (only the first line may be a header)",
                    n + 1,
                    truncate(field)
                ));
            }
        }
    }
    if samples.is_empty() {
        return Err("no numeric samples: the file has at most a header line".to_owned());
    }
    Ok(samples)
}

/// True when every byte is printable ASCII or whitespace and there is at least one line break:
/// real int16 ECG is full of 0x00/0xFF high bytes, so such a file is text given the wrong format.
fn looks_like_text(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn preview(bytes: &[u8]) -> String {
    truncate(&String::from_utf8_lossy(&bytes[..bytes.len().min(24)]))
}

fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        s.chars().take(MAX).collect::<String>() + "..."
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecg::synth::{Beat, Rng, ecg, r_times};
    use std::io::Write;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn error(bytes: &[u8], format: SampleFormat) -> String {
        let f = file(bytes);
        let msg = read_samples(f.path(), format).unwrap_err().to_string();
        assert!(
            msg.contains(&f.path().display().to_string()),
            "names the file: {msg}"
        );
        msg
    }

    #[test]
    fn reads_little_endian_i16() {
        let values: [i16; 4] = [0, -1, 1024, i16::MIN];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = file(&bytes);
        let x = read_samples(f.path(), SampleFormat::I16Le).unwrap();
        assert_eq!(x, vec![0.0, -1.0, 1024.0, -32768.0]);
    }

    #[test]
    fn reads_csv_with_or_without_header() {
        let f = file(b"mv\r\n0.5\n-1.25\n\n3e-1\n");
        assert_eq!(
            read_samples(f.path(), SampleFormat::Csv).unwrap(),
            vec![0.5, -1.25, 0.3]
        );
        let f = file(b" 7\n8 \n");
        assert_eq!(
            read_samples(f.path(), SampleFormat::Csv).unwrap(),
            vec![7.0, 8.0]
        );
    }

    #[test]
    fn odd_i16_file_names_the_byte_and_the_fix() {
        let msg = error(&[1, 0, 2, 0, 3], SampleFormat::I16Le);
        assert!(
            msg.contains("even number of bytes")
                && msg.contains("has 5")
                && msg.contains("offset 4"),
            "{msg}"
        );
    }

    #[test]
    fn text_read_as_i16_says_to_use_csv() {
        let msg = error(b"sample\n12\n-3\n", SampleFormat::I16Le);
        assert!(
            msg.contains("text") && msg.contains("--format csv"),
            "{msg}"
        );
    }

    #[test]
    fn binary_read_as_csv_says_to_use_i16() {
        let msg = error(&[0x10, 0x00, 0xf0, 0xff], SampleFormat::Csv);
        assert!(
            msg.contains("binary") && msg.contains("offset 1") && msg.contains("--format i16"),
            "{msg}"
        );
        let msg = error(&[0x31, 0xff, 0xfe, 0x0a], SampleFormat::Csv);
        assert!(
            msg.contains("not text") && msg.contains("--format i16"),
            "{msg}"
        );
    }

    #[test]
    fn bad_csv_line_is_located() {
        let msg = error(b"mv\n1.0\n2.0\nabc\n", SampleFormat::Csv);
        assert!(msg.contains("line 4") && msg.contains("\"abc\""), "{msg}");
        let msg = error(b"1.0\n2.0,3.0\n", SampleFormat::Csv);
        assert!(
            msg.contains("line 2") && msg.contains("one numeric value per line"),
            "{msg}"
        );
        let msg = error(b"1.0\nNaN\n", SampleFormat::Csv);
        assert!(msg.contains("line 2") && msg.contains("finite"), "{msg}");
    }

    #[test]
    fn empty_and_header_only_files_are_refused() {
        assert!(error(b"", SampleFormat::I16Le).contains("empty"));
        assert!(error(b"", SampleFormat::Csv).contains("empty"));
        assert!(error(b"mv\n\n", SampleFormat::Csv).contains("no numeric samples"));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.i16");
        let err = read_samples(&path, SampleFormat::I16Le).unwrap_err();
        assert!(matches!(err, EcgError::Io { .. }));
        assert!(err.to_string().contains("absent.i16"), "{err}");
    }

    #[test]
    fn formats_round_trip_by_name() {
        for f in [SampleFormat::I16Le, SampleFormat::Csv] {
            assert_eq!(SampleFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(SampleFormat::from_name(" CSV "), Some(SampleFormat::Csv));
        assert_eq!(SampleFormat::from_name("wav"), None);
    }

    #[test]
    fn detect_all_finds_every_beat_and_checks_the_rate() {
        let fs = 360.0;
        let mut rng = Rng::new(29);
        let truth = r_times(30, 0.8, 0.1, &mut rng);
        let x = ecg(
            fs,
            truth[29] + 0.15,
            &truth,
            &vec![Beat::default(); 30],
            0.02,
            &mut rng,
        );
        let peaks = detect_all(&x, fs).unwrap();
        assert_eq!(peaks.len(), 30, "includes the beat only the flush confirms");
        assert!(matches!(
            detect_all(&x, 100.0),
            Err(EcgError::UnsupportedRate { .. })
        ));
    }
}
