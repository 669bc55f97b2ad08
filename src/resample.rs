//! Resizing an 8-bit plane with a separable triangle (bilinear) filter whose support widens
//! with the downscale factor, so a 1080p crop shrinks to the model's input without aliasing.
//!
//! Why our own and not `fast_image_resize`: that crate recomputes its filter coefficients and
//! collects row references on every call (262 heap allocations per 1080p frame), and issue 8's
//! budget is zero allocations per frame. Here the coefficients are computed once per (source
//! size, target size) and every buffer is kept, so resizing a frame allocates nothing once the
//! first frame of a size has been resized.
//!
//! The arithmetic is `fast_image_resize` 5's for `FilterType::Bilinear` with an adaptive
//! kernel, step for step, so outputs are bit-identical to the path it replaces (a test checks
//! this against the crate, a dev-dependency): weights from the filter in `f64`, normalised
//! per output sample, quantised to `i16` at the largest precision that keeps the biggest
//! weight below 2^15; a vertical pass first into an 8-bit intermediate over only the columns
//! the horizontal pass reads, rounded to nearest, then the horizontal pass. The vertical
//! pass, most of the work, sums blocks of columns in registers across its taps, which the
//! compiler vectorises; on x86-64 CPUs with AVX2 both passes run compiled for it (chosen at
//! run time, as the replaced crate chooses its kernels), elsewhere for the baseline (SSE2,
//! or NEON on the Jetson's aarch64).

use std::ops::Range;

/// Bits the 32-bit accumulator keeps for the fraction: 8 for the pixel, 2 spare for filters
/// whose weights overshoot (as `fast_image_resize` reserves; the triangle never does).
const PRECISION_BITS: u8 = 32 - 8 - 2;

/// Weights are `i16`: the largest must stay below `2^15`.
const MAX_WEIGHT_BITS: u8 = 15;

/// The filter's half-width at scale 1: the triangle is zero from distance 1 on.
const FILTER_SUPPORT: f64 = 1.0;

/// The triangle filter.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// One output sample's window: its first input sample and where its weights lie in
/// [`Taps::weights`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    /// First input sample weighted.
    start: usize,
    /// Its weights' indices in [`Taps::weights`], one per input sample from `start` on.
    weights: Range<usize>,
}

/// Fixed-point filter weights for resampling `source` samples to `target` along one axis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Taps {
    /// Fractional bits of [`Self::weights`].
    precision: u8,
    /// One window per output sample.
    spans: Vec<Span>,
    /// All windows' weights, back to back.
    weights: Vec<i16>,
}

impl Taps {
    /// Recomputes the weights for `source` to `target` samples, reusing this value's buffers
    /// and `scratch` (the `f64` weights before quantisation), so a size seen before, or a
    /// smaller one, allocates nothing.
    fn compute(&mut self, source: usize, target: usize, scratch: &mut Vec<f64>) {
        self.spans.clear();
        self.weights.clear();
        scratch.clear();
        if source == 0 || target == 0 {
            self.precision = 0;
            return;
        }
        let scale = source as f64 / target as f64;
        let filter_scale = scale.max(1.0);
        let radius = FILTER_SUPPORT * filter_scale;
        let recip_filter_scale = 1.0 / filter_scale;
        // First pass: normalised f64 weights, with zero weights at either end of a window
        // dropped, as the replaced resampler drops them.
        let mut max_weight = 0.0f64;
        for out in 0..target {
            let in_centre = (out as f64 + 0.5) * scale;
            let first = (in_centre - radius).floor().max(0.0) as usize;
            let end = ((in_centre + radius).ceil().min(source as f64)) as usize;
            let centre = in_centre - 0.5;
            let at = scratch.len();
            let mut start = first;
            let mut sum = 0.0;
            for x in first..end {
                let w = triangle((x as f64 - centre) * recip_filter_scale);
                if x == start && w == 0.0 {
                    start += 1;
                } else {
                    scratch.push(w);
                    sum += w;
                }
            }
            while scratch.len() > at && scratch.last() == Some(&0.0) {
                scratch.pop();
            }
            if sum != 0.0 {
                for w in &mut scratch[at..] {
                    *w /= sum;
                    max_weight = max_weight.max(*w);
                }
            }
            self.spans.push(Span {
                start,
                weights: at..scratch.len(),
            });
        }
        // The largest precision at which the biggest weight still fits an i16.
        let mut precision = 0u8;
        for p in 0..PRECISION_BITS {
            precision = p;
            let next = (max_weight * f64::from(1u32 << (p + 1))).round() as i64;
            if next >= 1 << MAX_WEIGHT_BITS {
                break;
            }
        }
        self.precision = precision;
        let one = f64::from(1u32 << precision);
        self.weights
            .extend(scratch.iter().map(|&w| (w * one).round() as i16));
    }

    /// The input samples any output sample reads: from the first window's start to the last
    /// window's end (windows move forward with the output).
    fn reach(&self) -> Range<usize> {
        match (self.spans.first(), self.spans.last()) {
            (Some(first), Some(last)) => first.start..last.start + last.weights.len(),
            _ => 0..0,
        }
    }
}

/// Lanes of the horizontal pass's sums: windows are padded to a multiple of this.
const LANES: usize = 8;

/// The horizontal weights laid out for vectorised dot products: every window padded with
/// zero weights to one length, a multiple of [`LANES`], and moved left where it would run
/// past the row's end. Zero weights add nothing, so sums are exactly those of [`Taps`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PaddedTaps {
    /// Weights per window; 0 when the row is narrower than a padded window (then the plain
    /// [`Taps`] are used).
    window: usize,
    /// Each window's first column, relative to the first column the pass reads.
    starts: Vec<usize>,
    /// `window` weights per output sample, back to back.
    weights: Vec<i16>,
}

impl PaddedTaps {
    /// Lays out `taps` for rows of `width` columns starting at source column `first`.
    fn compute(&mut self, taps: &Taps, first: usize, width: usize) {
        self.starts.clear();
        self.weights.clear();
        let longest = taps
            .spans
            .iter()
            .map(|s| s.weights.len())
            .max()
            .unwrap_or(0);
        self.window = longest.div_ceil(LANES).max(1) * LANES;
        if self.window > width {
            self.window = 0;
            return;
        }
        for span in &taps.spans {
            let own = span.start - first;
            let start = own.min(width - self.window);
            let lead = own - start;
            let weights = &taps.weights[span.weights.clone()];
            self.starts.push(start);
            self.weights.extend(std::iter::repeat_n(0, lead));
            self.weights.extend_from_slice(weights);
            let tail = self.window - lead - weights.len();
            self.weights.extend(std::iter::repeat_n(0, tail));
        }
    }
}

/// Rounds a fixed-point sum at `precision` fractional bits to a pixel, saturating.
fn to_pixel(sum: i32, precision: u8) -> u8 {
    (sum >> precision).clamp(0, 255) as u8
}

/// The fixed-point value of one half at `precision` bits, added before truncation so that it
/// rounds to nearest.
fn half(precision: u8) -> i32 {
    if precision == 0 {
        0
    } else {
        1 << (precision - 1)
    }
}

/// Columns the vertical pass sums at once: their 32-bit sums stay in vector registers across
/// all of an output row's taps, instead of going through memory once per tap.
const BLOCK: usize = 32;

/// One output row of the vertical pass: `out[x]` is the weighted sum of the pixels at
/// `first + x` of consecutive `stride`-long rows of `src`, one row per weight. Inlined, so
/// it is compiled for the caller's instruction set.
#[inline(always)]
fn vertical_row(
    src: &[u8],
    stride: usize,
    first: usize,
    weights: &[i16],
    precision: u8,
    out: &mut [u8],
) {
    let initial = half(precision);
    let width = out.len();
    let (blocks, rest) = out.as_chunks_mut::<BLOCK>();
    for (b, block) in blocks.iter_mut().enumerate() {
        let mut sums = [initial; BLOCK];
        for (k, &w) in weights.iter().enumerate() {
            let at = first + k * stride + b * BLOCK;
            let Some(pixels) = src.get(at..at + BLOCK) else {
                continue;
            };
            let w = i32::from(w);
            for (s, &p) in sums.iter_mut().zip(pixels) {
                *s += i32::from(p) * w;
            }
        }
        for (o, &s) in block.iter_mut().zip(&sums) {
            *o = to_pixel(s, precision);
        }
    }
    let done = width - rest.len();
    for (x, o) in rest.iter_mut().enumerate() {
        let sum = weights.iter().enumerate().fold(initial, |s, (k, &w)| {
            let p = src.get(first + k * stride + done + x).copied().unwrap_or(0);
            s + i32::from(p) * i32::from(w)
        });
        *o = to_pixel(sum, precision);
    }
}

/// Resizes 8-bit planes to one target size, keeping its coefficients and buffers between
/// calls: after the first call for a source size, calls allocate nothing.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Target width.
    width: usize,
    /// Target height.
    height: usize,
    /// The source size the cached weights are for; `None` before the first call.
    source: Option<(usize, usize)>,
    /// Horizontal weights, source width to target width.
    horizontal: Taps,
    /// [`Self::horizontal`] padded for the vectorised pass.
    padded: PaddedTaps,
    /// Vertical weights, source height to target height.
    vertical: Taps,
    /// `f64` weights before quantisation, kept so recomputing allocates only when a size
    /// needs more room than any before.
    scratch: Vec<f64>,
    /// The vertical pass's output: target height rows of the columns the horizontal pass
    /// reads.
    middle: Vec<u8>,
    /// The resized plane, target width by target height.
    out: Vec<u8>,
    /// The CPU has AVX2: resize with the passes compiled for it.
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl Resampler {
    /// A resampler to `width` x `height` pixels.
    pub fn new(width: u32, height: u32) -> Resampler {
        Resampler {
            width: width as usize,
            height: height as usize,
            source: None,
            horizontal: Taps::default(),
            padded: PaddedTaps::default(),
            vertical: Taps::default(),
            scratch: Vec::new(),
            middle: Vec::new(),
            out: vec![0; width as usize * height as usize],
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
        }
    }

    /// Resizes the `width` x `height` plane `src` (row by row, no padding) to the target size
    /// and returns the result, target width by target height, row by row. `None` when `src`
    /// holds fewer than `width * height` bytes.
    pub fn resize(&mut self, src: &[u8], width: u32, height: u32) -> Option<&[u8]> {
        let (sw, sh) = (width as usize, height as usize);
        let src = src.get(..sw.checked_mul(sh)?)?;
        if self.source != Some((sw, sh)) {
            self.horizontal.compute(sw, self.width, &mut self.scratch);
            let reach = self.horizontal.reach();
            self.padded
                .compute(&self.horizontal, reach.start, reach.len());
            self.vertical.compute(sh, self.height, &mut self.scratch);
            self.source = Some((sw, sh));
        }
        if self.out.is_empty() || src.is_empty() {
            return Some(&self.out);
        }
        let columns = self.horizontal.reach();
        self.middle.resize(columns.len() * self.height, 0);
        let passes = Passes {
            src,
            stride: sw,
            columns,
            vertical: &self.vertical,
            horizontal: &self.horizontal,
            padded: &self.padded,
        };
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is true only when the CPU reported AVX2 (`Resampler::new`).
            unsafe { passes.run_avx2(&mut self.middle, &mut self.out) };
            return Some(&self.out);
        }
        passes.run(&mut self.middle, &mut self.out);
        Some(&self.out)
    }
}

/// One resize's inputs: the source plane and the weights of both passes.
struct Passes<'a> {
    /// The source plane.
    src: &'a [u8],
    /// Its width.
    stride: usize,
    /// The source columns the horizontal pass reads, which the vertical pass computes.
    columns: Range<usize>,
    /// Vertical weights.
    vertical: &'a Taps,
    /// Horizontal weights.
    horizontal: &'a Taps,
    /// The same, padded.
    padded: &'a PaddedTaps,
}

impl Passes<'_> {
    /// [`Self::run`] compiled for AVX2, whose 256-bit vectors halve the instructions of the
    /// vertical pass (the crate this replaces picks its kernels the same way).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, middle: &mut [u8], out: &mut [u8]) {
        self.run(middle, out);
    }

    /// The vertical pass into `middle` (target height rows of [`Self::columns`]), then the
    /// horizontal pass into `out`. Inlined into each caller, so it is compiled for the
    /// caller's instruction set.
    #[inline(always)]
    fn run(&self, middle: &mut [u8], out: &mut [u8]) {
        let width = self.columns.len();
        let taps = self.vertical;
        for (span, row_out) in taps.spans.iter().zip(middle.chunks_exact_mut(width)) {
            let weights = &taps.weights[span.weights.clone()];
            let first = span.start * self.stride + self.columns.start;
            vertical_row(
                self.src,
                self.stride,
                first,
                weights,
                taps.precision,
                row_out,
            );
        }
        let taps = self.horizontal;
        let initial = half(taps.precision);
        let target_width = taps.spans.len();
        let padded = self.padded;
        for (row, row_out) in middle
            .chunks_exact(width)
            .zip(out.chunks_exact_mut(target_width))
        {
            if padded.window == 0 {
                for (span, o) in taps.spans.iter().zip(row_out) {
                    let start = span.start - self.columns.start;
                    let weights = &taps.weights[span.weights.clone()];
                    let pixels = &row[start..start + weights.len()];
                    let sum = pixels
                        .iter()
                        .zip(weights)
                        .fold(initial, |s, (&p, &w)| s + i32::from(p) * i32::from(w));
                    *o = to_pixel(sum, taps.precision);
                }
                continue;
            }
            let windows = padded.weights.chunks_exact(padded.window);
            for ((&start, weights), o) in padded.starts.iter().zip(windows).zip(row_out) {
                let pixels = &row[start..start + padded.window];
                let mut sums = [0i32; LANES];
                let (pixel_blocks, _) = pixels.as_chunks::<LANES>();
                let (weight_blocks, _) = weights.as_chunks::<LANES>();
                for (p, w) in pixel_blocks.iter().zip(weight_blocks) {
                    for ((s, &p), &w) in sums.iter_mut().zip(p).zip(w) {
                        *s += i32::from(p) * i32::from(w);
                    }
                }
                *o = to_pixel(initial + sums.iter().sum::<i32>(), taps.precision);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

    /// A deterministic textured plane: smooth gradients plus LCG speckle, every value used.
    fn plane(w: u32, h: u32, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..w * h)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let (x, y) = (i % w, i / w);
                let smooth = (x * 255 / w.max(1) + y * 128 / h.max(1)) / 2;
                (smooth as u8).wrapping_add((state >> 59) as u8)
            })
            .collect()
    }

    /// What the replaced path (`fast_image_resize`, bilinear convolution) gives.
    fn reference(src: &[u8], w: u32, h: u32, tw: u32, th: u32) -> Vec<u8> {
        let src = ImageRef::new(w, h, src, PixelType::U8).unwrap();
        let mut dst = Image::new(tw, th, PixelType::U8);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new().resize(&src, &mut dst, &options).unwrap();
        dst.buffer().to_vec()
    }

    #[test]
    fn matches_fast_image_resize_bit_for_bit() {
        // Downscales of a 1080p sector and of odd sizes, upscales, one axis kept, identity.
        let cases = [
            (1701, 811, 288, 288),
            (1701, 811, 128, 128),
            (1920, 1080, 288, 288),
            (37, 23, 7, 5),
            (7, 5, 37, 23),
            (300, 100, 300, 40),
            (100, 300, 40, 300),
            (64, 64, 64, 64),
            (1, 1, 3, 2),
            (5, 1, 2, 1),
        ];
        for (i, &(w, h, tw, th)) in cases.iter().enumerate() {
            let src = plane(w, h, i as u64);
            let mut resampler = Resampler::new(tw, th);
            let ours = resampler.resize(&src, w, h).unwrap().to_vec();
            assert_eq!(
                ours,
                reference(&src, w, h, tw, th),
                "{w}x{h} -> {tw}x{th} differs"
            );
        }
    }

    #[test]
    fn a_new_source_size_recomputes_the_weights() {
        let mut resampler = Resampler::new(16, 16);
        let big = plane(200, 120, 1);
        let small = plane(40, 30, 2);
        resampler.resize(&big, 200, 120).unwrap();
        let ours = resampler.resize(&small, 40, 30).unwrap().to_vec();
        assert_eq!(ours, reference(&small, 40, 30, 16, 16));
        let ours = resampler.resize(&big, 200, 120).unwrap().to_vec();
        assert_eq!(ours, reference(&big, 200, 120, 16, 16));
    }

    #[test]
    fn a_flat_plane_stays_flat() {
        let mut resampler = Resampler::new(13, 9);
        for v in [0u8, 1, 128, 254, 255] {
            let src = vec![v; 97 * 61];
            let out = resampler.resize(&src, 97, 61).unwrap();
            assert!(out.iter().all(|&p| p == v), "{v}: {out:?}");
        }
    }

    #[test]
    fn a_short_source_is_refused() {
        let mut resampler = Resampler::new(4, 4);
        assert!(resampler.resize(&[0; 99], 10, 10).is_none());
        assert!(resampler.resize(&[0; 100], 10, 10).is_some());
    }
}
