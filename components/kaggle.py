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
from pathlib import Path
from typing import Any

import numpy as np

from components.argparsing import HelpFormatter, make_parser
from components.data import (
    DataError,
    load_kaggle_csv,
    read_lines,
    sha256_file,
    write_atomically,
)
from components.stem import NUM_CLASSES

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


def validate_submission(path: Path, *, expected_rows: int | None = EXPECTED_ROWS,
                        ) -> dict[str, Any]:
    """Check a submission is what Kaggle scores; return its rows and label counts.

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
    return {"rows": len(labels), "label_counts": _label_counts(labels)}


# --------------------------------------------------------------------------- model source


@contextlib.contextmanager
def load_submission_model(*, version: str | None = None, model_dir: Path | None = None,
                          ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(model, info)`` from a local directory, a registry version or production.

    Registry models are downloaded with every sha256 checked (the same path
    the server takes) into a temporary directory that lives as long as the
    ``with`` block. ``info`` carries ``version`` (``None`` for a plain local
    directory), ``kind`` and ``source``.
    """
    from components.models import load_model, read_info

    if model_dir is not None:
        model = load_model(model_dir)
        metadata_path = Path(model_dir) / "metadata.json"  # present in registry downloads
        recorded = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        yield model, {"version": recorded.get("version"), "kind": read_info(model_dir)["kind"],
                      "source": f"dir:{model_dir}"}
        return

    from components.registry import Registry, RegistryError
    from components.s3local import s3_environment
    from components.settings import get_settings

    with tempfile.TemporaryDirectory(prefix="digits-kaggle-") as tmp:
        with s3_environment(get_settings()):
            settings = get_settings()
            registry = Registry.from_settings(settings)
            source = "registry:version"
            if version is None:
                pointer = registry.production()
                if pointer is None:
                    raise RegistryError(
                        f"no production model in registry bucket {settings.bucket!r}: "
                        "promote one first (digits run), or pass --version V or --model-dir D")
                version, source = pointer.version, "registry:production"
            metadata = registry.download(version, Path(tmp) / "model")
        model = load_model(Path(tmp) / "model")
        yield model, {"version": version, "kind": metadata.get("kind", model.kind),
                      "source": source}


# --------------------------------------------------------------------------- submit


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


def submit(file: Path, message: str, competition: str = COMPETITION, *,
           expected_rows: int | None = EXPECTED_ROWS) -> dict[str, Any]:
    """Validate a submission file, then upload it with the official ``kaggle`` client.

    Validation comes first so a bad file costs neither a network call nor one
    of the day's submissions. The client's own chatter goes to stderr (stdout
    is this command's JSON). Returns Kaggle's ``message`` and ``ref`` with
    what was sent.
    """
    file = Path(file)
    checked = validate_submission(file, expected_rows=expected_rows)
    if not message.strip():
        raise ValueError("a submission message is required (it labels the entry on Kaggle)")
    import requests

    api = _kaggle_api()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            response = api.competition_submit(str(file), message, competition, quiet=True)
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        body = (error.response.text[:300] if error.response is not None else "") or str(error)
        if status == 401:
            raise CredentialsError(f"Kaggle rejected the credentials (HTTP 401): {body}") from None
        hint = " (accept the competition's rules on kaggle.com first?)" if status == 403 else ""
        raise KaggleError(f"Kaggle refused the submission to {competition!r} "
                          f"(HTTP {status}){hint}: {body}") from None
    except requests.RequestException as error:
        raise KaggleError(f"cannot reach Kaggle: {error}") from None
    if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KaggleError(f"uploading {file} to Kaggle failed: {response.message}")
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


# --------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits kaggle", __doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    kinds = {"formatter_class": HelpFormatter}
    predict = verbs.add_parser("predict", help="write a submission for test.csv", **kinds)
    run = verbs.add_parser("run", help="predict, then submit", **kinds)
    send = verbs.add_parser("submit", help="submit an existing submission file", **kinds)
    for v in (predict, run):
        v.add_argument("--test", type=Path, required=True, help="Kaggle's test.csv")
        v.add_argument("--output", type=Path, required=True, help="submission CSV to write")
        source = v.add_mutually_exclusive_group()
        source.add_argument("--version", help="registry version (default: production)")
        source.add_argument("--model-dir", type=Path, help="a local saved model directory")
    send.add_argument("--file", type=Path, required=True, help="submission CSV")
    for v in (send, run):
        v.add_argument("--message", required=True, help="submission description on Kaggle")
        v.add_argument("--competition", default=COMPETITION)
        v.add_argument("--allow-partial", action="store_true",
                       help=f"submit a file without all {EXPECTED_ROWS:,} rows")
    return p


def _predict(args) -> dict[str, Any]:
    with load_submission_model(version=args.version, model_dir=args.model_dir) as (model, info):
        summary = predict_submission(model, args.test, args.output, version=info["version"])
    return {**summary, "model_source": info["source"]}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from components.models import ModelError
    from components.registry import RegistryError
    from components.s3local import S3ServerError
    from components.stem import InputError

    expected = None if getattr(args, "allow_partial", False) else EXPECTED_ROWS
    try:
        if args.verb == "predict":
            result = _predict(args)
        elif args.verb == "submit":
            result = submit(args.file, args.message, args.competition, expected_rows=expected)
        else:
            predicted = _predict(args)
            submitted = submit(args.output, args.message, args.competition,
                               expected_rows=expected)
            result = {"predict": predicted, "submit": submitted}
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
