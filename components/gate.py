"""Gate stage: decide whether the run's best model replaces the production champion.

The challenger is the candidate with the best *validation* accuracy (the
holdout is never used to choose, only to judge). Challenger and champion are
then scored on the same frozen holdout in the same run, and the challenger is
promoted only if every check in :func:`decide` passes. The decision carries its
evidence, so anyone can see why.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.argparsing import key_value, make_parser
from components.contract import (
    CHAMPION_DIR,
    EVALUATION_DIR,
    EVALUATION_FILE,
    PROMOTE,
    REJECT,
    GateDecision,
    ModelEvaluation,
    StageError,
)
from components.data import Dataset
from components.metrics import mcnemar_test
from components.models import read_info
from components.scoring import evaluate_saved
from components.stem import NUM_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds a challenger must clear; the defaults suit MNIST-sized holdouts."""

    min_accuracy: float = 0.95
    min_improvement: float = 0.001
    alpha: float = 0.05
    max_class_regression: float = 0.02


class GateError(StageError):
    """The gate cannot judge (inputs disagree or the champion cannot be scored)."""


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
        test = mcnemar_test(y_true, challenger_pred, champion_pred)
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


def judge(dataset: Dataset, candidates: dict[str, Path], evaluations: dict[str, Path],
          champion: tuple[str, Path] | None,
          policy: GatePolicy) -> tuple[GateDecision, ModelEvaluation | None]:
    """Choose the challenger, score the champion on the same holdout, and decide.

    The champion's answers come from :func:`stored_answers` when it met this
    holdout before, else from running it. Returns the decision and the
    champion's evaluation (for the report).
    """
    kind = select_challenger(candidates)
    holdout_sha = dataset.manifest.get("holdout_sha256")
    scored = {k: ModelEvaluation.load(path) for k, path in evaluations.items()}
    if scored[kind].info.get("holdout_sha256") != holdout_sha:
        raise GateError(f"{kind} was evaluated on a different holdout than this run's")
    champion_eval = None
    if champion is not None:
        version, champion_dir = champion
        champion_eval = stored_answers(champion_dir, dataset, version) or evaluate_saved(
            champion_dir, dataset, name="champion", extra={"version": version})
    result = decide(dataset.y_holdout, scored[kind].y_pred,
                    None if champion_eval is None else champion_eval.y_pred, policy)
    infos = {k: read_info(path) for k, path in candidates.items()}
    result["challenger"].update(
        kind=kind, metrics=scored[kind].metrics,
        **{key: infos[kind].get(key) for key in ("validation_accuracy", "train_seconds", "params")},
    )
    if champion_eval is not None:
        result["champion"].update(version=champion_eval.info["version"],
                                  kind=champion_eval.info.get("kind"),
                                  metrics=champion_eval.metrics)
    result["candidates"] = {
        k: {
            "validation_accuracy": info["validation_accuracy"],
            "train_seconds": info.get("train_seconds"),
            "holdout_accuracy": scored[k].metrics["accuracy"] if k in scored else None,
            "metrics": scored[k].metrics if k in scored else None,
        }
        for k, info in infos.items()
    }
    log.info("gate: %s %s — %s", result["decision"], kind, result["reason"])
    return GateDecision(**result), champion_eval


def stored_answers(champion_dir: Path, dataset: Dataset,
                   version: str) -> ModelEvaluation | None:
    """The champion's evaluation stored with its version, if it was made on this holdout.

    The holdout is frozen, so the champion usually met these very digits when it
    was a challenger; the same model gives the same answers, and reading them
    back spares loading and running it (a CNN's holdout pass is most of a
    gate's time). Anything else is scored afresh: another holdout (by its
    sha256 and labels), or a run with users' feedback digits, on which the
    report shows the champion too.
    """
    directory = Path(champion_dir) / EVALUATION_DIR
    holdout_sha = dataset.manifest.get("holdout_sha256")
    if not (directory / EVALUATION_FILE).is_file() or not holdout_sha or len(dataset.y_feedback):
        return None
    stored = ModelEvaluation.load(directory, images=dataset.x_holdout)
    if (stored.info.get("holdout_sha256") != holdout_sha
            or not np.array_equal(stored.y_true, dataset.y_holdout)):
        return None
    log.info("gate: champion %s answers read from its stored evaluation", version)
    return replace(stored, name="champion", info={**stored.info, "version": version})


def fetch_champion(registry, workdir: Path) -> tuple[str, Path] | None:
    """Download the production model (checksums verified), or None if there is none."""
    pointer = registry.production()
    if pointer is None:
        return None
    target = Path(workdir) / "champion"
    registry.download(pointer.version, target)
    return pointer.version, target


def run_gate(dataset_dir: Path, candidates: dict[str, Path], evaluations: dict[str, Path],
             challenger_output: Path, decision_output: Path, policy: GatePolicy, *,
             registry=None, use_champion: bool = True) -> GateDecision:
    """The gate stage: judge the candidates against production and lay out its outputs.

    ``challenger_output`` receives the chosen model with its evaluation
    (:data:`~components.contract.EVALUATION_DIR`); ``decision_output`` the
    decision and the champion's evaluation. Production is read from
    ``registry`` (default: the configured one) unless ``use_champion`` is off.
    """
    dataset = Dataset.load(Path(dataset_dir))
    with tempfile.TemporaryDirectory() as workdir:
        champion = None
        if use_champion:
            if registry is None:
                from components.registry import Registry
                from components.settings import get_settings

                registry = Registry.from_settings(get_settings())
            champion = fetch_champion(registry, Path(workdir))
        decision, champion_eval = judge(dataset, candidates, evaluations, champion, policy)
    kind = decision.challenger_kind
    shutil.copytree(candidates[kind], challenger_output, dirs_exist_ok=True)
    shutil.copytree(evaluations[kind], Path(challenger_output) / EVALUATION_DIR,
                    dirs_exist_ok=True)
    if champion_eval is not None:
        champion_eval.save(Path(decision_output) / CHAMPION_DIR)
    decision.save(decision_output)
    return decision


def run_for_kfp(dataset_path: str, models: dict[str, Any], evaluations: dict[str, Any],
                challenger_artifact, decision_artifact, policy: GatePolicy) -> tuple[str, str]:
    """What the gate component does: judge the families that ran; label the artifacts.

    ``models`` and ``evaluations`` map each family to its KFP input, ``None``
    where the family was not trained this run. Returns (decision, challenger kind).
    """
    from components.progress import headline

    present = [kind for kind in models
               if models[kind] is not None and evaluations.get(kind) is not None]
    result = run_gate(Path(dataset_path), {kind: Path(models[kind].path) for kind in present},
                      {kind: Path(evaluations[kind].path) for kind in present},
                      Path(challenger_artifact.path), Path(decision_artifact.path), policy)
    kind = result.challenger_kind
    challenger_artifact.metadata.update(kind=kind, decision=result.decision)
    decision_artifact.metadata.update(decision=result.decision, reason=result.reason)
    headline(f"{result.decision} {kind}")
    return result.decision, kind


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits gate", __doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--candidate", action="append", default=[], type=key_value,
                   metavar="KIND=MODEL_DIR")
    p.add_argument("--evaluation", action="append", default=[], type=key_value,
                   metavar="KIND=EVAL_DIR")
    p.add_argument("--challenger-output", type=Path, required=True,
                   help="directory receiving the chosen model (with its evaluation)")
    p.add_argument("--decision-output", type=Path, required=True,
                   help="directory receiving decision.json and the champion's evaluation")
    defaults = GatePolicy()
    for field in fields(GatePolicy):
        p.add_argument(f"--{field.name.replace('_', '-')}", type=float,
                       default=getattr(defaults, field.name))
    p.add_argument("--no-champion", action="store_true",
                   help="judge against the floor only (no registry needed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    policy = GatePolicy(**{f.name: getattr(args, f.name) for f in fields(GatePolicy)})
    decision = run_gate(args.dataset, {kind: Path(path) for kind, path in args.candidate},
                        {kind: Path(path) for kind, path in args.evaluation},
                        args.challenger_output, args.decision_output, policy,
                        use_champion=not args.no_champion)
    print(json.dumps({"decision": decision.decision, "reason": decision.reason}))
    return 0
