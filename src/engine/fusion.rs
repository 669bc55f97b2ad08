//! Reading the neighbourhood of a node in a decluttered tract graph, for the substitutions
//! of [`super::depthwise`] and [`super::pointwise`]: an op may take in what follows a
//! convolution only where nothing else reads the values in between.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
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
