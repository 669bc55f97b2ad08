//! The TensorRT backend: the encoder on the Jetson's GPU, with a typed reason whenever it
//! cannot be trusted and tract runs instead.
//!
//! Layers, from the bottom:
//! - `shim.cpp`/`shim.h` (feature `tensorrt`, compiled by `build.rs`): the TensorRT runtime
//!   API common to 8.5, 8.6 and 10 behind four C functions. Without TensorRT headers at build
//!   time it compiles to stubs and the backend reports [`FallbackReason::NoHeaders`].
//! - [`loader`] (every build): libnvinfer and the CUDA runtime opened with `dlopen`, so no
//!   build links them and the binary starts where they are missing.
//! - [`plan`]: the plan cache and its sidecar; [`rebuild`]: the background plan build.
//! - [`open`]: the whole chain for `--engine auto|tensorrt`, ending in a [`TensorRtEngine`]
//!   (feature `tensorrt`) or a [`FallbackReason`]; [`probe`] reports the same facts for
//!   `echoview doctor` without opening anything.
//!
//! Only the encoder runs on TensorRT: it is >99% of the work per beat, while the head runs
//! once per beat on a few kilobytes and stays on tract, which also makes the start-up check
//! (TensorRT against tract on the bundle's reference frame) cheap.

pub mod loader;
pub mod plan;
pub mod rebuild;

#[cfg(feature = "tensorrt")]
mod backend;

#[cfg(feature = "tensorrt")]
pub use self::backend::TensorRtEngine;

use std::path::{Path, PathBuf};

use self::loader::{Cuda, Gpu, NvInfer, TrtVersion};
use self::plan::ModelNeeds;
use crate::bundle::Bundle;

/// Why TensorRT is not running the encoder: every way the `auto` engine ends on tract.
///
/// A typed value rather than a string so callers can act on it (rebuild a stale plan, show
/// a field engineer what to fix) and so the socket carries a stable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FallbackReason {
    /// This binary was built without the `tensorrt` feature.
    #[error("TensorRT support is not compiled in (build with --features tensorrt)")]
    NotCompiled,
    /// The feature is on but no TensorRT headers were found at build time.
    #[error(
        "built without TensorRT headers: rebuild with TENSORRT_INCLUDE_DIR and CUDA_INCLUDE_DIR \
         set (JetPack: /usr/include/aarch64-linux-gnu and /usr/local/cuda/include)"
    )]
    NoHeaders,
    /// libnvinfer could not be loaded.
    #[error("libnvinfer not found (tried {tried:?}): {error}")]
    LibraryMissing {
        /// The names or paths tried.
        tried: Vec<String>,
        /// The last `dlerror`.
        error: String,
    },
    /// A library lacks a symbol echoview needs (not TensorRT / not a CUDA runtime).
    #[error("{library} has no symbol {symbol}: it is not a usable TensorRT or CUDA library")]
    SymbolMissing {
        /// The library.
        library: String,
        /// The missing symbol.
        symbol: String,
    },
    /// `getInferLibVersion` returned something that is not a version.
    #[error("{library} reports version code {code}, which is not a TensorRT version")]
    BadVersion {
        /// The library.
        library: String,
        /// What it returned.
        code: i32,
    },
    /// libnvinfer's major version is not the one the shim was compiled for.
    #[error(
        "libnvinfer is TensorRT {found}, but this echoview's TensorRT shim supports major \
         version(s) {supported:?}: install the matching TensorRT or rebuild echoview against it"
    )]
    VersionMismatch {
        /// The library's version.
        found: TrtVersion,
        /// The majors the shim can drive.
        supported: Vec<u32>,
    },
    /// The CUDA runtime could not be loaded.
    #[error("the CUDA runtime (libcudart) was not found (tried {tried:?}): {error}")]
    CudaMissing {
        /// The names or paths tried.
        tried: Vec<String>,
        /// The last `dlerror`.
        error: String,
    },
    /// No CUDA GPU is usable.
    #[error("no usable CUDA GPU: {error}")]
    NoGpu {
        /// What CUDA said.
        error: String,
    },
    /// There is no plan file yet.
    #[error("no TensorRT plan at {path} (build it with board/build-engine.sh)")]
    PlanMissing {
        /// The plan's path.
        path: String,
    },
    /// The plan's sidecar is missing or unreadable.
    #[error("the plan's sidecar {path} is missing or invalid: {message}")]
    SidecarInvalid {
        /// The sidecar's path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The plan file is shorter than its sidecar says.
    #[error("the plan {path} is truncated: {bytes} bytes, its sidecar says {expected}")]
    PlanTruncated {
        /// The plan's path.
        path: String,
        /// Its size.
        bytes: u64,
        /// The size recorded at build time.
        expected: u64,
    },
    /// The plan's bytes are not the ones its sidecar describes.
    #[error("the plan {path} is corrupt: {message}")]
    PlanCorrupt {
        /// The plan's path.
        path: String,
        /// What differs.
        message: String,
    },
    /// The plan was built for another model, TensorRT or GPU.
    #[error("the plan {path} is stale: its {field} is {plan:?}, now {current:?}")]
    PlanStale {
        /// The plan's path.
        path: String,
        /// The sidecar field that differs.
        field: &'static str,
        /// The plan's value.
        plan: String,
        /// The value now.
        current: String,
    },
    /// `createInferRuntime_INTERNAL` returned null.
    #[error("TensorRT could not create a runtime: {message}")]
    RuntimeNull {
        /// What TensorRT logged.
        message: String,
    },
    /// TensorRT refused the plan.
    #[error("TensorRT could not deserialise the plan {path}: {message}")]
    Deserialize {
        /// The plan's path.
        path: String,
        /// What TensorRT logged.
        message: String,
    },
    /// The plan loaded but cannot run the model as the manifest describes it.
    #[error("the TensorRT plan cannot run the encoder: {message}")]
    PlanUnusable {
        /// What failed (tensor names, shapes, CUDA, the first inference).
        message: String,
    },
    /// TensorRT's output on the reference frame differs from tract's beyond FP16 tolerance.
    #[error(
        "TensorRT disagrees with tract on the reference frame: max |difference| {diff:.3e} > \
         tolerance {tolerance:.3e}"
    )]
    Disagrees {
        /// Largest absolute difference of the encoder features.
        diff: f32,
        /// The tolerance applied.
        tolerance: f32,
    },
}

impl FallbackReason {
    /// A stable machine-readable name, carried on the socket next to the message.
    pub fn code(&self) -> &'static str {
        match self {
            FallbackReason::NotCompiled => "not_compiled",
            FallbackReason::NoHeaders => "no_headers",
            FallbackReason::LibraryMissing { .. } => "library_missing",
            FallbackReason::SymbolMissing { .. } => "symbol_missing",
            FallbackReason::BadVersion { .. } => "bad_version",
            FallbackReason::VersionMismatch { .. } => "version_mismatch",
            FallbackReason::CudaMissing { .. } => "cuda_missing",
            FallbackReason::NoGpu { .. } => "no_gpu",
            FallbackReason::PlanMissing { .. } => "plan_missing",
            FallbackReason::SidecarInvalid { .. } => "sidecar_invalid",
            FallbackReason::PlanTruncated { .. } => "plan_truncated",
            FallbackReason::PlanCorrupt { .. } => "plan_corrupt",
            FallbackReason::PlanStale { .. } => "plan_stale",
            FallbackReason::RuntimeNull { .. } => "runtime_null",
            FallbackReason::Deserialize { .. } => "deserialize_failed",
            FallbackReason::PlanUnusable { .. } => "plan_unusable",
            FallbackReason::Disagrees { .. } => "disagrees_with_tract",
        }
    }

    /// Whether building the plan anew may cure this (the plan, not the machine, is at fault).
    pub fn plan_rebuild_helps(&self) -> bool {
        matches!(
            self,
            FallbackReason::PlanMissing { .. }
                | FallbackReason::SidecarInvalid { .. }
                | FallbackReason::PlanTruncated { .. }
                | FallbackReason::PlanCorrupt { .. }
                | FallbackReason::PlanStale { .. }
                | FallbackReason::Deserialize { .. }
        )
    }
}

/// Where the TensorRT backend finds its files; the defaults suit a JetPack install.
#[derive(Debug, Clone, PartialEq)]
pub struct TrtOptions {
    /// The encoder plan (its sidecar is `PLAN.json`).
    pub plan: PathBuf,
    /// libnvinfer to load; `None` searches [`loader::NVINFER_NAMES`].
    pub libnvinfer: Option<PathBuf>,
    /// The CUDA runtime to load; `None` searches [`loader::CUDART_NAMES`].
    pub libcudart: Option<PathBuf>,
}

impl TrtOptions {
    /// The defaults for `bundle`: its `encoder.plan`, libraries from the loader's path.
    /// `ECHOVIEW_LIBNVINFER` and `ECHOVIEW_LIBCUDART` name other libraries (for a TensorRT
    /// installed outside the loader's path, and for the fallback tests).
    pub fn for_bundle(bundle: &Bundle) -> TrtOptions {
        TrtOptions {
            plan: default_plan_path(&bundle.dir),
            libnvinfer: std::env::var_os("ECHOVIEW_LIBNVINFER").map(PathBuf::from),
            libcudart: std::env::var_os("ECHOVIEW_LIBCUDART").map(PathBuf::from),
        }
    }
}

/// The plan's default place: `encoder.plan` in the bundle folder.
pub fn default_plan_path(bundle_dir: &Path) -> PathBuf {
    bundle_dir.join("encoder.plan")
}

/// Whether this binary has the TensorRT backend compiled in.
pub const COMPILED: bool = cfg!(feature = "tensorrt");

/// The TensorRT version of the headers the shim was compiled against; `None` without the
/// feature or without headers.
pub fn built_version() -> Option<TrtVersion> {
    #[cfg(feature = "tensorrt")]
    {
        backend::built_version()
    }
    #[cfg(not(feature = "tensorrt"))]
    {
        None
    }
}

/// The majors of libnvinfer the shim can drive: the headers' major, or, in a build without
/// headers, the majors whose API the shim's source targets (so the version check still runs).
pub fn supported_majors() -> Vec<u32> {
    match built_version() {
        Some(v) => vec![v.major],
        None => vec![8, 10],
    }
}

/// Loads libnvinfer and checks its version against the shim.
pub fn load_nvinfer(options: &TrtOptions) -> Result<NvInfer, FallbackReason> {
    let nvinfer = NvInfer::load(options.libnvinfer.as_deref())?;
    let supported = supported_majors();
    if !supported.contains(&nvinfer.version.major) {
        return Err(FallbackReason::VersionMismatch {
            found: nvinfer.version,
            supported,
        });
    }
    Ok(nvinfer)
}

/// What a rebuild of `bundle`'s plan at `options.plan` needs to know: the encoder, its
/// hash and input shapes, and the TensorRT version and GPU present, which the sidecar
/// records. `Err` when libnvinfer or the GPU is missing (a plan cannot be built for them).
pub fn rebuild_request(
    bundle: &Bundle,
    options: &TrtOptions,
) -> Result<rebuild::RebuildRequest, FallbackReason> {
    let nvinfer = load_nvinfer(options)?;
    let gpu = Cuda::load(options.libcudart.as_deref())?.gpu()?;
    let needs = ModelNeeds::of(bundle);
    Ok(rebuild::RebuildRequest {
        onnx: bundle.encoder_path(),
        plan: options.plan.clone(),
        onnx_sha256: needs.onnx_sha256,
        tensorrt: nvinfer.version,
        gpu,
        input_shapes: needs.input_shapes,
    })
}

/// What `echoview doctor` shows about TensorRT: each layer's state, each a value or the
/// reason it is unusable. Nothing is deserialised or run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// Whether the backend is compiled in (feature `tensorrt`).
    pub compiled: bool,
    /// The TensorRT version of the headers the shim was built against.
    pub built_against: Option<TrtVersion>,
    /// libnvinfer: its name and version, or why it is unusable.
    pub library: Result<(String, TrtVersion), FallbackReason>,
    /// The GPU, or why there is none.
    pub gpu: Result<Gpu, FallbackReason>,
    /// The plan: its sidecar, or why it is unusable (missing, truncated, corrupt, stale for
    /// the model, or stale for this TensorRT and GPU).
    pub plan: Result<plan::Sidecar, FallbackReason>,
    /// What `--engine auto` would do first: `None` if nothing above stops TensorRT (the
    /// deserialisation and the start-up check against tract still follow).
    pub verdict: Option<FallbackReason>,
}

impl std::fmt::Display for ProbeReport {
    /// One line per layer, for `echoview doctor`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = match (self.compiled, self.built_against) {
            (false, _) => "no (built without --features tensorrt)".to_string(),
            (true, None) => "yes, without TensorRT headers".to_string(),
            (true, Some(v)) => format!("yes, against TensorRT {v}"),
        };
        writeln!(f, "TensorRT backend compiled in: {built}")?;
        match &self.library {
            Ok((name, version)) => writeln!(f, "libnvinfer: {name}, TensorRT {version}")?,
            Err(e) => writeln!(f, "libnvinfer: {e}")?,
        }
        match &self.gpu {
            Ok(gpu) => writeln!(
                f,
                "GPU: {}, compute capability {}",
                gpu.name, gpu.compute_capability
            )?,
            Err(e) => writeln!(f, "GPU: {e}")?,
        }
        match &self.plan {
            Ok(s) => writeln!(
                f,
                "plan: current (TensorRT {}, {} {}, {})",
                s.tensorrt_version, s.gpu_name, s.compute_capability, s.precision
            )?,
            Err(e) => writeln!(f, "plan: {e}")?,
        }
        match &self.verdict {
            None => write!(
                f,
                "engine auto: TensorRT (if the plan loads and agrees with tract)"
            ),
            Some(r) => write!(f, "engine auto: tract ({})", r.code()),
        }
    }
}

/// Probes every layer for `bundle` without opening an engine.
pub fn probe(bundle: &Bundle, options: &TrtOptions) -> ProbeReport {
    let library = load_nvinfer(options);
    let cuda = Cuda::load(options.libcudart.as_deref());
    let gpu = cuda.and_then(|c| c.gpu());
    let needs = ModelNeeds::of(bundle);
    let plan = plan::read_checked(&options.plan, &needs).and_then(|checked| {
        if let (Ok(lib), Ok(gpu)) = (&library, &gpu)
            && let Some((field, built, now)) =
                plan::device_mismatch(&checked.sidecar, lib.version, gpu)
        {
            return Err(FallbackReason::PlanStale {
                path: options.plan.display().to_string(),
                field,
                plan: built,
                current: now,
            });
        }
        Ok(checked.sidecar)
    });
    let library = library.map(|l| (l.library.name().to_string(), l.version));
    let verdict = if !COMPILED {
        Some(FallbackReason::NotCompiled)
    } else if let Err(e) = &plan {
        Some(e.clone())
    } else if let Err(e) = &library {
        Some(e.clone())
    } else if built_version().is_none() {
        Some(FallbackReason::NoHeaders)
    } else {
        gpu.as_ref().err().cloned()
    };
    ProbeReport {
        compiled: COMPILED,
        built_against: built_version(),
        library,
        gpu,
        plan,
        verdict,
    }
}

/// The FP16 tolerance of the start-up check: 2% of the reference features' largest
/// magnitude (FP16 keeps about 3 significant digits; an EfficientNet's error grows over its
/// depth to well under 1%), with a floor for all-small features.
pub const FP16_RELATIVE_TOLERANCE: f32 = 0.02;

/// Compares TensorRT's features with tract's on the same input: the largest absolute
/// difference, or [`FallbackReason::Disagrees`] beyond FP16 tolerance (NaN always fails).
pub fn check_agreement(tensorrt: &[f32], tract: &[f32]) -> Result<f32, FallbackReason> {
    let scale = tract.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let tolerance = FP16_RELATIVE_TOLERANCE * scale;
    let mut diff = 0.0f32;
    for (a, b) in tensorrt.iter().zip(tract) {
        let d = (a - b).abs();
        if d.is_nan() {
            diff = f32::NAN;
            break;
        }
        diff = diff.max(d);
    }
    if tensorrt.len() != tract.len() || diff.is_nan() || diff > tolerance {
        return Err(FallbackReason::Disagrees { diff, tolerance });
    }
    Ok(diff)
}

/// Opens the TensorRT engine for `bundle`, or says why not. The order is cheapest first:
/// compiled in; the plan file against its sidecar and the model; libnvinfer and its version;
/// then (in [`TensorRtEngine::open`]) the headers, a runtime, the CUDA runtime and GPU, the
/// plan against this TensorRT and GPU, deserialisation, and the start-up check against tract
/// on the bundle's reference frame.
pub fn open(
    bundle: &Bundle,
    options: &TrtOptions,
) -> Result<Box<dyn super::Engine>, FallbackReason> {
    if !COMPILED {
        return Err(FallbackReason::NotCompiled);
    }
    let checked = plan::read_checked(&options.plan, &ModelNeeds::of(bundle))?;
    let nvinfer = load_nvinfer(options)?;
    open_compiled(bundle, options, nvinfer, checked)
}

#[cfg(feature = "tensorrt")]
fn open_compiled(
    bundle: &Bundle,
    options: &TrtOptions,
    nvinfer: NvInfer,
    checked: plan::CheckedPlan,
) -> Result<Box<dyn super::Engine>, FallbackReason> {
    Ok(Box::new(TensorRtEngine::open(
        bundle, options, nvinfer, checked,
    )?))
}

#[cfg(not(feature = "tensorrt"))]
fn open_compiled(
    _bundle: &Bundle,
    _options: &TrtOptions,
    _nvinfer: NvInfer,
    _checked: plan::CheckedPlan,
) -> Result<Box<dyn super::Engine>, FallbackReason> {
    Err(FallbackReason::NotCompiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_uses_a_relative_fp16_tolerance() {
        let tract = [10.0, -5.0, 0.5];
        assert!(check_agreement(&[10.1, -5.05, 0.45], &tract).is_ok());
        let err = check_agreement(&[10.5, -5.0, 0.5], &tract).err();
        assert_eq!(err.map(|e| e.code()), Some("disagrees_with_tract"));
        assert!(check_agreement(&[f32::NAN, -5.0, 0.5], &tract).is_err());
        assert!(check_agreement(&[10.0, -5.0], &tract).is_err());
    }

    #[test]
    fn only_plan_problems_ask_for_a_rebuild() {
        assert!(FallbackReason::PlanMissing { path: "p".into() }.plan_rebuild_helps());
        assert!(!FallbackReason::NotCompiled.plan_rebuild_helps());
        assert!(
            !FallbackReason::NoGpu {
                error: String::new()
            }
            .plan_rebuild_helps()
        );
    }
}
