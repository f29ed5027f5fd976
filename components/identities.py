"""Storage identities: what each part of the system may do in the registry bucket.

The registry bucket is shared by the pipeline, which trains, judges and moves
the production pointer, and by the public serving pods, which only need the
production model and somewhere to put what users send. If both held the same
credentials (worse: the store's root account), whoever took over a serving pod
could replace production. So each has an identity of its own, described here as
IAM policy documents, the form MinIO, AWS and SeaweedFS all accept:

``pipeline``
    Everything on the registry bucket, nothing outside it: publish, promote,
    roll back, read and purge feedback. The retraining CronJob, the pipeline's
    tasks and the feedback purge run as it.
``serving``
    The serving pods and the Kaggle job (same image, same identity): read the
    production pointer, ``versions/*`` and the monitor's verdict
    (``monitor/verdict.json``), write ``feedback/*``, ``submissions/*`` and
    ``payloads/*`` (the sampled requests), list and read ``submissions/``
    (``digits kaggle list``).
    No delete anywhere, no write to the pointer or to ``versions/``, no read of
    ``feedback/``, ``payloads/`` or ``failed/``: holding these credentials, one can
    read the production model and add feedback, submissions or payload samples, never
    change production.

The store's root account only creates the bucket and the two users; nothing
runs as it.

These documents are the one source of truth: :mod:`components.s3local` loads
them into the embedded store, and ``manifests/overlays/standalone/policies/``
holds them, written by ``python -m components.identities``, for the MinIO
setup Job (the manifest tests check the copies match).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.feedback import PREFIX as FEEDBACK
from components.registry import POINTER, SUBMISSIONS, VERSIONS
from components.watch import PAYLOADS, VERDICT_KEY

PIPELINE, SERVING = "pipeline", "serving"
IDENTITIES = (PIPELINE, SERVING)
#: Where the committed copies for the default bucket live (the standalone overlay's MinIO).
POLICY_DIR = Path("manifests/overlays/standalone/policies")


def policy_name(identity: str) -> str:
    """The policy's name in the store (``digits-serving``); also its file's stem."""
    if identity not in IDENTITIES:
        raise ValueError(f"unknown identity {identity!r}; one of {IDENTITIES}")
    return f"digits-{identity}"


def _objects(buckets: list[str], *keys: str) -> list[str]:
    return [f"arn:aws:s3:::{bucket}/{key}" for key in keys for bucket in buckets]


def policy(identity: str, buckets: Iterable[str]) -> dict[str, Any]:
    """``identity``'s IAM policy document on the registry ``buckets`` (usually one)."""
    policy_name(identity)
    buckets = sorted(set(buckets))
    if not buckets:
        raise ValueError("a policy needs at least one bucket")
    if identity == PIPELINE:
        statements = [{
            "Sid": "RegistryBucketOnly",
            "Effect": "Allow",
            "Action": ["s3:*"],
            "Resource": [f"arn:aws:s3:::{bucket}" for bucket in buckets]
                        + _objects(buckets, "*"),
        }]
    else:
        statements = [
            {
                "Sid": "ReadProductionModel",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": _objects(buckets, POINTER, f"{VERSIONS}/*"),
            },
            {
                # The latest drift verdict, which the servers export for the alerts.
                "Sid": "ReadMonitorVerdict",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": _objects(buckets, VERDICT_KEY),
            },
            {
                "Sid": "WriteFeedbackSubmissionsAndPayloads",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": _objects(buckets, f"{FEEDBACK}/*", f"{SUBMISSIONS}/*",
                                     f"{PAYLOADS}/*"),
            },
            {
                # `digits kaggle list`: the archive is the Kaggle job's own output.
                "Sid": "ReadSubmissions",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": _objects(buckets, f"{SUBMISSIONS}/*"),
            },
            {
                "Sid": "ListSubmissions",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}" for bucket in buckets],
                "Condition": {"StringLike": {"s3:prefix": [f"{SUBMISSIONS}/*"]}},
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def policy_json(identity: str, buckets: Iterable[str]) -> str:
    """:func:`policy` as the exact text of a committed policy file."""
    return json.dumps(policy(identity, buckets), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write ``digits-pipeline.json`` and ``digits-serving.json`` for one bucket."""
    from components.settings import StoreSettings

    parser = argparse.ArgumentParser(
        prog="python -m components.identities",
        description="Write the storage identities' IAM policies (for MinIO's `mc admin "
                    "policy create`) for a registry bucket.")
    parser.add_argument("--bucket", default=StoreSettings.model_fields["bucket"].default,
                        help="the registry bucket (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=POLICY_DIR,
                        help="directory to write them to (default: %(default)s)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for identity in IDENTITIES:
        path = args.output / f"{policy_name(identity)}.json"
        path.write_text(policy_json(identity, [args.bucket]))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
