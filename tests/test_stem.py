"""The shared preprocessing stem: what every model and the server see."""

from __future__ import annotations

import numpy as np
import pytest

from components.stem import InputError, as_images, flatten, preprocess


@pytest.mark.parametrize("shape", [(3, 784), (3, 28, 28), (784,), (28, 28)])
def test_accepted_shapes_become_uint8_batches(shape):
    pixels = np.arange(np.prod(shape)).reshape(shape) % 256
    images = as_images(pixels)
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    np.testing.assert_array_equal(images.reshape(-1), pixels.reshape(-1))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((2, 783)), "expected shape"),
        (np.zeros((0, 784)), "empty batch"),
        (np.full((1, 784), 256), "0..255"),
        (np.full((1, 784), -1), "0..255"),
        (np.full((1, 784), np.nan), "NaN"),
        (np.full((1, 784), 0.5), "whole numbers"),
        (np.array([["a"] * 784]), "numbers"),
    ],
)
def test_bad_pixels_are_refused_not_clipped(pixels, message):
    with pytest.raises(InputError, match=message):
        as_images(pixels)


def test_preprocess_scales_to_unit_range_for_every_model(tiny_dataset):
    x = tiny_dataset.x_train[:8]
    scaled = preprocess(x)
    assert scaled.shape == (8, 28, 28, 1) and scaled.dtype == np.float32
    assert scaled.max() == 1.0 and scaled.min() == 0.0
    np.testing.assert_array_equal(flatten(x), scaled.reshape(8, 784))
    # Float input holding whole numbers means the same digits.
    np.testing.assert_array_equal(preprocess(x.astype(np.float64)), scaled)


def test_deskew_samples_exactly_as_scipy_does(mnist):
    """The features sample in numpy (the serving image has no SciPy); on genuine digits
    and on points inside, at and beyond the edges, the answer is SciPy's to the bit."""
    from scipy import ndimage

    from components.features import deskew, sample_bilinear

    x_train, _, x_test, _, _ = mnist
    rng = np.random.default_rng(0)
    pixels = np.concatenate([x_train[:1000], x_test[:1000]]).astype(np.float32)
    rows = rng.uniform(-3, 30, pixels.shape).astype(np.float32)
    cols = rng.uniform(-3, 30, pixels.shape).astype(np.float32)
    rows[:, 0, :4] = [0, 27, -1e-6, 27.000002]  # the edges themselves
    index = np.broadcast_to(np.arange(len(pixels), dtype=np.float32)[:, None, None], rows.shape)
    expected = ndimage.map_coordinates(pixels, [index, rows, cols], order=1, mode="constant")
    np.testing.assert_array_equal(sample_bilinear(pixels, rows, cols), expected)
    straightened = deskew(x_test[:2000])
    assert straightened.dtype == np.uint8 and straightened.shape == (2000, 28, 28)
    assert not np.array_equal(straightened, x_test[:2000])  # it does move the ink
