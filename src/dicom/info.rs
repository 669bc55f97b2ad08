//! `echoview dicom info`: what replay would make of each DICOM export, so QA staff can check
//! a batch of PACS exports before replaying them (and see why one cannot be used).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::DicomCine;
use super::ecg::HeartbeatSource;

/// `echoview dicom ...`
#[derive(Debug, Subcommand)]
pub enum DicomCommand {
    /// Describe DICOM exports: frames, size, encoding, frame time, image region and where
    /// heartbeats come from (ecg | r-wave times | image); exits non-zero if any is unusable.
    Info(InfoArgs),
}

/// `echoview dicom info`
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// DICOM files (Part 10, or a bare dataset).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One JSON object per file instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One file's description, as JSON and as text.
#[derive(Debug, Serialize)]
struct FileInfo {
    /// The file as given.
    file: String,
    /// Whether replay can use it.
    usable: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The rest, when it can.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

/// What a usable file holds.
#[derive(Debug, Serialize)]
struct Details {
    frames: u32,
    rows: u32,
    columns: u32,
    photometric_interpretation: String,
    transfer_syntax: String,
    transfer_syntax_uid: String,
    /// The timing attribute used.
    timing: &'static str,
    /// Mean frame interval, milliseconds.
    frame_time_ms: f64,
    /// `[x, y, width, height]` of the crop replay uses, when the file has a 2D region inside
    /// the frame.
    image_region: Option<[u32; 4]>,
    /// Ultrasound regions in the file (some may be unusable).
    regions: usize,
    /// `ecg`, `r-wave times` or `image`.
    heartbeats: &'static str,
    /// The ECG lead used, when heartbeats come from the ECG.
    #[serde(skip_serializing_if = "Option::is_none")]
    ecg_lead: Option<String>,
}

/// Runs `echoview dicom ...`.
pub fn run(command: &DicomCommand) -> anyhow::Result<ExitCode> {
    let DicomCommand::Info(args) = command;
    let mut unusable = 0;
    for path in &args.files {
        let info = match DicomCine::open(path) {
            Ok(cine) => {
                let mut info = describe(path, &cine);
                // Decodable, but replay cuts heartbeats and a still image has none.
                if cine.summary().frames < 2 {
                    unusable += 1;
                    info.usable = false;
                    info.error =
                        Some(super::DicomError::SingleFrame { path: path.clone() }.to_string());
                }
                info
            }
            Err(e) => {
                unusable += 1;
                FileInfo {
                    file: path.display().to_string(),
                    usable: false,
                    error: Some(e.to_string()),
                    details: None,
                }
            }
        };
        if args.json {
            println!("{}", serde_json::to_string(&info)?);
        } else {
            print_text(&info);
        }
    }
    if unusable > 0 {
        eprintln!(
            "echoview: {unusable} of {} files cannot be replayed",
            args.files.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(path: &std::path::Path, cine: &DicomCine) -> FileInfo {
    let s = cine.summary();
    FileInfo {
        file: path.display().to_string(),
        usable: true,
        error: None,
        details: Some(Details {
            frames: s.frames,
            rows: s.rows,
            columns: s.columns,
            photometric_interpretation: s.photometric.clone(),
            transfer_syntax: s.transfer_syntax.clone(),
            transfer_syntax_uid: s.transfer_syntax_uid.clone(),
            timing: s.timing.source.name(),
            frame_time_ms: (s.timing.mean_interval_ms() * 1000.0).round() / 1000.0,
            image_region: s.image_region.map(|r| [r.x, r.y, r.width, r.height]),
            regions: s.regions.len(),
            heartbeats: s.heartbeat.name(),
            ecg_lead: match s.heartbeat {
                HeartbeatSource::Ecg => s.ecg.as_ref().map(|l| {
                    format!(
                        "{} at {} Hz",
                        if l.label.is_empty() {
                            "channel 1"
                        } else {
                            &l.label
                        },
                        l.fs_hz
                    )
                }),
                _ => None,
            },
        }),
    }
}

fn print_text(info: &FileInfo) {
    if let Some(error) = &info.error {
        println!("{}: UNUSABLE: {error}", info.file);
    }
    let Some(d) = &info.details else {
        return;
    };
    println!("{}:", info.file);
    println!("  frames:          {}", d.frames);
    println!("  size:            {} columns x {} rows", d.columns, d.rows);
    println!("  photometric:     {}", d.photometric_interpretation);
    println!(
        "  transfer syntax: {} ({})",
        d.transfer_syntax, d.transfer_syntax_uid
    );
    println!("  frame time:      {} ms ({})", d.frame_time_ms, d.timing);
    match d.image_region {
        Some([x, y, w, h]) => println!("  image region:    {w}x{h} at ({x}, {y})"),
        None if d.regions > 0 => println!(
            "  image region:    none usable ({} region(s), none a 2D image inside the frame: \
             resized export?); found from the pixels",
            d.regions
        ),
        None => println!("  image region:    none in the file (found from the pixels)"),
    }
    match &d.ecg_lead {
        Some(lead) => println!("  heartbeats:      {} ({lead})", d.heartbeats),
        None => println!("  heartbeats:      {}", d.heartbeats),
    }
}
