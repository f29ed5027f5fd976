"""Kaggle's API, through the official ``kaggle`` client: submit a file, wait for its score.

The only code that talks to Kaggle. Failures become this module's errors with
a sentence a person can act on; timeouts and 5xx are retried with back-off.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

from components.datafiles import sha256_file
from components.kaggle.submission import EXPECTED_ROWS, validate_submission

COMPETITION = "digit-recognizer"


class KaggleError(RuntimeError):
    """Kaggle (or the way to it) failed the submission; the message says how."""


class CredentialsError(KaggleError):
    """No usable Kaggle credentials: something the operator must set up, not retry."""


class ScoreTimeout(KaggleError):
    """The file was submitted but Kaggle's score did not arrive in time."""


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


def kaggle_api():
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
    api = api or kaggle_api()

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
