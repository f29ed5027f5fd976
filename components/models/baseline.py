"""The floor: multinomial logistic regression on deskewed pixels, plain numpy weights."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from components.models.base import DigitModel
from components.stem import NUM_CLASSES

log = logging.getLogger(__name__)

class Baseline(DigitModel):
    """Multinomial logistic regression on deskewed pixels: the floor any real model must clear.

    ``tol`` is set for what a floor needs (three decimals of accuracy), so L-BFGS
    converges within ``max_iter`` instead of stopping short with a warning.
    """

    kind = "baseline"
    platform = "numpy"
    history_step = "fit"
    filename = "weights.npz"
    defaults: ClassVar[dict[str, Any]] = {
        "max_iter": 200, "C": 1.0, "tol": 1e-3, "features": "deskew", "seed": 0}
    legacy: ClassVar[dict[str, Any]] = {"features": "raw"}

    def fit(self, x_train, y_train, x_val, y_val) -> None:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(
            max_iter=self.params["max_iter"], C=self.params["C"], tol=self.params["tol"],
            random_state=self.params["seed"],
        )
        model.fit(self.features(x_train), y_train)
        if len(model.classes_) != NUM_CLASSES:
            raise ValueError(f"baseline needs all 10 digits in training, saw {model.classes_}")
        self._set(model.coef_, model.intercept_)
        val_acc = float((self.predict(x_val) == y_val).mean())
        self.history = {"val_accuracy": [val_acc]}
        log.info("baseline: %d iterations, validation accuracy %.4f", model.n_iter_[0], val_acc)

    def _set(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self._coef = coef.astype(np.float32)
        self._intercept = intercept.astype(np.float32)

    def _predict_proba(self, images):
        logits = self.features(images) @ self._coef.T + self._intercept
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def _save_weights(self, path):
        np.savez(path, coef=self._coef, intercept=self._intercept)

    def _load_weights(self, path):
        with np.load(path) as weights:
            self._set(weights["coef"], weights["intercept"])
