//! The tract backend: ONNX on the CPU.
//!
//! Every input gets its fixed shape before optimisation: tract plans a symbolic batch several
//! times slower, and the pipeline only ever runs batch 1 (looping batch 1 is also faster per
//! frame than batching on tract). Each network keeps one spawned state, so a run reuses the
//! plan's buffers instead of setting it up again.

use std::path::Path;

use tract_onnx::prelude::*;

use super::{Engine, EngineError, HeadOutput, depthwise, pointwise, squeeze};
use crate::bundle::Bundle;

type Plan = TypedSimpleState;

/// Sets how many threads tract's matrix products (and large elementwise kernels) use, for
/// every tract model in this process: tract keeps one process-wide executor, single-threaded
/// until told otherwise. `1` (or `0`) runs inline on the caller's thread; more spawns a
/// private pool of that many threads. Call it before loading when comparing thread counts.
pub fn set_threads(threads: usize) {
    let executor = if threads <= 1 {
        tract_linalg::multithread::Executor::SingleThread
    } else {
        tract_linalg::multithread::Executor::multithread(threads)
    };
    tract_linalg::multithread::set_default_executor(executor);
}

/// Choices in how the tract plans are built, for measuring one against another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TractOptions {
    /// Run the depthwise convolutions that [`depthwise`] covers with its op instead of
    /// tract's (on by default: faster on the EfficientNet encoders, same values to float
    /// reassociation). Off measures tract alone.
    pub own_depthwise: bool,
    /// Run the 1x1 convolutions that [`pointwise`] covers, with the bias, SiLU, residual and
    /// squeeze-excitation scale around them, as its fused op instead of tract's matrix
    /// products. On by default where this CPU has the op's fast kernel
    /// ([`pointwise::fast_kernel`]); off measures tract's own.
    pub own_pointwise: bool,
    /// Run each squeeze-excitation chain (mean, two 1x1 convolutions on one point, SiLU,
    /// sigmoid) as one [`squeeze`] op instead of about nine tract nodes that each allocate their
    /// output every frame (on by default).
    pub own_squeeze_excitation: bool,
}

impl Default for TractOptions {
    fn default() -> TractOptions {
        TractOptions {
            own_depthwise: true,
            own_pointwise: pointwise::fast_kernel(),
            own_squeeze_excitation: true,
        }
    }
}

/// Encoder and head, optimised for the bundle's shapes.
pub struct TractEngine {
    /// The encoder's runnable state.
    encoder: Plan,
    /// The head's runnable state.
    head: Plan,
    /// The encoder's input tensor, refilled every frame instead of allocated: tract hands
    /// inputs around as shared tensors and drops its references when a run ends, so the
    /// buffer is ours again for the next frame.
    encoder_input: Arc<Tensor>,
    /// The head's input tensor, reused the same way.
    head_input: Arc<Tensor>,
    /// Encoder input shape `[1, C, H, W]`.
    image_shape: [usize; 4],
    /// Head input shape `[1, T, D]`.
    features_shape: [usize; 3],
    /// Length of one feature vector.
    feature_dim: usize,
    /// Number of classes.
    labels: usize,
    /// File names for error messages.
    encoder_file: String,
    head_file: String,
}

impl TractEngine {
    /// Loads and optimises both networks of `bundle`, checking their inputs and outputs
    /// against the manifest.
    pub fn load(bundle: &Bundle) -> Result<TractEngine, EngineError> {
        TractEngine::load_with(bundle, TractOptions::default())
    }

    /// [`TractEngine::load`] with plans built as `options` says.
    pub fn load_with(bundle: &Bundle, options: TractOptions) -> Result<TractEngine, EngineError> {
        let m = &bundle.manifest;
        let image_shape = [
            1,
            m.input.channels as usize,
            m.input.height as usize,
            m.input.width as usize,
        ];
        let feature_dim = bundle.feature_dim();
        let features_shape = [1, bundle.frames_per_beat(), feature_dim];
        let labels = bundle.labels.len();

        let encoder = load_plan(
            &bundle.encoder_path(),
            &m.encoder.input,
            &image_shape,
            &[(&m.encoder.output, vec![1, feature_dim])],
            options,
        )?;
        let head = load_plan(
            &bundle.head_path(),
            &m.head.input,
            &features_shape,
            &[
                (&m.head.logits, vec![1, labels]),
                (&m.head.alpha, vec![1, 1]),
            ],
            options,
        )?;
        let zeros = |shape: &[usize]| Tensor::zero::<f32>(shape).map(Arc::new);
        let encoder_input = zeros(&image_shape).map_err(|e| EngineError::Load {
            file: m.encoder.file.clone(),
            message: format!("{e:#}"),
        })?;
        let head_input = zeros(&features_shape).map_err(|e| EngineError::Load {
            file: m.head.file.clone(),
            message: format!("{e:#}"),
        })?;
        Ok(TractEngine {
            encoder,
            head,
            encoder_input,
            head_input,
            image_shape,
            features_shape,
            feature_dim,
            labels,
            encoder_file: m.encoder.file.clone(),
            head_file: m.head.file.clone(),
        })
    }
}

/// Loads `path`, fixes its single input `input` to `shape`, selects `outputs` by name in the
/// given order, checks their shapes, and returns a runnable state built as `options` says.
fn load_plan(
    path: &Path,
    input: &str,
    shape: &[usize],
    outputs: &[(&String, Vec<usize>)],
    options: TractOptions,
) -> Result<Plan, EngineError> {
    let file = path.display().to_string();
    let load = |message: String| EngineError::Load {
        file: file.clone(),
        message,
    };
    let mismatch = |message: String| EngineError::Mismatch {
        file: file.clone(),
        message,
    };
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| load(format!("{e:#}")))?;

    let inputs = model
        .input_outlets()
        .map_err(|e| load(format!("{e:#}")))?
        .to_vec();
    let input_names: Vec<String> = inputs
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    if input_names != [input] {
        return Err(mismatch(format!(
            "inputs are {input_names:?}, the manifest expects exactly [{input:?}]"
        )));
    }
    model
        .set_input_fact(0, f32::fact(shape).into())
        .map_err(|e| load(format!("{e:#}")))?;

    let mut selected = Vec::new();
    for (name, _) in outputs {
        let outlet = model
            .output_outlets()
            .map_err(|e| load(format!("{e:#}")))?
            .iter()
            .copied()
            .find(|o| {
                model.outlet_label(*o) == Some(name.as_str()) || model.node(o.node).name == **name
            })
            .ok_or_else(|| {
                let have: Vec<String> = model
                    .output_outlets()
                    .map(|outs| {
                        outs.iter()
                            .map(|o| {
                                model
                                    .outlet_label(*o)
                                    .map_or_else(|| model.node(o.node).name.clone(), str::to_string)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                mismatch(format!("has no output {name:?}; its outputs are {have:?}"))
            })?;
        selected.push(outlet);
    }
    model
        .select_output_outlets(&selected)
        .map_err(|e| load(format!("{e:#}")))?;

    // Our op goes in between decluttering (which folds the weights' casts into constants)
    // and optimisation (which would lower the convolutions to tract's kernels);
    // `into_optimized` declutters first, so tract alone gets exactly its own pipeline.
    let mut typed = model.into_typed().map_err(|e| load(format!("{e:#}")))?;
    if options.own_depthwise || options.own_pointwise || options.own_squeeze_excitation {
        depthwise::declutter_keeping_layout(&mut typed).map_err(|e| load(format!("{e:#}")))?;
    }
    if options.own_depthwise {
        depthwise::substitute(&mut typed).map_err(|e| load(format!("{e:#}")))?;
    }
    if options.own_pointwise {
        pointwise::substitute(&mut typed, pointwise::Kernel::best())
            .map_err(|e| load(format!("{e:#}")))?;
    }
    if options.own_squeeze_excitation {
        squeeze::substitute(&mut typed).map_err(|e| load(format!("{e:#}")))?;
    }
    let typed = typed.into_optimized().map_err(|e| load(format!("{e:#}")))?;
    for (i, (name, expected)) in outputs.iter().enumerate() {
        let fact = typed.output_fact(i).map_err(|e| load(format!("{e:#}")))?;
        let dims: Option<Vec<usize>> = fact.shape.as_concrete().map(<[usize]>::to_vec);
        if dims.as_deref() != Some(expected.as_slice()) || fact.datum_type != f32::datum_type() {
            return Err(mismatch(format!(
                "output {name:?} is {:?} {:?}, the manifest implies f32 {expected:?}",
                fact.datum_type, fact.shape
            )));
        }
    }
    let plan = typed.into_runnable().map_err(|e| load(format!("{e:#}")))?;
    TypedSimpleState::new(&plan).map_err(|e| load(format!("{e:#}")))
}

/// Runs `state` on `data`, copied into the reused input tensor `input` of `shape`.
fn run(
    state: &mut Plan,
    file: &str,
    input: &mut Arc<Tensor>,
    shape: &[usize],
    data: &[f32],
) -> Result<TVec<TValue>, EngineError> {
    let run_err = |e: TractError| EngineError::Run {
        file: file.to_string(),
        message: format!("{e:#}"),
    };
    match Arc::get_mut(input) {
        Some(tensor) => {
            let mut view = tensor.to_plain_array_view_mut::<f32>().map_err(run_err)?;
            for (d, v) in view.iter_mut().zip(data) {
                *d = *v;
            }
        }
        // Still shared (a runtime that kept a reference): fall back to a fresh tensor.
        None => *input = Arc::new(Tensor::from_shape(shape, data).map_err(run_err)?),
    }
    state
        .run(tvec!(TValue::from_const(input.clone())))
        .map_err(run_err)
}

/// Copies an f32 output tensor into `dst`.
fn read_f32(value: &TValue, file: &str, dst: &mut [f32]) -> Result<(), EngineError> {
    let view = value
        .to_plain_array_view::<f32>()
        .map_err(|e| EngineError::Run {
            file: file.to_string(),
            message: format!("{e:#}"),
        })?;
    if view.len() != dst.len() {
        return Err(EngineError::BadLength {
            what: "model output",
            expected: dst.len(),
            actual: view.len(),
        });
    }
    for (d, v) in dst.iter_mut().zip(view.iter()) {
        *d = *v;
    }
    Ok(())
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn encode(&mut self, image: &[f32], features: &mut [f32]) -> Result<(), EngineError> {
        let expected: usize = self.image_shape.iter().product();
        if image.len() != expected || features.len() != self.feature_dim {
            return Err(EngineError::BadLength {
                what: "encoder input/output",
                expected: if image.len() != expected {
                    expected
                } else {
                    self.feature_dim
                },
                actual: if image.len() != expected {
                    image.len()
                } else {
                    features.len()
                },
            });
        }
        let out = run(
            &mut self.encoder,
            &self.encoder_file,
            &mut self.encoder_input,
            &self.image_shape,
            image,
        )?;
        read_f32(&out[0], &self.encoder_file, features)
    }

    fn head(&mut self, features: &[f32]) -> Result<HeadOutput, EngineError> {
        let expected: usize = self.features_shape.iter().product();
        if features.len() != expected {
            return Err(EngineError::BadLength {
                what: "head input",
                expected,
                actual: features.len(),
            });
        }
        let out = run(
            &mut self.head,
            &self.head_file,
            &mut self.head_input,
            &self.features_shape,
            features,
        )?;
        let mut logits = vec![0.0; self.labels];
        read_f32(&out[0], &self.head_file, &mut logits)?;
        let mut alpha = [0.0];
        read_f32(&out[1], &self.head_file, &mut alpha)?;
        Ok(HeadOutput {
            logits,
            alpha: alpha[0],
        })
    }
}
