#!/bin/sh
# Runs every libFuzzer binary fuzz/build.sh built, one after the other, each for SECONDS
# (default 300), from a copy of its committed seeds (fuzz/corpus/<target>/, never written to)
# into OUT/<target>/ (default /tmp/echoview-fuzz), with crashes as OUT/<target>/crash-*.
# Logs are OUT/<target>.log; the last `stat::` lines and the final `#N DONE cov: ft: corp:` line
# give the figures of docs/reliability.md. Usage: fuzz/run.sh [SECONDS] [OUT] [TARGET...]
set -e
cd "$(dirname "$0")"
seconds=${1:-300}
out=${2:-/tmp/echoview-fuzz}
shift 2 2>/dev/null || shift $#
targets=${*:-"serial_ecg session_reader daemon_config bundle_manifest socket_client dicom_reader"}
for t in $targets; do
    mkdir -p "$out/$t/corpus"
    cp -n corpus/"$t"/* "$out/$t/corpus/"
    # -timeout: an input that takes 10 s is a hang worth reporting; -rss_limit_mb: a leak or
    # an allocation sized by the input.
    ../target/release/"$t" "$out/$t/corpus" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/$t/" \
        >"$out/$t.log" 2>&1 || echo "$t: exit $? (see $out/$t.log)"
    grep -E '^#[0-9]+ +(DONE|pulse)' "$out/$t.log" | tail -1
done
