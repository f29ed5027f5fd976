"""``digits monitor``: the monitor's command, and how ``--trigger`` starts a run.

The judging is :mod:`components.monitor` (a leaf library, as every stage);
starting a pipeline run — on the KFP API at ``--host``, else the local runner —
belongs up here with the runners themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from components.argparsing import fraction, make_parser, positive_int
from components.monitor import (
    ALPHA,
    COOLDOWN_HOURS,
    MIN_ACCURACY,
    MIN_FEEDBACK,
    PERMUTATIONS,
    POOLED,
    SINCE_HOURS,
    WINDOW,
    MonitorError,
    format_verdict,
    monitor,
    purge_payloads,
    trigger,
)
from components.monitor import __doc__ as monitor_doc
from components.registry import open_registry
from pipelines.submit import add_kfp_options


def starter(args: argparse.Namespace) -> tuple[str, Callable[[], dict[str, Any]]]:
    """How ``--trigger`` starts a run: on the KFP API at ``--host``, else locally."""
    from components.argparsing import json_or_text

    arguments = {name: json_or_text(value) for name, value in args.arg}
    if args.host:
        def on_cluster() -> dict[str, Any]:
            from pipelines.submit import submit

            run_id = submit(args.host, args.experiment, arguments, package=args.package,
                            namespace=args.namespace)
            return {"kfp_run_id": run_id, "host": args.host, "experiment": args.experiment}

        return "kfp", on_cluster

    def locally() -> dict[str, Any]:
        from pipelines.local import run_pipeline
        from pipelines.training import MODEL_FAMILIES

        summary = run_pipeline(arguments, args.models or MODEL_FAMILIES)
        gate = summary.get("gate") or {}
        return {"run_id": summary.get("run_id"), "version": summary.get("version"),
                "decision": gate.get("decision"), "production": summary.get("production")}

    return "local", locally


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits monitor", monitor_doc)
    p.add_argument("--version", help="the version to watch (default: production)")
    p.add_argument("--since", type=float, default=SINCE_HOURS, metavar="HOURS",
                   help="look at payloads and feedback this many hours back")
    p.add_argument("--window", type=positive_int, default=WINDOW,
                   help="images per window of the timeline")
    p.add_argument("--pooled", type=positive_int, default=POOLED,
                   help="most recent images the verdict tests together")
    p.add_argument("--alpha", type=fraction, default=ALPHA,
                   help="false-alarm rate of a verdict under no drift")
    p.add_argument("--permutations", type=positive_int, default=PERMUTATIONS,
                   help="permutations of the embedding test")
    p.add_argument("--min-feedback", type=int, default=MIN_FEEDBACK,
                   help="corrected digits needed before retraining is advised")
    p.add_argument("--min-accuracy", type=fraction, default=MIN_ACCURACY,
                   help="live accuracy on corrected digits below which retraining is advised")
    p.add_argument("--report", type=Path, default=Path("monitor-report.html"),
                   help="where to write the HTML report")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not write the verdict to the registry (monitor/verdict.json)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--purge-payloads-older-than", type=float, metavar="DAYS",
                   help="also delete payload windows sampled more than DAYS ago (retention: "
                        "they are users' inputs)")
    p.add_argument("--trigger", action="store_true",
                   help="when the verdict says retrain, start a pipeline run: on the KFP API "
                        "at --host, else locally (kfp.local); at most one per --cooldown")
    p.add_argument("--cooldown", type=float, default=COOLDOWN_HOURS, metavar="HOURS",
                   help="hours after a triggered run before --trigger starts another")
    p.add_argument("--models", type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
                   help="local runs: the model families to train (default: all)")
    add_kfp_options(p, host_required=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 whatever the verdict (read it from the output); 2 when nothing can be judged."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    with open_registry() as registry:
        try:
            verdict = monitor(registry, version=args.version, since_hours=args.since,
                              report=args.report, record=args.record, alpha=args.alpha,
                              window_size=args.window, pooled=args.pooled,
                              permutations=args.permutations, min_feedback=args.min_feedback,
                              min_accuracy=args.min_accuracy)
        except MonitorError as error:
            print(f"digits monitor: {error}", file=sys.stderr)
            return 2
        if args.purge_payloads_older_than is not None:
            verdict["payloads_purged"] = purge_payloads(
                registry, timedelta(days=args.purge_payloads_older_than))
        if args.trigger:
            runner, start = starter(args)
            verdict["trigger"] = trigger(registry, verdict, start, runner=runner,
                                         cooldown_hours=args.cooldown)
    print(json.dumps(verdict, default=str) if args.json else format_verdict(verdict))
    return 0
