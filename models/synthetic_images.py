"""Deterministic synthetic greyscale images for BatchNorm calibration and self-tests.

A randomly initialised EfficientNet carries BatchNorm running statistics of mean 0 and
variance 1, which do not match the activations it really produces; in eval mode the
activations then saturate or vanish layer after layer and every input ends up with nearly
the same feature vector. Re-estimating the statistics needs inputs that look roughly like
what the daemon will feed: mostly dark frames with a bright, speckled ultrasound sector.
Blobs and gradients are mixed in so the statistics also cover smoother, brighter content.

Everything is generated in numpy from an explicit seed, so a bundle rebuilt with the same
command is the same bundle. Images are ``uint8`` like the frames the daemon captures, and
pass through the same normalisation as the runtime (``normalise``).
"""

from __future__ import annotations

import numpy as np

#: Human-readable form of ``reference_frame``'s pattern, stored in ``reference.json`` so the
#: Rust side can regenerate the self-test input without Python.
REFERENCE_FORMULA = "pixel(x, y, k) = ((x * 7 + y * 13 + k * 29) % 256) / 4  (integer division)"


def reference_frame(size: int, k: int) -> np.ndarray:
    """Self-test frame ``k`` as ``uint8 [size, size]``; ``x`` is the column, ``y`` the row.

    Integer arithmetic only, so any language reproduces it bit for bit. The ramp is divided
    by 4 so grey levels stay in 0..63, as dark as a B-mode frame: a full-range sawtooth lies
    so far outside what an untrained network was calibrated on that its features reach ~50,
    where float32 rounding alone moves them by 1e-4 and a self-test would test nothing but
    summation order.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.int64)
    return (((x * 7 + y * 13 + k * 29) % 256) // 4).astype(np.uint8)


def normalise(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``uint8 [N, H, W]`` frames -> model input ``float32 [N, 1, H, W]``.

    Same formula as the manifest documents and the daemon applies:
    ``(pixel / 255 - mean) / std``.
    """
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    return ((scaled - np.float32(mean)) / np.float32(std))[:, None, :, :]


def _lowpass(field: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of a (possibly complex) 2-D field, done in the Fourier domain."""
    h, w = field.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    return np.fft.ifft2(np.fft.fft2(field) * transfer)


def _speckle_sector(rng: np.random.Generator, size: int) -> np.ndarray:
    """A B-mode-like fan: speckled tissue, dark chambers, bright echoes, depth attenuation."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    apex_x = size * (0.5 + rng.uniform(-0.08, 0.08))
    apex_y = -size * rng.uniform(0.0, 0.08)
    half_angle = np.deg2rad(rng.uniform(30.0, 45.0))
    depth = size * rng.uniform(0.85, 1.1)
    r = np.hypot(x - apex_x, y - apex_y)
    theta = np.arctan2(x - apex_x, y - apex_y)
    inside = (np.abs(theta) < half_angle) & (r < depth)

    tissue = np.full((size, size), rng.uniform(0.15, 0.5))
    for _ in range(rng.integers(1, 5)):
        # Blood pools (chambers, vessels) are nearly anechoic.
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        ax, ay = rng.uniform(0.06, 0.22, size=2) * size
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        tissue[(u / ax) ** 2 + (v / ay) ** 2 < 1.0] = rng.uniform(0.02, 0.1)
    for _ in range(rng.integers(1, 4)):
        # Specular reflectors (valves, pericardium) are thin bright bands.
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        angle = rng.uniform(0, np.pi)
        dist = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
        along = np.abs((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle))
        band = (dist < size * rng.uniform(0.005, 0.02)) & (along < size * rng.uniform(0.05, 0.3))
        tissue[band] = rng.uniform(0.9, 1.0)
    tissue = _lowpass(tissue, rng.uniform(0.5, 2.0)).real

    noise = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
    speckle = np.abs(_lowpass(noise, rng.uniform(0.6, 1.6)))
    speckle /= speckle.mean()

    attenuation = np.exp(-rng.uniform(0.3, 1.5) * r / depth)
    echo = np.clip(tissue, 0.0, None) * speckle * attenuation * rng.uniform(0.6, 1.4)
    # Log compression, as a scanner's display chain does.
    compression = rng.uniform(2.0, 12.0)
    image = np.log1p(compression * echo) / np.log1p(compression)
    image = np.where(inside, image, 0.0)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return image


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft bright blobs on a dark, noisy background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), rng.uniform(0.0, 0.1))
    for _ in range(rng.integers(2, 9)):
        cx, cy = rng.uniform(0, 1, size=2) * size
        sigma = rng.uniform(0.03, 0.2) * size
        image += rng.uniform(0.2, 0.9) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    image += rng.normal(0.0, rng.uniform(0.0, 0.08), size=(size, size))
    return image


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear ramp at a random angle, sometimes modulated by stripes."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
    image = rng.uniform(0.0, 0.5) + rng.uniform(0.3, 1.0) * ramp
    if rng.random() < 0.5:
        freq = rng.uniform(2.0, 20.0)
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * freq * (x * np.sin(angle) - y * np.cos(angle)) + phase)
        image = image * (1.0 + rng.uniform(0.1, 0.5) * stripes)
    return image


def synthetic_frames(seed: int | tuple[int, ...], count: int, size: int) -> np.ndarray:
    """``count`` varied frames as ``uint8 [count, size, size]``, fully determined by ``seed``.

    ``seed`` may be a tuple such as ``(seed, purpose)`` so that calibration and check sets
    drawn from one user seed never share images. Mix: 60 % ultrasound sectors, 20 % blobs,
    20 % gradients, drawn per image.
    """
    rng = np.random.default_rng(seed)
    frames = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        pick = rng.random()
        if pick < 0.6:
            image = _speckle_sector(rng, size)
        elif pick < 0.8:
            image = _blobs(rng, size)
        else:
            image = _gradient(rng, size)
        frames[i] = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return frames
