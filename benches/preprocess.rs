//! Per-frame preprocessing cost: a 1920x1080 YUYV frame to a 288x288 float tensor.
//!
//! `cargo bench --bench preprocess` (one thread; divan prints the fastest, slowest, median and
//! mean time per frame). The work timed is what a live pipeline does per captured frame once
//! the image region is known: luma extraction, crop, overlay mask, resize, normalisation.
//!
//! Two regions: `sector`, the crop and mask found from a synthetic beat (a 90-degree sector
//! under a static overlay, as carts show it), and `full_frame`, the whole frame with a mask,
//! the most work a frame can need. Each is timed three ways in the same run:
//! * `fast`: [`Preprocessor::prepare_frame`] (vectorised luma and mask loops, our
//!   [`Resampler`] with cached coefficients);
//! * `scalar_naive`: straightforward per-pixel loops and a naive 4-tap bilinear sample per
//!   output pixel (cheaper arithmetic than a proper downscale, which aliases, but the loops
//!   are the ones a first implementation would write);
//! * `scalar_conv`: the same per-pixel loops with a scalar separable triangle-filter
//!   convolution, the filter `fast_image_resize` applies, so equal output for equal work.
//!
//! And the resize step alone, on the masked crop, both ways in the same run: `resize_ours`
//! ([`Resampler`], what preprocessing uses) and `resize_fast_image_resize` (the crate it
//! replaced, which allocates on every call), after checking they agree bit for bit.
//!
//! Before timing, the fast and `scalar_conv` tensors are checked to agree within one grey
//! level, so the comparison is between implementations of the same thing.

use divan::Bencher;
use echoview::media::{Frame, PixelFormat};
use echoview::preprocess::{ImageRegion, PreprocessConfig, Preprocessor, Rect};
use echoview::resample::Resampler;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

const W: u32 = 1920;
const H: u32 = 1080;
const OUT: u32 = 288;
const MEAN: f32 = 0.2;
const STD: f32 = 0.25;

fn main() {
    divan::main();
}

/// A deterministic pseudo-random byte stream (64-bit LCG), for speckle.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 56) as u8
    }
}

/// Frame `seq` of a synthetic cart display in YUYV: a speckled sector that changes every
/// frame, a static text band and logo, neutral chroma. Rows padded to a 64-byte multiple.
fn cart_frame(seq: u64) -> Frame {
    let stride = (2 * W).div_ceil(64) * 64;
    let mut data = vec![128u8; (stride * H) as usize];
    let mut rng = Lcg(seq * 7_919 + 1);
    let (apex_x, apex_y, radius) = (960.0f32, 90.0f32, 900.0f32);
    for y in 0..H {
        for x in 0..W {
            let (dx, dy) = (x as f32 - apex_x, y as f32 - apex_y);
            let r = (dx * dx + dy * dy).sqrt();
            let inside = dy > 0.0 && dx.abs() < dy && r < radius;
            let text = y < 60 && (x / 9) % 3 != 0 && x < 700;
            let luma = if inside {
                let tissue = 60.0 + 120.0 * (r / 90.0).sin().abs();
                (tissue + f32::from(rng.next()) * 0.3) as u8
            } else if text {
                235
            } else {
                16
            };
            data[(y * stride + 2 * x) as usize] = luma;
        }
    }
    Frame {
        seq,
        t_ns: seq * 33_333_333,
        width: W,
        height: H,
        stride,
        format: PixelFormat::Yuyv,
        data,
    }
}

fn config() -> PreprocessConfig {
    PreprocessConfig {
        width: OUT,
        height: OUT,
        mean: MEAN,
        std: STD,
        crop: None,
    }
}

/// The frame to time, and the region: found from a 3-frame beat, or the whole frame with the
/// beat's mask laid over it.
fn setup(full_frame: bool) -> (Frame, ImageRegion, Vec<u8>) {
    let beat: Vec<Frame> = (0..3).map(cart_frame).collect();
    let refs: Vec<&Frame> = beat.iter().collect();
    let mut pre = Preprocessor::new(config());
    let sector = pre
        .find_region(&refs)
        .expect("the synthetic beat has a sector");
    let whole = Rect {
        x: 0,
        y: 0,
        width: W,
        height: H,
    };
    let crop = if full_frame { whole } else { sector.crop() };
    // The keep mask over `crop`: pixels that change across the beat.
    let mut keep = vec![0u8; (crop.width * crop.height) as usize];
    for (i, k) in keep.iter_mut().enumerate() {
        let x = crop.x as usize + i % crop.width as usize;
        let y = crop.y as usize + i / crop.width as usize;
        let at = y * beat[0].stride as usize + 2 * x;
        *k = u8::from(beat.iter().any(|f| f.data[at] != beat[0].data[at]));
    }
    let region = ImageRegion::masked(crop, &keep).expect("mask matches crop");
    let frame = beat.into_iter().last().expect("three frames");
    (frame, region, keep)
}

/// The straightforward version: per-pixel loops throughout.
struct Scalar {
    /// Luma of the whole frame.
    grey: Vec<u8>,
    /// The crop, masked.
    crop: Vec<u8>,
    /// Horizontal pass of the convolution (crop height x OUT).
    tmp: Vec<f32>,
}

impl Scalar {
    fn new() -> Scalar {
        Scalar {
            grey: Vec::new(),
            crop: Vec::new(),
            tmp: Vec::new(),
        }
    }

    /// Luma plane, crop and mask, one pixel at a time.
    fn grey_crop_mask(&mut self, f: &Frame, crop: Rect, keep: &[u8]) {
        let (w, h) = (f.width as usize, f.height as usize);
        self.grey.resize(w * h, 0);
        for y in 0..h {
            for x in 0..w {
                self.grey[y * w + x] = f.data[y * f.stride as usize + 2 * x];
            }
        }
        let (cw, ch) = (crop.width as usize, crop.height as usize);
        self.crop.resize(cw * ch, 0);
        for y in 0..ch {
            for x in 0..cw {
                let p = self.grey[(crop.y as usize + y) * w + crop.x as usize + x];
                self.crop[y * cw + x] = if keep[y * cw + x] != 0 { p } else { 0 };
            }
        }
    }

    /// Naive bilinear: four taps around each output pixel's centre.
    fn naive(&mut self, f: &Frame, crop: Rect, keep: &[u8], out: &mut [f32]) {
        self.grey_crop_mask(f, crop, keep);
        let (cw, ch) = (crop.width as usize, crop.height as usize);
        let (sx, sy) = (cw as f32 / OUT as f32, ch as f32 / OUT as f32);
        for oy in 0..OUT as usize {
            let fy = ((oy as f32 + 0.5) * sy - 0.5).clamp(0.0, (ch - 1) as f32);
            let (y0, ty) = (fy as usize, fy.fract());
            let y1 = (y0 + 1).min(ch - 1);
            for ox in 0..OUT as usize {
                let fx = ((ox as f32 + 0.5) * sx - 0.5).clamp(0.0, (cw - 1) as f32);
                let (x0, tx) = (fx as usize, fx.fract());
                let x1 = (x0 + 1).min(cw - 1);
                let p = |x: usize, y: usize| f32::from(self.crop[y * cw + x]);
                let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
                let bottom = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
                let v = (top * (1.0 - ty) + bottom * ty).round();
                out[oy * OUT as usize + ox] = (v / 255.0 - MEAN) / STD;
            }
        }
    }

    /// Separable triangle-filter convolution with a support widened by the scale factor.
    fn conv(&mut self, f: &Frame, crop: Rect, keep: &[u8], out: &mut [f32]) {
        self.grey_crop_mask(f, crop, keep);
        let (cw, ch) = (crop.width as usize, crop.height as usize);
        let n = OUT as usize;
        self.tmp.resize(ch * n, 0.0);
        for y in 0..ch {
            for ox in 0..n {
                let v = tap(cw, n, ox, |x| f32::from(self.crop[y * cw + x]));
                self.tmp[y * n + ox] = v;
            }
        }
        for oy in 0..n {
            for ox in 0..n {
                let v = tap(ch, n, oy, |y| self.tmp[y * n + ox])
                    .round()
                    .clamp(0.0, 255.0);
                out[oy * n + ox] = (v / 255.0 - MEAN) / STD;
            }
        }
    }
}

/// One output sample of a triangle filter resampling `src_len` samples to `dst_len`.
fn tap(src_len: usize, dst_len: usize, o: usize, sample: impl Fn(usize) -> f32) -> f32 {
    let scale = src_len as f32 / dst_len as f32;
    let support = scale.max(1.0);
    let centre = (o as f32 + 0.5) * scale;
    let first = (centre - support).floor().max(0.0) as usize;
    let last = ((centre + support).ceil() as usize).min(src_len);
    let (mut sum, mut weights) = (0.0f32, 0.0f32);
    for i in first..last {
        let w = (1.0 - ((i as f32 + 0.5 - centre) / support).abs()).max(0.0);
        sum += w * sample(i);
        weights += w;
    }
    sum / weights
}

/// Largest difference between two tensors, in grey levels.
fn max_diff_levels(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() * STD * 255.0)
        .fold(0.0, f32::max)
}

#[divan::bench(args = [false, true], name = "fast")]
fn fast(bencher: Bencher, full_frame: bool) {
    let (frame, region, keep) = setup(full_frame);
    let mut pre = Preprocessor::new(config());
    let mut out = vec![0.0f32; (OUT * OUT) as usize];
    pre.prepare_frame(&frame, &region, &mut out).unwrap();
    let mut reference = vec![0.0f32; out.len()];
    Scalar::new().conv(&frame, region.crop(), &keep, &mut reference);
    let diff = max_diff_levels(&out, &reference);
    assert!(
        diff <= 1.01,
        "fast and scalar_conv differ by {diff} grey levels"
    );
    eprintln!(
        "\n[{}] crop {:?}; fast vs scalar_conv: max {diff:.2} grey levels",
        if full_frame { "full_frame" } else { "sector" },
        region.crop()
    );
    bencher.bench_local(|| {
        pre.prepare_frame(&frame, &region, &mut out).unwrap();
        divan::black_box(&out);
    });
}

#[divan::bench(args = [false, true], name = "scalar_naive")]
fn scalar_naive(bencher: Bencher, full_frame: bool) {
    let (frame, region, keep) = setup(full_frame);
    let mut s = Scalar::new();
    let mut out = vec![0.0f32; (OUT * OUT) as usize];
    bencher.bench_local(|| {
        s.naive(&frame, region.crop(), &keep, &mut out);
        divan::black_box(&out);
    });
}

#[divan::bench(args = [false, true], name = "scalar_conv")]
fn scalar_conv(bencher: Bencher, full_frame: bool) {
    let (frame, region, keep) = setup(full_frame);
    let mut s = Scalar::new();
    let mut out = vec![0.0f32; (OUT * OUT) as usize];
    bencher.bench_local(|| {
        s.conv(&frame, region.crop(), &keep, &mut out);
        divan::black_box(&out);
    });
}

/// The masked crop of the frame to time, as preprocessing hands it to the resampler.
fn masked_crop(full_frame: bool) -> (Vec<u8>, Rect) {
    let (frame, region, keep) = setup(full_frame);
    let mut s = Scalar::new();
    s.grey_crop_mask(&frame, region.crop(), &keep);
    (s.crop, region.crop())
}

/// `crop` resized by `fast_image_resize`, reusing its resizer and output image.
fn fir_resize(resizer: &mut Resizer, dst: &mut Image<'static>, crop: &[u8], rect: Rect) {
    let src = ImageRef::new(rect.width, rect.height, crop, PixelType::U8).unwrap();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer.resize(&src, dst, &options).unwrap();
}

#[divan::bench(args = [false, true], name = "resize_ours")]
fn resize_ours(bencher: Bencher, full_frame: bool) {
    let (crop, rect) = masked_crop(full_frame);
    let mut ours = Resampler::new(OUT, OUT);
    let mut resizer = Resizer::new();
    let mut theirs = Image::new(OUT, OUT, PixelType::U8);
    fir_resize(&mut resizer, &mut theirs, &crop, rect);
    assert_eq!(
        ours.resize(&crop, rect.width, rect.height).unwrap(),
        theirs.buffer(),
        "the resamplers differ"
    );
    bencher.bench_local(|| {
        divan::black_box(ours.resize(&crop, rect.width, rect.height));
    });
}

#[divan::bench(args = [false, true], name = "resize_fast_image_resize")]
fn resize_fast_image_resize(bencher: Bencher, full_frame: bool) {
    let (crop, rect) = masked_crop(full_frame);
    let mut resizer = Resizer::new();
    let mut dst = Image::new(OUT, OUT, PixelType::U8);
    bencher.bench_local(|| {
        fir_resize(&mut resizer, &mut dst, &crop, rect);
        divan::black_box(dst.buffer());
    });
}
