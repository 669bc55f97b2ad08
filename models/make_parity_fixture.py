"""Write the Rust/PyTorch parity fixture ``tests/data/parity/`` for a trained bundle.

Usage (``build_demo.py`` runs it after every export)::

    python models/make_parity_fixture.py --checkpoint RUN/best.pt --bundle models/demo \\
        --echoview target/release/echoview --out tests/data/parity --work /tmp/parity

It simulates a small session (``SESSION_ARGS``), cuts it with ``echoview clips`` (the
daemon's own gating and preprocessing), keeps the second beat of each of four views (the
first beat after a view change may start on the previous view's last frame) and stores:

* ``beats.bin``: the raw ``uint8`` pixels ``[beats, T, H, W]``, C order, as ``echoview
  clips`` wrote them;
* ``parity.json``: shape, normalisation, the session and commands that made the pixels,
  the bundle's digests, and per beat the truth, the expected label and the reference
  outputs of PyTorch:

  - ``pytorch_fp16w``: the checkpoint with every BatchNorm folded into its convolution and
    every tensor of at least 1024 values rounded to float16, exactly what ``export.py``
    stores (the ONNX exporter folds BatchNorm before ``onnx_fp16_weights.py`` rounds the
    folded tensors). This is what tract must reproduce within ``tolerance``.
  - ``pytorch_fp32``: the checkpoint as trained (float32 weights), for the label check and
    to show the drift float16 storage causes (``fp16_drift_max_abs``); trained weights make
    that drift larger than 1e-3, which is why the tight comparison uses the rounded model.
  - ``onnxruntime``: the bundle on onnxruntime, a second runtime as a cross-check.

The script refuses to write a fixture if onnxruntime and the rounded PyTorch model disagree
by more than ``CROSS_CHECK`` or if any reference disagrees on a beat's label.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from echoview_model import VIEW_LABELS, DilatedResidualBlock, EchoViewNet, load_checkpoint
from onnx_fp16_weights import MIN_ELEMENTS as FP16_MIN_ELEMENTS

#: The simulated session the fixture's pixels come from (``echoview sim`` arguments).
SESSION_ARGS = [
    "--seed", "4242", "--views", "PLAX,PSAX-mid,A4C,Subcostal", "--beats-per-view", "3",
]  # fmt: skip

#: Which beat of each view to keep: the second (see the module doc).
BEAT_OF_VIEW = 1

#: Max abs difference allowed between tract and ``pytorch_fp16w`` (the Rust test's bound).
TOLERANCE = 1e-3

#: Max abs difference required between onnxruntime and ``pytorch_fp16w`` here.
CROSS_CHECK = 1e-4


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fold_batchnorm(model: EchoViewNet) -> EchoViewNet:
    """A copy with every BatchNorm folded into the convolution before it (eval mode)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential) and len(module) >= 2:
            conv, norm = module[0], module[1]
            if isinstance(conv, nn.Conv1d | nn.Conv2d) and isinstance(
                norm, nn.BatchNorm1d | nn.BatchNorm2d
            ):
                module[0] = fuse_conv_bn_eval(conv, norm)
                module[1] = nn.Identity()
        if isinstance(module, DilatedResidualBlock):
            module.conv = fuse_conv_bn_eval(module.conv, module.norm)
            module.norm = nn.Identity()
    left = [m for m in folded.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise RuntimeError(f"{len(left)} BatchNorm layers could not be folded")
    return folded


def round_to_fp16(model: nn.Module) -> nn.Module:
    """Round every parameter of at least ``FP16_MIN_ELEMENTS`` values to float16, in place."""
    with torch.no_grad():
        for tensor in model.parameters():
            if tensor.numel() >= FP16_MIN_ELEMENTS:
                tensor.copy_(tensor.half().float())
    return model


def normalise(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The daemon's float32 formula ``p * (1 / (255 * std)) - mean / std`` (preprocess.rs)."""
    scale = np.float32(1.0) / (np.float32(255.0) * np.float32(std))
    offset = np.float32(mean) / np.float32(std)
    return pixels.astype(np.float32) * scale - offset


@torch.no_grad()
def run_torch(model: EchoViewNet, beats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, C]`` and alpha ``[N]``, one frame and one beat at a time like the daemon."""
    model.eval()
    logits, alphas = [], []
    for beat in beats:
        feats = torch.cat([model.encoder(torch.from_numpy(f[None, None])) for f in beat])
        out, alpha = model.head(feats[None])
        logits.append(out[0].numpy())
        alphas.append(float(alpha[0, 0]))
    return np.stack(logits), np.asarray(alphas, dtype=np.float32)


def run_onnx(bundle: Path, beats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same through the bundle's ONNX files on onnxruntime (one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    enc = ort.InferenceSession(str(bundle / "encoder.onnx"), options)
    head = ort.InferenceSession(str(bundle / "head.onnx"), options)
    logits, alphas = [], []
    for beat in beats:
        feats = np.concatenate([enc.run(None, {"image": f[None, None]})[0] for f in beat])
        out, alpha = head.run(["logits", "alpha"], {"features": feats[None]})
        logits.append(out[0])
        alphas.append(alpha[0, 0])
    return np.stack(logits), np.asarray(alphas, dtype=np.float32)


def floats(values: np.ndarray) -> list[float]:
    """float32 values as JSON numbers with 9 significant digits (exact for float32)."""
    return [float(f"{v:.9g}") for v in np.asarray(values, dtype=np.float32).ravel()]


def main(argv: list[str]) -> int:
    """Write the fixture; returns the process exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="train.py's best.pt")
    p.add_argument("--bundle", type=Path, required=True, help="bundle exported from it")
    p.add_argument("--echoview", type=Path, required=True, help="the echoview binary")
    p.add_argument("--out", type=Path, required=True, help="fixture folder (created)")
    p.add_argument("--work", type=Path, required=True, help="scratch folder for the session")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    manifest = tomllib.loads((args.bundle / "manifest.toml").read_text())
    size, frames = manifest["input"]["width"], manifest["input"]["frames_per_beat"]
    mean, std = manifest["input"]["mean"][0], manifest["input"]["std"][0]

    args.work.mkdir(parents=True, exist_ok=True)
    session = args.work / "parity.mcap"
    sim = [str(args.echoview), "sim", "--out", str(session), *SESSION_ARGS]
    clips_cmd = [str(args.echoview), "clips", str(session), "--out", str(args.work)]
    clips_cmd += ["--size", str(size), "--frames", str(frames)]
    for cmd in (sim, clips_cmd):
        subprocess.run(cmd, check=True, capture_output=True)
    pixels = np.load(args.work / "parity.npy")
    meta = json.loads((args.work / "parity.json").read_text())
    rows, seen = [], {}
    for row, beat in enumerate(meta["beats"]):
        seen[beat["label"]] = seen.get(beat["label"], -1) + 1
        if seen[beat["label"]] == BEAT_OF_VIEW:
            rows.append(row)
    beats = np.ascontiguousarray(pixels[rows])
    truths = [meta["beats"][r]["label"] for r in rows]
    inputs = normalise(beats, mean, std)

    model = EchoViewNet()
    load_checkpoint(model, args.checkpoint)
    fp32_logits, fp32_alpha = run_torch(model, inputs)
    fp16_logits, fp16_alpha = run_torch(round_to_fp16(fold_batchnorm(model)), inputs)
    ort_logits, ort_alpha = run_onnx(args.bundle, inputs)

    cross = float(max(np.abs(ort_logits - fp16_logits).max(), np.abs(ort_alpha - fp16_alpha).max()))
    drift = float(
        max(np.abs(fp32_logits - fp16_logits).max(), np.abs(fp32_alpha - fp16_alpha).max())
    )
    labels = [VIEW_LABELS[i] for i in fp16_logits.argmax(1)]
    for name, lg in (("pytorch_fp32", fp32_logits), ("onnxruntime", ort_logits)):
        other = [VIEW_LABELS[i] for i in lg.argmax(1)]
        if other != labels:
            raise SystemExit(f"{name} labels {other} differ from pytorch_fp16w labels {labels}")
    if cross > CROSS_CHECK:
        raise SystemExit(
            f"onnxruntime differs from the folded, float16-rounded PyTorch model by {cross:.3g} "
            f"> {CROSS_CHECK}: the rounding here no longer matches export.py"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "beats.bin").write_bytes(beats.tobytes())
    fixture = {
        "format_version": 1,
        "description": (
            "Rust/PyTorch parity fixture for the bundle in models/demo. beats.bin holds "
            "uint8 pixels [beats, frames, height, width] in C order, exactly as `echoview "
            "clips` cut them from the session below. Normalise each pixel as the daemon does "
            "(p * (1 / (255 * std)) - mean / std, f32), run the encoder on every frame and "
            "the head on each beat's features, and compare with pytorch_fp16w within "
            "tolerance (max abs, logits and alpha); every reference must give `label`. "
            "Regenerate with models/make_parity_fixture.py (build_demo.py does) whenever the "
            "bundle changes."
        ),
        "beats": len(rows),
        "frames": frames,
        "height": size,
        "width": size,
        "mean": mean,
        "std": std,
        "tolerance": TOLERANCE,
        "session": {
            "sim": "echoview sim --out parity.mcap " + " ".join(SESSION_ARGS),
            "clips": f"echoview clips parity.mcap --out DIR --size {size} --frames {frames}",
            "rows": rows,
        },
        "bundle": {
            "name": manifest["name"],
            "version": manifest["version"],
            "encoder_sha256": manifest["encoder"]["sha256"],
            "head_sha256": manifest["head"]["sha256"],
        },
        "checkpoint_sha256": sha256(args.checkpoint),
        "onnxruntime_vs_pytorch_fp16w_max_abs": cross,
        "fp16_drift_max_abs": drift,
        "cases": [
            {
                "truth": truths[i],
                "label": labels[i],
                "pytorch_fp16w": {
                    "logits": floats(fp16_logits[i]),
                    "alpha": float(f"{fp16_alpha[i]:.9g}"),
                },
                "pytorch_fp32": {
                    "logits": floats(fp32_logits[i]),
                    "alpha": float(f"{fp32_alpha[i]:.9g}"),
                },
                "onnxruntime": {
                    "logits": floats(ort_logits[i]),
                    "alpha": float(f"{ort_alpha[i]:.9g}"),
                },
            }
            for i in range(len(rows))
        ],
    }
    (args.out / "parity.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(
        json.dumps(
            {
                "rows": rows,
                "truth": truths,
                "labels": labels,
                "onnxruntime_vs_pytorch_fp16w_max_abs": cross,
                "fp16_drift_max_abs": drift,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
