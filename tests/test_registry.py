"""The registry against a real S3 server (SeaweedFS ``weed``), through the minio SDK."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import pytest
from minio import Minio

from components.registry import (
    FAILED,
    POINTER,
    ProductionMoved,
    Registry,
    RegistryError,
    WriteConflict,
)


@pytest.fixture
def model_dir(tmp_path):
    """A small model-shaped directory (two files, one nested)."""
    directory = tmp_path / "model"
    (directory / "evaluation").mkdir(parents=True)
    (directory / "model.json").write_text(json.dumps({"kind": "baseline"}))
    (directory / "weights.npz").write_bytes(bytes(range(256)) * 100)
    (directory / "evaluation" / "metrics.json").write_text('{"accuracy": 0.9}')
    return directory


def meta(accuracy: float = 0.9) -> dict:
    return {"kind": "baseline", "metrics": {"accuracy": accuracy}}


class FailingPointerWrite(Minio):
    """An S3 client whose connection drops exactly when the pointer is written."""

    def _execute(self, method, bucket_name=None, object_name=None, *args, **kwargs):
        if method == "PUT" and object_name == POINTER:
            raise ConnectionError("connection reset while writing the pointer")
        return super()._execute(method, bucket_name, object_name, *args, **kwargs)


class CorruptingUpload(Minio):
    """An S3 client that flips a byte in weight files on the way up (bad disk, bad proxy)."""

    def put_object(self, bucket_name, object_name, data, length, *args, **kwargs):
        if object_name.endswith("weights.npz"):
            raw = bytearray(data.read())
            raw[0] ^= 0xFF
            data = io.BytesIO(bytes(raw))
        return super().put_object(bucket_name, object_name, data, length, *args, **kwargs)


def _client(cls, s3_server) -> Minio:
    return cls(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False,
               region="us-east-1")


def test_empty_registry_has_no_production(registry):
    registry.ensure_bucket()
    assert registry.production() is None
    assert registry.list() == []


def test_promote_publishes_verifies_and_points(registry, model_dir, tmp_path):
    version = registry.promote(model_dir, meta(), reason="first")
    pointer = registry.production()
    assert pointer.version == version and pointer.history == []
    stored = registry.metadata(version)
    assert set(stored["files"]) == {"model.json", "weights.npz", "evaluation/metrics.json"}
    assert all(len(f["sha256"]) == 64 for f in stored["files"].values())
    fetched = registry.download(version, tmp_path / "fetched")
    assert fetched["version"] == version
    assert (tmp_path / "fetched" / "weights.npz").read_bytes() == (
        model_dir / "weights.npz").read_bytes()
    [row] = registry.list()
    assert row["production"] and row["holdout_accuracy"] == 0.9
    assert (row["status"], row["location"]) == ("production", "versions")


def test_failed_versions_are_kept_but_never_served(registry, model_dir):
    good = registry.promote(model_dir, meta(), reason="first")
    rejected = registry.publish(model_dir, meta(0.5), status=FAILED)
    assert registry.production().version == good
    assert {r["version"]: r["status"] for r in registry.list()} == {
        good: "production", rejected: "rejected"}
    with pytest.raises(RegistryError, match="rejected by the gate"):
        registry.set_production(rejected, "try to serve a rejected model")
    assert registry.production().version == good


def test_the_registry_names_a_runs_version_and_finds_it_again(registry, model_dir):
    promoted = registry.promote(model_dir, {**meta(), "run_id": "20261130T120000Z-aa"}, "first")
    rejected = registry.publish(model_dir, {**meta(0.5), "run_id": "20261130T130000Z-bb"},
                                status=FAILED)
    anonymous = registry.publish(model_dir, meta(0.6), status=FAILED)
    assert (promoted, rejected) == ("20261130T120000Z-aa-baseline", "20261130T130000Z-bb-baseline")
    assert registry.run_version("20261130T120000Z-aa") == promoted
    assert registry.run_version("20261130T130000Z-bb") == rejected
    # A run that registered nothing, and one whose id only starts like another's, find nothing.
    assert registry.run_version("20261130T140000Z-cc") is None
    assert registry.run_version("20261130T120000Z") is None
    assert anonymous not in (promoted, rejected) and "-baseline-" in anonymous


def test_rollback_walks_back_through_history(registry, model_dir):
    first = registry.promote(model_dir, meta(0.90), reason="one")
    second = registry.promote(model_dir, meta(0.95), reason="two")
    assert registry.production().history[0]["version"] == first
    candidate = registry.publish(model_dir, meta(0.96))
    assert {r["version"]: r["status"] for r in registry.list()} == {
        first: "archived", second: "production", candidate: "candidate"}
    pointer = registry.rollback()
    assert pointer.version == first and "from " + second in pointer.reason
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    assert registry.production().version == first


def test_promotion_interrupted_before_the_pointer_leaves_production_intact(
        registry, model_dir, s3_server):
    champion = registry.promote(model_dir, meta(0.9), reason="champion")
    flaky = Registry(_client(FailingPointerWrite, s3_server), registry.bucket)
    with pytest.raises(ConnectionError):
        flaky.promote(model_dir, meta(0.99), reason="challenger")
    assert registry.production().version == champion
    # The upload itself completed and verified: it can be promoted by hand later.
    newest = registry.list()[0]
    assert newest["version"] != champion and not newest["production"]
    assert len(registry.list()) == 2
    registry.set_production(newest["version"], "promoted after the outage")
    assert registry.production().version == newest["version"]


def test_corrupted_upload_never_reaches_production(registry, model_dir, s3_server):
    champion = registry.promote(model_dir, meta(0.9), reason="champion")
    corrupting = Registry(_client(CorruptingUpload, s3_server), registry.bucket)
    with pytest.raises(RegistryError, match=r"weights\.npz fails its sha256"):
        corrupting.promote(model_dir, meta(0.99), reason="challenger")
    assert registry.production().version == champion


def test_tampered_version_cannot_be_downloaded_or_promoted(registry, model_dir, minio_client,
                                                           tmp_path):
    version = registry.publish(model_dir, meta())
    key = f"versions/{version}/weights.npz"
    minio_client.put_object(registry.bucket, key, io.BytesIO(b"tampered"), 8)
    with pytest.raises(RegistryError, match="sha256"):
        registry.download(version, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".download-")]
    with pytest.raises(RegistryError, match="sha256"):
        registry.set_production(version, "should fail")
    assert registry.production() is None


def test_unknown_version_is_a_clear_error(registry):
    registry.ensure_bucket()
    with pytest.raises(RegistryError, match="no version 'nope'"):
        registry.metadata("nope")


# --------------------------------------------------------------------------- racing runs


def test_a_challenger_judged_against_an_older_champion_is_not_promoted(registry, model_dir):
    old = registry.promote(model_dir, meta(0.90), reason="champion")
    first = registry.promote(model_dir, meta(0.95), reason="run A", expect_champion=old)
    with pytest.raises(ProductionMoved, match=f"production is {first} but the gate judged "
                                              f"against {old}"):
        registry.promote(model_dir, meta(0.93), reason="run B", expect_champion=old)
    assert registry.production().version == first
    assert [row["version"] for row in registry.list()] == [first, old]  # B left nothing


class PausingPointerWrite(Minio):
    """A client that stops just before its pointer write until told to go on."""

    def __init__(self, *args, ready: threading.Event, go: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.ready, self.go = ready, go

    def _execute(self, method, bucket_name=None, object_name=None, *args, **kwargs):
        if method == "PUT" and object_name == POINTER:
            self.ready.set()
            assert self.go.wait(30)
        return super()._execute(method, bucket_name, object_name, *args, **kwargs)


def test_two_promotions_interleaved_at_the_pointer_exactly_one_wins(registry, model_dir,
                                                                    s3_server):
    """B reads production, A promotes meanwhile, then B writes: B must lose, not overwrite."""
    old = registry.promote(model_dir, meta(0.90), reason="champion")
    ready, go = threading.Event(), threading.Event()
    slow = Registry(PausingPointerWrite(s3_server.endpoint, s3_server.access_key,
                                        s3_server.secret_key, secure=False, region="us-east-1",
                                        ready=ready, go=go), registry.bucket)
    outcome: dict = {}

    def run_b() -> None:
        try:
            outcome["b"] = slow.promote(model_dir, meta(0.93), reason="run B",
                                        expect_champion=old)
        except ProductionMoved as error:
            outcome["error"] = error

    b = threading.Thread(target=run_b)
    b.start()
    assert ready.wait(60)  # B has read the pointer and uploaded; it is about to write
    a = registry.promote(model_dir, meta(0.95), reason="run A", expect_champion=old)
    go.set()
    b.join(60)
    assert "b" not in outcome and "another run promoted meanwhile" in str(outcome["error"])
    pointer = registry.production()
    assert pointer.version == a and pointer.history[0]["version"] == old
    assert {row["version"] for row in registry.list()} == {a, old}  # B's upload removed


def test_a_conditional_write_wins_only_against_what_it_read(registry):
    """write_if_unchanged is a compare-and-swap: a stale ETag, or a create over an
    existing object, is refused and leaves the object as the winner wrote it."""
    key = "monitor/claim.json"
    registry.write_if_unchanged(key, b'{"n": 1}', etag=None)  # created: it was absent
    with pytest.raises(WriteConflict):
        registry.write_if_unchanged(key, b'{"n": 99}', etag=None)  # no longer absent
    data, etag = registry.read_with_etag(key)
    registry.write_if_unchanged(key, b'{"n": 2}', etag=etag)  # unchanged since read: wins
    with pytest.raises(WriteConflict, match="changed since it was read"):
        registry.write_if_unchanged(key, b'{"n": 3}', etag=etag)  # the ETag is stale now
    assert data == b'{"n": 1}' and registry.read(key) == b'{"n": 2}'


def test_manual_operations_race_safely_too(registry, model_dir):
    first = registry.promote(model_dir, meta(0.9), reason="one")
    second = registry.promote(model_dir, meta(0.9), reason="two")
    current, etag = registry._read_pointer()
    registry.rollback("operator A")
    with pytest.raises(ProductionMoved):  # operator B acted on what they read before A
        registry._point(second, b"{}", "operator B", current, etag)
    assert registry.production().version == first


# --------------------------------------------------------------------------- hostile contents
# Whoever can write the bucket (a leaked credential, a bug) must not be able to make a
# download write outside its folder, nor make a version name reach another prefix.


def _plant(registry, minio_client, version: str, files: dict, *, status: str = "versions",
           named: str | None = None) -> bytes:
    """Write a crafted ``metadata.json`` straight into the bucket (root credentials)."""
    registry.ensure_bucket()
    raw = json.dumps({"version": named or version, "status": status, "kind": "baseline",
                      "files": files}).encode()
    minio_client.put_object(registry.bucket, f"{status}/{version}/metadata.json",
                            io.BytesIO(raw), len(raw))
    return raw


def _planted_file(registry, minio_client, version: str, name: str, data: bytes) -> dict:
    minio_client.put_object(registry.bucket, f"versions/{version}/{name}", io.BytesIO(data),
                            len(data))
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _tree(root) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("name", ["../../evil", "/etc/x", "a/../../evil", "..", "a\\..\\evil",
                                  "", "a//b", "./a", "a/./b", "ok\x00.txt"])
def test_a_file_name_leaving_the_download_folder_is_refused(registry, minio_client, tmp_path,
                                                            name):
    version = "20261203T120000Z-baseline-abc123"
    good = _planted_file(registry, minio_client, version, "model.json", b"{}")
    # The hostile file really exists in the bucket under that name, with its right sha256.
    hostile = _planted_file(registry, minio_client, version, "x", b"owned")
    _plant(registry, minio_client, version, {"model.json": good, name: hostile})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RegistryError, match="refusing file name"):
        registry.download(version, work / "deep" / "model")
    assert _tree(tmp_path) == {"work"}  # nothing written, not even a staging folder
    with pytest.raises(RegistryError, match="refusing file name"):
        registry.verify(version)


def test_a_planted_absolute_path_is_refused_before_any_read(registry, minio_client, tmp_path):
    target = tmp_path / "outside" / "x"
    version = "20261203T120000Z-baseline-def456"
    _plant(registry, minio_client, version,
           {str(target): {"sha256": hashlib.sha256(b"owned").hexdigest(), "bytes": 5}})
    with pytest.raises(RegistryError, match="refusing file name"):
        registry.download(version, tmp_path / "download")
    assert not target.exists() and not (tmp_path / "download").exists()


def test_metadata_naming_another_version_is_refused(registry, minio_client, tmp_path):
    """A metadata.json whose 'version' says ``../x`` would move the files' prefix."""
    version = "20261203T120000Z-baseline-0a0b0c"
    good = _planted_file(registry, minio_client, version, "model.json", b"{}")
    for named in ("../x", "20261203T120000Z-baseline-ffffff"):
        _plant(registry, minio_client, version, {"model.json": good}, named=named)
        with pytest.raises(RegistryError, match="refusing it"):
            registry.download(version, tmp_path / "download")
    assert not (tmp_path / "download").exists()


@pytest.mark.parametrize("version", ["../x", "../../etc", "a/b", "/abs", ".hidden", "a..b",
                                     "a.b", "", "-starts-with-dash", "x" * 129, "a\\b"])
def test_version_names_outside_the_registrys_pattern_are_refused(registry, model_dir, tmp_path,
                                                                  version):
    registry.ensure_bucket()
    for call in (lambda: registry.metadata(version),
                 lambda: registry.describe(version),
                 lambda: registry.download(version, tmp_path / "download"),
                 lambda: registry.set_production(version, "operator typo"),
                 lambda: registry.publish(model_dir, meta(), version=version)):
        with pytest.raises(RegistryError, match="refusing version name"):
            call()
    if any(char in version for char in "/.\\"):  # a kind becomes part of a new version's name
        with pytest.raises(RegistryError, match="refusing version name"):
            registry.publish(model_dir, {**meta(), "kind": version})
    assert not (tmp_path / "download").exists()


def test_the_registrys_own_names_pass_the_pattern(registry, model_dir):
    from components.registry import VERSION_NAME, new_version_id

    for kind in ("cnn", "xgboost", "baseline", "model"):
        assert VERSION_NAME.fullmatch(new_version_id(kind))
    run_version = registry.publish(model_dir, {**meta(), "run_id": "20261130T120000Z-a1b2c3"})
    assert run_version == "20261130T120000Z-a1b2c3-baseline"


def test_a_crafted_production_pointer_is_refused(registry, model_dir, minio_client, tmp_path):
    version = registry.promote(model_dir, meta(), reason="first")
    for hostile in ("../x", "../../versions/x", "versions/../x"):
        pointer = registry.production()
        raw = json.dumps({**pointer.__dict__, "version": hostile}).encode()
        minio_client.put_object(registry.bucket, POINTER, io.BytesIO(raw), len(raw))
        crafted = registry.production()
        assert crafted.version == hostile  # reading it is harmless; using it is refused
        with pytest.raises(RegistryError, match="refusing version name"):
            registry.download_production(crafted, tmp_path / "download")
    assert not (tmp_path / "download").exists()
    # A hostile history entry cannot be rolled back to either; the pipeline can repair it.
    raw = json.dumps({**pointer.__dict__, "version": version, "history": [
        {"version": "../x", "updated_at": "", "reason": "planted"}]}).encode()
    minio_client.put_object(registry.bucket, POINTER, io.BytesIO(raw), len(raw))
    with pytest.raises(RegistryError, match="refusing version name"):
        registry.rollback()
    registry.set_production(version, "repaired")
    assert registry.production().version == version


def test_a_submission_record_cannot_name_its_way_out_of_submissions(registry, tmp_path):
    registry.ensure_bucket()
    csv = tmp_path / "submission.csv"
    csv.write_text("ImageId,Label\n1,7\n")
    with pytest.raises(RegistryError, match="refusing version name"):
        registry.archive_submission(csv, {"version": "../../versions/x", "mode": "offline"})
    assert registry.submissions() == []
    record = registry.archive_submission(csv, {"version": None, "mode": "offline"})
    assert record["key"].startswith("submissions/") and record["key"].endswith("-unversioned")


def test_listing_skips_keys_that_are_not_version_names(registry, model_dir, minio_client):
    version = registry.publish(model_dir, meta())
    raw = json.dumps({"version": "a.b", "status": "versions", "files": {}}).encode()
    minio_client.put_object(registry.bucket, "versions/a.b/metadata.json", io.BytesIO(raw),
                            len(raw))
    assert [row["version"] for row in registry.list()] == [version]


def test_files_added_to_a_serving_version_are_checked_and_the_pointer_follows(registry,
                                                                            model_dir):
    version = registry.promote(model_dir, meta(), "first")
    before = registry.production()
    (model_dir / "model.onnx").write_bytes(b"an inference form")
    record = registry.add_files(version, model_dir, ["model.onnx"], {"export": {"x": 1}},
                                reason="export added")
    assert record["files"]["model.onnx"]["sha256"] == hashlib.sha256(
        b"an inference form").hexdigest()
    assert registry.metadata(version)["export"] == {"x": 1}
    after = registry.production()
    assert after.version == version and after.history == before.history
    assert after.metadata_sha256 != before.metadata_sha256
    registry.verify(version)
    # Published files never change, and a name that could leave the folder is refused.
    for name in ("model.onnx", "weights.npz", "../escape"):
        with pytest.raises(RegistryError):
            registry.add_files(version, model_dir, [name], {}, reason="again")
    assert registry.production() == after
