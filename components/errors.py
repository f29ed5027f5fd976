"""One error policy: what a failure means to whoever ran the command, and its exit code.

Every ``digits`` verb, every stage CLI and the local runner (which sees a
failed task only as the exception's name in its log) read the same table, so
one fault exits the same way wherever it surfaces: 2 for what the caller can
fix (their input, their configuration, an empty registry), 1 when a stage, a
service or the network failed, 130 when interrupted. Anything else is a bug:
it keeps its traceback.
"""

from __future__ import annotations

import sys
from functools import cache

#: Exit codes.
OK, FAILED, USER_ERROR, INTERRUPTED = 0, 1, 2, 130


@cache
def policy() -> tuple[tuple[type[BaseException], int], ...]:
    """(exception type, exit code), most specific first: the first ``isinstance`` match wins.

    Built on first use: the error types live beside the code that raises them,
    and importing them all belongs to a command that failed, not to every start.
    """
    import argparse

    from components.contract import StageError
    from components.datafiles import DataError
    from components.kaggle.client import CredentialsError, KaggleError
    from components.models import ModelError
    from components.registry import RegistryError
    from components.s3local import S3ServerError
    from components.stem import InputError

    return (
        (KeyboardInterrupt, INTERRUPTED),
        (CredentialsError, USER_ERROR),  # a KaggleError the operator fixes, not a retry
        (KaggleError, FAILED),
        (S3ServerError, FAILED),
        (StageError, FAILED),
        (DataError, USER_ERROR),
        (InputError, USER_ERROR),
        (ModelError, USER_ERROR),
        (RegistryError, USER_ERROR),
        (argparse.ArgumentTypeError, USER_ERROR),
        (FileNotFoundError, USER_ERROR),
        (NotADirectoryError, USER_ERROR),
        (PermissionError, USER_ERROR),
        (ValueError, USER_ERROR),
    )


def exit_code(error: BaseException) -> int | None:
    """The exit code for ``error``, ``None`` for a bug; an error may carry its own ``exit_code``."""
    own = getattr(error, "exit_code", None)
    if isinstance(own, int):
        return own
    return next((code for kind, code in policy() if isinstance(error, kind)), None)


def exit_code_by_name(name: str) -> int | None:
    """The exit code for an exception known only by its class name: how the local runner
    sees a failed task (the last line of its traceback). ``None`` for other names."""
    return next((code for kind, code in policy() if kind.__name__ == name), None)


def report(command: str, error: BaseException) -> int:
    """Print ``digits COMMAND: reason`` (one line, to stderr) and return the exit code.

    Re-raises ``error`` when the policy has no code for it: a bug keeps its traceback.
    """
    code = exit_code(error)
    if code is None:
        raise error
    reason = "interrupted" if code == INTERRUPTED else (str(error) or type(error).__name__)
    print(f"digits {command}: {reason}", file=sys.stderr)
    return code
