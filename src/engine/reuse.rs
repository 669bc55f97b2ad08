//! Output tensors our ops write into again frame after frame, instead of allocating new ones.
//!
//! tract's plan allocates a fresh tensor for every node output on every run (issue #8's
//! allocation budget counted 835 per frame). Our ops keep theirs in an [`OpState`], which the
//! plan holds for the node from one run to the next: a run hands the consumers a shared
//! reference, they drop it once read, and by the next run the op is again the tensor's only
//! holder and writes into it. Whenever another holder remains (a caller keeping an output),
//! the op allocates a new tensor instead, so reuse never changes a value anyone sees.

use std::marker::PhantomData;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::plan::LaneId;

/// An op that computes into output tensors given to it.
pub trait IntoOutputs: Op + Clone {
    /// The shape of each output for these inputs.
    fn output_shapes(&self, inputs: &[TValue]) -> TractResult<TVec<TVec<usize>>>;

    /// Computes every value of `outputs` (shaped as [`IntoOutputs::output_shapes`] says).
    fn compute(&self, inputs: &[TValue], outputs: &mut [&mut Tensor]) -> TractResult<()>;
}

/// Implements tract's `EvalOp` for an [`IntoOutputs`] op: outside a plan it computes into
/// new tensors ([`eval_fresh`]); in a plan it keeps a [`Reused`] state and writes into the
/// tensors it handed out the run before.
macro_rules! eval_into_reused_outputs {
    ($op:ty) => {
        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                $crate::engine::reuse::eval_fresh(self, &inputs)
            }

            fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
                Ok(Some(Box::new($crate::engine::reuse::Reused::<$op>::new())))
            }
        }
    };
}
pub(crate) use eval_into_reused_outputs;

/// Evaluates `op` into new tensors: outside a plan (constant folding, tests).
pub fn eval_fresh<O: IntoOutputs>(op: &O, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
    let shapes = op.output_shapes(inputs)?;
    let mut tensors: TVec<Tensor> = shapes
        .iter()
        // SAFETY: f32 has no invalid bit patterns, and `compute` writes every value.
        .map(|shape| unsafe { Tensor::uninitialized::<f32>(shape) })
        .collect::<TractResult<_>>()?;
    {
        let mut refs: TVec<&mut Tensor> = tensors.iter_mut().collect();
        op.compute(inputs, &mut refs)?;
    }
    Ok(tensors.into_iter().map(IntoTValue::into_tvalue).collect())
}

/// The state a plan keeps for a node of op `O`: its last outputs.
#[derive(Debug)]
pub struct Reused<O> {
    /// The tensors handed out last run, to write into again.
    outputs: TVec<Arc<Tensor>>,
    /// The op type, for the downcast in `eval`.
    op: PhantomData<fn() -> O>,
}

impl<O> Reused<O> {
    /// A state with nothing to reuse yet.
    pub fn new() -> Reused<O> {
        Reused {
            outputs: TVec::new(),
            op: PhantomData,
        }
    }
}

impl<O> Default for Reused<O> {
    fn default() -> Reused<O> {
        Reused::new()
    }
}

impl<O> Clone for Reused<O> {
    /// A clone starts empty: two states must never share a tensor they write into.
    fn clone(&self) -> Reused<O> {
        Reused::new()
    }
}

impl<O: IntoOutputs> OpState for Reused<O> {
    fn eval(
        &mut self,
        _ctx: &EvalContext,
        op: &dyn Op,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let Some(op) = op.downcast_ref::<O>() else {
            bail!("output reuse state attached to {}", op.name());
        };
        let shapes = op.output_shapes(&inputs)?;
        // Keep a tensor only if it has its output's shape and no one else holds it.
        let reusable = self.outputs.len() == shapes.len()
            && self
                .outputs
                .iter_mut()
                .zip(&shapes)
                .all(|(t, s)| t.shape() == &s[..] && Arc::get_mut(t).is_some());
        if !reusable {
            self.outputs = shapes
                .iter()
                // SAFETY: f32 has no invalid bit patterns, and `compute` writes every value.
                .map(|shape| unsafe { Tensor::uninitialized::<f32>(shape) }.map(Arc::new))
                .collect::<TractResult<_>>()?;
        }
        {
            let mut refs: TVec<&mut Tensor> = TVec::new();
            for t in self.outputs.iter_mut() {
                match Arc::get_mut(t) {
                    Some(t) => refs.push(t),
                    None => bail!("a fresh output tensor is shared"),
                }
            }
            op.compute(&inputs, &mut refs)?;
        }
        Ok(self
            .outputs
            .iter()
            .map(|t| TValue::from_const(t.clone()))
            .collect())
    }

    /// The state holds outputs of one stream only; a laned runtime is refused.
    fn reset_lanes(&mut self, lanes: &[LaneId]) -> TractResult<()> {
        if lanes.len() > 1 {
            bail!("echoview's ops reuse one set of outputs and serve one stream");
        }
        self.outputs.clear();
        Ok(())
    }
}
