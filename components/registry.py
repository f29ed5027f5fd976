"""The model registry: versioned models in an S3 bucket, spoken to through ``minio``.

Layout of the bucket::

    versions/<id>/...          promoted-or-promotable models (files + metadata.json)
    failed/<id>/...            models the gate rejected, kept with the evidence
    production.json            the pointer: which version serves, and its history
    submissions/<stamp>-<version>/  every Kaggle submission, offline or online
                               (submission.csv, then record.json)
    feedback/<stamp>-<hash>-<rand>.json  users' labelled digits (components.feedback)

Writes are ordered so that a crash at any point leaves production intact:
model files first, ``metadata.json`` (with the sha256 of every file) after
them, then every object is read back and checked, and only then is the
pointer replaced — a single-object ``PUT``, which S3 makes atomic.

What the bucket holds is not trusted blindly: whoever can write it (a leaked
credential, a bug) could name a version ``../../x`` or list a file ``/etc/x``
in a ``metadata.json``. Version names must match :data:`VERSION_NAME` (the
shape the registry itself gives them) wherever one from outside — the pointer,
its history, a command line — becomes a key or a path, and a version's file
names must be plain relative paths, so a download never writes outside its
destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from minio import Minio
from minio.error import S3Error

from components.contract import METADATA_FILE

log = logging.getLogger(__name__)

VERSIONS = "versions"
FAILED = "failed"
STATUSES = (VERSIONS, FAILED)
POINTER = "production.json"
SUBMISSIONS = "submissions"
SUBMISSION_FILE, SUBMISSION_RECORD = "submission.csv", "record.json"


class RegistryError(RuntimeError):
    """The registry refused an operation; the message says which and why."""


class WriteConflict(RegistryError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class ProductionMoved(WriteConflict):
    """Production is not (or no longer) what the caller judged against: nothing was changed.

    Raised when a promotion expected one champion and finds another, and when
    the pointer changed between reading it and replacing it (a racing run).
    """


#: ``expect_champion``'s default: promote whatever production is now (manual operations).
ANY_CHAMPION = object()


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: A version's name: what :func:`new_version_id` and :func:`version_name` produce
#: (``20261124T101500Z-cnn-1a2b3c``, ``<run id>-xgboost``): letters, digits, ``-``
#: and ``_``, starting with a letter or digit. No dots and no slashes, so a name
#: can never leave its prefix as a key or its folder as a path.
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def check_version_name(version: object) -> str:
    """``version`` if it is a well-formed version name, else :class:`RegistryError`."""
    if not isinstance(version, str) or not VERSION_NAME.fullmatch(version):
        raise RegistryError(
            f"refusing version name {version!r}: a version name is letters, digits, '-' "
            "and '_' (at most 128, starting with a letter or digit)")
    return version


def check_file_name(version: str, name: object) -> str:
    """A file name from ``version``'s metadata if it is a plain relative path, else refuse.

    Absolute paths, ``..`` (or ``.``) components, empty components, backslashes
    and control characters are refused: joined onto a folder, such a name could
    land outside it.
    """
    parts = name.split("/") if isinstance(name, str) else [""]
    if (not isinstance(name, str) or "\\" in name or name.startswith("/")
            or any(part in ("", ".", "..") for part in parts)
            or any(ord(char) < 32 or ord(char) == 127 for char in name)):
        raise RegistryError(
            f"{version}: refusing file name {name!r} from {METADATA_FILE}: files are relative "
            "paths without '..', '.', empty parts, backslashes or control characters")
    return name


def new_version_id(kind: str) -> str:
    """Sortable, unique, readable: ``20261124T101500Z-cnn-1a2b3c``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{kind}-{os.urandom(3).hex()}"


def version_name(metadata: dict[str, Any]) -> str:
    """A new version's name: ``<run_id>-<kind>`` for a pipeline run's model, else a fresh id.

    Named after the run, a version is found by whoever started the run
    (:meth:`Registry.run_version`) without anyone else computing its name.
    """
    kind = str(metadata.get("kind", "model"))
    run_id = metadata.get("run_id")
    return check_version_name(f"{run_id}-{kind}" if run_id else new_version_id(kind))


@contextlib.contextmanager
def open_registry() -> Iterator[Registry]:
    """The configured registry, or the embedded store ``digits run`` uses, for one command."""
    from components.s3local import s3_environment
    from components.settings import get_settings

    with s3_environment(get_settings()):
        yield Registry.from_settings(get_settings())


def make_client(settings, *, timeout_s: float | None = None) -> Minio:
    """A ``minio`` client on the configured store: the only place one is built from settings.

    ``DIGITS_S3_CA_BUNDLE`` (a PEM file) is the CA the store's certificate is
    checked against, for a store whose certificate a private CA signed (the
    cluster's own MinIO over TLS); without it, the system's CAs. ``timeout_s``
    bounds every request and allows a single retry: right for a server's poll
    loop, which must notice a dead store quickly and try again later, unlike a
    pipeline step (minio's defaults: minutes, five retries).
    """
    http = None
    ca_bundle = getattr(settings, "s3_ca_bundle", None)
    if timeout_s is not None or ca_bundle is not None:
        import urllib3

        if timeout_s is None:  # minio-py's own defaults, only the CA changes
            timeout = urllib3.Timeout(connect=300, read=300)
            retries = urllib3.Retry(total=5, backoff_factor=0.2,
                                    status_forcelist=[500, 502, 503, 504])
            maxsize = 10
        else:
            timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
            retries = urllib3.Retry(total=1, backoff_factor=0.2,
                                    status_forcelist=[500, 502, 503, 504])
            maxsize = 4
        tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(ca_bundle)} if ca_bundle else {}
        http = urllib3.PoolManager(timeout=timeout, retries=retries, maxsize=maxsize, **tls)
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region or "us-east-1",
        http_client=http,
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


#: What each storage prefix is called when shown to people (see :meth:`Registry.list`).
PRODUCTION, ARCHIVED, CANDIDATE, REJECTED = "production", "archived", "candidate", "rejected"


@dataclass(frozen=True)
class Pointer:
    """The production pointer as stored: the serving version and what came before."""

    version: str
    metadata_sha256: str
    updated_at: str
    reason: str
    history: list[dict[str, str]]

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2).encode()


class Registry:
    """Versioned model storage with a production pointer, over any S3 store."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings, *, timeout_s: float | None = None) -> Registry:
        """A registry on the configured store (``timeout_s``: see :func:`make_client`)."""
        if not settings.s3_configured:
            raise RegistryError(
                "no S3 store configured: set DIGITS_S3_ENDPOINT, DIGITS_S3_ACCESS_KEY "
                "and DIGITS_S3_SECRET_KEY (digits run/serve start an embedded one)"
            )
        return cls(make_client(settings, timeout_s=timeout_s), settings.bucket)

    # ------------------------------------------------------------------ low level

    def ensure_bucket(self) -> None:
        """Make the bucket if it is missing (needs bucket rights: the pipeline's, not serving's)."""
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def _put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                               content_type=content_type)

    def append(self, key: str, data: bytes, content_type: str = "application/octet-stream",
               ) -> None:
        """Write one new object, making the bucket only if the store says it is missing.

        The serving identity may write ``feedback/`` and ``submissions/`` but may
        not even ask whether the bucket exists, so the common case asks nothing
        first; a first write into a fresh registry (tests, a new laptop) still
        works for an identity allowed to make the bucket.
        """
        try:
            self._put(key, data, content_type)
        except S3Error as error:
            if error.code != "NoSuchBucket":
                raise
            self.ensure_bucket()
            self._put(key, data, content_type)

    def read(self, key: str) -> bytes | None:
        """The raw bytes of one object, or ``None`` if it does not exist."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    # ------------------------------------------------------------------ writing

    def publish(self, model_dir: Path, metadata: dict[str, Any], *, status: str = VERSIONS,
                version: str | None = None) -> str:
        """Upload a model directory and its metadata; verify it; return the version id.

        ``metadata.json`` goes up after every file it describes, so a version
        with metadata is a complete version. Publishing never touches the pointer.
        """
        return self._publish(model_dir, metadata, status, version)[0]

    def _publish(self, model_dir: Path, metadata: dict[str, Any], status: str,
                 version: str | None) -> tuple[str, bytes]:
        """:meth:`publish`, also returning the exact ``metadata.json`` bytes written."""
        if status not in STATUSES:
            raise RegistryError(f"status must be one of {STATUSES}, got {status!r}")
        model_dir = Path(model_dir)
        files = _files_under(model_dir)
        if not files:
            raise RegistryError(f"{model_dir}: nothing to publish")
        version = (check_version_name(version) if version is not None
                   else version_name(metadata))
        self.ensure_bucket()
        manifest = {}
        for path in files:
            rel = check_file_name(version, path.relative_to(model_dir).as_posix())
            data = path.read_bytes()
            manifest[rel] = {"sha256": sha256_bytes(data), "bytes": len(data)}
            self._put(f"{status}/{version}/{rel}", data)
        record = {**metadata, "version": version, "status": status,
                  "created_at": metadata.get("created_at", utcnow()), "files": manifest}
        raw = json.dumps(record, indent=2).encode()
        self._put(f"{status}/{version}/{METADATA_FILE}", raw, "application/json")
        self.verify(version)
        log.info("published %s/%s (%d files)", status, version, len(manifest))
        return version, raw

    def add_files(self, version: str, directory: Path, names: list[str],
                  changes: dict[str, Any], reason: str) -> dict[str, Any]:
        """Add files to a published version (an inference form made after it); new metadata.

        The files go up first, then ``metadata.json`` listing them with their
        sha256 and carrying ``changes``; everything is read back and checked. A
        file the version already has is refused (published files never change).
        If the version is production, the pointer is rewritten to the new
        metadata's sha256 (same version, same history), so servers reload it;
        a server that reads in between refuses the mismatch once and retries.
        """
        metadata, _ = self._metadata(version)
        self._verify_files(metadata)
        status, files = metadata["status"], dict(metadata["files"])
        for name in names:
            rel = check_file_name(version, name)
            if rel in files or rel == METADATA_FILE:
                raise RegistryError(f"{version}: already has {rel}; published files never change")
            data = (Path(directory) / rel).read_bytes()
            files[rel] = {"sha256": sha256_bytes(data), "bytes": len(data)}
            self._put(f"{status}/{version}/{rel}", data)
        record = {**metadata, **changes, "files": files}
        raw = json.dumps(record, indent=2).encode()
        self._put(f"{status}/{version}/{METADATA_FILE}", raw, "application/json")
        self.verify(version)
        for _ in range(3):  # a racing pointer change: read it again and retry
            current, etag = self._read_pointer()
            if current is None or current.version != version:
                break
            try:
                self._point(version, raw, reason, current, etag, history=current.history)
                break
            except ProductionMoved:
                continue
        log.info("%s: added %s", version, ", ".join(names))
        return record

    def verify(self, version: str) -> dict[str, Any]:
        """Read every file of a version back and check its sha256; return the metadata."""
        metadata, _ = self._metadata(version)
        self._verify_files(metadata)
        return metadata

    def _verify_files(self, metadata: dict[str, Any]) -> None:
        for _ in self._checked_files(metadata):
            pass

    def read_with_etag(self, key: str) -> tuple[bytes | None, str | None]:
        """An object's bytes and its ETag, for a conditional write back (``None, None``
        when it does not exist)."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket"):
                return None, None
            raise
        try:
            return response.read(), response.headers.get("ETag")
        finally:
            response.close()
            response.release_conn()

    def _read_pointer(self) -> tuple[Pointer | None, str | None]:
        """The pointer and its ETag (``None, None`` when production is empty)."""
        raw, etag = self.read_with_etag(POINTER)
        if raw is None:
            return None, None
        try:
            return Pointer(**json.loads(raw)), etag
        except (TypeError, ValueError) as error:
            raise RegistryError(f"{POINTER} is unreadable ({error})") from error

    def write_if_unchanged(self, key: str, data: bytes, *, etag: str | None,
                           content_type: str = "application/json") -> None:
        """PUT ``key`` only if it is unchanged since read (``If-Match``, ``etag`` from
        :meth:`read_with_etag`) or, with ``etag=None``, still absent; else
        :class:`WriteConflict` and nothing is written.

        S3 conditional writes (AWS since 2024, MinIO, SeaweedFS 4.x) make this a
        compare-and-swap: of two racing writers exactly one wins. It is how the
        production pointer moves and how the monitor claims its cooldown.
        minio-py 7.2's ``put_object`` cannot send these headers, so this one
        request goes through the client's own signed-request method.
        """
        condition = {"If-Match": etag} if etag else {"If-None-Match": "*"}
        headers = {"Content-Type": content_type, **condition}
        try:
            self.client._execute("PUT", self.bucket, key, body=data, headers=headers)
        except S3Error as error:
            if error.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise WriteConflict(f"{key} changed since it was read; nothing was "
                                    "written") from None
            raise

    def _point(self, version: str, metadata_raw: bytes, reason: str,
               current: Pointer | None, etag: str | None,
               history: list[dict[str, str]] | None = None) -> Pointer:
        """Replace the pointer read as ``current``/``etag``: one conditional PUT, the last step.

        ``history`` defaults to ``current`` followed by its own history.
        """
        if history is None:
            history = [] if current is None else [
                {"version": current.version, "updated_at": current.updated_at,
                 "reason": current.reason}, *current.history]
        pointer = Pointer(version, sha256_bytes(metadata_raw), utcnow(), reason, history)
        try:
            self.write_if_unchanged(POINTER, pointer.to_json(), etag=etag)
        except WriteConflict:
            raise ProductionMoved(
                "production changed while this change was being made (another run "
                "promoted meanwhile); nothing was changed") from None
        log.info("production -> %s (%s)", version, reason)
        return pointer

    def set_production(self, version: str, reason: str) -> Pointer:
        """Point production at a verified version under ``versions/``; keep the history."""
        current, etag = self._read_pointer()
        metadata, raw = self._metadata(version)
        if metadata["status"] != VERSIONS:
            raise RegistryError(f"{version} was rejected by the gate (it is under failed/)")
        self._verify_files(metadata)
        return self._point(version, raw, reason, current, etag)

    def promote(self, model_dir: Path, metadata: dict[str, Any], reason: str,
                version: str | None = None, *, expect_champion: Any = ANY_CHAMPION) -> str:
        """Publish under ``versions/`` and, once verified, move the pointer to it.

        ``expect_champion`` is the production version the gate judged against
        (``None``: there was none). If production is something else — another
        run promoted after this one's gate — or changes while this version
        uploads, :class:`ProductionMoved` is raised, the upload is removed and
        production is untouched: a challenger only ever replaces the champion
        it beat.
        """
        current, etag = self._read_pointer()
        now = current.version if current else None
        if expect_champion is not ANY_CHAMPION and now != expect_champion:
            raise ProductionMoved(
                f"production is {now or 'empty'} but the gate judged against "
                f"{expect_champion or 'no champion'}: another run promoted meanwhile")
        version, raw = self._publish(model_dir, metadata, VERSIONS, version)
        try:
            self._point(version, raw, reason, current, etag)
        except ProductionMoved:
            self._remove(f"{VERSIONS}/{version}/")
            raise
        return version

    def rollback(self, reason: str = "rollback") -> Pointer:
        """Point production back at the version it served before the current one."""
        current, etag = self._read_pointer()
        if current is None or not current.history:
            raise RegistryError("nothing to roll back to: production has no earlier version")
        previous = current.history[0]["version"]
        metadata, raw = self._metadata(previous)
        self._verify_files(metadata)
        return self._point(previous, raw, f"{reason} (from {current.version})", current, etag,
                           history=current.history[1:])

    def _remove(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (metadata first: never a half version)."""
        names = [obj.object_name for obj in
                 self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        for name in sorted(names, key=lambda name: not name.endswith(METADATA_FILE)):
            self.client.remove_object(self.bucket, name)

    # ------------------------------------------------------------------ reading

    def production(self) -> Pointer | None:
        return self._read_pointer()[0]

    def metadata(self, version: str) -> dict[str, Any]:
        return self._metadata(version)[0]

    def _metadata(self, version: str) -> tuple[dict[str, Any], bytes]:
        """A version's metadata and its exact bytes (what the pointer's sha256 covers).

        The metadata must describe the version it was found as: a ``metadata.json``
        naming another version or status (whose files would then be read, or
        written, somewhere else) is refused.
        """
        check_version_name(version)
        for status in STATUSES:
            try:
                raw = self.read(f"{status}/{version}/{METADATA_FILE}")
            except S3Error as error:
                # The serving identity may not read failed/: for it, only versions/ exist.
                if status == FAILED and error.code == "AccessDenied":
                    break
                raise
            if raw is not None:
                return self._checked_metadata(version, status, raw), raw
        raise RegistryError(f"no version {version!r} in the registry")

    @staticmethod
    def _checked_metadata(version: str, status: str, raw: bytes) -> dict[str, Any]:
        try:
            metadata = json.loads(raw)
        except ValueError as error:
            raise RegistryError(f"{version}: {METADATA_FILE} is unreadable ({error})") from None
        if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), dict):
            raise RegistryError(f"{version}: {METADATA_FILE} has no 'files' table")
        if metadata.get("version") != version or metadata.get("status") != status:
            raise RegistryError(
                f"{version}: {METADATA_FILE} under {status}/ describes "
                f"{metadata.get('status')!r}/{metadata.get('version')!r}; refusing it")
        for name, expected in metadata["files"].items():
            check_file_name(version, name)
            if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
                raise RegistryError(f"{version}: {METADATA_FILE} gives no sha256 for {name!r}")
        return metadata

    def _checked_files(self, metadata: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
        """Each file of a version as ``(relative path, bytes)``, its sha256 checked first.

        Every name is checked before anything is read, so a hostile entry stops
        the download before it starts.
        """
        version = check_version_name(metadata["version"])
        if metadata["status"] not in STATUSES:
            raise RegistryError(f"{version}: unknown status {metadata['status']!r}")
        prefix = f"{metadata['status']}/{version}"
        for rel in metadata["files"]:
            check_file_name(version, rel)
        for rel, expected in metadata["files"].items():
            data = self.read(f"{prefix}/{rel}")
            if data is None:
                raise RegistryError(f"{version}: file {rel} is missing")
            if sha256_bytes(data) != expected["sha256"]:
                raise RegistryError(f"{version}: file {rel} fails its sha256 check")
            yield rel, data

    def list(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its status and headline numbers.

        ``status`` is what a version is to people: ``production`` (serving now),
        ``archived`` (served before), ``candidate`` (passed, never served) or
        ``rejected`` (refused by the gate); ``location`` is its storage prefix.
        """
        status_of = self._status_function()
        rows = []
        for status in STATUSES:
            for obj in self.client.list_objects(self.bucket, prefix=f"{status}/"):
                version = obj.object_name.rstrip("/").split("/")[1]
                if not VERSION_NAME.fullmatch(version):
                    log.warning("ignoring %s/%r: not a version name", status, version)
                    continue
                raw = self.read(f"{status}/{version}/{METADATA_FILE}")
                if raw is None:  # an upload that never finished: not a version
                    continue
                meta = json.loads(raw)
                shown = status_of(version, status)
                rows.append({
                    "version": version,
                    "status": shown,
                    "location": status,
                    "production": shown == PRODUCTION,
                    "kind": meta.get("kind"),
                    "holdout_accuracy": meta.get("metrics", {}).get("accuracy"),
                    "created_at": meta.get("created_at"),
                })
        return sorted(rows, key=lambda row: (row["created_at"] or "", row["version"]),
                      reverse=True)

    def download_production(self, pointer: Pointer, destination: Path) -> dict[str, Any]:
        """Download the version ``pointer`` names, checked against the pointer itself.

        Its ``metadata.json`` must hash to what the pointer recorded when it was
        written (a version replaced under the same name is refused), every file
        to its own checksum, and the metadata must not change during the download.
        """
        check_version_name(pointer.version)
        raw = self.read(f"{VERSIONS}/{pointer.version}/{METADATA_FILE}")
        if raw is None:
            raise RegistryError(f"{pointer.version}: no {METADATA_FILE} under {VERSIONS}/")
        digest = sha256_bytes(raw)
        if digest != pointer.metadata_sha256:
            raise RegistryError(
                f"{pointer.version}: {METADATA_FILE} sha256 {digest[:12]}… does not match the "
                f"production pointer's {pointer.metadata_sha256[:12]}…")
        metadata = self.download(pointer.version, destination)
        if metadata != json.loads(raw):
            raise RegistryError(f"{pointer.version}: metadata changed during the download")
        return metadata

    def run_version(self, run_id: str) -> str | None:
        """The version a pipeline run registered (promoted or rejected), if it finished."""
        check_version_name(run_id)
        for status in STATUSES:
            for obj in self.client.list_objects(self.bucket, prefix=f"{status}/{run_id}-"):
                version = obj.object_name.rstrip("/").split("/")[1]
                if not VERSION_NAME.fullmatch(version):
                    continue
                raw = self.read(f"{status}/{version}/{METADATA_FILE}")
                if raw is not None and json.loads(raw).get("run_id") == run_id:
                    return version
        return None

    def describe(self, version: str) -> dict[str, Any]:
        """A version's metadata with its status as :meth:`list` names it."""
        metadata = self.metadata(version)
        status = self._status_function()(version, metadata["status"])
        return {**metadata, "status": status, "location": metadata["status"],
                "production": status == PRODUCTION}

    def _status_function(self):
        """``(version, location) -> status`` as people name it, from one pointer read."""
        current = self.production()
        served = {entry["version"] for entry in (current.history if current else [])}

        def status_of(version: str, location: str) -> str:
            if location == FAILED:
                return REJECTED
            if current is not None and current.version == version:
                return PRODUCTION
            return ARCHIVED if version in served else CANDIDATE

        return status_of

    # ------------------------------------------------------------------ submissions

    def archive_submission(self, file: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Keep a Kaggle submission: the exact file, then its record; return the record.

        The key is ``submissions/<UTC stamp>-<version>/``; the record gains the
        file's sha256 and size and its own key. ``record.json`` goes up last,
        so a listed submission always has its file. Only writes under
        ``submissions/``: the serving identity (the Kaggle job's) may do it.
        """
        data = Path(file).read_bytes()
        version = record.get("version")
        if version is not None:
            check_version_name(version)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        key = f"{SUBMISSIONS}/{stamp}-{version or 'unversioned'}"
        record = {**record, "key": key, "archived_at": utcnow(),
                  "sha256": sha256_bytes(data), "bytes": len(data)}
        self.append(f"{key}/{SUBMISSION_FILE}", data, "text/csv")
        self.append(f"{key}/{SUBMISSION_RECORD}",
                    json.dumps(record, indent=2, default=str).encode(), "application/json")
        return record

    def submissions(self) -> list[dict[str, Any]]:
        """Every archived submission's record, newest first.

        Lists ``submissions/`` only (no bucket-level call), which the serving
        identity may do: ``digits kaggle list`` runs with the Kaggle job's rights.
        """
        records: list[dict[str, Any]] = []
        try:
            for obj in self.client.list_objects(self.bucket, prefix=f"{SUBMISSIONS}/"):
                raw = self.read(f"{obj.object_name.rstrip('/')}/{SUBMISSION_RECORD}")
                if raw is not None:  # an upload that never finished: not a submission
                    records.append(json.loads(raw))
        except S3Error as error:
            if error.code != "NoSuchBucket":
                raise
        return sorted(records, key=lambda record: record["key"], reverse=True)

    def download(self, version: str, destination: Path) -> dict[str, Any]:
        """Fetch a version into ``destination`` with every sha256 checked; return metadata.

        Files land in a temporary directory that is renamed into place only when
        all checks pass, so a caller never sees a half-downloaded model.
        """
        metadata = self.metadata(version)
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".download-"))
        try:
            for rel, data in self._checked_files(metadata):
                target = staging / rel
                # Names were checked already; this holds even if that check had a gap.
                if not target.resolve().is_relative_to(staging.resolve()):
                    raise RegistryError(f"{version}: file {rel!r} would land outside "
                                        "the download folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            if destination.exists():
                shutil.rmtree(destination)
            staging.rename(destination)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return metadata
