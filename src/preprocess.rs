//! Preprocessing: from captured frames to the encoder's input tensors.
//!
//! Follows the research recipe, per beat: greyscale; find the image region as the bounding box
//! of pixels that change across the beat (the ultrasound sector moves, the cart's text and
//! logos do not); zero the pixels that never change (burned-in overlays), so the model cannot
//! learn a cart's annotations instead of the anatomy; crop; resize to the model's input size;
//! normalise with the manifest's mean and std. A beat whose region is the same as the last
//! beat's but for a few pixels keeps the last beat's ([`ImageRegion::same_as`]), so a probe
//! held still gives every frame one preparation, which frames encoded ahead rely on.
//!
//! Training clips are cut by this same code (`echoview clips`), so the model sees at run time
//! exactly what it saw in training.
//!
//! Greyscale is the luma of whatever the capture delivers: the Y bytes of `YUYV`, `UYVY` and
//! `NV12` as they come, `GREY` as is, the Y plane of a decoded `MJPG` frame, and for `RGB3`
//! the BT.601 luma `(19595 R + 38470 G + 7471 B + 32768) >> 16`, the integer form libjpeg
//! uses, which maps a grey pixel (R = G = B) to its own value and so leaves a greyscale
//! B-mode image unchanged.
//!
//! Besides whole beats ([`Preprocessor::prepare_beat`]), single frames can be prepared as they
//! arrive against a region found earlier ([`Preprocessor::find_region`],
//! [`Preprocessor::prepare_frame`]); both give the same tensor for the same frame and region.
//! The per-frame work only touches the crop: the luma of the cropped rows is extracted straight
//! from the captured bytes, masked, resized by `fast_image_resize` (SIMD convolution) and
//! normalised, with loops written so the compiler vectorises them.

use crate::media::{Frame, PixelFormat};
use crate::resample::Resampler;

/// Fewer changing pixels than this fraction of the frame means the video is frozen or blank:
/// then the whole frame is used unmasked, since a mask would erase everything.
const MIN_CHANGING_FRACTION: f64 = 0.01;

/// Masks of consecutive beats that differ in fewer than this fraction of the crop's pixels
/// count as the same region, and the later beat keeps the earlier one. The overlay has not
/// changed; what differs are sector pixels that happened to keep their value through one
/// beat (about 2% of the crop on the simulator, beat to beat). Keeping the region makes
/// consecutive beats prepare a frame identically, so frames prepared ahead of a beat under
/// the last beat's region are exactly the ones the beat needs (`daemon::lookahead`).
const SAME_MASK_FRACTION: f64 = 0.05;

/// Beats a kept region may serve before a beat's own region replaces it anyway, so that an
/// overlay appearing inside the crop (too small to count as a change) is masked within a
/// few seconds. It costs the frames encoded ahead of that one beat.
const MAX_REGION_BEATS: u32 = 8;

/// BT.601 luma weights in 1/65536, as libjpeg's RGB to YCbCr conversion rounds them; they sum
/// to 65536, so R = G = B = v gives exactly v.
const LUMA_R: u32 = 19_595;
/// See [`LUMA_R`].
const LUMA_G: u32 = 38_470;
/// See [`LUMA_R`].
const LUMA_B: u32 = 7_471;

/// Why frames could not be preprocessed.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// A frame's buffer does not hold what its header says, or its compressed image does not
    /// decode to it.
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
    /// A mask given with a region does not cover the region's crop exactly.
    #[error("a mask of {given} values does not cover a {width}x{height} crop ({needed} values)")]
    MaskSize {
        /// Crop width.
        width: u32,
        /// Crop height.
        height: u32,
        /// Values the crop needs.
        needed: usize,
        /// Values the mask holds.
        given: usize,
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

impl Rect {
    /// Whether the rectangle is non-empty and lies inside a `width` x `height` frame.
    fn fits(&self, width: u32, height: u32) -> bool {
        self.width > 0
            && self.height > 0
            && u64::from(self.x) + u64::from(self.width) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.height) <= u64::from(height)
    }

    /// Pixels inside the rectangle.
    fn area(&self) -> usize {
        self.width as usize * self.height as usize
    }
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

/// The crop and overlay mask applied to frames: found from a beat by
/// [`Preprocessor::find_region`], or configured, then applied frame by frame by
/// [`Preprocessor::prepare_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRegion {
    /// The part of the frame that holds the image.
    crop: Rect,
    /// Per crop pixel, row by row: `0xFF` keeps the pixel, `0` zeroes it (a burned-in
    /// overlay). Stored as a byte mask so applying it is one vectorised AND. `None`: nothing
    /// is masked.
    mask: Option<Vec<u8>>,
    /// [`BeatRegion::mask_fingerprint`] of this mask, computed once.
    fingerprint: u64,
}

impl ImageRegion {
    /// A region that crops to `crop` and masks nothing.
    pub fn unmasked(crop: Rect) -> ImageRegion {
        ImageRegion {
            crop,
            mask: None,
            fingerprint: 0,
        }
    }

    /// A region that crops to `crop` and zeroes the crop pixels where `keep` is 0; `keep` has
    /// one value per crop pixel, row by row.
    pub fn masked(crop: Rect, keep: &[u8]) -> Result<ImageRegion, PreprocessError> {
        if keep.len() != crop.area() {
            return Err(PreprocessError::MaskSize {
                width: crop.width,
                height: crop.height,
                needed: crop.area(),
                given: keep.len(),
            });
        }
        Ok(ImageRegion {
            crop,
            mask: Some(
                keep.iter()
                    .map(|&k| if k != 0 { 0xFF } else { 0 })
                    .collect(),
            ),
            fingerprint: fingerprint(crop, keep),
        })
    }

    /// The crop.
    pub fn crop(&self) -> Rect {
        self.crop
    }

    /// Whether a mask is applied.
    pub fn is_masked(&self) -> bool {
        self.mask.is_some()
    }

    /// Whether `other` is, for preprocessing, the same region: the same crop, and masks that
    /// differ in fewer than [`SAME_MASK_FRACTION`] of its pixels.
    pub fn same_as(&self, other: &ImageRegion) -> bool {
        if self.crop != other.crop {
            return false;
        }
        let differing = match (&self.mask, &other.mask) {
            (None, None) => 0,
            (Some(a), Some(b)) => a.iter().zip(b).filter(|(x, y)| x != y).count(),
            _ => return false,
        };
        (differing as f64) < SAME_MASK_FRACTION * self.crop.area() as f64
    }

    /// The identity of this region for the feature cache.
    pub fn key(&self) -> BeatRegion {
        BeatRegion {
            crop: self.crop,
            mask_fingerprint: self.fingerprint,
        }
    }
}

/// Turns frames into normalised tensors, reusing its buffers from call to call.
pub struct Preprocessor {
    /// Target size and normalisation.
    config: PreprocessConfig,
    /// Kept across calls: it caches filter coefficients for the crop size and holds the
    /// resized plane, so a frame is resized without allocating.
    resampler: Resampler,
    /// Greyscale planes of the beat's frames, `width * height` each, reused.
    grey: Vec<Vec<u8>>,
    /// 1 where a pixel changes across the beat, reused.
    changing: Vec<u8>,
    /// The cropped, masked plane of one frame, reused.
    crop_buf: Vec<u8>,
    /// The luma of a decoded compressed frame, reused.
    decoded: Vec<u8>,
    /// The region of the last beat prepared, for preparing frames of the next one before it
    /// closes.
    last_region: Option<ImageRegion>,
    /// Beats `last_region` has served, up to [`MAX_REGION_BEATS`].
    region_beats: u32,
    /// The region the beat about to close will be prepared under, when it is not
    /// `last_region` ([`Self::expect_beat`]); the next beat prepared clears it.
    next_region: Option<ImageRegion>,
}

impl Preprocessor {
    /// A preprocessor for `config`.
    pub fn new(config: PreprocessConfig) -> Preprocessor {
        Preprocessor {
            resampler: Resampler::new(config.width, config.height),
            config,
            grey: Vec::new(),
            changing: Vec::new(),
            crop_buf: Vec::new(),
            decoded: Vec::new(),
            last_region: None,
            region_beats: 0,
            next_region: None,
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
        let (scale, offset) = self.normalisation();
        let len = self.tensor_len();
        check_output(frames.len(), len, out.len())?;
        let region = self.settle_region(frames)?;
        self.next_region = None;
        let result = (|| {
            for (i, frame) in frames.iter().enumerate() {
                let pixels = self.resize_grey(i, frame.width, &region)?;
                normalise(pixels, scale, offset, &mut out[i * len..(i + 1) * len]);
            }
            Ok(region.key())
        })();
        self.last_region = Some(region);
        result
    }

    /// Preprocesses one beat up to, not including, normalisation: `out` receives
    /// `frames.len()` planes of [`Self::tensor_len`] 8-bit pixels. Training clips are stored
    /// this way, so augmentation acts on pixels and normalisation stays in the manifest.
    pub fn prepare_beat_pixels(
        &mut self,
        frames: &[&Frame],
        out: &mut [u8],
    ) -> Result<BeatRegion, PreprocessError> {
        let len = self.tensor_len();
        check_output(frames.len(), len, out.len())?;
        let region = self.settle_region(frames)?;
        self.next_region = None;
        let result = (|| {
            for (i, frame) in frames.iter().enumerate() {
                let pixels = self.resize_grey(i, frame.width, &region)?;
                out[i * len..(i + 1) * len].copy_from_slice(pixels);
            }
            Ok(region.key())
        })();
        self.last_region = Some(region);
        result
    }

    /// The region a beat is prepared under: its own, unless it is the same as the last
    /// beat's (see [`SAME_MASK_FRACTION`]), in which case the last beat's, unchanged. Taken
    /// out of `last_region`; the caller puts it back.
    fn settle_region(&mut self, frames: &[&Frame]) -> Result<ImageRegion, PreprocessError> {
        let own = self.analyse(frames)?;
        let keep = self.keeps_last_region(&own);
        Ok(match self.last_region.take() {
            Some(last) if keep => {
                self.region_beats += 1;
                last
            }
            _ => {
                self.region_beats = 1;
                own
            }
        })
    }

    /// Whether a beat whose own region is `own` is prepared under the last beat's instead.
    fn keeps_last_region(&self, own: &ImageRegion) -> bool {
        self.region_beats < MAX_REGION_BEATS
            && self
                .last_region
                .as_ref()
                .is_some_and(|last| last.same_as(own))
    }

    /// The beat about to close has `frames` (the daemon knows them while the QRS detector
    /// holds the beat's closing R-peak, `daemon::speculate`): from now until the next beat is
    /// prepared, [`Self::prepare_frame_like_last_beat`] uses the region [`Self::prepare_beat`]
    /// will settle on for these frames, so a beat whose region is estimated anew (a view
    /// change, a mask that moved, the [`MAX_REGION_BEATS`] limit) finds its frames prepared
    /// ahead too. Nothing else changes: the beat still settles its region itself.
    pub fn expect_beat(&mut self, frames: &[&Frame]) -> Result<(), PreprocessError> {
        let own = self.analyse(frames)?;
        self.next_region = (!self.keeps_last_region(&own)).then_some(own);
        Ok(())
    }

    /// The region and mask [`Self::prepare_beat`] would apply to these frames, for preparing
    /// later frames one at a time with [`Self::prepare_frame`].
    pub fn find_region(&mut self, frames: &[&Frame]) -> Result<ImageRegion, PreprocessError> {
        self.analyse(frames)
    }

    /// Preprocesses one frame with a given region: `out` receives [`Self::tensor_len`]
    /// normalised floats, the same values [`Self::prepare_beat`] gives this frame in a beat
    /// whose region is `region`.
    pub fn prepare_frame(
        &mut self,
        frame: &Frame,
        region: &ImageRegion,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        let (scale, offset) = self.normalisation();
        check_output(1, self.tensor_len(), out.len())?;
        let len = self.tensor_len();
        let pixels = self.resize_frame(frame, region)?;
        normalise(pixels, scale, offset, &mut out[..len]);
        Ok(())
    }

    /// [`Self::prepare_frame`] without the normalisation: `out` receives
    /// [`Self::tensor_len`] 8-bit pixels.
    pub fn prepare_frame_pixels(
        &mut self,
        frame: &Frame,
        region: &ImageRegion,
        out: &mut [u8],
    ) -> Result<(), PreprocessError> {
        check_output(1, self.tensor_len(), out.len())?;
        let len = self.tensor_len();
        out[..len].copy_from_slice(self.resize_frame(frame, region)?);
        Ok(())
    }

    /// Prepares one frame as [`Self::prepare_frame`] does, under the region of the last beat
    /// [`Self::prepare_beat`] prepared, or of the beat [`Self::expect_beat`] announced when
    /// that one differs; `Ok(false)` (and `out` untouched) before any beat or when the
    /// frame's size no longer fits that region.
    pub fn prepare_frame_like_last_beat(
        &mut self,
        frame: &Frame,
        out: &mut [f32],
    ) -> Result<bool, PreprocessError> {
        let next = self.next_region.is_some();
        let Some(region) = (if next {
            self.next_region.take()
        } else {
            self.last_region.take()
        }) else {
            return Ok(false);
        };
        let fits = region.crop().fits(frame.width, frame.height);
        let result = if fits {
            self.prepare_frame(frame, &region, out).map(|()| true)
        } else {
            Ok(false)
        };
        if next {
            self.next_region = Some(region);
        } else {
            self.last_region = Some(region);
        }
        result
    }

    /// `(scale, offset)` such that a pixel `p` normalises to `p * scale - offset`.
    fn normalisation(&self) -> (f32, f32) {
        (
            1.0 / (255.0 * self.config.std),
            self.config.mean / self.config.std,
        )
    }

    /// Validates a beat's frames, greys each into `self.grey` and finds the region: the crop
    /// and the mask of pixels that never change.
    fn analyse(&mut self, frames: &[&Frame]) -> Result<ImageRegion, PreprocessError> {
        let first = frames.first().ok_or(PreprocessError::Empty)?;
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
            luma(f, whole(f), grey, &mut self.decoded)?;
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
        let full = whole(first);
        let crop = match self.config.crop {
            Some(c) if !c.fits(first.width, first.height) => {
                return Err(PreprocessError::CropOutside {
                    crop: c,
                    width: first.width,
                    height: first.height,
                });
            }
            Some(c) => c,
            None if use_mask => bounding_box(&self.changing, w, h).unwrap_or(full),
            None => full,
        };
        if !use_mask {
            return Ok(ImageRegion::unmasked(crop));
        }
        let mut keep = vec![0u8; crop.area()];
        copy_rect(&self.changing, w, crop, &mut keep);
        ImageRegion::masked(crop, &keep)
    }

    /// Crops, masks and resizes beat frame `i` from its grey plane in `self.grey`.
    fn resize_grey(
        &mut self,
        i: usize,
        width: u32,
        region: &ImageRegion,
    ) -> Result<&[u8], PreprocessError> {
        let crop = region.crop;
        self.crop_buf.resize(crop.area(), 0);
        copy_rect(&self.grey[i], width as usize, crop, &mut self.crop_buf);
        self.mask_and_resize(region)
    }

    /// Greys, crops, masks and resizes one frame, touching only the cropped rows.
    fn resize_frame(
        &mut self,
        frame: &Frame,
        region: &ImageRegion,
    ) -> Result<&[u8], PreprocessError> {
        frame.validate().map_err(PreprocessError::BadFrame)?;
        let crop = region.crop;
        if !crop.fits(frame.width, frame.height) {
            return Err(PreprocessError::CropOutside {
                crop,
                width: frame.width,
                height: frame.height,
            });
        }
        self.crop_buf.resize(crop.area(), 0);
        luma(frame, crop, &mut self.crop_buf, &mut self.decoded)?;
        self.mask_and_resize(region)
    }

    /// Applies the region's mask to `self.crop_buf` and resizes it to the model size.
    fn mask_and_resize(&mut self, region: &ImageRegion) -> Result<&[u8], PreprocessError> {
        if let Some(mask) = &region.mask {
            for (p, &m) in self.crop_buf.iter_mut().zip(mask) {
                *p &= m;
            }
        }
        let crop = region.crop;
        let (crop_len, buf_len) = (crop.area(), self.crop_buf.len());
        self.resampler
            .resize(&self.crop_buf, crop.width, crop.height)
            .ok_or_else(|| {
                PreprocessError::Resize(format!(
                    "a {}x{} crop needs {crop_len} pixels, the buffer holds {buf_len}",
                    crop.width, crop.height
                ))
            })
    }
}

/// The luma plane of `frame` as preprocessing sees it, `width * height` bytes row by row,
/// written into `out` (resized to fit): for previews, and to check conversions.
pub fn luma_plane(frame: &Frame, out: &mut Vec<u8>) -> Result<(), PreprocessError> {
    frame.validate().map_err(PreprocessError::BadFrame)?;
    out.resize(frame.width as usize * frame.height as usize, 0);
    let mut decoded = Vec::new();
    luma(frame, whole(frame), out, &mut decoded)
}

/// The rectangle covering all of `frame`.
fn whole(frame: &Frame) -> Rect {
    Rect {
        x: 0,
        y: 0,
        width: frame.width,
        height: frame.height,
    }
}

/// Refuses an output buffer shorter than `frames` tensors of `len` values.
fn check_output(frames: usize, len: usize, given: usize) -> Result<(), PreprocessError> {
    if frames == 0 {
        return Err(PreprocessError::Empty);
    }
    if given < frames * len {
        return Err(PreprocessError::OutputTooSmall {
            needed: frames * len,
            given,
        });
    }
    Ok(())
}

/// Writes `p * scale - offset` for each pixel; a plain zip the compiler vectorises.
fn normalise(pixels: &[u8], scale: f32, offset: f32, out: &mut [f32]) {
    for (o, &p) in out.iter_mut().zip(pixels) {
        *o = f32::from(p) * scale - offset;
    }
}

/// Copies `rect` out of a `w`-wide plane into `dst` (`rect` area, no padding).
fn copy_rect(plane: &[u8], w: usize, rect: Rect, dst: &mut [u8]) {
    let (x, cw) = (rect.x as usize, rect.width as usize);
    for (row, d) in dst.chunks_exact_mut(cw).enumerate() {
        let start = (rect.y as usize + row) * w + x;
        d.copy_from_slice(&plane[start..start + cw]);
    }
}

/// Writes the luma of `rect` of a validated `frame` into `dst` (`rect` area, no padding).
/// `decoded` is scratch space for compressed frames, which are decoded whole.
fn luma(
    frame: &Frame,
    rect: Rect,
    dst: &mut [u8],
    decoded: &mut Vec<u8>,
) -> Result<(), PreprocessError> {
    // One row's luma from the row's bytes, the crop's first column and the output row; chosen
    // once per frame so the per-pixel loops inside stay free of format checks.
    let row_luma: fn(&[u8], usize, &mut [u8]) = match frame.format {
        PixelFormat::Mjpeg => return jpeg_luma(frame, rect, dst, decoded),
        // NV12's luma plane comes first and is laid out like GREY.
        PixelFormat::Grey8 | PixelFormat::Nv12 => |src, x, d| {
            d.copy_from_slice(&src[x..x + d.len()]);
        },
        PixelFormat::Yuyv => |src, x, d| packed_luma::<false>(&src[2 * x..2 * (x + d.len())], d),
        PixelFormat::Uyvy => |src, x, d| packed_luma::<true>(&src[2 * x..2 * (x + d.len())], d),
        PixelFormat::Rgb24 => |src, x, d| rgb_luma(&src[3 * x..3 * (x + d.len())], d),
    };
    let stride = frame.stride as usize;
    for (row, d) in dst.chunks_exact_mut(rect.width as usize).enumerate() {
        let start = (rect.y as usize + row) * stride;
        row_luma(&frame.data[start..start + stride], rect.x as usize, d);
    }
    Ok(())
}

/// [`luma`] for a JPEG frame: decodes the whole image (whose size [`Frame::validate`] checked
/// against the frame's) and copies the crop.
fn jpeg_luma(
    frame: &Frame,
    rect: Rect,
    dst: &mut [u8],
    decoded: &mut Vec<u8>,
) -> Result<(), PreprocessError> {
    crate::jpeg::decode_luma(&frame.data, decoded)
        .map_err(|e| PreprocessError::BadFrame(format!("frame {}: {e}", frame.seq)))?;
    copy_rect(decoded, frame.width as usize, rect, dst);
    Ok(())
}

/// The luma bytes of packed 4:2:2: byte 0 of each 2-byte pair for `YUYV` (`HIGH` false),
/// byte 1 for `UYVY` (`HIGH` true); `src` holds exactly two bytes per output pixel. Written as
/// a little-endian 16-bit word per pixel, shifted and truncated, which the compiler turns
/// into mask-or-shift and pack instructions over whole vectors (about 8x faster at 1080p than
/// the same loop picking bytes, which it leaves scalar).
fn packed_luma<const HIGH: bool>(src: &[u8], dst: &mut [u8]) {
    let shift = if HIGH { 8 } else { 0 };
    let (pairs, _) = src.as_chunks::<2>();
    for (d, &pair) in dst.iter_mut().zip(pairs) {
        *d = (u16::from_le_bytes(pair) >> shift) as u8;
    }
}

/// BT.601 luma of packed `R G B` pixels with libjpeg's integer weights. Done 16 pixels at a
/// time over fixed-size arrays, which lets the compiler vectorise the three-byte stride
/// (about 1.6x faster than one pixel at a time).
fn rgb_luma(src: &[u8], dst: &mut [u8]) {
    let y = |p: &[u8]| {
        let sum = LUMA_R * u32::from(p[0]) + LUMA_G * u32::from(p[1]) + LUMA_B * u32::from(p[2]);
        ((sum + 32_768) >> 16) as u8
    };
    let (src_blocks, src_rest) = src.as_chunks::<48>();
    let (dst_blocks, dst_rest) = dst.as_chunks_mut::<16>();
    for (d, s) in dst_blocks.iter_mut().zip(src_blocks) {
        for (i, v) in d.iter_mut().enumerate() {
            *v = y(&s[3 * i..3 * i + 3]);
        }
    }
    for (v, p) in dst_rest.iter_mut().zip(src_rest.chunks_exact(3)) {
        *v = y(p);
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

/// FNV-1a over the crop rectangle and the crop's mask (1 kept, 0 zeroed): identical masks give
/// identical fingerprints, so cached features are reused only when preprocessing would be
/// identical.
fn fingerprint(crop: Rect, keep: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for v in [crop.x, crop.y, crop.width, crop.height] {
        v.to_le_bytes().into_iter().for_each(&mut feed);
    }
    for &k in keep {
        feed(u8::from(k != 0));
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

    #[test]
    fn a_frame_prepared_ahead_of_an_expected_beat_gets_that_beats_new_region() {
        // Beat one's sector is x 10..30; beat two's moved to x 4..36 (a view change): its
        // frames are prepared under its own region, not the last beat's.
        let make = |seq: u64, x0: u32, x1: u32| {
            frame(seq, 40, 30, PixelFormat::Grey8, move |x, y| {
                if (x0..x1).contains(&x) && (5..25).contains(&y) {
                    ((x * 3 + y * 5) as u64 + seq * 17) as u8 | 1
                } else {
                    200
                }
            })
        };
        let one: Vec<Frame> = (0..3).map(|s| make(s, 10, 30)).collect();
        let two: Vec<Frame> = (3..6).map(|s| make(s, 4, 36)).collect();
        let (one, two): (Vec<&Frame>, Vec<&Frame>) = (one.iter().collect(), two.iter().collect());
        let mut pre = Preprocessor::new(config(20, 20));
        let len = pre.tensor_len();
        let mut beat = vec![0.0; 3 * len];
        pre.prepare_beat(&one, &mut beat).unwrap();
        let (mut like_last, mut expected) = (vec![0.0; len], vec![0.0; len]);
        assert!(
            pre.prepare_frame_like_last_beat(two[1], &mut like_last)
                .unwrap()
        );
        pre.expect_beat(&two).unwrap();
        assert!(
            pre.prepare_frame_like_last_beat(two[1], &mut expected)
                .unwrap()
        );
        pre.prepare_beat(&two, &mut beat).unwrap();
        let own = &beat[len..2 * len];
        assert_ne!(
            like_last, own,
            "the last beat's region gives another tensor"
        );
        assert_eq!(
            expected, own,
            "the expected beat's region gives the beat's own"
        );
        // Prepared: frames ahead follow the last beat (now beat two) again.
        let mut after = vec![0.0; len];
        assert!(
            pre.prepare_frame_like_last_beat(two[1], &mut after)
                .unwrap()
        );
        assert_eq!(after, own);
        // A beat that keeps the last region changes nothing.
        pre.expect_beat(&two).unwrap();
        assert!(
            pre.prepare_frame_like_last_beat(two[2], &mut after)
                .unwrap()
        );
        assert_eq!(after, &beat[2 * len..]);
    }
}
