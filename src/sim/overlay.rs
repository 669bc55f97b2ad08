//! Burned-in annotations, as real carts draw them into the video they output: a clinic name
//! and patient ID, the probe and imaging settings, a depth scale beside the sector, and a
//! scrolling ECG trace along the bottom. A view classifier must learn to ignore all of it, so
//! the simulator draws it the way carts do, from a tiny built-in 5x7 bitmap font.

use super::render::{Layout, Look};

/// Grey level of text and scale marks.
const TEXT_GREY: u8 = 200;

/// Grey level of the ECG trace.
pub(crate) const TRACE_GREY: u8 = 220;

/// Seconds of ECG shown across the strip.
pub(crate) const STRIP_SECONDS: f64 = 4.0;

/// Rows of a 5x7 glyph, bit 4 the leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        // Anything else (only space is used) stays blank.
        _ => [0; 7],
    }
}

/// The text a cart shows for one segment.
#[derive(Debug, Clone)]
pub(crate) struct Annotation {
    /// Site name, top left.
    pub clinic: &'static str,
    /// Patient identifier, top left.
    pub patient_id: String,
    /// Frame rate shown top right.
    pub fps: f64,
    /// Heart rate shown by the ECG strip, bpm.
    pub hr_bpm: f64,
}

/// Made-up site names; one is picked per simulation seed.
pub(crate) const CLINICS: [&str; 4] = [
    "MERIDIAN HEART CLINIC",
    "ST ALDRIC CARDIOLOGY",
    "NORTHGATE ECHO LAB",
    "LAKESIDE CARDIAC UNIT",
];

/// The fixed pixels of one segment's annotations.
#[derive(Debug, Clone)]
pub(crate) struct Overlay {
    /// `(pixel index, grey)` pairs to stamp over each frame.
    pixels: Vec<(u32, u8)>,
}

/// Collects overlay pixels, skipping those inside the sector.
struct Pen<'a> {
    /// Frame width.
    w: usize,
    /// Frame height.
    h: usize,
    /// True for sector pixels, which annotations must not cover.
    sector: &'a [bool],
    /// Collected pixels.
    out: Vec<(u32, u8)>,
}

impl Pen<'_> {
    /// Sets one pixel if it is on screen and outside the sector.
    fn dot(&mut self, x: usize, y: usize, grey: u8) {
        if x < self.w && y < self.h && !self.sector[y * self.w + x] {
            self.out.push(((y * self.w + x) as u32, grey));
        }
    }

    /// Writes `s` with its top-left corner at `(x, y)`, glyphs magnified `scale` times.
    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch.to_ascii_uppercase());
            let gx = x + k * 6 * scale;
            for (ry, bits) in rows.iter().enumerate() {
                for cx in 0..5 {
                    if bits & (0x10 >> cx) == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            self.dot(gx + cx * scale + dx, y + ry * scale + dy, TEXT_GREY);
                        }
                    }
                }
            }
        }
    }

    /// Writes `s` ending at column `right`.
    fn text_right(&mut self, right: usize, y: usize, s: &str, scale: usize) {
        let width = s.chars().count() * 6 * scale;
        self.text(right.saturating_sub(width), y, s, scale);
    }
}

impl Overlay {
    /// The annotations of a segment imaged with `look`; `sector` marks sector pixels.
    pub(crate) fn new(layout: &Layout, look: &Look, note: &Annotation, sector: &[bool]) -> Overlay {
        let s = layout.text_scale;
        let mut pen = Pen {
            w: layout.w,
            h: layout.h,
            sector,
            out: Vec::new(),
        };
        let line = 9 * s;
        let m = 2 * s;
        pen.text(m, m, note.clinic, s);
        pen.text(m, m + line, "ADULT ECHO", s);
        pen.text(m, m + 2 * line, &format!("ID {}", note.patient_id), s);
        let right = layout.w - m;
        pen.text_right(right, m, "M5SC", s);
        pen.text_right(right, m + line, &format!("FR {:.0}HZ", note.fps), s);
        pen.text_right(right, m + 2 * line, &format!("{:.0}CM", look.depth_cm), s);
        pen.text_right(
            right,
            m + 3 * line,
            &format!("G {:.0}", 50.0 * look.gain),
            s,
        );
        pen.text_right(right, m + 4 * line, "MI 1.2", s);

        // Depth scale: a tick every cm, longer every 5 cm, right of the widest sector edge.
        let x = (layout.apex.x + layout.radius * (45f32).to_radians().sin()) as usize + 3 * s;
        let px_per_cm = layout.radius / look.depth_cm;
        let mut cm = 0usize;
        while (cm as f32) <= look.depth_cm + 1e-3 {
            let y = (layout.apex.y + cm as f32 * px_per_cm).round() as usize;
            let len = if cm.is_multiple_of(5) { 4 * s } else { 2 * s };
            for dx in 0..len {
                pen.dot(x + dx, y, TEXT_GREY);
            }
            cm += 1;
        }
        // Orientation marker beside the apex.
        let mx = (layout.apex.x + 0.2 * layout.radius) as usize;
        let my = (layout.apex.y * 0.5) as usize;
        for dy in 0..3 * s {
            for dx in 0..3 * s {
                pen.dot(mx + dx, my + dy, TEXT_GREY);
            }
        }
        // Heart rate inside the strip's top-left corner.
        let [sx0, sy0, _, _] = layout.strip;
        pen.text(sx0 + s, sy0 + s, &format!("HR {:.0}", note.hr_bpm), s);
        Overlay { pixels: pen.out }
    }

    /// Stamps the annotations onto a grey frame.
    pub(crate) fn apply(&self, out: &mut [u8]) {
        for &(i, g) in &self.pixels {
            out[i as usize] = g;
        }
    }
}

/// Draws the ECG strip: clears it and traces `samples` (the newest last, sampled at `fs` Hz,
/// the last one taken at `age_s` seconds before the frame), scrolling right to left. The
/// trace pixels are appended to `trace` so a colour format can tint them.
pub(crate) fn draw_strip(
    layout: &Layout,
    samples: &[f32],
    fs: f64,
    age_s: f64,
    out: &mut [u8],
    trace: &mut Vec<u32>,
) {
    let [x0, y0, x1, y1] = layout.strip;
    let w = layout.w;
    for row in out[y0 * w..y1 * w].chunks_mut(w) {
        row[x0..x1].fill(0);
    }
    let cols = (x1 - x0) as f64;
    let px_per_s = cols / STRIP_SECONDS;
    let height = (y1 - y0) as f64;
    let baseline = y0 as f64 + 0.62 * height;
    let px_per_mv = 0.3 * height;
    let thick = layout.text_scale.min(2);
    let n = samples.len();
    let mut prev: Option<(f64, f64)> = None;
    let mut plot = |x: f64, y: f64, out: &mut [u8]| {
        let xi = x.round();
        if xi < x0 as f64 || xi >= x1 as f64 {
            return;
        }
        let yi = y.round().clamp(y0 as f64, (y1 - thick) as f64) as usize;
        for t in 0..thick {
            let i = (yi + t) * w + xi as usize;
            out[i] = TRACE_GREY;
            trace.push(i as u32);
        }
    };
    for (k, &v) in samples.iter().enumerate() {
        let age = age_s + (n - 1 - k) as f64 / fs;
        let x = x1 as f64 - 1.0 - age * px_per_s;
        let y = baseline - f64::from(v) * px_per_mv;
        if x < x0 as f64 - 1.0 {
            continue;
        }
        if let Some((px, py)) = prev {
            let steps = ((x - px).abs().max((y - py).abs())).ceil().max(1.0) as usize;
            for st in 1..=steps {
                let f = st as f64 / steps as f64;
                plot(px + (x - px) * f, py + (y - py) * f, out);
            }
        } else {
            plot(x, y, out);
        }
        prev = Some((x, y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn font_covers_the_characters_the_overlay_uses() {
        let used = "MERIDIAN HEART CLINIC ST ALDRIC CARDIOLOGY NORTHGATE ECHO LAB LAKESIDE \
                    CARDIAC UNIT ADULT ECHO ID 0123456789 M5SC FR HZ CM G MI 1.2 HR";
        for ch in used.chars().filter(|c| *c != ' ') {
            assert_ne!(glyph(ch), [0; 7], "no glyph for {ch:?}");
        }
    }

    #[test]
    fn strip_traces_a_spike_at_the_right_place() {
        let layout = Layout::new(320, 240);
        let mut out = vec![0u8; 320 * 240];
        let fs = 250.0;
        // Flat line with one 1 mV spike exactly 1 s before the newest sample.
        let mut samples = vec![0.0f32; 1000];
        samples[1000 - 1 - 250] = 1.0;
        let mut trace = Vec::new();
        draw_strip(&layout, &samples, fs, 0.0, &mut out, &mut trace);
        assert!(!trace.is_empty());
        let [x0, y0, x1, y1] = layout.strip;
        let top = (y0..y1)
            .find(|&y| (x0..x1).any(|x| out[y * 320 + x] == TRACE_GREY))
            .unwrap_or(y1);
        let spike_x = (x0..x1)
            .find(|&x| out[top * 320 + x] == TRACE_GREY)
            .unwrap_or(0);
        let expect = x1 as f64 - 1.0 - (x1 - x0) as f64 / STRIP_SECONDS;
        assert!(
            (spike_x as f64 - expect).abs() <= 1.5,
            "{spike_x} vs {expect}"
        );
        let baseline = y0 as f64 + 0.62 * (y1 - y0) as f64;
        let rise = baseline - top as f64;
        assert!((rise - 0.3 * (y1 - y0) as f64).abs() <= 1.5, "rise {rise}");
    }
}
