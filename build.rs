//! Build script: facts about the build that `echoview --version` reports.
//!
//! Each concern is one small function called from `main`, so other build steps (such as a
//! TensorRT shim) can be added beside them without touching these.

use std::path::Path;
use std::process::Command;

fn main() {
    git_revision();
    build_target();
    build_features();
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
