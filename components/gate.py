"""Gate stage: decide whether the run's best model replaces the production champion.

The challenger is the candidate with the best *validation* accuracy (the
holdout is never used to choose, only to judge). Challenger and champion are
then scored on the same frozen holdout in the same run, and the challenger is
promoted only if every check in :func:`decide` passes. The decision carries its
evidence, so anyone can see why.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from components.data import Dataset
from components.evaluate import Evaluation, evaluate
from components.models import load_model, read_info
from components.stem import NUM_CLASSES

log = logging.getLogger(__name__)

PROMOTE = "promote"
REJECT = "reject"
EVALUATION_DIR = "evaluation"
DECISION_FILE = "decision.json"


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds a challenger must clear; the defaults suit MNIST-sized holdouts."""

    min_accuracy: float = 0.95
    min_improvement: float = 0.001
    alpha: float = 0.05
    max_class_regression: float = 0.02


class GateError(RuntimeError):
    """The gate cannot judge (inputs disagree or the champion cannot be scored)."""


def mcnemar_exact(y_true: np.ndarray, challenger_pred: np.ndarray,
                  champion_pred: np.ndarray) -> dict[str, float]:
    """McNemar's exact test on paired predictions.

    ``b`` counts digits only the challenger gets right, ``c`` those only the
    champion gets right; under "no difference" each discordant digit is a fair
    coin, so the two-sided binomial p-value of ``b`` out of ``b + c`` decides.
    """
    challenger_ok = challenger_pred == y_true
    champion_ok = champion_pred == y_true
    b = int(np.sum(challenger_ok & ~champion_ok))
    c = int(np.sum(~challenger_ok & champion_ok))
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p_value": p_value}


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        str(d): float(np.mean(y_pred[y_true == d] == d)) if np.any(y_true == d) else float("nan")
        for d in range(NUM_CLASSES)
    }


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def decide(y_true: np.ndarray, challenger_pred: np.ndarray,
           champion_pred: np.ndarray | None, policy: GatePolicy) -> dict[str, Any]:
    """The pass/fail decision table, with every check's evidence."""
    accuracy = float(np.mean(challenger_pred == y_true))
    recall = per_class_recall(y_true, challenger_pred)
    checks = [_check(
        "accuracy_floor", accuracy >= policy.min_accuracy,
        f"holdout accuracy {accuracy:.4f} vs floor {policy.min_accuracy:.4f}",
    )]
    result: dict[str, Any] = {
        "challenger": {"accuracy": accuracy, "per_class_recall": recall},
        "champion": None,
        "mcnemar": None,
        "policy": asdict(policy),
    }
    if champion_pred is not None:
        champ_accuracy = float(np.mean(champion_pred == y_true))
        champ_recall = per_class_recall(y_true, champion_pred)
        gain = accuracy - champ_accuracy
        test = mcnemar_exact(y_true, challenger_pred, champion_pred)
        drops = {d: champ_recall[d] - recall[d] for d in recall if not np.isnan(recall[d])}
        worst = max(drops, key=drops.get)
        checks += [
            _check("beats_champion", gain > 0 and gain >= policy.min_improvement,
                   f"accuracy {accuracy:.4f} vs champion {champ_accuracy:.4f} "
                   f"(gain {gain:+.4f}, need ≥ {policy.min_improvement:.4f})"),
            _check("mcnemar", test["p_value"] < policy.alpha and test["b"] > test["c"],
                   f"exact McNemar p = {test['p_value']:.3g} (b={test['b']} only challenger "
                   f"right, c={test['c']} only champion right; need p < {policy.alpha})"),
            _check("class_regression", drops[worst] <= policy.max_class_regression,
                   f"largest per-class recall drop {drops[worst]:+.4f} on digit {worst} "
                   f"(allowed {policy.max_class_regression:.4f})"),
        ]
        result["champion"] = {"accuracy": champ_accuracy, "per_class_recall": champ_recall}
        result["mcnemar"] = test
    failed = [c for c in checks if not c["passed"]]
    result["checks"] = checks
    result["decision"] = REJECT if failed else PROMOTE
    if failed:
        result["reason"] = "; ".join(f"{c['name']} failed: {c['detail']}" for c in failed)
    elif champion_pred is None:
        result["reason"] = f"no champion yet; {checks[0]['detail']}"
    else:
        result["reason"] = "all checks passed: " + "; ".join(c["detail"] for c in checks[1:])
    return result


def select_challenger(candidates: dict[str, Path]) -> str:
    """The candidate with the highest validation accuracy (ties: the first listed)."""
    if not candidates:
        raise GateError("no candidate models reached the gate")
    scores = {kind: read_info(path)["validation_accuracy"] for kind, path in candidates.items()}
    return max(scores, key=scores.get)


def run_gate(dataset: Dataset, candidates: dict[str, Path], evaluations: dict[str, Path],
             champion: tuple[str, Path] | None, policy: GatePolicy) -> dict[str, Any]:
    """Choose the challenger, score the champion on the same holdout, and decide."""
    kind = select_challenger(candidates)
    holdout_sha = dataset.manifest.get("holdout_sha256")
    challenger_eval = Evaluation.load(evaluations[kind])
    if challenger_eval.metrics.get("holdout_sha256") != holdout_sha:
        raise GateError(f"{kind} was evaluated on a different holdout than this run's")
    champion_pred = None
    champion_version = None
    champion_metrics = None
    if champion is not None:
        champion_version, champion_dir = champion
        champion_eval = evaluate(load_model(champion_dir), dataset)
        champion_pred = champion_eval.proba.argmax(axis=1)
        champion_metrics = champion_eval.metrics
    result = decide(dataset.y_holdout, challenger_eval.proba.argmax(axis=1), champion_pred, policy)
    info = read_info(candidates[kind])
    result["challenger"].update(
        kind=kind, metrics=challenger_eval.metrics,
        **{key: info.get(key) for key in ("validation_accuracy", "train_seconds", "params")},
    )
    if result["champion"] is not None:
        result["champion"].update(version=champion_version, metrics=champion_metrics)
    result["candidates"] = {
        k: {
            "validation_accuracy": read_info(path)["validation_accuracy"],
            "train_seconds": read_info(path).get("train_seconds"),
            "holdout_accuracy": Evaluation.load(evaluations[k]).metrics["accuracy"]
            if k in evaluations else None,
        }
        for k, path in candidates.items()
    }
    log.info("gate: %s %s — %s", result["decision"], kind, result["reason"])
    return result


def fetch_champion(registry, workdir: Path) -> tuple[str, Path] | None:
    """Download the production model (checksums verified), or None if there is none."""
    pointer = registry.production()
    if pointer is None:
        return None
    target = Path(workdir) / "champion"
    registry.download(pointer.version, target)
    return pointer.version, target


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for value in values:
        kind, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects KIND=PATH, got {value!r}")
        out[kind] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="digits gate", description=__doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--candidate", action="append", default=[], metavar="KIND=MODEL_DIR")
    p.add_argument("--evaluation", action="append", default=[], metavar="KIND=EVAL_DIR")
    p.add_argument("--challenger-output", type=Path, required=True,
                   help="directory receiving the chosen model (with its evaluation)")
    p.add_argument("--decision-output", type=Path, required=True, help="decision JSON file")
    defaults = GatePolicy()
    for field in ("min_accuracy", "min_improvement", "alpha", "max_class_regression"):
        p.add_argument(f"--{field.replace('_', '-')}", type=float, default=getattr(defaults, field))
    p.add_argument("--no-champion", action="store_true",
                   help="judge against the floor only (no registry needed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    policy = GatePolicy(args.min_accuracy, args.min_improvement, args.alpha,
                        args.max_class_regression)
    candidates = _pairs(args.candidate, "--candidate")
    evaluations = _pairs(args.evaluation, "--evaluation")
    dataset = Dataset.load(args.dataset)
    with tempfile.TemporaryDirectory() as workdir:
        champion = None
        if not args.no_champion:
            from components.registry import Registry
            from components.settings import get_settings

            champion = fetch_champion(Registry.from_settings(get_settings()), Path(workdir))
        result = run_gate(dataset, candidates, evaluations, champion, policy)
    kind = result["challenger"]["kind"]
    shutil.copytree(candidates[kind], args.challenger_output, dirs_exist_ok=True)
    shutil.copytree(evaluations[kind], args.challenger_output / EVALUATION_DIR,
                    dirs_exist_ok=True)
    args.decision_output.parent.mkdir(parents=True, exist_ok=True)
    args.decision_output.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: result[k] for k in ("decision", "reason")}))
    return 0
