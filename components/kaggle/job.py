"""The Kaggle job's typed core: which model, offline or online, and the record it leaves.

:func:`run_kaggle` is the stage, as ``run_train`` or ``run_gate`` are for
theirs: the CLI (``digits kaggle run``) and the pipeline's ``kaggle-submit``
step both call it. Every outcome that produced a file is archived in the
registry; :func:`send` is the one way a file reaches Kaggle.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.contract import METADATA_FILE
from components.kaggle.client import (
    COMPETITION,
    KaggleError,
    credentials_present,
    kaggle_api,
    submit,
    wait_for_score,
)
from components.kaggle.submission import (
    EXPECTED_ROWS,
    predict_submission,
    score_submission,
    validate_submission,
    write_test_csv,
)
from components.registry import open_registry


def holdout_digits(dataset_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The frozen holdout's images and labels, and where they came from.

    From an ingested dataset when one is given (the pipeline's step: exactly
    the digits the gate judged on), else MNIST's official test set, which is
    the default run's holdout.
    """
    from components.data import Dataset
    from components.datafiles import load_mnist, resolve_mnist_dir
    from components.settings import get_settings

    if dataset_dir is not None:
        images, labels = Dataset.load(Path(dataset_dir)).split("holdout")
        return images, labels, f"holdout of {dataset_dir}"
    directory = resolve_mnist_dir(None, get_settings())
    _, _, images, labels, _ = load_mnist(directory)
    return images, labels, f"MNIST t10k ({directory})"


@contextlib.contextmanager
def load_submission_model(registry: Any = None, *, version: str | None = None,
                          model_dir: Path | None = None,
                          ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(model, info)`` from a local directory, a registry version or production.

    Registry models are downloaded with every sha256 checked (the same path
    the server takes) into a temporary directory that lives as long as the
    ``with`` block. ``info`` carries ``version`` (``None`` for a plain local
    directory), ``kind`` and ``source``.
    """
    from components.models import load_model, read_info
    from components.registry import RegistryError

    if model_dir is not None:
        model = load_model(model_dir)
        metadata_path = Path(model_dir) / METADATA_FILE  # present in registry downloads
        recorded = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        yield model, {"version": recorded.get("version"), "kind": read_info(model_dir)["kind"],
                      "source": f"dir:{model_dir}"}
        return
    source = "registry:version"
    if version is None:
        pointer = registry.production()
        if pointer is None:
            raise RegistryError(
                f"no production model in registry bucket {registry.bucket!r}: "
                "promote one first (digits run), or pass --version V or --model-dir D")
        version, source = pointer.version, "registry:production"
    with tempfile.TemporaryDirectory(prefix="digits-kaggle-") as tmp:
        metadata = registry.download(version, Path(tmp) / "model")
        model = load_model(Path(tmp) / "model")
        yield model, {"version": version, "kind": metadata.get("kind", model.kind),
                      "source": source}


# --------------------------------------------------------------------------- the job


OFFLINE, ONLINE, AUTO = "offline", "online", "auto"
MODES = (AUTO, OFFLINE, ONLINE)


@dataclass(frozen=True)
class SubmissionJob:
    """What one ``kaggle run`` (or the pipeline's ``kaggle-submit`` step) is asked to do.

    ``mode``: ``offline`` never touches the network; ``online`` submits and
    waits for the score; ``auto`` is online when Kaggle credentials and
    Kaggle's ``test.csv`` are both at hand, offline otherwise (saying why).
    Without ``test_csv`` the job predicts a ``test.csv`` built from the frozen
    holdout (``dataset_dir``'s, else MNIST's test set) and scores it itself.
    """

    output: Path
    mode: str = OFFLINE
    test_csv: Path | None = None
    dataset_dir: Path | None = None
    message: str = ""
    competition: str = COMPETITION
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown Kaggle mode {self.mode!r}; choose from {MODES}")
        if self.mode == ONLINE and self.test_csv is None:
            raise ValueError("an online submission needs Kaggle's test.csv (--test)")


def _resolve_mode(job: SubmissionJob) -> tuple[str, str | None]:
    """The mode to run in, and why it is offline when that was not asked for."""
    if job.mode != AUTO:
        return job.mode, None
    if job.test_csv is None:
        return OFFLINE, "no Kaggle test.csv given: predicted the frozen holdout; did not submit"
    if not credentials_present():
        return OFFLINE, ("no Kaggle credentials (Secret digits-kaggle, KAGGLE_USERNAME/KAGGLE_KEY "
                         "or KAGGLE_API_TOKEN): did not submit")
    return ONLINE, None


def run_submission(job: SubmissionJob, model: Any, info: dict[str, Any], registry: Any, *,
                   settings: Any = None) -> dict[str, Any]:
    """Predict, validate, score or submit, and archive one submission; return its record.

    Every outcome that produced a file is archived in the registry
    (:meth:`~components.registry.Registry.archive_submission`), including a
    submission whose score never arrived — the record then carries the error
    and the error is raised after archiving, so nothing sent to Kaggle goes
    unrecorded.
    """
    from components.registry import utcnow
    from components.settings import get_settings

    settings = settings or get_settings()
    mode, offline_reason = _resolve_mode(job)
    started, clock = utcnow(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="digits-kaggle-test-") as tmp:
        truth, test_source = None, str(job.test_csv)
        test_csv = job.test_csv
        if test_csv is None:
            images, truth, test_source = holdout_digits(job.dataset_dir)
            test_csv = write_test_csv(images, Path(tmp) / "test.csv")
        predicted = predict_submission(model, test_csv, job.output, version=info["version"])
    # The file is read back once: scoring validates it; without labels, validation alone.
    expected: int | None = len(truth) if truth is not None else (
        None if job.allow_partial else EXPECTED_ROWS)
    local_score = score_submission(job.output, truth) if truth is not None else None
    if truth is None:
        validate_submission(job.output, expected_rows=expected)
    record: dict[str, Any] = {
        "mode": mode,
        "submitted": False,
        "version": info["version"],
        "kind": info["kind"],
        "model_source": info["source"],
        "competition": job.competition,
        "message": job.message or f"digits {info['version'] or info['source']} ({mode})",
        "file": str(job.output),
        "rows": predicted["rows"],
        "label_counts": predicted["label_counts"],
        "test_source": test_source,
        "local_score": local_score,
        "kaggle_score": None,
        "kaggle_ref": None,
        "kaggle_response": None,
        "note": offline_reason or ("dry run: nothing was sent to Kaggle" if mode == OFFLINE
                                   else None),
        "started_at": started,
        "timings": {"predict_seconds": predicted["seconds"]},
    }
    failure: KaggleError | None = None
    if mode == ONLINE:
        sent, failure = send(job.output, record["message"], job.competition,
                             expected_rows=expected, settings=settings)
        record["timings"].update(sent.pop("timings"))
        record.update(sent)
    record["timings"]["total_seconds"] = round(time.perf_counter() - clock, 3)
    record = registry.archive_submission(job.output, record)
    if failure is not None:
        raise failure
    return record


def send(file: Path, message: str, competition: str, *, expected_rows: int | None,
         settings: Any = None) -> tuple[dict[str, Any], KaggleError | None]:
    """Submit a file and wait for its score: the one way a file reaches Kaggle.

    Returns the record's fields (``submitted``, ``kaggle_ref``,
    ``kaggle_response``, ``kaggle_score``, ``rows``, ``timings``) and the error
    if the score never came, so the caller archives what was sent before raising.
    """
    api = kaggle_api()
    started = time.perf_counter()
    sent = submit(file, message, competition, api=api, settings=settings,
                  expected_rows=expected_rows)
    fields: dict[str, Any] = {
        "submitted": True, "rows": sent["rows"], "kaggle_ref": sent["kaggle_ref"],
        "kaggle_response": {"message": sent["kaggle_message"], "ref": sent["kaggle_ref"]},
        "kaggle_score": None,
        "timings": {"submit_seconds": round(time.perf_counter() - started, 3)},
    }
    try:
        scored = wait_for_score(api, competition, sent["kaggle_ref"], settings=settings)
    except KaggleError as error:
        fields["error"] = str(error)
        return fields, error
    fields["kaggle_score"] = scored["public_score"]
    fields["kaggle_response"]["score"] = scored
    fields["timings"]["score_wait_seconds"] = scored["waited_seconds"]
    return fields, None


def run_kaggle(job: SubmissionJob, *, version: str | None = None,
               model_dir: Path | None = None, registry: Any = None) -> dict[str, Any]:
    """The Kaggle stage: load the model (a directory, a version, else production), run ``job``.

    ``registry``: the one to read the model from and archive in (default: the
    configured one, opened for this call).
    """
    if registry is None:
        with open_registry() as opened:
            return run_kaggle(job, version=version, model_dir=model_dir, registry=opened)
    with load_submission_model(registry, version=version, model_dir=model_dir) as (model, info):
        return run_submission(job, model, info, registry)


def run_for_kfp(deployed: str, dataset_path: str, submission_artifact, *, mode: str,
                test_csv: str) -> str:
    """What the kaggle-submit component does, given the deploy step's JSON outcome.

    A run that lost the promotion race to another has nothing to submit: it
    says so and returns ``null``.
    """
    from components.progress import headline

    outcome = json.loads(deployed)
    version = outcome["version"]
    if outcome["status"] != "promoted":
        headline(f"skipped: {version} was not promoted")
        return json.dumps(None)
    job = SubmissionJob(output=Path(submission_artifact.path), mode=mode,
                        test_csv=Path(test_csv) if test_csv else None,
                        dataset_dir=Path(dataset_path))
    record = run_kaggle(job, version=version)
    submission_artifact.metadata.update(mode=record["mode"], version=version,
                                        rows=record["rows"], local_score=record["local_score"],
                                        kaggle_score=record["kaggle_score"])
    score = record["kaggle_score"] if record["submitted"] else record["local_score"]
    shown = "" if score is None else f" scored {score:.4f}"
    headline(f"{record['mode']}{shown}" + ("" if record["submitted"] else ": not submitted"))
    return json.dumps(record)
