#!/usr/bin/env bash
# Builds echoview's TensorRT encoder plan on the Jetson and writes its sidecar.
#
# The daemon runs this in the background when the plan is missing or stale (and keeps serving
# on tract meanwhile); a field engineer can run it by hand with the values `echoview doctor`
# prints. The plan is only valid for this ONNX file, this TensorRT version and this GPU, which
# the sidecar (PLAN.json) records with the plan's own size and sha256; echoview refuses a plan
# whose sidecar does not match (see src/engine/tensorrt/plan.rs for the format).
#
# Usage:
#   build-engine.sh --onnx ENCODER.onnx --plan OUT.plan --onnx-sha256 HEX \
#       --tensorrt-version 10.3.0 --gpu-name Orin --compute-capability 8.7 \
#       --shapes input:1x1x288x288[,name:dims...]
#
# Environment: TRTEXEC names the trtexec binary (default: trtexec on PATH, else JetPack's
# /usr/src/tensorrt/bin/trtexec). Extra trtexec flags may follow `--`.
set -euo pipefail

usage() { sed -n '2,/^set -e/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -e/d' >&2; exit 2; }
die() { echo "build-engine.sh: $*" >&2; exit 1; }

onnx="" plan="" onnx_sha="" trt_version="" gpu_name="" cc="" shapes=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --onnx) onnx="$2"; shift 2 ;;
        --plan) plan="$2"; shift 2 ;;
        --onnx-sha256) onnx_sha="$2"; shift 2 ;;
        --tensorrt-version) trt_version="$2"; shift 2 ;;
        --gpu-name) gpu_name="$2"; shift 2 ;;
        --compute-capability) cc="$2"; shift 2 ;;
        --shapes) shapes="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) usage ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
for v in onnx plan onnx_sha trt_version gpu_name cc shapes; do
    [ -n "${!v}" ] || die "--${v//_/-} is required (see --help)"
done
[ -f "$onnx" ] || die "$onnx does not exist"
actual_sha=$(sha256sum "$onnx" | cut -d' ' -f1)
[ "$actual_sha" = "$onnx_sha" ] || die "$onnx has sha256 $actual_sha, not $onnx_sha: wrong file"
# The sidecar is written as JSON by hand; refuse what would need escaping.
for v in "$gpu_name" "$trt_version" "$cc" "$shapes"; do
    case "$v" in *'"'*|*'\'*) die "value $v contains a quote or backslash" ;; esac
done

trtexec="${TRTEXEC:-}"
if [ -z "$trtexec" ]; then
    if command -v trtexec >/dev/null 2>&1; then
        trtexec=trtexec
    elif [ -x /usr/src/tensorrt/bin/trtexec ]; then
        trtexec=/usr/src/tensorrt/bin/trtexec
    else
        die "trtexec not found: install TensorRT's samples (JetPack: nvidia-tensorrt) or set TRTEXEC"
    fi
fi

# Build beside the target and move into place last, so a crash leaves the old files or a
# mismatching pair (refused by its hash), never a trusted half-written plan.
tmp_plan="$plan.partial"
tmp_side="$plan.json.partial"
trap 'rm -f "$tmp_plan" "$tmp_side"' EXIT
"$trtexec" --onnx="$onnx" --fp16 --saveEngine="$tmp_plan" --skipInference "${extra[@]}" >&2
[ -s "$tmp_plan" ] || die "$trtexec wrote no plan"

plan_bytes=$(stat -c %s "$tmp_plan")
plan_sha=$(sha256sum "$tmp_plan" | cut -d' ' -f1)
json_shapes=""
IFS=',' read -ra pairs <<<"$shapes"
for pair in "${pairs[@]}"; do
    name="${pair%%:*}"
    dims="${pair#*:}"
    [ -n "$name" ] && [ "$name" != "$pair" ] || die "--shapes entry $pair is not name:dims"
    [ -n "$json_shapes" ] && json_shapes+=", "
    json_shapes+="\"$name\": [${dims//x/, }]"
done
cat >"$tmp_side" <<JSON
{
  "format": 1,
  "onnx_sha256": "$onnx_sha",
  "tensorrt_version": "$trt_version",
  "gpu_name": "$gpu_name",
  "compute_capability": "$cc",
  "precision": "fp16",
  "input_shapes": {$json_shapes},
  "plan_bytes": $plan_bytes,
  "plan_sha256": "$plan_sha"
}
JSON
mv -f "$tmp_plan" "$plan"
mv -f "$tmp_side" "$plan.json"
trap - EXIT
echo "build-engine.sh: wrote $plan ($plan_bytes bytes) and $plan.json" >&2
