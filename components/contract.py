"""The contract between stages: what one stage leaves on disk for the next.

Stages stand side by side: each reads its inputs and writes its outputs by the
names and records defined here, and none imports another. The names are the
layout of a KFP artifact directory and of a registered version alike, so a
version downloaded from the registry reads exactly as the run wrote it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# --- names ----------------------------------------------------------------------------
#: A dataset directory's description: source, checksums, sizes, seed (ingest writes it).
MANIFEST_FILE = "manifest.json"
#: A model directory's description: kind, parameters, training facts (train writes it).
MODEL_INFO = "model.json"
#: An evaluation directory: every metric, and the holdout predictions they came from.
EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.npz"
#: Inside the gate's chosen model: the evaluation it was judged by.
EVALUATION_DIR = "evaluation"
#: The gate's decision directory: the decision and the champion's evaluation.
DECISION_FILE = "decision.json"
CHAMPION_DIR = "champion"
#: Inside a registered version: the gate's decision directory, and the run's report.
GATE_DIR = "gate"
REPORT_FILE = "report.html"
#: A registered version's description: files and their sha256, gate, lineage (deploy writes it).
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"

PROMOTE = "promote"
REJECT = "reject"


class StageError(RuntimeError):
    """A stage cannot finish; the message is the one-line reason a person reads.

    Components let it fail the task; every CLI prints ``digits <stage>: reason``
    and exits 1. Errors in what the user gave (``DataError``, ``ValueError``)
    exit 2 instead.
    """


def to_jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays unwrapped, NaN/inf as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2, allow_nan=False)


@dataclass
class ModelEvaluation:
    """One model's predictions on the frozen holdout, and what is known about it.

    ``metrics`` is computed from ``y_true``/``proba`` when not given; pass it
    (from :func:`compute_metrics` with latency/size/training time) to show the
    measured performance numbers. Construction validates the predictions, so
    a model that emitted NaN fails here with a :class:`ValueError` naming it,
    before any half-written report exists.
    """

    name: str
    y_true: np.ndarray
    proba: np.ndarray
    images: np.ndarray | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Imported here: the registry and the server read this module's names, and
        # must not pull scikit-learn in with them.
        from components.metrics import compute_metrics, validate_predictions

        try:
            self.y_true, self.proba = validate_predictions(self.y_true, self.proba)
        except ValueError as error:
            raise ValueError(f"model {self.name!r}: {error}") from None
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.shape != (len(self.y_true), 28, 28):
                raise ValueError(
                    f"model {self.name!r}: images must be [{len(self.y_true)}, 28, 28], "
                    f"got {list(self.images.shape)}"
                )
        if self.metrics is None:
            self.metrics = compute_metrics(self.y_true, self.proba)
        self.history = dict(self.history or {})
        self.info = dict(self.info or {})

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def save(self, directory: Path | str, *, include_images: bool = True) -> list[Path]:
        """Store predictions (``predictions.npz``) and the rest (``evaluation.json``).

        This is what a registered version keeps so ``digits report <version>``
        can re-render its report later without the model or the framework.
        Probabilities are stored as float32 and images compressed (~2 MB for
        10,000 digits).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"y_true": self.y_true.astype(np.uint8), "proba": self.proba.astype(np.float32)}
        if include_images and self.images is not None:
            arrays["images"] = self.images.astype(np.uint8)
        np.savez_compressed(directory / PREDICTIONS_FILE, **arrays)
        meta = {"name": self.name, "history": self.history, "info": self.info,
                "metrics": self.metrics}
        (directory / EVALUATION_FILE).write_text(dumps(meta))
        return [directory / PREDICTIONS_FILE, directory / EVALUATION_FILE]

    @classmethod
    def load(cls, directory: Path | str, *, images: np.ndarray | None = None) -> ModelEvaluation:
        """Bring back what :meth:`save` wrote; ``images`` fills in if they were not stored."""
        directory = Path(directory)
        meta = json.loads((directory / EVALUATION_FILE).read_text())
        with np.load(directory / PREDICTIONS_FILE) as arrays:
            stored = arrays["images"] if "images" in arrays.files else images
            return cls(
                name=meta["name"], y_true=arrays["y_true"], proba=arrays["proba"],
                images=stored, history=meta.get("history") or {},
                metrics=meta.get("metrics"), info=meta.get("info") or {},
            )


@dataclass
class GateDecision:
    """The gate's verdict with its evidence, as every later stage reads it.

    ``challenger`` and ``champion`` hold the judged accuracy, per-class recall
    and metrics (the champion also its version); ``checks`` is the decision
    table; ``candidates`` every trained model's validation and holdout figures.
    """

    decision: str
    reason: str
    challenger: dict[str, Any]
    checks: list[dict[str, Any]]
    policy: dict[str, float]
    champion: dict[str, Any] | None = None
    mcnemar: dict[str, Any] | None = None
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decision not in (PROMOTE, REJECT):
            raise StageError(f"gate decision must be {PROMOTE!r} or {REJECT!r}, "
                             f"got {self.decision!r}")

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTE

    @property
    def challenger_kind(self) -> str:
        return self.challenger["kind"]

    @property
    def champion_version(self) -> str | None:
        return (self.champion or {}).get("version")

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / DECISION_FILE
        path.write_text(dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, directory: Path) -> GateDecision:
        path = Path(directory) / DECISION_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise StageError(f"{path}: not a gate decision ({error})") from None
