"""Reading digits from MNIST IDX files or Kaggle CSVs, splitting and versioning them.

A :class:`Dataset` is what the ingest stage hands to every later stage: train,
validation and a *frozen* holdout, plus a manifest (source, file checksums,
sizes, seed) that is copied into every registered model's metadata, so a model
can always be traced back to the exact bytes it learned from.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import struct
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.contract import MANIFEST_FILE
from components.stem import IMAGE_SIDE, MAX_PIXEL, NUM_PIXELS

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

#: The four MNIST files and the MD5 of their *uncompressed* contents, as published.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

#: Share of a labelled CSV kept aside as the frozen holdout.
CSV_HOLDOUT_FRACTION = 0.1
#: Share of the training pool used for validation (model selection and early stopping).
VALIDATION_FRACTION = 1 / 12  # 5,000 of MNIST's 60,000
DATA_FILE = "data.npz"
SPLITS = ("train", "validation", "holdout")


class DataError(ValueError):
    """Input data that cannot be trusted; the message names the file and the fault."""


# --------------------------------------------------------------------------- IDX


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error})") from error


def parse_idx(raw: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (magic 2051 images or 2049 labels) into a ``uint8`` array.

    Checks the magic number, the image dimensions and that the payload length
    matches the header exactly, so truncated or padded files are rejected.
    """
    if len(raw) < 8:
        raise DataError(f"{name}: too short for an IDX header ({len(raw)} bytes)")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == IMAGES_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{name}: truncated image header")
        rows, cols = struct.unpack(">II", raw[8:16])
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(f"{name}: images are {rows}x{cols}, expected 28x28")
        shape, offset = (count, rows, cols), 16
    elif magic == LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise DataError(
            f"{name}: bad magic number {magic}, expected {IMAGES_MAGIC} (images) "
            f"or {LABELS_MAGIC} (labels)"
        )
    expected = offset + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{name}: header promises {expected} bytes, file has {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)
    if magic == LABELS_MAGIC and array.size and array.max() > 9:
        raise DataError(f"{name}: label {int(array.max())} outside 0..9")
    return array


def load_idx(path: Path, *, md5: str | None = None) -> np.ndarray:
    """Read one IDX file (gzip or plain); verify the uncompressed MD5 when given."""
    raw = _read_maybe_gzip(path)
    if md5 is not None:
        actual = hashlib.md5(raw).hexdigest()
        if actual != md5:
            raise DataError(f"{path}: checksum mismatch (md5 {actual}, expected {md5})")
    return parse_idx(raw, name=str(path))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``uint8`` images ``[N,28,28]`` or labels ``[N]`` as gzip IDX (tests, tooling)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 3:
        header = struct.pack(">IIII", IMAGES_MAGIC, *array.shape)
    else:
        header = struct.pack(">II", LABELS_MAGIC, array.shape[0])
    Path(path).write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


@dataclass(frozen=True)
class Source:
    """Where the digits came from: a name and the sha256 of every input file."""

    kind: str
    location: str
    files: dict[str, str] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_mnist_files(directory: Path) -> list[str]:
    """The MNIST files ``directory`` lacks (all four if it does not exist)."""
    return [name for name in MNIST_FILES if not (Path(directory) / name).is_file()]


def load_mnist(directory: Path, *, verify_checksums: bool = True):
    """Load ``(x_train, y_train, x_test, y_test, source)`` from the four IDX files."""
    directory = Path(directory)
    missing = missing_mnist_files(directory)
    if missing:
        raise DataError(f"{directory}: missing MNIST files {missing}")
    arrays = {
        name: load_idx(directory / name, md5=md5 if verify_checksums else None)
        for name, md5 in MNIST_FILES.items()
    }
    x_train, y_train, x_test, y_test = arrays.values()
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{directory}: {split} images and labels do not pair up")
    files = {name: sha256_file(directory / name) for name in MNIST_FILES}
    return x_train, y_train, x_test, y_test, Source("mnist", str(directory), files)


def download_mnist(destination: Path, base_url: str) -> Path:
    """Fetch the MNIST files into ``destination``, verifying each before it is kept.

    Each file lands in a temporary name and is renamed only once its checksum
    matches, so an interrupted or corrupted download never looks complete.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        target = destination / name
        if target.is_file():
            continue
        fd, tmp = tempfile.mkstemp(dir=destination, prefix=f".{name}.")
        os.close(fd)
        try:
            url = base_url.rstrip("/") + "/" + name
            with urllib.request.urlopen(url, timeout=60) as reply, open(tmp, "wb") as handle:
                shutil.copyfileobj(reply, handle)
            load_idx(Path(tmp), md5=md5)
            os.replace(tmp, target)
        except OSError as error:
            raise DataError(f"cannot download {name} from {base_url}: {error}") from error
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return destination


def resolve_mnist_dir(override: Path | None, settings) -> Path:
    """Pick the MNIST directory: an explicit path, ``DIGITS_MNIST_DIR``, the cache, a download."""
    for candidate in (override, settings.mnist_dir):
        if candidate is not None:
            return Path(candidate)
    cache = Path(settings.cache_dir) / "mnist"
    if all((cache / name).is_file() for name in MNIST_FILES):
        return cache
    return download_mnist(cache, settings.mnist_url)


# --------------------------------------------------------------------------- CSV


def read_lines(path: Path) -> list[str]:
    """A text file's lines (a UTF-8 BOM dropped); a clear error if unreadable or empty."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    if not lines:
        raise DataError(f"{path}: empty file")
    return lines


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``.

    A crash (or a kill of the Job) mid-write leaves either the old file or
    none, never a truncated submission that would still upload and score badly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_kaggle_csv(path: Path, *, labelled: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a Kaggle ``digit-recognizer`` CSV (``label,pixel0..pixel783`` or pixels only).

    Every fault names its 1-based line number: wrong column count, a value that
    is not an integer, a pixel outside 0..255 or a label outside 0..9.
    """
    path = Path(path)
    width = NUM_PIXELS + (1 if labelled else 0)
    lines = read_lines(path)
    header = lines[0].strip().split(",")
    expected = (["label"] if labelled else []) + [f"pixel{i}" for i in range(NUM_PIXELS)]
    if header != expected:
        raise DataError(
            f"{path}: line 1: header must be {'label,' if labelled else ''}pixel0..pixel783 "
            f"({width} columns), got {len(header)} columns starting {header[:3]}"
        )
    rows = np.empty((len(lines) - 1, width), dtype=np.int64)
    for number, line in enumerate(lines[1:], start=2):
        cells = line.strip().split(",")
        if len(cells) != width:
            raise DataError(f"{path}: line {number}: {len(cells)} columns, expected {width}")
        try:
            rows[number - 2] = [int(cell) for cell in cells]
        except ValueError as error:
            raise DataError(f"{path}: line {number}: not an integer ({error})") from error
    pixels = rows[:, 1:] if labelled else rows
    bad = np.argwhere((pixels < 0) | (pixels > MAX_PIXEL))
    if len(bad):
        row, col = bad[0]
        raise DataError(
            f"{path}: line {row + 2}: pixel{col} = {pixels[row, col]} outside 0..{MAX_PIXEL}"
        )
    if len(rows) == 0:
        raise DataError(f"{path}: no data rows")
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    if not labelled:
        return images, None
    labels = rows[:, 0]
    bad_labels = np.flatnonzero((labels < 0) | (labels > 9))
    if len(bad_labels):
        row = bad_labels[0]
        raise DataError(f"{path}: line {row + 2}: label {labels[row]} outside 0..9")
    return images, labels.astype(np.uint8)


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

