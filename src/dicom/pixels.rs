//! Decoded DICOM samples to echoview frames: colour exports become [`PixelFormat::Rgb24`],
//! greyscale ones [`PixelFormat::Grey8`], whatever photometric interpretation and bit depth the
//! cart chose, so everything after the reader sees the two formats capture also delivers.
//!
//! Pure: [`to_frame`] takes the samples of one frame (already decompressed) and their layout.
//! Colour conversions follow PS3.3 C.7.6.3.1.2: YBR_FULL is full-range BT.601.

use crate::media::{Frame, PixelFormat};

/// How one frame's samples encode colour, after decompression.
#[derive(Debug, Clone, PartialEq)]
pub enum Colour {
    /// MONOCHROME1: grey, 0 is white (inverted on output so the tissue looks as on the cart).
    Monochrome1,
    /// MONOCHROME2: grey, 0 is black.
    Monochrome2,
    /// RGB samples.
    Rgb,
    /// YBR_FULL: full-range Y, Cb, Cr per pixel.
    YbrFull,
    /// YBR_FULL_422 as stored uncompressed: per row, `Y0 Y1 Cb Cr` for each pair of pixels.
    /// (Once JPEG-decoded, the decoder has already turned it into RGB.)
    YbrFull422,
    /// PALETTE COLOR: each sample indexes the tables.
    Palette(Palette),
}

/// A PALETTE COLOR image's lookup tables, already reduced to 8 bits per entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Palette {
    /// The pixel value the first entry stands for (descriptor value 2); lower values take
    /// the first entry, higher ones past the end the last, as PS3.3 C.7.6.3.1.5 says.
    pub first_mapped: i64,
    /// Red entries.
    pub red: Vec<u8>,
    /// Green entries.
    pub green: Vec<u8>,
    /// Blue entries.
    pub blue: Vec<u8>,
}

impl Palette {
    /// Tables from the descriptor `(entries, first mapped, bits per entry)` and each colour's
    /// entries as 8- or 16-bit values (as stored: 8-bit entries may sit one per 16-bit word).
    /// 16-bit entries keep their high byte. `None` when the tables disagree with the
    /// descriptor or with each other.
    pub fn new(descriptor: [i64; 3], tables: [Vec<u16>; 3]) -> Option<Palette> {
        let entries = if descriptor[0] == 0 {
            65_536
        } else {
            usize::try_from(descriptor[0]).ok()?
        };
        let shift = match descriptor[2] {
            8 => 0,
            16 => 8,
            _ => return None,
        };
        let [r, g, b] = tables;
        if [&r, &g, &b].iter().any(|t| t.len() != entries) {
            return None;
        }
        let reduce = |t: Vec<u16>| -> Vec<u8> {
            t.into_iter().map(|v| (v >> shift).min(255) as u8).collect()
        };
        Some(Palette {
            first_mapped: descriptor[1],
            red: reduce(r),
            green: reduce(g),
            blue: reduce(b),
        })
    }

    /// The colour of pixel value `v`.
    fn rgb(&self, v: i64) -> [u8; 3] {
        let last = self.red.len().saturating_sub(1);
        let i = usize::try_from(v.saturating_sub(self.first_mapped))
            .unwrap_or(0)
            .min(last);
        [
            self.red.get(i).copied().unwrap_or(0),
            self.green.get(i).copied().unwrap_or(0),
            self.blue.get(i).copied().unwrap_or(0),
        ]
    }
}

/// Everything about a frame's samples except the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Samples per pixel: 1 or 3.
    pub samples_per_pixel: u16,
    /// Bits allocated per sample: 8 or 16 (16-bit samples are little-endian in the buffer).
    pub bits_allocated: u16,
    /// Bits stored: the range of grey values, for scaling deep greyscale to 8 bits.
    pub bits_stored: u16,
    /// Pixel Representation 1: samples are two's complement.
    pub signed: bool,
    /// Planar Configuration 1: all red samples, then all green, then all blue.
    pub planar: bool,
    /// How samples encode colour.
    pub colour: Colour,
    /// Window Center and Width (0028,1050/1051), for greyscale deeper than 8 bits.
    pub window: Option<(f64, f64)>,
}

/// Why samples do not make a frame; the reader adds the file and frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PixelError {
    /// Fewer bytes than the layout needs.
    #[error("{got} bytes of pixel data, {need} needed for {what}")]
    Short {
        /// Bytes there.
        got: usize,
        /// Bytes needed.
        need: usize,
        /// The layout in words.
        what: String,
    },
    /// A combination this module does not convert.
    #[error("{0}")]
    Unsupported(String),
}

impl Layout {
    /// Bytes of one frame's samples.
    pub fn frame_len(&self) -> usize {
        let pixels = self.width as usize * self.height as usize;
        match self.colour {
            Colour::YbrFull422 => pixels * 2,
            _ => {
                pixels * usize::from(self.samples_per_pixel) * usize::from(self.bits_allocated / 8)
            }
        }
    }

    /// Checks the combination once, before any frame is decoded.
    pub fn check(&self) -> Result<(), PixelError> {
        let unsupported = |what: String| Err(PixelError::Unsupported(what));
        if self.width == 0 || self.height == 0 {
            return unsupported(format!("an image of {}x{} pixels", self.width, self.height));
        }
        if !matches!(self.bits_allocated, 8 | 16) {
            return unsupported(format!("{} bits allocated per sample", self.bits_allocated));
        }
        if self.bits_stored == 0 || self.bits_stored > self.bits_allocated {
            return unsupported(format!(
                "{} bits stored in {} allocated",
                self.bits_stored, self.bits_allocated
            ));
        }
        let expected_samples = match self.colour {
            Colour::Monochrome1 | Colour::Monochrome2 | Colour::Palette(_) => 1,
            Colour::Rgb | Colour::YbrFull | Colour::YbrFull422 => 3,
        };
        if self.samples_per_pixel != expected_samples {
            return unsupported(format!(
                "{} samples per pixel for a {} image",
                self.samples_per_pixel,
                self.colour_name()
            ));
        }
        if self.colour == Colour::YbrFull422 {
            if self.bits_allocated != 8 {
                return unsupported("uncompressed YBR_FULL_422 deeper than 8 bits".into());
            }
            if !self.width.is_multiple_of(2) {
                return unsupported(format!(
                    "uncompressed YBR_FULL_422 with an odd width ({})",
                    self.width
                ));
            }
        }
        Ok(())
    }

    /// The photometric interpretation's DICOM name.
    fn colour_name(&self) -> &'static str {
        match self.colour {
            Colour::Monochrome1 => "MONOCHROME1",
            Colour::Monochrome2 => "MONOCHROME2",
            Colour::Rgb => "RGB",
            Colour::YbrFull => "YBR_FULL",
            Colour::YbrFull422 => "YBR_FULL_422",
            Colour::Palette(_) => "PALETTE COLOR",
        }
    }

    /// Sample `i` (in sample order) as a signed integer, with the unused high bits dropped.
    fn sample(&self, data: &[u8], i: usize) -> i64 {
        let raw = if self.bits_allocated == 8 {
            u32::from(data[i])
        } else {
            u32::from(u16::from_le_bytes([data[2 * i], data[2 * i + 1]]))
        };
        let bits = u32::from(self.bits_stored);
        let value = raw & ((1u32 << bits) - 1);
        if self.signed && value & (1 << (bits - 1)) != 0 {
            i64::from(value) - (1i64 << bits)
        } else {
            i64::from(value)
        }
    }

    /// A colour sample (`channel` of pixel `p`) scaled to 8 bits.
    fn colour_sample(&self, data: &[u8], p: usize, channel: usize) -> u8 {
        let pixels = self.width as usize * self.height as usize;
        let i = if self.planar {
            channel * pixels + p
        } else {
            3 * p + channel
        };
        let v = self.sample(data, i).max(0);
        (v >> (self.bits_stored.saturating_sub(8))).min(255) as u8
    }

    /// A grey sample mapped to 8 bits: 8-bit values as they are; deeper ones through the
    /// window when the file has one, else over the full stored range.
    fn grey(&self, v: i64) -> u8 {
        if self.bits_stored <= 8 && !self.signed {
            return v.clamp(0, 255) as u8;
        }
        if let Some((center, width)) = self.window
            && width >= 1.0
        {
            // PS3.3 C.11.2.1.2.1, the linear window.
            let y = ((v as f64 - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0;
            return y.round().clamp(0.0, 255.0) as u8;
        }
        let bits = u32::from(self.bits_stored);
        let min = if self.signed {
            -(1i64 << (bits - 1))
        } else {
            0
        };
        let span = (1i64 << bits) - 1;
        (((v - min) * 255 + span / 2) / span).clamp(0, 255) as u8
    }
}

/// The full-range BT.601 YCbCr to RGB conversion of PS3.3 C.7.6.3.1.2, rounded.
pub fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let r = y + 1.402 * cr;
    let g = y - (0.114 * 1.772 / 0.587) * cb - (0.299 * 1.402 / 0.587) * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// One frame from its samples. `data` holds at least [`Layout::frame_len`] bytes (checked);
/// call [`Layout::check`] first.
pub fn to_frame(layout: &Layout, data: &[u8], seq: u64, t_ns: u64) -> Result<Frame, PixelError> {
    layout.check()?;
    let need = layout.frame_len();
    if data.len() < need {
        return Err(PixelError::Short {
            got: data.len(),
            need,
            what: format!(
                "a {}x{} {} frame of {}-bit samples",
                layout.width,
                layout.height,
                layout.colour_name(),
                layout.bits_allocated
            ),
        });
    }
    let (w, h) = (layout.width as usize, layout.height as usize);
    let pixels = w * h;
    let (format, bpp, out) = match &layout.colour {
        Colour::Monochrome1 | Colour::Monochrome2 => {
            let invert = layout.colour == Colour::Monochrome1;
            let out = (0..pixels)
                .map(|p| {
                    let g = layout.grey(layout.sample(data, p));
                    if invert { 255 - g } else { g }
                })
                .collect();
            (PixelFormat::Grey8, 1, out)
        }
        Colour::Rgb => {
            let mut out = Vec::with_capacity(pixels * 3);
            for p in 0..pixels {
                for c in 0..3 {
                    out.push(layout.colour_sample(data, p, c));
                }
            }
            (PixelFormat::Rgb24, 3, out)
        }
        Colour::YbrFull => {
            let mut out = Vec::with_capacity(pixels * 3);
            for p in 0..pixels {
                let [y, cb, cr] = [0, 1, 2].map(|c| layout.colour_sample(data, p, c));
                out.extend_from_slice(&ybr_to_rgb(y, cb, cr));
            }
            (PixelFormat::Rgb24, 3, out)
        }
        Colour::YbrFull422 => {
            // Two luma samples share one chroma pair: Y0 Y1 Cb Cr.
            let mut out = Vec::with_capacity(pixels * 3);
            for quad in data[..need].chunks_exact(4) {
                let [y0, y1, cb, cr] = [quad[0], quad[1], quad[2], quad[3]];
                out.extend_from_slice(&ybr_to_rgb(y0, cb, cr));
                out.extend_from_slice(&ybr_to_rgb(y1, cb, cr));
            }
            (PixelFormat::Rgb24, 3, out)
        }
        Colour::Palette(palette) => {
            let mut out = Vec::with_capacity(pixels * 3);
            for p in 0..pixels {
                out.extend_from_slice(&palette.rgb(layout.sample(data, p)));
            }
            (PixelFormat::Rgb24, 3, out)
        }
    };
    Ok(Frame {
        seq,
        t_ns,
        width: layout.width,
        height: layout.height,
        stride: layout.width * bpp,
        format,
        data: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(colour: Colour, spp: u16, bits: u16) -> Layout {
        Layout {
            width: 2,
            height: 1,
            samples_per_pixel: spp,
            bits_allocated: bits,
            bits_stored: bits,
            signed: false,
            planar: false,
            colour,
            window: None,
        }
    }

    #[test]
    fn ybr_full_422_pairs_share_chroma() {
        // Grey chroma: both pixels keep their luma; red-ish chroma shifts both alike.
        let f = to_frame(
            &layout(Colour::YbrFull422, 3, 8),
            &[10, 200, 128, 128],
            0,
            0,
        )
        .unwrap();
        assert_eq!(f.format, PixelFormat::Rgb24);
        assert_eq!(f.data, vec![10, 10, 10, 200, 200, 200]);
        let f = to_frame(
            &layout(Colour::YbrFull422, 3, 8),
            &[100, 100, 128, 228],
            0,
            0,
        )
        .unwrap();
        assert_eq!(&f.data[..3], &ybr_to_rgb(100, 128, 228));
        assert_eq!(&f.data[..3], &f.data[3..]);
        assert_eq!(ybr_to_rgb(100, 128, 228), [240, 29, 100]);
    }

    #[test]
    fn planar_rgb_and_monochrome1() {
        let mut l = layout(Colour::Rgb, 3, 8);
        l.planar = true;
        let f = to_frame(&l, &[1, 2, 3, 4, 5, 6], 7, 9).unwrap();
        assert_eq!(f.data, vec![1, 3, 5, 2, 4, 6]);
        assert_eq!((f.seq, f.t_ns, f.stride), (7, 9, 6));
        let f = to_frame(&layout(Colour::Monochrome1, 1, 8), &[0, 255], 0, 0).unwrap();
        assert_eq!((f.format, f.data), (PixelFormat::Grey8, vec![255, 0]));
    }

    #[test]
    fn deep_grey_scales_or_windows_to_8_bits() {
        let mut l = layout(Colour::Monochrome2, 1, 16);
        l.bits_stored = 12;
        let f = to_frame(&l, &[0, 0, 0xff, 0x0f], 0, 0).unwrap();
        assert_eq!(f.data, vec![0, 255]);
        l.window = Some((2048.0, 4096.0));
        let f = to_frame(&l, &[0x00, 0x08, 0xff, 0x0f], 0, 0).unwrap();
        assert_eq!(f.data, vec![128, 255]);
    }

    #[test]
    fn palette_maps_clamps_and_reduces_16_bit_entries() {
        let ramp: Vec<u16> = vec![0x0000, 0x8000, 0xff00];
        let p = Palette::new([3, 10, 16], [ramp.clone(), ramp.clone(), ramp]).unwrap();
        let l = layout(Colour::Palette(p), 1, 8);
        let f = to_frame(&l, &[11, 200], 0, 0).unwrap();
        assert_eq!(f.data, vec![0x80, 0x80, 0x80, 0xff, 0xff, 0xff]);
        assert!(Palette::new([4, 0, 8], [vec![0; 4], vec![0; 4], vec![0; 3]]).is_none());
    }

    #[test]
    fn short_data_and_bad_layouts_are_errors() {
        let l = layout(Colour::Rgb, 3, 8);
        assert!(matches!(
            to_frame(&l, &[1, 2, 3], 0, 0),
            Err(PixelError::Short { .. })
        ));
        let mut odd = layout(Colour::YbrFull422, 3, 8);
        odd.width = 3;
        assert!(to_frame(&odd, &[0; 6], 0, 0).is_err());
        assert!(to_frame(&layout(Colour::Rgb, 1, 8), &[0; 6], 0, 0).is_err());
        assert!(to_frame(&layout(Colour::Monochrome2, 1, 12), &[0; 6], 0, 0).is_err());
    }
}
