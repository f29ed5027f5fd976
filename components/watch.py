"""What production sees, summarised the same way at training time and at serving time.

Drift is judged by comparing what the server is shown with what the model was
trained and validated on. Both sides must be measured by the same code, so it
lives here, below both the train stage and the server:

* :func:`input_stats`: per image, the ink mass (mean intensity, 0..1), the
  centre of mass (row, column) and a fixed low-dimensional embedding — a PCA of
  pixels fitted on the training digits and stored with the version. A fixed
  linear map works for every model family (no penultimate layer needed), costs
  one 784×8 product per image, and moves when the pixels do: rotation,
  inversion, thicker strokes and rescaling all shift it.
* :class:`Reference`: the version's training reference (``reference.json``
  beside the model files): the PCA basis, class priors (labels and the
  model's own predictions on validation digits) and samples of confidence,
  ink, centre of mass and embedding on those validation digits.
* :class:`Window`: a batch of sampled requests as the server writes it under
  ``payloads/<version>/`` in the registry bucket, and reads it back.
* the tests :mod:`components.monitor` runs on a window against a reference:
  chi-squared homogeneity of predicted classes, Kolmogorov–Smirnov on
  confidence and ink, and MMD with a permutation threshold on the embedding.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from components.stem import IMAGE_SIDE, NUM_CLASSES, NUM_PIXELS

#: The reference's file in a model directory (and so in its registry version).
REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = 1
#: Dimensions of the PCA embedding.
EMBEDDING_DIM = 8
#: Training digits the PCA is fitted on (a random subset: enough for 8 components).
PCA_FIT_SAMPLE = 5000
#: Validation digits whose statistics are kept as the reference sample.
REFERENCE_SAMPLE = 1000
#: Where sampled requests live in the registry bucket.
PAYLOADS = "payloads"
#: Where ``digits monitor`` keeps its latest verdict (read by the servers for the alerts).
VERDICT_KEY = "monitor/verdict.json"
WINDOW_SUFFIX = ".npz"

#: Prometheus bucket bounds of the watched distributions (the server's histograms).
CONFIDENCE_BUCKETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
INK_BUCKETS = (0.02, 0.05, 0.08, 0.1, 0.12, 0.14, 0.16, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0)
CENTER_BUCKETS = (8.0, 10.0, 11.0, 12.0, 13.0, 13.5, 14.0, 14.5, 15.0, 16.0, 17.0, 18.0,
                  20.0, 27.0)

_ROWS = np.arange(IMAGE_SIDE, dtype=np.float32)


class WatchError(ValueError):
    """A reference or payload window that cannot be used; the message says why."""


# --------------------------------------------------------------------------- statistics


def ink(images: np.ndarray) -> np.ndarray:
    """``float32 [N]``: mean intensity of each image, 0 (blank) .. 1 (all white)."""
    flat = images.reshape(len(images), NUM_PIXELS)
    return flat.mean(axis=1, dtype=np.float32) / np.float32(255)


def center_of_mass(images: np.ndarray) -> np.ndarray:
    """``float32 [N, 2]``: (row, column) of each image's intensity centroid; a blank image
    sits at the centre (13.5, 13.5)."""
    pixels = images.astype(np.float32)
    rows = pixels.sum(axis=2)  # [N, 28] mass per row
    cols = pixels.sum(axis=1)
    total = rows.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    centre = (IMAGE_SIDE - 1) / 2
    out = np.stack([rows @ _ROWS / safe, cols @ _ROWS / safe], axis=1)
    out[total == 0] = centre
    return out


def _moments_matrix() -> np.ndarray:
    """``[784, 3]``: a flattened image times this gives its mass, Σ row·mass, Σ col·mass."""
    rows, cols = np.divmod(np.arange(NUM_PIXELS), IMAGE_SIDE)
    return np.stack([np.ones(NUM_PIXELS), rows, cols], axis=1).astype(np.float32)


_MOMENTS = _moments_matrix()


def summarise(images: np.ndarray, reference: Reference | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Ink, centre of mass and (with a reference) the embedding of ``uint8 [N, 28, 28]``
    images in one matrix product: the server's per-request path, as cheap as it gets.
    Equal to :func:`ink`, :func:`center_of_mass` and :meth:`Reference.embed` up to
    float32 rounding."""
    flat = images.reshape(len(images), NUM_PIXELS).astype(np.float32)
    if reference is None:
        out, embedding = flat @ _MOMENTS, None
    else:
        both = flat @ reference._summary
        out, embedding = both[:, :3], both[:, 3:] - reference._offset
    mass = out[:, 0]
    safe = np.where(mass > 0, mass, np.float32(1))
    centre = out[:, 1:3] / safe[:, None]
    centre[mass == 0] = (IMAGE_SIDE - 1) / 2
    return mass / np.float32(NUM_PIXELS * 255), centre, embedding


def top_confidence(proba: np.ndarray) -> np.ndarray:
    return np.asarray(proba, dtype=np.float32).max(axis=1)


def _as_floats(values: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape or not np.isfinite(array).all():
        raise WatchError(f"{REFERENCE_FILE}: {what} must be finite numbers of shape "
                         f"{list(shape)}, got {list(array.shape)}")
    return array


@dataclass(frozen=True)
class Reference:
    """A version's training reference: the fixed embedding and what validation digits gave."""

    mean: np.ndarray          # [784] pixel mean (0..1) of the PCA fit sample
    components: np.ndarray    # [k, 784] principal axes
    scale: np.ndarray         # [k] standard deviation of each component on the fit sample
    label_priors: np.ndarray  # [10] share of each label in training
    predicted_counts: np.ndarray  # [10] the model's predicted classes on the reference digits
    confidence: np.ndarray    # [m] top-class confidence on the reference digits
    ink: np.ndarray           # [m]
    center: np.ndarray        # [m, 2]
    embedding: np.ndarray     # [m, k]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_priors(self) -> np.ndarray:
        return self.predicted_counts / max(self.predicted_counts.sum(), 1)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """``float32 [N, k]``: standardised PCA coordinates of ``uint8 [N, 28, 28]`` images."""
        flat = images.reshape(len(images), NUM_PIXELS).astype(np.float32) / np.float32(255)
        return ((flat - self._mean32) @ self._components32.T) / self._scale32

    # float32 copies for the serving path, made once; and the one matrix :func:`summarise`
    # multiplies raw pixels by: moments, then the embedding folded with its scaling
    # ((x/255 - mean) @ Cᵀ / scale = x @ Cᵀ/(255·scale) - mean @ Cᵀ/scale).
    def __post_init__(self) -> None:
        object.__setattr__(self, "_mean32", self.mean.astype(np.float32))
        object.__setattr__(self, "_components32", self.components.astype(np.float32))
        object.__setattr__(self, "_scale32", self.scale.astype(np.float32))
        folded = self.components.T / (255.0 * self.scale)
        object.__setattr__(self, "_summary", np.concatenate(
            [_MOMENTS.astype(np.float64), folded], axis=1).astype(np.float32))
        object.__setattr__(self, "_offset", (self.mean @ self.components.T
                                             / self.scale).astype(np.float32))

    def to_json(self) -> str:
        def rounded(array: np.ndarray, digits: int = 6) -> list:
            return np.round(array.astype(np.float64), digits).tolist()

        return json.dumps({
            "format": REFERENCE_FORMAT, "info": self.info,
            "pca": {"mean": rounded(self.mean), "components": rounded(self.components),
                    "scale": rounded(self.scale)},
            "label_priors": rounded(self.label_priors),
            "predicted_counts": self.predicted_counts.astype(int).tolist(),
            "sample": {"confidence": rounded(self.confidence), "ink": rounded(self.ink),
                       "center": rounded(self.center, 3),
                       "embedding": rounded(self.embedding, 4)},
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> Reference:
        """Parse and check a stored reference; :class:`WatchError` says what is wrong."""
        try:
            data = json.loads(text)
            if data.get("format") != REFERENCE_FORMAT:
                raise WatchError(f"{REFERENCE_FILE}: unknown format {data.get('format')!r}")
            pca, sample = data["pca"], data["sample"]
            k = len(pca["components"])
            if not 1 <= k <= 64:
                raise WatchError(f"{REFERENCE_FILE}: {k} embedding components (1..64 allowed)")
            m = len(sample["confidence"])
            if m < 10:
                raise WatchError(f"{REFERENCE_FILE}: a reference sample of {m} is too small")
            scale = _as_floats(pca["scale"], (k,), "pca.scale")
            if (scale <= 0).any():
                raise WatchError(f"{REFERENCE_FILE}: pca.scale must be positive")
            return cls(
                mean=_as_floats(pca["mean"], (NUM_PIXELS,), "pca.mean"),
                components=_as_floats(pca["components"], (k, NUM_PIXELS), "pca.components"),
                scale=scale,
                label_priors=_as_floats(data["label_priors"], (NUM_CLASSES,), "label_priors"),
                predicted_counts=_as_floats(data["predicted_counts"], (NUM_CLASSES,),
                                            "predicted_counts"),
                confidence=_as_floats(sample["confidence"], (m,), "sample.confidence"),
                ink=_as_floats(sample["ink"], (m,), "sample.ink"),
                center=_as_floats(sample["center"], (m, 2), "sample.center"),
                embedding=_as_floats(sample["embedding"], (m, k), "sample.embedding"),
                info=dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if isinstance(error, WatchError):
                raise
            raise WatchError(f"{REFERENCE_FILE} is malformed ({error!r})") from None

    def save(self, directory: Path) -> Path:
        path = Path(directory) / REFERENCE_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: Path) -> Reference | None:
        """The reference stored in a model directory, or ``None`` for a version without one
        (trained before references existed)."""
        path = Path(directory) / REFERENCE_FILE
        return cls.from_json(path.read_bytes()) if path.exists() else None


def build_reference(x_train: np.ndarray, y_train: np.ndarray, x_reference: np.ndarray,
                    proba_reference: np.ndarray, *, seed: int = 0,
                    dim: int = EMBEDDING_DIM) -> Reference:
    """Fit the embedding on training digits; describe the reference (validation) digits.

    ``proba_reference`` is the model's output on ``x_reference``: the confidence
    and predicted-class distributions production is later compared with.
    """
    rng = np.random.default_rng(seed)
    fit = x_train[rng.permutation(len(x_train))[:PCA_FIT_SAMPLE]]
    flat = fit.reshape(len(fit), NUM_PIXELS).astype(np.float64) / 255
    mean = flat.mean(axis=0)
    centred = flat - mean
    # The covariance's eigenvectors: a 784x784 problem whatever the sample size.
    variance, vectors = np.linalg.eigh(centred.T @ centred / max(len(flat) - 1, 1))
    top = np.argsort(variance)[::-1][:dim]
    dim = len(top)
    components = vectors[:, top].T.copy()
    # A sign convention, so refitting on the same data gives the same axes.
    components *= np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])[:, None]
    scale = np.sqrt(np.clip(variance[top], 0, None))
    scale = np.where(scale > 1e-9, scale, 1.0)
    pick = rng.permutation(len(x_reference))[:REFERENCE_SAMPLE]
    images, proba = x_reference[pick], np.asarray(proba_reference)[pick]
    labels = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=NUM_CLASSES)
    predicted = np.bincount(np.asarray(proba_reference).argmax(axis=1), minlength=NUM_CLASSES)
    partial = Reference(mean, components, scale, labels / labels.sum(),
                        predicted.astype(np.float64), top_confidence(proba).astype(np.float64),
                        ink(images).astype(np.float64), center_of_mass(images).astype(np.float64),
                        np.zeros((len(images), dim)),
                        info={"train_size": len(x_train),
                              "reference_size": len(x_reference),
                              "sample_size": len(images), "seed": seed})
    return replace(partial, embedding=partial.embed(images).astype(np.float64))


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """Sampled requests of one model version: the images and what the model answered."""

    version: str
    images: np.ndarray      # uint8 [N, 28, 28]
    predicted: np.ndarray   # int64 [N]
    confidence: np.ndarray  # float32 [N]
    times: np.ndarray       # float64 [N], Unix seconds when each was answered
    key: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=self.images, predicted=self.predicted.astype(np.int8),
                            confidence=self.confidence.astype(np.float32),
                            times=self.times.astype(np.float64),
                            version=np.array(self.version))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "") -> Window:
        """A window as stored; whoever holds the serving keys can write these, so every
        array is checked (and nothing is unpickled)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                images = stored["images"]
                predicted = stored["predicted"].astype(np.int64)
                confidence = stored["confidence"].astype(np.float32)
                times = stored["times"].astype(np.float64)
                version = str(stored["version"])
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise WatchError(f"payload window {key or '?'} is unreadable ({error})") from None
        n = len(images)
        if (images.dtype != np.uint8 or images.shape != (n, IMAGE_SIDE, IMAGE_SIDE)
                or predicted.shape != (n,) or confidence.shape != (n,) or times.shape != (n,)
                or (n and (predicted.min() < 0 or predicted.max() >= NUM_CLASSES))
                or not np.isfinite(confidence).all() or not np.isfinite(times).all()):
            raise WatchError(f"payload window {key or '?'} has inconsistent arrays")
        return cls(version, images, predicted, confidence, times, key)

    @staticmethod
    def concat(windows: list[Window]) -> Window:
        """One window of several (same version), in time order."""
        if not windows:
            raise WatchError("no windows to join")
        times = np.concatenate([w.times for w in windows])
        order = np.argsort(times, kind="stable")
        return Window(windows[0].version,
                      np.concatenate([w.images for w in windows])[order],
                      np.concatenate([w.predicted for w in windows])[order],
                      np.concatenate([w.confidence for w in windows])[order], times[order],
                      windows[-1].key)

    def split(self, size: int) -> list[Window]:
        """Consecutive windows of ``size`` images (the last, partial one is dropped)."""
        return [Window(self.version, self.images[i:i + size], self.predicted[i:i + size],
                       self.confidence[i:i + size], self.times[i:i + size], self.key)
                for i in range(0, len(self) - size + 1, size)]


def window_key(version: str, now: datetime | None = None) -> str:
    """``payloads/<version>/<UTC stamp>-<pid>-<random>.npz``: sortable by time, unique
    across workers and replicas."""
    moment = now or datetime.now(timezone.utc)
    return (f"{PAYLOADS}/{version}/{moment.strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}-"
            f"{os.urandom(3).hex()}{WINDOW_SUFFIX}")
