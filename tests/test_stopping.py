"""A stop is a stop: SIGTERM to a real `digits run` cleans up as Ctrl-C does.

SIGTERM is what `timeout`, CI cancellation, systemd and Kubernetes send. Before,
it killed the command outright and left the embedded S3 store (in a session of
its own) holding its ports and data folder, and a running kfp.local task orphaned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from components.s3local import running_server
from components.stopping import Stopped, descendants, sigterm_as_interrupt
from tests.conftest import ROOT
from tests.waiting import wait_for

#: How long a stopped run may take to clean up (stopping weed waits for it).
STOP_WITHIN_S = 60


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _port_free(port: int) -> bool:
    """Nothing listens on ``port`` and a server may bind it (as servers do, SO_REUSEADDR:
    the closed store's connections may linger in TIME_WAIT, which is not holding it)."""
    with socket.socket() as client:
        if client.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


#: ``digits`` arguments, the DIGITS_HOME they use (from the test's folder), what they print.
STOPPABLE = {
    "run": (["run", "--quick"], "home", "digits run: stopped by SIGTERM"),
    # Two steps side by side: the store in this process, each step in a worker process.
    "simulate": (["simulate", "--quick", "--sizes", "500", "--seeds", "2", "--jobs", "2",
                  "--models", "baseline", "--output", "{tmp}/simulation"], "simulation/home",
                 "digits simulate: stopped by SIGTERM with 0 of 2 steps saved"),
}


@pytest.mark.parametrize("command", ["run", pytest.param("simulate", marks=pytest.mark.slow)])
def test_sigterm_stops_the_command_its_tasks_and_its_s3_store(command, mnist_dir, tmp_path):
    argv, home_dir, said = STOPPABLE[command]
    home = tmp_path / home_dir
    env = {**os.environ, "DIGITS_HOME": str(home), "DIGITS_MNIST_DIR": str(mnist_dir)}
    for key in [k for k in env if k.startswith("DIGITS_S3_")]:
        del env[key]  # the embedded store, as a new user gets
    run = subprocess.Popen(
        [sys.executable, "-m", "cli", *(a.format(tmp=tmp_path) for a in argv)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own group: nothing but our signal reaches it
    weed: dict = {}
    try:
        state = home / "s3" / "server.json"

        def store_up() -> bool:  # server.json, once written whole (it is not written atomically)
            try:
                weed.update(json.loads(state.read_text()))
            except ValueError:
                return False
            return True

        wait_for(store_up, 120, "the embedded S3 store to be up (s3/server.json)")
        port = int(weed["endpoint"].rsplit(":", 1)[1])
        # A kfp.local task (or a simulation's step worker) running below the command.
        wait_for(lambda: set(descendants(run.pid)) - {weed["pid"]}, 120,
                 "a task subprocess below the command")
        before = set(descendants(run.pid))

        os.kill(run.pid, signal.SIGTERM)  # the command's process alone, as systemd or k8s do
        _, stderr = run.communicate(timeout=STOP_WITHIN_S)
    finally:
        if run.poll() is None:  # never leave a run behind, whatever failed above
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        if weed and _alive(weed["pid"]):  # nor its store (the failure is still reported)
            os.killpg(weed["pid"], signal.SIGKILL)

    assert run.returncode == 128 + signal.SIGTERM, stderr
    # The command's own word; a simulation's step workers, interrupted as by Ctrl-C while
    # they start, may print their tracebacks above or below it (their stderr is shared).
    assert any(said in line for line in stderr.splitlines()), stderr
    assert not _alive(weed["pid"]), "weed was left running"
    assert _port_free(port), f"weed's S3 port {port} is still held"
    assert not state.exists() and running_server(home / "s3") is None
    # Every subprocess ends too (one may still be exiting as its parent returns).
    wait_for(lambda: not [pid for pid in before if _alive(pid)], 15,
             "every subprocess of the command to end")
    if command == "run":  # the stopped run is set aside, as on Ctrl-C, in one line
        assert "Traceback" not in stderr, stderr
        assert not list((home / "runs").iterdir()) and list((home / "failed-runs").iterdir())


def test_sigterm_interrupts_the_children_in_the_group_and_raises_here(tmp_path):
    """Children in this group get Ctrl-C's SIGINT; the caller gets :class:`Stopped`."""
    ready = tmp_path / "ready"
    # The child takes Ctrl-C as Python does in a terminal, also when this test runs where
    # SIGINT is ignored (a job started with `&` by a non-interactive shell passes that on).
    child = textwrap.dedent(f"""
        import pathlib, signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pathlib.Path({str(ready)!r}).write_text("")
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            raise SystemExit(42)
    """)
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        from components.stopping import sigterm_as_interrupt
        child = subprocess.Popen([sys.executable, "-c", {child!r}])
        try:
            with sigterm_as_interrupt():
                while not os.path.exists({str(ready)!r}):
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(120)
        except KeyboardInterrupt as error:
            print(type(error).__name__, error.exit_code, child.wait(30), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, start_new_session=True)
    assert done.stdout.split() == ["Stopped", "143", "42"], done.stderr


def test_outside_a_stop_block_sigterm_is_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    assert Stopped(signal.SIGHUP).exit_code == 129
