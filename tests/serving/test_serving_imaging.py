"""Pictures → MNIST format: MNIST's own digits come back (almost) unchanged, others normalised."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.imaging import ImageError, decode, grayscale, image_to_mnist, to_mnist
from tests.serving.helpers import jpeg_bytes, png_bytes


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def box(image: np.ndarray, threshold: int = 64) -> tuple[int, int]:
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_mnist_digits_come_back_nearly_unchanged(mnist):
    images = mnist[2][:200]
    out = np.stack([image_to_mnist(png_bytes(img)) for img in images])
    exact = np.mean([(a == b).all() for a, b in zip(out, images, strict=True)])
    assert exact >= 0.8
    assert np.abs(out.astype(int) - images).mean() < 2.0


def test_scan_like_pictures_are_normalised_like_mnist(mnist, trained):
    """10x larger, dark on light, as PNG and JPEG: same size, place and (mostly) answer."""
    images = mnist[2][:100]
    model = trained["baseline"].model  # a smooth model: small pixel changes, same answer
    for encode in (png_bytes, jpeg_bytes):
        big = [255 - np.asarray(Image.fromarray(img).resize((280, 280),
                                                            Image.Resampling.BILINEAR))
               for img in images]
        out = np.stack([image_to_mnist(encode(img)) for img in big])
        assert (model.predict(out) == model.predict(images)).mean() >= 0.9
        for digit in out[:20]:
            assert max(box(digit)) in (19, 20, 21)
            row, col = centre_of_mass(digit.astype(float))
            assert abs(row - 14) <= 0.75 and abs(col - 14) <= 0.75


def test_small_off_centre_digit_on_grey_paper_is_found(mnist):
    digit = mnist[2][0]
    page = np.full((600, 400), 200, dtype=np.uint8)
    small = np.asarray(Image.fromarray(digit).resize((56, 56), Image.Resampling.BILINEAR))
    page[40:96, 300:356] = 200 - small.astype(int) * 180 // 255
    out = image_to_mnist(jpeg_bytes(page, quality=85))
    assert max(box(out)) in (19, 20, 21)
    row, col = centre_of_mass(out.astype(float))
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert out.max() >= 240 and out[0].max() == 0


def test_transparent_canvas_exports():
    """Black strokes on a transparent background (what many canvases export)."""
    rgba = np.zeros((200, 200, 4), dtype=np.uint8)
    rgba[40:160, 95:110] = (0, 0, 0, 255)  # a "1"
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    out = image_to_mnist(buffer.getvalue())
    assert box(out)[0] == 20 and out.max() == 255
    # White strokes on transparent work too.
    rgba[..., :3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    assert box(image_to_mnist(buffer.getvalue()))[0] == 20


def test_sixteen_bit_and_palette_images(mnist):
    digit = mnist[2][1]
    buffer = io.BytesIO()
    Image.fromarray(digit.astype(np.uint16) * 257).save(buffer, "PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    sixteen = image_to_mnist(buffer.getvalue())
    assert np.abs(sixteen.astype(int) - digit).mean() < 2
    palette = image_to_mnist(png_bytes(digit, mode="P"))
    assert np.abs(palette.astype(int) - digit).mean() < 2


def test_huge_picture_is_shrunk_first():
    page = np.full((3000, 2000), 255, dtype=np.uint8)
    page[500:2500, 900:1200] = 0
    out = image_to_mnist(png_bytes(page))
    assert box(out)[0] == 20


@pytest.mark.parametrize(("data", "words"), [
    (b"", "empty"),
    (b"plain text", "not a PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "cannot decode"),
])
def test_undecodable_bytes(data, words):
    with pytest.raises(ImageError, match=words):
        decode(data)


def test_limits_and_blank_images():
    with pytest.raises(ImageError, match="too large"):
        decode(png_bytes(np.zeros((1000, 1000), np.uint8)), max_pixels=999_999)
    for value in (0, 255, 128):
        with pytest.raises(ImageError, match="no digit"):
            to_mnist(grayscale(decode(png_bytes(np.full((40, 40), value, np.uint8)))))
