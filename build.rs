//! Build script: facts about the build that `echoview --version` reports, and the TensorRT
//! shim when the `tensorrt` feature is on.
//!
//! Each concern is one small function called from `main`. The default build compiles
//! nothing here: it must need no C++ toolchain features, no CUDA and no TensorRT.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    git_revision();
    build_target();
    build_features();
    tensorrt_shim();
}

/// `ECHOVIEW_GIT_REV`: the commit this binary was built from, so a field report names the
/// exact source; `unknown` when building outside a git checkout (a source tarball) or
/// without git installed.
fn git_revision() {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ECHOVIEW_GIT_REV={rev}");
    // Rebuild when the checked-out commit moves: HEAD itself, the branch it points to, and
    // packed refs (where `git gc` moves branch heads).
    let git = Path::new(".git");
    if git.join("HEAD").exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
        {
            println!("cargo:rerun-if-changed=.git/{reference}");
        }
        println!("cargo:rerun-if-changed=.git/packed-refs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// `ECHOVIEW_TARGET`: the target triple, since an x86_64 package on a Jetson (or the
/// reverse) is a common field mistake.
fn build_target() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=ECHOVIEW_TARGET={target}");
}

/// `ECHOVIEW_FEATURE_TENSORRT` and `ECHOVIEW_FEATURE_V4L`: `yes` or `no` for the two cargo
/// features that decide what a cart can do (GPU inference, live capture). Read from Cargo's
/// environment rather than `cfg!`, so a feature not yet declared in Cargo.toml reads `no`
/// instead of tripping the unexpected-cfg lint.
fn build_features() {
    for (feature, var) in [
        ("TENSORRT", "ECHOVIEW_FEATURE_TENSORRT"),
        ("V4L", "ECHOVIEW_FEATURE_V4L"),
    ] {
        let on = std::env::var_os(format!("CARGO_FEATURE_{feature}")).is_some();
        println!("cargo:rustc-env={var}={}", if on { "yes" } else { "no" });
    }
}

/// The shim's sources, relative to the crate root.
const SHIM_SOURCE: &str = "src/engine/tensorrt/shim.cpp";
const SHIM_HEADER: &str = "src/engine/tensorrt/shim.h";

/// Compiles `shim.cpp` under the `tensorrt` feature. With TensorRT (and CUDA) headers found,
/// the full backend is built and `echoview_trt_headers` is set for the Rust side; without
/// them the shim still builds its version layer, and the backend reports "built without
/// TensorRT headers" at run time instead of failing the build.
fn tensorrt_shim() {
    println!("cargo::rustc-check-cfg=cfg(echoview_trt_headers)");
    println!("cargo::rerun-if-changed={SHIM_SOURCE}");
    println!("cargo::rerun-if-changed={SHIM_HEADER}");
    println!("cargo::rerun-if-env-changed=TENSORRT_INCLUDE_DIR");
    println!("cargo::rerun-if-env-changed=CUDA_INCLUDE_DIR");
    if std::env::var_os("CARGO_FEATURE_TENSORRT").is_none() {
        return;
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(SHIM_SOURCE)
        .flag_if_supported("-std=c++17")
        .flag_if_supported("-fno-exceptions")
        .warnings(true);
    match (find_tensorrt_include(), find_cuda_include()) {
        (Some(trt), Some(cuda)) => {
            build
                .include(&trt)
                .include(&cuda)
                .define("ECHOVIEW_HAVE_NVINFER", "1");
            println!("cargo::rustc-cfg=echoview_trt_headers");
            println!(
                "cargo::warning=TensorRT shim: headers from {} and {}",
                trt.display(),
                cuda.display()
            );
        }
        (trt, cuda) => {
            println!(
                "cargo::warning=TensorRT shim built without TensorRT headers (NvInferRuntime.h: \
                 {}, cuda_runtime_api.h: {}); set TENSORRT_INCLUDE_DIR and CUDA_INCLUDE_DIR to \
                 build the full backend",
                found(trt.as_deref()),
                found(cuda.as_deref())
            );
        }
    }
    build.compile("echoview_trt_shim");
}

/// Where `NvInferRuntime.h` is: `$TENSORRT_INCLUDE_DIR`, else the Debian/JetPack multiarch
/// folder of the target.
fn find_tensorrt_include() -> Option<PathBuf> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::var_os("TENSORRT_INCLUDE_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(format!("/usr/include/{arch}-linux-gnu").into());
    candidates.push("/usr/include".into());
    first_with(&candidates, "NvInferRuntime.h")
}

/// Where `cuda_runtime_api.h` is (TensorRT's headers include it): `$CUDA_INCLUDE_DIR`, else
/// the CUDA toolkit's usual places.
fn find_cuda_include() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("CUDA_INCLUDE_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push("/usr/local/cuda/include".into());
    candidates.push("/usr/include".into());
    first_with(&candidates, "cuda_runtime_api.h")
}

/// The first folder of `dirs` holding `file`.
fn first_with(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().find(|d| d.join(file).is_file()).cloned()
}

/// A folder for a message, or "not found".
fn found(dir: Option<&Path>) -> String {
    dir.map_or_else(|| "not found".to_string(), |d| d.display().to_string())
}
