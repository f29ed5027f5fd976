"""The three model families, behind one small interface.

Every model takes canonical ``uint8 [N, 28, 28]`` images, passes them through
:mod:`components.stem`, and returns ``float32 [N, 10]`` class probabilities. A
saved model is a directory: the framework's own file plus ``model.json``
naming the kind, so :func:`load_model` can bring any of them back without
pickles.

A promoted model also carries its *inference form* (:meth:`DigitModel.export`,
written and checked at deploy by :mod:`components.export`): an ONNX graph run
by onnxruntime, for the CNN its network, for XGBoost its kept trees. It
replaces only the framework's forward pass; preprocessing, features, test-time
views and everything :meth:`DigitModel.predict_proba` does after the forward
pass stay this module's shared code, so the server and the Kaggle job predict
through one path whichever runtime answers, and the serving image needs
neither TensorFlow, XGBoost, Treelite nor SciPy. :func:`load_model` prefers the
inference form and falls back to the framework's file for versions promoted
before exports existed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.calibration import NEUTRAL
from components.contract import MODEL_INFO
from components.models.base import PREDICT_CHUNK, DigitModel, ModelError, StepHook
from components.models.baseline import Baseline
from components.models.cnn import CNN, TTA_SHIFTS
from components.models.trees import XGBoost

__all__ = ["CNN", "MODEL_KINDS", "PREDICT_CHUNK", "TTA_SHIFTS", "Baseline", "DigitModel",
           "ModelError", "StepHook", "XGBoost", "create_model", "load_model", "read_info"]

MODEL_KINDS: dict[str, type[DigitModel]] = {cls.kind: cls for cls in (CNN, XGBoost, Baseline)}


def create_model(kind: str, **params: Any) -> DigitModel:
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        choices = sorted(MODEL_KINDS)
        raise ValueError(f"unknown model kind {kind!r}; choose from {choices}") from None
    return cls(**{k: v for k, v in params.items() if k in cls.defaults})


def read_info(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read model description ({error})") from error


def load_model(directory: Path, *, exported: bool = True) -> DigitModel:
    """Bring back any saved model; raise :class:`ModelError` with the reason if it cannot.

    With ``exported`` (the default: the server, the Kaggle job) the inference form
    answers when the directory has one; otherwise, and for versions promoted
    before exports existed, the framework's own file does.
    """
    directory = Path(directory)
    info = read_info(directory)
    cls = MODEL_KINDS.get(info.get("kind"))
    if cls is None:
        raise ModelError(f"{directory}: unknown model kind {info.get('kind')!r}")
    saved = info.get("params", {})
    model = cls(**{**cls.legacy, **{k: v for k, v in saved.items() if k in cls.defaults}})
    model.history = info.get("history", {})
    model.temperature = float(info.get("temperature", NEUTRAL))
    export = directory / cls.export_filename if cls.export_filename else None
    if exported and export is not None and export.is_file():
        try:
            model._load_export(export)
        except Exception as error:  # runtimes raise anything on a bad file
            raise ModelError(f"{directory}: cannot load {cls.kind} inference form "
                             f"{export.name} ({error})") from error
        return model
    try:
        model._load_weights(directory / cls.filename)
    except ImportError as error:
        raise ModelError(
            f"{directory}: this {cls.kind} model has no inference form "
            f"({cls.export_filename}) and its framework is not installed here ({error}); "
            "export it in the training image: digits registry export VERSION") from error
    except Exception as error:  # frameworks raise anything on bad weights
        raise ModelError(f"{directory}: cannot load {cls.kind} weights ({error})") from error
    return model
