"""Peers of `echoview bench`: the same encoder.onnx and head.onnx in onnxruntime, the same
architecture in PyTorch, and the research code's naive clip pipeline, timed in one run.

Run through ``run.sh`` (it builds the virtualenv). Writes one JSON object (``--out``) that
``echoview bench --peer-json`` reads, and prints a table. Every figure is a median and a p90
over ``--runs`` timed calls after ``--warmup`` untimed ones, on random inputs of the bundle's
fixed shapes (timing does not depend on the pixel values of a dense CNN).

Why each peer:
* onnxruntime, 1 and 2 intra-op threads: the budget says tract's encoder must be within 1.3x
  of it at the same thread count.
* PyTorch (eager, CPU): what the research code runs; the module is rebuilt from
  ``models/echoview_model.py`` with a fixed seed (same layers and FLOPs as the bundle; the
  weights differ, which does not change the cost).
* naive pipeline: the research code classifies every overlapping 16-frame clip (stride 1) and
  re-encodes each of its frames, so a heartbeat of ``fps * 60 / bpm`` frames costs
  ``16`` encoder passes per new frame; echoview encodes the ``T`` gated frames once per beat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]

#: Frames in one research-code clip.
CLIP_FRAMES = 16


def timed(fn, warmup: int, runs: int) -> dict:
    """Median and p90 of ``runs`` calls of ``fn`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
    return {"median_ms": statistics.median(samples), "p90_ms": p90, "runs": runs}


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session pinned to ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models/bench-b2-288")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument("--fps", type=float, default=30.0, help="video rate for the naive count")
    ap.add_argument("--bpm", type=float, default=75.0, help="heart rate for the naive count")
    ap.add_argument("--out", type=Path, default=Path("peers.json"))
    args = ap.parse_args()

    manifest = tomllib.loads((args.model / "manifest.toml").read_text())
    inp = manifest["input"]
    c, h, w, t = inp["channels"], inp["height"], inp["width"], inp["frames_per_beat"]
    d = manifest["encoder"]["feature_dim"]
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, c, h, w), dtype=np.float32)
    feats = rng.standard_normal((1, t, d), dtype=np.float32)
    enc_in, head_in = manifest["encoder"]["input"], manifest["head"]["input"]

    out: dict = {
        "model": {"name": manifest["name"], "version": manifest["version"], "dir": str(args.model)},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "onnxruntime_version": ort.__version__,
        "onnxruntime": {},
    }
    for n in args.threads:
        enc = ort_session(args.model / manifest["encoder"]["file"], n)
        head = ort_session(args.model / manifest["head"]["file"], n)
        out["onnxruntime"][str(n)] = {
            "encoder": timed(lambda: enc.run(None, {enc_in: image}), args.warmup, args.runs),
            "head": timed(lambda: head.run(None, {head_in: feats}), args.warmup, args.runs),
        }

    if not args.no_torch:
        import torch

        sys.path.insert(0, str(REPO / "models"))
        from echoview_model import BeatHead, GreyEfficientNetB2Encoder

        out["torch_version"] = torch.__version__
        out["torch"] = {}
        torch.manual_seed(0)
        encoder = GreyEfficientNetB2Encoder().eval()
        bhead = BeatHead(feature_dim=d, num_classes=len(manifest["labels"])).eval()
        timage, tfeats = torch.from_numpy(image), torch.from_numpy(feats)
        for n in args.threads:
            torch.set_num_threads(n)
            with torch.inference_mode():
                out["torch"][str(n)] = {
                    "encoder": timed(lambda: encoder(timage), args.warmup, args.runs),
                    "head": timed(lambda: bhead(tfeats), args.warmup, args.runs),
                }

    frames_per_beat = args.fps * 60.0 / args.bpm
    out["passes_per_beat"] = {
        "fps": args.fps,
        "bpm": args.bpm,
        "echoview": t,
        # Every new frame completes one more clip, whose 16 frames are all encoded again.
        "naive_clip16": frames_per_beat * CLIP_FRAMES,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")

    print(f"model {manifest['name']} {manifest['version']} ({h}x{w}, T={t})")
    print(f"{'runtime':<24}{'threads':>8}{'encoder ms':>12}{'p90':>9}{'head ms':>10}")
    for rt in ("onnxruntime", "torch"):
        for n, r in out.get(rt, {}).items():
            e, hd = r["encoder"], r["head"]
            print(f"{rt:<24}{n:>8}{e['median_ms']:>12.2f}{e['p90_ms']:>9.2f}{hd['median_ms']:>10.3f}")
    ppb = out["passes_per_beat"]
    print(
        f"encoder passes per beat at {args.fps:g} fps, {args.bpm:g} bpm: echoview {ppb['echoview']}, "
        f"naive 16-frame clips {ppb['naive_clip16']:.0f} ({ppb['naive_clip16'] / t:.0f}x)"
    )
    for n, r in out["onnxruntime"].items():
        naive_s = r["encoder"]["median_ms"] * ppb["naive_clip16"] / 1e3
        ours_s = r["encoder"]["median_ms"] * t / 1e3
        print(
            f"onnxruntime {n} thread(s): encoder work per beat {ours_s:.2f} s (echoview) "
            f"vs {naive_s:.2f} s (naive); a beat lasts {60 / args.bpm:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
