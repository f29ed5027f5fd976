"""``digits feedback list|purge`` against the real S3 test server, and stored addresses."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest

from components.feedback import (
    FeedbackItem,
    FeedbackStore,
    address_key,
    client_id,
    load_feedback,
    main,
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
