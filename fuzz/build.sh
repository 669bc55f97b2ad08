#!/bin/sh
# Builds the fuzz targets as `cargo fuzz build -s none` would (libFuzzer coverage, debug
# assertions, overflow checks, no sanitizer: echoview and its parsers are safe Rust), without
# needing cargo-fuzz or nightly. See docs/reliability.md.
set -e
cd "$(dirname "$0")"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cdebug-assertions -Coverflow-checks"
# An explicit target keeps RUSTFLAGS off build scripts and proc macros, as cargo fuzz does.
exec cargo build --release --target x86_64-unknown-linux-gnu "$@"
