//! [`TensorRtEngine`]: the encoder on a TensorRT plan through the C++ shim, the head on tract.

use std::ffi::{CString, c_char, c_int, c_void};

use super::loader::{CreateRuntimeFn, Cuda, CudaApi, NvInfer, TrtVersion};
use super::plan::{self, CheckedPlan};
use super::{FallbackReason, TrtOptions, check_agreement};
use crate::bundle::Bundle;
use crate::engine::{Engine, EngineError, HeadOutput, TractEngine};
use crate::selftest::reference_frame;

/// The shim's opaque encoder.
#[repr(C)]
struct ShimEncoder {
    _private: [u8; 0],
}

/// The shim's opaque runtime.
#[repr(C)]
struct ShimRuntime {
    _private: [u8; 0],
}

// Status codes of shim.h.
const EV_OK: c_int = 0;
const EV_NO_HEADERS: c_int = 1;
const EV_RUNTIME_NULL: c_int = 2;
const EV_DESERIALIZE: c_int = 3;

unsafe extern "C" {
    fn ev_trt_built_version() -> i32;
    fn ev_trt_runtime_create(
        create_runtime: CreateRuntimeFn,
        out: *mut *mut ShimRuntime,
        message: *mut c_char,
        message_len: usize,
    ) -> c_int;
    fn ev_trt_runtime_destroy(runtime: *mut ShimRuntime);
    fn ev_trt_open(
        runtime: *mut ShimRuntime,
        cuda: *const CudaApi,
        plan: *const c_void,
        plan_bytes: usize,
        input_name: *const c_char,
        input_elems: usize,
        output_name: *const c_char,
        output_elems: usize,
        out: *mut *mut ShimEncoder,
        message: *mut c_char,
        message_len: usize,
    ) -> c_int;
    fn ev_trt_infer(
        encoder: *mut ShimEncoder,
        input: *const f32,
        output: *mut f32,
        message: *mut c_char,
        message_len: usize,
    ) -> c_int;
    fn ev_trt_close(encoder: *mut ShimEncoder);
}

/// The headers' version, from the shim.
pub(super) fn built_version() -> Option<TrtVersion> {
    // SAFETY: returns a constant.
    TrtVersion::decode(unsafe { ev_trt_built_version() })
}

/// Room for the shim's messages.
const MESSAGE_LEN: usize = 512;

/// The text the shim wrote into `buf`.
fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A TensorRT runtime from the shim, destroyed on drop.
struct Runtime(*mut ShimRuntime);

impl Runtime {
    /// Makes a runtime through libnvinfer's factory.
    fn create(nvinfer: &NvInfer) -> Result<Runtime, FallbackReason> {
        let mut runtime = std::ptr::null_mut();
        let mut buf = [0u8; MESSAGE_LEN];
        // SAFETY: create_runtime is libnvinfer's factory (kept loaded by the caller, which
        // drops this runtime first); the out pointer and buffer are valid.
        let status = unsafe {
            ev_trt_runtime_create(
                nvinfer.create_runtime,
                &mut runtime,
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match status {
            EV_OK if !runtime.is_null() => Ok(Runtime(runtime)),
            EV_NO_HEADERS => Err(FallbackReason::NoHeaders),
            _ => Err(FallbackReason::RuntimeNull {
                message: message(&buf),
            }),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: made by ev_trt_runtime_create, destroyed once, after the encoder made from
        // it (TensorRtEngine closes its encoder in its own Drop, before its fields drop).
        unsafe { ev_trt_runtime_destroy(self.0) };
    }
}

/// The encoder on TensorRT, the head on tract.
pub struct TensorRtEngine {
    /// The shim's encoder; never null, closed on drop before the fields below.
    encoder: *mut ShimEncoder,
    /// The runtime the encoder was deserialised on.
    _runtime: Runtime,
    /// Elements of one input frame.
    image_len: usize,
    /// Elements of one feature vector.
    feature_dim: usize,
    /// The plan's path, for error messages.
    plan_file: String,
    /// The head (and nothing else) runs here.
    tract: TractEngine,
    /// Keeps the CUDA functions the encoder calls loaded.
    _cuda: Cuda,
    /// Keeps TensorRT loaded.
    _nvinfer: NvInfer,
}

// SAFETY: the shim's encoder is used only through &mut self, so from one thread at a time,
// which is all TensorRT's execution context and CUDA stream require.
unsafe impl Send for TensorRtEngine {}

impl TensorRtEngine {
    /// Makes a runtime, finds the GPU, checks the plan was built for this TensorRT and GPU,
    /// deserialises it, binds the manifest's tensors and checks the result against tract on
    /// the bundle's reference frame.
    pub fn open(
        bundle: &Bundle,
        options: &TrtOptions,
        nvinfer: NvInfer,
        checked: CheckedPlan,
    ) -> Result<TensorRtEngine, FallbackReason> {
        let m = &bundle.manifest;
        let plan_file = options.plan.display().to_string();
        let runtime = Runtime::create(&nvinfer)?;
        let cuda = Cuda::load(options.libcudart.as_deref())?;
        let gpu = cuda.gpu()?;
        if let Some((field, built, now)) =
            plan::device_mismatch(&checked.sidecar, nvinfer.version, &gpu)
        {
            return Err(FallbackReason::PlanStale {
                path: plan_file,
                field,
                plan: built,
                current: now,
            });
        }
        let plan = &checked.bytes;
        let unusable = |message: String| FallbackReason::PlanUnusable { message };
        let tract = TractEngine::load(bundle).map_err(|e| unusable(e.to_string()))?;
        let input = CString::new(m.encoder.input.as_str())
            .map_err(|_| unusable("the encoder input name contains a NUL byte".into()))?;
        let output = CString::new(m.encoder.output.as_str())
            .map_err(|_| unusable("the encoder output name contains a NUL byte".into()))?;
        let image_len = (m.input.channels * m.input.height * m.input.width) as usize;
        let feature_dim = bundle.feature_dim();
        let mut encoder = std::ptr::null_mut();
        let mut buf = [0u8; MESSAGE_LEN];
        // SAFETY: every pointer is valid for the call; the shim copies the CUDA table and
        // the plan (TensorRT deserialises from the buffer and keeps no reference to it).
        let status = unsafe {
            ev_trt_open(
                runtime.0,
                &cuda.api,
                plan.as_ptr().cast(),
                plan.len(),
                input.as_ptr(),
                image_len,
                output.as_ptr(),
                feature_dim,
                &mut encoder,
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let text = message(&buf);
        match status {
            EV_OK if !encoder.is_null() => {}
            EV_NO_HEADERS => return Err(FallbackReason::NoHeaders),
            EV_RUNTIME_NULL => return Err(FallbackReason::RuntimeNull { message: text }),
            EV_DESERIALIZE => {
                return Err(FallbackReason::Deserialize {
                    path: plan_file,
                    message: text,
                });
            }
            _ => return Err(unusable(text)),
        }
        let mut engine = TensorRtEngine {
            encoder,
            _runtime: runtime,
            image_len,
            feature_dim,
            plan_file,
            tract,
            _cuda: cuda,
            _nvinfer: nvinfer,
        };
        engine.startup_check(bundle)?;
        Ok(engine)
    }

    /// Encodes the bundle's reference frame 0 on both engines and compares.
    fn startup_check(&mut self, bundle: &Bundle) -> Result<f32, FallbackReason> {
        let input = &bundle.manifest.input;
        let image = reference_frame(input.width, input.height, 0, input.mean[0], input.std[0]);
        let mut on_trt = vec![0.0; self.feature_dim];
        let mut on_tract = vec![0.0; self.feature_dim];
        let unusable = |e: EngineError| FallbackReason::PlanUnusable {
            message: e.to_string(),
        };
        self.encode(&image, &mut on_trt).map_err(unusable)?;
        self.tract.encode(&image, &mut on_tract).map_err(unusable)?;
        check_agreement(&on_trt, &on_tract)
    }
}

impl Drop for TensorRtEngine {
    fn drop(&mut self) {
        // SAFETY: encoder came from ev_trt_open and is closed once, while the libraries
        // (dropped after this) are still loaded.
        unsafe { ev_trt_close(self.encoder) };
    }
}

impl Engine for TensorRtEngine {
    fn name(&self) -> &'static str {
        "tensorrt"
    }

    fn encode(&mut self, image: &[f32], features: &mut [f32]) -> Result<(), EngineError> {
        if image.len() != self.image_len {
            return Err(EngineError::BadLength {
                what: "encoder input",
                expected: self.image_len,
                actual: image.len(),
            });
        }
        if features.len() != self.feature_dim {
            return Err(EngineError::BadLength {
                what: "encoder output",
                expected: self.feature_dim,
                actual: features.len(),
            });
        }
        let mut buf = [0u8; MESSAGE_LEN];
        // SAFETY: the lengths were checked against the sizes the shim bound at open.
        let status = unsafe {
            ev_trt_infer(
                self.encoder,
                image.as_ptr(),
                features.as_mut_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if status != EV_OK {
            return Err(EngineError::Run {
                file: self.plan_file.clone(),
                message: message(&buf),
            });
        }
        Ok(())
    }

    fn head(&mut self, features: &[f32]) -> Result<HeadOutput, EngineError> {
        self.tract.head(features)
    }
}
