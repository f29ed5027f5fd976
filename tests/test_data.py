"""Data behaviour: loaders on good and corrupt files, deterministic stratified splits."""

from __future__ import annotations

import gzip
import http.server
import struct
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from components.data import (
    SPLITS,
    Dataset,
    add_feedback,
    build_dataset,
    content_holdout_mask,
    ingest,
    stratified_indices,
)
from components.datafiles import (
    MNIST_FILES,
    DataError,
    Source,
    download_mnist,
    load_idx,
    load_kaggle_csv,
    load_mnist,
    parse_idx,
    resolve_mnist_dir,
    write_idx,
)
from components.settings import Settings

# Counts per digit published with the dataset (../shared/data/mnist/README.md).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_genuine_mnist_loads_with_published_counts(mnist):
    x_train, y_train, x_test, y_test, source = mnist
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(y_test).tolist() == TEST_COUNTS
    assert set(source.files) == set(MNIST_FILES)


def _copy_mnist(mnist, directory: Path, n: int = 50) -> Path:
    x_train, y_train, x_test, y_test, _ = mnist
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(MNIST_FILES, (x_train[:n], y_train[:n], x_test[:n], y_test[:n]),
                           strict=True):
        write_idx(directory / name, array)
    return directory


def test_checksums_reject_files_that_are_not_the_published_mnist(mnist, tmp_path):
    directory = _copy_mnist(mnist, tmp_path / "subset")
    with pytest.raises(DataError, match="checksum mismatch"):
        load_mnist(directory)
    x_train, *_ = load_mnist(directory, verify_checksums=False)
    assert x_train.shape == (50, 28, 28)


def _idx_bytes(array: np.ndarray) -> bytes:
    path_header = (struct.pack(">IIII", 2051, *array.shape) if array.ndim == 3
                   else struct.pack(">II", 2049, len(array)))
    return path_header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw[:-10], "truncated"),
        (lambda raw: raw + b"\x00", "trailing data"),
        (lambda raw: struct.pack(">I", 2050) + raw[4:], "bad magic number 2050"),
        (lambda raw: raw[:8] + struct.pack(">II", 28, 27) + raw[16:], "28x27"),
        (lambda raw: raw[:5], "too short"),
    ],
)
def test_corrupt_idx_is_rejected(mutate, message, tiny_dataset):
    raw = _idx_bytes(tiny_dataset.x_train[:5])
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(raw))


def test_labels_outside_digits_are_rejected():
    raw = _idx_bytes(np.array([1, 2, 12]))
    with pytest.raises(DataError, match="label 12"):
        parse_idx(raw)


def test_truncated_gzip_is_a_data_error(tmp_path, tiny_dataset):
    path = tmp_path / "images.gz"
    write_idx(path, tiny_dataset.x_train[:20])
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="cannot read"):
        load_idx(path)


def test_missing_mnist_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing MNIST files"):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------- CSV


def _write_csv(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    header = (["label"] if labels is not None else []) + [f"pixel{i}" for i in range(784)]
    rows = [",".join(header)]
    for i, image in enumerate(images.reshape(len(images), -1)):
        cells = ([str(labels[i])] if labels is not None else []) + [str(v) for v in image]
        rows.append(",".join(cells))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_kaggle_csv_round_trips_real_digits(tmp_path, tiny_dataset):
    x, y = tiny_dataset.x_train[:40], tiny_dataset.y_train[:40]
    images, labels = load_kaggle_csv(_write_csv(tmp_path / "train.csv", x, y))
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    test_images, none = load_kaggle_csv(_write_csv(tmp_path / "test.csv", x, None),
                                        labelled=False)
    assert none is None and test_images.shape == (40, 28, 28)


@pytest.mark.parametrize(
    ("line", "cell", "value", "message"),
    [
        (3, 5, "abc", "line 3: not an integer"),
        (4, 100, "256", "line 4: pixel99 = 256 outside 0..255"),
        (2, 7, "-1", "line 2: pixel6 = -1 outside"),
        (5, 0, "10", "line 5: label 10 outside 0..9"),
        (3, 5, "1.5", "line 3: not an integer"),
    ],
)
def test_bad_csv_cells_are_reported_with_their_line(tmp_path, tiny_dataset, line, cell, value,
                                                    message):
    path = _write_csv(tmp_path / "train.csv", tiny_dataset.x_train[:5], tiny_dataset.y_train[:5])
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split(",")
    cells[cell] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=message):
        load_kaggle_csv(path)


def test_csv_with_a_missing_column_names_the_line(tmp_path, tiny_dataset):
    path = _write_csv(tmp_path / "train.csv", tiny_dataset.x_train[:3], tiny_dataset.y_train[:3])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 3: 784 columns, expected 785"):
        load_kaggle_csv(path)


def test_csv_header_must_match(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="line 1: header"):
        load_kaggle_csv(path)


def test_csv_source_keeps_a_content_frozen_holdout(tmp_path, tiny_dataset):
    x, y = tiny_dataset.x_train, tiny_dataset.y_train
    path = _write_csv(tmp_path / "train.csv", x, y)
    first = ingest("kaggle-csv", seed=0, csv_path=path)
    order = np.random.default_rng(1).permutation(len(y))
    shuffled = ingest("kaggle-csv", seed=7, csv_path=_write_csv(tmp_path / "s.csv", x[order],
                                                               y[order]))
    assert first.manifest["holdout_sha256"] != ""
    # Same digits in the holdout whatever the row order or seed.
    as_set = {img.tobytes() for img in first.x_holdout}
    assert as_set == {img.tobytes() for img in shuffled.x_holdout}
    assert 0.04 < len(first.y_holdout) / len(y) < 0.16


# --------------------------------------------------------------------------- splits


def test_stratified_subset_keeps_class_proportions(mnist):
    labels = mnist[1]
    chosen = stratified_indices(labels, 1000, seed=3)
    assert len(chosen) == 1000 == len(set(chosen))
    share = np.bincount(labels[chosen], minlength=10) / 1000
    np.testing.assert_allclose(share, np.bincount(labels) / len(labels), atol=0.002)


def test_splits_are_deterministic_and_disjoint(mnist):
    x_train, y_train, x_test, y_test, source = mnist
    pool = slice(0, 6000)
    a = build_dataset(x_train[pool], y_train[pool], x_test, y_test, source, seed=5)
    b = build_dataset(x_train[pool], y_train[pool], x_test, y_test, source, seed=5)
    c = build_dataset(x_train[pool], y_train[pool], x_test, y_test, source, seed=6)
    np.testing.assert_array_equal(a.x_validation, b.x_validation)
    assert not np.array_equal(a.y_validation, c.y_validation)
    train = {img.tobytes() for img in a.x_train}
    assert not train & {img.tobytes() for img in a.x_validation}
    assert a.manifest["sizes"] == {"train": 5500, "validation": 500, "holdout": 10000}


def test_train_size_subsamples_without_moving_validation(mnist):
    x_train, y_train, x_test, y_test, source = mnist
    full = build_dataset(x_train, y_train, x_test, y_test, source, seed=0)
    small = build_dataset(x_train, y_train, x_test, y_test, source, seed=0, train_size=2000)
    assert len(small.y_train) == 2000
    np.testing.assert_array_equal(full.y_validation, small.y_validation)
    assert small.manifest["holdout_sha256"] == full.manifest["holdout_sha256"]
    with pytest.raises(DataError, match="at least 10"):
        build_dataset(x_train, y_train, x_test, y_test, source, seed=0, train_size=3)


def test_content_holdout_mask_ignores_row_order(tiny_dataset):
    images = tiny_dataset.x_train
    order = np.random.default_rng(0).permutation(len(images))
    mask = content_holdout_mask(images, 0.1)
    np.testing.assert_array_equal(mask[order], content_holdout_mask(images[order], 0.1))


def test_dataset_save_load_round_trip(tiny_dataset, tmp_path):
    tiny_dataset.save(tmp_path / "ds")
    loaded = Dataset.load(tmp_path / "ds")
    np.testing.assert_array_equal(loaded.x_holdout, tiny_dataset.x_holdout)
    assert loaded.manifest == tiny_dataset.manifest


def test_ingest_mnist_manifest_records_the_files(mnist_dir):
    dataset = ingest("mnist", seed=0, mnist_dir=mnist_dir, train_size=500)
    manifest = dataset.manifest
    assert manifest["source"] == "mnist" and manifest["seed"] == 0
    assert set(manifest["files_sha256"]) == set(MNIST_FILES)
    assert manifest["sizes"]["holdout"] == 10000
    assert sum(manifest["class_counts"]["train"].values()) == 500


# --------------------------------------------------------------------------- location


@pytest.fixture
def http_mirror(mnist_dir, tmp_path):
    """A real local HTTP server serving a copy of the MNIST files (one can be corrupted)."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name in MNIST_FILES:
        (root / name).write_bytes((mnist_dir / name).read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()


def test_download_verifies_and_keeps_good_files(http_mirror, tmp_path):
    url, _ = http_mirror
    directory = download_mnist(tmp_path / "cache", url)
    assert sorted(p.name for p in directory.iterdir()) == sorted(MNIST_FILES)
    assert load_mnist(directory)[0].shape == (60000, 28, 28)


def test_download_of_a_corrupted_file_leaves_nothing_behind(http_mirror, tmp_path):
    url, root = http_mirror
    name = "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress((root / name).read_bytes())
    (root / name).write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    with pytest.raises(DataError, match="checksum mismatch"):
        download_mnist(tmp_path / "cache", url)
    assert not (tmp_path / "cache" / name).exists()
    assert not list((tmp_path / "cache").glob(".*"))


def test_resolution_order_override_env_cache(tmp_path, mnist_dir):
    settings = Settings(mnist_dir=tmp_path / "env", cache_dir=tmp_path / "cache",
                        mnist_url="http://127.0.0.1:9/unreachable/")
    assert resolve_mnist_dir(mnist_dir, settings) == mnist_dir
    assert resolve_mnist_dir(None, settings) == tmp_path / "env"
    cache = Settings(mnist_dir=None, cache_dir=tmp_path / "cache", mnist_url="http://127.0.0.1:9/")
    with pytest.raises(DataError, match="cannot download"):
        resolve_mnist_dir(None, cache)


# --------------------------------------------------------------------------- feedback


def _feedback(images, labels, *, minutes_ago: float = 0.0):
    from datetime import datetime, timedelta, timezone

    from components.feedback import FeedbackItem

    now = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    return [FeedbackItem.create(image, int(label), now=now)
            for image, label in zip(images, labels, strict=True)]


def test_feedback_joins_training_only_deduplicated_and_outside_what_judges(tiny_dataset):
    dataset = build_dataset(
        tiny_dataset.x_train, tiny_dataset.y_train, tiny_dataset.x_holdout,
        tiny_dataset.y_holdout, Source("mnist", "test", {}), seed=0)
    before = {name: dataset.split(name)[0].copy() for name in SPLITS}
    fresh = np.stack([np.roll(image, 1, axis=1) for image in tiny_dataset.x_validation[:5]])
    items = (_feedback(fresh, [1, 2, 3, 4, 5], minutes_ago=5)
             + _feedback(fresh[:1], [7])                       # a later correction wins
             + _feedback(tiny_dataset.x_holdout[:2], [0, 0])   # holdout digits: never trained on
             + _feedback(dataset.x_validation[:1], [0]))       # nor validation ones
    add_feedback(dataset, items, cap=0.5, weight=2)

    manifest = dataset.manifest["feedback"]
    assert manifest == {**manifest, "received": 9, "unique": 8, "used": 5, "weight": 2,
                        "dropped_overlap": 3, "dropped_cap": 0}
    assert len(dataset.y_train) == len(before["train"]) + 10
    assert dataset.manifest["sizes"]["train"] == len(dataset.y_train)
    assert np.array_equal(dataset.x_validation, before["validation"])
    assert np.array_equal(dataset.x_holdout, before["holdout"])
    assert sorted(dataset.y_feedback.tolist()) == [2, 3, 4, 5, 7]
    added = dataset.x_train[len(before["train"]):]
    assert {tuple(image.ravel()) for image in added} == {tuple(image.ravel()) for image in fresh}


def test_feedback_is_capped_newest_first_and_recorded_by_digest(tiny_dataset, tmp_path):
    def fresh_dataset():
        return build_dataset(tiny_dataset.x_train[:200], tiny_dataset.y_train[:200],
                             tiny_dataset.x_holdout, tiny_dataset.y_holdout,
                             Source("mnist", "test", {}), seed=0)

    old = _feedback(255 - tiny_dataset.x_train[:10], range(10), minutes_ago=60)
    new = _feedback(255 - tiny_dataset.x_train[10:20], range(10))
    capped = add_feedback(fresh_dataset(), old + new, cap=0.05, weight=1)  # 5% of 183 train
    assert capped.manifest["feedback"]["used"] == 9
    assert capped.manifest["feedback"]["dropped_cap"] == 11
    newest = {tuple(item.image.ravel()) for item in new}
    assert all(tuple(image.ravel()) in newest for image in capped.x_feedback)

    again = add_feedback(fresh_dataset(), list(reversed(old + new)), cap=0.05, weight=1)
    assert again.manifest["feedback"]["sha256"] == capped.manifest["feedback"]["sha256"]
    assert np.array_equal(again.x_train, capped.x_train)
    capped.save(tmp_path / "d")
    loaded = Dataset.load(tmp_path / "d")
    assert np.array_equal(loaded.x_feedback, capped.x_feedback)
    with pytest.raises(DataError, match="--feedback-weight must be at least 1"):
        add_feedback(fresh_dataset(), new, cap=0.1, weight=0)
