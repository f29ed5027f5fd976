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
so every item records where it came from (``source``: the page, or an API
client) and who sent it (``client``: a keyed hash of the client's address,
never the address itself, see :func:`client_id`); its share of the training
set is capped (:data:`DEFAULT_CAP`), no one client may fill that share
(:data:`CLIENT_SHARE`, :data:`CLIENT_FLOOR`), and ``digits feedback list|purge``
lets an operator inspect and delete items by age, source or model version. A
purged item is deleted from the store, so no later run can read it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from pydantic import SecretStr

from components.argparsing import make_parser
from components.stem import NUM_CLASSES, NUM_PIXELS, as_images

#: Where feedback lives in the registry bucket.
PREFIX = "feedback"
#: The largest share of the training set feedback may take, by default.
DEFAULT_CAP = 0.1
#: Whether a training run reads the users' feedback: on, wherever a run starts from.
USE_FEEDBACK = True
#: Where an item came from: the drawing page, or an API client (authenticated when the
#: server has a DIGITS_FEEDBACK_TOKEN).
SOURCES = ("page", "api")
#: The largest share of the feedback a run uses that one client (one hashed address) may
#: supply: a single client posting hundreds of labels gets no more weight than this.
CLIENT_SHARE = 0.1
#: What every client may supply however little feedback there is, so a handful of
#: honest users are never cut to nothing by :data:`CLIENT_SHARE` alone.
CLIENT_FLOOR = 5
#: The context the fallback address key is derived under from the S3 secret key;
#: changing it changes every client id at once.
ADDRESS_KEY_CONTEXT = b"digits/feedback/client-address/v1"


def image_sha256(image: np.ndarray) -> str:
    """The content hash feedback is deduplicated by: the canonical image's bytes."""
    return hashlib.sha256(as_images(image)[0].tobytes()).hexdigest()


def address_key(explicit: SecretStr | None, s3_secret_key: SecretStr | None) -> bytes | None:
    """The key client addresses are hashed with: ``explicit`` if set, else one derived
    from the S3 secret key every worker and replica already holds (so ids agree across
    them), else ``None`` (nothing to derive from: such a server cannot store anyway)."""
    if explicit is not None and explicit.get_secret_value():
        return explicit.get_secret_value().encode()
    if s3_secret_key is not None and s3_secret_key.get_secret_value():
        return hmac.new(s3_secret_key.get_secret_value().encode(), ADDRESS_KEY_CONTEXT,
                        hashlib.sha256).digest()
    return None


def client_id(address: str, key: bytes) -> str:
    """A client's address as stored: HMAC-SHA256 under a secret key, hex.

    Stable (one client's items can be counted together) but not reversible: a
    plain hash of an IPv4 address is undone by hashing all 2³² of them, a keyed
    one cannot be without the key.
    """
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


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
    #: The sender's address as :func:`client_id` (``None``: written by an operator straight
    #: to the store, not through the server, and not capped per client).
    client: str | None
    received_at: str
    sha256: str

    @classmethod
    def create(cls, image: np.ndarray, label: int, *, predicted: int | None = None,
               model_version: str | None = None, source: str = "api",
               client: str | None = None, now: datetime | None = None) -> FeedbackItem:
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
                   model_version=model_version, source=source, client=client,
                   received_at=moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                   sha256=image_sha256(image))

    @classmethod
    def from_stored(cls, data: dict[str, Any], legacy_key: bytes) -> FeedbackItem:
        """An item as read back from the store.

        Items written before addresses were hashed carry a raw ``address``: it
        is hashed here with ``legacy_key`` and dropped, so it never leaves the
        loader (a listing shows the hash, and the per-client cap still counts
        that client's items together).
        """
        data = dict(data)
        address = data.pop("address", None)
        if "client" not in data:
            data["client"] = None if address is None else client_id(address, legacy_key)
        return cls(**{name: value for name, value in data.items()
                      if name in cls.__dataclass_fields__})

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
    """Feedback items as objects in the registry's bucket (through its ``minio`` client).

    ``legacy_key`` hashes the raw addresses of items stored before addresses
    were hashed (:meth:`FeedbackItem.from_stored`); by default the key derived
    from ``DIGITS_S3_SECRET_KEY``, as the server's is when
    ``DIGITS_FEEDBACK_ADDRESS_KEY`` is unset, else a random one (consistent
    within this store object, which is all the per-client cap needs).
    """

    def __init__(self, registry: Any, legacy_key: bytes | None = None) -> None:
        self.registry = registry
        if legacy_key is None:
            from components.settings import get_settings

            legacy_key = address_key(None, get_settings().s3_secret_key) or os.urandom(32)
        self.legacy_key = legacy_key

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
                found.append((obj.object_name,
                              FeedbackItem.from_stored(json.loads(raw), self.legacy_key)))
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
                        weight: int = 1, client_share: float = CLIENT_SHARE,
                        client_floor: int = CLIENT_FLOOR) -> FeedbackSet:
    """Choose the feedback to train on and describe the choice for the dataset manifest.

    One item per image (the newest label wins: a user's later correction
    replaces an earlier one); images that appear in validation or the holdout
    (``excluded``: their content hashes) are dropped, so feedback cannot leak
    into what judges the model. No one client then supplies more than
    ``client_share`` of the feedback used (or ``client_floor`` items, if that is
    more; its newest ones): one address posting hundreds of labels cannot fill
    the share while other people's corrections wait. Items with no client
    (written to the store by an operator, not through the server) are not capped
    per client. Finally at most ``cap`` of the training set, counting each item
    ``weight`` times, newest first. The manifest records the counts, what each
    cap dropped, and a digest of exactly the items used.
    """
    newest: dict[str, FeedbackItem] = {}
    for item in sorted(items, key=lambda item: (item.received_at, item.label)):
        newest[item.sha256] = item
    overlap = [item for digest, item in newest.items() if digest in excluded]
    usable = [item for digest, item in newest.items() if digest not in excluded]
    limit = int(cap * train_size / weight)

    def recency(item: FeedbackItem) -> tuple[str, str]:
        # Newest first; ties (one request's items share a timestamp) broken by content.
        return item.received_at, item.sha256

    unattributed = [item for item in usable if item.client is None]
    by_client: dict[str, list[FeedbackItem]] = {}
    for item in sorted(usable, key=recency, reverse=True):
        if item.client is not None:
            by_client.setdefault(item.client, []).append(item)
    quota = client_quota([len(sent) for sent in by_client.values()],
                         uncapped=len(unattributed), limit=limit, share=client_share,
                         floor=client_floor)
    admitted = unattributed + [item for sent in by_client.values() for item in sent[:quota]]
    chosen = sorted(admitted, key=recency, reverse=True)[:limit]
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
        "client_share": client_share,
        "client_floor": client_floor,
        "client_quota": quota,
        "clients": len(by_client),
        "sources": {source: sum(item.source == source for item in chosen)
                    for source in SOURCES},
        "dropped_overlap": len(overlap),
        "dropped_client_cap": len(usable) - len(admitted),
        "dropped_cap": len(admitted) - len(chosen),
        "sha256": digest,
    })


def client_quota(sent: list[int], *, uncapped: int, limit: int, share: float,
                 floor: int) -> int:
    """The most items one client may supply: ``max(floor, share × used)``.

    ``used`` itself depends on the quota (capping clients leaves fewer items),
    so this is the smallest quota that satisfies its own rule, found by raising
    it from ``floor`` until it stops growing (it only grows, and never past
    ``share × limit``). ``sent``: how many usable items each client sent;
    ``uncapped``: usable items not counted against any client.
    """
    quota = floor
    while True:
        used = min(limit, uncapped + sum(min(count, quota) for count in sent))
        grown = max(floor, int(share * used))
        if grown <= quota:
            return quota
        quota = grown


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
             "client": item.client, "received_at": item.received_at, "sha256": item.sha256}
            for key, item in selected]
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no feedback stored")
    else:
        for row in rows:
            said = "-" if row["predicted"] is None else row["predicted"]
            print(f"{row['received_at'][:19]}  label {row['label']}  model said {said}  "
                  f"{row['source']:<4}  {row['model_version'] or '-'}  "
                  f"client {(row['client'] or '-')[:12]}")
    return 0

