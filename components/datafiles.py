"""Reading and writing data files: MNIST's IDX files, Kaggle's CSVs, checksums.

Everything that touches bytes on disk (or a download) lives here and names
the file and the fault when the bytes cannot be trusted; splitting the digits
into a :class:`components.data.Dataset` is :mod:`components.data`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
