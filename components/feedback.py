"""Feedback: digits the people using the model labelled, kept for the next training run.

The drawing page (or any client) posts the canonical 28×28 image the model saw
with the label the user says is right; the server stores it here, one
append-only object per item under ``feedback/`` in the registry bucket, so
concurrent posts from many workers never overwrite one another. The ingest
stage reads it back (:func:`load_feedback`) and merges it into **training
only**, capped, deduplicated by content, never overlapping the validation split
or the frozen holdout: the gate still judges on the holdout alone, so feedback
can never make production worse by the system's own measure.

Feedback is untrusted input — anyone who can reach the page can send labels —
so every item records where it came from, its share of the training set is
capped (:data:`DEFAULT_CAP`), and ``digits feedback list|purge`` lets an
operator inspect and delete items by age, source or model version. A purged
item is deleted from the store, so no later run can read it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from components.argparsing import make_parser
from components.stem import NUM_CLASSES, NUM_PIXELS, as_images

#: Where feedback lives in the registry bucket.
PREFIX = "feedback"
#: The largest share of the training set feedback may take, by default.
DEFAULT_CAP = 0.1
#: Where an item came from, when a client says nothing else.
SOURCES = ("page", "api")


def image_sha256(image: np.ndarray) -> str:
    """The content hash feedback is deduplicated by: the canonical image's bytes."""
    return hashlib.sha256(as_images(image)[0].tobytes()).hexdigest()


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


@dataclass(frozen=True)
class FeedbackItem:
    """One labelled digit from a user, with what the model said and where it came from."""

    pixels: list[int]
    label: int
    predicted: int | None
    model_version: str | None
    source: str
    address: str | None
    received_at: str
    sha256: str

    @classmethod
    def create(cls, image: np.ndarray, label: int, *, predicted: int | None = None,
               model_version: str | None = None, source: str = "api",
               address: str | None = None, now: datetime | None = None) -> FeedbackItem:
        """Check and describe one item; :class:`ValueError` names what is wrong."""
        image = as_images(image)
        if len(image) != 1:
            raise ValueError(f"feedback is one image at a time, got {len(image)}")
        for name, value in (("label", label), ("predicted", predicted)):
            if value is None and name == "predicted":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    0 <= value < NUM_CLASSES):
                raise ValueError(f"'{name}' must be a whole number 0..9, got {value!r}")
        if model_version is not None and (not isinstance(model_version, str)
                                          or len(model_version) > 200):
            raise ValueError("'model_version' must be a string of at most 200 characters")
        if source not in SOURCES:
            raise ValueError(f"'source' must be one of {SOURCES}, got {source!r}")
        moment = now or datetime.now(timezone.utc)
        return cls(pixels=image.reshape(NUM_PIXELS).tolist(), label=label, predicted=predicted,
                   model_version=model_version, source=source, address=address,
                   received_at=moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                   sha256=image_sha256(image))

    @property
    def image(self) -> np.ndarray:
        return np.asarray(self.pixels, dtype=np.uint8).reshape(28, 28)

    @property
    def disagreed(self) -> bool | None:
        """Whether the user corrected the model (``None`` when the prediction is unknown)."""
        return None if self.predicted is None else self.predicted != self.label

    def key(self) -> str:
        """Sortable by arrival, unique per post: ``feedback/<stamp>-<hash>-<random>.json``."""
        moment = datetime.fromisoformat(self.received_at.replace("Z", "+00:00"))
        return f"{PREFIX}/{_stamp(moment)}-{self.sha256[:16]}-{os.urandom(4).hex()}.json"


class FeedbackStore:
    """Feedback items as objects in the registry's bucket (through its ``minio`` client)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def add(self, item: FeedbackItem) -> str:
        """Store one item under a key of its own (append-only); return the key.

        One ``PUT`` under ``feedback/`` and nothing else, which is all the serving
        identity may do here (it may not even check that the bucket exists).
        """
        key = item.key()
        self.registry.append(key, json.dumps(asdict(item)).encode(), "application/json")
        return key

    def items(self) -> list[tuple[str, FeedbackItem]]:
        """Every stored item with its key, oldest first."""
        client, bucket = self.registry.client, self.registry.bucket
        if not client.bucket_exists(bucket):
            return []
        found = []
        for obj in client.list_objects(bucket, prefix=f"{PREFIX}/"):
            if obj.is_dir or not obj.object_name.endswith(".json"):
                continue  # some stores list a folder entry once items are deleted
            raw = self.registry.read(obj.object_name)
            if raw:  # None: deleted between listing and reading
                found.append((obj.object_name, FeedbackItem(**json.loads(raw))))
        return sorted(found, key=lambda pair: pair[0])

    def select(self, *, older_than: timedelta | None = None, source: str | None = None,
               model_version: str | None = None) -> list[tuple[str, FeedbackItem]]:
        """The items matching every filter given."""
        cutoff = datetime.now(timezone.utc) - older_than if older_than is not None else None

        def matches(item: FeedbackItem) -> bool:
            if source is not None and item.source != source:
                return False
            if model_version is not None and item.model_version != model_version:
                return False
            received = datetime.fromisoformat(item.received_at.replace("Z", "+00:00"))
            return cutoff is None or received < cutoff

        return [(key, item) for key, item in self.items() if matches(item)]

    def purge(self, keys: list[str]) -> int:
        """Delete these items for good; return how many were deleted."""
        for key in keys:
            self.registry.client.remove_object(self.registry.bucket, key)
        return len(keys)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class FeedbackSet:
    """The feedback a run trains with: unique, outside validation and holdout, capped."""

    images: np.ndarray
    labels: np.ndarray
    manifest: dict[str, Any]


def select_for_training(items: list[FeedbackItem], *, train_size: int,
                        excluded: set[str], cap: float = DEFAULT_CAP,
                        weight: int = 1) -> FeedbackSet:
    """Choose the feedback to train on and describe the choice for the dataset manifest.

    One item per image (the newest label wins: a user's later correction
    replaces an earlier one); images that appear in validation or the holdout
    (``excluded``: their content hashes) are dropped, so feedback cannot leak
    into what judges the model; then at most ``cap`` of the training set,
    counting each item ``weight`` times, newest first. The manifest records the
    counts and a digest of exactly the items used.
    """
    newest: dict[str, FeedbackItem] = {}
    for item in sorted(items, key=lambda item: (item.received_at, item.label)):
        newest[item.sha256] = item
    overlap = [item for digest, item in newest.items() if digest in excluded]
    usable = [item for digest, item in newest.items() if digest not in excluded]
    limit = int(cap * train_size / weight)
    # Newest first; ties (one request's items share a timestamp) broken by content.
    chosen = sorted(usable, key=lambda item: (item.received_at, item.sha256),
                    reverse=True)[:limit]
    chosen.sort(key=lambda item: item.sha256)  # a run's order does not depend on arrival
    images = (np.stack([item.image for item in chosen]) if chosen
              else np.zeros((0, 28, 28), dtype=np.uint8))
    labels = np.array([item.label for item in chosen], dtype=np.uint8)
    digest = hashlib.sha256("\n".join(
        f"{item.sha256}:{item.label}" for item in chosen).encode()).hexdigest()
    return FeedbackSet(images, labels, {
        "received": len(items),
        "unique": len(newest),
        "used": len(chosen),
        "weight": weight,
        "cap": cap,
        "dropped_overlap": len(overlap),
        "dropped_cap": len(usable) - len(chosen),
        "sha256": digest,
    })


def load_feedback(registry: Any) -> list[FeedbackItem]:
    """Every stored item (the ingest stage's read)."""
    return [item for _, item in FeedbackStore(registry).items()]


# --------------------------------------------------------------------------- CLI


def _age(text: str) -> timedelta:
    """``7d``, ``12h`` or ``30m`` → a duration."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: an age such as 7d, 12h or 30m") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: an age cannot be negative")
    return timedelta(**{unit: value})


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits feedback", __doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    for name, text in (("list", "stored feedback, oldest first"),
                       ("purge", "delete feedback for good (at least one filter, or --all)")):
        v = verbs.add_parser(name, help=text)
        v.add_argument("--older-than", type=_age, help="only items older than this (7d, 12h)")
        v.add_argument("--source", choices=SOURCES, help="only items from this source")
        v.add_argument("--model-version", help="only items about this model version")
        v.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verbs.choices["purge"].add_argument("--all", action="store_true",
                                        help="delete every item")
    return p


def main(argv: list[str] | None = None) -> int:
    from components.registry import open_registry

    args = parser().parse_args(argv)
    filters = {"older_than": args.older_than, "source": args.source,
               "model_version": args.model_version}
    if args.verb == "purge" and not args.all and not any(v is not None
                                                          for v in filters.values()):
        print("digits feedback purge: name what to delete (--older-than, --source, "
              "--model-version) or pass --all", file=sys.stderr)
        return 2
    with open_registry() as registry:
        store = FeedbackStore(registry)
        selected = store.select(**filters)
        if args.verb == "purge":
            deleted = store.purge([key for key, _ in selected])
            print(json.dumps({"deleted": deleted}) if args.json else f"deleted {deleted} items")
            return 0
    rows = [{"key": key, "label": item.label, "predicted": item.predicted,
             "model_version": item.model_version, "source": item.source,
             "address": item.address, "received_at": item.received_at, "sha256": item.sha256}
            for key, item in selected]
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no feedback stored")
    else:
        for row in rows:
            said = "-" if row["predicted"] is None else row["predicted"]
            print(f"{row['received_at'][:19]}  label {row['label']}  model said {said}  "
                  f"{row['source']:<4}  {row['model_version'] or '-'}  {row['address'] or '-'}")
    return 0

