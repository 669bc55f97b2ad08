//! The samples that flow from the sources into the pipeline: video frames and ECG blocks.
//!
//! Both carry times on one session clock (nanoseconds, monotonic, the same origin for video
//! and ECG), because gating compares R-peak times with frame times directly.

/// Pixel layouts a frame can arrive in: the formats V4L2 capture cards and USB grabbers
/// deliver for a video signal, so frames are kept as captured (and recorded that way) and
/// only preprocessing turns them into luma.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 8-bit luminance, one byte per pixel (V4L2 `GREY`).
    Grey8,
    /// Packed YUV 4:2:2, bytes `Y0 U Y1 V`, two bytes per pixel (V4L2 `YUYV`).
    Yuyv,
    /// Packed YUV 4:2:2, bytes `U Y0 V Y1`, two bytes per pixel (V4L2 `UYVY`); what HDMI and
    /// SDI grabbers often deliver.
    Uyvy,
    /// Semi-planar YUV 4:2:0 (V4L2 `NV12`): a luma plane of `height` rows, then a plane of
    /// interleaved `U V` pairs, one pair per 2x2 pixels, `ceil(height / 2)` rows of
    /// `ceil(width / 2)` pairs. Both planes use the frame's stride, the chroma plane starting
    /// right after the last luma row (at `stride * height`), as V4L2 lays out single-plane
    /// `NV12`. An odd width or height gives the last column or row a chroma pair of its own.
    Nv12,
    /// Packed RGB, bytes `R G B`, three bytes per pixel (V4L2 `RGB3`, `V4L2_PIX_FMT_RGB24`).
    Rgb24,
    /// Motion JPEG (V4L2 `MJPG`): each frame is one baseline JPEG image, whose bytes are the
    /// frame's `data` and whose size is the frame's `width` and `height`. USB grabbers send
    /// it because their links cannot carry uncompressed 1080p at full rate.
    Mjpeg,
}

impl PixelFormat {
    /// Every format, in the order command-line help and error messages list them.
    pub const ALL: [PixelFormat; 6] = [
        PixelFormat::Grey8,
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Nv12,
        PixelFormat::Rgb24,
        PixelFormat::Mjpeg,
    ];

    /// Bytes per pixel in a row of the first plane (the luma plane of `NV12`), before any
    /// stride padding; 0 for `MJPG`, whose frames have no rows.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Grey8 | PixelFormat::Nv12 => 1,
            PixelFormat::Yuyv | PixelFormat::Uyvy => 2,
            PixelFormat::Rgb24 => 3,
            PixelFormat::Mjpeg => 0,
        }
    }

    /// The name used on the command line and in session files: the V4L2 four-character code
    /// (`GREY`, `YUYV`, `UYVY`, `NV12`, `RGB3`, `MJPG`), which is what `v4l2-ctl
    /// --list-formats` shows a field engineer.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Grey8 => "GREY",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Uyvy => "UYVY",
            PixelFormat::Nv12 => "NV12",
            PixelFormat::Rgb24 => "RGB3",
            PixelFormat::Mjpeg => "MJPG",
        }
    }

    /// Parses a format name as [`PixelFormat::name`] writes it, ignoring case; `RGB24` and
    /// `MJPEG` are accepted too, as the V4L2 documentation spells those two.
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        let name = name.trim();
        let alias = [("RGB24", PixelFormat::Rgb24), ("MJPEG", PixelFormat::Mjpeg)];
        PixelFormat::ALL
            .into_iter()
            .map(|f| (f.name(), f))
            .chain(alias)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, f)| f)
    }

    /// The V4L2 pixel format code (`v4l2_fourcc`) of this format, as the driver reports it.
    pub fn fourcc(self) -> [u8; 4] {
        let mut code = [0u8; 4];
        code.copy_from_slice(self.name().as_bytes());
        code
    }

    /// The format a V4L2 pixel format code stands for, if it is one echoview handles.
    pub fn from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
        PixelFormat::ALL.into_iter().find(|f| f.fourcc() == code)
    }

    /// Whether frames are compressed images of varying length rather than rows of pixels.
    pub fn is_compressed(self) -> bool {
        self == PixelFormat::Mjpeg
    }

    /// The shortest stride a `width`-pixel frame can have: one row of the first plane, and
    /// for `NV12` also one row of chroma pairs (a byte longer when the width is odd).
    pub fn min_stride(self, width: u32) -> u64 {
        let w = u64::from(width);
        match self {
            PixelFormat::Nv12 => w.div_ceil(2) * 2,
            _ => w * self.bytes_per_pixel() as u64,
        }
    }

    /// Bytes of one image with this stride and height (`NV12`: both planes), or `None` for a
    /// compressed format, whose frames vary in length.
    pub fn image_len(self, stride: u32, height: u32) -> Option<u64> {
        let (stride, height) = (u64::from(stride), u64::from(height));
        match self {
            PixelFormat::Mjpeg => None,
            PixelFormat::Nv12 => Some(stride * (height + height.div_ceil(2))),
            _ => Some(stride * height),
        }
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
    /// Bytes from the start of one row to the next (at least [`PixelFormat::min_stride`]);
    /// 0 for compressed formats, which have no rows.
    pub stride: u32,
    /// How the bytes of `data` encode pixels.
    pub format: PixelFormat,
    /// The pixel bytes: [`PixelFormat::image_len`] of them (more are allowed and ignored), or
    /// for a compressed format the whole compressed image.
    pub data: Vec<u8>,
}

impl Frame {
    /// Checks that the buffer holds what the header promises, so later stages can index freely.
    pub fn validate(&self) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err(format!("frame {} has zero size", self.seq));
        }
        let Some(need) = self.format.image_len(self.stride, self.height) else {
            return self.validate_compressed();
        };
        let row = self.format.min_stride(self.width);
        if u64::from(self.stride) < row {
            return Err(format!(
                "frame {}: stride {} is shorter than a row of {} bytes",
                self.seq, self.stride, row
            ));
        }
        if (self.data.len() as u64) < need {
            return Err(format!(
                "frame {}: {} bytes of pixel data, {}x{} {} with stride {} needs {}",
                self.seq,
                self.data.len(),
                self.width,
                self.height,
                self.format.name(),
                self.stride,
                need
            ));
        }
        let packed_422 = matches!(self.format, PixelFormat::Yuyv | PixelFormat::Uyvy);
        if packed_422 && !self.width.is_multiple_of(2) {
            return Err(format!(
                "frame {}: {} needs an even width, got {}",
                self.seq,
                self.format.name(),
                self.width
            ));
        }
        Ok(())
    }

    /// The bytes that make up the image: the planes without any bytes past them, or the whole
    /// compressed image. Call after [`Frame::validate`] succeeded.
    pub fn image_bytes(&self) -> &[u8] {
        match self.format.image_len(self.stride, self.height) {
            Some(len) => &self.data[..(len as usize).min(self.data.len())],
            None => &self.data,
        }
    }

    /// The checks a compressed frame allows without decoding it: no stride, and JPEG headers
    /// that parse and declare the frame's size (at most [`crate::jpeg::MAX_SIDE`] per side).
    /// Whether the compressed data decodes is found when it is decoded.
    fn validate_compressed(&self) -> Result<(), String> {
        if self.stride != 0 {
            return Err(format!(
                "frame {}: a {} frame has no rows, so its stride must be 0, not {}",
                self.seq,
                self.format.name(),
                self.stride
            ));
        }
        let info = crate::jpeg::info(&self.data).map_err(|e| {
            format!(
                "frame {}: {} bytes of {} data: {e}",
                self.seq,
                self.data.len(),
                self.format.name()
            )
        })?;
        if (info.width, info.height) != (self.width, self.height) {
            return Err(format!(
                "frame {}: its JPEG image is {}x{}, the frame says {}x{}",
                self.seq, info.width, info.height, self.width, self.height
            ));
        }
        let max = crate::jpeg::MAX_SIDE;
        if self.width > max || self.height > max {
            return Err(format!(
                "frame {}: {}x{} is larger than the {max} pixels per side echoview decodes",
                self.seq, self.width, self.height
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
