//! Preprocessing: from a beat's gated frames to the encoder's input tensors.
//!
//! Follows the research recipe, per beat: greyscale; find the image region as the bounding box
//! of pixels that change across the beat (the ultrasound sector moves, the cart's text and
//! logos do not); zero the pixels that never change (burned-in overlays), so the model cannot
//! learn a cart's annotations instead of the anatomy; crop; resize to the model's input size;
//! normalise with the manifest's mean and std.
//!
//! Training clips are cut by this same code (`echoview clips`), so the model sees at run time
//! exactly what it saw in training.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::media::{Frame, PixelFormat};

/// Fewer changing pixels than this fraction of the frame means the video is frozen or blank:
/// then the whole frame is used unmasked, since a mask would erase everything.
const MIN_CHANGING_FRACTION: f64 = 0.01;

/// Why a beat's frames could not be preprocessed.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// A frame's buffer does not hold what its header says.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// The frames of one beat differ in size or format (the capture changed mode mid-beat).
    #[error(
        "frames of one beat differ: frame {first_seq} is {first}, frame {other_seq} is {other}"
    )]
    Inconsistent {
        /// Sequence number of the beat's first frame.
        first_seq: u64,
        /// Its size and format.
        first: String,
        /// Sequence number of the frame that differs.
        other_seq: u64,
        /// Its size and format.
        other: String,
    },
    /// No frames were given.
    #[error("a beat needs at least one frame")]
    Empty,
    /// The configured crop does not fit the frame.
    #[error("crop {crop:?} does not fit a {width}x{height} frame; fix the configured image region")]
    CropOutside {
        /// The configured crop.
        crop: Rect,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
    },
    /// The caller's output buffer cannot hold the beat (a bug, reported rather than
    /// panicking).
    #[error("output buffer holds {given} values, the beat needs {needed}")]
    OutputTooSmall {
        /// Values needed.
        needed: usize,
        /// Values the buffer holds.
        given: usize,
    },
    /// The resizer refused (it should not for valid sizes).
    #[error("resize failed: {0}")]
    Resize(String),
}

/// A rectangle in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// What the encoder expects.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Model input width.
    pub width: u32,
    /// Model input height.
    pub height: u32,
    /// Mean subtracted after scaling pixels to [0, 1].
    pub mean: f32,
    /// Standard deviation divided by after subtracting the mean.
    pub std: f32,
    /// A fixed image region; `None` finds it from the pixels that change.
    pub crop: Option<Rect>,
}

impl PreprocessConfig {
    /// What `bundle`'s encoder expects, with the image region found automatically.
    pub fn for_bundle(bundle: &crate::bundle::Bundle) -> PreprocessConfig {
        let input = &bundle.manifest.input;
        PreprocessConfig {
            width: input.width,
            height: input.height,
            mean: input.mean[0],
            std: input.std[0],
            crop: None,
        }
    }
}

/// Where a beat's pixels came from: the region and mask applied to every frame of the beat.
/// Two beats with equal `BeatRegion`s preprocess a shared frame identically, which is what the
/// feature cache relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BeatRegion {
    /// The crop taken from each frame.
    pub crop: Rect,
    /// Fingerprint of the static-pixel mask (0: no mask applied).
    pub mask_fingerprint: u64,
}

/// Turns beats of frames into normalised tensors, reusing its buffers from beat to beat.
pub struct Preprocessor {
    /// Target size and normalisation.
    config: PreprocessConfig,
    /// Kept across calls: it caches filter coefficients for a given size pair.
    resizer: Resizer,
    /// Greyscale planes of the beat's frames, `width * height` each, reused.
    grey: Vec<Vec<u8>>,
    /// 1 where a pixel changes across the beat, reused.
    changing: Vec<u8>,
    /// The cropped, masked plane of one frame, reused.
    crop_buf: Vec<u8>,
    /// The resized plane of one frame, reused.
    resized: Image<'static>,
}

impl Preprocessor {
    /// A preprocessor for `config`.
    pub fn new(config: PreprocessConfig) -> Preprocessor {
        let resized = Image::new(config.width, config.height, PixelType::U8);
        Preprocessor {
            config,
            resizer: Resizer::new(),
            grey: Vec::new(),
            changing: Vec::new(),
            crop_buf: Vec::new(),
            resized,
        }
    }

    /// Floats written per frame: `width * height` (one channel).
    pub fn tensor_len(&self) -> usize {
        self.config.width as usize * self.config.height as usize
    }

    /// Preprocesses one beat: `out` receives `frames.len()` tensors of [`Self::tensor_len`]
    /// floats each, in frame order, normalised for the encoder.
    pub fn prepare_beat(
        &mut self,
        frames: &[&Frame],
        out: &mut [f32],
    ) -> Result<BeatRegion, PreprocessError> {
        let scale = 1.0 / (255.0 * self.config.std);
        let offset = self.config.mean / self.config.std;
        self.prepare(frames, out.len(), |i, len, pixels| {
            for (o, &p) in out[i * len..(i + 1) * len].iter_mut().zip(pixels) {
                *o = f32::from(p) * scale - offset;
            }
        })
    }

    /// Preprocesses one beat up to, not including, normalisation: `out` receives
    /// `frames.len()` planes of [`Self::tensor_len`] 8-bit pixels. Training clips are stored
    /// this way, so augmentation acts on pixels and normalisation stays in the manifest.
    pub fn prepare_beat_pixels(
        &mut self,
        frames: &[&Frame],
        out: &mut [u8],
    ) -> Result<BeatRegion, PreprocessError> {
        self.prepare(frames, out.len(), |i, len, pixels| {
            out[i * len..(i + 1) * len].copy_from_slice(pixels);
        })
    }

    /// The shared work: validates, greys, masks, crops and resizes each frame, handing frame
    /// i's resized pixels to `emit(i, tensor_len, pixels)`.
    fn prepare(
        &mut self,
        frames: &[&Frame],
        out_len: usize,
        mut emit: impl FnMut(usize, usize, &[u8]),
    ) -> Result<BeatRegion, PreprocessError> {
        let first = frames.first().ok_or(PreprocessError::Empty)?;
        let tensor_len = self.tensor_len();
        if out_len < frames.len() * tensor_len {
            return Err(PreprocessError::OutputTooSmall {
                needed: frames.len() * tensor_len,
                given: out_len,
            });
        }
        for f in frames {
            f.validate().map_err(PreprocessError::BadFrame)?;
            if (f.width, f.height, f.format) != (first.width, first.height, first.format) {
                let describe = |f: &Frame| format!("{}x{} {}", f.width, f.height, f.format.name());
                return Err(PreprocessError::Inconsistent {
                    first_seq: first.seq,
                    first: describe(first),
                    other_seq: f.seq,
                    other: describe(f),
                });
            }
        }
        let (w, h) = (first.width as usize, first.height as usize);
        let plane = w * h;
        if self.grey.len() < frames.len() {
            self.grey.resize_with(frames.len(), Vec::new);
        }
        for (f, grey) in frames.iter().zip(&mut self.grey) {
            grey.resize(plane, 0);
            to_grey(f, grey);
        }
        let greys = &self.grey[..frames.len()];

        // Pixels that change across the beat: the sector. With one frame nothing can be told
        // apart, so everything counts as changing.
        self.changing.clear();
        self.changing.resize(plane, u8::from(frames.len() == 1));
        if let Some((reference, rest)) = greys.split_first() {
            for g in rest {
                for ((c, a), b) in self.changing.iter_mut().zip(reference).zip(g) {
                    *c |= u8::from(a != b);
                }
            }
        }
        let changed = self.changing.iter().filter(|&&c| c != 0).count();
        let use_mask = changed as f64 >= MIN_CHANGING_FRACTION * plane as f64;
        let full = Rect {
            x: 0,
            y: 0,
            width: first.width,
            height: first.height,
        };
        let crop = match self.config.crop {
            Some(c) => {
                if c.width == 0
                    || c.height == 0
                    || c.x + c.width > first.width
                    || c.y + c.height > first.height
                {
                    return Err(PreprocessError::CropOutside {
                        crop: c,
                        width: first.width,
                        height: first.height,
                    });
                }
                c
            }
            None if use_mask => bounding_box(&self.changing, w, h).unwrap_or(full),
            None => full,
        };
        let mask_fingerprint = if use_mask {
            fingerprint(&self.changing, crop, w)
        } else {
            0
        };

        for (i, grey) in greys.iter().enumerate() {
            let (cw, ch) = (crop.width as usize, crop.height as usize);
            self.crop_buf.clear();
            for row in crop.y as usize..(crop.y + crop.height) as usize {
                let start = row * w + crop.x as usize;
                let pixels = &grey[start..start + cw];
                if use_mask {
                    let mask = &self.changing[start..start + cw];
                    self.crop_buf.extend(
                        pixels
                            .iter()
                            .zip(mask)
                            .map(|(&p, &m)| if m != 0 { p } else { 0 }),
                    );
                } else {
                    self.crop_buf.extend_from_slice(pixels);
                }
            }
            let src = ImageRef::new(cw as u32, ch as u32, &self.crop_buf, PixelType::U8)
                .map_err(|e| PreprocessError::Resize(e.to_string()))?;
            let options =
                ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
            self.resizer
                .resize(&src, &mut self.resized, &options)
                .map_err(|e| PreprocessError::Resize(e.to_string()))?;
            emit(i, tensor_len, self.resized.buffer());
        }
        Ok(BeatRegion {
            crop,
            mask_fingerprint,
        })
    }
}

/// Writes the luma plane of `frame` into `grey` (`width * height` bytes, no padding).
fn to_grey(frame: &Frame, grey: &mut [u8]) {
    let (w, stride) = (frame.width as usize, frame.stride as usize);
    for (row, dst) in grey.chunks_exact_mut(w).enumerate() {
        let src = &frame.data[row * stride..];
        match frame.format {
            PixelFormat::Grey8 => dst.copy_from_slice(&src[..w]),
            // YUYV: luma is every even byte.
            PixelFormat::Yuyv => {
                for (d, pair) in dst.iter_mut().zip(src[..2 * w].chunks_exact(2)) {
                    *d = pair[0];
                }
            }
        }
    }
}

/// The smallest rectangle holding every non-zero cell of `mask`, if any.
fn bounding_box(mask: &[u8], w: usize, h: usize) -> Option<Rect> {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        let row = &mask[y * w..(y + 1) * w];
        let Some(first) = row.iter().position(|&m| m != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&m| m != 0).unwrap_or(first);
        x0 = x0.min(first);
        x1 = x1.max(last);
        y0 = y0.min(y);
        y1 = y;
    }
    (x0 != usize::MAX).then(|| Rect {
        x: x0 as u32,
        y: y0 as u32,
        width: (x1 - x0 + 1) as u32,
        height: (y1 - y0 + 1) as u32,
    })
}

/// FNV-1a over the crop rectangle and the mask inside it: identical masks give identical
/// fingerprints, so cached features are reused only when preprocessing would be identical.
fn fingerprint(mask: &[u8], crop: Rect, w: usize) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for v in [crop.x, crop.y, crop.width, crop.height] {
        v.to_le_bytes().into_iter().for_each(&mut feed);
    }
    for row in crop.y as usize..(crop.y + crop.height) as usize {
        let start = row * w + crop.x as usize;
        for &m in &mask[start..start + crop.width as usize] {
            feed(m);
        }
    }
    hash | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(
        seq: u64,
        w: u32,
        h: u32,
        format: PixelFormat,
        pixel: impl Fn(u32, u32) -> u8,
    ) -> Frame {
        let bpp = format.bytes_per_pixel() as u32;
        let stride = w * bpp + 3; // padded rows, as capture drivers do
        let mut data = vec![0xEE; (stride * h) as usize];
        for y in 0..h {
            for x in 0..w {
                let p = pixel(x, y);
                let at = (y * stride + x * bpp) as usize;
                data[at] = p;
                if format == PixelFormat::Yuyv {
                    data[at + 1] = 128;
                }
            }
        }
        Frame {
            seq,
            t_ns: seq,
            width: w,
            height: h,
            stride,
            format,
            data,
        }
    }

    fn config(width: u32, height: u32) -> PreprocessConfig {
        PreprocessConfig {
            width,
            height,
            mean: 0.0,
            std: 1.0,
            crop: None,
        }
    }

    #[test]
    fn crops_to_changing_pixels_and_masks_static_ones() {
        // A 40x30 frame: a static overlay everywhere (value 200), a "sector" at x 10..30,
        // y 5..25 that changes from frame to frame, and one static dark pixel inside it.
        let make = |seq: u64| {
            frame(seq, 40, 30, PixelFormat::Grey8, move |x, y| {
                let inside = (10..30).contains(&x) && (5..25).contains(&y);
                if inside && (x, y) != (20, 15) {
                    ((x * 3 + y * 5) as u64 + seq * 17) as u8 | 1
                } else if inside {
                    0
                } else {
                    200
                }
            })
        };
        let frames: Vec<Frame> = (0..3).map(make).collect();
        let refs: Vec<&Frame> = frames.iter().collect();
        let mut pre = Preprocessor::new(config(20, 20));
        let mut out = vec![0.0; 3 * pre.tensor_len()];
        let region = pre.prepare_beat(&refs, &mut out).unwrap();
        assert_eq!(
            region.crop,
            Rect {
                x: 10,
                y: 5,
                width: 20,
                height: 20
            }
        );
        assert_ne!(region.mask_fingerprint, 0);
        // The crop is the model size, so resizing is the identity: pixels map one to one.
        let expected =
            |seq: u64, x: u32, y: u32| (((x + 10) * 3 + (y + 5) * 5) as u64 + seq * 17) as u8 | 1;
        for seq in 0..3u64 {
            let t = &out[seq as usize * 400..(seq as usize + 1) * 400];
            let close = |got: f32, want: u8| (got * 255.0 - f32::from(want)).abs() < 1e-3;
            assert!(close(t[0], expected(seq, 0, 0)), "{}", t[0]);
            assert_eq!(
                t[10 * 20 + 10],
                0.0,
                "static pixel inside the sector is masked"
            );
            assert!(
                close(t[19 * 20 + 19], expected(seq, 19, 19)),
                "{}",
                t[19 * 20 + 19]
            );
        }
    }

    #[test]
    fn yuyv_uses_luma_and_matches_grey() {
        let pixel = |x: u32, y: u32| (x * 9 + y * 4) as u8;
        let grey: Vec<Frame> = (0..2)
            .map(|s| {
                frame(s, 16, 8, PixelFormat::Grey8, move |x, y| {
                    pixel(x, y).wrapping_add(s as u8)
                })
            })
            .collect();
        let yuyv: Vec<Frame> = (0..2)
            .map(|s| {
                frame(s, 16, 8, PixelFormat::Yuyv, move |x, y| {
                    pixel(x, y).wrapping_add(s as u8)
                })
            })
            .collect();
        let mut pre = Preprocessor::new(config(7, 5));
        let mut a = vec![0.0; 2 * pre.tensor_len()];
        let mut b = vec![0.0; 2 * pre.tensor_len()];
        pre.prepare_beat(&grey.iter().collect::<Vec<_>>(), &mut a)
            .unwrap();
        pre.prepare_beat(&yuyv.iter().collect::<Vec<_>>(), &mut b)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn normalises_with_mean_and_std() {
        let frames = [frame(0, 8, 8, PixelFormat::Grey8, |_, _| 51)];
        let mut pre = Preprocessor::new(PreprocessConfig {
            width: 4,
            height: 4,
            mean: 0.5,
            std: 0.25,
            crop: None,
        });
        let mut out = vec![0.0; pre.tensor_len()];
        pre.prepare_beat(&[&frames[0]], &mut out).unwrap();
        let expected = (51.0 / 255.0 - 0.5) / 0.25;
        assert!(out.iter().all(|v| (v - expected).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn frozen_video_is_used_whole_without_a_mask() {
        let frames: Vec<Frame> = (0..4)
            .map(|s| frame(s, 10, 10, PixelFormat::Grey8, |x, _| x as u8 * 20))
            .collect();
        let mut pre = Preprocessor::new(config(10, 10));
        let mut out = vec![0.0; 4 * pre.tensor_len()];
        let region = pre
            .prepare_beat(&frames.iter().collect::<Vec<_>>(), &mut out)
            .unwrap();
        assert_eq!(region.mask_fingerprint, 0);
        assert_eq!(
            region.crop,
            Rect {
                x: 0,
                y: 0,
                width: 10,
                height: 10
            }
        );
        assert!(out[9] > 0.0);
    }

    #[test]
    fn mismatched_frames_and_bad_crops_are_errors() {
        let a = frame(1, 10, 10, PixelFormat::Grey8, |_, _| 0);
        let b = frame(2, 12, 10, PixelFormat::Grey8, |_, _| 0);
        let mut pre = Preprocessor::new(config(4, 4));
        let mut out = vec![0.0; 2 * pre.tensor_len()];
        let err = pre
            .prepare_beat(&[&a, &b], &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("frame 2 is 12x10 GREY"), "{err}");
        let mut short = a.clone();
        short.data.truncate(50);
        assert!(matches!(
            pre.prepare_beat(&[&short], &mut out),
            Err(PreprocessError::BadFrame(_))
        ));
        let mut pre = Preprocessor::new(PreprocessConfig {
            crop: Some(Rect {
                x: 5,
                y: 5,
                width: 10,
                height: 2,
            }),
            ..config(4, 4)
        });
        assert!(matches!(
            pre.prepare_beat(&[&a], &mut out),
            Err(PreprocessError::CropOutside { .. })
        ));
        assert!(matches!(
            pre.prepare_beat(&[], &mut out),
            Err(PreprocessError::Empty)
        ));
    }
}
