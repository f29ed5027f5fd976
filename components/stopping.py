"""A stop is a stop: SIGTERM ends a long command the way Ctrl-C does, cleanup included.

Ctrl-C in a terminal sends SIGINT to the whole foreground process group: this
process raises ``KeyboardInterrupt`` (so every ``finally`` runs: the embedded S3
store is stopped, a failed run is set aside) and its children — kfp.local's task
subprocesses, the simulator's step workers — are interrupted too. SIGTERM is what
``timeout``, CI cancellation, systemd and Kubernetes send instead, and by default
it kills this process outright: no ``finally`` runs, the S3 store (in a session of
its own, so it survives) keeps its ports and data folder, and a running task goes
on as an orphan. :func:`sigterm_as_interrupt` makes SIGTERM (and SIGHUP) do what
Ctrl-C does: interrupt the children in this process's group, then raise
:class:`Stopped` here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

#: Signals that stop a command as Ctrl-C does (a closed terminal sends SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The command was told to stop by ``signum``; it cleans up as on Ctrl-C.

    A ``KeyboardInterrupt``, so every handler written for Ctrl-C handles it too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def _processes() -> list[tuple[int, int, int]]:
    """``(pid, parent pid, process group)`` of every process this user can see."""
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        table = []
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended while we looked
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat[stat.rindex(")") + 2:].split()
            table.append((int(entry.name), int(fields[1]), int(fields[2])))
        return table
    listing = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid="], capture_output=True,
                             text=True, check=True).stdout
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in
                                                     listing.splitlines() if line.strip())]


def descendants(pid: int | None = None) -> list[int]:
    """The processes below ``pid`` (default: this one), children first."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, parent, _group in _processes():
        children.setdefault(parent, []).append(child)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def interrupt_children() -> list[int]:
    """Send SIGINT to every descendant in this process's group, as Ctrl-C would.

    Only descendants: a Ctrl-C sent to the group this process was started in
    could reach its parent (make, pytest, a shell script). Processes in another
    group (the embedded S3 store, in its own session) belong to code that stops
    them itself on ``KeyboardInterrupt``. Returns the pids signalled.
    """
    group = os.getpgrp()
    mine = {pid for pid, _parent, pgid in _processes() if pgid == group}
    signalled = []
    for pid in descendants():
        if pid in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
                signalled.append(pid)
    return signalled


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM or SIGHUP interrupts the children and raises :class:`Stopped` here.

    A second signal while cleaning up is ignored, so a patient sender's repeat
    does not cut the cleanup short (Kubernetes follows with SIGKILL anyway).
    Only the main thread can install handlers; elsewhere this does nothing.
    """
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        interrupt_children()
        raise Stopped(signum)

    try:
        previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
