//! The samples that flow from the sources into the pipeline: video frames and ECG blocks.
//!
//! Both carry times on one session clock (nanoseconds, monotonic, the same origin for video
//! and ECG), because gating compares R-peak times with frame times directly.

/// Pixel layouts a frame can arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 8-bit luminance, one byte per pixel.
    Grey8,
    /// Packed YUV 4:2:2, bytes `Y0 U Y1 V`, two bytes per pixel (V4L2 `YUYV`).
    Yuyv,
}

impl PixelFormat {
    /// Bytes per pixel in a row (before any stride padding).
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Grey8 => 1,
            PixelFormat::Yuyv => 2,
        }
    }

    /// The name used on the command line and in session files (`GREY`, `YUYV`, as V4L2 calls them).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Grey8 => "GREY",
            PixelFormat::Yuyv => "YUYV",
        }
    }

    /// Parses a format name as [`PixelFormat::name`] writes it, ignoring case.
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        [PixelFormat::Grey8, PixelFormat::Yuyv]
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// One video frame as captured.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Capture sequence number; consecutive frames differ by one, so a gap means a drop.
    pub seq: u64,
    /// Capture time on the session clock, in nanoseconds.
    pub t_ns: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes from the start of one row to the next (at least `width * bytes_per_pixel`).
    pub stride: u32,
    /// How the bytes of `data` encode pixels.
    pub format: PixelFormat,
    /// The pixel bytes, `stride * height` of them.
    pub data: Vec<u8>,
}

impl Frame {
    /// Checks that the buffer holds what the header promises, so later stages can index freely.
    pub fn validate(&self) -> Result<(), String> {
        let row = self.width as usize * self.format.bytes_per_pixel();
        if self.width == 0 || self.height == 0 {
            return Err(format!("frame {} has zero size", self.seq));
        }
        if (self.stride as usize) < row {
            return Err(format!(
                "frame {}: stride {} is shorter than a row of {} bytes",
                self.seq, self.stride, row
            ));
        }
        let need = self.stride as usize * self.height as usize;
        if self.data.len() < need {
            return Err(format!(
                "frame {}: {} bytes of pixel data, {}x{} {} needs {}",
                self.seq,
                self.data.len(),
                self.width,
                self.height,
                self.format.name(),
                need
            ));
        }
        if self.format == PixelFormat::Yuyv && !self.width.is_multiple_of(2) {
            return Err(format!(
                "frame {}: YUYV needs an even width, got {}",
                self.seq, self.width
            ));
        }
        Ok(())
    }
}

/// A block of consecutive single-lead ECG samples.
#[derive(Debug, Clone, PartialEq)]
pub struct EcgBlock {
    /// Index of the first sample since the ECG stream began; consecutive blocks continue it.
    pub first_index: u64,
    /// Time of the first sample on the session clock, in nanoseconds.
    pub t0_ns: u64,
    /// Sampling rate in Hz.
    pub fs_hz: f64,
    /// Samples in millivolts.
    pub samples_mv: Vec<f32>,
    /// The acquisition front end reported the leads off for this block.
    pub lead_off: bool,
}

impl EcgBlock {
    /// Session-clock time of sample `first_index + i`.
    pub fn sample_time_ns(&self, i: usize) -> u64 {
        self.t0_ns + (i as f64 * 1e9 / self.fs_hz).round() as u64
    }
}
