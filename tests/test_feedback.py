"""``digits feedback list|purge`` against the real S3 test server, and the training merge's
per-client cap."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from components.feedback import (
    CLIENT_FLOOR,
    FeedbackItem,
    FeedbackStore,
    address_key,
    client_id,
    load_feedback,
    main,
    select_for_training,
)
from components.registry import Registry
from components.settings import get_settings


@pytest.fixture
def store(s3_env, tiny_dataset) -> FeedbackStore:
    """Five items: two old ones from the page, three new from the API about two versions."""
    store = FeedbackStore(Registry.from_settings(get_settings()))
    old = datetime.now(UTC) - timedelta(days=40)
    x, y = tiny_dataset.x_train, tiny_dataset.y_train
    for i in range(2):
        store.add(FeedbackItem.create(x[i], int(y[i]), source="page", model_version="v1",
                                      now=old))
    for i in range(2, 5):
        store.add(FeedbackItem.create(x[i], int(y[i]), predicted=0,
                                      model_version="v1" if i == 2 else "v2"))
    return store


def test_list_shows_every_item_oldest_first(store, capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and [row["source"] for row in rows] == ["page"] * 2 + ["api"] * 3
    assert rows == sorted(rows, key=lambda row: row["key"])
    assert main(["list", "--model-version", "v2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and all("v2" in line and "model said 0" in line for line in table)


def test_purge_needs_a_filter_and_deletes_for_good(store, capsys):
    assert main(["purge"]) == 2
    assert "--all" in capsys.readouterr().err
    assert len(load_feedback(store.registry)) == 5

    assert main(["purge", "--older-than", "30d", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 2}
    assert main(["purge", "--source", "api", "--model-version", "v1"]) == 0
    assert capsys.readouterr().out.strip() == "deleted 1 items"
    left = load_feedback(store.registry)
    assert [item.model_version for item in left] == ["v2", "v2"]
    assert main(["purge", "--all"]) == 0
    assert load_feedback(store.registry) == []


@pytest.mark.parametrize("age", ["7", "7w", "-1d", "d"])
def test_a_bad_age_is_refused_by_the_parser(age, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["list", f"--older-than={age}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "an age such as 7d" in err or "cannot be negative" in err


# --------------------------------------------------------------------------- addresses


def test_items_stored_with_a_raw_address_still_load_and_show_only_its_hash(s3_env,
                                                                         tiny_dataset, capsys):
    """Items written before addresses were hashed: readable, and the address never shown."""
    store = FeedbackStore(Registry.from_settings(get_settings()))
    legacy = asdict(FeedbackItem.create(tiny_dataset.x_train[0], int(tiny_dataset.y_train[0]),
                                        source="page"))
    legacy.pop("client")
    legacy["address"] = "198.51.100.23"
    store.registry.ensure_bucket()
    store.registry._put("feedback/20240101T000000000000Z-legacy.json",
                        json.dumps(legacy).encode(), "application/json")
    store.add(FeedbackItem.create(tiny_dataset.x_train[1], 1, client="c" * 64))

    old, new = load_feedback(store.registry)
    assert not hasattr(old, "address") and old.label == legacy["label"]
    key = address_key(None, get_settings().s3_secret_key)
    assert key is not None and old.client == client_id("198.51.100.23", key)
    assert new.client == "c" * 64

    assert main(["list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert "198.51.100" not in listed
    assert [row["client"] for row in json.loads(listed)] == [old.client, new.client]
    assert main(["list"]) == 0
    table = capsys.readouterr().out
    assert "198.51.100" not in table and f"client {old.client[:12]}" in table


def test_client_ids_are_keyed():
    """The same address under two keys: unrelated ids, neither a plain hash of it."""
    import hashlib

    first, second = client_id("192.0.2.1", b"one"), client_id("192.0.2.1", b"two")
    assert first != second and len(first) == 64
    assert hashlib.sha256(b"192.0.2.1").hexdigest() not in (first, second)
    assert client_id("192.0.2.1", b"one") == first  # stable: one client's items count together


# --------------------------------------------------------------------------- per-client cap


def _items(images, *, client: str | None, minutes_ago: float, source: str = "api"):
    now = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return [FeedbackItem.create(image, index % 10, client=client, source=source, now=now)
            for index, image in enumerate(images)]


def test_one_client_cannot_fill_the_feedback_share(tiny_dataset):
    """100 items from one address, newer than everyone else's: most of them are dropped,
    and every other client's item is kept."""
    digits = tiny_dataset.x_train
    flood = _items(digits[:100], client="flooder", minutes_ago=0)
    others = [item for index in range(40)
              for item in _items(digits[100 + index:101 + index], client=f"user-{index}",
                                 minutes_ago=10, source="page")]
    chosen = select_for_training(flood + others, train_size=1000, excluded=set(), cap=0.1)

    manifest = chosen.manifest
    # Without the per-client cap the 100 newest (all the flood's) would fill the 100 places.
    assert manifest["used"] == 40 + CLIENT_FLOOR
    assert manifest["client_quota"] == CLIENT_FLOOR
    assert manifest["dropped_client_cap"] == 100 - CLIENT_FLOOR
    assert manifest["dropped_cap"] == 0 and manifest["clients"] == 41
    assert manifest["sources"] == {"page": 40, "api": CLIENT_FLOOR}
    used = {tuple(image.ravel()) for image in chosen.images}
    assert all(tuple(item.image.ravel()) in used for item in others)
    kept = [item for item in flood if tuple(item.image.ravel()) in used]
    assert len(kept) == CLIENT_FLOOR


def test_the_per_client_quota_is_a_share_of_what_is_used(tiny_dataset):
    """Enough other clients to fill the cap: the flood keeps exactly 10% of the places."""
    digits = tiny_dataset.x_train
    flood = _items(digits[:100], client="flooder", minutes_ago=0)
    others = [item for index in range(300)
              for item in _items(digits[100 + index:101 + index], client=f"user-{index}",
                                 minutes_ago=10)]
    chosen = select_for_training(others + flood, train_size=1000, excluded=set(), cap=0.1)
    manifest = chosen.manifest
    assert manifest["used"] == 100 and manifest["client_quota"] == 10
    assert manifest["dropped_client_cap"] == 90
    assert manifest["dropped_cap"] == 300 + 10 - 100  # then newest first, as before
    flood_images = {tuple(item.image.ravel()) for item in flood}
    assert sum(tuple(image.ravel()) in flood_images for image in chosen.images) == 10


def test_the_cap_keeps_the_older_guarantees(tiny_dataset):
    """Dedup by content (the later label wins, even from another client), no judged digit,
    and items with no client (an operator's) are not capped per client."""
    digits = tiny_dataset.x_train
    judged = digits[:3]
    excluded = {item.sha256 for item in _items(judged, client=None, minutes_ago=0)}
    early = _items(digits[3:4], client="a", minutes_ago=30)
    correction = [FeedbackItem.create(digits[3], 9, client="b",
                                      now=datetime.now(UTC) - timedelta(minutes=1))]
    operator = _items(digits[10:60], client=None, minutes_ago=20)
    sneaky = _items(judged, client="c", minutes_ago=5)
    chosen = select_for_training(early + correction + operator + sneaky, train_size=10_000,
                                 excluded=excluded, cap=0.5)
    manifest = chosen.manifest
    assert manifest["dropped_overlap"] == 3 and manifest["unique"] == 54
    assert manifest["used"] == 51 and manifest["dropped_client_cap"] == 0
    index = next(i for i, image in enumerate(chosen.images)
                 if np.array_equal(image, digits[3]))
    assert chosen.labels[index] == 9
