"""Kaggle ``digit-recognizer`` job: predict ``test.csv`` with a model, submit the result.

The serving image runs this as a Kubernetes Job (``digits kaggle run ...``), so
the model is by default the registry's *production* version — the one users
are being served — and the score Kaggle returns measures exactly that model.

Three layers, like the pipeline stages:

* pure core: :func:`predict_submission` (test.csv → ``ImageId,Label`` file,
  written atomically), :func:`validate_submission` (the file Kaggle will
  accept), :func:`load_submission_model` (production / a version / a directory);
* :func:`submit`, the only code that talks to Kaggle, through the official
  ``kaggle`` client (imported lazily: importing it authenticates and prints);
* :func:`main`, a thin argparse CLI printing one JSON line on stdout.

Exit codes: 0 ok; 2 for faults the caller can fix (bad input file, no
credentials, empty registry, unknown version); 1 when Kaggle or the network
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.argparsing import HelpFormatter, make_parser
from components.contract import METADATA_FILE
from components.data import (
    DataError,
    load_kaggle_csv,
    read_lines,
    sha256_file,
    write_atomically,
)
from components.registry import open_registry
from components.stem import NUM_CLASSES, NUM_PIXELS, as_images

COMPETITION = "digit-recognizer"
#: Rows in Kaggle's digit-recognizer ``test.csv``, hence in a complete submission.
EXPECTED_ROWS = 28_000
SUBMISSION_HEADER = "ImageId,Label"


class KaggleError(RuntimeError):
    """Kaggle (or the way to it) failed the submission; the message says how."""


class CredentialsError(KaggleError):
    """No usable Kaggle credentials: something the operator must set up, not retry."""


# --------------------------------------------------------------------------- predict


def _label_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES)
    return {str(digit): int(count) for digit, count in enumerate(counts)}


def predict_submission(model, test_csv: Path, output: Path, *,
                       version: str | None = None) -> dict[str, Any]:
    """Predict every digit of Kaggle's ``test.csv`` and write ``ImageId,Label``.

    ``test.csv`` is read by :func:`components.data.load_kaggle_csv`, which
    rejects a bad file naming the line, before anything is written; the
    output appears only complete (see :func:`write_atomically`). ``version``
    is only recorded in the summary, so a score can be traced to a model.
    """
    started = time.perf_counter()
    images, _ = load_kaggle_csv(test_csv, labelled=False)
    labels = np.asarray(model.predict(images), dtype=np.int64)
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"model returned {labels.shape} labels in "
                         f"{labels.min()}..{labels.max()} for {len(images)} images")
    lines = [SUBMISSION_HEADER]
    lines.extend(f"{image_id},{label}" for image_id, label in enumerate(labels.tolist(), 1))
    write_atomically(output, "\n".join(lines) + "\n")
    return {
        "output": str(output),
        "rows": len(labels),
        "label_counts": _label_counts(labels),
        "seconds": round(time.perf_counter() - started, 3),
        "model_version": version,
        "model_kind": getattr(model, "kind", None),
    }


def read_submission(path: Path, *, expected_rows: int | None = EXPECTED_ROWS) -> np.ndarray:
    """The labels of a submission file Kaggle would score, in ImageId order.

    Kaggle accepts some malformed files and scores them near zero (or burns one
    of the day's few submissions on an error), so the file is refused here:
    header exactly ``ImageId,Label``, ImageIds 1..N in order with no gaps,
    labels 0..9, and ``expected_rows`` rows (``None`` allows any N >= 1).
    """
    path = Path(path)
    lines = read_lines(path)
    header = lines[0].strip()
    if header != SUBMISSION_HEADER:
        raise DataError(f"{path}: line 1: header must be {SUBMISSION_HEADER!r}, got {header!r}")
    labels = np.empty(len(lines) - 1, dtype=np.int64)
    for number, line in enumerate(lines[1:], start=2):
        cells = line.strip().split(",")
        if len(cells) != 2:
            raise DataError(f"{path}: line {number}: {len(cells)} columns, expected 2")
        try:
            image_id, label = int(cells[0]), int(cells[1])
        except ValueError as error:
            raise DataError(f"{path}: line {number}: not an integer ({error})") from error
        if image_id != number - 1:
            raise DataError(f"{path}: line {number}: ImageId {image_id}, expected {number - 1} "
                            "(ImageIds must run 1..N in order)")
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{path}: line {number}: label {label} outside 0..9")
        labels[number - 2] = label
    if len(labels) == 0:
        raise DataError(f"{path}: no data rows")
    if expected_rows is not None and len(labels) != expected_rows:
        raise DataError(f"{path}: {len(labels)} rows, Kaggle's test set has {expected_rows} "
                        "(pass --allow-partial to submit anyway)")
    return labels


def validate_submission(path: Path, *, expected_rows: int | None = EXPECTED_ROWS,
                        ) -> dict[str, Any]:
    """Check a submission is what Kaggle scores (:func:`read_submission`); summarise it."""
    labels = read_submission(path, expected_rows=expected_rows)
    return {"rows": len(labels), "label_counts": _label_counts(labels)}


def score_submission(path: Path, truth: np.ndarray) -> float:
    """The submission's accuracy against known labels: what the leaderboard computes.

    The file is read back from disk and validated first, so the score is that
    of the exact bytes that would be uploaded, not of the in-memory predictions.
    """
    truth = np.asarray(truth, dtype=np.int64)
    labels = read_submission(path, expected_rows=len(truth))
    return float(np.mean(labels == truth))


# --------------------------------------------------------------------------- offline test set


def write_test_csv(images: np.ndarray, path: Path) -> Path:
    """Write canonical images as Kaggle's ``test.csv`` (``pixel0..pixel783``, no label)."""
    flat = as_images(images).reshape(len(images), NUM_PIXELS)
    header = ",".join(f"pixel{i}" for i in range(NUM_PIXELS))
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        np.savetxt(handle, flat, fmt="%d", delimiter=",", header=header, comments="")
    return path


def holdout_digits(dataset_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The frozen holdout's images and labels, and where they came from.

    From an ingested dataset when one is given (the pipeline's step: exactly
    the digits the gate judged on), else MNIST's official test set, which is
    the default run's holdout.
    """
    from components.data import Dataset, load_mnist, resolve_mnist_dir
    from components.settings import get_settings

    if dataset_dir is not None:
        images, labels = Dataset.load(Path(dataset_dir)).split("holdout")
        return images, labels, f"holdout of {dataset_dir}"
    directory = resolve_mnist_dir(None, get_settings())
    _, _, images, labels, _ = load_mnist(directory)
    return images, labels, f"MNIST t10k ({directory})"


# --------------------------------------------------------------------------- model source


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


# --------------------------------------------------------------------------- Kaggle's API


def _kaggle_config_dir() -> str:
    """Where the ``kaggle`` client keeps ``kaggle.json``, resolved the way it does."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return configured
    legacy = os.path.join(os.path.expanduser("~"), ".kaggle")
    if not sys.platform.startswith("linux") or os.path.exists(legacy):
        return legacy
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(xdg, "kaggle")


def credentials_present() -> bool:
    """Whether any credential the ``kaggle`` client reads is set (not whether it is valid).

    Decides the pipeline step's mode: on a cluster without the optional
    ``digits-kaggle`` Secret the step runs offline instead of failing.
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(_kaggle_config_dir())
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def _kaggle_api():
    """A fresh, authenticated ``KaggleApi``; :class:`CredentialsError` if it cannot be.

    ``import kaggle`` authenticates a module-level client at import time and
    prints a banner when that fails; ``KaggleApi.authenticate`` calls
    ``exit(1)``. Both are contained here: the import's output is dropped, the
    exit becomes an exception with a message that says what to set. The
    client reads its config directory and ``KAGGLE_API_ENVIRONMENT`` into
    class attributes once, at import; they are re-read now so the current
    environment is what counts in a long-lived process.
    """
    config_dir = _kaggle_config_dir()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except OSError as error:  # the client creates its config dir on import
        raise CredentialsError(
            f"the kaggle client cannot set up its config directory ({error}); "
            "set KAGGLE_CONFIG_DIR to a writable directory") from error
    api = KaggleApi()
    api.config_dir = config_dir
    api.config = os.path.join(config_dir, api.config_file)
    args = [arg for arg in KaggleApi.args if arg != "--local"]  # keeps --verbose (VERBOSE=1)
    if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST":
        args.append("--local")
    api.args = args
    banner = io.StringIO()
    try:
        with contextlib.redirect_stdout(banner):
            api.authenticate()
    except SystemExit:
        raise CredentialsError(
            "no usable Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (legacy API key) "
            f"or KAGGLE_API_TOKEN, or put kaggle.json in {config_dir} (KAGGLE_CONFIG_DIR)"
        ) from None
    return api


class _Transient(KaggleError):
    """A failure worth another try: a timeout, a dropped connection, a 5xx."""


def _call(what: str, competition: str, function, *args, **kwargs):
    """One Kaggle call, its ``requests`` failures turned into this module's errors.

    401 is a credentials problem, 404 an unknown competition, other 4xx a
    refusal with Kaggle's own words; timeouts, connection errors and 5xx are
    :class:`_Transient`, which :func:`_retrying` tries again.
    """
    import requests

    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is this command's JSON
            return function(*args, **kwargs)
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        body = (error.response.text[:300] if error.response is not None else "") or str(error)
        body = " ".join(body.split())
        if status == 401:
            raise CredentialsError(f"Kaggle rejected the credentials (HTTP 401): {body}") from None
        if status is not None and status >= 500:
            raise _Transient(f"{what}: Kaggle answered HTTP {status}: {body}") from None
        hint = {403: " (accept the competition's rules on kaggle.com first?)",
                404: f" (is {competition!r} a competition you have joined?)"}.get(status, "")
        raise KaggleError(f"{what}: Kaggle refused it (HTTP {status}){hint}: {body}") from None
    except (requests.Timeout, requests.ConnectionError) as error:
        raise _Transient(f"{what}: cannot reach Kaggle: {error}") from None


def _retrying(settings):
    """Retry :class:`_Transient` failures with exponential back-off, then give up loudly."""
    import tenacity

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Transient),
        stop=tenacity.stop_after_attempt(settings.kaggle_attempts),
        wait=tenacity.wait_exponential(multiplier=settings.kaggle_backoff_s,
                                       max=60 * max(settings.kaggle_backoff_s, 0.01)),
        before_sleep=lambda state: print(
            f"digits kaggle: {state.outcome.exception()}; retrying "
            f"(attempt {state.attempt_number + 1} of {settings.kaggle_attempts})",
            file=sys.stderr),
        reraise=True,
    )


def submit(file: Path, message: str, competition: str = COMPETITION, *,
           expected_rows: int | None = EXPECTED_ROWS, api: Any = None,
           settings: Any = None) -> dict[str, Any]:
    """Validate a submission file, then upload it with the official ``kaggle`` client.

    Validation comes first so a bad file costs neither a network call nor one
    of the day's submissions. Timeouts and 5xx are retried with back-off
    (``DIGITS_KAGGLE_ATTEMPTS``, ``DIGITS_KAGGLE_BACKOFF_S``). Returns
    Kaggle's ``message`` and ``ref`` with what was sent.
    """
    from components.settings import get_settings

    settings = settings or get_settings()
    file = Path(file)
    checked = validate_submission(file, expected_rows=expected_rows)
    if not message.strip():
        raise ValueError("a submission message is required (it labels the entry on Kaggle)")
    api = api or _kaggle_api()

    def attempt():
        response = _call("submitting", competition, api.competition_submit,
                         str(file), message, competition, quiet=True)
        if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
            raise _Transient(f"uploading {file} to Kaggle failed: {response.message}")
        return response

    response = _retrying(settings)(attempt)
    return {
        "competition": competition,
        "file": str(file),
        "bytes": file.stat().st_size,
        "sha256": sha256_file(file),
        "rows": checked["rows"],
        "description": message,
        "kaggle_message": response.message,
        "kaggle_ref": response.ref,
    }


def wait_for_score(api: Any, competition: str, ref: int, *, settings: Any = None,
                   ) -> dict[str, Any]:
    """Poll the competition's submissions until Kaggle has scored ``ref``.

    Returns its status and public (and, once the competition has one, private)
    score. Kaggle's ``ERROR`` status, or no score within
    ``DIGITS_KAGGLE_SCORE_TIMEOUT_S``, is a :class:`KaggleError`.
    """
    from components.settings import get_settings

    settings = settings or get_settings()
    retrying = _retrying(settings)
    started = time.monotonic()
    status = "not listed yet"
    while True:
        listed = retrying(_call, "reading the submission's status", competition,
                          api.competition_submissions, competition) or []
        mine = next((item for item in listed if item is not None and item.ref == ref), None)
        if mine is not None:
            status = mine.status.name.lower()
            if status == "error":
                raise KaggleError(f"Kaggle could not score submission {ref}: "
                                  f"{mine.error_description or 'no reason given'}")
            if status == "complete" and mine.public_score not in (None, ""):
                return {"status": status, "public_score": float(mine.public_score),
                        "private_score": (float(mine.private_score)
                                          if mine.private_score not in (None, "") else None),
                        "waited_seconds": round(time.monotonic() - started, 1)}
        waited = time.monotonic() - started
        if waited >= settings.kaggle_score_timeout_s:
            raise ScoreTimeout(
                f"Kaggle had not scored submission {ref} after {waited:.0f} s (status: {status}); "
                "it may still be scored: see `kaggle competitions submissions "
                f"{competition}`, or raise DIGITS_KAGGLE_SCORE_TIMEOUT_S")
        time.sleep(min(settings.kaggle_poll_interval_s,
                       settings.kaggle_score_timeout_s - waited))


class ScoreTimeout(KaggleError):
    """The file was submitted but Kaggle's score did not arrive in time."""


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
        api = _kaggle_api()
        sent_at = time.perf_counter()
        sent = submit(job.output, record["message"], job.competition, api=api, settings=settings,
                      expected_rows=expected)
        response = {"message": sent["kaggle_message"], "ref": sent["kaggle_ref"]}
        record.update(submitted=True, kaggle_ref=sent["kaggle_ref"], kaggle_response=response)
        record["timings"]["submit_seconds"] = round(time.perf_counter() - sent_at, 3)
        try:
            scored = wait_for_score(api, job.competition, sent["kaggle_ref"], settings=settings)
        except KaggleError as error:
            failure = error
            record["error"] = str(error)
        else:
            record["kaggle_score"] = scored["public_score"]
            record["kaggle_response"]["score"] = scored
            record["timings"]["score_wait_seconds"] = scored["waited_seconds"]
    record["timings"]["total_seconds"] = round(time.perf_counter() - clock, 3)
    record = registry.archive_submission(job.output, record)
    if failure is not None:
        raise failure
    return record


def submit_promoted(version: str, output: Path, *, mode: str, dataset_dir: Path | None,
                    test_csv: Path | None = None, competition: str = COMPETITION,
                    ) -> dict[str, Any]:
    """The pipeline's ``kaggle-submit`` step: the version just promoted, by ``mode``."""
    job = SubmissionJob(output=output, mode=mode, test_csv=test_csv, dataset_dir=dataset_dir,
                        competition=competition)
    with open_registry() as registry, load_submission_model(registry, version=version) as (
            model, info):
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
    record = submit_promoted(version, Path(submission_artifact.path), mode=mode,
                             dataset_dir=Path(dataset_path),
                             test_csv=Path(test_csv) if test_csv else None)
    submission_artifact.metadata.update(mode=record["mode"], version=version,
                                        rows=record["rows"], local_score=record["local_score"],
                                        kaggle_score=record["kaggle_score"])
    score = record["kaggle_score"] if record["submitted"] else record["local_score"]
    shown = "" if score is None else f" scored {score:.4f}"
    headline(f"{record['mode']}{shown}" + ("" if record["submitted"] else ": not submitted"))
    return json.dumps(record)


# --------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits kaggle", __doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    kinds = {"formatter_class": HelpFormatter}
    predict = verbs.add_parser("predict", help="write a submission for test.csv", **kinds)
    run = verbs.add_parser("run", help="predict, then submit (or --dry-run: score offline)",
                           **kinds)
    send = verbs.add_parser("submit", help="submit an existing submission file", **kinds)
    listing = verbs.add_parser("list", help="archived submissions, newest first", **kinds)
    predict.add_argument("--test", type=Path, required=True, help="Kaggle's test.csv")
    run.add_argument("--test", type=Path,
                     help="Kaggle's test.csv (needed to submit; --dry-run without it predicts "
                          "the frozen holdout and scores it)")
    run.add_argument("--dry-run", action="store_true",
                     help="never touch the network: predict, validate, score when labels are "
                          "known, archive")
    run.add_argument("--dataset", type=Path,
                     help="an ingested dataset whose holdout --dry-run predicts "
                          "(default: MNIST's test set)")
    for v in (predict, run):
        v.add_argument("--output", type=Path, required=True, help="submission CSV to write")
        source = v.add_mutually_exclusive_group()
        source.add_argument("--version", help="registry version (default: production)")
        source.add_argument("--model-dir", type=Path, help="a local saved model directory")
    send.add_argument("--file", type=Path, required=True, help="submission CSV")
    send.add_argument("--message", required=True, help="submission description on Kaggle")
    run.add_argument("--message", default="", help="submission description on Kaggle "
                                                   "(default: names the model version)")
    for v in (send, run):
        v.add_argument("--competition", default=COMPETITION)
        v.add_argument("--allow-partial", action="store_true",
                       help=f"submit a file without all {EXPECTED_ROWS:,} rows")
    listing.add_argument("--json", action="store_true", help="one JSON list on stdout")
    return p


def _predict(args, registry) -> dict[str, Any]:
    with load_submission_model(registry, version=args.version, model_dir=args.model_dir) as (
            model, info):
        summary = predict_submission(model, args.test, args.output, version=info["version"])
    return {**summary, "model_source": info["source"]}


def _run(args, registry) -> dict[str, Any]:
    job = SubmissionJob(output=args.output, mode=OFFLINE if args.dry_run else ONLINE,
                        test_csv=args.test, dataset_dir=args.dataset, message=args.message,
                        competition=args.competition, allow_partial=args.allow_partial)
    with load_submission_model(registry, version=args.version, model_dir=args.model_dir) as (
            model, info):
        return run_submission(job, model, info, registry)


def _submit(args, registry) -> dict[str, Any]:
    """Submit a file made elsewhere, wait for its score, archive it (version unknown)."""
    expected = None if args.allow_partial else EXPECTED_ROWS
    api = _kaggle_api()
    sent = submit(args.file, args.message, args.competition, expected_rows=expected, api=api)
    record = {"mode": ONLINE, "submitted": True, "version": None, "competition": args.competition,
              "message": args.message, "file": str(args.file), "rows": sent["rows"],
              "kaggle_ref": sent["kaggle_ref"],
              "kaggle_response": {"message": sent["kaggle_message"], "ref": sent["kaggle_ref"]},
              "kaggle_score": None, "local_score": None}
    try:
        scored = wait_for_score(api, args.competition, sent["kaggle_ref"])
    except KaggleError as error:
        registry.archive_submission(args.file, {**record, "error": str(error)})
        raise
    record["kaggle_score"] = scored["public_score"]
    record["kaggle_response"]["score"] = scored
    return registry.archive_submission(args.file, record)


def format_submissions(records: list[dict[str, Any]]) -> str:
    """Archived submissions as a table for people, newest first."""
    if not records:
        return "no submissions archived yet (digits kaggle run --dry-run --output FILE)"

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.5f}"

    rows = [("ARCHIVED", "MODE", "VERSION", "ROWS", "LOCAL", "KAGGLE", "REF")]
    rows += [(r.get("archived_at", "")[:19], r["mode"], r.get("version") or "-", str(r["rows"]),
              score(r.get("local_score")), score(r.get("kaggle_score")),
              str(r.get("kaggle_ref") or "-")) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from components.models import ModelError
    from components.registry import RegistryError
    from components.s3local import S3ServerError
    from components.stem import InputError

    expected = None if getattr(args, "allow_partial", False) else EXPECTED_ROWS
    try:
        if args.verb == "submit":  # fail on a bad file before starting any store
            validate_submission(args.file, expected_rows=expected)
        with open_registry() as registry:
            if args.verb == "predict":
                result: Any = _predict(args, registry)
            elif args.verb == "submit":
                result = _submit(args, registry)
            elif args.verb == "run":
                result = _run(args, registry)
            else:
                records = registry.submissions()
                print(json.dumps(records) if args.json else format_submissions(records))
                return 0
    except (DataError, InputError, RegistryError, ModelError, CredentialsError,
            ValueError) as error:
        print(f"digits kaggle {args.verb}: {error}", file=sys.stderr)
        return 2
    except (KaggleError, S3ServerError) as error:
        print(f"digits kaggle {args.verb}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
