"""Scheduled retraining on Kubeflow Pipelines: a recurring run of the compiled pipeline.

``digits schedule --host URL --cron EXPR`` creates the recurring run, or
replaces the one of the same name, in an experiment. KFP's scheduler reads a
**six-field** cron with seconds first (``0 0 3 * * 1`` is Mondays 03:00); the
familiar five-field form would be misread, so it is converted here, and the
conversion is said out loud. The in-cluster CronJob in ``manifests/`` remains
for clusters that do not use KFP's recurring runs.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from components.argparsing import json_or_text, make_parser
from pipelines.submit import EXPERIMENT, add_kfp_options
from pipelines.training import COMPILED

#: Field name, lowest and highest value, in KFP's order (seconds first).
FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31),
          ("month", 1, 12), ("day of week", 0, 6))
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
NAMES = {"month": {name: i for i, name in enumerate(_MONTHS, start=1)},
         "day of week": {name: i for i, name in enumerate(_DAYS)}}
#: The recurring run's name: scheduling again under it replaces it.
DEFAULT_NAME = "digits-retraining"


class CronError(ValueError):
    """A cron expression KFP would refuse or misread; the message says which field and why."""


def _value(text: str, name: str, low: int, high: int) -> int:
    number = NAMES.get(name, {}).get(text.upper()) if not text.isdigit() else int(text)
    if number is None or not low <= number <= high:
        raise CronError(f"{name} {text!r} is outside {low}..{high}")
    return number


def _check_field(field: str, name: str, low: int, high: int) -> None:
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise CronError(f"{name} {part!r}: the step after '/' must be a positive number")
        if base == "*" or (base == "?" and name in ("day of month", "day of week")):
            continue
        start, dash, end = base.partition("-")
        first = _value(start, name, low, high)
        if dash and _value(end, name, low, high) < first:
            raise CronError(f"{name} {base!r}: a range must run low-high")


def kfp_cron(expression: str) -> tuple[str, str | None]:
    """KFP's six-field form of ``expression``, and a note when it had to be converted.

    Accepts the usual five fields (minute hour day-of-month month day-of-week,
    run at second 0) or KFP's six (second first); names such as ``MON`` and
    ``JAN``, lists, ranges and steps. Anything else is a :class:`CronError`.
    """
    fields = expression.split()
    note = None
    if len(fields) == 5:
        fields = ["0", *fields]
        note = (f"converted the 5-field cron {expression!r} to KFP's 6-field form "
                f"{' '.join(fields)!r} (seconds first)")
    elif len(fields) != 6:
        raise CronError(f"{expression!r}: a cron expression has 5 fields (minute hour "
                        f"day-of-month month day-of-week) or KFP's 6 (second first), "
                        f"got {len(fields)}")
    for field, (name, low, high) in zip(fields, FIELDS, strict=True):
        try:
            _check_field(field, name, low, high)
        except CronError as error:
            raise CronError(f"{expression!r}: {error}") from None
    return " ".join(fields), note


def schedule(host: str, cron: str, *, experiment: str = EXPERIMENT, name: str = DEFAULT_NAME,
             arguments: dict[str, Any] | None = None, package: Path = COMPILED,
             namespace: str | None = None) -> dict[str, Any]:
    """Create the recurring run ``name`` (replacing any of that name); say what was done.

    One run at a time (``max_concurrency=1``), no catch-up after downtime,
    caching off (the champion, hence the gate's answer, changes between runs).
    """
    import kfp

    six_fields, note = kfp_cron(cron)
    with contextlib.redirect_stdout(sys.stderr):  # kfp.Client prints dashboard links
        client = kfp.Client(host=host, namespace=namespace)
        found = client.create_experiment(name=experiment, namespace=namespace)
        listed = client.list_recurring_runs(experiment_id=found.experiment_id, page_size=100)
        replaced = [run.recurring_run_id for run in (listed.recurring_runs or [])
                    if run.display_name == name]
        for recurring_run_id in replaced:
            client.delete_recurring_run(recurring_run_id)
        created = client.create_recurring_run(
            experiment_id=found.experiment_id, job_name=name, cron_expression=six_fields,
            max_concurrency=1, no_catchup=True, params=dict(arguments or {}),
            pipeline_package_path=str(package), enable_caching=False,
            description=f"digits retraining, cron {six_fields!r}",
        )
    return {"recurring_run_id": created.recurring_run_id, "name": name,
            "experiment": experiment, "cron": six_fields, "converted_from": cron if note else None,
            "replaced": replaced}


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits schedule", __doc__)
    add_kfp_options(p)
    p.add_argument("--cron", required=True,
                   help="when to run: 5 fields ('0 3 * * 1', converted) or KFP's 6 "
                        "('0 0 3 * * 1', seconds first)")
    p.add_argument("--name", default=DEFAULT_NAME, help="the recurring run's name")
    args = p.parse_args(argv)
    arguments = {name: json_or_text(value) for name, value in args.arg}
    try:
        six_fields, note = kfp_cron(args.cron)
    except CronError as error:
        print(f"digits schedule: {error}", file=sys.stderr)
        return 2
    if note:
        print(f"digits schedule: {note}", file=sys.stderr)
    result = schedule(args.host, six_fields, experiment=args.experiment, name=args.name,
                      arguments=arguments, package=args.package, namespace=args.namespace)
    print(json.dumps({**result, "converted_from": args.cron if note else None}))
    return 0
