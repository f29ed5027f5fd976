"""XGBoost: gradient-boosted trees on stroke features, exported as an ONNX tree ensemble."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from components import progress
from components.models.base import ONNX_PLATFORM, DigitModel, onnx_forward
from components.stem import NUM_CLASSES


class XGBoost(DigitModel):
    """Gradient-boosted trees (``hist``) on stroke features of the deskewed digit.

    Trees split one column at a time, so they are given columns that mean
    something: per 4×4 cell, how much edge runs in each of 8 directions, plus
    the digit's shape at half resolution (:func:`components.features.hog_rows`,
    588 columns after deskewing). That, not more rounds, is what moves trees
    from ~98.4% on raw pixels to ~99%. 32 bins suffice and make rounds cheap;
    half the columns per tree decorrelate the trees; early stopping watches
    the validation log-loss, which is smooth where the error rate on 5,000
    digits jumps by single digits.
    """

    kind = "xgboost"
    platform = "xgboost"
    history_step = "boosting round"
    filename = "model.ubj"
    #: The kept trees (early stopping's range) as one ONNX tree ensemble plus softmax.
    export_filename = "model.onnx"
    export_platform = ONNX_PLATFORM
    defaults: ClassVar[dict[str, Any]] = {
        "n_estimators": 400, "max_depth": 6, "learning_rate": 0.15, "colsample_bytree": 0.5,
        "max_bin": 32, "features": "hog", "early_stopping_rounds": 30, "seed": 0,
        "n_jobs": 0,
    }
    legacy: ClassVar[dict[str, Any]] = {
        "features": "raw", "colsample_bytree": 1.0, "max_bin": 256}
    #: Training digits whose loss is tracked per round for the report's curves.
    CURVE_SAMPLE = 5000

    def _classifier(self, callbacks: list | None = None):
        import xgboost

        return xgboost.XGBClassifier(
            callbacks=callbacks,
            tree_method="hist",
            objective="multi:softprob",
            eval_metric=["merror", "mlogloss"],  # the last one drives early stopping
            n_estimators=self.params["n_estimators"],
            max_depth=self.params["max_depth"],
            learning_rate=self.params["learning_rate"],
            colsample_bytree=self.params["colsample_bytree"],
            max_bin=self.params["max_bin"],
            early_stopping_rounds=self.params["early_stopping_rounds"] or None,
            random_state=self.params["seed"],
            n_jobs=self.params["n_jobs"] or os.cpu_count(),
        )

    def fit(self, x_train, y_train, x_val, y_val) -> None:
        self._model = self._classifier(
            callbacks=[_round_progress(self.params["n_estimators"], self._step)])
        features = self.features(x_train)
        curve = slice(0, self.CURVE_SAMPLE)  # scoring all 55k each round would cost a third
        self._model.fit(
            features, y_train,
            eval_set=[(features[curve], y_train[curve]), (self.features(x_val), y_val)],
            verbose=10,  # logs every 10th round
        )
        self._bind()
        evals = self._model.evals_result()
        self.history = {
            f"{split}_{metric}": [float(v) for v in values]
            for split, name in (("train", "validation_0"), ("val", "validation_1"))
            for metric, values in evals[name].items()
        }

    def _predict_proba(self, images):
        rows = self.features(images)
        if self._booster is None:  # the inference form: the same trees on onnxruntime
            return self._forward(rows)
        if len(rows) == 1:
            # One row — the drawing page's and most clients' request. XGBoost's
            # predict costs ~0.5 ms per call before the first tree (1.8 ms on the
            # production model); Treelite's evaluator walks the same trees in a
            # third to a half of that. At two rows they are even; beyond, XGBoost wins.
            from treelite import gtil

            proba = gtil.predict(self._single_row_model(), rows, nthread=self._threads)
        else:
            # The booster's in-place predict is what XGBClassifier.predict_proba
            # computes, minus ~100 µs of wrapper per call.
            proba = self._booster.inplace_predict(
                rows, iteration_range=self._iterations, validate_features=False)
        return np.asarray(proba, dtype=np.float32).reshape(len(images), NUM_CLASSES)

    def _bind(self) -> None:
        """Keep the booster and its early-stopping range (the trees predict() would use)."""
        self._booster = self._model.get_booster()
        best = getattr(self._model, "best_iteration", None)
        self._iterations = (0, int(best) + 1) if best is not None else (0, 0)
        self._single_row = None
        self._threads = 0  # Treelite's "all cores", as XGBoost's default

    @property
    def kept_rounds(self) -> int:
        """Boosting rounds predictions use: early stopping's best, else every round."""
        if self._booster is None:
            return self._exported_rounds
        return self._iterations[1] or self._booster.num_boosted_rounds()

    def _single_row_model(self):
        """The same trees (early-stopping range included) as a Treelite model, built once.

        Converting takes ~0.2 s for the production model, so it happens at the
        first single-row prediction (the server's smoke test makes one), not
        after every training.
        """
        if self._single_row is None:
            import treelite

            start, stop = self._iterations
            booster = self._booster[start:stop] if stop else self._booster
            self._single_row = treelite.frontend.from_xgboost(booster)
        return self._single_row

    def set_threads(self, threads: int) -> None:
        if self._booster is None:
            self._forward = onnx_forward(self._onnx, threads)
            return
        self._booster.set_param("nthread", threads)
        self._threads = threads

    def _export(self, path):
        start, stop = self._iterations
        booster = self._booster[start:stop] if stop else self._booster
        Path(path).write_bytes(_trees_to_onnx(booster).SerializeToString())

    def _load_export(self, path):
        import onnxruntime

        self._onnx = Path(path).read_bytes()
        self._model = self._booster = None
        self._forward = onnx_forward(self._onnx, 0)
        # The round count travels in the graph's metadata (onnxruntime reads it; onnx
        # itself is not needed to serve).
        meta = onnxruntime.InferenceSession(self._onnx, providers=["CPUExecutionProvider"])
        self._exported_rounds = int(meta.get_modelmeta().custom_metadata_map["rounds"])
        self.platform = self.export_platform

    def _save_weights(self, path):
        self._model.save_model(path)

    def _load_weights(self, path):
        self._model = self._classifier()
        self._model.load_model(path)
        self._bind()


#: The ONNX opsets the tree graph uses (TreeEnsembleRegressor is in ai.onnx.ml 3).
ONNX_OPSET, ONNX_ML_OPSET = 17, 3


def _trees_to_onnx(booster):
    """XGBoost's trees as ONNX: ``rows float32 [N, D] -> probabilities float32 [N, 10]``.

    One ``TreeEnsembleRegressor`` sums each class's trees from the booster's
    per-class intercept (XGBoost 3 keeps one per class, in margin space), and a
    softmax turns the margins into probabilities: what ``multi:softprob``
    predicts. A split sends a row left when its value is below the threshold,
    as XGBoost does, and a missing value where XGBoost's default goes.
    """
    import onnx
    from onnx import TensorProto, helper

    learner = json.loads(booster.save_raw("json"))["learner"]
    forest = learner["gradient_booster"]["model"]
    base = learner["learner_model_param"]["base_score"]
    intercept = [float(v) for v in base.strip("[]").split(",")]
    if len(intercept) == 1:  # one value for every class: softmax ignores it anyway
        intercept *= NUM_CLASSES
    nodes: dict[str, list] = {key: [] for key in (
        "treeids", "nodeids", "featureids", "values", "modes", "truenodeids",
        "falsenodeids", "missing_value_tracks_true")}
    targets: dict[str, list] = {key: [] for key in ("treeids", "nodeids", "ids", "weights")}
    for tree_id, (tree, group) in enumerate(zip(forest["trees"], forest["tree_info"],
                                                strict=True)):
        if any(tree.get("split_type", [])):
            raise ValueError("categorical splits cannot be exported")
        for node, left in enumerate(tree["left_children"]):
            leaf = left == -1
            value = float(tree["split_conditions"][node])
            for key, entry in (
                    ("treeids", tree_id), ("nodeids", node),
                    ("featureids", 0 if leaf else int(tree["split_indices"][node])),
                    ("values", 0.0 if leaf else value),
                    ("modes", "LEAF" if leaf else "BRANCH_LT"),
                    ("truenodeids", 0 if leaf else int(left)),
                    ("falsenodeids", 0 if leaf else int(tree["right_children"][node])),
                    ("missing_value_tracks_true", int(bool(tree["default_left"][node])))):
                nodes[key].append(entry)
            if leaf:  # a leaf's value is kept in split_conditions
                for key, entry in (("treeids", tree_id), ("nodeids", node), ("ids", group),
                                   ("weights", value)):
                    targets[key].append(entry)
    ensemble = helper.make_node(
        "TreeEnsembleRegressor", ["rows"], ["margins"], domain="ai.onnx.ml",
        n_targets=NUM_CLASSES, aggregate_function="SUM", post_transform="NONE",
        base_values=intercept, **{f"nodes_{k}": v for k, v in nodes.items()},
        **{f"target_{k}": v for k, v in targets.items()})
    softmax = helper.make_node("Softmax", ["margins"], ["probabilities"], axis=1)
    graph = helper.make_graph(
        [ensemble, softmax], "xgboost",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT,
                                       [None, booster.num_features()])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       [None, NUM_CLASSES])])
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", ONNX_ML_OPSET)])
    helper.set_model_props(model, {"rounds": str(len(forest["trees"]) // NUM_CLASSES)})
    onnx.checker.check_model(model)
    return model


def _round_progress(total: int, step: Callable[[int, dict[str, float]], bool]):
    """An XGBoost callback reporting each boosting round and its validation figures.

    Training stops here only when ``step`` (the model's :attr:`DigitModel.on_step`)
    asks; early stopping is XGBoost's own.
    """
    import xgboost

    class RoundProgress(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            validation = evals_log.get("validation_1", {})
            errors = validation.get("merror") or [None]
            detail = "" if errors[-1] is None else f"val_error={errors[-1]:.4f}"
            progress.progress("round", epoch + 1, total, detail)
            figures = {}
            if errors[-1] is not None:
                figures["accuracy"] = 1.0 - float(errors[-1])
            if validation.get("mlogloss"):
                figures["log_loss"] = float(validation["mlogloss"][-1])
            return step(epoch + 1, figures)

    return RoundProgress()
