//! Our own 1x1 ("pointwise") convolution for tract plans, with what follows it fused in,
//! because tract's trails onnxruntime on the EfficientNet encoders: after our depthwise op
//! (see [`super::depthwise`]), tract's matrix products for the 1x1 convolutions were 61% of a
//! frame, about as long as onnxruntime's whole frame (issue #8).
//!
//! A 1x1 convolution on an NCHW tensor is one matrix product per image:
//! `out[o][p] = bias[o] + sum_i w[o][i] * x[i][p]` over input channels `i`, output channels
//! `o` and spatial points `p`. In an EfficientNet block every one of them is followed by a
//! bias and then either a SiLU (the expansion) or, in most blocks, the residual addition
//! (the projection), and the projection's input is the squeeze-excitation product
//! `x[i][p] * s[i]`. tract folds the additions into its matrix product but runs the SiLU and
//! the scale as passes of their own over memory; this op folds all of them into the product:
//! the scale while it copies a panel of `x`, the bias as the accumulators' start, the SiLU or
//! the residual while the finished tile is still in registers.
//!
//! The product is blocked as in GotoBLAS: the weights are packed once, at plan time, into
//! panels of [`MR`] output channels (`[k][MR]`, so each step reads them in order); at run time a
//! panel of [`NR`] spatial points of `x` is copied into a per-thread buffer (`[k][NR]`), and
//! an `MR x NR` register tile accumulates over all input channels before it is written once.
//! Output channel panels are split across tract's executor when it has threads; each output
//! value is summed in the same order on any thread count.
//!
//! The tile is computed by one of three kernels, chosen when the op is built:
//! - AVX-512 (x86-64 with AVX-512F): 8 x 48, 24 accumulators of 16 lanes, written with
//!   intrinsics, with [`super::silu`]'s steps in vector form for the SiLU.
//! - AVX2+FMA and portable: the same tile in plain Rust for the compiler to vectorise, with
//!   [`super::silu`], compiled once for AVX2 and FMA and once for the build's baseline.
//!
//! [`fast_kernel`] says whether this CPU has a kernel measured faster than tract's own; the
//! engine leaves the 1x1 convolutions to tract otherwise. Only the AVX-512 one is: the
//! others exist so the op runs and is tested on every machine, and tract's hand-written
//! kernels are the better choice there (on the Jetson's ARM cores, NEON).

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::math::{Add, Mul};

use super::fusion::{conv_1x1, is_bin, is_silu, per_channel_bias, shape, sole_consumer};
use super::mul_add::MulAdd;
use super::reuse::{self, IntoOutputs};
use super::silu;

/// Output channels per register tile.
pub const MR: usize = 8;
/// Spatial points per register tile: three 16-lane vectors.
pub const NR: usize = 48;

/// What is applied to each output value after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// Nothing: the value is the product plus the bias.
    None,
    /// `v * sigmoid(v)`, the activation after an EfficientNet expansion.
    Silu,
    /// `v + residual`, the skip connection after a projection: the op's last input, shaped
    /// like its output.
    Residual,
}

/// The shape of one pointwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Input channels: the product's depth.
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
    /// Height of the input and output planes.
    pub height: usize,
    /// Width of the input and output planes.
    pub width: usize,
}

impl Geometry {
    /// Spatial points per channel plane.
    pub fn points(&self) -> usize {
        self.height * self.width
    }

    /// Output channel panels of [`MR`], the last one zero-padded.
    fn panels(&self) -> usize {
        self.outputs.div_ceil(MR)
    }
}

/// Which code computes the register tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust, vectorised by the compiler for the build's baseline: every machine.
    Portable,
    /// The same Rust compiled for AVX2 and FMA: x86-64 CPUs that have both.
    Avx2Fma,
    /// AVX-512F intrinsics: x86-64 CPUs that have it.
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2Fma]
            .into_iter()
            .find(|k| k.runs_here())
            .unwrap_or(Kernel::Portable)
    }

    /// Whether this CPU has the instructions the kernel is compiled for.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 => false,
        }
    }
}

/// Whether this CPU has a kernel that was measured faster than tract's own 1x1 convolutions
/// (see the module doc): the engine substitutes the op only then.
pub fn fast_kernel() -> bool {
    Kernel::best() == Kernel::Avx512
}

/// A 1x1 convolution with constant weights and its fused neighbours, as a tract op.
///
/// Inputs: `x` (`[N, inputs, H, W]`), then the squeeze-excitation scale (`[N, inputs, 1, 1]`)
/// when `scaled`, then the residual (`[N, outputs, H, W]`) when the epilogue is
/// [`Epilogue::Residual`].
#[derive(Debug, Clone)]
pub struct PointwiseConv {
    /// Channel counts and plane size.
    pub geometry: Geometry,
    /// What follows the bias.
    pub epilogue: Epilogue,
    /// Whether `x` is multiplied by a per-channel scale (a second input) on the way in.
    pub scaled: bool,
    /// The tile kernel, fixed when the op is built so that a plan computes the same values
    /// on every run. Private: `new` accepts only a kernel this CPU runs, and the unsafe
    /// calls into it rely on that.
    kernel: Kernel,
    /// The weights packed in panels of [`MR`] output channels, `[panel][input][MR]`, padded
    /// with zero rows: shared, since tract clones ops while optimising.
    packed: Arc<[f32]>,
    /// One bias per output channel, padded with zeros to whole panels.
    bias: Arc<[f32]>,
}

impl PartialEq for PointwiseConv {
    /// Bitwise on the weights, so that equal ops are interchangeable (tract compares ops to
    /// merge identical nodes).
    fn eq(&self, other: &PointwiseConv) -> bool {
        self.geometry == other.geometry
            && self.epilogue == other.epilogue
            && self.scaled == other.scaled
            && self.kernel == other.kernel
            && super::same_bits(&self.packed, &other.packed)
            && super::same_bits(&self.bias, &other.bias)
    }
}

impl Eq for PointwiseConv {}

/// Why an op cannot be built from the values given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pointwise convolution {geometry:?}: {what}")]
pub struct BadWeights {
    /// The convolution's shape.
    pub geometry: Geometry,
    /// What does not fit it.
    pub what: String,
}

impl PointwiseConv {
    /// An op for `geometry` with `weights` (`outputs * inputs`, row-major `[o][i]`) and
    /// `bias` (`outputs` values, or none for zeros).
    pub fn new(
        geometry: Geometry,
        weights: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
        scaled: bool,
        kernel: Kernel,
    ) -> Result<PointwiseConv, BadWeights> {
        let (k, m) = (geometry.inputs, geometry.outputs);
        let bad = |what: String| BadWeights { geometry, what };
        if k == 0 || m == 0 || geometry.points() == 0 {
            return Err(bad("an empty dimension".into()));
        }
        if weights.len() != m * k {
            return Err(bad(format!("{} weights for {m} x {k}", weights.len())));
        }
        if !bias.is_empty() && bias.len() != m {
            return Err(bad(format!("{} biases for {m} outputs", bias.len())));
        }
        if !kernel.runs_here() {
            return Err(bad(format!(
                "this CPU lacks the instructions of the {kernel:?} kernel"
            )));
        }
        let panels = geometry.panels();
        let mut packed = vec![0.0f32; panels * k * MR];
        for o in 0..m {
            let (panel, row) = (o / MR, o % MR);
            for i in 0..k {
                packed[(panel * k + i) * MR + row] = weights[o * k + i];
            }
        }
        let mut padded_bias = vec![0.0f32; panels * MR];
        padded_bias[..bias.len()].copy_from_slice(bias);
        Ok(PointwiseConv {
            geometry,
            epilogue,
            scaled,
            kernel,
            packed: packed.into(),
            bias: padded_bias.into(),
        })
    }

    /// The kernel computing the tiles.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Runs the op on one or more images: `x` is `[N, inputs, H, W]`, `scale` `[N, inputs]`
    /// when the op is scaled, `residual` `[N, outputs, H, W]` when the epilogue adds it,
    /// `output` `[N, outputs, H, W]`.
    pub fn run(
        &self,
        x: &[f32],
        scale: Option<&[f32]>,
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> TractResult<()> {
        let g = self.geometry;
        let (k, m, n) = (g.inputs, g.outputs, g.points());
        let images = x.len() / (k * n);
        let fits = |len: Option<usize>, per_image: usize| match len {
            Some(len) => len == images * per_image,
            None => true,
        };
        if x.len() != images * k * n
            || output.len() != images * m * n
            || scale.is_some() != self.scaled
            || residual.is_some() != (self.epilogue == Epilogue::Residual)
            || !fits(scale.map(<[f32]>::len), k)
            || !fits(residual.map(<[f32]>::len), m * n)
        {
            bail!(
                "pointwise convolution {g:?}: input of {}, scale of {:?}, residual of {:?} and \
                 output of {} values",
                x.len(),
                scale.map(<[f32]>::len),
                residual.map(<[f32]>::len),
                output.len()
            );
        }
        for (image, out) in output.chunks_exact_mut(m * n).enumerate() {
            let x = &x[image * k * n..][..k * n];
            let scale = scale.map(|s| &s[image * k..][..k]);
            let residual = residual.map(|r| &r[image * m * n..][..m * n]);
            // Threads take whole panels of output channels; a last partial panel keeps the
            // whole image on one thread (no EfficientNet has one: its widths are multiples of 8).
            let block = if m.is_multiple_of(MR) { MR * n } else { m * n };
            tract_linalg::multithread::par_chunks_mut(out, block, m * k * n, |first, chunk| {
                let first_row = first * block / n;
                self.rows(x, scale, residual, first_row, chunk);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Computes output rows `first_row..` of one image into `out` (whole rows of the plane,
    /// starting on a panel boundary), one panel of spatial points at a time.
    fn rows(
        &self,
        x: &[f32],
        scale: Option<&[f32]>,
        residual: Option<&[f32]>,
        first_row: usize,
        out: &mut [f32],
    ) {
        let g = self.geometry;
        let (k, n) = (g.inputs, g.points());
        let rows = out.len() / n;
        PANEL.with_borrow_mut(|panel| {
            panel.resize(k * NR, 0.0);
            for p0 in (0..n).step_by(NR) {
                let cols = NR.min(n - p0);
                pack_panel(x, scale, n, p0, cols, panel);
                for r0 in (0..rows).step_by(MR) {
                    let o = first_row + r0;
                    let tile = Tile {
                        depth: k,
                        weights: &self.packed[(o / MR) * k * MR..][..k * MR],
                        panel,
                        bias: &self.bias[o..][..MR],
                        rows: MR.min(rows - r0),
                        cols,
                        stride: n,
                    };
                    let out = &mut out[r0 * n + p0..];
                    let residual = residual.map(|r| &r[o * n + p0..]);
                    match self.kernel {
                        // SAFETY (both): `new` builds the op with a kernel only where
                        // `runs_here` says the CPU has its instructions.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512 => unsafe {
                            avx512::tile(&tile, self.epilogue, residual, out)
                        },
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2Fma => unsafe {
                            portable_tile_avx2_fma(&tile, self.epilogue, residual, out)
                        },
                        _ => portable_tile_baseline(&tile, self.epilogue, residual, out),
                    }
                }
            }
        });
    }
}

thread_local! {
    /// Each thread's copy of the current panel of `x`: grown once to the largest
    /// `inputs * NR`, then reused, so steady-state frames allocate nothing here.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Copies spatial points `p0..p0 + cols` of every input channel of `x` (`inputs` planes of
/// `n` points) into `panel` as `[input][NR]`, times the channel's scale when there is one,
/// zero-padded beyond `cols` so that a partial tile computes zeros there.
fn pack_panel(
    x: &[f32],
    scale: Option<&[f32]>,
    n: usize,
    p0: usize,
    cols: usize,
    panel: &mut [f32],
) {
    for (i, dst) in panel.chunks_exact_mut(NR).enumerate() {
        let src = &x[i * n + p0..][..cols];
        match scale {
            Some(s) => {
                let s = s[i];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = v * s;
                }
            }
            None => dst[..cols].copy_from_slice(src),
        }
        dst[cols..].fill(0.0);
    }
}

/// The operands of one `MR x NR` register tile.
struct Tile<'a> {
    /// Input channels to sum over.
    depth: usize,
    /// The output channel panel's packed weights, `[input][MR]`.
    weights: &'a [f32],
    /// The spatial panel of `x`, `[input][NR]`.
    panel: &'a [f32],
    /// The panel's biases, `MR` values.
    bias: &'a [f32],
    /// Output channels of the tile that exist (the rest are padding).
    rows: usize,
    /// Spatial points of the tile that exist.
    cols: usize,
    /// Distance between output rows (and residual rows): the plane's size.
    stride: usize,
}

/// [`portable_tile`] for the build's baseline instructions (fused multiply-adds on aarch64,
/// separate ones on x86-64).
fn portable_tile_baseline(t: &Tile, epilogue: Epilogue, residual: Option<&[f32]>, out: &mut [f32]) {
    #[cfg(target_arch = "aarch64")]
    portable_tile::<super::mul_add::Fused>(t, epilogue, residual, out);
    #[cfg(not(target_arch = "aarch64"))]
    portable_tile::<super::mul_add::Plain>(t, epilogue, residual, out);
}

/// [`portable_tile`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn portable_tile_avx2_fma(
    t: &Tile,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    portable_tile::<super::mul_add::Fused>(t, epilogue, residual, out);
}

/// The tile in plain Rust: the accumulators are a fixed-size array the compiler keeps in
/// vector registers where it can.
#[inline(always)]
fn portable_tile<M: MulAdd>(
    t: &Tile,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut acc = [[0.0f32; NR]; MR];
    for (row, b) in acc.iter_mut().zip(t.bias) {
        row.fill(*b);
    }
    for (w, x) in t
        .weights
        .chunks_exact(MR)
        .zip(t.panel.chunks_exact(NR))
        .take(t.depth)
    {
        for (row, w) in acc.iter_mut().zip(w) {
            for (a, x) in row.iter_mut().zip(x) {
                *a = M::mul_add(*a, *w, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        let dst = &mut out[r * t.stride..][..t.cols];
        match epilogue {
            Epilogue::None => dst.copy_from_slice(&row[..t.cols]),
            Epilogue::Silu => {
                for (d, v) in dst.iter_mut().zip(row) {
                    *d = silu::silu::<M>(*v);
                }
            }
            Epilogue::Residual => {
                let res = residual.map_or(&[][..], |res| &res[r * t.stride..][..t.cols]);
                for ((d, v), s) in dst.iter_mut().zip(row).zip(res) {
                    *d = v + s;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The tile with AVX-512F intrinsics: 8 rows of three 16-lane accumulators.

    use super::{Epilogue, MR, NR, Tile};
    use crate::engine::silu;
    use std::arch::x86_64::*;

    /// Vectors per tile row.
    const V: usize = NR / 16;

    /// Computes `t` into `out` (and adds `residual` when the epilogue says so).
    ///
    /// # Safety
    /// The CPU must have AVX-512F. `t`'s slices must hold `depth * MR` weights, `depth * NR`
    /// panel values and `MR` biases, and `out` (and `residual`) `rows` rows of `stride`
    /// values, the last of them at least `cols` long.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(t: &Tile, epilogue: Epilogue, residual: Option<&[f32]>, out: &mut [f32]) {
        assert!(
            t.weights.len() >= t.depth * MR
                && t.panel.len() >= t.depth * NR
                && t.bias.len() >= MR
                && t.rows <= MR
                && t.cols <= NR
                && out.len() >= (t.rows.max(1) - 1) * t.stride + t.cols
                && residual.is_none_or(|r| r.len() >= (t.rows.max(1) - 1) * t.stride + t.cols),
            "pointwise tile operands out of bounds"
        );
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for (row, b) in acc.iter_mut().zip(t.bias) {
            *row = [_mm512_set1_ps(*b); V];
        }
        let (mut w, mut x) = (t.weights.as_ptr(), t.panel.as_ptr());
        for _ in 0..t.depth {
            // SAFETY: `depth` steps of MR weights and NR panel values are in bounds (asserted).
            unsafe {
                let xs: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(x.add(16 * v)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let wr = _mm512_set1_ps(*w.add(r));
                    for (a, xv) in row.iter_mut().zip(&xs) {
                        *a = _mm512_fmadd_ps(wr, *xv, *a);
                    }
                }
                w = w.add(MR);
                x = x.add(NR);
            }
        }
        for (r, row) in acc.iter().enumerate().take(t.rows) {
            for (v, a) in row.iter().enumerate() {
                let first = 16 * v;
                if first >= t.cols {
                    break;
                }
                let mask: __mmask16 = if t.cols - first >= 16 {
                    0xffff
                } else {
                    (1u16 << (t.cols - first)) - 1
                };
                let at = r * t.stride + first;
                let value = match epilogue {
                    Epilogue::None => *a,
                    Epilogue::Silu => silu(*a),
                    // SAFETY: residual rows are as long as output rows (asserted); masked
                    // lanes are not read.
                    Epilogue::Residual => match residual {
                        Some(res) => unsafe {
                            _mm512_add_ps(*a, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(at)))
                        },
                        None => *a,
                    },
                };
                // SAFETY: lanes up to `cols` of row `r` are inside `out` (asserted).
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), mask, value) };
            }
        }
    }

    /// `v * sigmoid(v) = v / (1 + exp(-v))`, lane by lane. The division is a 14-bit
    /// reciprocal estimate refined by one Newton step (relative error about 2^-28, below
    /// f32's rounding), several times cheaper than a vector division.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn silu(v: __m512) -> __m512 {
        let d = _mm512_add_ps(
            _mm512_set1_ps(1.0),
            exp(_mm512_sub_ps(_mm512_setzero_ps(), v)),
        );
        let r = _mm512_rcp14_ps(d);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)));
        _mm512_mul_ps(v, r)
    }

    /// `exp(x)` with the steps of [`silu::exp`], lane by lane (`2^n` by `scalef`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(silu::EXP_MAX)),
            _mm512_set1_ps(silu::EXP_MIN),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(silu::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(silu::LN2_LO), r);
        let mut p = _mm512_set1_ps(silu::EXP_TAYLOR[0]);
        for c in &silu::EXP_TAYLOR[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        _mm512_scalef_ps(p, n)
    }
}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "EchoviewPointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?}, {:?}, scaled {}, {:?} kernel",
            self.geometry, self.epilogue, self.scaled, self.kernel
        )])
    }

    op_as_typed_op!();
}

reuse::eval_into_reused_outputs!(PointwiseConv);

impl IntoOutputs for PointwiseConv {
    fn output_shapes(&self, inputs: &[TValue]) -> TractResult<TVec<TVec<usize>>> {
        let expected = 1 + self.scaled as usize + (self.epilogue == Epilogue::Residual) as usize;
        if inputs.len() != expected {
            bail!(
                "pointwise convolution takes {expected} inputs, got {}",
                inputs.len()
            );
        }
        let g = self.geometry;
        let shape = inputs[0].shape();
        let &[n, c, h, w] = shape else {
            bail!("pointwise convolution input {shape:?} is not NCHW");
        };
        if (c, h, w) != (g.inputs, g.height, g.width) {
            bail!("pointwise convolution {g:?} got input {shape:?}");
        }
        Ok(tvec!(tvec!(n, g.outputs, h, w)))
    }

    fn compute(&self, inputs: &[TValue], outputs: &mut [&mut Tensor]) -> TractResult<()> {
        let [output] = outputs else {
            bail!("pointwise convolution has one output");
        };
        let slice = |i: usize| -> TractResult<&[f32]> { inputs[i].try_as_plain_ram()?.as_slice() };
        let x = slice(0)?;
        let scale = if self.scaled { Some(slice(1)?) } else { None };
        let residual = match self.epilogue {
            Epilogue::Residual => Some(slice(inputs.len() - 1)?),
            _ => None,
        };
        let mut view = output.try_as_plain_ram_mut()?;
        self.run(x, scale, residual, view.as_slice_mut::<f32>()?)
    }
}

impl TypedOp for PointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let Some(x) = inputs.first() else {
            bail!("pointwise convolution takes an input");
        };
        let g = self.geometry;
        Ok(tvec!(f32::fact(&[
            x.shape[0].clone(),
            g.outputs.to_dim(),
            g.height.to_dim(),
            g.width.to_dim()
        ])))
    }

    as_op!();
}

/// What [`substitute`] did to a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substitution {
    /// Convolutions now run by [`PointwiseConv`].
    pub replaced: usize,
    /// Of those, how many took in a SiLU, a residual addition, a squeeze-excitation scale.
    pub fused_silu: usize,
    /// See `fused_silu`.
    pub fused_residual: usize,
    /// See `fused_silu`.
    pub fused_scale: usize,
}

/// Planes smaller than this stay tract's: the squeeze-excitation products work on one point
/// per channel, where packing panels of [`NR`] points would waste almost all of each tile.
const MIN_POINTS: usize = NR;

/// One match of the pattern [`substitute`] replaces.
struct Found {
    /// The op to put in.
    op: PointwiseConv,
    /// Its inputs in the model.
    inputs: Vec<OutletId>,
    /// The model outlet whose consumers it takes over.
    replaces: OutletId,
}

/// Matches a 1x1 convolution as decluttering leaves it (`NIHW,OI->NOHW` einsum with constant
/// weights, then an addition of a constant bias) at `node`, with its neighbours that the op
/// fuses.
fn find(model: &TypedModel, node: &TypedNode, kernel: Kernel) -> Option<Found> {
    let (weights, outputs, depth) = conv_1x1(model, node)?;
    let x_shape = shape(model, node.inputs[0])?;
    let &[_, inputs, height, width] = &x_shape[..] else {
        return None;
    };
    if depth != inputs || height * width < MIN_POINTS {
        return None;
    }
    let geometry = Geometry {
        inputs,
        outputs,
        height,
        width,
    };
    let out_shape = [x_shape[0], outputs, height, width];

    let mut last = node;
    let mut bias = Vec::new();
    if let Some((b, add)) = per_channel_bias(model, last, outputs) {
        bias = b;
        last = add;
    }

    // After it, a SiLU or the residual addition.
    let mut epilogue = Epilogue::None;
    let mut residual = None;
    if let Some(next) = sole_consumer(model, last) {
        if is_silu(next) {
            epilogue = Epilogue::Silu;
            last = next;
        } else if is_bin::<Add>(next) && next.inputs.len() == 2 {
            let other = *next.inputs.iter().find(|o| o.node != last.id)?;
            if shape(model, other).as_deref() == Some(&out_shape[..])
                && model.outlet_fact(other).ok()?.konst.is_none()
            {
                epilogue = Epilogue::Residual;
                residual = Some(other);
                last = next;
            }
        }
    }

    // Before it, the squeeze-excitation scale: x = y * s with s of shape [N, inputs, 1, 1].
    let mut x_inputs = vec![node.inputs[0]];
    let producer = model.node(node.inputs[0].node);
    if is_bin::<Mul>(producer)
        && producer.inputs.len() == 2
        && sole_consumer(model, producer).is_some_and(|c| c.id == node.id)
    {
        let is = |o: &OutletId, s: &[usize]| shape(model, *o).as_deref() == Some(s);
        let (a, b) = (producer.inputs[0], producer.inputs[1]);
        let scale_shape = [x_shape[0], inputs, 1, 1];
        if is(&a, &x_shape) && is(&b, &scale_shape) {
            x_inputs = vec![a, b];
        } else if is(&b, &x_shape) && is(&a, &scale_shape) {
            x_inputs = vec![b, a];
        }
    }
    let scaled = x_inputs.len() == 2;
    let op = PointwiseConv::new(geometry, &weights, &bias, epilogue, scaled, kernel).ok()?;
    x_inputs.extend(residual);
    Some(Found {
        op,
        inputs: x_inputs,
        replaces: OutletId::new(last.id, 0),
    })
}

/// Replaces every 1x1 convolution of `model` that [`PointwiseConv`] covers, with the
/// neighbours it fuses, computed by `kernel`. Run it on a model decluttered by
/// [`super::depthwise::declutter_keeping_layout`] (the weights must be constants, the layout
/// NCHW), and optimise afterwards; the nodes it bypasses are pruned then.
pub fn substitute(model: &mut TypedModel, kernel: Kernel) -> TractResult<Substitution> {
    let mut done = Substitution::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(found) = find(model, node, kernel) else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let taps = found
            .inputs
            .iter()
            .map(|o| patch.tap_model(model, *o))
            .collect::<TractResult<Vec<_>>>()?;
        done.replaced += 1;
        done.fused_silu += (found.op.epilogue == Epilogue::Silu) as usize;
        done.fused_residual += (found.op.epilogue == Epilogue::Residual) as usize;
        done.fused_scale += found.op.scaled as usize;
        let out = patch.wire_node(&node.name, found.op, &taps)?;
        patch.shunt_outside(model, found.replaces, out[0])?;
        patch.apply(model)?;
    }
    // Drop the nodes the ops bypass, so that no later match counts them as readers.
    model.compact()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_values as values;
    use tract_linalg::multithread::{Executor, multithread_tract_scope};

    /// The definition in f64, one output value at a time, with every fused step separate.
    fn reference(
        g: &Geometry,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
        scale: Option<&[f32]>,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let (k, m, n) = (g.inputs, g.outputs, g.points());
        let images = x.len() / (k * n);
        let mut out = vec![0.0; images * m * n];
        for image in 0..images {
            for o in 0..m {
                for p in 0..n {
                    let mut acc = bias.get(o).copied().unwrap_or(0.0) as f64;
                    for i in 0..k {
                        let s = scale.map_or(1.0, |s| s[image * k + i]);
                        acc += w[o * k + i] as f64 * (x[(image * k + i) * n + p] * s) as f64;
                    }
                    let at = (image * m + o) * n + p;
                    out[at] = match epilogue {
                        Epilogue::None => acc,
                        Epilogue::Silu => acc / (1.0 + (-acc).exp()),
                        Epilogue::Residual => acc + residual.expect("residual")[at] as f64,
                    } as f32;
                }
            }
        }
        out
    }

    /// Kernels this CPU can run: the portable one always, AVX-512 where present.
    fn kernels() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx2Fma, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    /// Runs the op with `kernel` and the reference on random data and compares them to float
    /// rounding (relative to the sum of the magnitudes that go into each value).
    fn check(g: Geometry, images: usize, epilogue: Epilogue, scaled: bool, kernel: Kernel) {
        let seed = (g.inputs * 31 + g.outputs * 7 + g.points()) as u32;
        let (k, m, n) = (g.inputs, g.outputs, g.points());
        let x = values(images * k * n, seed);
        let w = values(m * k, seed + 1);
        let bias = values(m, seed + 2);
        let scale = scaled.then(|| values(images * k, seed + 3));
        let residual = (epilogue == Epilogue::Residual).then(|| values(images * m * n, seed + 4));
        let op = PointwiseConv::new(g, &w, &bias, epilogue, scaled, kernel).expect("valid op");
        let mut out = vec![f32::NAN; images * m * n];
        op.run(&x, scale.as_deref(), residual.as_deref(), &mut out)
            .expect("runs");
        let expected = reference(
            &g,
            &x,
            &w,
            &bias,
            epilogue,
            scale.as_deref(),
            residual.as_deref(),
        );
        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * (k as f32 + 2.0),
                "{g:?} {epilogue:?} scaled {scaled} {kernel:?}, value {i}: {a} vs reference {b}"
            );
        }
    }

    /// Every epilogue, with and without the scale, on both kernels, for channel counts on and
    /// off the tile's 8 and plane sizes on and off its 48 (one and several panels, a partial
    /// last one), and two images in one tensor.
    #[test]
    fn matches_the_definition() {
        for kernel in kernels() {
            for (inputs, outputs) in [(1, 1), (3, 8), (16, 24), (17, 13), (40, 96)] {
                for (height, width) in [(1, 1), (4, 12), (7, 7), (9, 16), (13, 11)] {
                    let g = Geometry {
                        inputs,
                        outputs,
                        height,
                        width,
                    };
                    for epilogue in [Epilogue::None, Epilogue::Silu, Epilogue::Residual] {
                        for scaled in [false, true] {
                            check(g, 2, epilogue, scaled, kernel);
                        }
                    }
                }
            }
        }
    }

    /// The SiLU stays exact far out on both sides (where the vector `exp` is clamped) and
    /// passes NaN through rather than hiding it.
    #[test]
    fn silu_is_right_at_the_extremes() {
        let g = Geometry {
            inputs: 1,
            outputs: 1,
            height: 1,
            width: 8,
        };
        let x = [-200.0, -90.0, -20.0, -1e-3, 0.0, 5.0, 100.0, f32::NAN];
        for kernel in kernels() {
            let op = PointwiseConv::new(g, &[1.0], &[0.0], Epilogue::Silu, false, kernel)
                .expect("valid op");
            let mut out = [0.0f32; 8];
            op.run(&x, None, None, &mut out).expect("runs");
            for (v, y) in x.iter().zip(&out).take(7) {
                let want = (*v as f64 / (1.0 + (-*v as f64).exp())) as f32;
                assert!(
                    (y - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{kernel:?}: silu({v}) = {y}, want {want}"
                );
            }
            assert!(out[7].is_nan(), "{kernel:?}: silu(NaN) = {}", out[7]);
        }
    }

    /// Output channel panels split across two threads give the one-thread result bit for bit.
    #[test]
    fn threads_compute_the_same_values() {
        let g = Geometry {
            inputs: 24,
            outputs: 64,
            height: 30,
            width: 31,
        };
        let x = values(g.inputs * g.points(), 5);
        let op = PointwiseConv::new(
            g,
            &values(g.inputs * g.outputs, 6),
            &values(g.outputs, 7),
            Epilogue::Silu,
            false,
            Kernel::best(),
        )
        .expect("valid op");
        let mut one = vec![0.0; g.outputs * g.points()];
        op.run(&x, None, None, &mut one).expect("runs");
        let mut two = vec![0.0; one.len()];
        multithread_tract_scope(Executor::multithread(2), || {
            op.run(&x, None, None, &mut two)
        })
        .expect("runs");
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            two.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// What does not fit is refused, not computed wrongly.
    #[test]
    fn refuses_what_does_not_fit() {
        let g = Geometry {
            inputs: 4,
            outputs: 8,
            height: 3,
            width: 3,
        };
        let k = Kernel::Portable;
        assert!(PointwiseConv::new(g, &[0.0; 31], &[], Epilogue::None, false, k).is_err());
        assert!(PointwiseConv::new(g, &[0.0; 32], &[0.0; 7], Epilogue::None, false, k).is_err());
        let empty = Geometry { inputs: 0, ..g };
        assert!(PointwiseConv::new(empty, &[], &[], Epilogue::None, false, k).is_err());
        let op =
            PointwiseConv::new(g, &[0.0; 32], &[], Epilogue::Residual, true, k).expect("valid op");
        let (x, mut out) = ([0.0; 36], [0.0; 72]);
        // Missing scale, missing residual, wrong lengths.
        assert!(op.run(&x, None, Some(&[0.0; 72]), &mut out).is_err());
        assert!(op.run(&x, Some(&[0.0; 4]), None, &mut out).is_err());
        assert!(
            op.run(&x, Some(&[0.0; 3]), Some(&[0.0; 72]), &mut out)
                .is_err()
        );
        assert!(
            op.run(&x[..35], Some(&[0.0; 4]), Some(&[0.0; 72]), &mut out)
                .is_err()
        );
        assert!(
            op.run(&x, Some(&[0.0; 4]), Some(&[0.0; 72]), &mut out)
                .is_ok()
        );
    }
}
