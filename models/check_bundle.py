"""Verify a model bundle the way the daemon will use it, and time it.

Usage::

    python models/check_bundle.py models/demo [models/bench-b2-288 ...]

For each bundle: the manifest parses and has every key the Rust loader reads, the SHA-256
digests match, ``onnx.checker`` accepts both graphs, input/output names and shapes match
the manifest, onnxruntime reproduces ``reference.json`` within its tolerance, and one
encoder and one head pass are timed on a single thread (the daemon's budget is per core).
Exits non-zero on the first failed check, naming the bundle and the check.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from synthetic_images import normalise, reference_frame

#: Every key the manifest must have, per table ("" is the top level).
REQUIRED_KEYS = {
    "": ["format_version", "name", "version", "description", "labels"],
    "input": ["width", "height", "channels", "frames_per_beat", "mean", "std"],
    "encoder": ["file", "sha256", "input", "output", "feature_dim"],
    "head": ["file", "sha256", "input", "logits", "alpha"],
    "classify": ["reject_threshold"],
    "reference": ["file", "sha256"],
    "provenance": ["trained_on", "intended_use", "seed", "toolchain", "created"],
}


class CheckFailed(Exception):
    """A bundle does not meet its contract; the message names the bundle and the check."""


def require(condition: bool, bundle: Path, message: str) -> None:
    """Raise ``CheckFailed`` for ``bundle`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(f"{bundle}: {message}")


def shapes(values) -> dict[str, list]:
    """Name -> static shape of an onnxruntime session's inputs or outputs."""
    return {v.name: list(v.shape) for v in values}


def time_runs(run, repeats: int) -> dict[str, float]:
    """Median and minimum wall time of ``run()`` in milliseconds, after two warm-up runs."""
    run()
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples)}


def check(bundle: Path, repeats: int = 20) -> dict[str, object]:
    """Run every check on one bundle folder; returns the measured figures."""
    manifest = tomllib.loads((bundle / "manifest.toml").read_text())
    for table, keys in REQUIRED_KEYS.items():
        section = manifest if table == "" else manifest.get(table, {})
        for key in keys:
            require(key in section, bundle, f"manifest lacks {table or 'top-level'} key {key!r}")
    require(manifest["format_version"] == 1, bundle, "format_version is not 1")
    for table in ("encoder", "head", "reference"):
        path = bundle / manifest[table]["file"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        require(digest == manifest[table]["sha256"], bundle, f"{path.name} SHA-256 mismatch")

    inp, enc_m, head_m = manifest["input"], manifest["encoder"], manifest["head"]
    size_h, size_w, frames = inp["height"], inp["width"], inp["frames_per_beat"]
    dim, classes = enc_m["feature_dim"], len(manifest["labels"])
    for table in ("encoder", "head"):
        onnx.checker.check_model(str(bundle / manifest[table]["file"]), full_check=True)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    enc = ort.InferenceSession(str(bundle / enc_m["file"]), options, ["CPUExecutionProvider"])
    head = ort.InferenceSession(str(bundle / head_m["file"]), options, ["CPUExecutionProvider"])
    require(
        shapes(enc.get_inputs()) == {enc_m["input"]: [1, inp["channels"], size_h, size_w]}
        and shapes(enc.get_outputs()) == {enc_m["output"]: [1, dim]},
        bundle,
        f"encoder signature {shapes(enc.get_inputs())} -> {shapes(enc.get_outputs())}",
    )
    require(
        shapes(head.get_inputs()) == {head_m["input"]: [1, frames, dim]}
        and shapes(head.get_outputs()) == {head_m["logits"]: [1, classes], head_m["alpha"]: [1, 1]},
        bundle,
        f"head signature {shapes(head.get_inputs())} -> {shapes(head.get_outputs())}",
    )

    reference = json.loads((bundle / manifest["reference"]["file"]).read_text())
    pixels = np.stack([reference_frame(size_w, k) for k in range(frames)])
    images = normalise(pixels, inp["mean"][0], inp["std"][0])
    feats = np.concatenate([enc.run(None, {enc_m["input"]: im[None]})[0] for im in images])
    logits, alpha = head.run([head_m["logits"], head_m["alpha"]], {head_m["input"]: feats[None]})
    diffs = {
        "features": float(np.abs(feats[0] - reference["encoder_features_frame0"]).max()),
        "logits": float(np.abs(logits[0] - reference["head_logits"]).max()),
        "alpha": float(abs(alpha[0, 0] - reference["head_alpha"])),
    }
    worst = max(diffs.values())
    require(worst <= reference["tolerance"], bundle, f"reference mismatch {diffs}")

    image = images[:1]
    beat = feats[None]
    return {
        "bundle": str(bundle),
        "bytes": {p.name: p.stat().st_size for p in sorted(bundle.iterdir())},
        "total_bytes": sum(p.stat().st_size for p in bundle.iterdir()),
        "reference_max_abs_diff": diffs,
        "onnxruntime": ort.__version__,
        "encoder_1_thread": time_runs(lambda: enc.run(None, {enc_m["input"]: image}), repeats),
        "head_1_thread": time_runs(lambda: head.run(None, {head_m["input"]: beat}), repeats),
    }


def main(argv: list[str]) -> int:
    """Check every bundle named on the command line; exit status 1 on the first failure."""
    if not argv:
        print("usage: check_bundle.py BUNDLE_DIR [BUNDLE_DIR ...]", file=sys.stderr)
        return 2
    try:
        for bundle in argv:
            print(json.dumps(check(Path(bundle)), indent=1))
    except (CheckFailed, FileNotFoundError, KeyError, onnx.checker.ValidationError) as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
