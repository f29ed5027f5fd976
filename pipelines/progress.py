"""What ``digits run`` shows while kfp.local works: one line per stage, logs in files.

kfp.local prints every task's output, its own banners and the executor's input
dumps to ``sys.stdout`` of the running process, one task after another. A
:class:`TaskLogRouter` stands in for that stream: it splits it per task into
``<run>/logs/<task>.log`` and turns the stage's own progress lines
(:mod:`components.progress`) and kfp's "Executing task" / "finished with status"
lines into events for a view:

- :class:`LiveView` (a terminal): one live line per stage with its state,
  elapsed time, a progress bar with ETA while training, and its headline when done;
- :class:`PlainView` (not a terminal: CI, a pod's log, a pipe): one plain line per
  state change, and training progress at most every tenth of the way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar, Protocol

from components.progress import HEADLINE_LINE, PROGRESS_LINE

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '(?P<task>[^']+)'")
_TASK_END = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
#: The last line of a Python traceback: ``package.module.SomeError: what went wrong``.
_EXCEPTION = re.compile(
    r"^\s*(?:[\w.]+\.)?(?P<type>\w*(?:Error|Exception|Exit)): (?P<message>.+)$")
#: Where lines go that belong to no task (kfp's pipeline banners, warnings).
RUNNER_LOG = "runner"

WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"
#: A stage the run never reached (the other branch of the gate's condition).
SKIPPED = "skipped"


@dataclass
class Stage:
    """What the view knows about one pipeline task."""

    name: str
    label: str
    state: str = WAITING
    started: float | None = None
    finished: float | None = None
    headline: str = ""
    unit: str = ""
    step: int = 0
    total: int = 0
    error_type: str = ""
    error: str = ""
    log: Path | None = None

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


class View(Protocol):
    def changed(self, stage: Stage, event: str) -> None: ...


class TaskLogRouter:
    """A text stream that files kfp.local's output per task and reports progress.

    ``labels`` maps kfp's task names (``evaluate-2``) to what people call them
    (``evaluate-xgboost``), in pipeline order; log files use the label. ``echo``
    receives every byte as well (``--verbose``).
    """

    def __init__(self, log_dir: Path, labels: dict[str, str], view: View,
                 echo: IO[str] | None = None) -> None:
        self.log_dir = log_dir
        self.view = view
        self.echo = echo
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stages = {name: Stage(name, label, log=log_dir / f"{label}.log")
                       for name, label in labels.items()}
        self._buffer = ""
        self._current: Stage | None = None
        self._files: dict[str, IO[str]] = {}

    # -- the stream interface kfp.local writes to
    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if self.echo is not None:
            self.echo.write(text)
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        if self._buffer:
            self._line(_ANSI.sub("", self._buffer))
            self._buffer = ""
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    # -- parsing
    def _file(self, label: str) -> IO[str]:
        if label not in self._files:
            self._files[label] = (self.log_dir / f"{label}.log").open("a", encoding="utf-8")
        return self._files[label]

    def _stage(self, name: str) -> Stage:
        if name not in self.stages:  # a task the pipeline did not announce
            self.stages[name] = Stage(name, name, log=self.log_dir / f"{name}.log")
        return self.stages[name]

    def _line(self, line: str) -> None:
        if start := _TASK_START.search(line):
            stage = self._current = self._stage(start["task"])
            stage.state, stage.started = RUNNING, time.monotonic()
            self._file(stage.label).write(line + "\n")
            self.view.changed(stage, RUNNING)
            return
        # Lines after a task ends (its outputs) stay in its log until the next one starts.
        stage = self._current
        self._file(stage.label if stage else RUNNER_LOG).write(line + "\n")
        if stage is None or stage.state != RUNNING:
            return
        if end := _TASK_END.search(line):
            stage.finished = time.monotonic()
            stage.state = DONE if end["status"] == "SUCCESS" else FAILED
            self._file(stage.label).flush()
            self.view.changed(stage, stage.state)
        elif step := PROGRESS_LINE.search(line):
            stage.unit, stage.step = step["unit"], int(step["step"])
            stage.total = int(step["total"])
            self.view.changed(stage, "progress")
        elif head := HEADLINE_LINE.search(line):
            stage.headline = head["text"].strip()
        elif error := _EXCEPTION.match(line):
            stage.error_type, stage.error = error["type"], error["message"].strip()

    def failed_stage(self) -> Stage | None:
        return next((s for s in self.stages.values() if s.state == FAILED), None)

    def unclosed_stage(self) -> Stage | None:
        """The stage that was running when the stream ended (a crash of the runner)."""
        return next((s for s in self.stages.values() if s.state == RUNNING), None)


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f} s"


class PlainView:
    """One line per state change: for logs, CI and anything that is not a terminal."""

    #: Training progress is printed at most this many times per stage.
    PROGRESS_LINES = 10

    def __init__(self, write: Callable[[str], None], total: int) -> None:
        self._write = write
        self._total = total
        self._order: dict[str, int] = {}
        self._shown: dict[str, int] = {}

    def _number(self, stage: Stage) -> str:
        number = self._order.setdefault(stage.name, len(self._order) + 1)
        return f"[{number}/{max(self._total, number)}]"

    def changed(self, stage: Stage, event: str) -> None:
        prefix = f"{self._number(stage)} {stage.label}"
        if event == RUNNING:
            self._write(f"{prefix}: running")
        elif event == DONE:
            figure = f" — {stage.headline}" if stage.headline else ""
            self._write(f"{prefix}: done in {_format_seconds(stage.elapsed)}{figure}")
        elif event == FAILED:
            reason = f" — {stage.error}" if stage.error else ""
            self._write(f"{prefix}: failed after {_format_seconds(stage.elapsed)}{reason}")
        elif event == "progress" and stage.total:
            tenth = stage.step * self.PROGRESS_LINES // stage.total
            if tenth > self._shown.get(stage.name, 0) or stage.step == 1:
                self._shown[stage.name] = tenth
                self._write(f"{prefix}: {stage.unit} {stage.step}/{stage.total} "
                            f"({_format_seconds(stage.elapsed)})")


class LiveView:
    """A rich live display: every stage on its own line, updated in place."""

    ICONS: ClassVar[dict[str, str]] = {
        WAITING: "[dim]·[/]", RUNNING: "[cyan]▶[/]", DONE: "[green]✔[/]", FAILED: "[red]✘[/]"}

    def __init__(self, console, labels: dict[str, str]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.fields[icon]}"),
            TextColumn("{task.description:<18}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            refresh_per_second=4,
            # The run redirects the Python streams itself (into the task logs).
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._ids = {
            name: self._progress.add_task(label, total=None, start=False,
                                          icon=self.ICONS[WAITING], unit="", note="waiting")
            for name, label in labels.items()
        }

    def __enter__(self) -> LiveView:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def changed(self, stage: Stage, event: str) -> None:
        if stage.name not in self._ids:
            self._ids[stage.name] = self._progress.add_task(
                stage.label, total=None, start=False, icon="", unit="", note="")
        task = self._ids[stage.name]
        if event == RUNNING:
            self._progress.start_task(task)
            self._progress.update(task, icon=self.ICONS[RUNNING], note="running")
        elif event == "progress":
            self._progress.update(task, total=stage.total, completed=stage.step,
                                  unit=stage.unit + "s")
        elif event == DONE:
            total = stage.total or 1
            self._progress.update(task, icon=self.ICONS[DONE], total=total, completed=total,
                                  note=stage.headline)
            self._progress.stop_task(task)
        elif event == FAILED:
            self._progress.update(task, icon=self.ICONS[FAILED], note=f"[red]{stage.error}[/]")
            self._progress.stop_task(task)
        elif event == SKIPPED:
            self._progress.update(task, icon="[dim]–[/]", note="[dim]not run[/]")
