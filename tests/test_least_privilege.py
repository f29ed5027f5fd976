"""Least privilege in the registry bucket, against a real store (SeaweedFS, IAM policies).

The serving identity (the public pods and the Kaggle job) reads the production
model and writes feedback and submissions; writing or deleting the pointer or
a version, reading or deleting feedback, reading failed versions, making
buckets and calling the store's IAM API are all refused by the store itself.
The pipeline identity runs the whole registry, in its bucket only.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from minio.commonconfig import CopySource
from minio.error import S3Error

from components.feedback import FeedbackItem, FeedbackStore, load_feedback
from components.identities import PIPELINE, SERVING, policy, policy_name
from components.kaggle.job import load_submission_model
from components.registry import FAILED, POINTER, Registry, RegistryError
from components.s3local import ADMIN, IAMError, LocalS3, s3_environment
from components.settings import StoreSettings
from components.watch import PAYLOADS, VERDICT_KEY, Window
from serving.model import DigitsModel
from serving.settings import ServeSettings


@pytest.fixture
def model_dir(tiny_models) -> Path:
    """A small real model, trained on 600 genuine digits (the session's, read only)."""
    return tiny_models["baseline"].directory


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh registry bucket, made by the root account and granted to both identities."""
    name = f"lp-{uuid.uuid4().hex[:12]}"
    s3_server.grant(name)
    return name


def settings_as(s3_server, identity: str, bucket: str, cls=StoreSettings, **extra):
    """Settings as a process running as ``identity`` reads them from its environment."""
    env = s3_server.environ(identity)
    return cls(s3_endpoint=env["DIGITS_S3_ENDPOINT"], s3_access_key=env["DIGITS_S3_ACCESS_KEY"],
               s3_secret_key=env["DIGITS_S3_SECRET_KEY"], s3_secure=False, bucket=bucket,
               **extra)


def registry_as(s3_server, identity: str, bucket: str) -> Registry:
    return Registry.from_settings(settings_as(s3_server, identity, bucket))


def meta(accuracy: float = 0.9) -> dict:
    return {"kind": "baseline", "metrics": {"accuracy": accuracy}}


def denied(call) -> None:
    """``call`` must be refused by the store itself (not fail for another reason)."""
    with pytest.raises(S3Error) as error:
        call()
    assert error.value.code == "AccessDenied", error.value


def _item(tiny_dataset, i: int = 0) -> FeedbackItem:
    return FeedbackItem.create(tiny_dataset.x_train[i], int(tiny_dataset.y_train[i]),
                               predicted=0, model_version="v1", source="api")


# --------------------------------------------------------------------------- serving


def test_serving_reads_and_verifies_the_production_model(s3_server, bucket, model_dir,
                                                         tmp_path):
    version = registry_as(s3_server, PIPELINE, bucket).promote(model_dir, meta(), "first")
    serving = registry_as(s3_server, SERVING, bucket)
    pointer = serving.production()
    assert pointer.version == version
    metadata = serving.download_production(pointer, tmp_path / "download")
    assert metadata["version"] == version and (tmp_path / "download" / "metadata.json").exists()
    assert serving.metadata(version)["status"] == "versions"
    # The Kaggle job's path: the production model through registry.download.
    with load_submission_model(serving) as (model, info):
        assert info == {"version": version, "kind": "baseline", "source": "registry:production"}
        assert model.predict_proba(np.zeros((1, 28, 28), dtype=np.uint8)).shape == (1, 10)


def test_serving_cannot_change_production_or_any_version(s3_server, bucket, model_dir):
    pipeline = registry_as(s3_server, PIPELINE, bucket)
    first = pipeline.promote(model_dir, meta(0.9), "first")
    second = pipeline.promote(model_dir, meta(0.95), "second")
    pointer_before = pipeline.read(POINTER)
    serving = registry_as(s3_server, SERVING, bucket)
    client = serving.client
    _, etag = serving._read_pointer()
    evil = json.dumps({"version": first}).encode()
    for call in (
        lambda: serving._put(POINTER, evil),
        lambda: serving.write_if_unchanged(POINTER, evil, etag=etag),
        lambda: client.remove_object(bucket, POINTER),
        lambda: client.copy_object(bucket, POINTER,
                                   CopySource(bucket, f"versions/{first}/metadata.json")),
        lambda: serving._put(f"versions/{second}/model.json", b"{}"),
        lambda: serving._put(f"versions/{second}/metadata.json", b"{}"),
        lambda: serving._put("versions/20261203T000000Z-baseline-000000/metadata.json", b"{}"),
        lambda: client.remove_object(bucket, f"versions/{second}/metadata.json"),
        lambda: serving._put("failed/x/metadata.json", b"{}"),
        lambda: serving._put("anything-else.json", b"{}"),
        lambda: serving.set_production(first, "hijack"),
        lambda: serving.rollback("hijack"),
        lambda: serving.promote(model_dir, meta(1.0), "hijack"),
        lambda: serving.publish(model_dir, meta(1.0)),
    ):
        denied(call)
    assert pipeline.read(POINTER) == pointer_before
    assert pipeline.production().version == second
    pipeline.verify(first), pipeline.verify(second)  # every file still as published
    assert {row["version"] for row in pipeline.list()} == {first, second}


def test_serving_adds_feedback_but_cannot_read_list_or_delete_it(s3_server, bucket,
                                                                 tiny_dataset):
    serving = registry_as(s3_server, SERVING, bucket)
    key = FeedbackStore(serving).add(_item(tiny_dataset))
    assert key.startswith("feedback/")
    for call in (
        lambda: serving.read(key),
        lambda: list(serving.client.list_objects(bucket, prefix="feedback/")),
        lambda: serving.client.remove_object(bucket, key),
        lambda: FeedbackStore(serving).purge([key]),
        lambda: load_feedback(serving),
    ):
        denied(call)
    pipeline = registry_as(s3_server, PIPELINE, bucket)
    [stored] = load_feedback(pipeline)
    assert stored.label == int(tiny_dataset.y_train[0]) and stored.source == "api"
    assert FeedbackStore(pipeline).purge([key]) == 1
    assert load_feedback(pipeline) == []


def test_serving_cannot_read_rejected_versions(s3_server, bucket, model_dir):
    pipeline = registry_as(s3_server, PIPELINE, bucket)
    rejected = pipeline.publish(model_dir, meta(0.5), status=FAILED)
    serving = registry_as(s3_server, SERVING, bucket)
    denied(lambda: serving.read(f"failed/{rejected}/metadata.json"))
    with pytest.raises(RegistryError, match=f"no version '{rejected}'"):
        serving.metadata(rejected)  # for serving, only versions/ exists
    assert pipeline.metadata(rejected)["status"] == FAILED


def test_serving_archives_and_lists_kaggle_submissions_but_cannot_delete_them(
        s3_server, bucket, model_dir, tmp_path, monkeypatch, capsys):
    from components.kaggle.cli import main as kaggle_main

    version = registry_as(s3_server, PIPELINE, bucket).promote(model_dir, meta(), "first")
    serving = registry_as(s3_server, SERVING, bucket)
    csv = tmp_path / "submission.csv"
    csv.write_text("ImageId,Label\n1,7\n")
    record = serving.archive_submission(csv, {"version": version, "mode": "offline", "rows": 1})
    assert serving.submissions() == [json.loads(serving.read(f"{record['key']}/record.json"))]
    denied(lambda: serving.client.remove_object(bucket, f"{record['key']}/submission.csv"))
    # `digits kaggle list`, as the Kaggle job's identity sees it.
    for key, value in {**s3_server.environ(SERVING), "DIGITS_BUCKET": bucket}.items():
        monkeypatch.setenv(key, value)
    assert kaggle_main(["list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["key"] == record["key"] and listed["version"] == version


def test_no_identity_reaches_another_bucket_or_administers_the_store(s3_server, bucket):
    admin = s3_server.client(ADMIN)
    other = f"lp-other-{uuid.uuid4().hex[:8]}"
    admin.make_bucket(other)  # never granted
    admin.put_object(other, "production.json", io.BytesIO(b"{}"), 2)
    for identity in (PIPELINE, SERVING):
        client = s3_server.client(identity)
        denied(lambda client=client: client.get_object(other, "production.json"))
        denied(lambda client=client: client.put_object(other, "x", io.BytesIO(b"x"), 1))
        denied(lambda client=client: client.make_bucket(f"lp-new-{uuid.uuid4().hex[:8]}"))
        # Nor can either widen its own rights through the store's IAM API.
        widen = {"PolicyArn": f"arn:aws:iam:::policy/{policy_name(SERVING)}",
                 "PolicyDocument": json.dumps(policy(PIPELINE, [other])), "SetAsDefault": "true"}
        for action, params in (("CreatePolicyVersion", widen), ("ListUsers", {})):
            with pytest.raises(IAMError) as error:
                s3_server.iam(action, identity=identity, **params)
            assert error.value.code == "AccessDenied"
    denied(lambda: s3_server.client(SERVING).bucket_exists(bucket))  # serving: no bucket calls
    assert s3_server.client(PIPELINE).bucket_exists(bucket)


# --------------------------------------------------------------------------- pipeline


def test_the_pipeline_identity_promotes_rolls_back_and_purges(s3_server, bucket, model_dir,
                                                              tiny_dataset):
    pipeline = registry_as(s3_server, PIPELINE, bucket)
    first = pipeline.promote(model_dir, meta(0.9), "first")
    second = pipeline.promote(model_dir, meta(0.95), "second", expect_champion=first)
    rejected = pipeline.publish(model_dir, meta(0.5), status=FAILED)
    assert pipeline.rollback("test").version == first
    assert pipeline.set_production(second, "forward again").version == second
    assert {row["version"]: row["status"] for row in pipeline.list()} == {
        first: "archived", second: "production", rejected: "rejected"}
    FeedbackStore(registry_as(s3_server, SERVING, bucket)).add(_item(tiny_dataset))
    store = FeedbackStore(pipeline)
    assert store.purge([key for key, _ in store.items()]) == 1


# --------------------------------------------------------------------------- the server


def test_the_server_loads_production_and_rolls_over_with_serving_rights(
        s3_server, bucket, model_dir, tiny_dataset, tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("DIGITS_")]:
        monkeypatch.delenv(key)
    settings = settings_as(s3_server, SERVING, bucket, ServeSettings, poll_interval_s=3600,
                           model_cache_dir=tmp_path / "cache")
    model = DigitsModel(settings)
    assert model.load() is False and not model.ready  # nothing promoted yet: not an error
    assert model.last_error == "no production model in the registry yet"
    pipeline = registry_as(s3_server, PIPELINE, bucket)
    first = pipeline.promote(model_dir, meta(0.9), "first")
    assert model.load() is True and model.current.version == first
    images = tiny_dataset.x_holdout[:5]
    assert model.predict(images).probabilities.shape == (5, 10)
    second = pipeline.promote(model_dir, meta(0.95), "second")
    assert model.load() is True and model.current.version == second
    assert model.predict(images).version == second
    # A pointer planted by someone who got write access elsewhere is refused; v2 serves on.
    pointer = pipeline.production()
    raw = json.dumps({**pointer.__dict__, "version": "../x"}).encode()
    s3_server.client(ADMIN).put_object(bucket, POINTER, io.BytesIO(raw), len(raw))
    assert model.load(force=True) is False
    assert model.current.version == second and "refusing version name" in model.last_error


def test_the_server_writes_payload_windows_it_cannot_read_back(
        s3_server, bucket, model_dir, tiny_dataset, tmp_path, monkeypatch):
    """The sampled requests land under payloads/ as the serving identity; only the pipeline
    identity (``digits monitor``) may list and read them. The monitor's verdict is the one
    key there serving may read, and it may not write it."""
    for key in [k for k in os.environ if k.startswith("DIGITS_")]:
        monkeypatch.delenv(key)
    settings = settings_as(s3_server, SERVING, bucket, ServeSettings, poll_interval_s=3600,
                           model_cache_dir=tmp_path / "cache", payload_sample=1.0,
                           payload_window=4)
    pipeline = registry_as(s3_server, PIPELINE, bucket)
    version = pipeline.promote(model_dir, meta(), "first")
    model = DigitsModel(settings)
    assert model.load() is True
    images = tiny_dataset.x_holdout[:6]
    model.predict(images)
    model.stop()  # flushes: one full window of 4 images and the partial one of 2
    keys = sorted(obj.object_name for obj in pipeline.client.list_objects(
        bucket, prefix=f"{PAYLOADS}/{version}/"))
    windows = [Window.from_bytes(pipeline.read(key), key) for key in keys]
    assert sum(len(w) for w in windows) == 6 and {w.version for w in windows} == {version}
    assert np.array_equal(Window.concat(windows).images, images)
    serving = registry_as(s3_server, SERVING, bucket)
    for call in (
        lambda: serving.read(keys[0]),
        lambda: list(serving.client.list_objects(bucket, prefix=f"{PAYLOADS}/")),
        lambda: serving.client.remove_object(bucket, keys[0]),
        lambda: serving._put(VERDICT_KEY, b"{}"),
    ):
        denied(call)
    assert serving.read(VERDICT_KEY) is None  # allowed to look; there is none yet
    pipeline._put(VERDICT_KEY, b'{"drift": false}')
    assert serving.read(VERDICT_KEY) == b'{"drift": false}'


# --------------------------------------------------------------------------- digits run / serve


def test_digits_serve_gets_the_serving_identity_and_digits_run_the_pipelines(tmp_path,
                                                                              model_dir):
    """``s3_environment``: the embedded store, started or joined, as the command's identity."""
    home = StoreSettings(home=tmp_path / "home", bucket="digits-registry", s3_endpoint=None)
    with s3_environment(home, identity=SERVING) as serving_env:
        credentials = json.loads((tmp_path / "home" / "s3" / "credentials.json").read_text())
        assert serving_env["DIGITS_S3_ACCESS_KEY"] == credentials[SERVING]["access_key"]
        assert (tmp_path / "home" / "s3" / "server.json").exists()
        with s3_environment(home) as pipeline_env:  # joins the running store
            assert pipeline_env["DIGITS_S3_ENDPOINT"] == serving_env["DIGITS_S3_ENDPOINT"]
            assert pipeline_env["DIGITS_S3_ACCESS_KEY"] == credentials[PIPELINE]["access_key"]
            pipeline = Registry.from_settings(StoreSettings(**{
                k.removeprefix("DIGITS_").lower(): v for k, v in pipeline_env.items()},
                bucket="digits-registry"))
            version = pipeline.promote(model_dir, meta(), "first")
        serving = Registry.from_settings(StoreSettings(**{
            k.removeprefix("DIGITS_").lower(): v for k, v in serving_env.items()},
            bucket="digits-registry"))
        assert serving.production().version == version
        denied(lambda: serving.set_production(version, "hijack"))
    assert not (tmp_path / "home" / "s3" / "server.json").exists()
    with pytest.raises(ValueError, match="unknown identity"), s3_environment(home, identity=ADMIN):
        pass


def test_a_store_from_before_identities_keeps_its_root_credentials(tmp_path):
    old = {"access_key": "digits1a2b3c4d", "secret_key": "s" * 40}
    (tmp_path / "credentials.json").write_text(json.dumps(old))
    store = LocalS3(tmp_path)
    assert (store.access_key, store.secret_key) == (old["access_key"], old["secret_key"])
    assert set(store.credentials) == {ADMIN, PIPELINE, SERVING}
    assert len({pair["access_key"] for pair in store.credentials.values()}) == 3
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0
