"""Run the training pipeline on this machine with ``kfp.local``.

The very pipeline that compiles to ``digits_pipeline.yaml`` runs here, task by
task, in subprocesses of the current environment (no Docker, no cluster).
With no S3 store configured, an embedded one is started for the run, with its
data under ``DIGITS_HOME`` so the registry persists between runs.
"""

import contextlib
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from components.contract import PROMOTE, GateDecision
from components.errors import USER_ERROR, exit_code_by_name
from components.settings import Settings
from pipelines.progress import SKIPPED, WAITING, LiveView, PlainView, TaskLogRouter
from pipelines.training import MODEL_FAMILIES, build_pipeline

#: Short training (three epochs, few rounds): what every smoke run trains with — ``digits
#: run --quick``, ``digits simulate --quick`` and ``bench/training.py --quick``.
QUICK_TRAINING: dict[str, Any] = {"epochs": 3, "batch_size": 64, "xgb_rounds": 20}
#: ``--quick``: small data and short training — a smoke run in about two minutes.
QUICK_ARGUMENTS: dict[str, Any] = {"train_size": 3000, **QUICK_TRAINING, "min_accuracy": 0.85}

#: The headline metrics a run summary carries per model (the full set is in the report).
SUMMARY_METRICS = ("n", "accuracy", "accuracy_ci", "top2_accuracy", "log_loss", "mcc", "ece",
                   "uncalibrated", "macro_avg", "performance")
#: How tasks execute: in this Python environment, or each in its own container.
RUNNERS = ("subprocess", "docker")
#: Where runs that failed are moved, so ``runs/`` holds only runs that finished.
FAILED_RUNS = "failed-runs"
#: The order stages appear in the progress view.
_STAGE_ORDER = ("ingest", "train", "evaluate", "gate", "report", "deploy", "kaggle", "archive")
#: A local run scores its Kaggle submission offline unless asked (``digits run --kaggle``).
LOCAL_KAGGLE_MODE = "offline"
#: What a run summary's ``kaggle`` entry keeps of the archived submission record.
KAGGLE_SUMMARY = ("mode", "submitted", "file", "key", "rows", "version", "local_score",
                  "kaggle_score", "note")


class RunFailed(RuntimeError):
    """A run that could not finish: which stage, why in one line, and where its log is."""

    def __init__(self, stage: str, reason: str, log: Path | None, user_error: bool) -> None:
        self.stage, self.reason, self.log, self.user_error = stage, reason, log, user_error
        where = f" (log: {log})" if log else ""
        super().__init__(f"stage {stage} failed: {reason}{where}")

    @property
    def exit_code(self) -> int:
        return 2 if self.user_error else 1


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + os.urandom(3).hex()


def task_labels(pipeline) -> dict[str, str]:
    """kfp's task names → the names people read (``evaluate-2`` → ``evaluate-xgboost``).

    In the order the stages run, from the compiled pipeline itself, conditions unfolded.
    """
    spec = pipeline.pipeline_spec
    labels: dict[str, str] = {}

    def walk(tasks) -> None:
        for name, task in tasks.items():
            ref = task.component_ref.name
            if ref.startswith("comp-condition"):
                walk(spec.components[ref].dag.tasks)
            else:
                labels[name] = task.task_info.name

    walk(spec.root.dag.tasks)

    def rank(item: tuple[str, str]) -> tuple[int, str]:
        label = item[1]
        return next((i for i, s in enumerate(_STAGE_ORDER) if label.startswith(s)), 99), label

    return dict(sorted(labels.items(), key=rank))


def check_arguments(arguments: dict[str, Any], settings: Settings) -> None:
    """Refuse what would only fail minutes later, inside a stage."""
    from components.datafiles import DataError, missing_mnist_files

    source = arguments.get("source", "mnist")
    if source == "kaggle-csv":
        csv = arguments.get("csv_path")
        if not csv:
            raise DataError("--source kaggle-csv needs --csv PATH (Kaggle's train.csv)")
        if not Path(csv).is_file():
            raise DataError(f"--csv {csv}: no such file")
    elif source == "mnist":
        given = arguments.get("mnist_dir")
        directory = Path(given) if given else settings.mnist_dir
        flag = "--mnist-dir" if given else "DIGITS_MNIST_DIR"
        if directory is not None:
            if not Path(directory).is_dir():
                raise DataError(f"{flag} {directory}: no such directory")
            missing = missing_mnist_files(directory)
            if missing:
                raise DataError(f"{flag} {directory}: missing {', '.join(missing)}")
    else:
        raise DataError(f"unknown source {source!r}; choose mnist or kaggle-csv")
    from components.kaggle.job import MODES, ONLINE

    mode = arguments.get("kaggle_mode", LOCAL_KAGGLE_MODE)
    test_csv = arguments.get("kaggle_test_csv")
    if mode not in MODES:
        raise DataError(f"--kaggle {mode}: choose from {', '.join(MODES)}")
    if test_csv and not Path(test_csv).is_file():
        raise DataError(f"--kaggle-test {test_csv}: no such file")
    if mode == ONLINE and not test_csv:
        raise DataError("--kaggle online needs --kaggle-test PATH (Kaggle's test.csv)")


@contextlib.contextmanager
def _captured(router: TaskLogRouter) -> Iterator[None]:
    """Everything kfp.local and its tasks print goes through ``router``.

    kfp.local's own logger writes to whatever ``sys.stdout`` is when a task
    starts, and a task's output is printed by this process line by line, so
    redirecting the Python streams catches all of it. Its warning that a
    Python task runs outside its image is what the subprocess runner is for,
    so it is recorded in the runner log rather than shown.
    """
    with contextlib.redirect_stdout(router), contextlib.redirect_stderr(router), \
            warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *_a, **_k: router.write(
            f"{category.__name__}: {message}\n")
        try:
            yield
        finally:
            router.close()


def input_paths(arguments: dict[str, Any], settings: Settings) -> list[Path]:
    """The host directories a run reads its inputs from (MNIST, CSVs), for container mounts."""
    paths = [arguments.get("mnist_dir") or settings.mnist_dir,
             *(Path(arguments[k]).parent for k in ("csv_path", "kaggle_test_csv")
               if arguments.get(k))]
    return sorted({Path(p).resolve() for p in paths if p})


def check_docker(arguments: dict[str, Any], settings: Settings) -> None:
    """Before a containerised run: an engine, the training image, and inputs it can mount."""
    from components.datafiles import DataError
    from components.images import TRAIN_IMAGE

    try:
        import docker

        client = docker.from_env()
        tags = {tag for image in client.images.list() for tag in image.tags}
        client.close()
    except Exception as error:  # no SDK, no socket, no daemon: one clear line
        raise DataError(f"--runner docker needs a running Docker engine ({error})") from None
    missing = [image for image in (TRAIN_IMAGE,) if image not in tags]
    if missing:
        raise DataError(f"--runner docker: image {', '.join(missing)} not built; run `make images`")
    if arguments.get("source", "mnist") == "mnist" and not input_paths(arguments, settings):
        raise DataError("--runner docker needs the MNIST files on this machine: "
                        "pass --mnist-dir or set DIGITS_MNIST_DIR (containers do not download)")


def _runner(kind: str, inputs: list[Path]):
    """kfp.local's runner for ``kind``; the Docker one wired to this machine's store and data.

    Containers share the host's network (the S3 store listens on its loopback),
    get every ``DIGITS_*`` setting, run as the calling user (their outputs land
    in the run folder, owned by whoever started the run) and see the inputs
    read-only at the same paths. kfp.local mounts the run folder itself.
    """
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    from docker.types import Mount

    environment = {k: v for k, v in os.environ.items() if k.startswith("DIGITS_")}
    environment.update(HOME="/tmp", MPLCONFIGDIR="/tmp/matplotlib")
    return local.DockerRunner(
        network_mode="host", user=f"{os.getuid()}:{os.getgid()}", environment=environment,
        mounts=[Mount(target=str(p), source=str(p), type="bind", read_only=True)
                for p in inputs])


def run_pipeline(arguments: dict[str, Any], models: Sequence[str] = MODEL_FAMILIES,
                 settings: Settings | None = None, *, console: Any = None,
                 verbose: bool = False, runner: str = "subprocess") -> dict[str, Any]:
    """Execute the pipeline locally and return the run's summary.

    ``runner``: ``subprocess`` runs every task in this environment; ``docker``
    runs each in its own container from the training image, exactly as on a
    cluster (``TRAIN_IMAGE``).

    Progress goes to ``console`` (a :class:`rich.console.Console`, default: stderr),
    live when it is a terminal and as plain lines otherwise; every task's log goes
    to ``<home>/runs/<run>/logs/``. A failure raises :class:`RunFailed` and moves
    the run's folder to ``<home>/failed-runs/``.
    """
    from kfp import local
    from rich.console import Console

    from components.registry import Registry
    from components.s3local import s3_environment
    from components.settings import get_settings

    settings = settings or get_settings()
    arguments = {"kaggle_mode": LOCAL_KAGGLE_MODE, **arguments}
    check_arguments(arguments, settings)
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose from {RUNNERS}")
    if runner == "docker":
        check_docker(arguments, settings)
    console = console or Console(file=sys.stderr)  # the real one, before redirection
    run_id = arguments.get("run_id") or new_run_id()
    runs = Path(settings.home).resolve() / "runs"
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    pipeline = build_pipeline(models)
    labels = task_labels(pipeline)
    echo: IO[str] | None = sys.__stderr__ if verbose else None
    started = time.perf_counter()
    try:
        if console.is_terminal and not verbose:
            view_context: Any = LiveView(console, labels)
        else:  # one branch of the gate's condition runs, not both
            view_context = contextlib.nullcontext(PlainView(
                lambda line: console.print(line, soft_wrap=True, markup=False, highlight=False),
                len(labels) - 1))
        with view_context as view:
            router = TaskLogRouter(run_dir / "logs", labels, view, echo=echo)
            with s3_environment(settings):
                try:
                    with _captured(router):
                        local.init(runner=_runner(runner, input_paths(arguments, settings)),
                                   pipeline_root=str(run_dir), raise_on_error=True)
                        task = pipeline(**{**arguments, "run_id": run_id})
                except Exception as error:
                    raise _failure(router, error) from error
                decision_dir = Path(task.outputs["decision_report"].path)
                decision = GateDecision.load(decision_dir)
                registry = Registry.from_settings(get_settings())
                version = registry.run_version(run_id)
                if version is None:
                    raise RunFailed("deploy", "the run registered no version", None, False)
                pointer, submissions = registry.production(), registry.submissions()
                # The deploy stage's verdict, not the gate's: a promotion a racing run
                # beat to the pointer is archived as rejected (components.deploy).
                metadata = registry.metadata(version)
                dataset, promoted = metadata["dataset"], metadata["gate"]["decision"] == PROMOTE
            for stage in router.stages.values():
                if stage.state == WAITING:
                    view.changed(stage, SKIPPED)
    except BaseException as error:
        moved = _set_aside(run_dir, runs.parent / FAILED_RUNS)
        if isinstance(error, RunFailed) and error.log and moved:
            raise RunFailed(error.stage, error.reason, moved / error.log.relative_to(run_dir),
                            error.user_error) from error.__cause__
        raise
    report = run_dir / "report.html"
    shutil.copyfile(task.outputs["report"].path, report)
    feedback = dataset.get("feedback")
    submitted = next((record for record in submissions if record.get("version") == version
                      and promoted), None)
    models = {
        name: {**row, "metrics": {k: row["metrics"][k] for k in SUMMARY_METRICS
                                  if k in row["metrics"]}}
        for name, row in decision.candidates.items()
    }
    return {
        "run_id": run_id,
        "runner": runner,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "models": models,
        "gate": {
            "decision": decision.decision,
            "reason": decision.reason,
            "challenger": decision.challenger_kind,
            "champion": decision.champion_version,
            "challenger_accuracy": decision.challenger["accuracy"],
            "champion_accuracy": (decision.champion or {}).get("accuracy"),
        },
        "train_digits": dataset["sizes"]["train"],
        "version": version,
        "promoted": promoted,
        "production": pointer.version if pointer else None,
        "kaggle": {k: submitted.get(k) for k in KAGGLE_SUMMARY} if submitted else None,
        "feedback": {"used": feedback["used"], "received": feedback["received"],
                     "sha256": feedback["sha256"]} if feedback else None,
        "decision_report": str(decision_dir),
        "report": str(report),
        "logs": str(run_dir / "logs"),
    }


def _failure(router: TaskLogRouter, error: Exception) -> RunFailed:
    """Name the stage that failed and its reason, from what the router saw."""
    stage = router.failed_stage() or router.unclosed_stage()
    if stage is None:
        return RunFailed("pipeline", str(error).splitlines()[0] if str(error) else
                         type(error).__name__, router.log_dir / "runner.log", False)
    reason = stage.error or _last_line(stage.log) or "no reason given"
    user_error = exit_code_by_name(stage.error_type) == USER_ERROR
    return RunFailed(stage.label, reason, stage.log, user_error)


def _last_line(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.strip() and "finished with status" not in line]
    return lines[-1] if lines else ""


def _set_aside(run_dir: Path, failed_runs: Path) -> Path | None:
    """Move a run that did not finish out of ``runs/``; keep its logs for reading."""
    if not run_dir.exists():
        return None
    failed_runs.mkdir(parents=True, exist_ok=True)
    target = failed_runs / run_dir.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(run_dir), str(target))
    return target


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable account of the run: metrics table, gate, where things are."""
    from components.rendering import summary_table

    lines = [f"run {summary['run_id']} ({summary['wall_seconds']} s)",
             summary_table({kind: row["metrics"] for kind, row in summary["models"].items()}),
             "validation / train seconds: " + ", ".join(
                 f"{kind} {row['validation_accuracy']:.4f} / {row['train_seconds']:.0f}s"
                 for kind, row in summary["models"].items())]
    gate = summary["gate"]
    lines += [f"gate: {gate['decision'].upper()} {gate['challenger']} "
              f"(champion: {gate['champion'] or 'none'})",
              f"  {gate['reason']}",
              f"production: {summary['production'] or 'none'}"]
    if summary.get("feedback") and summary["feedback"]["received"]:
        feedback = summary["feedback"]
        lines.append(f"feedback: trained with {feedback['used']:,} of {feedback['received']:,} "
                     "digits users labelled")
    kaggle = summary.get("kaggle")
    if kaggle:
        sent = "submitted" if kaggle["submitted"] else "not submitted"
        score = kaggle["kaggle_score"] if kaggle["submitted"] else kaggle["local_score"]
        where = "Kaggle" if kaggle["submitted"] else "holdout"
        scored = "" if score is None else f", {where} score {score:.4f}"
        lines.append(f"kaggle: {kaggle['mode']} ({sent}){scored}: {kaggle['file']}")
    lines += [f"report: {summary['report']}", f"logs: {summary['logs']}"]
    return "\n".join(lines)
