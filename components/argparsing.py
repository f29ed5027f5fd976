"""One way to build a ``digits`` command-line parser: plain help, defaults shown.

Descriptions come from module docstrings, which are written for Sphinx and
the source reader; :func:`plain` turns their markup (``:class:`Dataset```,
double back-quotes) into text a terminal shows well.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`<]+?)(?: <[^>]+>)?`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str:
    """A docstring without reStructuredText roles and literals."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text or "")).strip()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's paragraphs; appends each option's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        default = action.default
        shown = not (default is None or default is False or default == []
                     or default == "" or default == argparse.SUPPRESS)
        if shown and "%(default)" not in text and "(default:" not in text \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def make_parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` with plain help and shown defaults."""
    return argparse.ArgumentParser(prog=prog, description=plain(doc),
                                   formatter_class=HelpFormatter, **kwargs)


def positive_int(value: str) -> int:
    """A whole number above zero, with an error message a person can act on."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def fraction(value: str) -> float:
    """A number between 0 and 1 inclusive (thresholds, levels)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return number


def key_value(value: str) -> tuple[str, str]:
    """``NAME=VALUE`` (repeatable flags: ``--param``, ``--arg``, ``--candidate``) → a pair."""
    name, sep, rest = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, rest


def json_or_text(value: str):
    """A flag value read as JSON when it is JSON (``3``, ``0.1``, ``true``), else as text."""
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
