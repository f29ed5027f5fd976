"""The KFP components: typed interfaces only.

Each body just turns its typed inputs into the stage's ``main(argv)`` flags;
the work lives in the stage modules, which are tested without KFP. They are
lightweight Python components (not container components) so that
``kfp.local``'s SubprocessRunner can run the very same definitions that run
in ``TRAIN_IMAGE`` on a cluster; the image already has ``kfp`` installed,
hence ``install_kfp_package=False``.
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from components.images import TRAIN_IMAGE

#: Every step runs in the training image: a lightweight KFP component needs kfp in its
#: image, which the serving image leaves out. The Kaggle step still predicts exactly as
#: the server does: both load the version's inference form (components.models.load_model)
#: on the same runtime, installed in both images from the same pins.
component = dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)


@component
def ingest(
    dataset: Output[Dataset],
    use_feedback: bool,
    feedback_cap: float,
    feedback_weight: int,
    source: str = "mnist",
    mnist_dir: str = "",
    csv_path: str = "",
    train_size: int = 0,
    holdout_size: int = 0,
    seed: int = 0,
):
    """Read MNIST or a Kaggle CSV; write train / validation / frozen holdout.

    With ``use_feedback``, the users' feedback digits in the registry join the
    training split only (capped at ``feedback_cap`` of it, each ``feedback_weight`` times).
    """
    from pathlib import Path

    from components.ingest import run_ingest
    from components.progress import headline

    data = run_ingest(Path(dataset.path), source, seed=seed, mnist_dir=mnist_dir or None,
                      csv_path=csv_path or None, train_size=train_size or None,
                      holdout_size=holdout_size or None, feedback=use_feedback,
                      feedback_cap=feedback_cap, feedback_weight=feedback_weight)
    sizes = data.manifest["sizes"]
    used = data.manifest.get("feedback", {}).get("used", 0)
    dataset.metadata.update(source=data.manifest["source"], seed=seed, feedback=used, **sizes)
    headline(" / ".join(f"{count:,} {split}" for split, count in sizes.items())
             + (f" ({used:,} feedback)" if use_feedback else ""))


@component
def train_cnn(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
):
    """Train the Keras CNN (defaults: the pipeline's, from ``components.models.CNN``)."""
    from components.train import run_for_kfp

    run_for_kfp("cnn", dataset.path, model, metrics, epochs=epochs, batch_size=batch_size,
                learning_rate=learning_rate, seed=seed)


@component
def train_xgboost(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    rounds: int,
    max_depth: int,
    learning_rate: float,
    seed: int,
):
    """Train the XGBoost model (defaults: the pipeline's, from ``components.models.XGBoost``)."""
    from components.train import run_for_kfp

    run_for_kfp("xgboost", dataset.path, model, metrics, n_estimators=rounds,
                max_depth=max_depth, learning_rate=learning_rate, seed=seed)


@component
def train_baseline(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    max_iter: int,
    seed: int,
):
    """Train the logistic-regression baseline (defaults: ``components.models.Baseline``)."""
    from components.train import run_for_kfp

    run_for_kfp("baseline", dataset.path, model, metrics, max_iter=max_iter, seed=seed)


@component
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
):
    """Score one model on the frozen holdout; feed the KFP dashboard."""
    from pathlib import Path

    from components.evaluate import run_evaluate
    from components.metrics import kfp_classification_inputs, summary_scalars
    from components.progress import headline

    scored = run_evaluate(Path(dataset.path), Path(model.path), Path(evaluation.path))
    headline(f"holdout accuracy {scored.metrics['accuracy']:.4f}")
    for name, value in summary_scalars(scored.metrics).items():
        metrics.log_metric(name, value)
    curves = kfp_classification_inputs(scored.y_true, scored.proba)
    classification.log_confusion_matrix(curves["categories"], curves["confusion_matrix"])
    classification.log_roc_curve(curves["fpr"], curves["tpr"], curves["thresholds"])


@component
def gate(
    dataset: Input[Dataset],
    challenger: Output[Model],
    decision_report: Output[Artifact],
    min_accuracy: float,
    min_improvement: float,
    alpha: float,
    max_class_regression: float,
    cnn_model: Optional[Input[Model]] = None,
    cnn_evaluation: Optional[Input[Artifact]] = None,
    xgboost_model: Optional[Input[Model]] = None,
    xgboost_evaluation: Optional[Input[Artifact]] = None,
    baseline_model: Optional[Input[Model]] = None,
    baseline_evaluation: Optional[Input[Artifact]] = None,
) -> NamedTuple("GateOutputs", decision=str, challenger_kind=str):
    """Pick the best candidate by validation score; judge it against the champion."""
    from collections import namedtuple
    from pathlib import Path

    from components.gate import GatePolicy, run_gate
    from components.progress import headline

    pairs = {"cnn": (cnn_model, cnn_evaluation), "xgboost": (xgboost_model, xgboost_evaluation),
             "baseline": (baseline_model, baseline_evaluation)}
    present = {kind: pair for kind, pair in pairs.items() if None not in pair}
    result = run_gate(
        Path(dataset.path), {kind: Path(m.path) for kind, (m, _) in present.items()},
        {kind: Path(e.path) for kind, (_, e) in present.items()},
        Path(challenger.path), Path(decision_report.path),
        GatePolicy(min_accuracy, min_improvement, alpha, max_class_regression))
    kind = result.challenger_kind
    challenger.metadata.update(kind=kind, decision=result.decision)
    decision_report.metadata.update(decision=result.decision, reason=result.reason)
    headline(f"{result.decision} {kind}")
    return namedtuple("GateOutputs", ["decision", "challenger_kind"])(result.decision, kind)


@component
def report(
    decision_report: Input[Artifact],
    html: Output[HTML],
    summary: Output[Markdown],
    cnn_evaluation: Optional[Input[Artifact]] = None,
    xgboost_evaluation: Optional[Input[Artifact]] = None,
    baseline_evaluation: Optional[Input[Artifact]] = None,
):
    """Render the run's report: every candidate, the champion, the gate's evidence."""
    import shutil
    import tempfile
    from pathlib import Path

    from components.contract import GateDecision
    from components.report import run_report

    evaluations = {kind: Path(evaluation.path) for kind, evaluation in
                   (("cnn", cnn_evaluation), ("xgboost", xgboost_evaluation),
                    ("baseline", baseline_evaluation)) if evaluation is not None}
    with tempfile.TemporaryDirectory() as out:
        page, _ = run_report(Path(decision_report.path), evaluations, Path(out))
        shutil.copy(page, html.path)
    decision = GateDecision.load(Path(decision_report.path))
    rows = ["| model | validation | holdout |", "| --- | --- | --- |"]
    for kind, row in decision.candidates.items():
        rows.append(f"| {kind} | {row['validation_accuracy']:.4f} | "
                    f"{row['holdout_accuracy']:.4f} |")
    with open(summary.path, "w") as handle:
        handle.write(f"## Gate: {decision.decision} {decision.challenger_kind}\n\n"
                     f"{decision.reason}\n\n" + "\n".join(rows) + "\n")


@component
def deploy(
    dataset: Input[Dataset],
    challenger: Input[Model],
    decision_report: Input[Artifact],
    report: Input[HTML],
    expect: str,
    run_id: str = "",
) -> str:
    """Promote (``expect='promote'``) or archive (``'reject'``) the challenger; return JSON."""
    import json
    from pathlib import Path

    from components.deploy import run_deploy
    from components.progress import headline

    outcome = run_deploy(Path(challenger.path), Path(decision_report.path), Path(dataset.path),
                         Path(report.path), expect=expect, run_id=run_id)
    headline(f"{outcome['status']} {outcome['version']}")
    return json.dumps(outcome)


@component
def kaggle_submit(
    dataset: Input[Dataset],
    deployed: str,
    submission: Output[Artifact],
    mode: str = "auto",
    test_csv: str = "",
) -> str:
    """Predict Kaggle's format with the version just promoted; submit or score offline; archive.

    ``mode='auto'`` submits when Kaggle credentials (the optional Secret
    ``digits-kaggle``) and Kaggle's ``test.csv`` are at hand, and otherwise
    scores the frozen holdout offline, saying plainly that it did not submit.
    """
    import json
    from pathlib import Path

    from components.kaggle import submit_promoted
    from components.progress import headline

    outcome = json.loads(deployed)
    version = outcome["version"]
    if outcome["status"] != "promoted":  # lost a race to another run: nothing to submit
        headline(f"skipped: {version} was not promoted")
        return json.dumps(None)
    record = submit_promoted(version, Path(submission.path), mode=mode,
                             dataset_dir=Path(dataset.path),
                             test_csv=Path(test_csv) if test_csv else None)
    submission.metadata.update(mode=record["mode"], version=version, rows=record["rows"],
                               local_score=record["local_score"],
                               kaggle_score=record["kaggle_score"])
    score = record["kaggle_score"] if record["submitted"] else record["local_score"]
    shown = "" if score is None else f" scored {score:.4f}"
    headline(f"{record['mode']}{shown}" + ("" if record["submitted"] else ": not submitted"))
    return json.dumps(record)
