//! Loading libnvinfer and the CUDA runtime at run time with `dlopen`.
//!
//! Nothing links against TensorRT or CUDA, so the same binary starts on a laptop, in CI and on
//! the Jetson; what is missing becomes a [`FallbackReason`] instead of a loader error before
//! `main`. This layer is compiled in every build (it needs only libc), which is what lets
//! `echoview doctor` describe a board's TensorRT even from a build without the backend.

use std::ffi::{CStr, CString, c_int, c_void};
use std::fmt;
use std::path::{Path, PathBuf};

use super::FallbackReason;

/// libnvinfer names tried in order when no path is configured: the majors the shim supports,
/// then the unversioned development link.
pub const NVINFER_NAMES: &[&str] = &["libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"];

/// CUDA runtime names tried in order when no path is configured (JetPack 5 ships CUDA 11.4,
/// JetPack 6 CUDA 12, JetPack 7 CUDA 13), newest first.
pub const CUDART_NAMES: &[&str] = &[
    "libcudart.so.13",
    "libcudart.so.12",
    "libcudart.so.11.0",
    "libcudart.so",
];

/// A `dlopen`ed shared library, closed on drop.
pub struct Library {
    /// The handle from `dlopen`; never null.
    handle: *mut c_void,
    /// What was opened, for messages.
    name: String,
}

// SAFETY: a dlopen handle may be used and closed from any thread.
unsafe impl Send for Library {}
// SAFETY: dlsym is thread-safe; the handle is never mutated.
unsafe impl Sync for Library {}

impl Library {
    /// Opens the first of `candidates` that loads; on failure, the names tried and the last
    /// `dlerror` (so a field engineer sees why, e.g. a missing dependency of the library).
    pub fn open_first(candidates: &[PathBuf]) -> Result<Library, (Vec<String>, String)> {
        let mut tried = Vec::new();
        let mut last = String::from("no candidates");
        for candidate in candidates {
            let shown = candidate.display().to_string();
            match Library::open(candidate) {
                Ok(lib) => return Ok(lib),
                Err(e) => last = e,
            }
            tried.push(shown);
        }
        Err((tried, last))
    }

    /// Opens one library by path or soname.
    pub fn open(path: &Path) -> Result<Library, String> {
        let name = path.display().to_string();
        let c_name = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{name}: the name contains a NUL byte"))?;
        // SAFETY: c_name is a valid C string; RTLD_LOCAL keeps its symbols out of the global
        // namespace so a fake or second copy cannot interpose on anything else.
        let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(last_dl_error());
        }
        Ok(Library { handle, name })
    }

    /// What was opened.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of `symbol`, or `None` if the library does not export it.
    pub fn symbol(&self, symbol: &CStr) -> Option<*mut c_void> {
        // SAFETY: handle is a live dlopen handle and symbol a valid C string.
        let ptr = unsafe { libc::dlsym(self.handle, symbol.as_ptr()) };
        (!ptr.is_null()).then_some(ptr)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: handle came from dlopen and is closed once. Nothing resolved from it is
        // used after this: the owners keep the Library alive as long as its functions.
        unsafe {
            libc::dlclose(self.handle);
        }
    }
}

/// `dlerror()`'s message, or a generic one.
fn last_dl_error() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by libc.
    let err = unsafe { libc::dlerror() };
    if err.is_null() {
        "dlopen failed".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
        unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned()
    }
}

/// A TensorRT version as `getInferLibVersion` and `NV_TENSORRT_VERSION` encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrtVersion {
    /// Major version: plans and the shim's ABI only work within one major.
    pub major: u32,
    /// Minor version: plans are only guaranteed to load on the exact version that built them.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl TrtVersion {
    /// Decodes TensorRT's integer: `major*1000 + minor*100 + patch` up to 8.x, and
    /// `major*10000 + minor*100 + patch` from 10 on.
    pub fn decode(code: i32) -> Option<TrtVersion> {
        let code = u32::try_from(code).ok().filter(|c| *c > 0)?;
        Some(if code >= 10_000 {
            TrtVersion {
                major: code / 10_000,
                minor: (code / 100) % 100,
                patch: code % 100,
            }
        } else {
            TrtVersion {
                major: code / 1000,
                minor: (code / 100) % 10,
                patch: code % 100,
            }
        })
    }
}

impl fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `getInferLibVersion`'s signature.
type GetVersionFn = unsafe extern "C" fn() -> i32;

/// `createInferRuntime_INTERNAL`'s signature (the logger is a C++ object made by the shim).
pub type CreateRuntimeFn = unsafe extern "C" fn(*mut c_void, i32) -> *mut c_void;

/// libnvinfer, loaded, with its two C entry points.
pub struct NvInfer {
    /// Keeps the functions below valid.
    pub library: Library,
    /// The library's own version.
    pub version: TrtVersion,
    /// Makes an `IRuntime`; everything else is reached through it.
    pub create_runtime: CreateRuntimeFn,
}

impl NvInfer {
    /// Loads libnvinfer from `path`, else from [`NVINFER_NAMES`], and reads its version.
    pub fn load(path: Option<&Path>) -> Result<NvInfer, FallbackReason> {
        let candidates = candidates(path, NVINFER_NAMES);
        let library = Library::open_first(&candidates)
            .map_err(|(tried, error)| FallbackReason::LibraryMissing { tried, error })?;
        let missing = |symbol: &str| FallbackReason::SymbolMissing {
            library: library.name().to_string(),
            symbol: symbol.to_string(),
        };
        let get_version = library
            .symbol(c"getInferLibVersion")
            .ok_or_else(|| missing("getInferLibVersion"))?;
        let create = library
            .symbol(c"createInferRuntime_INTERNAL")
            .ok_or_else(|| missing("createInferRuntime_INTERNAL"))?;
        // SAFETY: both symbols are TensorRT's documented extern "C" functions with these
        // signatures (NvInferRuntime.h); the library stays loaded inside NvInfer.
        let (get_version, create_runtime) = unsafe {
            (
                std::mem::transmute::<*mut c_void, GetVersionFn>(get_version),
                std::mem::transmute::<*mut c_void, CreateRuntimeFn>(create),
            )
        };
        // SAFETY: takes no arguments and only returns an integer.
        let code = unsafe { get_version() };
        let version = TrtVersion::decode(code).ok_or_else(|| FallbackReason::BadVersion {
            library: library.name().to_string(),
            code,
        })?;
        Ok(NvInfer {
            library,
            version,
            create_runtime,
        })
    }
}

/// `cudaMalloc`.
pub type MallocFn = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
/// `cudaFree`, `cudaStreamSynchronize` and `cudaStreamDestroy`: one pointer in, a status out.
pub type PtrFn = unsafe extern "C" fn(*mut c_void) -> c_int;
/// `cudaMemcpyAsync`.
pub type MemcpyAsyncFn =
    unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, *mut c_void) -> c_int;
/// `cudaStreamCreate`.
pub type StreamCreateFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
/// `cudaGetDeviceCount`.
pub type DeviceCountFn = unsafe extern "C" fn(*mut c_int) -> c_int;
/// `cudaGetDeviceProperties`.
pub type DevicePropertiesFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
/// `cudaDeviceGetAttribute`.
pub type DeviceAttributeFn = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;

/// The CUDA runtime functions the shim and the probe need, resolved by `dlsym`.
pub struct Cuda {
    /// Keeps the functions below valid.
    pub library: Library,
    /// The table handed to the shim.
    pub api: CudaApi,
    /// `cudaGetDeviceCount`.
    device_count: DeviceCountFn,
    /// `cudaGetDeviceProperties` (its `_v2` under CUDA 12).
    device_properties: DevicePropertiesFn,
    /// `cudaDeviceGetAttribute`.
    device_attribute: DeviceAttributeFn,
}

/// The shim's `ev_cuda_api`: the CUDA calls made while running a plan.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CudaApi {
    /// `cudaMalloc`: the device buffers for one frame and one feature vector.
    pub malloc: MallocFn,
    /// `cudaFree`: releases them.
    pub free: PtrFn,
    /// `cudaMemcpyAsync`: frame to the GPU, features back.
    pub memcpy_async: MemcpyAsyncFn,
    /// `cudaStreamCreate`: the stream `enqueueV3` runs on.
    pub stream_create: StreamCreateFn,
    /// `cudaStreamSynchronize`: waits for a frame's result.
    pub stream_synchronize: PtrFn,
    /// `cudaStreamDestroy`: releases the stream.
    pub stream_destroy: PtrFn,
}

/// The GPU the plan runs on: part of a plan's identity (plans are built per GPU model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// `cudaDeviceProp::name`, e.g. `Orin`.
    pub name: String,
    /// Compute capability, e.g. `8.7`.
    pub compute_capability: String,
}

/// `cudaDevAttrComputeCapabilityMajor` and `...Minor` (stable CUDA ABI values).
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

impl Cuda {
    /// Loads the CUDA runtime from `path`, else from [`CUDART_NAMES`].
    pub fn load(path: Option<&Path>) -> Result<Cuda, FallbackReason> {
        let candidates = candidates(path, CUDART_NAMES);
        let library = Library::open_first(&candidates)
            .map_err(|(tried, error)| FallbackReason::CudaMissing { tried, error })?;
        let get = |symbol: &CStr| {
            library
                .symbol(symbol)
                .ok_or_else(|| FallbackReason::SymbolMissing {
                    library: library.name().to_string(),
                    symbol: symbol.to_string_lossy().into_owned(),
                })
        };
        let properties = library
            .symbol(c"cudaGetDeviceProperties_v2")
            .map_or_else(|| get(c"cudaGetDeviceProperties"), Ok)?;
        let (malloc, free, memcpy_async) = (
            get(c"cudaMalloc")?,
            get(c"cudaFree")?,
            get(c"cudaMemcpyAsync")?,
        );
        let (stream_create, stream_synchronize, stream_destroy) = (
            get(c"cudaStreamCreate")?,
            get(c"cudaStreamSynchronize")?,
            get(c"cudaStreamDestroy")?,
        );
        let (device_count, device_attribute) =
            (get(c"cudaGetDeviceCount")?, get(c"cudaDeviceGetAttribute")?);
        // SAFETY: each symbol is the CUDA runtime's C function with the signature of the
        // field it is stored in (cuda_runtime_api.h); the library lives inside Cuda.
        unsafe {
            use std::mem::transmute;
            let api = CudaApi {
                malloc: transmute::<*mut c_void, MallocFn>(malloc),
                free: transmute::<*mut c_void, PtrFn>(free),
                memcpy_async: transmute::<*mut c_void, MemcpyAsyncFn>(memcpy_async),
                stream_create: transmute::<*mut c_void, StreamCreateFn>(stream_create),
                stream_synchronize: transmute::<*mut c_void, PtrFn>(stream_synchronize),
                stream_destroy: transmute::<*mut c_void, PtrFn>(stream_destroy),
            };
            let device_count = transmute::<*mut c_void, DeviceCountFn>(device_count);
            let device_attribute = transmute::<*mut c_void, DeviceAttributeFn>(device_attribute);
            let device_properties = transmute::<*mut c_void, DevicePropertiesFn>(properties);
            Ok(Cuda {
                library,
                api,
                device_count,
                device_properties,
                device_attribute,
            })
        }
    }

    /// Device 0, the one TensorRT uses: its name and compute capability.
    pub fn gpu(&self) -> Result<Gpu, FallbackReason> {
        let mut count: c_int = 0;
        // SAFETY: writes one int.
        let rc = unsafe { (self.device_count)(&mut count) };
        if rc != 0 || count < 1 {
            return Err(FallbackReason::NoGpu {
                error: format!("cudaGetDeviceCount returned error {rc} with {count} devices"),
            });
        }
        // cudaDeviceProp starts with `char name[256]` in every CUDA version; its total size
        // grows between versions, so the buffer is far larger than any of them.
        let mut props = vec![0u8; 16 * 1024];
        // SAFETY: the buffer is larger than cudaDeviceProp of any CUDA release.
        let rc = unsafe { (self.device_properties)(props.as_mut_ptr().cast(), 0) };
        if rc != 0 {
            return Err(FallbackReason::NoGpu {
                error: format!("cudaGetDeviceProperties returned error {rc}"),
            });
        }
        let name_bytes = &props[..256];
        let end = name_bytes.iter().position(|b| *b == 0).unwrap_or(256);
        let name = String::from_utf8_lossy(&name_bytes[..end])
            .trim()
            .to_string();
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: each call writes one int.
        let rc = unsafe {
            (self.device_attribute)(&mut major, ATTR_CC_MAJOR, 0)
                | (self.device_attribute)(&mut minor, ATTR_CC_MINOR, 0)
        };
        if rc != 0 {
            return Err(FallbackReason::NoGpu {
                error: format!("cudaDeviceGetAttribute returned error {rc}"),
            });
        }
        Ok(Gpu {
            name,
            compute_capability: format!("{major}.{minor}"),
        })
    }
}

/// `path` alone when given, else `names` for the dynamic loader's search path.
fn candidates(path: Option<&Path>, names: &[&str]) -> Vec<PathBuf> {
    match path {
        Some(p) => vec![p.to_path_buf()],
        None => names.iter().map(PathBuf::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_version_encodings() {
        assert_eq!(
            TrtVersion::decode(8601),
            Some(TrtVersion {
                major: 8,
                minor: 6,
                patch: 1
            })
        );
        assert_eq!(
            TrtVersion::decode(100_300).map(|v| v.to_string()),
            Some("10.3.0".into())
        );
        assert_eq!(TrtVersion::decode(8502).map(|v| v.major), Some(8));
        assert_eq!(TrtVersion::decode(0), None);
        assert_eq!(TrtVersion::decode(-5), None);
    }

    #[test]
    fn a_missing_library_names_what_was_tried() {
        let reason = NvInfer::load(Some(Path::new("/nonexistent/libnvinfer.so.10")))
            .err()
            .map(|r| r.code());
        assert_eq!(reason, Some("library_missing"));
    }
}
