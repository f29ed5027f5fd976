"""Inference forms: written when a version is promoted, trusted only once proven.

A promoted model is served and submitted through a light runtime (an ONNX
graph on onnxruntime: the CNN's network, XGBoost's kept trees; see
:meth:`components.models.DigitModel.export`), so the serving image carries no
training framework. A converter can be wrong in ways that still produce
probabilities, so an export counts only after it has predicted the whole
holdout exactly as the framework does: the same label for every digit, every
probability within :data:`TOLERANCE`. Otherwise it is deleted and the deploy
fails with the numbers, production unchanged. The record that goes into the
version's metadata names the file, its runtime, its sha256 and how closely it
matched.

Versions promoted before exports existed get theirs with
:func:`export_registered` (``digits registry export VERSION``, in the training
image); until then they are served through their framework file.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from components.contract import StageError
from components.models import DigitModel, load_model

#: Largest difference allowed between the framework's and the export's probabilities.
TOLERANCE = 1e-4


class ExportError(StageError):
    """An inference form that does not predict what the trained model predicts."""


def compare(reference: DigitModel, exported: DigitModel, images: np.ndarray,
            tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Check ``exported`` against ``reference`` on ``images``: its figures, or ExportError."""
    expected = reference.predict_proba(images)
    got = exported.predict_proba(images)
    if got.shape != expected.shape:
        raise ExportError(f"{exported.kind} export gives shape {got.shape}, "
                          f"the trained model {expected.shape}")
    worst = float(np.abs(got - expected).max())
    changed = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    if changed or not worst <= tolerance:  # NaN fails too
        raise ExportError(
            f"{exported.kind} export ({exported.platform}) refused: {changed} of {len(images)} "
            f"holdout labels differ and probabilities differ by up to {worst:.2e} "
            f"(allowed: identical labels, {tolerance:.0e})")
    return {"checked_on": len(images), "max_abs_diff": worst}


def export_checked(directory: Path, images: np.ndarray) -> dict[str, Any] | None:
    """Write the inference form of the model in ``directory`` and prove it on ``images``.

    Returns the record for the version's metadata, or ``None`` when the family
    needs no export (the baseline's weights are plain numpy already). A refused
    export is removed from ``directory`` before :class:`ExportError` is raised,
    so nothing unproven can be published with it.
    """
    directory = Path(directory)
    reference = load_model(directory, exported=False)
    path = reference.export(directory)
    if path is None:
        return None
    try:
        exported = load_model(directory)
        if not exported.exported:
            raise ExportError(f"{path.name} was written but does not load as the inference form")
        figures = compare(reference, exported, images)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    data = path.read_bytes()
    return {"file": path.name, "runtime": exported.platform,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **figures}


def export_registered(registry, version: str, images: np.ndarray) -> dict[str, Any]:
    """Give an already registered version its inference form (``digits registry export``).

    The version is downloaded with every checksum verified, exported and
    checked like a deploy's, and the file added to it with its sha256
    (:meth:`components.registry.Registry.add_files`); if it is production, the
    pointer moves to the new metadata so servers pick the export up. A version
    that has one already is left alone.
    """
    metadata = registry.metadata(version)
    if metadata.get("export"):
        return {"version": version, "export": metadata["export"], "changed": False}
    with tempfile.TemporaryDirectory(prefix="digits-export-") as tmp:
        directory = Path(tmp) / "model"
        registry.download(version, directory)
        record = export_checked(directory, images)
        if record is None:
            return {"version": version, "export": None, "changed": False}
        registry.add_files(version, directory, [record["file"]], {"export": record},
                           reason=f"inference form {record['file']} added")
    return {"version": version, "export": record, "changed": True}
