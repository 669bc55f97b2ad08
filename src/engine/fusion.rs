//! Reading the neighbourhood of a node in a decluttered tract graph, for the substitutions
//! of [`super::depthwise`], [`super::pointwise`] and [`super::squeeze`]: an op may take in
//! what follows a convolution only where nothing else reads the values in between.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::Silu;

/// The node that alone consumes `node`'s only output, if there is exactly one and the output
/// is not a model output.
pub fn sole_consumer<'m>(model: &'m TypedModel, node: &TypedNode) -> Option<&'m TypedNode> {
    let outlet = OutletId::new(node.id, 0);
    if node.outputs.len() != 1 || model.output_outlets().ok()?.contains(&outlet) {
        return None;
    }
    match model.outlet_successors(outlet) {
        [only] => Some(model.node(only.node)),
        _ => None,
    }
}

/// Whether `node` is the binary op `B` (an addition, a multiplication).
pub fn is_bin<B: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<B>())
}

/// Whether `node` is tract's SiLU (decluttering turns `x * sigmoid(x)` into it).
pub fn is_silu(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>()
        .is_some_and(|e| e.0.is::<Silu>())
}

/// The values of `outlet`, if it is an f32 constant.
pub fn constant(model: &TypedModel, outlet: OutletId) -> Option<Vec<f32>> {
    let fact = model.outlet_fact(outlet).ok()?;
    let k = fact.konst.as_ref()?;
    k.try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()
        .map(<[f32]>::to_vec)
}

/// The concrete shape of `outlet`, if it is f32 and fully known.
pub fn shape(model: &TypedModel, outlet: OutletId) -> Option<Vec<usize>> {
    let fact = model.outlet_fact(outlet).ok()?;
    (fact.datum_type == f32::datum_type())
        .then(|| fact.shape.as_concrete().map(<[usize]>::to_vec))
        .flatten()
}

/// A 1x1 convolution as decluttering leaves it: the `NIHW,OI->NOHW` einsum at `node`, f32,
/// with constant weights. Its weights (`[outputs][depth]`), outputs and depth.
pub fn conv_1x1(model: &TypedModel, node: &TypedNode) -> Option<(Vec<f32>, usize, usize)> {
    let einsum = node.op_as::<EinSum>()?;
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || einsum.axes.to_string() != "NIHW,OI->NOHW"
        || node.inputs.len() != 2
    {
        return None;
    }
    let w_shape = shape(model, node.inputs[1])?;
    let &[outputs, depth] = &w_shape[..] else {
        return None;
    };
    Some((constant(model, node.inputs[1])?, outputs, depth))
}

/// The bias added to the output of `node` (`channels` channels), as tract keeps it: an
/// addition, alone reading `node`, of a per-channel constant (`[1, channels, 1, 1]`, or
/// without the batch axis; another shape with as many values would broadcast along another
/// axis). Its values and the addition.
pub fn per_channel_bias<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
    channels: usize,
) -> Option<(Vec<f32>, &'m TypedNode)> {
    let add = sole_consumer(model, node).filter(|n| is_bin::<Add>(n))?;
    let other = *add.inputs.iter().find(|o| o.node != node.id)?;
    let per_channel = matches!(
        shape(model, other).as_deref(),
        Some([1, c, 1, 1]) | Some([c, 1, 1]) if *c == channels
    );
    if !per_channel {
        return None;
    }
    Some((constant(model, other)?, add))
}
