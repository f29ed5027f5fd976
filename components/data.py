"""Splitting digits into train, validation and a frozen holdout, and versioning them.

A :class:`Dataset` is what the ingest stage hands to every later stage: train,
validation and a *frozen* holdout, plus a manifest (source, file checksums,
sizes, seed) that is copied into every registered model's metadata, so a model
can always be traced back to the exact bytes it learned from. Reading the
files themselves is :mod:`components.datafiles`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.contract import MANIFEST_FILE
from components.datafiles import (
    DataError,
    Source,
    load_kaggle_csv,
    load_mnist,
    resolve_mnist_dir,
    sha256_file,
)
from components.stem import IMAGE_SIDE

#: Share of a labelled CSV kept aside as the frozen holdout.
CSV_HOLDOUT_FRACTION = 0.1
#: Share of the training pool used for validation (model selection and early stopping).
VALIDATION_FRACTION = 1 / 12  # 5,000 of MNIST's 60,000
DATA_FILE = "data.npz"
SPLITS = ("train", "validation", "holdout")


# --------------------------------------------------------------------------- splits


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced random subset of ``size`` (proportional to class counts)."""
    if size >= len(labels):
        return np.arange(len(labels))
    if size < 1:
        raise DataError(f"subset size must be positive, got {size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * size).astype(int)
    # Hand the remainder to the classes with the largest fractional share.
    remainder = size - quota.sum()
    order = np.argsort(-(counts / counts.sum() * size - quota), kind="stable")
    quota[order[:remainder]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=q, replace=False)
        for cls, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def content_holdout_mask(images: np.ndarray, fraction: float) -> np.ndarray:
    """Mark rows for the holdout by a hash of their pixels, not their position.

    The same digit always lands on the same side, whatever the row order or the
    run's seed, which is what keeps a CSV holdout *frozen* across runs.
    """
    buckets = np.array(
        [int.from_bytes(hashlib.sha256(img.tobytes()).digest()[:4], "big") for img in images]
    )
    return buckets < fraction * 2**32


def _no_images() -> np.ndarray:
    return np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)


def _no_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.uint8)


@dataclass
class Dataset:
    """Train / validation / frozen holdout splits plus their manifest.

    ``x_feedback`` / ``y_feedback`` are the users' feedback digits this run
    trains with (already inside ``x_train``), kept apart too so the report can
    show how each model does on them; empty when there is none.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    manifest: dict
    x_feedback: np.ndarray = field(default_factory=_no_images)
    y_feedback: np.ndarray = field(default_factory=_no_labels)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"{p}_{s}": getattr(self, f"{p}_{s}")
                  for s in (*SPLITS, "feedback") for p in ("x", "y")}
        np.savez(directory / DATA_FILE, **arrays)
        (directory / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Dataset:
        directory = Path(directory)
        with np.load(directory / DATA_FILE) as arrays:
            fields = {key: arrays[key] for key in arrays.files}
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        return cls(**fields, manifest=manifest)


def _split_counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def build_dataset(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_holdout: np.ndarray,
    y_holdout: np.ndarray,
    source: Source,
    *,
    seed: int,
    train_size: int | None = None,
    holdout_size: int | None = None,
) -> Dataset:
    """Split the pool into train and validation (stratified, seeded); subsample if asked.

    The validation split is drawn first and does not depend on ``train_size``, so
    runs with different training budgets are selected on the same digits.
    ``holdout_size`` trims the holdout deterministically (first rows) for quick runs.
    """
    n_val = max(1, round(len(y_pool) * VALIDATION_FRACTION))
    val_idx = stratified_indices(y_pool, n_val, seed)
    rest = np.setdiff1d(np.arange(len(y_pool)), val_idx)
    if train_size is not None:
        if train_size < 10:
            raise DataError(f"--train-size must be at least 10, got {train_size}")
        rest = rest[stratified_indices(y_pool[rest], train_size, seed + 1)]
    if holdout_size is not None:
        x_holdout, y_holdout = x_holdout[:holdout_size], y_holdout[:holdout_size]
    dataset = Dataset(
        x_train=x_pool[rest],
        y_train=y_pool[rest],
        x_validation=x_pool[val_idx],
        y_validation=y_pool[val_idx],
        x_holdout=x_holdout,
        y_holdout=y_holdout,
        manifest={},
    )
    holdout_digest = hashlib.sha256(dataset.x_holdout.tobytes() + dataset.y_holdout.tobytes())
    dataset.manifest = {
        "source": source.kind,
        "location": source.location,
        "files_sha256": source.files,
        "seed": seed,
        "train_size_requested": train_size,
        "sizes": {name: len(dataset.split(name)[1]) for name in SPLITS},
        "class_counts": {name: _split_counts(dataset.split(name)[1]) for name in SPLITS},
        "holdout_sha256": holdout_digest.hexdigest(),
    }
    return dataset


def add_feedback(dataset: Dataset, items: list, *, cap: float, weight: int = 1) -> Dataset:
    """Merge users' feedback digits into the training split only, and say so in the manifest.

    :func:`components.feedback.select_for_training` picks them (unique, none
    that is also a validation or holdout digit, at most ``cap`` of training);
    each is added ``weight`` times. Validation and the frozen holdout are
    untouched, so the gate judges exactly as it would without feedback.
    """
    from components.feedback import image_sha256, select_for_training

    if weight < 1:
        raise DataError(f"--feedback-weight must be at least 1, got {weight}")
    if not 0 <= cap <= 1:
        raise DataError(f"--feedback-cap must be within 0..1, got {cap}")
    judged = np.concatenate([dataset.x_validation, dataset.x_holdout])
    chosen = select_for_training(items, train_size=len(dataset.y_train), cap=cap, weight=weight,
                                 excluded={image_sha256(image) for image in judged})
    dataset.x_feedback, dataset.y_feedback = chosen.images, chosen.labels
    dataset.x_train = np.concatenate([dataset.x_train, np.repeat(chosen.images, weight, axis=0)])
    dataset.y_train = np.concatenate([dataset.y_train, np.repeat(chosen.labels, weight)])
    dataset.manifest["feedback"] = chosen.manifest
    dataset.manifest["sizes"]["train"] = len(dataset.y_train)
    dataset.manifest["class_counts"]["train"] = _split_counts(dataset.y_train)
    return dataset


def ingest(
    source: str,
    *,
    seed: int,
    mnist_dir: Path | None = None,
    csv_path: Path | None = None,
    train_size: int | None = None,
    holdout_size: int | None = None,
    settings=None,
) -> Dataset:
    """The ingest stage's core: read a source and produce a versioned :class:`Dataset`.

    Feedback is merged afterwards (:func:`add_feedback`) by whoever can reach
    the registry: the pipeline's ingest step.
    """
    if source == "mnist":
        from components.settings import get_settings

        directory = resolve_mnist_dir(mnist_dir, settings or get_settings())
        x_train, y_train, x_test, y_test, src = load_mnist(directory)
        return build_dataset(
            x_train, y_train, x_test, y_test, src,
            seed=seed, train_size=train_size, holdout_size=holdout_size,
        )
    if source == "kaggle-csv":
        if csv_path is None:
            raise DataError("the kaggle-csv source needs --csv PATH (Kaggle's train.csv)")
        images, labels = load_kaggle_csv(csv_path)
        holdout = content_holdout_mask(images, CSV_HOLDOUT_FRACTION)
        src = Source("kaggle-csv", str(csv_path), {Path(csv_path).name: sha256_file(csv_path)})
        return build_dataset(
            images[~holdout], labels[~holdout], images[holdout], labels[holdout], src,
            seed=seed, train_size=train_size, holdout_size=holdout_size,
        )
    raise DataError(f"unknown source {source!r}; choose 'mnist' or 'kaggle-csv'")

