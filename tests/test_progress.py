"""The run's progress view: kfp.local's stream split per task, and plain lines for logs."""

from __future__ import annotations

import io

from rich.console import Console

from pipelines.local import task_labels
from pipelines.progress import DONE, FAILED, LiveView, PlainView, TaskLogRouter
from pipelines.training import build_pipeline

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


def kfp_task(name: str, body: list[str], status: str = "SUCCESS") -> str:
    """What kfp.local 2.17 prints for one task (colours and indentation included)."""
    colour = GREEN if status == "SUCCESS" else RED
    lines = [f"06:39:31.974 - INFO - Executing task {CYAN}'{name}'{RESET}",
             "06:39:31.975 - INFO - Streamed logs:", "",
             *(f"    {line}" for line in body), "", "",
             f"06:39:33.012 - INFO - Task {CYAN}'{name}'{RESET} finished with status "
             f"{colour}{status}{RESET}"]
    if status == "SUCCESS":
        lines += [f"06:39:33.012 - INFO - Task {CYAN}'{name}'{RESET} outputs:",
                  "    model: Model( name='model', ... )"]
    return "\n".join([*lines, "-" * 80]) + "\n"


LABELS = {"ingest": "ingest", "train-cnn": "train-cnn", "evaluate": "evaluate-cnn"}


def route(stream: str, tmp_path, chunk: int = 7) -> tuple[TaskLogRouter, list[str]]:
    shown: list[str] = []
    router = TaskLogRouter(tmp_path / "logs", LABELS, PlainView(shown.append, len(LABELS)))
    for start in range(0, len(stream), chunk):  # writes arrive in arbitrary pieces
        router.write(stream[start:start + chunk])
    router.close()
    return router, shown


def test_each_task_gets_its_own_log_and_a_plain_line_per_state(tmp_path):
    stream = (
        f"06:39:31.000 - INFO - Running pipeline: \x1b[95m'digits-training'{RESET}\n"
        + kfp_task("ingest", ["loading", "digits:headline 3,000 train / 5,000 validation"])
        + kfp_task("train-cnn", ["Epoch 1/3"] + [
            f"digits:progress epoch {i}/3 val_accuracy=0.9{i}" for i in (1, 2, 3)]
            + ["digits:headline validation accuracy 0.9250 in 15 s"])
    )
    router, shown = route(stream, tmp_path)

    assert shown == [
        "[1/3] ingest: running",
        shown[1],
        "[2/3] train-cnn: running",
        "[2/3] train-cnn: epoch 1/3 (0.0 s)",
        "[2/3] train-cnn: epoch 2/3 (0.0 s)",
        "[2/3] train-cnn: epoch 3/3 (0.0 s)",
        shown[6],
    ]
    assert shown[1].startswith("[1/3] ingest: done in ")
    assert shown[1].endswith(" — 3,000 train / 5,000 validation")
    assert shown[6].endswith(" — validation accuracy 0.9250 in 15 s")
    assert all("\x1b[" not in line for line in shown)

    logs = {p.name: p.read_text() for p in (tmp_path / "logs").iterdir()}
    assert set(logs) == {"runner.log", "ingest.log", "train-cnn.log"}
    assert "Running pipeline: 'digits-training'" in logs["runner.log"]
    assert "loading" in logs["ingest.log"] and "Epoch 1/3" not in logs["ingest.log"]
    assert "Epoch 1/3" in logs["train-cnn.log"]
    # What kfp prints after a task ends (its outputs) stays with that task.
    assert "Task 'train-cnn' outputs:" in logs["train-cnn.log"]
    assert [s.state for s in router.stages.values()] == [DONE, DONE, "waiting"]


def test_long_training_prints_a_tenth_of_its_steps(tmp_path):
    rounds = [f"digits:progress round {i}/200 val_error=0.1" for i in range(1, 201)]
    _, shown = route(kfp_task("train-cnn", rounds), tmp_path, chunk=4096)
    progress = [line for line in shown if " round " in line]
    assert [line.split()[3] for line in progress] == [f"{i}/200" for i in
                                                      (1, 20, 40, 60, 80, 100, 120, 140,
                                                       160, 180, 200)]


def test_a_failed_task_carries_the_exception_line_as_its_reason(tmp_path):
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                 "components.datafiles.DataError: "
                 "/tmp/t.csv: line 1: header must be label,pixel0..",
                 "", "RuntimeError: the executor failed"][:3]
    router, shown = route(kfp_task("ingest", traceback, status="FAILURE"), tmp_path)
    stage = router.failed_stage()
    assert stage is not None and stage.label == "ingest" and stage.state == FAILED
    assert stage.error_type == "DataError"
    assert stage.error == "/tmp/t.csv: line 1: header must be label,pixel0.."
    assert shown[-1].startswith("[1/3] ingest: failed after ")
    assert shown[-1].endswith(" — /tmp/t.csv: line 1: header must be label,pixel0..")


def test_the_live_view_draws_every_stage_on_a_terminal(tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with LiveView(console, LABELS) as view:
        router = TaskLogRouter(tmp_path / "logs", LABELS, view)
        router.write(kfp_task("ingest", ["digits:headline 3,000 train"]))
        router.write(kfp_task("train-cnn", ["digits:progress epoch 2/3"], status="FAILURE"))
        router.close()
    screen = out.getvalue()
    assert "✔ ingest" in screen and "3,000 train" in screen
    assert "✘ train-cnn" in screen and "2/3" in screen
    assert "evaluate-cnn" in screen and "waiting" in screen


def test_task_labels_name_every_stage_in_pipeline_order():
    labels = task_labels(build_pipeline(["cnn", "xgboost"]))
    assert list(labels.values()) == [
        "ingest", "train-cnn", "train-xgboost", "evaluate-cnn", "evaluate-xgboost",
        "gate", "report", "deploy", "kaggle-submit", "archive-rejected"]
    assert labels["evaluate-2"] == "evaluate-xgboost"
