"""Uploaded pictures of digits → MNIST-format pixels.

MNIST digits are white on black, size-normalised so the ink's bounding box
fits 20×20 (aspect ratio kept, anti-aliased), then placed in a 28×28 field
with their centre of mass at the centre. A photo or a canvas drawing is none
of that, so :func:`to_mnist` re-creates those steps; every result goes
through :func:`components.stem.as_images`, the same gate training data passed.

Run on MNIST's own digits saved as PNG, the steps are (almost) the identity:
the bounding box is already 20 pixels on its long side and the centre of mass
already within half a pixel of (14, 14). That is what the tests check.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from components.stem import IMAGE_SIDE, MAX_PIXEL, as_images

#: The long side of the ink's bounding box after size normalisation (MNIST: 20).
BOX_SIDE = 20
#: Where MNIST puts the centre of mass (row, column), measured on its test set: 14.0, 14.0.
CENTRE = 14.0
#: Ink (0..1, after background removal) that counts when finding the bounding box.
#: MNIST's box is 20 pixels at every threshold up to ~0.25, so 0.25 keeps it while
#: ignoring paper texture and JPEG noise.
CORE_INK = 0.25
#: Pixels kept around the core box (in 28×28 units), for the anti-aliased edges.
MARGIN = 2
#: Least difference between ink and background (0..255) for an image to hold a digit.
MIN_CONTRAST = 32
#: Bicubic (antialiased when shrinking) came closest to MNIST's own normalisation
#: in a comparison with box, bilinear, Hamming and Lanczos on upscaled MNIST digits.
RESAMPLE = Image.Resampling.BICUBIC
#: Larger pictures are shrunk to this long side first: a digit filling even a
#: twentieth of the frame still spans ~50 pixels, and memory stays bounded.
WORKING_SIDE = 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
#: Content types of the formats decoded here.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/pjpeg")


class ImageError(ValueError):
    """Bytes that are not a usable picture of a digit; the message says why."""


class TooMuchWork(ImageError):
    """An upload whose decoding would cost more than one request may (pixels or time)."""


def open_image(data: bytes, *, max_pixels: int = 16_000_000) -> Image.Image:
    """Read a PNG or JPEG's header only: its format and size, refused before any decoding.

    The format is checked from the magic bytes, not trusted from a filename or
    header, and the size from the header, so a decompression bomb costs nothing.
    """
    if not data:
        raise ImageError("empty image file")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise ImageError("not a PNG or JPEG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ImageError(f"cannot decode image: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise TooMuchWork(f"image too large: {width}x{height} pixels (limit {max_pixels})")
    return image


def load(image: Image.Image) -> Image.Image:
    """Decode an image :func:`open_image` accepted, shrunk to at most ``WORKING_SIDE``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if max(image.size) > WORKING_SIDE:
                # JPEG can decode straight to a smaller scale; then shrink the rest.
                image.draft(image.mode, (WORKING_SIDE, WORKING_SIDE))
            image.load()
            image = ImageOps.exif_transpose(image)
            if max(image.size) > WORKING_SIDE:
                image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ImageError(f"cannot decode image: {error}") from error


def decode(data: bytes, *, max_pixels: int = 16_000_000) -> Image.Image:
    """Open PNG or JPEG bytes fully, refusing other formats, truncation and huge images."""
    return load(open_image(data, max_pixels=max_pixels))


def grayscale(image: Image.Image) -> np.ndarray:
    """Luminance as ``float32 [H, W]`` in 0..255, with transparency resolved.

    A transparent background (a canvas export, a sticker) has no colour of its
    own; it is filled with the opposite of the ink's colour so the digit stays
    visible whichever colour it was drawn in. 16-bit images are scaled, not
    clipped.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if array.max(initial=0) > MAX_PIXEL else float(MAX_PIXEL)
        return array * (MAX_PIXEL / top)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32)
    luminance, alpha = (np.asarray(band, dtype=np.float32)
                        for band in image.convert("LA").split())
    alpha /= MAX_PIXEL
    opaque = alpha > 0.5
    ink_is_dark = not opaque.any() or float(luminance[opaque].mean()) < MAX_PIXEL / 2
    background = float(MAX_PIXEL) if ink_is_dark else 0.0
    return luminance * alpha + background * (1 - alpha)


def _border(array: np.ndarray) -> np.ndarray:
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """One grayscale picture (``[H, W]``, 0..255) → ``uint8 [28, 28]`` the MNIST way."""
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ImageError(f"expected a 2-D image, got shape {list(gray.shape)}")
    # MNIST is light ink on a dark field; the border tells which one we have.
    if float(np.median(_border(gray))) > MAX_PIXEL / 2:
        gray = MAX_PIXEL - gray
    background = float(np.median(_border(gray)))
    peak = float(gray.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError("no digit found: the image is blank or has too little contrast")
    ink = np.clip((gray - background) / (peak - background), 0.0, 1.0)
    # Paper texture and JPEG noise: drop what is no brighter than the border's noise.
    floor = min(float(np.percentile(_border(ink), 99)), CORE_INK)
    if floor > 0:
        ink = np.where(ink > floor, (ink - floor) / (1 - floor), 0.0).astype(np.float32)

    rows = np.flatnonzero((ink > CORE_INK).any(axis=1))
    cols = np.flatnonzero((ink > CORE_INK).any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    scale = BOX_SIDE / max(height, width)
    margin = math.ceil(MARGIN / scale)
    top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, ink.shape[0])
    left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, ink.shape[1])
    crop = ink[top:bottom, left:right]

    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    if size != (crop.shape[1], crop.shape[0]):
        resized = Image.fromarray(crop.astype(np.float32, copy=False)).resize(size, RESAMPLE)
        crop = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    crop = crop[:IMAGE_SIDE, :IMAGE_SIDE]

    total = float(crop.sum())
    row_mass = float((crop.sum(axis=1) * np.arange(crop.shape[0])).sum()) / total
    col_mass = float((crop.sum(axis=0) * np.arange(crop.shape[1])).sum()) / total
    y0 = min(max(round(CENTRE - row_mass), 0), IMAGE_SIDE - crop.shape[0])
    x0 = min(max(round(CENTRE - col_mass), 0), IMAGE_SIDE - crop.shape[1])
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    field[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return np.rint(field * MAX_PIXEL).astype(np.uint8)


def image_to_mnist(data: bytes, *, max_pixels: int = 16_000_000) -> np.ndarray:
    """PNG/JPEG bytes → ``uint8 [28, 28]``, ready for any model."""
    return to_mnist(grayscale(decode(data, max_pixels=max_pixels)))


def uploads_to_mnist(blobs: Sequence[bytes], names: Sequence[str], *, max_pixels: int,
                     max_total_pixels: int, timeout_s: float) -> np.ndarray:
    """Several uploads → ``uint8 [N, 28, 28]``, with the work of the whole request bounded.

    Every header is read first: one image over ``max_pixels`` or all of them
    together over ``max_total_pixels`` refuses the request before a single
    pixel is decoded (a 6 KB PNG can declare 25 million pixels). Decoding then
    stops once it has taken ``timeout_s``, between images.
    """
    def named(error: ImageError, name: str) -> ImageError:
        kind = type(error)
        return kind(f"{name}: {error}") if len(blobs) > 1 else error

    opened = []
    total = 0
    for blob, name in zip(blobs, names, strict=True):
        try:
            image = open_image(blob, max_pixels=max_pixels)
        except ImageError as error:
            raise named(error, name) from error
        total += image.size[0] * image.size[1]
        if total > max_total_pixels:
            raise TooMuchWork(f"the images hold more than {max_total_pixels} pixels together "
                              f"(DIGITS_MAX_REQUEST_PIXELS); send fewer or smaller ones")
        opened.append(image)
    deadline = time.monotonic() + timeout_s
    pictures = []
    for image, name in zip(opened, names, strict=True):
        if time.monotonic() > deadline:
            raise TooMuchWork(f"decoding the images took longer than {timeout_s:g} s "
                              "(DIGITS_DECODE_TIMEOUT_S); send fewer or smaller ones")
        try:
            pictures.append(to_mnist(grayscale(load(image))))
        except ImageError as error:
            raise named(error, name) from error
    return as_images(np.stack(pictures))
