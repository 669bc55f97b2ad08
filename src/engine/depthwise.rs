//! Our own depthwise convolution for tract plans, because tract's trails onnxruntime on the
//! EfficientNet encoders (a third of a frame went to it, issue #8).
//!
//! A depthwise convolution (one filter per channel: `group == input channels == output
//! channels`) does a few multiply-adds per output point, so it is bound by how its inner loop
//! reads memory, not by arithmetic. This one works on a zero-padded copy of one channel plane
//! at a time, so every output row is `K` passes of `K` contiguous taps with no border cases:
//! `out[x] += w[ky][kx] * padded_row[x + kx]`, a loop the compiler vectorises. A stride-2 row
//! is first split into its even and odd columns, which makes its taps contiguous as well.
//! Channel planes are independent, so they are split across tract's executor when it has
//! threads (each output value is computed the same way on any thread count).
//!
//! In an EfficientNet every depthwise convolution is followed by a SiLU, whose output a
//! squeeze-excitation block sums per channel. The op takes both in: each plane gets its SiLU
//! and its sum as soon as it is computed, while it is still in cache, instead of in two more
//! passes of tract's over the whole tensor; the sums are the op's second output.
//!
//! [`substitute`] swaps every convolution of a decluttered [`TypedModel`] that this op covers
//! (see [`DepthwiseConv::from_conv`]) and leaves every other one to tract. Each output point sums
//! its taps in a different order than tract does (float reassociation only); where the CPU
//! has fused multiply-add (x86-64 with AVX2 and FMA, every aarch64), each tap is one fused
//! multiply-add, as in tract's own kernels.

use std::sync::Arc;

// tract's own ops import its internals wholesale; the macros below expect them in scope.
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};

use super::fusion::{is_silu, sole_consumer};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::mul_add::Fused;
use super::mul_add::MulAdd;
#[cfg(not(target_arch = "aarch64"))]
use super::mul_add::Plain;
use super::reuse::{self, IntoOutputs};

/// Why a convolution stays tract's: the cases this op does not cover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// Not one filter per channel.
    #[error("not depthwise (group {group}, {inputs} input and {outputs} output channels)")]
    NotDepthwise {
        /// Convolution groups.
        group: usize,
        /// Input channels.
        inputs: usize,
        /// Output channels.
        outputs: usize,
    },
    /// Quantised, non-f32, or not laid out NCHW with an OIHW kernel.
    #[error("not an f32 NCHW convolution with an OIHW kernel")]
    Layout,
    /// A kernel size other than 3x3 or 5x5, a stride other than 1 or 2 (the same on both
    /// axes), or a dilation.
    #[error("kernel {kernel:?}, strides {strides:?}, dilations {dilations:?}")]
    Geometry {
        /// Kernel height and width.
        kernel: Vec<usize>,
        /// Strides.
        strides: Vec<usize>,
        /// Dilations.
        dilations: Vec<usize>,
    },
    /// The input shape is not known, or the padding leaves output points with no input.
    #[error("shape or padding not covered: {0}")]
    Shape(String),
    /// The weights or the bias are computed at run time rather than constants.
    #[error("weights or bias are not constants")]
    NotConstant,
}

/// The shape of one depthwise convolution: everything but the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Output channels (one filter each).
    pub channels: usize,
    /// Output channels per input channel (ONNX's "depth multiplier"): 1 for the blocks'
    /// depthwise convolutions; the EfficientNet stem, one grey input plane to 32 channels,
    /// is 32. Output channel `c` reads input channel `c / multiplier`.
    pub multiplier: usize,
    /// Kernel height and width, 3 or 5.
    pub kernel: usize,
    /// Stride on both axes, 1 or 2.
    pub stride: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl Geometry {
    /// Checks a geometry: the kernel and stride this op has loops for, and an output that
    /// the padded input covers, so the row loops never index outside the padded plane.
    pub fn new(
        channels: usize,
        kernel: usize,
        stride: usize,
        (in_h, in_w): (usize, usize),
        (pad_top, pad_left): (usize, usize),
        (out_h, out_w): (usize, usize),
    ) -> Result<Geometry, Unsupported> {
        if !matches!(kernel, 3 | 5) || !matches!(stride, 1 | 2) {
            return Err(Unsupported::Geometry {
                kernel: vec![kernel, kernel],
                strides: vec![stride, stride],
                dilations: vec![1, 1],
            });
        }
        let g = Geometry {
            channels,
            multiplier: 1,
            kernel,
            stride,
            in_h,
            in_w,
            pad_top,
            pad_left,
            out_h,
            out_w,
        };
        if channels == 0 || in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
            return Err(Unsupported::Shape(format!("empty dimension in {g:?}")));
        }
        // The padding must not start beyond the kernel's reach, or the first output point
        // would see no input at all (tract allows it; no real model does it).
        if pad_top >= kernel || pad_left >= kernel {
            return Err(Unsupported::Shape(format!(
                "padding wider than the kernel in {g:?}"
            )));
        }
        Ok(g)
    }

    /// The same convolution with `multiplier` output channels per input channel; `channels`
    /// must be a multiple of it.
    pub fn with_multiplier(self, multiplier: usize) -> Result<Geometry, Unsupported> {
        if multiplier == 0 || !self.channels.is_multiple_of(multiplier) {
            return Err(Unsupported::Shape(format!(
                "{} output channels are not a multiple of {multiplier}",
                self.channels
            )));
        }
        Ok(Geometry { multiplier, ..self })
    }

    /// Height of the padded plane: every row any output row reads.
    fn padded_h(&self) -> usize {
        (self.out_h - 1) * self.stride + self.kernel
    }

    /// Width of the padded plane: every column any output point reads.
    fn padded_w(&self) -> usize {
        (self.out_w - 1) * self.stride + self.kernel
    }

    /// Values in one input channel plane.
    pub fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    /// Values in one output channel plane.
    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Values in the kernel of one channel.
    pub fn taps(&self) -> usize {
        self.kernel * self.kernel
    }

    /// Computes one channel plane: `input` is `in_h * in_w` values, `weights` the channel's
    /// `kernel * kernel` taps (row-major), `output` `out_h * out_w` values. `scratch` is
    /// reused between planes to hold the padded copy.
    ///
    /// Panics only if the slices do not have the lengths above (callers check them once per
    /// tensor).
    pub fn plane(
        &self,
        input: &[f32],
        weights: &[f32],
        bias: f32,
        output: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            unsafe { plane_avx2_fma(self, input, weights, bias, output, scratch) };
            return;
        }
        #[cfg(target_arch = "aarch64")]
        {
            // aarch64 always has fused multiply-add, as one instruction.
            plane_generic::<Fused>(self, input, weights, bias, output, scratch);
        }
        #[cfg(not(target_arch = "aarch64"))]
        plane_generic::<Plain>(self, input, weights, bias, output, scratch);
    }
}

/// [`plane_generic`] compiled for AVX2 and FMA, so its loops use 8-wide fused multiply-adds.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2_fma(
    g: &Geometry,
    input: &[f32],
    weights: &[f32],
    bias: f32,
    output: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    plane_generic::<Fused>(g, input, weights, bias, output, scratch);
}

/// The body of [`Geometry::plane`], for one kind of multiply-add.
#[inline(always)]
fn plane_generic<M: MulAdd>(
    g: &Geometry,
    input: &[f32],
    weights: &[f32],
    bias: f32,
    output: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    match g.kernel {
        3 => plane_k::<M, 3>(g, input, weights, bias, output, scratch),
        _ => plane_k::<M, 5>(g, input, weights, bias, output, scratch),
    }
}

/// One channel plane with a `K x K` kernel.
#[inline(always)]
fn plane_k<M: MulAdd, const K: usize>(
    g: &Geometry,
    input: &[f32],
    weights: &[f32],
    bias: f32,
    output: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (ph, pw) = (g.padded_h(), g.padded_w());
    let input = &input[..g.in_plane()];
    let output = &mut output[..g.out_plane()];
    let weights = &weights[..K * K];
    // The padded plane: rows of `pw` values; a stride-2 row holds its even columns, then
    // its odd ones, so that column `2 * x + kx` is at `(kx % 2) * even + x + kx / 2`.
    let even = pw.div_ceil(2);
    scratch.clear();
    scratch.resize(ph * pw, 0.0);
    let rows = g.in_h.min(ph.saturating_sub(g.pad_top));
    let cols = g.in_w.min(pw.saturating_sub(g.pad_left));
    for iy in 0..rows {
        let src = &input[iy * g.in_w..][..cols];
        let dst = &mut scratch[(iy + g.pad_top) * pw..][..pw];
        if g.stride == 1 {
            dst[g.pad_left..][..cols].copy_from_slice(src);
        } else {
            deinterleave(src, g.pad_left, even, dst);
        }
    }
    let ow = g.out_w;
    if g.stride == 1 && ow < WIDE_BELOW {
        wide_plane::<M, K>(g, weights, bias, output, scratch);
        return;
    }
    for oy in 0..g.out_h {
        let out = &mut output[oy * ow..][..ow];
        for ky in 0..K {
            let row = &scratch[(oy * g.stride + ky) * pw..][..pw];
            let taps: [&[f32]; K] = std::array::from_fn(|kx| {
                let start = if g.stride == 1 {
                    kx
                } else {
                    (kx % 2) * even + kx / 2
                };
                &row[start..][..ow]
            });
            let w: [f32; K] = std::array::from_fn(|kx| weights[ky * K + kx]);
            if ky == 0 {
                row_pass::<M, K, true>(out, &taps, &w, bias);
            } else {
                row_pass::<M, K, false>(out, &taps, &w, bias);
            }
        }
    }
}

/// Writes input row `src` into padded stride-2 row `dst` (even columns first, then odd ones):
/// `src[ix]` is padded column `j = ix + pad_left`, which goes to `(j % 2) * even + j / 2`.
/// Taken two input values at a time, one to each half, the loop is a vector deinterleave
/// instead of a scattered store per value (it was most of the stride-2 layers' time).
#[inline(always)]
fn deinterleave(src: &[f32], pad_left: usize, even: usize, dst: &mut [f32]) {
    let (evens, odds) = dst.split_at_mut(even);
    let half = pad_left / 2;
    // The first value lands in the even half when `pad_left` is even, else in the odd half,
    // and the halves alternate from there.
    let (first, first_at, second, second_at) = if pad_left.is_multiple_of(2) {
        (evens, half, odds, half)
    } else {
        (odds, half, evens, half + 1)
    };
    let pairs = src.len() / 2;
    let (a, b) = (&mut first[first_at..], &mut second[second_at..]);
    for ((a, b), pair) in a[..pairs]
        .iter_mut()
        .zip(&mut b[..pairs])
        .zip(src.chunks_exact(2))
    {
        *a = pair[0];
        *b = pair[1];
    }
    if !src.len().is_multiple_of(2) {
        a[pairs] = src[src.len() - 1];
    }
}

/// Output rows narrower than this are computed as one long row (see [`wide_plane`]): a
/// narrow row is mostly loop overhead and a partial vector, and the late EfficientNet stages
/// are 9 to 18 points wide.
const WIDE_BELOW: usize = 32;

/// A stride-1 plane computed as one long row over the padded width: wide point
/// `i = oy * pw + ox` reads padded value `i + ky * pw + kx` for every tap, so each kernel tap
/// is one contiguous pass over `(out_h - 1) * pw + out_w` points; the `pw - out_w` points
/// per row that fall in the padding are computed and dropped. `scratch` holds the padded
/// plane, followed by the wide row.
#[inline(always)]
fn wide_plane<M: MulAdd, const K: usize>(
    g: &Geometry,
    weights: &[f32],
    bias: f32,
    output: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (ph, pw, ow) = (g.padded_h(), g.padded_w(), g.out_w);
    let len = (g.out_h - 1) * pw + ow;
    scratch.resize(ph * pw + len, 0.0);
    let (padded, wide) = scratch.split_at_mut(ph * pw);
    for ky in 0..K {
        // The last tap's pass ends at (K-1) * pw + K-1 + len = ph * pw: inside the plane.
        let taps: [&[f32]; K] = std::array::from_fn(|kx| &padded[ky * pw + kx..][..len]);
        let w: [f32; K] = std::array::from_fn(|kx| weights[ky * K + kx]);
        if ky == 0 {
            row_pass::<M, K, true>(wide, &taps, &w, bias);
        } else {
            row_pass::<M, K, false>(wide, &taps, &w, bias);
        }
    }
    for (oy, out) in output.chunks_exact_mut(ow).enumerate() {
        out.copy_from_slice(&wide[oy * pw..][..ow]);
    }
}

/// One kernel row over one output row: `out[x] (+)= sum_kx w[kx] * taps[kx][x]`, starting
/// from `bias` on the first kernel row (`FIRST`) and from `out` after it.
#[inline(always)]
fn row_pass<M: MulAdd, const K: usize, const FIRST: bool>(
    out: &mut [f32],
    taps: &[&[f32]; K],
    w: &[f32; K],
    bias: f32,
) {
    let n = out.len();
    // Same-length slices let the compiler drop the bounds checks and vectorise over x.
    let taps: [&[f32]; K] = std::array::from_fn(|k| &taps[k][..n]);
    for (x, o) in out.iter_mut().enumerate() {
        let mut acc = if FIRST { bias } else { *o };
        for (w, tap) in w.iter().zip(&taps) {
            acc = M::mul_add(acc, *w, tap[x]);
        }
        *o = acc;
    }
}

/// A depthwise convolution with constant weights, as a tract op (see the module doc).
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// Shape and padding.
    pub geometry: Geometry,
    /// `channels * kernel * kernel` taps, channel-major then row-major: shared, since tract
    /// clones ops while optimising.
    weights: Arc<[f32]>,
    /// One bias per channel.
    bias: Arc<[f32]>,
    /// Whether a SiLU follows: applied to each plane as soon as it is computed, while it is
    /// still in cache, instead of in a pass of its own over the whole tensor.
    pub silu: bool,
    /// Whether the op has a second output, each channel's sum (`[N, C, 1, 1]`): the
    /// squeeze of the squeeze-excitation block that reads this convolution's output, taken
    /// from each plane while it is in cache.
    pub channel_sums: bool,
}

impl PartialEq for DepthwiseConv {
    /// Bitwise on the weights, so that equal ops are interchangeable (tract compares ops to
    /// merge identical nodes).
    fn eq(&self, other: &DepthwiseConv) -> bool {
        self.geometry == other.geometry
            && self.silu == other.silu
            && self.channel_sums == other.channel_sums
            && super::same_bits(&self.weights, &other.weights)
            && super::same_bits(&self.bias, &other.bias)
    }
}

impl Eq for DepthwiseConv {}

impl DepthwiseConv {
    /// An op for `geometry` with `weights` (`channels * kernel * kernel`) and `bias`
    /// (`channels`, or one value for all).
    pub fn new(
        geometry: Geometry,
        weights: &[f32],
        bias: &[f32],
    ) -> Result<DepthwiseConv, Unsupported> {
        let c = geometry.channels;
        if weights.len() != c * geometry.taps() {
            return Err(Unsupported::Shape(format!(
                "{} weights for {c} channels of {} taps",
                weights.len(),
                geometry.taps()
            )));
        }
        let bias: Arc<[f32]> = match bias.len() {
            n if n == c => bias.into(),
            1 => vec![bias[0]; c].into(),
            0 => vec![0.0; c].into(),
            n => return Err(Unsupported::Shape(format!("{n} biases for {c} channels"))),
        };
        Ok(DepthwiseConv {
            geometry,
            weights: weights.into(),
            bias,
            silu: false,
            channel_sums: false,
        })
    }

    /// The op for tract convolution `node` of `model`, or why it stays tract's.
    pub fn from_conv(model: &TypedModel, node: &TypedNode) -> Result<DepthwiseConv, Unsupported> {
        let Some(conv) = node.op_as::<Conv>() else {
            return Err(Unsupported::Layout);
        };
        let spec = &conv.pool_spec;
        let (group, inputs, outputs) = (conv.group, spec.input_channels, spec.output_channels);
        // One filter per output channel, each reading one input channel: `group ==
        // inputs`, with a whole number of outputs per input (1 in the blocks).
        if group != inputs || outputs == 0 || !outputs.is_multiple_of(inputs) {
            return Err(Unsupported::NotDepthwise {
                group,
                inputs,
                outputs,
            });
        }
        let fact = |i: usize| {
            node.inputs
                .get(i)
                .and_then(|o| model.outlet_fact(*o).ok())
                .ok_or(Unsupported::Layout)
        };
        let (x, kernel, bias) = (fact(0)?, fact(1)?, fact(2)?);
        if conv.q_params.is_some()
            || node.inputs.len() != 3
            || spec.data_format != DataFormat::NCHW
            || conv.kernel_fmt != KernelFormat::OIHW
            || [x, kernel, bias]
                .iter()
                .any(|f| f.datum_type != f32::datum_type())
        {
            return Err(Unsupported::Layout);
        }
        let dilations = spec.dilations.clone().unwrap_or_else(|| tvec![1, 1]);
        let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
        let k = &spec.kernel_shape;
        if k.len() != 2
            || k[0] != k[1]
            || strides.len() != 2
            || strides[0] != strides[1]
            || dilations.iter().any(|d| *d != 1)
        {
            return Err(Unsupported::Geometry {
                kernel: k.to_vec(),
                strides: strides.to_vec(),
                dilations: dilations.to_vec(),
            });
        }
        let shape = x
            .shape
            .as_concrete()
            .ok_or_else(|| Unsupported::Shape(format!("input shape {:?} is symbolic", x.shape)))?;
        let &[_, c, h, w] = shape else {
            return Err(Unsupported::Shape(format!(
                "input shape {shape:?} is not NCHW"
            )));
        };
        if c != group {
            return Err(Unsupported::Shape(format!(
                "{c} input channels, group {group}"
            )));
        }
        let dims = spec
            .padding
            .compute(&[h, w], &[k[0], k[1]], &[1, 1], &[strides[0], strides[1]]);
        let [dy, dx] = &dims[..] else {
            return Err(Unsupported::Shape(format!("padding {:?}", spec.padding)));
        };
        let geometry = Geometry::new(
            outputs,
            k[0],
            strides[0],
            (h, w),
            (dy.pad_before, dx.pad_before),
            (dy.convoluted, dx.convoluted),
        )?
        .with_multiplier(outputs / c)?;
        let out = model
            .outlet_fact(OutletId::new(node.id, 0))
            .map_err(|e| Unsupported::Shape(format!("{e}")))?;
        let expected = [shape[0], outputs, geometry.out_h, geometry.out_w];
        if out.shape.as_concrete() != Some(&expected[..]) {
            return Err(Unsupported::Shape(format!(
                "tract's output {:?} differs from {expected:?}",
                out.shape
            )));
        }
        let (Some(kernel), Some(bias)) = (kernel.konst.as_ref(), bias.konst.as_ref()) else {
            return Err(Unsupported::NotConstant);
        };
        if kernel.shape() != [outputs, 1, k[0], k[1]] {
            return Err(Unsupported::Shape(format!(
                "kernel shape {:?}",
                kernel.shape()
            )));
        }
        let values = |t: &Tensor| -> Result<Vec<f32>, Unsupported> {
            t.try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
                .map_err(|e| Unsupported::Shape(format!("{e}")))
        };
        let (kernel, bias) = (values(kernel)?, values(bias)?);
        DepthwiseConv::new(geometry, &kernel, &bias)
    }

    /// Runs the convolution on an `[N, C / multiplier, H, W]` input into `output`
    /// (`[N, C, OH, OW]`), and each output plane's sum into `sums` (`[N, C]`) when the op has
    /// that output, splitting channel planes across tract's executor.
    pub fn run(
        &self,
        input: &[f32],
        output: &mut [f32],
        sums: Option<&mut [f32]>,
    ) -> TractResult<()> {
        let g = self.geometry;
        let (ip, op) = (g.in_plane(), g.out_plane());
        let planes = input.len() / ip * g.multiplier;
        if !input.len().is_multiple_of(ip)
            || output.len() != planes * op
            || sums.is_some() != self.channel_sums
            || sums.as_ref().is_some_and(|s| s.len() != planes)
        {
            bail!(
                "depthwise convolution {g:?}: input of {} values, output of {}, sums of {:?}",
                input.len(),
                output.len(),
                sums.map(|s| s.len())
            );
        }
        let sums = sums.map(|s| PlaneSums(s.as_mut_ptr()));
        let work = output.len() * g.taps();
        tract_linalg::multithread::par_chunks_mut(output, op, work, |first, chunk| {
            SCRATCH.with_borrow_mut(|scratch| self.planes(input, first, chunk, &sums, scratch));
            Ok(())
        })
    }

    /// Computes the output planes in `chunk`, the first of them plane `first`, with
    /// `scratch` for the padded copies.
    fn planes(
        &self,
        input: &[f32],
        first: usize,
        chunk: &mut [f32],
        sums: &Option<PlaneSums>,
        scratch: &mut Vec<f32>,
    ) {
        let g = self.geometry;
        let (ip, op) = (g.in_plane(), g.out_plane());
        for (i, out) in chunk.chunks_exact_mut(op).enumerate() {
            let plane = first + i;
            let c = plane % g.channels;
            g.plane(
                &input[plane / g.multiplier * ip..][..ip],
                &self.weights[c * g.taps()..][..g.taps()],
                self.bias[c],
                out,
                scratch,
            );
            let sum = finish_plane(out, self.silu, sums.is_some());
            if let Some(sums) = &sums {
                // SAFETY: `sums` holds one value per plane (checked above), and each
                // plane is in exactly one chunk, so no two threads write the same value.
                unsafe { sums.0.add(plane).write(sum) };
            }
        }
    }
}

thread_local! {
    /// Each thread's buffer for the padded copy of a plane: grown once to the largest, then
    /// reused, so steady-state frames allocate nothing here.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where [`DepthwiseConv::run`]'s threads write the plane sums: a raw pointer, because each
/// thread writes only the sums of its own planes, which `par_chunks_mut` cannot split for
/// a second buffer.
struct PlaneSums(*mut f32);

// SAFETY: every thread writes disjoint elements (one per plane it computes), and the buffer
// outlives the parallel section, which returns before `run` does.
unsafe impl Sync for PlaneSums {}
unsafe impl Send for PlaneSums {}

/// Applies the fused SiLU to a computed plane (if `silu`), and returns its sum (if `sum`;
/// else 0), in one pass while the plane is in cache.
fn finish_plane(plane: &mut [f32], silu: bool, sum: bool) -> f32 {
    if !silu && !sum {
        return 0.0;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { finish_avx512(plane, silu) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { finish_avx2_fma(plane, silu) };
    }
    #[cfg(target_arch = "aarch64")]
    return finish_generic::<Fused>(plane, silu);
    #[cfg(not(target_arch = "aarch64"))]
    finish_generic::<Plain>(plane, silu)
}

/// [`finish_generic`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_avx2_fma(plane: &mut [f32], silu: bool) -> f32 {
    finish_generic::<Fused>(plane, silu)
}

/// [`finish_generic`] compiled for AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn finish_avx512(plane: &mut [f32], silu: bool) -> f32 {
    finish_generic::<Fused>(plane, silu)
}

/// The body of [`finish_plane`]: the sum runs in 16 interleaved partial sums so the compiler
/// can vectorise it (a single running sum would have to add one value at a time).
#[inline(always)]
fn finish_generic<M: MulAdd>(plane: &mut [f32], silu: bool) -> f32 {
    const LANES: usize = 16;
    let mut partial = [0.0f32; LANES];
    let mut chunks = plane.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (p, v) in partial.iter_mut().zip(chunk.iter_mut()) {
            if silu {
                *v = super::silu::silu::<M>(*v);
            }
            *p += *v;
        }
    }
    let mut rest = 0.0;
    for v in chunks.into_remainder() {
        if silu {
            *v = super::silu::silu::<M>(*v);
        }
        rest += *v;
    }
    partial.iter().sum::<f32>() + rest
}

impl Op for DepthwiseConv {
    fn name(&self) -> StaticName {
        "EchoviewDepthwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geometry)])
    }

    op_as_typed_op!();
}

reuse::eval_into_reused_outputs!(DepthwiseConv);

impl IntoOutputs for DepthwiseConv {
    fn output_shapes(&self, inputs: &[TValue]) -> TractResult<TVec<TVec<usize>>> {
        let [x] = inputs else {
            bail!(
                "depthwise convolution takes one input, got {}",
                inputs.len()
            );
        };
        let g = self.geometry;
        let shape = x.shape();
        let &[n, c, h, w] = shape else {
            bail!("depthwise convolution input {shape:?} is not NCHW");
        };
        if (c * g.multiplier, h, w) != (g.channels, g.in_h, g.in_w) {
            bail!("depthwise convolution {g:?} got input {shape:?}");
        }
        let output = tvec!(n, g.channels, g.out_h, g.out_w);
        Ok(if self.channel_sums {
            tvec!(output, tvec!(n, g.channels, 1, 1))
        } else {
            tvec!(output)
        })
    }

    fn compute(&self, inputs: &[TValue], outputs: &mut [&mut Tensor]) -> TractResult<()> {
        let ([x], [output, rest @ ..]) = (inputs, outputs) else {
            bail!("depthwise convolution takes one input and has an output");
        };
        let input = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut view = output.try_as_plain_ram_mut()?;
        match rest {
            [] => self.run(input, view.as_slice_mut::<f32>()?, None),
            [sums] => {
                let mut sums_view = sums.try_as_plain_ram_mut()?;
                self.run(
                    input,
                    view.as_slice_mut::<f32>()?,
                    Some(sums_view.as_slice_mut::<f32>()?),
                )
            }
            _ => bail!("depthwise convolution has at most two outputs"),
        }
    }
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let [x] = inputs else {
            bail!(
                "depthwise convolution takes one input, got {}",
                inputs.len()
            );
        };
        let g = self.geometry;
        let n = x.shape[0].clone();
        let output = f32::fact(&[
            n.clone(),
            g.channels.to_dim(),
            g.out_h.to_dim(),
            g.out_w.to_dim(),
        ]);
        if self.channel_sums {
            let sums = f32::fact(&[n, g.channels.to_dim(), 1.to_dim(), 1.to_dim()]);
            Ok(tvec!(output, sums))
        } else {
            Ok(tvec!(output))
        }
    }

    as_op!();
}

/// What [`substitute`] did to a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substitution {
    /// Convolutions now run by [`DepthwiseConv`].
    pub replaced: usize,
    /// Of those, how many took in the SiLU after them.
    pub fused_silu: usize,
    /// Of those, how many also give the channel sums a squeeze-excitation block reads.
    pub fused_sums: usize,
    /// Depthwise convolutions left to tract, by name, with the reason.
    pub kept: Vec<(String, Unsupported)>,
}

/// Declutters `model` as tract does, except that it leaves the tensor layouts alone.
///
/// The weights are constants only after decluttering has folded their casts, but tract's
/// decluttering also moves depthwise convolutions (and the whole graph around them) to
/// channel-last, which [`DepthwiseConv`] does not cover: this runs every declutter pass but
/// that one (`ChangeAxes`). Optimising afterwards runs the full set, with our op in place.
pub fn declutter_keeping_layout(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = tract_onnx::tract_core::optim::Optimizer::declutter();
    // Found by name (its Debug form): the pass list is public, the pass type's identity is
    // not. If tract renames it, nothing is removed and [`substitute`] reports every
    // channel-last convolution it leaves to tract.
    optimizer
        .passes
        .retain(|pass| format!("{pass:?}") != "ChangeAxes");
    optimizer.optimize(model)
}

/// Replaces every depthwise convolution of `model` that [`DepthwiseConv`] covers by it,
/// taking in the SiLU that follows it and the channel sum that a squeeze-excitation block
/// takes of that (tract's `Reduce<Sum>` over the plane) where nothing else reads the values
/// in between. Run it on a model decluttered by [`declutter_keeping_layout`], and optimise
/// afterwards.
pub fn substitute(model: &mut TypedModel) -> TractResult<Substitution> {
    let mut done = Substitution::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        if node.op_as::<Conv>().is_none() {
            continue;
        }
        let mut op = match DepthwiseConv::from_conv(model, node) {
            Ok(op) => op,
            // Ordinary convolutions are tract's business; only depthwise ones are reported.
            Err(Unsupported::NotDepthwise { .. }) => continue,
            Err(reason) => {
                done.kept.push((node.name.clone(), reason));
                continue;
            }
        };
        let mut last = OutletId::new(id, 0);
        if let Some(silu) = sole_consumer(model, node).filter(|n| is_silu(n)) {
            op.silu = true;
            last = OutletId::new(silu.id, 0);
        }
        let squeeze = model
            .outlet_successors(last)
            .iter()
            .map(|inlet| model.node(inlet.node))
            .find(|n| {
                n.op_as::<Reduce>()
                    .is_some_and(|r| matches!(r.reducer, Reducer::Sum) && r.axes[..] == [2, 3])
            });
        op.channel_sums = squeeze.is_some();
        done.replaced += 1;
        done.fused_silu += op.silu as usize;
        done.fused_sums += op.channel_sums as usize;
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let out = patch.wire_node(&node.name, op, &[x])?;
        patch.shunt_outside(model, last, out[0])?;
        if let Some(squeeze) = squeeze {
            patch.shunt_outside(model, OutletId::new(squeeze.id, 0), out[1])?;
        }
        patch.apply(model)?;
    }
    // Drop the nodes the op bypasses, so that no later match counts them as readers.
    model.compact()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_values as values;
    use tract_linalg::multithread::{Executor, multithread_tract_scope};

    /// The definition, one output point at a time, with the padding as bounds checks.
    fn reference(g: &Geometry, input: &[f32], weights: &[f32], bias: &[f32]) -> Vec<f32> {
        let planes = input.len() / g.in_plane() * g.multiplier;
        let mut out = vec![0.0; planes * g.out_plane()];
        for p in 0..planes {
            let c = p % g.channels;
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let mut acc = bias[c] as f64;
                    for ky in 0..g.kernel {
                        for kx in 0..g.kernel {
                            let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                            let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let x = input[p / g.multiplier * g.in_plane()
                                + iy as usize * g.in_w
                                + ix as usize];
                            acc += (weights[c * g.taps() + ky * g.kernel + kx] * x) as f64;
                        }
                    }
                    out[p * g.out_plane() + oy * g.out_w + ox] = acc as f32;
                }
            }
        }
        out
    }

    /// Runs the op and the reference on random data and compares them to float rounding.
    fn check(g: Geometry, planes: usize, seed: u32) {
        let input = values(planes / g.multiplier * g.in_plane(), seed);
        let weights = values(g.channels * g.taps(), seed + 1);
        let bias = values(g.channels, seed + 2);
        let op = DepthwiseConv::new(g, &weights, &bias).expect("valid op");
        let mut out = vec![f32::NAN; planes * g.out_plane()];
        op.run(&input, &mut out, None).expect("runs");
        let expected = reference(&g, &input, &weights, &bias);
        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{g:?} point {i}: {a} vs reference {b}"
            );
        }

        // With the SiLU and the channel sums fused in.
        let mut fused = op.clone();
        fused.silu = true;
        fused.channel_sums = true;
        let mut sums = vec![f32::NAN; planes];
        fused.run(&input, &mut out, Some(&mut sums)).expect("runs");
        for (p, plane) in expected.chunks_exact(g.out_plane()).enumerate() {
            let mut sum = 0.0f64;
            for (i, v) in plane.iter().enumerate() {
                let want = *v as f64 / (1.0 + (-*v as f64).exp());
                let got = out[p * g.out_plane() + i];
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{g:?} plane {p} point {i}: SiLU {got} vs reference {want}"
                );
                sum += want;
            }
            assert!(
                (sums[p] as f64 - sum).abs() <= 1e-5 * (1.0 + plane.len() as f64),
                "{g:?} plane {p}: sum {} vs reference {sum}",
                sums[p]
            );
        }
    }

    /// Every kernel, stride, padding up to the kernel's reach (bottom/right independent of
    /// top/left, as ONNX allows), and sizes odd, even, smaller than the kernel and one.
    #[test]
    fn matches_the_definition_for_every_supported_geometry() {
        let mut seed = 1;
        for kernel in [3, 5] {
            for stride in [1, 2] {
                for (in_h, in_w) in [(1, 1), (2, 3), (4, 4), (7, 5), (9, 16), (13, 11)] {
                    for pad_top in 0..kernel {
                        for pad_left in 0..kernel {
                            for pad_end in [0, kernel / 2, kernel - 1] {
                                let out = |n: usize, before: usize| {
                                    (n + before + pad_end)
                                        .checked_sub(kernel)
                                        .map(|d| d / stride + 1)
                                };
                                let (Some(out_h), Some(out_w)) =
                                    (out(in_h, pad_top), out(in_w, pad_left))
                                else {
                                    continue;
                                };
                                let g = Geometry::new(
                                    3,
                                    kernel,
                                    stride,
                                    (in_h, in_w),
                                    (pad_top, pad_left),
                                    (out_h, out_w),
                                )
                                .expect("supported");
                                seed += 3;
                                check(g, 6, seed);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A channel multiplier (the EfficientNet stem: one input plane, 32 filters) reads input
    /// channel `c / multiplier` for output channel `c`.
    #[test]
    fn matches_the_definition_with_a_channel_multiplier() {
        for (channels, multiplier) in [(32, 32), (6, 3), (4, 1)] {
            let g = Geometry::new(channels, 3, 2, (13, 11), (1, 1), (7, 6))
                .and_then(|g| g.with_multiplier(multiplier))
                .expect("supported");
            check(g, 2 * channels, 40 + multiplier as u32);
        }
        let g = Geometry::new(6, 3, 1, (5, 5), (1, 1), (5, 5)).expect("supported");
        assert!(g.with_multiplier(4).is_err());
        assert!(g.with_multiplier(0).is_err());
    }

    /// The planes split across two threads give the single-thread result bit for bit.
    #[test]
    fn threads_compute_the_same_values() {
        let g = Geometry::new(24, 5, 1, (40, 37), (2, 2), (40, 37)).expect("supported");
        let input = values(2 * 24 * g.in_plane(), 7);
        let op = DepthwiseConv::new(g, &values(24 * 25, 8), &values(24, 9)).expect("valid op");
        let mut one = vec![0.0; 2 * 24 * g.out_plane()];
        op.run(&input, &mut one, None).expect("runs");
        let mut two = vec![0.0; one.len()];
        multithread_tract_scope(Executor::multithread(2), || op.run(&input, &mut two, None))
            .expect("runs");
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            two.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        check(g, 2 * 24, 11);
    }

    /// With the SiLU and sums fused, two threads give the one-thread values and sums bit for
    /// bit (each plane is finished by the thread that computed it).
    #[test]
    fn threads_compute_the_same_fused_values_and_sums() {
        let g = Geometry::new(24, 3, 2, (40, 37), (1, 1), (20, 19)).expect("supported");
        let input = values(24 * g.in_plane(), 17);
        let mut op = DepthwiseConv::new(g, &values(24 * 9, 18), &values(24, 19)).expect("op");
        op.silu = true;
        op.channel_sums = true;
        let run = |op: &DepthwiseConv| {
            let mut out = vec![0.0; 24 * g.out_plane()];
            let mut sums = vec![0.0; 24];
            op.run(&input, &mut out, Some(&mut sums)).expect("runs");
            out.iter()
                .chain(&sums)
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let one = run(&op);
        let two = multithread_tract_scope(Executor::multithread(2), || run(&op));
        assert_eq!(one, two);
        // Sums asked of an op without them, or missing from one with them, are refused.
        let mut out = vec![0.0; 24 * g.out_plane()];
        assert!(op.run(&input, &mut out, None).is_err());
        assert!(op.run(&input, &mut out, Some(&mut [0.0; 23])).is_err());
    }

    /// What the op does not cover is refused, not computed wrongly.
    #[test]
    fn refuses_what_it_does_not_cover() {
        assert!(Geometry::new(4, 7, 1, (9, 9), (3, 3), (9, 9)).is_err());
        assert!(Geometry::new(4, 3, 3, (9, 9), (1, 1), (3, 3)).is_err());
        assert!(Geometry::new(4, 3, 1, (9, 9), (3, 1), (13, 9)).is_err());
        assert!(Geometry::new(0, 3, 1, (9, 9), (1, 1), (9, 9)).is_err());
        let g = Geometry::new(4, 3, 1, (9, 9), (1, 1), (9, 9)).expect("supported");
        assert!(DepthwiseConv::new(g, &[0.0; 35], &[0.0; 4]).is_err());
        assert!(DepthwiseConv::new(g, &[0.0; 36], &[0.0; 3]).is_err());
        let op = DepthwiseConv::new(g, &[0.0; 36], &[0.0; 4]).expect("valid op");
        assert!(op.run(&[0.0; 80], &mut [0.0; 81], None).is_err());
    }
}
