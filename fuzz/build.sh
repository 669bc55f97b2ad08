#!/bin/sh
# Builds the libFuzzer binaries into ../target/release/ (serial_ecg, session_reader, ...).
#
# Only echoview and the fuzz crate are instrumented (fuzz/rustc-wrapper.sh adds the flags that
# `cargo fuzz build -s none` puts in RUSTFLAGS: libFuzzer coverage, compare tracing, cfg
# fuzzing); debug assertions and overflow checks are on for them via fuzz/Cargo.toml's profile.
# Everything else is built as `cargo build --release` builds it, in the same target folder, with
# the same lockfile versions (fuzz/Cargo.lock follows ../Cargo.lock), so after a main release
# build only echoview, libfuzzer-sys and the targets compile (minutes, not the half hour an
# instrumented tract takes). No sanitizer: echoview and its parsers are safe Rust. Stable
# toolchain; no cargo-fuzz needed. See docs/reliability.md.
set -e
cd "$(dirname "$0")"
RUSTC_WRAPPER="$PWD/rustc-wrapper.sh" CARGO_TARGET_DIR="$PWD/../target" \
    exec cargo build --release --bins "$@"
