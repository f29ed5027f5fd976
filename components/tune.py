"""Tune stage: search a model family's settings on train/validation, never on the holdout.

``digits tune --family xgboost --budget 5`` runs a seeded search (Optuna's
multivariate TPE, the sampler Katib's ``multivariate-tpe`` runs) over the
family's :data:`SPACES`, scoring every trial on the validation split and
pruning poor ones from their per-epoch / per-round validation figures
(Hyperband). It writes a results table (CSV and Markdown) and a params file
that ``digits run --params FILE`` applies. The search sees a :class:`Splits`,
which has no holdout to touch: the gate's frozen holdout stays unseen.

On a cluster the same search runs as a Katib ``Experiment`` whose trials are
``digits tune --trial`` in the train image; :func:`katib_experiment` writes it
from the same :data:`SPACES`, and the committed manifests are checked against it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from components.argparsing import key_value, make_parser, positive_int
from components.data import Dataset
from components.datafiles import DataError, write_atomically
from components.images import TRAIN_IMAGE
from components.metrics import log_loss
from components.models import MODEL_KINDS, create_model

log = logging.getLogger(__name__)

#: What a search can optimise, and which way: the gate picks by accuracy; log-loss is smoother.
METRICS = {"accuracy": "maximize", "log_loss": "minimize"}
DEFAULT_METRIC = "accuracy"
#: Random (seeded) trials before TPE models the results: the defaults trial and four more.
STARTUP_TRIALS = 5
#: Hyperband keeps the best third of the trials at each rung.
REDUCTION_FACTOR = 3
#: Files a search writes into its output directory.
RESULTS_CSV, RESULTS_MD, PARAMS_FILE = "results.csv", "results.md", "params.json"
#: A Katib trial prints ``validation_<metric>=<value>`` lines for its StdOut collector.
KATIB_METRIC_PREFIX = "validation_"
#: Katib's side of the search: trials in all, side by side, failures tolerated.
KATIB_MAX_TRIALS, KATIB_PARALLEL_TRIALS, KATIB_MAX_FAILED = 30, 2, 3
#: Median stopping (Katib's pruner) judges a trial once this many others have finished.
KATIB_MEDIAN_MIN_TRIALS = 3
#: The trial container's name, and its resources (those of the pipeline's train tasks).
KATIB_CONTAINER = "trial"
KATIB_RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi"},
                   "limits": {"cpu": "2", "memory": "6Gi"}}
#: Katib's own types (its webhook refuses others).
KATIB_PARAMETER_TYPES = {"int": "int", "double": "double", "discrete": "discrete"}


class TuneError(DataError):
    """A search that cannot run or finish as asked; the message says what to change."""


# --------------------------------------------------------------------------- space


@dataclass(frozen=True)
class Dimension:
    """One searched setting, named as the model family names it (``CNN.defaults``).

    ``kind`` is Katib's: ``int`` and ``double`` span ``low``..``high`` (``log`` for a
    log-uniform draw), ``discrete`` picks one of ``choices``. Optuna gets the same
    distribution Katib's Optuna service builds from the Experiment's parameter.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.kind == "double":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.kind == "discrete":
            return value in self.choices
        number_type = int if self.kind == "int" else (int, float)
        return (isinstance(value, number_type) and not isinstance(value, bool)
                and self.low <= value <= self.high)

    def parse(self, text: str) -> Any:
        """A value as Katib substitutes it (text) → the model's type; out of space is refused."""
        try:
            if self.kind == "int":
                value: Any = int(text)
            elif self.kind == "double":
                value = float(text)
            else:
                value = next(choice for choice in self.choices if str(choice) == text)
        except (ValueError, StopIteration):
            raise TuneError(f"{self.name}={text!r}: expected {self.describe()}") from None
        if not self.contains(value):
            raise TuneError(f"{self.name}={text}: outside the search space ({self.describe()})")
        return value

    def describe(self) -> str:
        if self.kind == "discrete":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.kind} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")

    def katib(self) -> dict[str, Any]:
        """This dimension as a Katib ``ParameterSpec`` (all values are strings there)."""
        if self.kind == "discrete":
            space: dict[str, Any] = {"list": [str(choice) for choice in self.choices]}
        else:
            space = {"min": f"{self.low:g}", "max": f"{self.high:g}",
                     "distribution": "logUniform" if self.log else "uniform"}
        return {"name": self.name, "parameterType": KATIB_PARAMETER_TYPES[self.kind],
                "feasibleSpace": space}


@dataclass(frozen=True)
class SearchSpace:
    """What a family's search varies, and what one training step (the pruning unit) is.

    Everything not in ``dimensions`` keeps the family's default (or ``--set``).
    ``resource`` is the parameter counting the steps (epochs, boosting rounds):
    Hyperband's largest budget; ``min_resource`` steps are its first rung.
    """

    family: str
    dimensions: tuple[Dimension, ...]
    resource: str
    min_resource: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def defaults(self) -> dict[str, Any]:
        """Today's settings for the searched dimensions (the family's own defaults)."""
        family = MODEL_KINDS[self.family].defaults
        return {name: family[name] for name in self.names}


#: The search space of each family that can be tuned (the baseline is a floor, not a contender).
SPACES: dict[str, SearchSpace] = {
    "xgboost": SearchSpace(
        "xgboost",
        (Dimension("max_depth", "int", 3, 10),
         Dimension("learning_rate", "double", 0.03, 0.4, log=True),
         Dimension("colsample_bytree", "double", 0.2, 1.0)),
        resource="n_estimators", min_resource=10),
    "cnn": SearchSpace(
        "cnn",
        (Dimension("learning_rate", "double", 1e-3, 1.2e-2, log=True),
         Dimension("batch_size", "discrete", choices=(64, 128, 256)),
         Dimension("dropout", "double", 0.1, 0.5)),
        resource="epochs", min_resource=2),
}


def space_for(family: str) -> SearchSpace:
    try:
        return SPACES[family]
    except KeyError:
        raise TuneError(f"no search space for {family!r}; choose from "
                        f"{', '.join(sorted(SPACES))}") from None


def fixed_params(space: SearchSpace, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs → settings every trial shares (not searched, not written).

    A value is read as JSON (``3``, ``0.1``) and must have the type of the family's
    default; a searched or unknown name is refused.
    """
    defaults = MODEL_KINDS[space.family].defaults
    fixed: dict[str, Any] = {}
    for name, text in pairs:
        if name in space.names:
            raise TuneError(f"--set {name}: {name} is searched; --set fixes the others")
        if name not in defaults or name == "seed":
            raise TuneError(f"--set {name}: not a {space.family} setting; choose from "
                            f"{', '.join(sorted(set(defaults) - {'seed', *space.names}))}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        expected = type(defaults[name])
        if not (type(value) is expected or (expected is float and type(value) is int)):
            raise TuneError(f"--set {name}={text}: expected a {expected.__name__}")
        fixed[name] = value
    return fixed


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Splits:
    """The only data a search sees: training and validation digits, nothing else.

    Built from the ingest stage's :class:`Dataset` by :meth:`of`, which reads its
    train and validation splits and leaves the frozen holdout behind: no code
    below this point can score a setting on it.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, dataset: Dataset) -> Splits:
        manifest = dataset.manifest or {}
        return cls(dataset.x_train, dataset.y_train, dataset.x_validation, dataset.y_validation,
                   source={k: manifest.get(k) for k in ("source", "location", "seed")})


def load_splits(source: str = "mnist", *, seed: int = 0, mnist_dir: Path | None = None,
                csv_path: Path | None = None, train_size: int | None = None) -> Splits:
    """The ingest stage's train / validation split (same seed, same digits as ``digits run``)."""
    from components.data import ingest

    return Splits.of(ingest(source, seed=seed, mnist_dir=mnist_dir, csv_path=csv_path,
                            train_size=train_size))


# --------------------------------------------------------------------------- one trial


@dataclass
class Score:
    """One trained setting's validation figures, or how far it got before it was stopped."""

    accuracy: float | None
    log_loss: float | None
    steps: int
    seconds: float
    pruned: bool = False

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)


def fit_and_score(family: str, params: dict[str, Any], splits: Splits, *, seed: int = 0,
                  on_step: Callable[[int, dict[str, float]], bool] | None = None) -> Score:
    """Train ``family`` with ``params`` on the training split; score it on validation.

    ``on_step`` sees each epoch's or round's validation figures; when it answers
    True training stops there and the setting is marked pruned (not scored).
    """
    model = create_model(family, **{**params, "seed": seed})
    steps = 0
    stopped = False

    def step(number: int, figures: dict[str, float]) -> bool:
        nonlocal steps, stopped
        steps = number
        stopped = bool(on_step and on_step(number, figures))
        return stopped

    model.on_step = step
    started = time.perf_counter()
    model.fit(splits.x_train, splits.y_train, splits.x_validation, splits.y_validation)
    if stopped:
        return Score(None, None, steps, time.perf_counter() - started, pruned=True)
    proba = model.predict_proba(splits.x_validation)
    accuracy = float(np.mean(proba.argmax(axis=1) == splits.y_validation))
    loss = log_loss(splits.y_validation, proba) if np.isfinite(proba).all() else math.nan
    return Score(accuracy, loss, steps, time.perf_counter() - started)


# --------------------------------------------------------------------------- the search


@dataclass
class Trial:
    """A row of the results table."""

    number: int
    role: str  # "defaults" (today's settings, always trial 0) or "search"
    state: str  # complete, pruned, failed
    params: dict[str, Any]
    accuracy: float | None
    log_loss: float | None
    steps: int
    seconds: float

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)


@dataclass
class SearchResult:
    """What a search found, with everything needed to reproduce and judge it."""

    family: str
    metric: str
    trials: list[Trial]
    best: Trial
    defaults: Trial
    settings: dict[str, Any]

    def params_file(self) -> dict[str, Any]:
        """The JSON ``digits run --params`` reads: the family and its best settings."""
        return {
            "family": self.family,
            "params": self.best.params,
            "metric": self.metric,
            "validation": {"accuracy": self.best.accuracy, "log_loss": self.best.log_loss},
            "defaults": {"params": self.defaults.params,
                         "validation": {"accuracy": self.defaults.accuracy,
                                        "log_loss": self.defaults.log_loss}},
            "search": self.settings,
        }


def search(family: str, splits: Splits, *, budget_s: float, trials: int | None = None,
           seed: int = 0, metric: str = DEFAULT_METRIC, fixed: dict[str, Any] | None = None,
           echo: Callable[[str], None] = lambda line: None) -> SearchResult:
    """Search ``family``'s space for ``budget_s`` seconds (or ``trials`` trials, if sooner).

    Trial 0 is today's defaults, so the table always says what the search beat.
    The sampler is seeded and the study named after family and seed (Hyperband
    assigns brackets by a hash of the name), so with ``trials`` the same call gives
    the same trials, values and best; a budget caps wall time instead, so how many
    trials fit depends on the machine. A trial under way when the budget ends
    finishes first.
    """
    import optuna

    space = space_for(family)
    if metric not in METRICS:
        raise TuneError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if budget_s <= 0:
        raise TuneError(f"the budget must be positive, got {budget_s / 60:g} minutes")
    fixed = dict(fixed or {})
    max_resource = int(fixed.get(space.resource, MODEL_KINDS[family].defaults[space.resource]))
    min_resource = min(space.min_resource, max_resource)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                             n_startup_trials=STARTUP_TRIALS)
    pruner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                            reduction_factor=REDUCTION_FACTOR)
    study = optuna.create_study(study_name=f"digits-tune-{family}-seed{seed}",
                                direction=METRICS[metric], sampler=sampler, pruner=pruner)
    study.enqueue_trial(space.defaults())
    rows: list[Trial] = []

    def objective(trial) -> float:
        params = {d.name: d.suggest(trial) for d in space.dimensions}

        def report(step: int, figures: dict[str, float]) -> bool:
            value = figures.get(metric)
            if value is None or not math.isfinite(value):
                return False
            trial.report(value, step)
            return trial.should_prune()

        # Epoch and round lines are for a pipeline's log; the search prints one line a trial.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            score = fit_and_score(family, {**fixed, **params}, splits, seed=seed,
                                  on_step=report)
        value = score.value(metric)
        state = "pruned" if score.pruned else (
            "complete" if value is not None and math.isfinite(value) else "failed")
        row = Trial(trial.number, "defaults" if trial.number == 0 else "search", state, params,
                    score.accuracy, score.log_loss, score.steps, round(score.seconds, 1))
        rows.append(row)
        echo(_trial_line(row, space))
        if score.pruned:
            raise optuna.TrialPruned()
        return value if value is not None else math.nan

    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, timeout=budget_s)
    complete = [row for row in rows if row.state == "complete"]
    if not complete:
        raise TuneError("no trial finished; give the search a larger --budget")
    sign = 1 if METRICS[metric] == "maximize" else -1
    best = max(complete, key=lambda row: (sign * row.value(metric), -row.number))
    settings = {
        "seed": seed, "budget_minutes": round(budget_s / 60, 3), "max_trials": trials,
        "seconds": round(time.perf_counter() - started, 1), "fixed": fixed,
        "trials": len(rows), **{state: sum(row.state == state for row in rows)
                                for state in ("complete", "pruned", "failed")},
        "train_size": len(splits.y_train), "validation_size": len(splits.y_validation),
        "data": splits.source, "holdout": "not used",
        "sampler": f"TPESampler(multivariate, seed={seed}, n_startup_trials={STARTUP_TRIALS})",
        "pruner": f"HyperbandPruner({space.resource} {min_resource}..{max_resource}, "
                  f"reduction_factor={REDUCTION_FACTOR})",
    }
    return SearchResult(family, metric, rows, best, rows[0], settings)


def _trial_line(row: Trial, space: SearchSpace) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
    figure = f"accuracy {row.accuracy:.4f}, log-loss {row.log_loss:.4f}" \
        if row.state == "complete" else row.state
    unit = "epochs" if space.resource == "epochs" else "rounds"
    return (f"trial {row.number} ({row.role}): {figure} after {row.steps} {unit} "
            f"in {row.seconds:.0f} s — {params}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- outputs


def results_csv(result: SearchResult) -> str:
    names = space_for(result.family).names
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "role", "state", *names, "steps", "accuracy", "log_loss",
                     "seconds", "best"])
    for row in result.trials:
        writer.writerow([row.number, row.role, row.state, *(row.params[n] for n in names),
                         row.steps, "" if row.accuracy is None else f"{row.accuracy:.6f}",
                         "" if row.log_loss is None else f"{row.log_loss:.6f}", row.seconds,
                         "yes" if row is result.best else ""])
    return out.getvalue()


def results_markdown(result: SearchResult) -> str:
    """The table a person reads: every trial, the best one marked, against the defaults."""
    space = space_for(result.family)
    s = result.settings
    best, defaults = result.best, result.defaults
    gain = best.accuracy - defaults.accuracy if defaults.state == "complete" else None
    lines = [
        f"# digits tune --family {result.family}",
        "",
        f"Objective: validation {result.metric.replace('_', '-')} ({METRICS[result.metric]}), "
        f"on {s['validation_size']:,} validation digits; trained on {s['train_size']:,} "
        f"digits; the holdout is not used. Budget {s['budget_minutes']:g} min"
        + (f", at most {s['max_trials']} trials" if s["max_trials"] else "")
        + f"; seed {s['seed']}; {s['trials']} trials in {s['seconds']:.0f} s "
        f"({s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed).",
        f"Sampler {s['sampler']}; pruner {s['pruner']}."
        + (f" Fixed: {', '.join(f'{k}={v}' for k, v in s['fixed'].items())}."
           if s["fixed"] else ""),
        "",
        f"**Best: trial {best.number}**, validation accuracy {best.accuracy:.2%} "
        f"(log-loss {best.log_loss:.4f})"
        + (f" against today's defaults' {defaults.accuracy:.2%} "
           f"(log-loss {defaults.log_loss:.4f}): {gain * 100:+.2f} points, "
           f"{round(gain * s['validation_size']):+d} of {s['validation_size']:,} digits "
           "(a search picks its best on these very digits: confirm a small gain with "
           "`digits run --params` and several seeds)."
           if gain is not None else "."),
        "",
        "| trial | role | state | " + " | ".join(space.names)
        + " | steps | accuracy | log-loss | seconds |",
        "|" + " --- |" * (len(space.names) + 7),
    ]
    for row in result.trials:
        mark = "**" if row is best else ""
        figures = (f"{row.accuracy:.2%} | {row.log_loss:.4f}" if row.state == "complete"
                   else "– | –")
        lines.append(f"| {mark}{row.number}{mark} | {row.role} | {row.state} | "
                     + " | ".join(_fmt(row.params[n]) for n in space.names)
                     + f" | {row.steps} | {figures} | {row.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def write_results(result: SearchResult, output: Path) -> dict[str, Path]:
    """The three files of a search, each written whole or not at all."""
    output = Path(output)
    files = {"csv": output / RESULTS_CSV, "markdown": output / RESULTS_MD,
             "params": output / PARAMS_FILE}
    write_atomically(files["csv"], results_csv(result))
    write_atomically(files["markdown"], results_markdown(result))
    write_atomically(files["params"], json.dumps(result.params_file(), indent=2) + "\n")
    return files


def read_params(path: Path) -> tuple[str, dict[str, Any]]:
    """A params file → ``(family, params)``, or a :class:`TuneError` naming the fault.

    Written by ``digits tune`` or by hand: ``{"family": "xgboost", "params":
    {"max_depth": 7}}``. Names and value types are the family's own
    (``components.models``); which of them a run can carry is the pipeline's
    business (``pipelines.training.family_arguments``).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise TuneError(f"--params {path}: cannot read ({error})") from None
    except json.JSONDecodeError as error:
        raise TuneError(f"--params {path}: not JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise TuneError(f'--params {path}: expected {{"family": ..., "params": {{...}}}}')
    family = data.get("family")
    if family not in MODEL_KINDS:
        raise TuneError(f"--params {path}: family {family!r} is not one of "
                        f"{', '.join(sorted(MODEL_KINDS))}")
    defaults = MODEL_KINDS[family].defaults
    for name, value in data["params"].items():
        if name not in defaults:
            raise TuneError(f"--params {path}: {family} has no setting {name!r}")
        expected = type(defaults[name])
        if not (type(value) is expected or (expected is float and type(value) is int)):
            raise TuneError(f"--params {path}: {name}={value!r} should be a {expected.__name__}")
    return family, {name: expected(value) for name, value in data["params"].items()
                    for expected in (type(defaults[name]),)}


# --------------------------------------------------------------------------- Katib


def katib_trial(family: str, splits: Splits, params: dict[str, Any], *, seed: int = 0,
                echo: Callable[[str], None] = print) -> Score:
    """One Katib trial: train ``params``, print every step's and the final figures.

    Katib's StdOut collector reads ``validation_accuracy=0.9912`` lines: one per
    epoch or round (what median stopping compares), then the trained model's
    own (the Experiment takes the latest).
    """

    def report(step: int, figures: dict[str, float]) -> bool:
        for name in METRICS:
            if figures.get(name) is not None:
                echo(f"{KATIB_METRIC_PREFIX}{name}={figures[name]:.6f}")
        return False

    score = fit_and_score(family, params, splits, seed=seed, on_step=report)
    for name in METRICS:
        echo(f"{KATIB_METRIC_PREFIX}{name}={score.value(name):.6f}")
    return score


def katib_experiment(family: str, *, metric: str = DEFAULT_METRIC, seed: int = 0,
                     train_size: int | None = None) -> dict[str, Any]:
    """The Katib ``Experiment`` running :data:`SPACES` [family] in the train image.

    Same space, same objective (the validation split's ``metric``), same sampler
    (Katib's ``multivariate-tpe`` is Optuna's TPE, seeded by ``random_state``).
    Pruning differs by what Katib offers: median stopping from ``min_resource``
    steps on, where ``digits tune`` runs Hyperband.
    """
    space = space_for(family)
    objective = f"{KATIB_METRIC_PREFIX}{metric}"
    others = [f"{KATIB_METRIC_PREFIX}{m}" for m in METRICS if m != metric]
    command = ["digits", "tune", "--family", family, "--trial", "--seed", str(seed),
               *(["--train-size", str(train_size)] if train_size else []),
               *(f"--param={d.name}=${{trialParameters.{d.name}}}" for d in space.dimensions)]
    labels = {"app.kubernetes.io/name": "digits-tune-trial",
              "app.kubernetes.io/component": "tune"}
    container = {
        "name": KATIB_CONTAINER,
        "image": TRAIN_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "envFrom": [{"configMapRef": {"name": "digits-config"}}],
        "env": [{"name": "DIGITS_CACHE_DIR", "value": "/var/cache/digits"},
                {"name": "DIGITS_HOME", "value": "/var/lib/digits"},
                {"name": "HOME", "value": "/tmp"}],
        "resources": KATIB_RESOURCES,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "cache", "mountPath": "/var/cache/digits"},
                         {"name": "state", "mountPath": "/var/lib/digits"}],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "runAsGroup": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                                {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}},
                                {"name": "state", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": f"digits-tune-{family}",
                     "labels": {"app.kubernetes.io/name": f"digits-tune-{family}",
                                "app.kubernetes.io/component": "tune"}},
        "spec": {
            "objective": {
                "type": METRICS[metric],
                "objectiveMetricName": objective,
                "additionalMetricNames": others,
                "metricStrategies": [{"name": name, "value": "latest"}
                                     for name in (objective, *others)],
            },
            "algorithm": {"algorithmName": "multivariate-tpe", "algorithmSettings": [
                {"name": "random_state", "value": str(seed)},
                {"name": "n_startup_trials", "value": str(STARTUP_TRIALS)}]},
            "earlyStopping": {"algorithmName": "medianstop", "algorithmSettings": [
                {"name": "min_trials_required", "value": str(KATIB_MEDIAN_MIN_TRIALS)},
                {"name": "start_step", "value": str(space.min_resource)}]},
            "maxTrialCount": KATIB_MAX_TRIALS,
            "parallelTrialCount": KATIB_PARALLEL_TRIALS,
            "maxFailedTrialCount": KATIB_MAX_FAILED,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": [d.katib() for d in space.dimensions],
            "trialTemplate": {
                "primaryContainerName": KATIB_CONTAINER,
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "trialParameters": [{"name": d.name, "reference": d.name,
                                     "description": f"{family} {d.name}: {d.describe()}"}
                                    for d in space.dimensions],
                "trialSpec": job,
            },
        },
    }


def katib_yaml(family: str) -> str:
    """The committed manifest's text: a header saying where it comes from, then the YAML."""
    import yaml

    return (f"# Generated by `digits tune --family {family} --katib` from components/tune.py "
            "(SPACES).\n# Do not edit: tests/test_tune.py fails when it differs from the code.\n"
            + yaml.safe_dump(katib_experiment(family), sort_keys=False, width=100))


# --------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits tune", __doc__)
    p.add_argument("--family", choices=sorted(SPACES), required=True)
    p.add_argument("--budget", type=float, default=5.0,
                   help="minutes of search (a trial under way when it ends finishes)")
    p.add_argument("--trials", type=positive_int,
                   help="stop after this many trials (with a seed: a reproducible search)")
    p.add_argument("--metric", choices=list(METRICS), default=DEFAULT_METRIC,
                   help="validation figure to optimise")
    p.add_argument("--train-size", type=positive_int,
                   help="train on a stratified subset of this many digits (validation "
                   "stays the full split, so scores stay comparable)")
    p.add_argument("--seed", type=int, default=0, help="seeds the splits, the sampler, every model")
    p.add_argument("--set", dest="fixed", action="append", default=[], type=key_value,
                   metavar="NAME=VALUE",
                   help="fix a setting that is not searched, for every trial (e.g. epochs=3 "
                   "for a quick CNN search); recorded in the params file, never applied by "
                   "digits run")
    p.add_argument("--source", choices=["mnist", "kaggle-csv"], default="mnist")
    p.add_argument("--mnist-dir", type=Path, help="MNIST IDX directory (else DIGITS_MNIST_DIR, "
                   "else the cache, else a checksum-verified download)")
    p.add_argument("--csv", type=Path, help="Kaggle train.csv (with --source kaggle-csv)")
    p.add_argument("--output", type=Path,
                   help="directory for results.csv, results.md and params.json "
                   "(default: DIGITS_HOME/tune/<family>-<time>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--trial", action="store_true",
                      help="run one setting (--param) and print Katib's metric lines")
    mode.add_argument("--katib", action="store_true",
                      help="print the family's Katib Experiment (YAML) and exit")
    p.add_argument("--param", action="append", default=[], type=key_value,
                   metavar="NAME=VALUE", help="with --trial: a searched setting's value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.katib:
        print(katib_yaml(args.family), end="")
        return 0
    space = space_for(args.family)
    fixed = fixed_params(space, args.fixed)
    if args.param and not args.trial:
        raise TuneError("--param goes with --trial (one setting); a search draws its own")
    if args.budget <= 0:
        raise TuneError(f"--budget must be positive (minutes), got {args.budget:g}")
    if args.trial:
        by_name = {d.name: d for d in space.dimensions}
        unknown = sorted({name for name, _ in args.param} - set(by_name))
        if unknown:
            raise TuneError(f"--param {', '.join(unknown)}: not searched for {args.family}; "
                            f"choose from {', '.join(space.names)}")
        params = {**space.defaults(), **fixed,
                  **{name: by_name[name].parse(text) for name, text in args.param}}
    splits = load_splits(args.source, seed=args.seed, mnist_dir=args.mnist_dir,
                         csv_path=args.csv, train_size=args.train_size)
    if args.trial:
        katib_trial(args.family, splits, params, seed=args.seed)
        return 0

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    echo(f"digits tune: {args.family} on {len(splits.y_train):,} training and "
         f"{len(splits.y_validation):,} validation digits, {args.budget:g} min")
    result = search(args.family, splits, budget_s=args.budget * 60, trials=args.trials,
                    seed=args.seed, metric=args.metric, fixed=fixed, echo=echo)
    output = args.output or _default_output(args.family)
    files = write_results(result, output)
    best, defaults = result.best, result.defaults
    against = f" (defaults: {defaults.accuracy:.4f})" if defaults.state == "complete" else ""
    print(f"best: trial {best.number}, validation accuracy {best.accuracy:.4f}{against}")
    for name, path in files.items():
        print(f"{name}: {path}")
    print(f"apply it: digits run --params {files['params']}")
    return 0


def _default_output(family: str) -> Path:
    from components.settings import get_settings

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(get_settings().home) / "tune" / f"{family}-{stamp}"
