"""The simulator: run the real pipeline over growing training sets, several seeds each.

Every step is one pipeline run (gate included) against a registry of the
simulation's own, so the output answers two questions at once: how each model
family learns as data grows (accuracy, MCC, training and inference cost, with
the spread over seeds), and whether production only ever gets better as the
gate sees each new challenger. The production accuracy must never fall; if it
does, the simulation ends with exit code 3 and says so.

A simulation is resumable: its state is written after every step, so running
the same command again continues where it stopped (Ctrl-C, a killed process).
A changed schedule is refused unless ``--fresh``.

Steps run ``--jobs`` at a time (default: one per core, at most one per seed),
each in its own process pinned to its own cores, so the seeds of a size train
side by side and every step's timings are measured on the same share of the
machine. Steps start in the schedule's order; each is saved as it finishes,
with production as the registry holds it at that moment, so the saved order is
the order production was observed in.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.argparsing import json_or_text, key_value, make_parser, positive_int
from components.datafiles import write_atomically
from pipelines.training import MODEL_FAMILIES

#: Training-set sizes of the full study; 0 means every training digit.
DEFAULT_SIZES = (500, 1_000, 2_000, 5_000, 10_000, 20_000, 0)
DEFAULT_SEEDS = 3
ALL = "all"
#: The simulation lowers the gate's accuracy floor so the first step promotes and the
#: production curve starts at the smallest size (``--arg min_accuracy=...`` to restore it).
DEFAULT_ARGUMENTS: dict[str, Any] = {"min_accuracy": 0.0}
#: ``--quick``: two small sizes, two seeds, the fast families — a smoke run in minutes.
QUICK_SIZES = (300, 1_000)
QUICK_SEEDS = 2
QUICK_MODELS = ("xgboost", "baseline")
QUICK_ARGUMENTS: dict[str, Any] = {"xgb_rounds": 15, "baseline_max_iter": 60,
                                   "holdout_size": 2_000, "epochs": 2}

STATE_FILE = "simulation.json"
LOGS_DIR = "logs"
RESULTS_CSV = "results.csv"
REPORT_HTML = "report.html"
CURVES_PNG = "learning_curves.png"
HOME_DIR = "home"
#: One row per model, size and seed; the production columns describe the step's end.
COLUMNS = ("step", "train_size", "seed", "train_digits", "model", "holdout_accuracy", "mcc",
           "train_seconds", "inference_ms_per_1000", "challenger", "promoted",
           "production_version", "production_accuracy", "cores", "run_id")
#: Exit code when production got worse at some step (the system's central promise).
REGRESSION_EXIT = 3


class ScheduleChanged(ValueError):
    """The output directory holds a simulation of another schedule."""


class ProductionRegressed(RuntimeError):
    """Production accuracy fell between two steps."""


@dataclass(frozen=True)
class Schedule:
    """What a simulation runs: sizes × seeds, the model families, the pipeline arguments."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    seeds: int = DEFAULT_SEEDS
    models: tuple[str, ...] = MODEL_FAMILIES
    first_seed: int = 0
    arguments: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ARGUMENTS))

    def __post_init__(self) -> None:
        if not self.sizes or any(size != 0 and size < 10 for size in self.sizes):
            raise ValueError("sizes must be at least 10 (or 'all')")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError("sizes must not repeat")
        if not self.models or set(self.models) - set(MODEL_FAMILIES):
            raise ValueError(f"models must be a subset of {','.join(MODEL_FAMILIES)}")
        if self.seeds < 1:
            raise ValueError("seeds must be at least 1")

    def steps(self) -> list[tuple[int, int]]:
        """``(train_size, seed)`` as data "arrives": every seed of a size, then the next size."""
        ordered = sorted(self.sizes, key=lambda size: float("inf") if size == 0 else size)
        return [(size, self.first_seed + i) for size in ordered for i in range(self.seeds)]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "sizes": list(self.sizes), "models": list(self.models)}


def check_production(accuracies: Iterable[float | None]) -> None:
    """Raise :class:`ProductionRegressed` at the first step where production got worse.

    ``None`` means no production model yet; losing one after having it is a regression too.
    """
    best: float | None = None
    for step, accuracy in enumerate(accuracies, start=1):
        if best is not None and (accuracy is None or accuracy < best):
            shown = "none" if accuracy is None else f"{accuracy:.4f}"
            raise ProductionRegressed(
                f"production accuracy fell at step {step}: {best:.4f} → {shown}")
        if accuracy is not None:
            best = accuracy


RunStep = Callable[[dict[str, Any], Sequence[str], Path], dict[str, Any]]


def local_settings(home: Path):
    """An explicit home and no endpoint: a simulation never touches a configured registry."""
    from components.settings import Settings

    return Settings(home=home, s3_endpoint=None)


def run_local_step(arguments: dict[str, Any], models: Sequence[str], home: Path) -> dict[str, Any]:
    """One pipeline run through ``kfp.local``, against the simulation's embedded registry."""
    from pipelines.local import run_pipeline

    return run_pipeline(arguments, models, settings=local_settings(home))


def step_record(index: int, size: int, seed: int, summary: dict[str, Any],
                production: tuple[str | None, float | None], cores: int) -> dict[str, Any]:
    """What a step keeps of its run: the verdict, production when it was saved, each model.

    ``promoted`` is the deploy stage's outcome: the gate may say promote and a
    run finishing alongside may still have moved production first.
    """
    gate = summary["gate"]
    version, accuracy = production
    return {
        "step": index, "train_size": size, "seed": seed, "run_id": summary["run_id"],
        "train_digits": summary["train_digits"], "decision": gate["decision"],
        "promoted": summary["promoted"], "challenger": gate["challenger"],
        "production_version": version, "production_accuracy": accuracy,
        "wall_seconds": summary["wall_seconds"], "cores": cores,
        "models": {
            kind: {
                "holdout_accuracy": row["holdout_accuracy"],
                "mcc": row["metrics"]["mcc"],
                "train_seconds": row["train_seconds"],
                "inference_ms_per_1000": row["metrics"]["performance"]["latency_ms_per_1000"],
            }
            for kind, row in summary["models"].items()
        },
    }


def read_production() -> tuple[str | None, float | None]:
    """The production version and its holdout accuracy, as the configured registry holds them."""
    from components.registry import Registry
    from components.settings import get_settings

    registry = Registry.from_settings(get_settings())
    pointer = registry.production()
    if pointer is None:
        return None, None
    return pointer.version, registry.metadata(pointer.version)["metrics"]["accuracy"]


def core_sets(jobs: int) -> list[set[int]]:
    """This process's cores dealt into ``jobs`` disjoint sets, one per concurrent step."""
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= jobs <= len(cores):
        raise ValueError(f"--jobs must be between 1 and the {len(cores)} cores available")
    return [set(cores[i::jobs]) for i in range(jobs)]


def default_jobs(seeds: int) -> int:
    """One step per core, but no more at once than a size has seeds."""
    return max(1, min(len(os.sched_getaffinity(0)), seeds))


def _run_pinned(run_step: RunStep, cores: set[int], log: Path, arguments: dict[str, Any],
                models: Sequence[str], home: Path) -> dict[str, Any]:
    """A step in a worker process: on its own cores (its tasks inherit them), output to ``log``."""
    os.sched_setaffinity(0, cores)
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        return run_step(arguments, models, home)


def result_rows(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CSV's rows: one per model and step."""
    rows = []
    for step in steps:
        for kind, figures in step["models"].items():
            rows.append({
                "step": step["step"], "train_size": step["train_size"] or ALL,
                "seed": step["seed"], "train_digits": step["train_digits"], "model": kind,
                **figures,
                "challenger": kind == step["challenger"],
                "promoted": kind == step["challenger"] and step["promoted"],
                "production_version": step["production_version"] or "",
                "production_accuracy": "" if step["production_accuracy"] is None
                else step["production_accuracy"],
                "cores": step["cores"],
                "run_id": step["run_id"],
            })
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


class Simulation:
    """A schedule's steps, run one by one, with its state in ``output`` after each."""

    def __init__(self, schedule: Schedule, output: Path, *, fresh: bool = False) -> None:
        self.schedule, self.output = schedule, Path(output)
        self.state_path = self.output / STATE_FILE
        if fresh:
            for name in (STATE_FILE, RESULTS_CSV, REPORT_HTML, CURVES_PNG):
                (self.output / name).unlink(missing_ok=True)
            shutil.rmtree(self.output / HOME_DIR, ignore_errors=True)
        self.steps: list[dict[str, Any]] = []
        #: Wall time the simulation has run so far, over every attempt (steps overlap).
        self.elapsed_seconds = 0.0
        self.jobs = 1
        self._started = time.monotonic()
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            if state["schedule"] != schedule.to_json():
                raise ScheduleChanged(
                    f"{self.output} holds a simulation of another schedule "
                    f"({_difference(state['schedule'], schedule.to_json())}); run it with "
                    "the same arguments to resume, or add --fresh to start over")
            self.steps = state["steps"]
            self.elapsed_seconds = state["elapsed_seconds"]

    @property
    def remaining(self) -> list[tuple[int, int, int]]:
        """``(step, train_size, seed)`` of the steps not saved yet, in the schedule's order."""
        done = {record["step"] for record in self.steps}
        return [(index, size, seed)
                for index, (size, seed) in enumerate(self.schedule.steps(), start=1)
                if index not in done]

    def run(self, run_step: RunStep = run_local_step,
            say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
            jobs: int = 1) -> None:
        """Run the steps not yet done, ``jobs`` at a time; each is saved as it finishes.

        One embedded S3 store serves every step (each run joins it), so a process
        killed mid-step leaves a store the next attempt joins rather than a second
        one fighting over the same data directory.
        """
        from components.s3local import s3_environment

        cores = core_sets(jobs)
        self.jobs, self._started = jobs, time.monotonic()
        self.output.mkdir(parents=True, exist_ok=True)
        total = len(self.schedule.steps())
        if self.steps:
            say(f"simulate: resuming with {len(self.steps)} of {total} steps done")
        if self.remaining:
            with s3_environment(local_settings(self.output / HOME_DIR)):
                if jobs == 1:
                    self._run_in_turn(run_step, say, total, len(cores[0]))
                else:
                    self._run_side_by_side(run_step, say, total, cores)

    def _run_in_turn(self, run_step: RunStep, say: Callable[[str], None], total: int,
                     cores: int) -> None:
        for index, size, seed in self.remaining:
            summary = run_step(self._arguments(size, seed), self.schedule.models,
                               self.output / HOME_DIR)
            self._record(index, size, seed, summary, cores, say, total)

    def _run_side_by_side(self, run_step: RunStep, say: Callable[[str], None], total: int,
                          cores: list[set[int]]) -> None:
        """Keep ``len(cores)`` steps running, each in a fresh process on its own cores.

        The last step is given every core: it shares one with the steps still
        running beside it until they end, then has the machine to itself.

        A failed step stops new ones from starting; those already running finish
        and are saved before the failure is raised.
        """
        logs = self.output / LOGS_DIR
        logs.mkdir(exist_ok=True)
        waiting, free = list(self.remaining), list(range(len(cores)))
        running: dict[Future, tuple[int, int, int, int, int]] = {}
        failure: BaseException | None = None
        context = multiprocessing.get_context("spawn")  # no inherited TensorFlow or locks
        with ProcessPoolExecutor(len(cores), mp_context=context,
                                 max_tasks_per_child=1) as pool:
            while running or (waiting and failure is None):
                while waiting and free and failure is None:
                    slot = free.pop(0)
                    index, size, seed = waiting.pop(0)
                    log = logs / f"step-{index}.log"
                    # The last step would leave the other cores idle once the steps
                    # beside it end (the largest size comes last), so it gets them all.
                    mine = cores[slot] if waiting else set().union(*cores)
                    future = pool.submit(_run_pinned, run_step, mine, log,
                                         self._arguments(size, seed), self.schedule.models,
                                         self.output / HOME_DIR)
                    running[future] = (index, size, seed, slot, len(mine))
                    say(f"simulate: step {index}/{total} size {size or ALL} seed {seed}: "
                        f"started on core {','.join(map(str, sorted(mine)))} ({log})")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index, size, seed, slot, ncores = running.pop(future)
                    free.append(slot)
                    try:
                        summary = future.result()
                    except Exception as error:  # raised once the steps still running end
                        failure = failure or error
                        say(f"simulate: step {index}/{total} failed: {error} (log: "
                            f"{logs / f'step-{index}.log'})")
                        continue
                    self._record(index, size, seed, summary, ncores, say, total)
        if failure is not None:
            raise failure

    def _arguments(self, size: int, seed: int) -> dict[str, Any]:
        return {**self.schedule.arguments, "train_size": size, "seed": seed}

    def _record(self, index: int, size: int, seed: int, summary: dict[str, Any], cores: int,
                say: Callable[[str], None], total: int) -> None:
        """Save a finished step with production as the registry holds it now."""
        record = step_record(index, size, seed, summary, read_production(), cores)
        self.steps.append(record)
        self._save()
        verdict = "promoted" if record["promoted"] else "not promoted"
        say(f"simulate: step {index}/{total} size {size or ALL} seed {seed}: "
            f"{record['challenger']} {verdict}; production "
            f"{record['production_version'] or 'none'} "
            f"({_percent(record['production_accuracy'])})")

    def _save(self) -> None:
        now = time.monotonic()
        self.elapsed_seconds += now - self._started
        self._started = now
        state = {"schedule": self.schedule.to_json(), "jobs": self.jobs,
                 "elapsed_seconds": round(self.elapsed_seconds, 1), "steps": self.steps}
        write_atomically(self.state_path, json.dumps(state, indent=1))
        write_csv(self.output / RESULTS_CSV, result_rows(self.steps))

    def check(self) -> None:
        check_production(step["production_accuracy"] for step in self.steps)

    def publish(self) -> dict[str, Path]:
        """The report and the learning-curve image, from the results so far."""
        from pipelines.study import read_results, write_curves, write_report

        rows = read_results(self.output / RESULTS_CSV)
        return {"results": self.output / RESULTS_CSV,
                "report": write_report(rows, self.output / REPORT_HTML),
                "curves": write_curves(rows, self.output / CURVES_PNG)}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [f"{key}: {old.get(key)} → {new.get(key)}" for key in new if old.get(key) != new[key]]
    return "; ".join(changed)


def _percent(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


def _sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            sizes.append(0 if part == ALL else positive_int(part))
    return tuple(sizes)


def _models(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def build_parser():
    p = make_parser("digits simulate", __doc__)
    p.add_argument("--sizes", type=_sizes,
                   help="comma-separated training-set sizes; 'all' is every training digit "
                        f"(default {','.join(str(s or ALL) for s in DEFAULT_SIZES)})")
    p.add_argument("--seeds", type=positive_int,
                   help=f"runs per size, each with the next seed (default {DEFAULT_SEEDS})")
    p.add_argument("--models", type=_models, help=f"default {','.join(MODEL_FAMILIES)}")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--jobs", type=positive_int,
                   help="steps run at once, each on its own cores (default: one per core, "
                        "at most --seeds)")
    p.add_argument("--quick", action="store_true",
                   help=f"sizes {','.join(map(str, QUICK_SIZES))}, {QUICK_SEEDS} seeds, "
                        f"{','.join(QUICK_MODELS)}, short training")
    p.add_argument("--arg", action="append", default=[], type=key_value, metavar="NAME=VALUE",
                   help="pipeline argument for every step, e.g. --arg epochs=6 (repeatable)")
    p.add_argument("--output", type=Path, default=Path(".digits/simulation"),
                   help=f"directory for {RESULTS_CSV}, {REPORT_HTML}, {CURVES_PNG}, "
                        "the state and the simulation's registry")
    p.add_argument("--fresh", action="store_true",
                   help="discard what --output holds and start over")
    p.add_argument("--host", help="submit the steps to this KFP API instead of running locally")
    p.add_argument("--json", action="store_true", help="print the outputs' paths as JSON")
    return p


def command_line(schedule: dict[str, Any]) -> str:
    """The ``digits simulate`` flags that reproduce a schedule (as saved in the state)."""
    default = Schedule().to_json()
    flags = []
    if schedule["sizes"] != default["sizes"]:
        flags.append("--sizes " + ",".join(str(s or ALL) for s in schedule["sizes"]))
    if schedule["seeds"] != default["seeds"]:
        flags.append(f"--seeds {schedule['seeds']}")
    if schedule["models"] != default["models"]:
        flags.append("--models " + ",".join(schedule["models"]))
    if schedule["first_seed"] != default["first_seed"]:
        flags.append(f"--seed {schedule['first_seed']}")
    flags += [f"--arg {name}={json.dumps(value)}" for name, value in schedule["arguments"].items()
              if default["arguments"].get(name, object()) != value]
    return " ".join(["digits simulate", *flags])


def schedule_from(args) -> Schedule:
    quick = args.quick
    arguments = {**DEFAULT_ARGUMENTS, **(QUICK_ARGUMENTS if quick else {}),
                 **{name: json_or_text(value) for name, value in args.arg}}
    return Schedule(
        sizes=args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES),
        seeds=args.seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS),
        models=args.models or (QUICK_MODELS if quick else MODEL_FAMILIES),
        first_seed=args.seed, arguments=arguments)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        schedule = schedule_from(args)
        jobs = args.jobs or default_jobs(schedule.seeds)
        core_sets(jobs)
    except ValueError as error:
        p.error(str(error))
    if args.host:
        from pipelines.submit import submit

        runs = [submit(args.host, "digits-simulation",
                       {**schedule.arguments, "train_size": size, "seed": seed})
                for size, seed in schedule.steps()]
        print(json.dumps({"submitted": runs}))
        return 0
    try:
        simulation = Simulation(schedule, args.output, fresh=args.fresh)
    except ScheduleChanged as error:
        print(f"digits simulate: {error}", file=sys.stderr)
        return 2
    try:
        simulation.run(jobs=jobs)
    except KeyboardInterrupt:
        print(f"\ndigits simulate: interrupted with {len(simulation.steps)} of "
              f"{len(schedule.steps())} steps saved; run the same command again to continue",
              file=sys.stderr)
        return 130
    outputs = simulation.publish()
    try:
        simulation.check()
    except ProductionRegressed as error:
        print(f"digits simulate: PRODUCTION GOT WORSE — {error}", file=sys.stderr)
        return REGRESSION_EXIT
    from pipelines.study import read_results, summary_table

    if args.json:
        print(json.dumps({name: str(path) for name, path in outputs.items()}))
    else:
        print(summary_table(read_results(outputs["results"])))
        for name, path in outputs.items():
            print(f"{name}: {path}")
    return 0
