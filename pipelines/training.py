"""The training pipeline: ingest → train (parallel) → evaluate → gate → report → deploy → Kaggle.

Only wiring lives here; every stage is a component from :mod:`components.ops`.
:func:`build_pipeline` makes a pipeline for any subset of model families
(``digits run --models``); the checked-in ``digits_pipeline.yaml`` is the
default with all three, compiled by ``digits compile``.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from kfp import dsl, kubernetes

from components import ops
from components.feedback import DEFAULT_CAP, USE_FEEDBACK
from components.gate import GatePolicy
from components.models import CNN, Baseline, XGBoost

MODEL_FAMILIES = ("cnn", "xgboost", "baseline")
PIPELINE_NAME = "digits-training"
COMPILED = Path(__file__).with_name("digits_pipeline.yaml")
#: Kubernetes objects the tasks that touch the registry read their S3 settings from.
S3_SECRET = "digits-s3"
S3_CONFIG_MAP = "digits-config"
S3_SECRET_KEYS = ("DIGITS_S3_ACCESS_KEY", "DIGITS_S3_SECRET_KEY")
S3_CONFIG_KEYS = ("DIGITS_S3_ENDPOINT", "DIGITS_S3_SECURE", "DIGITS_BUCKET")
#: The optional Secret holding Kaggle credentials; without it the Kaggle step runs offline.
KAGGLE_SECRET = "digits-kaggle"
KAGGLE_SECRET_KEYS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")

_POLICY = GatePolicy()
# Each family's defaults live on the family; the pipeline's parameters start from them.
_CNN, _XGB, _BASELINE = CNN.defaults, XGBoost.defaults, Baseline.defaults
#: The model parameters a run can set per family, and the pipeline parameter carrying
#: each. ``digits tune`` writes, and ``digits run --params`` reads, the model's names.
FAMILY_ARGUMENTS: dict[str, dict[str, str]] = {
    "cnn": {"epochs": "epochs", "batch_size": "batch_size",
            "learning_rate": "cnn_learning_rate", "dropout": "cnn_dropout"},
    "xgboost": {"n_estimators": "xgb_rounds", "max_depth": "xgb_max_depth",
                "learning_rate": "xgb_learning_rate", "colsample_bytree": "xgb_colsample_bytree"},
    "baseline": {"max_iter": "baseline_max_iter"},
}


def family_arguments(family: str, params: dict[str, object]) -> dict[str, object]:
    """A family's model settings → the pipeline arguments carrying them (``--params``).

    A setting the pipeline has no parameter for is refused by name, so a params
    file never changes less than it says.
    """
    carried = FAMILY_ARGUMENTS.get(family)
    if carried is None:
        raise ValueError(f"unknown model family {family!r}; choose from {MODEL_FAMILIES}")
    missing = sorted(set(params) - set(carried))
    if missing:
        raise ValueError(f"a run cannot set {family} {', '.join(missing)}; it sets "
                         f"{', '.join(carried)}")
    return {carried[name]: value for name, value in params.items()}


class PipelineOutputs(NamedTuple):
    """What a run hands back: the gate's evidence and the rendered report."""

    decision_report: dsl.Artifact
    report: dsl.HTML


def _with_registry_access(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """S3 credentials come from a Secret on the cluster, never from parameters."""
    kubernetes.use_secret_as_env(
        task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_SECRET_KEYS}
    )
    kubernetes.use_config_map_as_env(
        task, config_map_name=S3_CONFIG_MAP, config_map_key_to_env={k: k for k in S3_CONFIG_KEYS}
    )
    task.set_caching_options(False)  # the champion changes between runs
    return task


def build_pipeline(models: Sequence[str] = MODEL_FAMILIES) -> Callable:
    """A KFP pipeline training ``models`` side by side, gated against production."""
    unknown = set(models) - set(MODEL_FAMILIES)
    if unknown or not models:
        raise ValueError(f"models must be a non-empty subset of {MODEL_FAMILIES}, got {models}")

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train a CNN, XGBoost and a baseline on MNIST; promote the best "
                    "only if it beats production on the frozen holdout.",
    )
    def digits_pipeline(
        source: str = "mnist",
        mnist_dir: str = "",
        csv_path: str = "",
        train_size: int = 0,
        holdout_size: int = 0,
        seed: int = 0,
        use_feedback: bool = USE_FEEDBACK,
        feedback_cap: float = DEFAULT_CAP,
        feedback_weight: int = 1,
        epochs: int = _CNN["epochs"],
        batch_size: int = _CNN["batch_size"],
        cnn_learning_rate: float = _CNN["learning_rate"],
        cnn_dropout: float = _CNN["dropout"],
        xgb_rounds: int = _XGB["n_estimators"],
        xgb_max_depth: int = _XGB["max_depth"],
        xgb_learning_rate: float = _XGB["learning_rate"],
        xgb_colsample_bytree: float = _XGB["colsample_bytree"],
        baseline_max_iter: int = _BASELINE["max_iter"],
        min_accuracy: float = _POLICY.min_accuracy,
        min_improvement: float = _POLICY.min_improvement,
        alpha: float = _POLICY.alpha,
        max_class_regression: float = _POLICY.max_class_regression,
        kaggle_mode: str = "auto",
        kaggle_test_csv: str = "",
        run_id: str = "",
    ) -> PipelineOutputs:
        data = _with_registry_access(ops.ingest(
            source=source, mnist_dir=mnist_dir, csv_path=csv_path, train_size=train_size,
            holdout_size=holdout_size, seed=seed, use_feedback=use_feedback,
            feedback_cap=feedback_cap, feedback_weight=feedback_weight,
        ).set_display_name("ingest"))
        dataset = data.outputs["dataset"]
        trainers = {
            "cnn": lambda: ops.train_cnn(
                dataset=dataset, epochs=epochs, batch_size=batch_size,
                learning_rate=cnn_learning_rate, dropout=cnn_dropout, seed=seed,
            ).set_cpu_request("2").set_memory_request("4G"),
            "xgboost": lambda: ops.train_xgboost(
                dataset=dataset, rounds=xgb_rounds, max_depth=xgb_max_depth,
                learning_rate=xgb_learning_rate, colsample_bytree=xgb_colsample_bytree,
                seed=seed,
            ).set_cpu_request("2").set_memory_request("4G"),
            "baseline": lambda: ops.train_baseline(
                dataset=dataset, max_iter=baseline_max_iter, seed=seed,
            ),
        }
        candidates = {}
        for kind in models:
            trained = trainers[kind]().set_display_name(f"train-{kind}")
            scored = ops.evaluate(dataset=dataset, model=trained.outputs["model"])
            scored.set_display_name(f"evaluate-{kind}")
            candidates[f"{kind}_model"] = trained.outputs["model"]
            candidates[f"{kind}_evaluation"] = scored.outputs["evaluation"]

        judged = _with_registry_access(ops.gate(
            dataset=dataset, min_accuracy=min_accuracy, min_improvement=min_improvement,
            alpha=alpha, max_class_regression=max_class_regression, **candidates,
        ).set_display_name("gate"))
        rendered = ops.report(
            decision_report=judged.outputs["decision_report"],
            **{k: v for k, v in candidates.items() if k.endswith("_evaluation")},
        ).set_display_name("report")
        registered = {"dataset": dataset, "run_id": run_id,
                      "challenger": judged.outputs["challenger"],
                      "decision_report": judged.outputs["decision_report"],
                      "report": rendered.outputs["html"]}
        with dsl.If(judged.outputs["decision"] == "promote", name="gate-passed"):
            deployed = _with_registry_access(ops.deploy(expect="promote", **registered)
                                             .set_display_name("deploy"))
            submitted = _with_registry_access(ops.kaggle_submit(
                dataset=dataset, deployed=deployed.output, mode=kaggle_mode,
                test_csv=kaggle_test_csv,
            ).set_display_name("kaggle-submit"))
            kubernetes.use_secret_as_env(
                submitted, secret_name=KAGGLE_SECRET, optional=True,
                secret_key_to_env={k: k for k in KAGGLE_SECRET_KEYS})
        with dsl.Else(name="gate-failed"):
            _with_registry_access(ops.deploy(expect="reject", **registered)
                                  .set_display_name("archive-rejected"))
        return PipelineOutputs(decision_report=judged.outputs["decision_report"],
                               report=rendered.outputs["html"])

    return digits_pipeline


def pipeline_defaults() -> dict[str, object]:
    """Every pipeline parameter's default, read from the pipeline itself (one source)."""
    return {name: spec.default
            for name, spec in build_pipeline().component_spec.inputs.items()}


def compile_pipeline(output: Path = COMPILED, models: Sequence[str] = MODEL_FAMILIES) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(models), str(output))
    return output


#: Top-level keys of a compiled pipeline that name the compiler, not the pipeline.
_SDK_KEYS = ("sdkVersion",)


def pipeline_wiring(compiled_yaml: str) -> list[dict]:
    """The parts of a compiled pipeline that a cluster acts on, without the SDK's version.

    A kfp patch release rewrites ``sdkVersion: kfp-X.Y.Z`` and nothing else; comparing
    wiring instead of text keeps "the checked-in YAML is current" true across patches
    while any change to tasks, images, parameters or platform config still shows.
    """
    import yaml

    documents = [doc for doc in yaml.safe_load_all(compiled_yaml) if doc is not None]
    return [{k: v for k, v in doc.items() if k not in _SDK_KEYS} for doc in documents]
