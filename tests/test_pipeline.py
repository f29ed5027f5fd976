"""The KFP wiring: the checked-in YAML is current and says what the cluster needs."""

from __future__ import annotations

import pytest
import yaml

from components.images import TRAIN_IMAGE
from pipelines.local import task_labels
from pipelines.training import (
    COMPILED,
    KAGGLE_SECRET,
    KAGGLE_SECRET_KEYS,
    MODEL_FAMILIES,
    S3_SECRET,
    S3_SECRET_KEYS,
    build_pipeline,
    compile_pipeline,
    pipeline_wiring,
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = compile_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    documents = list(yaml.safe_load_all(path.read_text()))
    return path, documents[0], documents[1] if len(documents) > 1 else {}


def test_checked_in_pipeline_yaml_is_not_stale(compiled):
    path, _, _ = compiled
    assert pipeline_wiring(COMPILED.read_text()) == pipeline_wiring(path.read_text()), (
        "pipelines/digits_pipeline.yaml is stale: run `digits compile` and commit it")


def test_staleness_ignores_a_kfp_patch_release_but_not_a_wiring_change(compiled):
    path, _, _ = compiled
    text = path.read_text()
    [sdk_line] = [line for line in text.splitlines() if line.startswith("sdkVersion:")]
    other_patch = text.replace(sdk_line, "sdkVersion: kfp-2.17.99")
    assert other_patch != text
    assert pipeline_wiring(other_patch) == pipeline_wiring(text)
    rewired = text.replace("defaultValue: 0.95", "defaultValue: 0.9", 1)
    assert rewired != text
    assert pipeline_wiring(rewired) != pipeline_wiring(text)


def test_every_stage_runs_in_the_train_image(compiled):
    """Lightweight components need kfp in their image; the serving image has none."""
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) >= 8 and "exec-kaggle-submit" in executors
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert set(images.values()) == {TRAIN_IMAGE}


def test_kaggle_step_follows_deploy_in_the_promote_branch_with_optional_credentials(compiled):
    _, spec, platform = compiled
    promote = next(c["dag"]["tasks"] for name, c in spec["components"].items()
                   if name.startswith("comp-condition-") and "kaggle-submit" in c["dag"]["tasks"])
    assert promote["deploy"]["inputs"]["parameters"]["expect"]["runtimeValue"]["constant"] \
        == "promote"
    kaggle = promote["kaggle-submit"]
    assert kaggle["dependentTasks"] == ["deploy"]
    assert kaggle["inputs"]["parameters"]["deployed"]["taskOutputParameter"]["producerTask"] \
        == "deploy"
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-kaggle-submit"]
    kaggle_secret = next(e for e in executor["secretAsEnv"] if e["secretName"] == KAGGLE_SECRET)
    assert kaggle_secret["optional"] is True  # no Secret: the step runs offline
    assert {kv["envVar"] for kv in kaggle_secret["keyToEnv"]} == set(KAGGLE_SECRET_KEYS)


def test_models_train_in_parallel_branches_and_deploy_is_conditional(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for kind in MODEL_FAMILIES:
        train = next(t for name, t in tasks.items() if name == f"train-{kind}")
        assert train["dependentTasks"] == ["ingest"]
    assert tasks["gate"]["dependentTasks"] == sorted(
        ["ingest"] + [f"train-{k}" for k in MODEL_FAMILIES]
        + ["evaluate", "evaluate-2", "evaluate-3"])
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = sorted(t["triggerPolicy"]["condition"] for t in branches.values())
    assert len(conditions) == 2, "deploy must sit behind dsl.If / dsl.Else"
    assert conditions[0] == f"!({conditions[1]})" and conditions[1].endswith("== 'promote'")
    deploys = [t for name, c in spec["components"].items() if name.startswith("comp-condition-")
               and name != "comp-condition-branches-1" for t in c["dag"]["tasks"].values()
               if t["componentRef"]["name"].startswith("comp-deploy")]
    assert sorted(t["inputs"]["parameters"]["expect"]["runtimeValue"]["constant"]
                  for t in deploys) == ["promote", "reject"]


def test_s3_credentials_come_from_a_secret_not_parameters(compiled):
    _, spec, platform = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if "key" in p.lower() or "secret" in p.lower()]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secret_users = [e for e in executors.values() if "secretAsEnv" in e]
    # ingest (feedback), the gate, the deploy step in each branch, the Kaggle step
    assert len(secret_users) == 5
    for executor in secret_users:
        entry = next(e for e in executor["secretAsEnv"] if e["secretName"] == S3_SECRET)
        assert {kv["envVar"] for kv in entry["keyToEnv"]} == set(S3_SECRET_KEYS)


def test_pipeline_parameters_expose_training_and_gate_knobs(compiled):
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("train_size", "epochs", "batch_size", "xgb_rounds", "xgb_max_depth", "seed",
                 "min_accuracy", "min_improvement", "alpha", "max_class_regression",
                 "kaggle_mode", "kaggle_test_csv"):
        assert name in params


def test_subsets_of_models_build_and_unknown_ones_do_not():
    labels = set(task_labels(build_pipeline(["xgboost"])).values())
    assert {"ingest", "train-xgboost", "evaluate-xgboost", "gate", "report"} <= labels
    assert not [label for label in labels if "cnn" in label or "baseline" in label]
    with pytest.raises(ValueError, match="subset"):
        build_pipeline(["svm"])
    with pytest.raises(ValueError, match="subset"):
        build_pipeline([])
