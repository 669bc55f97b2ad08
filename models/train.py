"""Train echoview's view classifier on clips cut by ``echoview clips``, then calibrate it.

Usage (see README.md, "Training")::

    python models/train.py --clips CLIPS_DIR [CLIPS_DIR ...] --out RUN_DIR \\
        [--split SPLIT.txt | --val-fraction 0.2] [--seed 0] [--threads 1] ...

Input: folders written by ``echoview clips`` (``NAME.npy``: ``uint8 [beats, T, H, W]``, each
beat's T ECG-gated frames, cropped, overlays zeroed, resized, not normalised; ``NAME.json``:
one entry per beat with its ``label``). The Rust tool is the only place where gating and
preprocessing happen, so the network is trained on exactly what the daemon will feed it.

Output in ``RUN_DIR``: ``best.pt`` (an ``EchoViewNet`` state dict under ``"model"``, what
``export.py --checkpoint`` takes), ``stage_a.pt``, ``split.txt`` (the split used, reusable
with ``--split``), ``metrics.json`` (per-epoch history, final validation metrics,
calibration) and ``calibration.json``. Progress goes to stderr; the last line on stdout is a
JSON summary.

Training runs in two stages, because fine-tuning EfficientNet-b2 on whole beats (T frames
per sample) costs T times more than on frames and this must run on a few CPU cores:

A. **Encoder, frame by frame.** The encoder and the head's spatial branch (``spatial_fc``,
   a per-frame linear classifier) learn on single frames drawn from training beats, with
   class-balanced sampling and ultrasound augmentation. The first epochs run on shrunken
   frames (``--schedule-a``, progressive resizing: a 64-pixel step costs a quarter of a
   128-pixel one), the last ones at the bundle's size. Validation after each epoch is per
   beat: the spatial branch's logits averaged over the beat's frames, as in the head.
   Early stopping keeps the full-size epoch of best validation macro-F1.
B. **Head, beat by beat.** The encoder is frozen; every training beat (or a subset balanced
   over views, ``--head-max-beats``) is encoded once per ``--head-aug-copies`` (each copy
   augmented consistently across its T frames) and the
   whole head (temporal branch, spatial branch, gate) trains on the cached features.
   Early stopping again on validation macro-F1 (ties: lower validation loss).

Both stages use *outlier exposure*: synthetic out-of-distribution clips (noise, flat
frames, gradients, pixel- and tile-shuffled clips; ``ood.py``) are trained towards the
uniform distribution, so non-cardiac input gives a low maximum probability.

Calibration picks the manifest's ``reject_threshold`` on validation beats and on *fresh*
OOD clips (other seeds, shuffles of validation clips, plus families never used in
training): the largest threshold keeping ``--coverage`` of validation beats accepted bounds
it from above, the smallest one reaching the best OOD rejection possible under that bound
from below, and the threshold is their midpoint (never below ``--min-threshold``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import StochasticDepth

from echoview_model import VIEW_LABELS, BeatHead, EchoViewNet
from ood import CALIBRATION_FAMILIES, TRAINING_FAMILIES, ood_clips

#: Normalisation, as ``export.py`` writes it into the manifest (see README.md).
DEFAULT_MEAN = 0.15
DEFAULT_STD = 0.2

NUM_CLASSES = len(VIEW_LABELS)

#: torchvision's stochastic-depth rate for EfficientNet-b2 (its deepest block's), put back
#: after training so the model object behaves like a freshly built one.
TORCHVISION_STOCHASTIC_DEPTH = 0.2


def log(message: str) -> None:
    """Progress on stderr, so stdout stays a clean summary."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class ClipSet:
    """Labelled beats of many sessions, all in memory (uint8 is small: 128 KiB per beat)."""

    clips: np.ndarray  # uint8 [N, T, H, W]
    labels: np.ndarray  # int64 [N], index into VIEW_LABELS
    session: np.ndarray  # int64 [N], index into ``names``
    names: list[str]  # session ids (file stem of NAME.npy)

    def subset(self, mask: np.ndarray) -> ClipSet:
        """The beats where ``mask`` is true (same session names)."""
        return ClipSet(self.clips[mask], self.labels[mask], self.session[mask], self.names)


def load_clips(folders: list[Path], size: int, frames: int) -> ClipSet:
    """Read every ``NAME.npy`` + ``NAME.json`` pair that ``echoview clips`` wrote.

    Beats without a label (a session with neither truth nor ``--label``) are left out and
    counted; a label that is not one of the 11 views, a shape that disagrees with the JSON
    or with ``--size``/``--frames``, or two sessions with the same name are errors: each
    would silently corrupt training.
    """
    clips, labels, sessions, names = [], [], [], []
    unlabelled = 0
    for folder in folders:
        metas = sorted(folder.glob("*.json"))
        if not metas:
            raise SystemExit(f"{folder}: no NAME.json/NAME.npy clips (run `echoview clips`)")
        for meta_path in metas:
            meta = json.loads(meta_path.read_text())
            npy = meta_path.with_suffix(".npy")
            name = meta_path.stem
            if name in names:
                raise SystemExit(
                    f"{meta_path}: session name {name!r} appears twice; session names must be "
                    "unique across --clips folders (the split is by name)"
                )
            if (meta["width"], meta["height"], meta["frames_per_beat"]) != (size, size, frames):
                raise SystemExit(
                    f"{meta_path}: clips are {meta['width']}x{meta['height']}, "
                    f"T={meta['frames_per_beat']}, but training uses {size}x{size}, T={frames}; "
                    "cut them again with `echoview clips --size/--frames` or change "
                    "--size/--frames"
                )
            array = np.load(npy)
            beats = meta["beats"]
            if array.dtype != np.uint8 or array.shape != (len(beats), frames, size, size):
                raise SystemExit(
                    f"{npy}: expected uint8 {(len(beats), frames, size, size)}, got "
                    f"{array.dtype} {array.shape}"
                )
            keep = []
            for row, beat in enumerate(beats):
                label = beat.get("label")
                if label is None:
                    unlabelled += 1
                    continue
                if label not in VIEW_LABELS:
                    raise SystemExit(
                        f"{meta_path}: beat {beat.get('beat')} has label {label!r}, which is "
                        f"not one of {', '.join(VIEW_LABELS)}"
                    )
                keep.append(row)
                labels.append(VIEW_LABELS.index(label))
                sessions.append(len(names))
            clips.append(array[keep])
            names.append(name)
    if unlabelled:
        log(f"left out {unlabelled} beats without a label")
    if not labels:
        raise SystemExit("no labelled beats in the --clips folders")
    return ClipSet(
        np.concatenate(clips),
        np.asarray(labels, dtype=np.int64),
        np.asarray(sessions, dtype=np.int64),
        names,
    )


def split_sessions(
    data: ClipSet, split_file: Path | None, val_fraction: float, seed: int
) -> dict[str, str]:
    """Session name -> ``"train"`` or ``"val"``; a session is never on both sides.

    With ``split_file`` (lines ``NAME train|val``; ``#`` comments) every session must be
    listed, so a forgotten session cannot drift into training. Put all sessions of one
    patient on the same side to make the split patient-wise. Without it, a seeded shuffle
    sends ``val_fraction`` of the sessions to validation.
    """
    if split_file is not None:
        sides = {}
        for number, line in enumerate(split_file.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("train", "val"):
                raise SystemExit(f"{split_file}:{number}: expected `NAME train|val`, got {line!r}")
            sides[parts[0]] = parts[1]
        missing = [n for n in data.names if n not in sides]
        if missing:
            raise SystemExit(f"{split_file}: sessions not listed: {', '.join(missing)}")
        return {n: sides[n] for n in data.names}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.names))
    n_val = max(1, round(val_fraction * len(data.names)))
    if n_val >= len(data.names):
        raise SystemExit(
            f"{len(data.names)} sessions: too few to keep {val_fraction:.0%} for validation "
            "and still train; add sessions or use --split"
        )
    val = {data.names[i] for i in order[:n_val]}
    return {n: ("val" if n in val else "train") for n in data.names}


# --------------------------------------------------------------------------------------------
# Augmentation and normalisation


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the ultrasound augmentations; each beat draws one value of each.

    All act on uint8-range pixels of a whole beat, the same for its T frames (the probe
    does not jump within a heartbeat), except speckle, which is drawn per frame like the
    real thing decorrelates from frame to frame.
    """

    gain: tuple[float, float] = (0.7, 1.4)  # overall gain, a multiplicative factor
    gamma: tuple[float, float] = (0.75, 1.33)  # log-uniform: compression/dynamic range
    zoom: tuple[float, float] = (0.85, 1.2)  # log-uniform: imaging depth (>1 magnifies)
    rotate_deg: float = 10.0  # probe rotation, +- degrees
    translate: float = 0.08  # probe offset, +- fraction of the image side
    speckle: tuple[float, float] = (0.0, 0.3)  # multiplicative noise strength
    speckle_grain_px: int = 2  # speckle grain, pixels


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment(clips: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Augment uint8 beats ``[N, T, H, W]`` -> float pixels in 0..255, rounded like uint8."""
    n, t, h, w = clips.shape
    x = clips.float()
    zoom = torch.exp(_uniform(n, math.log(cfg.zoom[0]), math.log(cfg.zoom[1]), gen))
    angle = torch.deg2rad(_uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen))
    # affine_grid maps output to input coordinates in [-1, 1]: a side is 2 units long.
    shift = _uniform(2 * n, -2 * cfg.translate, 2 * cfg.translate, gen).view(n, 2)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    # The T frames ride as channels, so they share one transform.
    grid = F.affine_grid(theta, [n, t, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    gamma = torch.exp(_uniform(n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), gen))
    gain = _uniform(n, *cfg.gain, gen)
    x = 255.0 * (x / 255.0).clamp(0.0, 1.0) ** gamma.view(n, 1, 1, 1) * gain.view(n, 1, 1, 1)

    strength = _uniform(n, *cfg.speckle, gen).view(n, 1, 1, 1)
    g = cfg.speckle_grain_px
    noise = torch.randn(n, t, -(-h // g), -(-w // g), generator=gen)
    noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    x = x * (1.0 + strength * noise).clamp(min=0.0)
    return x.clamp(0.0, 255.0).round()


def resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink ``[N, T, H, W]`` pixels to ``size`` x ``size`` by area averaging (no-op at H)."""
    if size == pixels.shape[-1]:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="area")


def normalise(pixels: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Pixels (0..255) -> model input, with the daemon's float32 formula.

    ``src/preprocess.rs`` computes ``p * (1 / (255 * std)) - mean / std`` in f32, equal to
    ``(p / 255 - mean) / std`` up to rounding; using its exact form keeps parity tight.
    """
    scale = torch.tensor(np.float32(1.0) / (np.float32(255.0) * np.float32(std)))
    offset = torch.tensor(np.float32(mean) / np.float32(std))
    return pixels.float() * scale - offset


# --------------------------------------------------------------------------------------------
# Metrics


def confusion(truth: np.ndarray, pred: np.ndarray, classes: int = NUM_CLASSES) -> np.ndarray:
    """``[classes, classes]`` counts, rows = truth, columns = prediction."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return matrix


def metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, object]:
    """Accuracy, micro- and macro-F1 and the confusion matrix of single-label predictions.

    Macro-F1 averages over the classes present in the truth or the predictions, so a view
    absent from a small validation set neither helps nor hurts. Every beat gets a
    prediction here (no rejection), so micro-F1 equals accuracy; both are reported because
    they part ways once ``unknown`` is allowed.
    """
    matrix = confusion(truth, pred)
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    present = (matrix.sum(0) + matrix.sum(1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return {
        "beats": len(truth),
        "accuracy": float((truth == pred).mean()) if len(truth) else 0.0,
        "micro_f1": float(micro),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {VIEW_LABELS[i]: float(f1[i]) for i in range(NUM_CLASSES) if present[i]},
        "confusion": matrix.tolist(),
    }


def format_confusion(matrix: list[list[int]]) -> str:
    """A fixed-width confusion matrix (rows = truth, columns = prediction)."""
    short = [label[:7] for label in VIEW_LABELS]
    lines = ["truth \\ pred " + " ".join(f"{s:>7}" for s in short)]
    for label, row in zip(VIEW_LABELS, matrix, strict=True):
        lines.append(f"{label[:12]:<12} " + " ".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Encoding


def batches(n: int, size: int):
    """Consecutive index ranges of at most ``size`` covering ``0 .. n``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def encode_beats(
    model: EchoViewNet,
    clips: np.ndarray,
    cfg: Config,
    augment_with: tuple[torch.Generator, AugmentConfig] | None = None,
    frames: list[int] | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """Eval-mode encoder features of beats ``uint8 [N, T, H, W]`` -> ``[N, T', D]``.

    ``frames`` picks a subset of the T phases (cheaper validation during stage A);
    ``augment_with`` augments each beat consistently across its frames first; ``size``
    shrinks the frames (stage A's low-resolution epochs).
    """
    model.eval()
    out = []
    beats_per_batch = max(1, cfg.eval_batch // clips.shape[1])
    for part in batches(len(clips), beats_per_batch):
        x = torch.from_numpy(clips[part])
        if frames is not None:
            x = x[:, frames]
        x = augment(x, *augment_with) if augment_with is not None else x.float()
        x = resize(x, size or x.shape[-1])
        n, t = x.shape[:2]
        images = normalise(x, cfg.mean, cfg.std).reshape(n * t, 1, *x.shape[2:])
        out.append(model.encoder(images).view(n, t, -1))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class Config:
    """Parsed command line (typed view of argparse's namespace)."""

    clips: list[Path]
    out: Path
    split: Path | None
    val_fraction: float
    size: int
    frames: int
    mean: float
    std: float
    seed: int
    threads: int
    batch: int
    eval_batch: int
    schedule_a: list[tuple[int, int]]
    patience_a: int
    lr_a: float
    weight_decay: float
    warmup_steps: int
    label_smoothing: float
    ood_per_batch: int
    ood_weight: float
    val_frames_a: int
    epochs_b: int
    patience_b: int
    lr_b: float
    batch_b: int
    head_aug_copies: int
    head_max_beats: int
    ood_train_beats: int
    ood_calibration_beats: int
    coverage: float
    min_threshold: float
    max_threshold: float
    stochastic_depth: float


def parse_args(argv: list[str]) -> Config:
    """Read the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clips", type=Path, nargs="+", required=True, help="`echoview clips` folders")
    p.add_argument("--out", type=Path, required=True, help="run folder (created)")
    p.add_argument("--split", type=Path, help="file of `SESSION train|val` lines")
    p.add_argument("--val-fraction", type=float, default=0.2, help="without --split")
    p.add_argument("--size", type=int, default=128, help="clip size the model is trained at")
    p.add_argument("--frames", type=int, default=8, help="frames per beat T")
    p.add_argument("--mean", type=float, default=DEFAULT_MEAN, help="normalisation mean")
    p.add_argument("--std", type=float, default=DEFAULT_STD, help="normalisation std")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch CPU threads; on a shared 2-core machine 1 is faster than 2",
    )
    p.add_argument("--batch", type=int, default=16, help="stage A frames per step")
    p.add_argument("--eval-batch", type=int, default=64, help="frames per inference batch")
    p.add_argument(
        "--schedule-a",
        default="64:4,96:2,128:2",
        help="stage A epochs per training resolution, SIZE:EPOCHS,...; an epoch draws one "
        "frame per training beat. Low-resolution epochs first (progressive resizing) learn "
        "the coarse anatomy at a fraction of the cost; the last SIZE must be --size, and "
        "only its epochs compete for the best checkpoint",
    )
    p.add_argument("--patience-a", type=int, default=3, help="stage A early-stopping patience")
    p.add_argument("--lr-a", type=float, default=2e-3, help="stage A peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=30, help="stage A linear warm-up")
    p.add_argument("--label-smoothing", type=float, default=0.05, help="cross-entropy smoothing")
    p.add_argument("--ood-per-batch", type=int, default=2, help="stage A OOD frames per step")
    p.add_argument("--ood-weight", type=float, default=0.5, help="weight of the OOD loss")
    p.add_argument(
        "--val-frames-a",
        type=int,
        default=4,
        help="stage A validation uses this many evenly spaced phases per beat (cost)",
    )
    p.add_argument("--epochs-b", type=int, default=60, help="stage B (head) epochs")
    p.add_argument("--patience-b", type=int, default=15, help="stage B early-stopping patience")
    p.add_argument("--lr-b", type=float, default=1e-3, help="stage B learning rate")
    p.add_argument("--batch-b", type=int, default=32, help="stage B beats per step")
    p.add_argument(
        "--head-aug-copies", type=int, default=1, help="augmented encodings of each train beat"
    )
    p.add_argument(
        "--head-max-beats",
        type=int,
        default=0,
        help="encode at most this many training beats for stage B, balanced over views "
        "(0: all); encoding every beat's T frames is stage B's main cost",
    )
    p.add_argument("--ood-train-beats", type=int, default=160, help="OOD beats for stage B")
    p.add_argument(
        "--ood-calibration-beats", type=int, default=160, help="fresh OOD beats to calibrate on"
    )
    p.add_argument(
        "--coverage",
        type=float,
        default=0.97,
        help="fraction of validation beats the reject threshold must accept",
    )
    p.add_argument("--min-threshold", type=float, default=0.5, help="threshold floor")
    p.add_argument("--max-threshold", type=float, default=0.95, help="threshold ceiling")
    p.add_argument(
        "--stochastic-depth",
        type=float,
        default=0.0,
        help="EfficientNet stochastic-depth rate while training (torchvision's default 0.2 "
        "slows a short training down; inference never uses it)",
    )
    ns = p.parse_args(argv)
    try:
        ns.schedule_a = [
            (int(size), int(epochs))
            for size, epochs in (item.split(":") for item in ns.schedule_a.split(","))
        ]
    except ValueError:
        p.error(f"--schedule-a {ns.schedule_a!r}: expected SIZE:EPOCHS,... such as 96:2,128:4")
    cfg = Config(**vars(ns))
    if cfg.schedule_a[-1][0] != cfg.size or any(
        s % 32 or s > cfg.size or e < 1 for s, e in cfg.schedule_a
    ):
        p.error(
            f"--schedule-a: sizes must be multiples of 32 up to --size {cfg.size}, ending "
            "with it, and epochs at least 1"
        )
    if cfg.size % 32 != 0:
        p.error(f"--size {cfg.size}: use a multiple of 32")
    if not 0.0 < cfg.val_fraction < 1.0:
        p.error(f"--val-fraction {cfg.val_fraction}: must be in (0, 1)")
    if not 0.0 < cfg.coverage <= 1.0:
        p.error(f"--coverage {cfg.coverage}: must be in (0, 1]")
    if cfg.split is not None and not cfg.split.is_file():
        p.error(f"--split {cfg.split}: no such file")
    if not 1 <= cfg.val_frames_a <= cfg.frames:
        p.error(f"--val-frames-a {cfg.val_frames_a}: must be in 1..{cfg.frames}")
    return cfg


def set_stochastic_depth(model: EchoViewNet, rate: float) -> None:
    """Set the MBConv blocks' stochastic-depth probabilities the way torchvision does.

    torchvision gives block ``i`` of ``n`` the probability ``rate * i / n``; this rebuilds
    that profile for another ``rate``. Training only: eval mode never drops a block, and
    the probabilities are not part of the state dict.
    """
    blocks = [m for m in model.encoder.modules() if isinstance(m, StochasticDepth)]
    for i, block in enumerate(blocks):
        block.p = rate * i / len(blocks)


# --------------------------------------------------------------------------------------------
# Stage A: encoder + spatial branch on frames


def uniform_target_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy towards the uniform distribution (outlier exposure)."""
    return -F.log_softmax(logits, dim=1).mean()


def balanced_sampler_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-sample weights 1 / (count of its class): every view is drawn equally often."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    return torch.from_numpy(1.0 / counts[labels])


def balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted row indices of at most ``limit`` beats, as even over views as possible.

    ``limit`` 0 keeps every row. Views with fewer beats than their share give the rest to
    the others, so the subset has ``min(limit, len(labels))`` rows.
    """
    if limit <= 0 or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng((seed, 3))
    pools = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(NUM_CLASSES)]
    chosen: list[int] = []
    while len(chosen) < limit:
        for pool in pools:
            if pool and len(chosen) < limit:
                chosen.append(pool.pop())
    return np.sort(np.asarray(chosen))


def frame_logits(model: EchoViewNet, features: torch.Tensor) -> torch.Tensor:
    """The spatial branch per beat: per-frame linear layer averaged over frames."""
    return model.head.spatial_fc(features).mean(dim=1)


def evaluate_spatial(
    model: EchoViewNet, val: ClipSet, cfg: Config, size: int
) -> tuple[dict, float]:
    """Stage A validation: beat-level metrics of the spatial branch, and its NLL."""
    phases = np.linspace(0, cfg.frames - 1, cfg.val_frames_a).round().astype(int).tolist()
    with torch.no_grad():
        features = encode_beats(model, val.clips, cfg, frames=phases, size=size)
        logits = frame_logits(model, features)
        loss = F.cross_entropy(logits, torch.from_numpy(val.labels)).item()
    return metrics(val.labels, logits.argmax(1).numpy()), loss


def better(candidate: dict, loss: float, best: tuple[float, float] | None) -> bool:
    """Higher macro-F1 wins; equal macro-F1 (common once it reaches 1) goes to lower loss."""
    if best is None:
        return True
    return (candidate["macro_f1"], -loss) > (best[0], -best[1])


def train_stage_a(
    model: EchoViewNet, train: ClipSet, val: ClipSet, ood: np.ndarray, cfg: Config
) -> list[dict]:
    """Train encoder + spatial branch on single frames; keeps the best epoch's weights."""
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = AugmentConfig()
    params = list(model.encoder.parameters()) + list(model.head.spatial_fc.parameters())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr_a,
    )
    steps_per_epoch = len(train.labels) // cfg.batch
    epoch_sizes = [size for size, epochs in cfg.schedule_a for _ in range(epochs)]
    total = steps_per_epoch * len(epoch_sizes)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr_a * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr_a * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    weights = balanced_sampler_weights(train.labels)
    history: list[dict] = []
    best: tuple[float, float] | None = None
    best_state = None
    stale = 0
    step = 0
    for epoch, size in enumerate(epoch_sizes):
        final_size = size == cfg.size
        started = time.monotonic()
        model.train()
        order = torch.multinomial(weights, steps_per_epoch * cfg.batch, True, generator=gen)
        running, seen, correct = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch : (b + 1) * cfg.batch].numpy()
            phase = torch.randint(0, cfg.frames, (len(idx),), generator=gen).numpy()
            frames = torch.from_numpy(train.clips[idx, phase][:, None])  # [B, 1, H, W]
            if cfg.ood_per_batch:
                pick = torch.randint(0, len(ood), (cfg.ood_per_batch,), generator=gen).numpy()
                ph = torch.randint(0, cfg.frames, (cfg.ood_per_batch,), generator=gen).numpy()
                frames = torch.cat([frames, torch.from_numpy(ood[pick, ph][:, None])])
            x = normalise(resize(augment(frames, gen, aug), size), cfg.mean, cfg.std)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = model.head.spatial_fc(model.encoder(x))
            target = torch.from_numpy(train.labels[idx])
            loss = F.cross_entropy(logits[: len(idx)], target, label_smoothing=cfg.label_smoothing)
            if cfg.ood_per_batch:
                loss = loss + cfg.ood_weight * uniform_target_loss(logits[len(idx) :])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += loss.item() * len(idx)
            seen += len(idx)
            correct += int((logits[: len(idx)].argmax(1) == target).sum())
            if (b + 1) % 20 == 0:
                rate = seen / (time.monotonic() - started)
                log(
                    f"  A epoch {epoch + 1} ({size} px) step {b + 1}/{steps_per_epoch} "
                    f"loss {running / seen:.4f} frame acc {correct / seen:.3f} "
                    f"({rate:.1f} frames/s)"
                )
        train_time = time.monotonic() - started
        val_metrics, val_loss = evaluate_spatial(model, val, cfg, size)
        record = {
            "stage": "A",
            "epoch": epoch + 1,
            "size": size,
            "train_loss": running / max(seen, 1),
            "train_frame_accuracy": correct / max(seen, 1),
            "val_loss": val_loss,
            **{k: val_metrics[k] for k in ("accuracy", "micro_f1", "macro_f1", "confusion")},
            "seconds": time.monotonic() - started,
            "train_seconds": train_time,
        }
        history.append(record)
        log(
            f"A epoch {epoch + 1} ({size} px): train loss {record['train_loss']:.4f}, val acc "
            f"{val_metrics['accuracy']:.4f}, micro-F1 {val_metrics['micro_f1']:.4f}, "
            f"macro-F1 {val_metrics['macro_f1']:.4f}, val loss {val_loss:.4f} "
            f"({record['seconds']:.0f} s)\n{format_confusion(val_metrics['confusion'])}"
        )
        # Only full-resolution epochs compete: the checkpoint must work at the bundle's size.
        if not final_size:
            continue
        if better(val_metrics, val_loss, best):
            best = (val_metrics["macro_f1"], val_loss)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience_a:
                log(f"A: early stop, no better macro-F1 for {stale} epochs")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


# --------------------------------------------------------------------------------------------
# Stage B: head on cached features


def head_eval(head: BeatHead, features: torch.Tensor, labels: np.ndarray) -> tuple[dict, float]:
    """Beat-level metrics and NLL of the head on cached features."""
    head.eval()
    with torch.no_grad():
        logits, _ = head(features)
        loss = F.cross_entropy(logits, torch.from_numpy(labels)).item()
    return metrics(labels, logits.argmax(1).numpy()), loss


def train_stage_b(
    head: BeatHead,
    train_x: torch.Tensor,
    train_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    ood_x: torch.Tensor,
    cfg: Config,
) -> list[dict]:
    """Train the whole head on cached beat features; keeps the best epoch's weights."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr_b, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs_b)
    weights = balanced_sampler_weights(train_y)
    steps = max(1, len(train_y) // cfg.batch_b)
    ood_per_step = max(1, len(ood_x) * cfg.batch_b // max(len(train_y), 1)) if len(ood_x) else 0
    history: list[dict] = []
    best: tuple[float, float] | None = None
    best_state = None
    stale = 0
    for epoch in range(cfg.epochs_b):
        head.train()
        order = torch.multinomial(weights, steps * cfg.batch_b, True, generator=gen)
        total = 0.0
        for s in range(steps):
            idx = order[s * cfg.batch_b : (s + 1) * cfg.batch_b]
            x = train_x[idx]
            target = torch.from_numpy(train_y[idx.numpy()])
            if ood_per_step:
                pick = torch.randint(0, len(ood_x), (ood_per_step,), generator=gen)
                x = torch.cat([x, ood_x[pick]])
            logits, _ = head(x)
            loss = F.cross_entropy(logits[: len(idx)], target, label_smoothing=cfg.label_smoothing)
            if ood_per_step:
                loss = loss + cfg.ood_weight * uniform_target_loss(logits[len(idx) :])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        val_metrics, val_loss = head_eval(head, val_x, val_y)
        history.append(
            {
                "stage": "B",
                "epoch": epoch + 1,
                "train_loss": total / steps,
                "val_loss": val_loss,
                **{k: val_metrics[k] for k in ("accuracy", "micro_f1", "macro_f1", "confusion")},
            }
        )
        if (epoch + 1) % 5 == 0 or epoch == 0:
            log(
                f"B epoch {epoch + 1}: train loss {total / steps:.4f}, val acc "
                f"{val_metrics['accuracy']:.4f}, micro-F1 {val_metrics['micro_f1']:.4f}, "
                f"macro-F1 {val_metrics['macro_f1']:.4f}, val loss {val_loss:.4f}"
            )
        if better(val_metrics, val_loss, best):
            best = (val_metrics["macro_f1"], val_loss)
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience_b:
                log(f"B: early stop at epoch {epoch + 1}")
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return history


# --------------------------------------------------------------------------------------------
# Calibration


def max_probability(head: BeatHead, features: torch.Tensor) -> np.ndarray:
    """The classifier's confidence per beat: the largest softmax probability."""
    head.eval()
    with torch.no_grad():
        logits, _ = head(features)
    return F.softmax(logits, dim=1).max(1).values.numpy()


def choose_threshold(
    id_conf: np.ndarray, ood_conf: np.ndarray, coverage: float, lo: float, hi: float
) -> dict[str, float]:
    """Pick the reject threshold (see the module doc) and report what it does.

    A beat is accepted when its confidence is >= the threshold, as the daemon does.
    """
    # Largest threshold that keeps `coverage` of in-distribution beats: the confidence of
    # the k-th least confident beat, where k beats may be rejected.
    allowed = math.floor((1.0 - coverage) * len(id_conf) + 1e-9)
    upper = float(np.sort(id_conf)[allowed])
    upper = min(max(upper, lo), hi)
    best_rejection = float((ood_conf < upper).mean())
    # Smallest threshold rejecting as much: just above the most confident OOD beat that
    # `upper` still rejects.
    rejected = ood_conf[ood_conf < upper]
    lower = float(np.nextafter(rejected.max(), 1.0)) if len(rejected) else lo
    threshold = min(max(0.5 * (lower + upper), lo), hi)
    return {
        "threshold": threshold,
        "upper_bound": upper,
        "lower_bound": lower,
        "id_coverage": float((id_conf >= threshold).mean()),
        "ood_rejection": float((ood_conf < threshold).mean()),
        "best_ood_rejection_at_coverage": best_rejection,
    }


# --------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Train, calibrate and save; returns the process exit status."""
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # Cheap on CPU; warn_only because a few CPU kernels have no deterministic variant flag.
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    wall = time.monotonic()

    data = load_clips(cfg.clips, cfg.size, cfg.frames)
    sides = split_sessions(data, cfg.split, cfg.val_fraction, cfg.seed)
    (cfg.out / "split.txt").write_text("".join(f"{n} {s}\n" for n, s in sides.items()))
    is_val = np.array([sides[data.names[s]] == "val" for s in data.session])
    train, val = data.subset(~is_val), data.subset(is_val)
    for part, name in ((train, "train"), (val, "val")):
        counts = np.bincount(part.labels, minlength=NUM_CLASSES)
        log(
            f"{name}: {len(part.labels)} beats from {len(set(part.session.tolist()))} sessions; "
            + ", ".join(f"{VIEW_LABELS[i]} {c}" for i, c in enumerate(counts))
        )
    if len(val.labels) == 0:
        raise SystemExit("the validation sessions hold no labelled beats; change the split")
    missing = [VIEW_LABELS[i] for i in range(NUM_CLASSES) if not (train.labels == i).any()]
    if missing:
        raise SystemExit(
            f"no training beats of {', '.join(missing)}: the model could not learn them"
        )

    rng_train = np.random.default_rng((cfg.seed, 1))
    rng_cal = np.random.default_rng((cfg.seed, 2))
    ood_train, _ = ood_clips(
        TRAINING_FAMILIES,
        max(cfg.ood_train_beats, 64),
        cfg.frames,
        cfg.size,
        rng_train,
        train.clips,
    )
    # Fresh OOD beats for calibration: other seeds, shuffles of validation clips only, and
    # half of them from families training never saw.
    families = TRAINING_FAMILIES + CALIBRATION_FAMILIES
    seen_half, seen_family = ood_clips(
        TRAINING_FAMILIES,
        cfg.ood_calibration_beats // 2,
        cfg.frames,
        cfg.size,
        rng_cal,
        val.clips,
    )
    unseen_half, unseen_family = ood_clips(
        CALIBRATION_FAMILIES,
        cfg.ood_calibration_beats - len(seen_half),
        cfg.frames,
        cfg.size,
        rng_cal,
        val.clips,
    )
    ood_cal = np.concatenate([seen_half, unseen_half])
    ood_cal_family = np.concatenate([seen_family, unseen_family + len(TRAINING_FAMILIES)])

    torch.manual_seed(cfg.seed)
    model = EchoViewNet()
    set_stochastic_depth(model, cfg.stochastic_depth)

    log(f"stage A: encoder + spatial branch on frames, schedule {cfg.schedule_a}")
    history = train_stage_a(model, train, val, ood_train, cfg)
    set_stochastic_depth(model, TORCHVISION_STOCHASTIC_DEPTH)
    torch.save({"model": model.state_dict()}, cfg.out / "stage_a.pt")
    stage_a_seconds = time.monotonic() - wall

    log("stage B: caching encoder features ...")
    cache_started = time.monotonic()
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    aug = AugmentConfig()
    head_rows = balanced_subset(train.labels, cfg.head_max_beats, cfg.seed)
    train_x = torch.cat(
        [
            encode_beats(model, train.clips[head_rows], cfg, (gen, aug))
            for _ in range(cfg.head_aug_copies)
        ]
    )
    train_y = np.tile(train.labels[head_rows], cfg.head_aug_copies)
    val_x = encode_beats(model, val.clips, cfg)
    ood_x = encode_beats(model, ood_train[: cfg.ood_train_beats], cfg, (gen, aug))
    ood_cal_x = encode_beats(model, ood_cal, cfg)
    log(f"cached features in {time.monotonic() - cache_started:.0f} s")

    with torch.no_grad():
        spatial_only = metrics(val.labels, frame_logits(model, val_x).argmax(1).numpy())
    log(
        f"val after stage A, spatial branch on all {cfg.frames} frames: "
        f"accuracy {spatial_only['accuracy']:.4f}, macro-F1 {spatial_only['macro_f1']:.4f}"
    )
    head = BeatHead()
    head.spatial_fc.load_state_dict(model.head.spatial_fc.state_dict())
    model.head = head
    history += train_stage_b(model.head, train_x, train_y, val_x, val.labels, ood_x, cfg)
    model.eval()

    final, final_loss = head_eval(model.head, val_x, val.labels)
    with torch.no_grad():
        val_logits, alpha = model.head(val_x)
    id_conf = F.softmax(val_logits, dim=1).max(1).values.numpy()
    ood_conf = max_probability(model.head, ood_cal_x)
    calibration = choose_threshold(
        id_conf, ood_conf, cfg.coverage, cfg.min_threshold, cfg.max_threshold
    )
    accepted = id_conf >= calibration["threshold"]
    preds = val_logits.argmax(1).numpy()
    calibration.update(
        {
            "coverage_target": cfg.coverage,
            "val_beats": len(id_conf),
            "ood_beats": len(ood_conf),
            "val_accepted_accuracy": (
                float((preds[accepted] == val.labels[accepted]).mean()) if accepted.any() else 0.0
            ),
            "val_confidence_min": float(id_conf.min()),
            "val_confidence_median": float(np.median(id_conf)),
            "ood_confidence_max": float(ood_conf.max()),
            "ood_confidence_median": float(np.median(ood_conf)),
            "per_family": {
                name: {
                    "beats": int((ood_cal_family == i).sum()),
                    "rejected": float(
                        (ood_conf[ood_cal_family == i] < calibration["threshold"]).mean()
                    ),
                    "max_confidence": float(ood_conf[ood_cal_family == i].max()),
                    "seen_in_training": name in TRAINING_FAMILIES,
                }
                for i, name in enumerate(families)
                if (ood_cal_family == i).any()
            },
        }
    )

    meta = {
        "labels": list(VIEW_LABELS),
        "size": cfg.size,
        "frames": cfg.frames,
        "mean": cfg.mean,
        "std": cfg.std,
        "seed": cfg.seed,
        "reject_threshold": calibration["threshold"],
        "sessions_train": sorted(n for n, s in sides.items() if s == "train"),
        "sessions_val": sorted(n for n, s in sides.items() if s == "val"),
    }
    torch.save({"model": model.state_dict(), "meta": meta}, cfg.out / "best.pt")
    seconds = time.monotonic() - wall
    summary = {
        "train_beats": len(train.labels),
        "val_beats": len(val.labels),
        "train_sessions": len(meta["sessions_train"]),
        "val_sessions": len(meta["sessions_val"]),
        "seconds_total": seconds,
        "seconds_stage_a": stage_a_seconds,
        "val_spatial_branch_after_stage_a": {k: spatial_only[k] for k in ("accuracy", "macro_f1")},
        "val": {k: final[k] for k in ("accuracy", "micro_f1", "macro_f1", "per_class_f1")},
        "val_loss": final_loss,
        "val_confusion": final["confusion"],
        "val_alpha_mean": float(alpha.mean()),
        "calibration": calibration,
        "checkpoint": str(cfg.out / "best.pt"),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}
        | {"clips": [str(c) for c in cfg.clips], "augment": dataclasses.asdict(aug)},
    }
    (cfg.out / "metrics.json").write_text(
        json.dumps(summary | {"history": history}, indent=1) + "\n"
    )
    (cfg.out / "calibration.json").write_text(json.dumps(calibration, indent=1) + "\n")
    log(
        f"final val: accuracy {final['accuracy']:.4f}, micro-F1 {final['micro_f1']:.4f}, "
        f"macro-F1 {final['macro_f1']:.4f}\n{format_confusion(final['confusion'])}\n"
        f"reject threshold {calibration['threshold']:.4f}: val coverage "
        f"{calibration['id_coverage']:.4f}, OOD rejection {calibration['ood_rejection']:.4f}; "
        f"total {seconds / 60:.1f} min"
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
