"""The preprocessing stem shared by training and serving.

Every model sees pixels only through :func:`preprocess`, and every entry point
(the ingest stage, the HTTP server, the Kaggle job) turns its input into the
canonical ``uint8 [N, 28, 28]`` form through :func:`as_images`. Keeping both
here means training and serving cannot drift apart.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
MAX_PIXEL = 255


class InputError(ValueError):
    """Pixels that cannot be a batch of MNIST digits; the message says why."""


def as_images(pixels: np.ndarray | list) -> np.ndarray:
    """Validate pixels and return them as ``uint8 [N, 28, 28]``.

    Accepts ``[N, 784]``, ``[N, 28, 28]``, ``[784]`` or ``[28, 28]`` of any
    numeric dtype holding whole numbers in 0..255. Anything else raises
    :class:`InputError` rather than being silently clipped, because a model fed
    rescaled or shifted pixels still answers, just wrongly.
    """
    array = np.asarray(pixels)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise InputError(f"pixels must be numbers, got dtype {array.dtype}")
    if array.ndim in (1, 2) and array.shape in ((NUM_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)):
        array = array.reshape(1, *array.shape)
    if array.ndim == 2 and array.shape[1] == NUM_PIXELS:
        array = array.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise InputError(
            f"expected shape [N, {NUM_PIXELS}] or [N, {IMAGE_SIDE}, {IMAGE_SIDE}], "
            f"got {list(array.shape)}"
        )
    if array.shape[0] == 0:
        raise InputError("empty batch: at least one image is needed")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("pixels contain NaN or infinity")
        if not np.array_equal(array, np.round(array)):
            raise InputError("pixels must be whole numbers in 0..255 (not scaled to 0..1)")
    low, high = array.min(), array.max()
    if low < 0 or high > MAX_PIXEL:
        raise InputError(f"pixel values must lie in 0..{MAX_PIXEL}, got {low}..{high}")
    return array.astype(np.uint8)


def preprocess(images: np.ndarray) -> np.ndarray:
    """Scale validated images to ``float32 [N, 28, 28, 1]`` in 0..1, the models' input."""
    return (as_images(images).astype(np.float32) / MAX_PIXEL)[..., np.newaxis]


def flatten(images: np.ndarray) -> np.ndarray:
    """Preprocessed images as ``float32 [N, 784]`` rows, for the tree and linear models."""
    return preprocess(images).reshape(-1, NUM_PIXELS)
