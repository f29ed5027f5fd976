"""Model-specific transforms of canonical images, applied inside a model family.

The shared stem (:mod:`components.stem`) is the one entry point for raw pixels;
what a family adds on top lives here and is named in the saved model's
parameters, so whoever loads the model (the server, the Kaggle job, the gate)
applies exactly what training applied.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from components.stem import IMAGE_SIDE, MAX_PIXEL, as_images

_CENTRE = (IMAGE_SIDE - 1) / 2


def deskew(images: np.ndarray) -> np.ndarray:
    """Straighten slanted digits: shear each image so its ink's principal axis is upright.

    The classic moment-based deskewing (LeCun et al.'s MNIST table): from the ink's
    centre of mass and its row/column covariance, shear columns by
    ``alpha = cov(row, col) / var(row)`` and move the centre of mass to the image's
    centre. Deterministic, no fitted state; returns ``uint8 [N, 28, 28]``.
    """
    images = as_images(images)
    pixels = images.astype(np.float32)
    rows, cols = np.mgrid[:IMAGE_SIDE, :IMAGE_SIDE].astype(np.float32)
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
    n = len(images)
    src_r = rows[None] + off_r[:, None, None]
    src_c = cols[None] + alpha[:, None, None] * rows[None] + off_c[:, None, None]
    src_n = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], src_r.shape)
    out = ndimage.map_coordinates(pixels, [src_n, src_r, src_c], order=1, mode="constant")
    return np.clip(np.rint(out), 0, MAX_PIXEL).astype(np.uint8)


#: The feature transforms a model family may name in its ``features`` parameter.
TRANSFORMS = {"raw": as_images, "deskew": deskew}


def transform(name: str):
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown feature transform {name!r}; choose from "
                         f"{sorted(TRANSFORMS)}") from None
