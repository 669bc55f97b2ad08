"""Build an echoview model bundle: encoder.onnx, head.onnx, reference.json, manifest.toml.

Usage (see README.md for the exact commands of the committed bundles)::

    python models/export.py --size 128 --seed 0 --out models/demo --name echoview-demo \\
        --version 0.1.0 --description "..." --intended-use "demo and tests only; ..."

Steps, each of which fails loudly rather than writing a doubtful bundle:

1. Build ``EchoViewNet`` with a fixed seed; load ``--imagenet-weights`` and/or
   ``--checkpoint`` when given.
2. Without a checkpoint, re-estimate every BatchNorm's statistics on synthetic images
   (see ``synthetic_images.py`` for why), then check that different images really give
   different features (mean pairwise cosine similarity below ``--max-cosine``).
3. Export both networks with the TorchScript exporter (fixed shapes, batch 1, opset 17) and
   check the float32 ONNX against PyTorch (max abs diff <= 1e-4).
4. Store large weights as float16 with a Cast to float32 (``onnx_fp16_weights.py``),
   validate with ``onnx.checker`` and measure the drift against float32.
5. Compute the self-test in ``reference.json`` with onnxruntime on the *final* files, then
   write ``manifest.toml`` with their SHA-256 digests.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn

from echoview_model import (
    DEFAULT_FRAMES_PER_BEAT,
    FEATURE_DIM,
    VIEW_LABELS,
    EchoViewNet,
    load_checkpoint,
)
from onnx_fp16_weights import store_weights_as_fp16
from synthetic_images import REFERENCE_FORMULA, normalise, reference_frame, synthetic_frames

#: Normalisation ``(pixel / 255 - mean) / std``. B-mode frames are mostly black (outside the
#: sector and inside blood pools) with mid-grey speckled tissue: over whole frames the grey
#: level averages roughly 0.1-0.2 of full scale with a spread of about 0.2. These values
#: centre and scale such frames to roughly zero mean and unit variance.
DEFAULT_MEAN = 0.15
DEFAULT_STD = 0.2

#: ONNX opset: 17 is well supported by both tract and onnxruntime.
OPSET = 17

#: Agreement required between PyTorch and the float32 ONNX export.
FP32_TOLERANCE = 1e-4

#: Tolerance the Rust self-test should use against reference.json.
REFERENCE_TOLERANCE = 1e-3

#: ``synthetic_frames`` seed suffixes, so calibration and check images never coincide.
CALIBRATION_STREAM = 1
CHECK_STREAM = 2
BEAT_STREAM = 3


@dataclass
class Args:
    """Parsed command line (typed view of argparse's namespace)."""

    size: int
    frames: int
    seed: int
    out: Path
    name: str
    version: str
    description: str
    checkpoint: Path | None
    imagenet_weights: Path | None
    bn_calibration: str
    calibration_images: int
    check_images: int
    max_cosine: float
    mean: float
    std: float
    reject_threshold: float
    trained_on: str | None
    intended_use: str
    created: str


def parse_args(argv: list[str]) -> Args:
    """Read the command line; every bundle field the manifest records comes from here."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, required=True, help="model input height = width (px)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES_PER_BEAT, help="frames per beat T")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and synthetic images")
    p.add_argument("--out", type=Path, required=True, help="bundle folder (created)")
    p.add_argument("--name", required=True, help="manifest name")
    p.add_argument("--version", required=True, help="manifest version")
    p.add_argument("--description", required=True, help="manifest description")
    p.add_argument("--checkpoint", type=Path, help="trained EchoViewNet state dict (.pt)")
    p.add_argument(
        "--imagenet-weights",
        type=Path,
        help="local torchvision efficientnet_b2 ImageNet state dict to start the encoder from",
    )
    p.add_argument(
        "--bn-calibration",
        choices=("auto", "on", "off"),
        default="auto",
        help="re-estimate BatchNorm statistics on synthetic images (auto: on without --checkpoint)",
    )
    p.add_argument("--calibration-images", type=int, default=384, help="synthetic images for BN")
    p.add_argument("--check-images", type=int, default=48, help="held-out images for the checks")
    p.add_argument(
        "--max-cosine",
        type=float,
        default=0.99,
        help="fail if calibrated features' mean pairwise cosine similarity reaches this",
    )
    p.add_argument("--mean", type=float, default=DEFAULT_MEAN, help="input normalisation mean")
    p.add_argument("--std", type=float, default=DEFAULT_STD, help="input normalisation std")
    p.add_argument("--reject-threshold", type=float, default=0.5, help="manifest [classify]")
    p.add_argument(
        "--trained-on",
        help="provenance.trained_on (default for untrained bundles: says so)",
    )
    p.add_argument("--intended-use", required=True, help="provenance.intended_use")
    p.add_argument(
        "--created",
        default=datetime.date.today().isoformat(),
        help="provenance.created date (default: today)",
    )
    ns = p.parse_args(argv)
    args = Args(**vars(ns))
    if args.size < 32 or args.size % 32 != 0:
        p.error(f"--size {args.size}: use a multiple of 32 (EfficientNet downsamples by 32)")
    if args.frames < 1:
        p.error(f"--frames {args.frames}: need at least one frame per beat")
    if args.std <= 0:
        p.error(f"--std {args.std}: must be positive")
    if not 0.0 <= args.reject_threshold <= 1.0:
        p.error(f"--reject-threshold {args.reject_threshold}: must be a probability in [0, 1]")
    for flag, path in (
        ("--checkpoint", args.checkpoint),
        ("--imagenet-weights", args.imagenet_weights),
    ):
        if path is not None and not path.is_file():
            p.error(f"{flag} {path}: no such file")
    if args.checkpoint is not None and args.trained_on is None:
        p.error("--checkpoint needs --trained-on to record what the weights were trained on")
    return args


def log(message: str) -> None:
    """Progress on stderr, so stdout stays a clean summary."""
    print(message, file=sys.stderr, flush=True)


def batches(array: np.ndarray, size: int):
    """Yield ``array`` in consecutive chunks of at most ``size`` along axis 0."""
    for start in range(0, len(array), size):
        yield array[start : start + size]


@torch.no_grad()
def encode(model: EchoViewNet, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Eval-mode encoder features of normalised images ``[N, 1, H, W]`` -> ``[N, D]``."""
    model.eval()
    return np.concatenate(
        [model.encoder(torch.from_numpy(chunk)).numpy() for chunk in batches(images, batch)]
    )


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, inputs: list[torch.Tensor]) -> None:
    """Replace every BatchNorm's running statistics by their average over ``inputs``.

    Only the BatchNorm layers go to train mode: dropout and stochastic depth must stay off,
    or the statistics would describe a randomly thinned network the export never runs.
    ``momentum=None`` makes the running statistics a plain cumulative average.
    """
    module.eval()
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for x in inputs:
        module(x)
    module.eval()


def mean_pairwise_cosine(features: np.ndarray) -> float:
    """Mean cosine similarity over all distinct pairs of rows: 1.0 means inputs collapse."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    sim = unit @ unit.T
    n = len(features)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def calibrate(model: EchoViewNet, args: Args) -> dict[str, float]:
    """Re-estimate encoder then head BatchNorm statistics; returns diversity figures."""
    check = normalise(
        synthetic_frames((args.seed, CHECK_STREAM), args.check_images, args.size),
        args.mean,
        args.std,
    )
    uncalibrated = encode(model, check)
    before = mean_pairwise_cosine(uncalibrated)

    log(f"calibrating encoder BatchNorm on {args.calibration_images} synthetic images ...")
    calib = normalise(
        synthetic_frames((args.seed, CALIBRATION_STREAM), args.calibration_images, args.size),
        args.mean,
        args.std,
    )
    recalibrate_batchnorm(model.encoder, [torch.from_numpy(c) for c in batches(calib, 32)])

    # The head's BatchNorms see encoder features; beats are random groups of calibration
    # frames, several shuffles deep so each BatchNorm sees many distinct beats.
    features = encode(model, calib)
    rng = np.random.default_rng((args.seed, BEAT_STREAM))
    beats = np.concatenate(
        [
            features[
                rng.permutation(len(features))[: len(features) // args.frames * args.frames]
            ].reshape(-1, args.frames, FEATURE_DIM)
            for _ in range(4)
        ]
    )
    recalibrate_batchnorm(model.head, [torch.from_numpy(b) for b in batches(beats, 32)])

    calibrated = encode(model, check)
    after = mean_pairwise_cosine(calibrated)
    log(f"mean pairwise cosine of features: before calibration {before:.4f}, after {after:.4f}")
    if after >= args.max_cosine:
        raise RuntimeError(
            f"features still collapse after calibration (cosine {after:.4f} >= "
            f"{args.max_cosine}); use more --calibration-images or another --seed"
        )
    # Cosine ignores scale; the RMS shows that before calibration the features vanish.
    return {
        "cosine_before": before,
        "cosine_after": after,
        "feature_rms_before": float(np.sqrt(np.mean(uncalibrated**2))),
        "feature_rms_after": float(np.sqrt(np.mean(calibrated**2))),
    }


@torch.no_grad()
def float64_relative_error(model: EchoViewNet, images: np.ndarray) -> float:
    """Worst relative error of float32 features against a float64 copy of the network.

    Measures how much the network amplifies rounding: two correct float32 runtimes can
    disagree by about this much, so it must sit far below the reference tolerance.
    """
    single = model.encoder(torch.from_numpy(images)).double()
    double = copy.deepcopy(model.encoder).double()(torch.from_numpy(images).double())
    return float(((single - double).norm(dim=1) / double.norm(dim=1)).max())


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, inputs, outputs) -> None:
    """Export with fixed shapes (batch 1) through the TorchScript exporter."""
    module.eval()
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=inputs,
        output_names=outputs,
        do_constant_folding=True,
        export_params=True,
    )


def session(path: Path) -> ort.InferenceSession:
    """A deterministic single-threaded CPU onnxruntime session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Outputs:
    """Everything one implementation computes for the reference beat plus check images."""

    frame_features: np.ndarray  # [T, D] reference frames
    logits: np.ndarray  # [C]
    alpha: float
    check_features: np.ndarray  # [N, D] held-out synthetic images


def run_onnx(encoder: Path, head: Path, frames: np.ndarray, check: np.ndarray) -> Outputs:
    """Run the reference beat and the check images through an ONNX encoder/head pair."""
    enc, hd = session(encoder), session(head)
    feats = np.concatenate([enc.run(["features"], {"image": f[None]})[0] for f in frames])
    logits, alpha = hd.run(["logits", "alpha"], {"features": feats[None]})
    check_feats = np.concatenate([enc.run(["features"], {"image": c[None]})[0] for c in check])
    return Outputs(feats, logits[0], float(alpha[0, 0]), check_feats)


@torch.no_grad()
def run_torch(model: EchoViewNet, frames: np.ndarray, check: np.ndarray) -> Outputs:
    """The same computation in PyTorch, batch 1 like the export."""
    model.eval()
    feats = np.concatenate([model.encoder(torch.from_numpy(f[None])).numpy() for f in frames])
    logits, alpha = model.head(torch.from_numpy(feats[None]))
    check_feats = encode(model, check, batch=1)
    return Outputs(feats, logits[0].numpy(), float(alpha[0, 0]), check_feats)


def max_diffs(a: Outputs, b: Outputs) -> dict[str, float]:
    """Largest absolute differences between two implementations, per output.

    ``features_rel`` is the worst per-image ``|a - b| / |b|`` (Euclidean norms): absolute
    differences alone depend on how large an image's features happen to be.
    """
    fa = np.concatenate([a.frame_features, a.check_features]).astype(np.float64)
    fb = np.concatenate([b.frame_features, b.check_features]).astype(np.float64)
    rel = np.linalg.norm(fa - fb, axis=1) / np.linalg.norm(fb, axis=1).clip(min=1e-30)
    return {
        "features_rel": float(rel.max()),
        "features": float(
            max(
                np.abs(a.frame_features - b.frame_features).max(),
                np.abs(a.check_features - b.check_features).max(),
            )
        ),
        "logits": float(np.abs(a.logits - b.logits).max()),
        "alpha": abs(a.alpha - b.alpha),
    }


def floats(values: np.ndarray) -> list[float]:
    """float32 values as JSON numbers with 9 significant digits (exact for float32)."""
    return [float(f"{v:.9g}") for v in np.asarray(values, dtype=np.float32).ravel()]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, as the manifest records it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value)


def write_reference(path: Path, args: Args, final: Outputs, pytorch: Outputs) -> None:
    """Write the self-test the Rust side reproduces without Python."""
    probs = np.exp(final.logits - final.logits.max())
    probs /= probs.sum()
    reference = {
        "format_version": 1,
        "description": (
            "Self-test of this bundle. Build frame k (k = 0 .. frames-1) of width x height "
            "u8 pixels with the formula (x = column, y = row, both from 0), normalise each "
            "pixel as (pixel / 255 - mean) / std with the manifest's mean and std, run the "
            "encoder on frame 0 and compare with encoder_features_frame0, then run the head "
            "on the encoder outputs of frames 0 .. frames-1 stacked in order and compare "
            "with head_logits and head_alpha. Values come from onnxruntime on this bundle's "
            "files (float16 weights, float32 compute)."
        ),
        "formula": REFERENCE_FORMULA,
        "width": args.size,
        "height": args.size,
        "frames": args.frames,
        "mean": [args.mean],
        "std": [args.std],
        "tolerance": REFERENCE_TOLERANCE,
        "computed_with": f"onnxruntime {ort.__version__}, CPUExecutionProvider",
        "head_label": VIEW_LABELS[int(np.argmax(final.logits))],
        "head_max_probability": float(f"{probs.max():.6g}"),
        "head_alpha": float(f"{final.alpha:.9g}"),
        "head_logits": floats(final.logits),
        "encoder_features_frame0": floats(final.frame_features[0]),
        "pytorch": {
            "note": "PyTorch with float32 weights, for comparison only",
            "head_alpha": float(f"{pytorch.alpha:.9g}"),
            "head_logits": floats(pytorch.logits),
            "encoder_features_frame0": floats(pytorch.frame_features[0]),
        },
    }
    path.write_text(json.dumps(reference, indent=1) + "\n")


def write_manifest(path: Path, args: Args, out: Path) -> None:
    """Write manifest.toml in the format the Rust loader reads (see README.md)."""
    trained_on = args.trained_on or (
        "untrained: fixed-seed random initialisation with BatchNorm statistics "
        "re-estimated on synthetic images"
    )
    toolchain = (
        f"models/export.py, torch {torch.__version__.split('+')[0]}, "
        f"torchvision {torchvision.__version__.split('+')[0]}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}"
    )
    labels = ", ".join(toml_str(label) for label in VIEW_LABELS)
    text = f"""\
format_version = 1
name = {toml_str(args.name)}
version = {toml_str(args.version)}
description = {toml_str(args.description)}
labels = [{labels}]

[input]
width = {args.size}
height = {args.size}
channels = 1
frames_per_beat = {args.frames}
mean = [{args.mean!r}]   # model input = (pixel/255 - mean) / std, per channel
std = [{args.std!r}]

[encoder]
file = "encoder.onnx"
sha256 = "{sha256(out / "encoder.onnx")}"
input = "image"        # [1, channels, height, width] f32
output = "features"    # [1, feature_dim] f32
feature_dim = {FEATURE_DIM}

[head]
file = "head.onnx"
sha256 = "{sha256(out / "head.onnx")}"
input = "features"     # [1, frames_per_beat, feature_dim] f32
logits = "logits"      # [1, len(labels)] f32
alpha = "alpha"        # [1, 1] f32, weight of the spatial branch

[classify]
reject_threshold = {args.reject_threshold!r}   # max softmax probability below this -> "unknown"

[reference]
file = "reference.json"
sha256 = "{sha256(out / "reference.json")}"

[provenance]
trained_on = {toml_str(trained_on)}
intended_use = {toml_str(args.intended_use)}
seed = {args.seed}
toolchain = {toml_str(toolchain)}
created = {toml_str(args.created)}
"""
    path.write_text(text)


def main(argv: list[str]) -> int:
    """Build the bundle described by ``argv``; returns the process exit status."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = EchoViewNet()
    if args.imagenet_weights is not None:
        model.encoder.load_imagenet_weights(args.imagenet_weights)
    if args.checkpoint is not None:
        load_checkpoint(model, args.checkpoint)
    model.eval()

    report: dict[str, object] = {"name": args.name, "size": args.size, "frames": args.frames}
    calibrate_bn = args.bn_calibration == "on" or (
        args.bn_calibration == "auto" and args.checkpoint is None
    )
    if calibrate_bn:
        report.update(calibrate(model, args))

    ref_frames = normalise(
        np.stack([reference_frame(args.size, k) for k in range(args.frames)]), args.mean, args.std
    )
    check = normalise(
        synthetic_frames((args.seed, CHECK_STREAM), 8, args.size), args.mean, args.std
    )
    pytorch = run_torch(model, ref_frames, check)
    report["cosine_reference_frames"] = mean_pairwise_cosine(pytorch.frame_features)
    report["float32_vs_float64_rel"] = float64_relative_error(
        model, np.concatenate([ref_frames, check])
    )

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        enc32, head32 = Path(tmp) / "encoder32.onnx", Path(tmp) / "head32.onnx"
        log("exporting float32 ONNX ...")
        export_onnx(
            model.encoder,
            torch.from_numpy(ref_frames[:1]),
            enc32,
            ["image"],
            ["features"],
        )
        export_onnx(
            model.head,
            torch.from_numpy(pytorch.frame_features[None]),
            head32,
            ["features"],
            ["logits", "alpha"],
        )
        fp32 = run_onnx(enc32, head32, ref_frames, check)
        report["fp32_vs_torch_max_diff"] = max_diffs(fp32, pytorch)
        worst = max(v for k, v in report["fp32_vs_torch_max_diff"].items() if k != "features_rel")
        if worst > FP32_TOLERANCE:
            raise RuntimeError(
                f"float32 ONNX disagrees with PyTorch by {worst:.3g} > {FP32_TOLERANCE}: "
                f"{report['fp32_vs_torch_max_abs']}"
            )

        for src, name in ((enc32, "encoder.onnx"), (head32, "head.onnx")):
            graph = onnx.load(str(src))
            graph.doc_string = f"{args.name} {args.version}: {name}, float16 weights, f32 compute"
            converted = store_weights_as_fp16(graph)
            onnx.checker.check_model(graph, full_check=True)
            onnx.save(graph, str(args.out / name))
            report[f"{name}_fp16_initializers"] = converted
            report[f"{name}_bytes"] = (args.out / name).stat().st_size
            report[f"{name}_fp32_bytes"] = src.stat().st_size

    final = run_onnx(args.out / "encoder.onnx", args.out / "head.onnx", ref_frames, check)
    report["fp16w_vs_fp32_max_diff"] = max_diffs(final, fp32)
    report["fp16w_vs_torch_max_diff"] = max_diffs(final, pytorch)
    report["feature_abs_max"] = float(np.abs(final.frame_features).max())
    report["logit_abs_max"] = float(np.abs(final.logits).max())

    write_reference(args.out / "reference.json", args, final, pytorch)
    write_manifest(args.out / "manifest.toml", args, args.out)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
