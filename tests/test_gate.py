"""The gate's decision table and its statistics."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from components.contract import EVALUATION_DIR, PROMOTE, REJECT, GateDecision, ModelEvaluation
from components.gate import (
    GateError,
    GatePolicy,
    decide,
    judge,
    run_gate,
    select_challenger,
)
from components.metrics import mcnemar_test
from components.models import load_model
from components.scoring import evaluate

POLICY = GatePolicy(min_accuracy=0.8, min_improvement=0.001, alpha=0.05,
                    max_class_regression=0.02)


@pytest.fixture(scope="module")
def labels(mnist):
    return mnist[3]  # the 10,000 genuine holdout labels


def wrong_on(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Predictions equal to the labels except where ``mask`` is set."""
    pred = labels.copy()
    pred[mask] = (labels[mask] + 1) % 10
    return pred


def failed(result: dict) -> set[str]:
    return {c["name"] for c in result["checks"] if not c["passed"]}


def test_mcnemar_exact_matches_the_binomial_by_hand():
    y = np.zeros(20, dtype=int)
    challenger = np.zeros(20, dtype=int)
    champion = np.zeros(20, dtype=int)
    champion[:10] = 1  # the challenger alone is right on 10 digits: b=10, c=0
    test = mcnemar_test(y, challenger, champion)
    assert (test["b"], test["c"]) == (10, 0)
    assert test["p_value"] == pytest.approx(2 * 0.5**10)
    assert mcnemar_test(y, challenger, challenger)["p_value"] == 1.0


def test_first_model_is_judged_by_the_floor_alone(labels):
    rng = np.random.default_rng(0)
    good = decide(labels, wrong_on(labels, rng.random(len(labels)) < 0.1), None, POLICY)
    assert good["decision"] == PROMOTE and "no champion" in good["reason"]
    bad = decide(labels, wrong_on(labels, rng.random(len(labels)) < 0.3), None, POLICY)
    assert bad["decision"] == REJECT and failed(bad) == {"accuracy_floor"}


def test_clearly_better_challenger_is_promoted(labels):
    rng = np.random.default_rng(1)
    champion_wrong = rng.random(len(labels)) < 0.05
    challenger_wrong = champion_wrong & (rng.random(len(labels)) < 0.5)
    result = decide(labels, wrong_on(labels, challenger_wrong),
                    wrong_on(labels, champion_wrong), POLICY)
    assert result["decision"] == PROMOTE, result["reason"]
    assert result["mcnemar"]["b"] > 0 and result["mcnemar"]["c"] == 0
    assert result["mcnemar"]["p_value"] < 1e-10


def test_equal_challenger_is_rejected(labels):
    pred = wrong_on(labels, np.random.default_rng(2).random(len(labels)) < 0.05)
    result = decide(labels, pred, pred.copy(), POLICY)
    assert result["decision"] == REJECT
    assert failed(result) == {"beats_champion", "mcnemar"}


def test_worse_challenger_is_rejected(labels):
    rng = np.random.default_rng(3)
    champion_wrong = rng.random(len(labels)) < 0.03
    challenger_wrong = champion_wrong | (rng.random(len(labels)) < 0.03)
    result = decide(labels, wrong_on(labels, challenger_wrong),
                    wrong_on(labels, champion_wrong), POLICY)
    assert result["decision"] == REJECT
    assert {"beats_champion", "mcnemar"} <= failed(result)


def test_better_by_a_hair_is_not_significant(labels):
    rng = np.random.default_rng(4)
    champion_wrong = rng.random(len(labels)) < 0.05
    challenger_wrong = champion_wrong.copy()
    flip = np.flatnonzero(champion_wrong)[:20]  # challenger fixes 20 digits …
    challenger_wrong[flip] = False
    new = np.flatnonzero(~champion_wrong)[:9]  # … and breaks 9 others: b=20, c=9, p ≈ 0.06
    challenger_wrong[new] = True
    result = decide(labels, wrong_on(labels, challenger_wrong),
                    wrong_on(labels, champion_wrong), POLICY)
    assert result["challenger"]["accuracy"] > result["champion"]["accuracy"]
    assert result["decision"] == REJECT and failed(result) == {"mcnemar"}


def test_significantly_better_but_one_class_collapsed_is_rejected(labels):
    rng = np.random.default_rng(5)
    sevens = labels == 7
    champion_wrong = ~sevens & (rng.random(len(labels)) < 0.2)
    challenger_wrong = sevens & (rng.random(len(labels)) < 0.1)
    result = decide(labels, wrong_on(labels, challenger_wrong),
                    wrong_on(labels, champion_wrong), POLICY)
    assert result["challenger"]["accuracy"] - result["champion"]["accuracy"] > 0.1
    assert result["mcnemar"]["p_value"] < 1e-10
    assert result["decision"] == REJECT and failed(result) == {"class_regression"}
    assert "digit 7" in result["reason"]


@pytest.fixture(scope="module")
def candidates(tiny_models, tiny_dataset, tmp_path_factory):
    """Two real models with their evaluations, as the pipeline hands them over (read only)."""
    models, evaluations = {}, {}
    for kind in ("baseline", "xgboost"):
        tiny = tiny_models[kind]
        models[kind] = tiny.directory
        evaluations[kind] = tmp_path_factory.mktemp(f"{kind}-eval")
        evaluate(tiny.model, tiny_dataset, info=tiny.info).save(evaluations[kind])
    return models, evaluations


def test_challenger_is_chosen_by_validation_not_holdout(candidates, tmp_path):
    models, _ = candidates
    for kind, score in (("baseline", 0.5), ("xgboost", 0.9)):
        info = json.loads((models[kind] / "model.json").read_text())
        target = tmp_path / kind
        target.mkdir()
        (target / "model.json").write_text(json.dumps({**info, "validation_accuracy": score}))
    assert select_challenger({k: tmp_path / k for k in ("baseline", "xgboost")}) == "xgboost"
    with pytest.raises(GateError, match="no candidate"):
        select_challenger({})


def test_the_gate_scores_the_champion_on_this_runs_holdout(candidates, tiny_dataset):
    models, evaluations = candidates
    kind = select_challenger(models)
    # The production model is the challenger itself: it must not replace itself.
    result, champion = judge(tiny_dataset, models, evaluations,
                             ("v-champion", models[kind]), GatePolicy(min_accuracy=0.5))
    assert result.champion_version == "v-champion" == champion.info["version"]
    # The champion was scored afresh on this run's holdout, identically to its own evaluation.
    rescored = evaluate(load_model(models[kind]), tiny_dataset)
    np.testing.assert_allclose(champion.proba, rescored.proba, atol=1e-6)
    assert result.champion["metrics"]["n"] == len(tiny_dataset.y_holdout)
    assert set(result.candidates) == {"baseline", "xgboost"}
    assert result.challenger_kind == kind
    assert result.decision == REJECT
    assert {c["name"] for c in result.checks if not c["passed"]} == {"beats_champion", "mcnemar"}


def _registered(model_dir, evaluation_dir, target, *, holdout_sha256=None, answer=None):
    """A version as the registry hands it back: the model with its evaluation, maybe edited."""
    shutil.copytree(model_dir, target)
    stored = ModelEvaluation.load(evaluation_dir)
    info = {**stored.info, "holdout_sha256": holdout_sha256 or stored.info["holdout_sha256"]}
    proba = stored.proba if answer is None else np.eye(10, dtype=np.float32)[
        np.full(len(stored.y_true), answer)]
    replace(stored, proba=proba, metrics=None, info=info).save(target / EVALUATION_DIR)
    return target


def test_the_champion_answers_are_read_back_when_it_met_this_holdout(candidates, tiny_dataset,
                                                                     tmp_path):
    models, evaluations = candidates
    kind = select_challenger(models)
    # Stored answers that the model would never give: seeing them proves they were reused.
    champion = _registered(models[kind], evaluations[kind], tmp_path / "v", answer=3)
    result, scored = judge(tiny_dataset, models, evaluations, ("v-1", champion), POLICY)
    assert (scored.y_pred == 3).all() and scored.info["version"] == "v-1"
    assert result.champion["accuracy"] == pytest.approx(np.mean(tiny_dataset.y_holdout == 3))


def test_the_champion_is_scored_afresh_on_another_holdout(candidates, tiny_dataset, tmp_path):
    models, evaluations = candidates
    kind = select_challenger(models)
    champion = _registered(models[kind], evaluations[kind], tmp_path / "v",
                           holdout_sha256="another holdout", answer=3)
    _, scored = judge(tiny_dataset, models, evaluations, ("v-1", champion), POLICY)
    fresh = evaluate(load_model(models[kind]), tiny_dataset)
    np.testing.assert_allclose(scored.proba, fresh.proba, atol=1e-6)


def test_the_gate_stage_lays_out_its_outputs(candidates, tiny_dataset, tmp_path):
    models, evaluations = candidates
    tiny_dataset.save(tmp_path / "dataset")
    decision = run_gate(tmp_path / "dataset", models, evaluations, tmp_path / "challenger",
                        tmp_path / "decision", GatePolicy(min_accuracy=0.5), use_champion=False)
    assert decision == GateDecision.load(tmp_path / "decision")
    assert decision.decision == PROMOTE and "no champion yet" in decision.reason
    kind = decision.challenger_kind
    assert (tmp_path / "challenger" / "model.json").read_text() == \
        (models[kind] / "model.json").read_text()
    assert (tmp_path / "challenger" / EVALUATION_DIR / "evaluation.json").is_file()
    assert not (tmp_path / "decision" / "champion").exists()


def test_evaluation_on_another_holdout_is_refused(candidates, tiny_dataset):
    models, evaluations = candidates
    other = type(tiny_dataset)(**{**tiny_dataset.__dict__,
                                  "manifest": {**tiny_dataset.manifest, "holdout_sha256": "x"}})
    with pytest.raises(GateError, match="different holdout"):
        judge(other, models, evaluations, None, POLICY)
