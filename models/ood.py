"""Synthetic out-of-distribution beats: input the classifier must answer with ``unknown``.

The daemon labels a beat only when the head's largest softmax probability reaches the
manifest's ``reject_threshold``. Training pushes these clips towards the uniform
distribution (outlier exposure) and calibration picks the threshold that rejects them, so
each family stands for something a cart can really show between or instead of views:

* ``noise``: iid uniform noise of random range (an unplugged or noisy video input);
* ``gauss_noise``: Gaussian noise of random mean and spread (noise averaged by resizing);
* ``smooth_noise``: noise drawn at a lower resolution and enlarged (blotchy interference);
* ``flat``: one grey level plus a little noise (a blank or frozen screen);
* ``gradient``: linear or radial ramps, still (a test pattern, a gel-only image);
* ``pixel_shuffle``: a real clip with its pixels permuted (same histogram, no anatomy);
* ``tile_shuffle``: a real clip cut in 16 x 16 tiles and permuted (speckle texture, no heart);
* ``stripes``: moving gratings and checkerboards (periodic interference);
* ``shapes``: bright rectangles, lines and rings on a dark ground (a non-cardiac phantom).

Training uses ``TRAINING_FAMILIES``; ``CALIBRATION_FAMILIES`` are kept out of training, so
the calibration report shows how the threshold does on kinds of input never seen.
Everything is generated with numpy from an explicit generator, as ``uint8 [n, T, H, W]``
like the clips ``echoview clips`` writes.
"""

from __future__ import annotations

import numpy as np

TRAINING_FAMILIES: tuple[str, ...] = (
    "noise",
    "gauss_noise",
    "smooth_noise",
    "flat",
    "gradient",
    "pixel_shuffle",
    "tile_shuffle",
)
CALIBRATION_FAMILIES: tuple[str, ...] = ("stripes", "shapes")

#: Tile side of ``tile_shuffle``, pixels: a few speckle grains, far smaller than a chamber.
TILE = 16


def _enlarge(small: np.ndarray, size: int) -> np.ndarray:
    """Bilinear enlargement of ``[T, h, w]`` to ``[T, size, size]`` (numpy only)."""
    t, h, w = small.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0 = np.floor(ys).astype(int).clip(0, h - 2) if h > 1 else np.zeros(size, int)
    x0 = np.floor(xs).astype(int).clip(0, w - 2) if w > 1 else np.zeros(size, int)
    fy = (ys - y0)[None, :, None]
    fx = (xs - x0)[None, None, :]
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    a = small[:, y0][:, :, x0]
    b = small[:, y0][:, :, x1]
    c = small[:, y1][:, :, x0]
    d = small[:, y1][:, :, x1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _one(
    family: str, frames: int, size: int, rng: np.random.Generator, real: np.ndarray | None
) -> np.ndarray:
    """One OOD beat of ``family`` as float pixels ``[frames, size, size]``."""
    shape = (frames, size, size)
    if family == "noise":
        lo = rng.uniform(0, 100)
        hi = rng.uniform(lo + 20, 256)
        return rng.uniform(lo, hi, shape)
    if family == "gauss_noise":
        return rng.normal(rng.uniform(10, 200), rng.uniform(3, 80), shape)
    if family == "smooth_noise":
        cells = int(rng.integers(4, 48))
        small = rng.uniform(0, 1, (frames, cells, cells))
        return rng.uniform(10, 120) + rng.uniform(30, 180) * (_enlarge(small, size) - 0.5)
    if family == "flat":
        return np.full(shape, rng.uniform(0, 255)) + rng.normal(0, rng.uniform(0, 3), shape)
    if family == "gradient":
        y, x = np.mgrid[0:size, 0:size] / size
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * np.pi)
            ramp = x * np.cos(angle) + y * np.sin(angle)
        else:
            cx, cy = rng.uniform(0, 1, 2)
            ramp = np.hypot(x - cx, y - cy)
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
        img = rng.uniform(0, 80) + rng.uniform(40, 200) * ramp
        return np.broadcast_to(img, shape) + rng.normal(0, 2, shape)
    if family == "stripes":
        y, x = np.mgrid[0:size, 0:size] / size
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 20)
        speed = rng.uniform(-0.5, 0.5)
        u = x * np.cos(angle) + y * np.sin(angle)
        phase = 2 * np.pi * (freq * u[None] + speed * np.arange(frames)[:, None, None])
        wave = np.sin(phase)
        if rng.random() < 0.4:
            v = -x * np.sin(angle) + y * np.cos(angle)
            wave = np.sign(wave * np.sin(2 * np.pi * freq * v)[None])
        return rng.uniform(20, 100) + rng.uniform(20, 120) * wave
    if family == "shapes":
        img = np.zeros((size, size)) + rng.uniform(0, 20)
        y, x = np.mgrid[0:size, 0:size]
        for _ in range(int(rng.integers(2, 8))):
            cx, cy = rng.uniform(0, size, 2)
            level = rng.uniform(60, 250)
            kind = rng.integers(0, 3)
            if kind == 0:
                w, h = rng.uniform(5, size / 2, 2)
                img[(abs(x - cx) < w / 2) & (abs(y - cy) < h / 2)] = level
            elif kind == 1:
                r = rng.uniform(5, size / 3)
                d = np.hypot(x - cx, y - cy)
                img[abs(d - r) < rng.uniform(1, 4)] = level
            else:
                angle = rng.uniform(0, np.pi)
                dist = (x - cx) * np.sin(angle) - (y - cy) * np.cos(angle)
                img[abs(dist) < rng.uniform(1, 3)] = level
        drift = rng.normal(0, 1, (frames, 1, 1))
        return img[None] + drift + rng.normal(0, 4, shape)
    if family in ("pixel_shuffle", "tile_shuffle"):
        if real is None or len(real) == 0:
            raise ValueError(f"OOD family {family!r} needs real clips to shuffle")
        clip = real[int(rng.integers(0, len(real)))].astype(np.float64)
        if family == "pixel_shuffle":
            perm = rng.permutation(size * size)
            return clip.reshape(frames, -1)[:, perm].reshape(shape)
        n = size // TILE
        tiles = clip.reshape(frames, n, TILE, n, TILE).transpose(0, 1, 3, 2, 4)
        tiles = tiles.reshape(frames, n * n, TILE, TILE)[:, rng.permutation(n * n)]
        return tiles.reshape(frames, n, n, TILE, TILE).transpose(0, 1, 3, 2, 4).reshape(shape)
    raise ValueError(f"unknown OOD family {family!r}")


def ood_clips(
    families: tuple[str, ...],
    n: int,
    frames: int,
    size: int,
    rng: np.random.Generator,
    real: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` OOD beats cycling through ``families``: ``(uint8 [n, T, H, W], family index [n])``.

    ``real`` (``uint8 [N, T, H, W]``) feeds the shuffled families; pass training clips for
    training and validation clips for calibration so the two never share a source beat.
    """
    out = np.empty((n, frames, size, size), dtype=np.uint8)
    family_index = np.arange(n) % len(families)
    for i in range(n):
        beat = _one(families[family_index[i]], frames, size, rng, real)
        out[i] = np.clip(np.round(beat), 0, 255).astype(np.uint8)
    return out, family_index
