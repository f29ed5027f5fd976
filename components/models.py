"""The three model families, behind one small interface.

Every model takes canonical ``uint8 [N, 28, 28]`` images, passes them through
:mod:`components.stem`, and returns ``float32 [N, 10]`` class probabilities. A
saved model is a directory: the framework's own file plus ``model.json``
naming the kind, so :func:`load_model` can bring any of them back without
pickles.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from components import progress
from components.calibration import NEUTRAL, apply_temperature, fit_temperature
from components.contract import MODEL_INFO
from components.features import feature_rows
from components.stem import IMAGE_SIDE, NUM_CLASSES, preprocess

log = logging.getLogger(__name__)

#: Called after each epoch or boosting round with its number (from 1) and the validation
#: figures of that step (``accuracy`` and ``log_loss`` when the framework has them);
#: returning True ends training there. :mod:`components.tune` prunes poor trials with it.
StepHook = Callable[[int, dict[str, float]], bool]


#: Rows per forward pass when predicting large batches; bounds memory, keeps BLAS busy.
PREDICT_CHUNK = 4096


class ModelError(RuntimeError):
    """A model directory that cannot be loaded (missing file, unknown kind, bad weights)."""


class DigitModel(ABC):
    """Interface every model family implements."""

    kind: ClassVar[str]
    filename: ClassVar[str]
    #: The framework that runs it, as the inference protocol's ``platform`` names it.
    platform: ClassVar[str]
    #: What one step of its training history is (the report's x axis).
    history_step: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    #: What a parameter meant before it existed: a model saved without it is loaded
    #: with this value, so it predicts exactly as it was trained (never the new default).
    legacy: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.kind}: unknown parameters {sorted(unknown)}")
        self.params = {**self.defaults, **params}
        self.history: dict[str, list[float]] = {}
        #: Fitted after training on the validation split (:meth:`calibrate`), saved
        #: with the model; a model saved before calibration existed keeps ``NEUTRAL``.
        self.temperature = NEUTRAL
        self.on_step: StepHook | None = None

    def _step(self, step: int, figures: dict[str, float]) -> bool:
        """Hand one step's validation figures to :attr:`on_step`; True means stop here."""
        return bool(self.on_step and self.on_step(step, figures))

    @abstractmethod
    def fit(self, x_train: np.ndarray, y_train: np.ndarray,
            x_val: np.ndarray, y_val: np.ndarray) -> None:
        """Train on ``uint8`` images; validation data drives early stopping and curves."""

    @abstractmethod
    def _predict_proba(self, images: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _save_weights(self, path: Path) -> None: ...

    @abstractmethod
    def _load_weights(self, path: Path) -> None: ...

    def predict_proba(self, images: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        """Class probabilities ``float32 [N, 10]``, predicted in bounded chunks.

        Every caller (evaluate, the server, the Kaggle job) gets calibrated
        probabilities; ``calibrated=False`` is for fitting and reporting the
        calibration itself.
        """
        if len(images) <= PREDICT_CHUNK:  # the server's case: no copies
            proba = self._predict_proba(images).astype(np.float32, copy=False)
        else:
            proba = np.concatenate([
                self._predict_proba(images[start:start + PREDICT_CHUNK])
                for start in range(0, len(images), PREDICT_CHUNK)
            ]).astype(np.float32, copy=False)
        return apply_temperature(proba, self.temperature) if calibrated else proba

    def calibrate(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Fit the temperature on held-out digits (the validation split); return its facts.

        Never the holdout: the gate and the report judge calibration there.
        """
        from components.metrics import expected_calibration_error

        raw = self.predict_proba(images, calibrated=False)
        self.temperature = fit_temperature(raw, labels)
        scaled = apply_temperature(raw, self.temperature)
        return {"temperature": self.temperature, "fitted_on": len(labels),
                "validation_ece_before": expected_calibration_error(labels, raw),
                "validation_ece_after": expected_calibration_error(labels, scaled)}

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)

    def features(self, images: np.ndarray) -> np.ndarray:
        """``float32 [N, D]`` rows: the family's feature set (``params["features"]``)."""
        return feature_rows(self.params.get("features", "raw"))(images)

    def set_threads(self, threads: int) -> None:  # noqa: B027 - optional hook, no-op default
        """Cap the cores one forward pass may use (a server's workers share the machine).

        Only XGBoost can change its pool after loading; TensorFlow and BLAS fix
        theirs at start-up (digits serve sets them through the environment).
        """

    def save(self, directory: Path, **info: Any) -> list[Path]:
        """Write the weights and ``model.json`` (kind, params, history, extra info)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory / self.filename)
        meta = {"kind": self.kind, "params": self.params, "history": self.history,
                "temperature": self.temperature, **info}
        (directory / MODEL_INFO).write_text(json.dumps(meta, indent=2, default=float))
        return [directory / self.filename, directory / MODEL_INFO]


#: CNN augmentation, as fractions (keras' convention): shifts of up to ±10% of the
#: side (2.8 pixels), turns of up to ±3% of a full turn (±11°), zoom of ±10%.
SHIFT, ROTATION, ZOOM = 0.1, 0.03, 0.1
#: Share of the training steps over which the learning rate warms up to its peak.
WARMUP = 0.1
#: Test-time augmentation: the one-pixel shifts (rows, columns) whose predictions are
#: averaged with the digit's own; the ``tta`` parameter says how many of them are used.
TTA_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))
BN_MOMENTUM = 0.9


def _batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
             shuffle_seed: int | None = None):
    """Preprocessed, one-hot batches for keras, read on the training thread itself.

    The arrays are already in memory, so there is nothing for a background
    reader to overlap; tf.data's autotuner and prefetch threads (what ``fit``
    sets up for numpy arrays) only compete with the training step for the
    cores, most of all when a step is pinned to one core (the simulator's
    side-by-side steps). ``shuffle_seed`` reshuffles every epoch, reproducibly.
    """
    import tensorflow as tf

    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    data = tf.data.Dataset.from_tensor_slices((preprocess(images), one_hot))
    if shuffle_seed is not None:
        data = data.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return data.batch(batch_size).with_options(options)


class CNN(DigitModel):
    """A small batch-normalised convnet that learns from digits it moves about itself.

    Three conv blocks (each batch-normalised, ReLU, max-pooled) and a dense layer.
    While training, augmentation layers in front of it shift, turn and zoom every
    batch on tensors inside the training graph; the saved model is the network
    alone, so predicting pays nothing for them. The learning rate warms up, then
    decays along a cosine, and labels are smoothed. At prediction the digit and a
    few one-pixel shifts of it go through in one batch and their answers are
    averaged (``tta``), which is part of the saved parameters. An epoch is at least
    ``min_epoch_steps`` batches, so a few hundred digits train as well as they can.
    """

    kind = "cnn"
    platform = "keras"
    history_step = "epoch"
    filename = "model.keras"
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 12, "batch_size": 256, "learning_rate": 4e-3, "width": 32, "dropout": 0.3,
        "label_smoothing": 0.1, "tta": 4, "min_epoch_steps": 20, "seed": 0,
    }
    legacy: ClassVar[dict[str, Any]] = {"tta": 0, "min_epoch_steps": 0}

    def _build(self):
        import keras
        from keras import layers

        width = self.params["width"]

        def norm():
            # Moving statistics that settle within tens of steps, not hundreds: short
            # runs (--quick, small training sets) must predict as well as long ones.
            return layers.BatchNormalization(momentum=BN_MOMENTUM)

        def block(filters: int, padding: str) -> list:
            return [layers.Conv2D(filters, 3, padding=padding, use_bias=False), norm(),
                    layers.ReLU()]

        return keras.Sequential([
            keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1)),
            *block(width, "valid"), layers.MaxPooling2D(),
            *block(2 * width, "valid"), layers.MaxPooling2D(),
            *block(4 * width, "same"),
            layers.Flatten(),
            layers.Dense(128, use_bias=False), norm(), layers.ReLU(),
            layers.Dropout(self.params["dropout"]),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ])

    @staticmethod
    def _augmentation() -> list:
        from keras import layers

        return [layers.RandomTranslation(SHIFT, SHIFT, fill_mode="constant"),
                layers.RandomRotation(ROTATION, fill_mode="constant"),
                layers.RandomZoom(ZOOM, fill_mode="constant")]

    def fit(self, x_train, y_train, x_val, y_val) -> None:
        import keras

        epochs, batch_size = self.params["epochs"], self.params["batch_size"]
        step = self._step

        class EpochProgress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                accuracy = logs.get("val_accuracy")
                detail = "" if accuracy is None else f"val_accuracy={accuracy:.4f}"
                progress.progress("epoch", epoch + 1, epochs, detail)
                # val_loss is the smoothed-label loss training minimises, not the log-loss.
                figures = {"accuracy": accuracy} if accuracy is not None else {}
                if step(epoch + 1, figures):
                    self.model.stop_training = True

        keras.utils.set_random_seed(self.params["seed"])
        # A small training set is shown several times per epoch (each time augmented
        # afresh): 500 digits in batches of 256 are 2 steps an epoch, too few for the
        # optimiser and batch statistics to settle (the CNN scored 17% on them).
        repeats = -(-self.params["min_epoch_steps"] * batch_size // len(y_train))
        if repeats > 1:
            x_train, y_train = np.concatenate([x_train] * repeats), np.tile(y_train, repeats)
        steps = epochs * -(-len(y_train) // batch_size)
        warmup = max(1, int(steps * WARMUP))
        peak = self.params["learning_rate"]
        schedule = keras.optimizers.schedules.CosineDecay(
            peak / 10, decay_steps=max(1, steps - warmup), warmup_target=peak,
            warmup_steps=warmup)
        self._model = self._build()
        trainer = keras.Sequential([keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1)),
                                    *self._augmentation(), self._model])
        trainer.compile(
            loss=keras.losses.CategoricalCrossentropy(
                label_smoothing=self.params["label_smoothing"]),
            optimizer=keras.optimizers.Adam(schedule),
            metrics=["accuracy"],
        )
        seed = self.params["seed"]
        result = trainer.fit(
            _batches(x_train, y_train, batch_size, shuffle_seed=seed),
            epochs=epochs,
            validation_data=_batches(x_val, y_val, batch_size),
            shuffle=False,  # the batches are reshuffled by tf.data every epoch
            verbose=2,  # one line per epoch: readable in KFP and CI logs
            callbacks=[EpochProgress()],
        )
        self.history = {k: [float(v) for v in vs] for k, vs in result.history.items()}
        self._bind()

    def _predict_proba(self, images):
        # A traced call skips predict()'s per-call setup and eager dispatch, which
        # dominate latency for the small batches a server sees. The shifted
        # views ride in the same batch: one call, whatever ``tta`` is.
        x = preprocess(images)
        shifts = TTA_SHIFTS[:self.params["tta"]]
        if shifts:
            x = np.concatenate([x, *(np.roll(x, shift, axis=(1, 2)) for shift in shifts)])
        proba = self._forward(x).numpy()
        return proba.reshape(len(shifts) + 1, len(images), NUM_CLASSES).mean(axis=0)

    def _bind(self) -> None:
        """Trace the forward pass once: a graph call costs a fraction of an eager one."""
        import tensorflow as tf

        model = self._model
        self._forward = tf.function(
            lambda x: model(x, training=False), reduce_retracing=True,
            input_signature=[tf.TensorSpec([None, IMAGE_SIDE, IMAGE_SIDE, 1], tf.float32)])

    def _save_weights(self, path):
        self._model.save(path)

    def _load_weights(self, path):
        import keras

        self._model = keras.models.load_model(path, compile=False)
        self._bind()


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
        self._booster.set_param("nthread", threads)
        self._threads = threads

    def _save_weights(self, path):
        self._model.save_model(path)

    def _load_weights(self, path):
        self._model = self._classifier()
        self._model.load_model(path)
        self._bind()


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


def load_model(directory: Path) -> DigitModel:
    """Bring back any saved model; raise :class:`ModelError` with the reason if it cannot."""
    directory = Path(directory)
    info = read_info(directory)
    cls = MODEL_KINDS.get(info.get("kind"))
    if cls is None:
        raise ModelError(f"{directory}: unknown model kind {info.get('kind')!r}")
    saved = info.get("params", {})
    model = cls(**{**cls.legacy, **{k: v for k, v in saved.items() if k in cls.defaults}})
    model.history = info.get("history", {})
    model.temperature = float(info.get("temperature", NEUTRAL))
    try:
        model._load_weights(directory / cls.filename)
    except Exception as error:  # frameworks raise anything on bad weights
        raise ModelError(f"{directory}: cannot load {cls.kind} weights ({error})") from error
    return model
