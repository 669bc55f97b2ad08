#!/bin/sh
# RUSTC_WRAPPER for fuzz/build.sh: adds libFuzzer's coverage instrumentation (the flags
# `cargo fuzz build -s none` sets in RUSTFLAGS) to echoview and the fuzz crate only. Every
# dependency (tract above all) is compiled exactly as `cargo build --release` compiles it, so the
# main build's artefacts in ../target are reused instead of instrumenting tract for half an hour.
# Coverage then covers our parsers, not tract or the libraries they call, which is what the
# targets aim at: the bytes from outside are parsed by our code.
rustc="$1"
shift
case " $* " in
*" --crate-name echoview "* | *" --crate-name echoview_fuzz "* | *fuzz_targets/*)
    exec "$rustc" "$@" \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
        --cfg fuzzing
    ;;
esac
exec "$rustc" "$@"
