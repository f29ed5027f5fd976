"""The simulator: real pipeline runs over sizes × seeds, resumable, loud when production falls."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipelines.simulate import (
    COLUMNS,
    REGRESSION_EXIT,
    RESULTS_CSV,
    STATE_FILE,
    ProductionRegressed,
    Schedule,
    build_parser,
    check_production,
    command_line,
    core_sets,
    default_jobs,
    main,
    schedule_from,
)
from pipelines.study import read_results, results_markdown
from tests.waiting import wait_for

#: Two sizes, two seeds, the quick families trained briefly, a smaller holdout.
TINY = ["--quick", "--sizes", "200,600", "--arg", "xgb_rounds=8", "--arg", "baseline_max_iter=40",
        "--arg", "holdout_size=1000"]
STEPS = 4
MODELS = 2


def _environment(mnist_dir: Path) -> dict[str, str]:
    """This machine's environment with MNIST given and no configured S3 store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_S3_")}
    return {**env, "DIGITS_MNIST_DIR": str(mnist_dir)}


def _steps_saved(output: Path) -> int:
    state = output / STATE_FILE
    return len(json.loads(state.read_text())["steps"]) if state.exists() else 0


def _simulate(argv: list[str], mnist_dir: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        for key in [k for k in os.environ if k.startswith("DIGITS_S3_")]:
            patch.delenv(key)
        patch.setenv("DIGITS_MNIST_DIR", str(mnist_dir))
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory, mnist_dir):
    """A tiny simulation killed (SIGKILL, process group) after its first step, then resumed."""
    output = tmp_path_factory.mktemp("simulation") / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "simulate", *TINY, "--output", str(output)],
        env=_environment(mnist_dir), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _steps_saved(output) >= 1 or process.poll() is not None, 300,
                 "the first step to be saved")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_after = _steps_saved(output)
    try:
        code, out, err = _simulate([*TINY, "--output", str(output), "--json"], mnist_dir)
        yield {"output": output, "killed_after": killed_after, "code": code,
               "outputs": json.loads(out) if code == 0 else None, "stderr": err}
    finally:  # the killed process's S3 store outlives it (its own session); the resume joined it
        server = output / "home" / "s3" / "server.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(json.loads(server.read_text())["pid"], signal.SIGTERM)


@pytest.mark.slow
def test_a_killed_simulation_resumes_without_redoing_or_duplicating_steps(study):
    assert study["code"] == 0, study["stderr"]
    assert 1 <= study["killed_after"] < STEPS
    assert f"resuming with {study['killed_after']} of {STEPS} steps done" in study["stderr"]
    with (study["output"] / RESULTS_CSV).open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == STEPS * MODELS
    keys = [(r["train_size"], r["seed"], r["model"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert sorted({r["step"] for r in rows}) == [str(i) for i in range(1, STEPS + 1)]
    assert len({r["run_id"] for r in rows}) == STEPS
    # Data arrives in order: both seeds of the small size, then both of the larger
    # (the two seeds of a size run side by side, one core each, and may finish either way).
    assert sorted((r["step"], r["train_size"], r["seed"]) for r in rows[::MODELS]) == [
        ("1", "200", "0"), ("2", "200", "1"), ("3", "600", "0"), ("4", "600", "1")]
    # Each step has a core of its own, but the last, which gets them all (nothing is
    # left to start beside it once the others end).
    cores = {r["step"]: r["cores"] for r in rows}
    machine = len(os.sched_getaffinity(0))
    assert cores == {"1": str(machine // 2), "2": str(machine // 2), "3": str(machine // 2),
                     "4": str(machine)}


@pytest.mark.slow
def test_more_data_helps_and_production_never_falls(study):
    rows = read_results(study["output"] / RESULTS_CSV)
    def accuracies(model: str, size: str) -> list[float]:
        return [r["holdout_accuracy"] for r in rows
                if r["model"] == model and r["train_size"] == size]

    for model in ("xgboost", "baseline"):
        assert min(accuracies(model, "600")) > max(accuracies(model, "200")), model
    assert all(r["train_seconds"] > 0 and r["inference_ms_per_1000"] > 0 for r in rows)
    assert all(-1 <= r["mcc"] <= 1 for r in rows)
    # The simulation lowers the floor, so there is production from the first saved step on:
    # that step's model, or one a step alongside promoted first (perhaps in the killed attempt,
    # whose step was then run again and judged against it).
    assert all(r["production_accuracy"] is not None for r in rows)
    # A promoted challenger is production when its step is saved, or a better model is;
    # and production never fell in the order the steps were saved (the order it was read in).
    assert all(r["production_accuracy"] >= r["holdout_accuracy"] for r in rows if r["promoted"])
    check_production(r["production_accuracy"] for r in rows[::MODELS])


class _Resources(HTMLParser):
    """Every URL an HTML page would fetch or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.slow
def test_the_report_is_self_contained(study):
    outputs = study["outputs"]
    page = Path(outputs["report"]).read_text()
    parser = _Resources()
    parser.feed(page)
    assert len([u for u in parser.urls if u.startswith("data:image/png;base64,")]) == 4
    assert all(u.startswith("data:") for u in parser.urls)
    assert not parser.tags & {"link", "script", "iframe"}
    assert "url(" not in page and "@import" not in page
    assert Path(outputs["curves"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = results_markdown(read_results(Path(outputs["results"])), "curves.png", "made here")
    assert "| 200 |" in markdown and "| 600 |" in markdown and "never fell" in markdown


@pytest.mark.slow
def test_a_changed_schedule_is_refused(study, mnist_dir):
    state = (study["output"] / STATE_FILE).read_text()
    argv = [*TINY, "--seeds", "3", "--output", str(study["output"])]
    code, _, err = _simulate(argv, mnist_dir)
    assert code == 2
    assert "another schedule" in err and "seeds: 2 → 3" in err and "--fresh" in err
    assert (study["output"] / STATE_FILE).read_text() == state


@pytest.mark.slow
def test_production_falling_fails_the_simulation_loudly(study, mnist_dir, tmp_path):
    output = tmp_path / "copy"
    shutil.copytree(study["output"], output, ignore=shutil.ignore_patterns("home"))
    state = json.loads((output / STATE_FILE).read_text())
    before = max(s["production_accuracy"] for s in state["steps"][:-1])
    state["steps"][-1]["production_accuracy"] = before - 0.01  # below what came before
    (output / STATE_FILE).write_text(json.dumps(state))
    code, _, err = _simulate([*TINY, "--output", str(output)], mnist_dir)
    assert code == REGRESSION_EXIT
    assert f"PRODUCTION GOT WORSE — production accuracy fell at step {STEPS}" in err


def test_the_monotone_check():
    check_production([None, 0.91, 0.91, 0.95, 0.97])
    with pytest.raises(ProductionRegressed, match=r"step 3: 0\.9500 → 0\.9400"):
        check_production([0.90, 0.95, 0.94, 0.99])
    with pytest.raises(ProductionRegressed, match=r"step 2: 0\.9000 → none"):
        check_production([0.90, None])


def test_steps_side_by_side_get_disjoint_cores(mnist_dir, tmp_path):
    cores = os.sched_getaffinity(0)
    assert core_sets(1) == [cores]
    halves = core_sets(2) if len(cores) >= 2 else []
    assert not set.intersection(*halves or [set()]) and set().union(*halves) <= cores
    with pytest.raises(ValueError, match="--jobs must be between 1 and"):
        core_sets(len(cores) + 1)
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(io.StringIO()) as err:
        main([*TINY, "--jobs", str(len(cores) + 1), "--output", str(tmp_path)])
    assert exited.value.code == 2 and "--jobs must be between" in err.getvalue()
    assert default_jobs(seeds=1) == 1 and default_jobs(seeds=99) == len(cores)


def test_the_schedule():
    schedule = Schedule(sizes=(0, 500, 100), seeds=2, models=("cnn",), first_seed=7)
    assert schedule.steps() == [(100, 7), (100, 8), (500, 7), (500, 8), (0, 7), (0, 8)]
    for bad in ({"sizes": (5,)}, {"sizes": (100, 100)}, {"models": ("svm",)}, {"seeds": 0}):
        with pytest.raises(ValueError):
            Schedule(**bad)


def test_the_command_line_reproduces_the_schedule():
    schedule = Schedule(sizes=(300, 0), seeds=2, models=("xgboost",), first_seed=3,
                        arguments={"min_accuracy": 0.0, "epochs": 2})
    argv = shlex.split(command_line(schedule.to_json()))[2:]
    assert schedule_from(build_parser().parse_args(argv)) == schedule
    assert command_line(Schedule().to_json()) == "digits simulate"
