//! Our own squeeze-excitation op for tract plans: the small network between an EfficientNet
//! block's channel means and the scale its projection reads, in one node.
//!
//! After decluttering, each squeeze-excitation block is a chain of about nine tract nodes once
//! optimised: the mean (a multiplication of the channel sums by `1 / points`), two 1x1
//! convolutions on a single point (each an einsum, a packing node, a reshape and a bias
//! addition), a SiLU between them and a sigmoid at the end. Their arithmetic is tiny (about
//! 1 % of the encoder's multiply-adds) but every node allocates its output tensor on every
//! frame, and these chains were most of the nodes left to tract after our depthwise and
//! 1x1 ops (issue #8's allocation budget). [`SqueezeExcite`] computes the whole chain from
//! the channel sums: `scale = sigmoid(W2 silu(W1 (sums * r) + b1) + b2)`.
//!
//! [`substitute`] replaces every such chain whose intermediate values nothing else reads.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::Sigmoid;

use super::fusion::{constant, conv_1x1, is_bin, is_silu, per_channel_bias, shape, sole_consumer};
use super::mul_add::MulAdd;
use super::reuse::{self, IntoOutputs};
use super::silu;

/// A squeeze-excitation block from channel sums to channel scales, as a tract op.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    /// Channels of the block (the input's and the output's).
    pub channels: usize,
    /// Channels of the squeezed middle.
    pub squeezed: usize,
    /// What the sums are multiplied by to make means: `1 / points` of the plane.
    mean_scale: f32,
    /// First 1x1 convolution, `[squeezed][channels]`.
    w1: Arc<[f32]>,
    /// Its bias, `squeezed` values.
    b1: Arc<[f32]>,
    /// Second 1x1 convolution, `[channels][squeezed]`.
    w2: Arc<[f32]>,
    /// Its bias, `channels` values.
    b2: Arc<[f32]>,
}

impl PartialEq for SqueezeExcite {
    /// Bitwise on the weights, so that equal ops are interchangeable.
    fn eq(&self, other: &SqueezeExcite) -> bool {
        self.channels == other.channels
            && self.squeezed == other.squeezed
            && self.mean_scale.to_bits() == other.mean_scale.to_bits()
            && super::same_bits(&self.w1, &other.w1)
            && super::same_bits(&self.b1, &other.b1)
            && super::same_bits(&self.w2, &other.w2)
            && super::same_bits(&self.b2, &other.b2)
    }
}

impl Eq for SqueezeExcite {}

/// Why an op cannot be built from the values given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("squeeze-excitation of {channels} channels through {squeezed}: {what}")]
pub struct BadWeights {
    /// Channels of the block.
    pub channels: usize,
    /// Channels of the squeezed middle.
    pub squeezed: usize,
    /// What does not fit.
    pub what: String,
}

impl SqueezeExcite {
    /// An op with weights `w1` (`squeezed * channels`), `w2` (`channels * squeezed`) and
    /// biases `b1`, `b2` (their output counts, or empty for zeros).
    pub fn new(
        mean_scale: f32,
        (w1, b1): (&[f32], &[f32]),
        (w2, b2): (&[f32], &[f32]),
        channels: usize,
        squeezed: usize,
    ) -> Result<SqueezeExcite, BadWeights> {
        let bad = |what: String| BadWeights {
            channels,
            squeezed,
            what,
        };
        if channels == 0 || squeezed == 0 {
            return Err(bad("an empty dimension".into()));
        }
        if w1.len() != channels * squeezed || w2.len() != channels * squeezed {
            return Err(bad(format!("{} and {} weights", w1.len(), w2.len())));
        }
        let bias = |b: &[f32], n: usize| match b.len() {
            0 => Ok(vec![0.0; n].into()),
            len if len == n => Ok(b.into()),
            len => Err(bad(format!("{len} biases for {n} outputs"))),
        };
        Ok(SqueezeExcite {
            channels,
            squeezed,
            mean_scale,
            w1: w1.into(),
            b1: bias(b1, squeezed)?,
            w2: w2.into(),
            b2: bias(b2, channels)?,
        })
    }

    /// Computes the scales of one or more images: `sums` is `[N, channels]`, `scales` the
    /// same shape, `middle` holds `squeezed` values of scratch.
    pub fn run(&self, sums: &[f32], scales: &mut [f32], middle: &mut [f32]) -> TractResult<()> {
        let (c, s) = (self.channels, self.squeezed);
        if !sums.len().is_multiple_of(c) || scales.len() != sums.len() || middle.len() != s {
            bail!(
                "squeeze-excitation of {c} channels through {s}: {} sums, {} scales, {} scratch",
                sums.len(),
                scales.len(),
                middle.len()
            );
        }
        for (sums, scales) in sums.chunks_exact(c).zip(scales.chunks_exact_mut(c)) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the function is compiled for (checked above).
                unsafe { image_avx2_fma(self, sums, scales, middle) };
                continue;
            }
            #[cfg(target_arch = "aarch64")]
            image::<super::mul_add::Fused>(self, sums, scales, middle);
            #[cfg(not(target_arch = "aarch64"))]
            image::<super::mul_add::Plain>(self, sums, scales, middle);
        }
        Ok(())
    }
}

/// [`image`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn image_avx2_fma(op: &SqueezeExcite, sums: &[f32], scales: &mut [f32], middle: &mut [f32]) {
    image::<super::mul_add::Fused>(op, sums, scales, middle);
}

/// One image's scales from its channel sums. The means are not materialised: `W1 (r sums) =
/// r (W1 sums)`, so the scale multiplies each dot product instead.
#[inline(always)]
fn image<M: MulAdd>(op: &SqueezeExcite, sums: &[f32], scales: &mut [f32], middle: &mut [f32]) {
    let (c, s) = (op.channels, op.squeezed);
    for (j, h) in middle.iter_mut().enumerate() {
        let z = M::mul_add(
            op.b1[j],
            op.mean_scale,
            dot::<M>(&op.w1[j * c..][..c], sums),
        );
        *h = silu::silu::<M>(z);
    }
    for (i, g) in scales.iter_mut().enumerate() {
        let z = op.b2[i] + dot::<M>(&op.w2[i * s..][..s], middle);
        *g = 1.0 / (1.0 + silu::exp::<M>(-z));
    }
}

/// `sum a[i] b[i]` in 8 interleaved partial sums, so the compiler can vectorise it.
#[inline(always)]
fn dot<M: MulAdd>(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut partial = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((p, x), y) in partial.iter_mut().zip(x).zip(y) {
            *p = M::mul_add(*p, *x, *y);
        }
    }
    let mut rest = 0.0;
    for (x, y) in a_rest.iter().zip(b_rest) {
        rest = M::mul_add(rest, *x, *y);
    }
    partial.iter().sum::<f32>() + rest
}

impl Op for SqueezeExcite {
    fn name(&self) -> StaticName {
        "EchoviewSqueezeExcite".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} -> {}",
            self.channels, self.squeezed, self.channels
        )])
    }

    op_as_typed_op!();
}

reuse::eval_into_reused_outputs!(SqueezeExcite);

impl IntoOutputs for SqueezeExcite {
    fn output_shapes(&self, inputs: &[TValue]) -> TractResult<TVec<TVec<usize>>> {
        let [sums] = inputs else {
            bail!("squeeze-excitation takes one input, got {}", inputs.len());
        };
        Ok(tvec!(sums.shape().iter().copied().collect()))
    }

    fn compute(&self, inputs: &[TValue], outputs: &mut [&mut Tensor]) -> TractResult<()> {
        let ([sums], [scales]) = (inputs, outputs) else {
            bail!("squeeze-excitation takes one input and has one output");
        };
        // The middle is at most a few hundred values: on the stack.
        let mut middle = [0.0f32; MAX_SQUEEZED];
        let mut view = scales.try_as_plain_ram_mut()?;
        self.run(
            sums.try_as_plain_ram()?.as_slice::<f32>()?,
            view.as_slice_mut::<f32>()?,
            &mut middle[..self.squeezed],
        )
    }
}

/// Largest squeezed width the op takes (EfficientNet-b7's largest is 160): the scratch for
/// the middle lives on the stack.
pub const MAX_SQUEEZED: usize = 512;

impl TypedOp for SqueezeExcite {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let [x] = inputs else {
            bail!("squeeze-excitation takes one input, got {}", inputs.len());
        };
        Ok(tvec!(f32::fact(x.shape.clone())))
    }

    as_op!();
}

/// What [`substitute`] did to a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substitution {
    /// Squeeze-excitation chains now run by [`SqueezeExcite`].
    pub replaced: usize,
}

/// Whether `node` is tract's sigmoid.
fn is_sigmoid(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>()
        .is_some_and(|e| e.0.is::<Sigmoid>())
}

/// A 1x1 convolution on one point as decluttering leaves it, at `node` reading `input` of
/// `channels`: its weights (`[outputs][channels]`), its bias (empty for none), its output
/// count, and the last node of it (the bias addition, or the einsum).
fn point_conv<'m>(
    model: &'m TypedModel,
    node: &'m TypedNode,
    channels: usize,
) -> Option<(Vec<f32>, Vec<f32>, usize, &'m TypedNode)> {
    let (weights, outputs, depth) = conv_1x1(model, node)?;
    if depth != channels {
        return None;
    }
    Some(match per_channel_bias(model, node, outputs) {
        Some((bias, add)) => (weights, bias, outputs, add),
        None => (weights, Vec::new(), outputs, node),
    })
}

/// Matches the chain from a `Mul` of channel sums by a scalar constant to the sigmoid.
fn find<'m>(
    model: &'m TypedModel,
    mul: &'m TypedNode,
) -> Option<(SqueezeExcite, OutletId, OutletId)> {
    if !is_bin::<Mul>(mul) || mul.inputs.len() != 2 {
        return None;
    }
    let (sums, r) = match (
        constant(model, mul.inputs[0]),
        constant(model, mul.inputs[1]),
    ) {
        (None, Some(r)) => (mul.inputs[0], r),
        (Some(r), None) => (mul.inputs[1], r),
        _ => return None,
    };
    let &[mean_scale] = &r[..] else {
        return None;
    };
    let sums_shape = shape(model, sums)?;
    let &[_, channels, 1, 1] = &sums_shape[..] else {
        return None;
    };
    let fc1 = sole_consumer(model, mul)?;
    let (w1, b1, squeezed, end1) = point_conv(model, fc1, channels)?;
    let act = sole_consumer(model, end1).filter(|n| is_silu(n))?;
    let fc2 = sole_consumer(model, act)?;
    let (w2, b2, back, end2) = point_conv(model, fc2, squeezed)?;
    let sigmoid = sole_consumer(model, end2).filter(|n| is_sigmoid(n))?;
    if back != channels || squeezed > MAX_SQUEEZED {
        return None;
    }
    let op = SqueezeExcite::new(mean_scale, (&w1, &b1), (&w2, &b2), channels, squeezed).ok()?;
    Some((op, sums, OutletId::new(sigmoid.id, 0)))
}

/// Replaces every squeeze-excitation chain of `model` (see the module doc) whose
/// intermediate values nothing else reads by a [`SqueezeExcite`]. Run it on a decluttered
/// model, and optimise afterwards.
pub fn substitute(model: &mut TypedModel) -> TractResult<Substitution> {
    let mut done = Substitution::default();
    for id in model.eval_order()? {
        let Some((op, sums, sigmoid)) = find(model, model.node(id)) else {
            continue;
        };
        let name = format!("{}.squeeze_excite", model.node(id).name);
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, sums)?;
        let out = patch.wire_node(name, op, &[input])?;
        patch.shunt_outside(model, sigmoid, out[0])?;
        patch.apply(model)?;
        done.replaced += 1;
    }
    model.compact()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_values as values;

    /// The definition in f64, step by step as tract's nodes compute it.
    fn reference(op: &SqueezeExcite, sums: &[f32]) -> Vec<f32> {
        let (c, s) = (op.channels, op.squeezed);
        let mean: Vec<f64> = sums
            .iter()
            .map(|v| *v as f64 * op.mean_scale as f64)
            .collect();
        let h: Vec<f64> = (0..s)
            .map(|j| {
                let z = op.b1[j] as f64
                    + (0..c)
                        .map(|i| op.w1[j * c + i] as f64 * mean[i])
                        .sum::<f64>();
                z / (1.0 + (-z).exp())
            })
            .collect();
        (0..c)
            .map(|i| {
                let z =
                    op.b2[i] as f64 + (0..s).map(|j| op.w2[i * s + j] as f64 * h[j]).sum::<f64>();
                (1.0 / (1.0 + (-z).exp())) as f32
            })
            .collect()
    }

    /// Widths on and off the dot product's 8 lanes, with and without biases, two images.
    #[test]
    fn matches_the_definition() {
        for (c, s) in [(1, 1), (8, 2), (13, 5), (96, 4), (352, 88)] {
            for biased in [false, true] {
                let (w1, w2) = (values(c * s, 3), values(c * s, 4));
                let (b1, b2) = if biased {
                    (values(s, 5), values(c, 6))
                } else {
                    (Vec::new(), Vec::new())
                };
                let op = SqueezeExcite::new(0.01, (&w1, &b1), (&w2, &b2), c, s).expect("valid");
                let sums: Vec<f32> = values(2 * c, 7).iter().map(|v| v * 50.0).collect();
                let mut scales = vec![f32::NAN; 2 * c];
                let mut middle = vec![0.0; s];
                op.run(&sums, &mut scales, &mut middle).expect("runs");
                for (image, got) in scales.chunks_exact(c).enumerate() {
                    let want = reference(&op, &sums[image * c..][..c]);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5,
                            "{c}->{s} image {image} channel {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// What does not fit is refused.
    #[test]
    fn refuses_what_does_not_fit() {
        let w = [0.0; 8];
        assert!(SqueezeExcite::new(1.0, (&w, &[]), (&w, &[]), 4, 2).is_ok());
        assert!(SqueezeExcite::new(1.0, (&w[..7], &[]), (&w, &[]), 4, 2).is_err());
        assert!(SqueezeExcite::new(1.0, (&w, &[0.0; 3]), (&w, &[]), 4, 2).is_err());
        assert!(SqueezeExcite::new(1.0, (&[], &[]), (&[], &[]), 0, 2).is_err());
        let op = SqueezeExcite::new(1.0, (&w, &[]), (&w, &[]), 4, 2).expect("valid");
        assert!(op.run(&[0.0; 4], &mut [0.0; 3], &mut [0.0; 2]).is_err());
        assert!(op.run(&[0.0; 4], &mut [0.0; 4], &mut [0.0; 3]).is_err());
        assert!(op.run(&[0.0; 8], &mut [0.0; 8], &mut [0.0; 2]).is_ok());
    }
}
