"""Progress lines a stage prints so that whoever runs it can follow along.

A stage runs as a KFP task: on a cluster its output is the pod's log, locally
kfp.local streams it into ``digits run``. Both read plain text, so progress is
two kinds of plain, greppable line that stay readable in a raw log:

    digits:progress epoch 3/12 val_accuracy=0.9912
    digits:headline validation accuracy 0.9912

``digits run`` turns them into progress bars and the figure shown when a stage
is done (:mod:`pipelines.progress`); in a pod's log they read as they are.
"""

from __future__ import annotations

import re
import sys

PROGRESS_TAG = "digits:progress"
HEADLINE_TAG = "digits:headline"

PROGRESS_LINE = re.compile(
    rf"{PROGRESS_TAG} (?P<unit>\w+) (?P<step>\d+)/(?P<total>\d+)(?: (?P<detail>.*))?$")
HEADLINE_LINE = re.compile(rf"{HEADLINE_TAG} (?P<text>.+)$")


def progress(unit: str, step: int, total: int, detail: str = "") -> None:
    """Say that ``step`` of ``total`` units (epochs, rounds) are done."""
    line = f"{PROGRESS_TAG} {unit} {step}/{total}"
    print(f"{line} {detail}" if detail else line, file=sys.stdout, flush=True)


def headline(text: str) -> None:
    """The one figure that sums up a finished stage (an accuracy, a decision)."""
    print(f"{HEADLINE_TAG} {text}", file=sys.stdout, flush=True)
