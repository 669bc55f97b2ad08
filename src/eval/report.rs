//! The evaluation report on disk: `report.json` with every figure, and the confusion
//! matrices as PNG images (`confusion_beats.png`, `confusion_sessions.png`).
//!
//! Images are drawn with plotters' bitmap backend; text uses DejaVu Sans, compiled in (see
//! `assets/fonts`, Bitstream Vera licence), so drawing needs no system fonts and gives the
//! same image on every machine.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontTransform;

use super::Evaluation;
use super::score::Confusion;
use crate::views::View;

/// Width of the confusion-matrix images, pixels.
pub const IMAGE_WIDTH: u32 = 960;
/// Height of the confusion-matrix images, pixels.
pub const IMAGE_HEIGHT: u32 = 800;
/// The font every text is drawn in.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Drawing failed.
    #[error("drawing {path}: {why}")]
    Draw {
        /// The image.
        path: String,
        /// What plotters said.
        why: String,
    },
}

/// Writes `report.json` and the two confusion images into `dir` (created if missing).
pub fn write(dir: &Path, evaluation: &Evaluation) -> Result<(), ReportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReportError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json_path = dir.join("report.json");
    let json = serde_json::to_vec_pretty(evaluation).map_err(|e| ReportError::Write {
        path: json_path.display().to_string(),
        source: e.into(),
    })?;
    std::fs::write(&json_path, json).map_err(io(&json_path))?;
    draw_confusion(
        &dir.join("confusion_beats.png"),
        &evaluation.beat_confusion,
        "Per beat",
    )?;
    draw_confusion(
        &dir.join("confusion_sessions.png"),
        &evaluation.session_confusion,
        "Per session",
    )
}

/// Draws `confusion` as a grid of cells shaded by the row fraction with the count written in.
fn draw_confusion(path: &Path, confusion: &Confusion, title: &str) -> Result<(), ReportError> {
    // Registered once per process; plotters keeps fonts in a global table.
    static FONT_LOADED: OnceLock<bool> = OnceLock::new();
    let font_ok = *FONT_LOADED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    let draw_err = |why: String| ReportError::Draw {
        path: path.display().to_string(),
        why,
    };
    if !font_ok {
        return Err(draw_err("the compiled-in font does not load".into()));
    }
    let root = BitMapBackend::new(path, (IMAGE_WIDTH, IMAGE_HEIGHT)).into_drawing_area();
    let e = |err: DrawingAreaErrorKind<_>| draw_err(err.to_string());
    root.fill(&WHITE).map_err(e)?;

    let rows = View::ALL.len() as i32;
    let cols = rows + 1;
    let (left, top, cell_w, cell_h) = (130, 150, 60, 52);
    let text = |size: f64| ("sans-serif", size).into_font().color(&BLACK);
    root.draw(&Text::new(
        format!("{title}: rows truth, columns label"),
        (left, 12),
        text(20.0),
    ))
    .map_err(e)?;
    for c in 0..cols {
        let name = if c < rows {
            View::ALL[c as usize].name()
        } else {
            "unknown"
        };
        let style = text(14.0).transform(FontTransform::Rotate270);
        root.draw(&Text::new(
            name,
            (left + c * cell_w + cell_w / 2 - 7, top - 8),
            style,
        ))
        .map_err(e)?;
    }
    for r in 0..rows {
        let row = &confusion.counts[r as usize];
        let total: u64 = row.iter().sum();
        root.draw(&Text::new(
            View::ALL[r as usize].name(),
            (8, top + r * cell_h + cell_h / 2 - 8),
            text(14.0),
        ))
        .map_err(e)?;
        for c in 0..cols {
            let n = row[c as usize];
            let fraction = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            // White to dark blue by the fraction of the row.
            let shade = |full: f64, empty: f64| (empty + (full - empty) * fraction) as u8;
            let fill = RGBColor(shade(8.0, 255.0), shade(48.0, 255.0), shade(107.0, 255.0));
            let (x0, y0) = (left + c * cell_w, top + r * cell_h);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell_w, y0 + cell_h)],
                fill.filled(),
            ))
            .map_err(e)?;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell_w, y0 + cell_h)],
                RGBColor(200, 200, 200),
            ))
            .map_err(e)?;
            if n > 0 {
                let colour = if fraction > 0.5 { WHITE } else { BLACK };
                let label = n.to_string();
                let x = x0 + cell_w / 2 - 5 * label.len() as i32;
                root.draw(&Text::new(
                    label,
                    (x, y0 + cell_h / 2 - 9),
                    ("sans-serif", 16.0).into_font().color(&colour),
                ))
                .map_err(e)?;
            }
        }
    }
    root.present().map_err(e)
}
