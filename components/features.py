"""Model-specific transforms of canonical images, applied inside a model family.

The shared stem (:mod:`components.stem`) is the one entry point for raw pixels;
what a family adds on top lives here and is named in the saved model's
parameters, so whoever loads the model (the server, the Kaggle job, the gate)
applies exactly what training applied.
"""

from __future__ import annotations

import numpy as np

from components.stem import IMAGE_SIDE, MAX_PIXEL, as_images, flatten

_CENTRE = (IMAGE_SIDE - 1) / 2
_ROWS, _COLS = np.mgrid[:IMAGE_SIDE, :IMAGE_SIDE].astype(np.float32)


def deskew(images: np.ndarray) -> np.ndarray:
    """Straighten slanted digits: shear each image so its ink's principal axis is upright.

    The classic moment-based deskewing (LeCun et al.'s MNIST table): from the ink's
    centre of mass and its row/column covariance, shear columns by
    ``alpha = cov(row, col) / var(row)`` and move the centre of mass to the image's
    centre. Deterministic, no fitted state; returns ``uint8 [N, 28, 28]``.
    """
    images = as_images(images)
    pixels = images.astype(np.float32)
    rows, cols = _ROWS, _COLS
    mass = pixels.sum(axis=(1, 2))
    blank = mass == 0
    mass[blank] = 1.0
    mean_r = (pixels * rows).sum(axis=(1, 2)) / mass
    mean_c = (pixels * cols).sum(axis=(1, 2)) / mass
    dr = rows[None] - mean_r[:, None, None]
    dc = cols[None] - mean_c[:, None, None]
    var_r = (pixels * dr * dr).sum(axis=(1, 2)) / mass
    cov_rc = (pixels * dr * dc).sum(axis=(1, 2)) / mass
    alpha = np.where(var_r > 1e-6, cov_rc / np.maximum(var_r, 1e-6), 0.0)
    alpha[blank] = 0.0
    # Output pixel (i, j) samples input (i + off_r, j + alpha * (i - c) + off_c):
    # rows keep their place, columns shear about the centre of mass.
    off_r = mean_r - _CENTRE
    off_c = mean_c - _CENTRE - alpha * _CENTRE
    src_r = rows[None] + off_r[:, None, None]
    src_c = cols[None] + alpha[:, None, None] * rows[None] + off_c[:, None, None]
    out = sample_bilinear(pixels, src_r, src_c)
    return np.clip(np.rint(out), 0, MAX_PIXEL).astype(np.uint8)


def sample_bilinear(pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``pixels[n]`` at fractional ``(rows[n], cols[n])``, bilinear; 0 outside the image.

    What ``scipy.ndimage.map_coordinates(order=1, mode="constant")`` computes, to
    the bit (tests/test_stem.py compares them; all 70,000 MNIST digits deskew
    identically), in numpy alone: the serving image carries no SciPy. A point
    outside ``[0, 27]`` on either axis is 0, like SciPy's.
    """
    n, height, width = pixels.shape
    inside = (rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)
    top = np.clip(np.floor(rows), 0, height - 1).astype(np.intp)
    left = np.clip(np.floor(cols), 0, width - 1).astype(np.intp)
    bottom, right = np.minimum(top + 1, height - 1), np.minimum(left + 1, width - 1)
    down = (rows - top).astype(np.float64)  # weights in float64, as SciPy's
    across = (cols - left).astype(np.float64)
    image = np.arange(n)[:, None, None]
    values = pixels.astype(np.float64)
    out = (values[image, top, left] * (1 - down) * (1 - across)
           + values[image, top, right] * (1 - down) * across
           + values[image, bottom, left] * down * (1 - across)
           + values[image, bottom, right] * down * across)
    return np.where(inside, out, 0.0).astype(np.float32)


#: Gradient histograms: cells of CELL×CELL pixels, ORIENTATIONS unsigned directions.
CELL, ORIENTATIONS = 4, 8
_CELL_OF_PIXEL = ((np.arange(IMAGE_SIDE) // CELL)[:, None] * (IMAGE_SIDE // CELL)
                  + (np.arange(IMAGE_SIDE) // CELL)[None, :])
#: The deskewed digit's intensities, averaged over POOL×POOL blocks (its coarse shape).
POOL = 2


def gradient_histograms(pixels: np.ndarray) -> np.ndarray:
    """HOG-like features: per cell, the stroke-edge strength in each direction.

    From ``float32 [N, 28, 28]`` intensities: the gradient's magnitude is summed
    per CELL×CELL cell into ORIENTATIONS bins of its direction modulo 180°. A
    tree splitting on "how much vertical edge is in this region" sees strokes
    instead of single pixels, and small shifts move little mass between cells.
    Returns ``float32 [N, (28/CELL)² × ORIENTATIONS]``.
    """
    n, cells = len(pixels), IMAGE_SIDE // CELL
    d_row, d_col = np.gradient(pixels, axis=(1, 2))
    magnitude = np.hypot(d_row, d_col)
    direction = np.arctan2(d_row, d_col) % np.pi
    bins = np.minimum((direction * (ORIENTATIONS / np.pi)).astype(np.int64), ORIENTATIONS - 1)
    # One weighted count over (image, cell, direction) instead of a pass per direction.
    slot = (_CELL_OF_PIXEL * ORIENTATIONS + bins
            + (np.arange(n) * cells * cells * ORIENTATIONS)[:, None, None])
    counts = np.bincount(slot.ravel(), weights=magnitude.ravel(),
                         minlength=n * cells * cells * ORIENTATIONS)
    return counts.astype(np.float32).reshape(n, cells * cells * ORIENTATIONS)


def pooled(pixels: np.ndarray, size: int = POOL) -> np.ndarray:
    """Mean of each size×size block: ``float32 [N, (28/size)²]``."""
    n, blocks = len(pixels), IMAGE_SIDE // size
    return pixels.reshape(n, blocks, size, blocks, size).mean(axis=(2, 4)).reshape(n, -1)


def raw_rows(images: np.ndarray) -> np.ndarray:
    """The 784 scaled pixels, as the shared stem gives them."""
    return flatten(images)


def deskewed_rows(images: np.ndarray) -> np.ndarray:
    """The 784 scaled pixels of the deskewed digit."""
    return flatten(deskew(images))


def hog_rows(images: np.ndarray) -> np.ndarray:
    """Gradient histograms plus the pooled shape of the deskewed digit (588 features)."""
    pixels = flatten(deskew(images)).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return np.concatenate([gradient_histograms(pixels), pooled(pixels)], axis=1)


#: The feature sets a model family may name in its ``features`` parameter; each maps
#: canonical images to ``float32 [N, D]`` rows.
FEATURES = {"raw": raw_rows, "deskew": deskewed_rows, "hog": hog_rows}


def feature_rows(name: str):
    """The function computing feature set ``name`` (:data:`FEATURES`)."""
    try:
        return FEATURES[name]
    except KeyError:
        raise ValueError(f"unknown feature set {name!r}; choose from "
                         f"{sorted(FEATURES)}") from None
