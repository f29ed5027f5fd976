"""The KFP components: typed interfaces only.

Each body hands its typed inputs to the stage's ``run_for_kfp`` (which
labels the artifacts and prints the step's headline); the work lives in the
stage modules, which are tested without KFP. The ``Args:`` of each docstring
is what the Kubeflow dashboard shows beside each input. They are
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

from components.images import SERVE_IMAGE, TRAIN_IMAGE

component = dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
#: The Kaggle step predicts exactly as the server does: in the serving image.
serve_component = dsl.component(base_image=SERVE_IMAGE, install_kfp_package=False)


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

    Args:
        dataset: The split dataset (train, validation, holdout and their manifest).
        use_feedback: Merge the digits users labelled (the registry's feedback) into training.
        feedback_cap: Largest share of the training split feedback digits may take (0..1).
        feedback_weight: How many times each feedback digit counts in training.
        source: "mnist" (IDX files) or "kaggle-csv" (digit-recognizer's train.csv).
        mnist_dir: Directory of the MNIST IDX files; empty: DIGITS_MNIST_DIR, the cache,
            else a checksum-verified download.
        csv_path: Kaggle train.csv, for source "kaggle-csv".
        train_size: Stratified, seeded subsample of the training split; 0: all of it.
        holdout_size: Keep only the first N holdout digits; 0: all of them.
        seed: Seed of the validation split and of any subsample.
    """
    from components.ingest import run_for_kfp

    run_for_kfp(dataset, source, seed=seed, mnist_dir=mnist_dir, csv_path=csv_path,
                train_size=train_size, holdout_size=holdout_size, use_feedback=use_feedback,
                feedback_cap=feedback_cap, feedback_weight=feedback_weight)


@component
def train_cnn(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    dropout: float,
    seed: int,
):
    """Train the Keras CNN (defaults: the pipeline's, from ``components.models.CNN``).

    Args:
        dataset: The split dataset from ingest.
        model: The trained, calibrated CNN (Keras file and model.json).
        metrics: Validation accuracy and training seconds.
        epochs: Passes over the training split.
        batch_size: Digits per training step.
        learning_rate: Peak learning rate of the warm-up + cosine schedule.
        dropout: Share of the dense layer's units dropped while training.
        seed: Seed of initialisation, shuffling and augmentation.
    """
    from components.train import run_for_kfp

    run_for_kfp("cnn", dataset.path, model, metrics, epochs=epochs, batch_size=batch_size,
                learning_rate=learning_rate, dropout=dropout, seed=seed)


@component
def train_xgboost(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    rounds: int,
    max_depth: int,
    learning_rate: float,
    colsample_bytree: float,
    seed: int,
):
    """Train the XGBoost model (defaults: the pipeline's, from ``components.models.XGBoost``).

    Args:
        dataset: The split dataset from ingest.
        model: The trained, calibrated booster (XGBoost file and model.json).
        metrics: Validation accuracy and training seconds.
        rounds: Most boosting rounds (early stopping on validation may use fewer).
        max_depth: Deepest split of each tree.
        learning_rate: Shrinkage of each round's trees.
        colsample_bytree: Share of the feature columns each tree may split on.
        seed: Seed of column sampling.
    """
    from components.train import run_for_kfp

    run_for_kfp("xgboost", dataset.path, model, metrics, n_estimators=rounds,
                max_depth=max_depth, learning_rate=learning_rate,
                colsample_bytree=colsample_bytree, seed=seed)


@component
def train_baseline(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    max_iter: int,
    seed: int,
):
    """Train the logistic-regression baseline (defaults: ``components.models.Baseline``).

    Args:
        dataset: The split dataset from ingest.
        model: The trained, calibrated weights (numpy file and model.json).
        metrics: Validation accuracy and training seconds.
        max_iter: Most L-BFGS iterations.
        seed: Seed of the solver.
    """
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
    """Score one model on the frozen holdout; feed the KFP dashboard.

    Args:
        dataset: The split dataset from ingest (its frozen holdout is scored).
        model: A trained model from a train step.
        evaluation: Every metric and the holdout predictions they came from.
        metrics: The headline numbers (accuracy, log-loss, ECE, latency, ...).
        classification: Confusion matrix and ROC curve for the dashboard.
    """
    from components.evaluate import run_for_kfp

    run_for_kfp(dataset.path, model.path, evaluation, metrics, classification)


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
    """Pick the best candidate by validation score; judge it against the champion.

    Args:
        dataset: The split dataset from ingest (the champion is scored on its holdout).
        challenger: The chosen candidate, with the evaluation it was judged by.
        decision_report: The decision, its checks and the champion's evaluation.
        min_accuracy: Holdout accuracy every promotion needs, champion or not.
        min_improvement: Accuracy a challenger must add over the champion.
        alpha: Significance level of the paired McNemar test against the champion.
        max_class_regression: Largest drop in any one digit's recall that is tolerated.
        cnn_model: The CNN, when it was trained this run.
        cnn_evaluation: Its holdout evaluation.
        xgboost_model: The XGBoost model, when it was trained this run.
        xgboost_evaluation: Its holdout evaluation.
        baseline_model: The baseline, when it was trained this run.
        baseline_evaluation: Its holdout evaluation.
    """
    from collections import namedtuple

    from components.gate import GatePolicy, run_for_kfp

    decision, kind = run_for_kfp(
        dataset.path,
        {"cnn": cnn_model, "xgboost": xgboost_model, "baseline": baseline_model},
        {"cnn": cnn_evaluation, "xgboost": xgboost_evaluation, "baseline": baseline_evaluation},
        challenger, decision_report,
        GatePolicy(min_accuracy=min_accuracy, min_improvement=min_improvement, alpha=alpha,
                   max_class_regression=max_class_regression))
    return namedtuple("GateOutputs", ["decision", "challenger_kind"])(decision, kind)


@component
def report(
    decision_report: Input[Artifact],
    html: Output[HTML],
    summary: Output[Markdown],
    cnn_evaluation: Optional[Input[Artifact]] = None,
    xgboost_evaluation: Optional[Input[Artifact]] = None,
    baseline_evaluation: Optional[Input[Artifact]] = None,
):
    """Render the run's report: every candidate, the champion, the gate's evidence.

    Args:
        decision_report: The gate's decision and the champion's evaluation.
        html: The self-contained HTML report.
        summary: The gate's verdict and each candidate's scores, in Markdown.
        cnn_evaluation: The CNN's holdout evaluation, when it was trained this run.
        xgboost_evaluation: The XGBoost model's, likewise.
        baseline_evaluation: The baseline's, likewise.
    """
    from components.report import run_for_kfp

    run_for_kfp(decision_report.path, {"cnn": cnn_evaluation, "xgboost": xgboost_evaluation,
                                       "baseline": baseline_evaluation}, html, summary)


@component
def deploy(
    dataset: Input[Dataset],
    challenger: Input[Model],
    decision_report: Input[Artifact],
    report: Input[HTML],
    expect: str,
    run_id: str = "",
) -> str:
    """Promote (``expect='promote'``) or archive (``'reject'``) the challenger; return JSON.

    Args:
        dataset: The split dataset from ingest (its manifest joins the version's lineage).
        challenger: The gate's chosen candidate.
        decision_report: The gate's decision (must agree with ``expect``).
        report: The run's HTML report, stored with the version.
        expect: "promote" or "reject": the pipeline branch this step runs on.
        run_id: The pipeline run's id, recorded with the version.
    """
    from components.deploy import run_for_kfp

    return run_for_kfp(challenger.path, decision_report.path, dataset.path, report.path,
                       expect=expect, run_id=run_id)


@serve_component
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

    Args:
        dataset: The split dataset from ingest (its holdout is scored offline).
        deployed: The deploy step's JSON outcome (which version was promoted).
        submission: The submission CSV and its record.
        mode: "auto", "online" (submit; fail without credentials) or "offline".
        test_csv: Kaggle's test.csv inside the container; empty: score the holdout.
    """
    from components.kaggle.job import run_for_kfp

    return run_for_kfp(deployed, dataset.path, submission, mode=mode, test_csv=test_csv)
