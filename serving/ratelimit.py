"""Rate limits whose counts hold across every worker of a server.

flask-limiter keeps its counts in a ``limits`` storage named by a URI
(``DIGITS_RATE_LIMIT_STORAGE``). ``memory://`` is per process: with two
workers a client gets twice its limit, and the count depends on which worker
the kernel hands a connection to. Across replicas a shared server is needed
(``redis://...``, with the ``redis`` package installed). Between those two,
one server's worker processes share a SQLite file: ``sqlite:///path/limits.db``,
which ``digits serve`` creates for its workers. One short write transaction
per limited request (fixed window, WAL journal) costs well under a
millisecond; only ``/predict`` and ``/feedback`` are limited.

The client a limit applies to is ``request.remote_addr``: the peer address,
or with ``DIGITS_TRUSTED_PROXY_HOPS`` = N the address the N-th trusted proxy
in front saw (werkzeug's ``ProxyFix``) — never a header a client can set alone.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from limits.storage import Storage

_SCHEMA = ("CREATE TABLE IF NOT EXISTS windows "
           "(key TEXT PRIMARY KEY, count INTEGER NOT NULL, expiry REAL NOT NULL)")


class SQLiteStorage(Storage):
    """A fixed-window ``limits`` storage in one SQLite file shared by processes."""

    STORAGE_SCHEME: ClassVar[list[str]] = ["sqlite"]  # type: ignore[misc]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self.path = Path(uri.removeprefix("sqlite://"))
        if not self.path.is_absolute():
            raise ValueError(f"sqlite rate-limit storage needs an absolute path: {uri!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute(_SCHEMA)
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections are not shared across threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # counters, not records: a crash loses a window
            self._local.db = db
        return db

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM windows WHERE key = ? AND expiry <= ?", (key, now))
            db.execute("INSERT INTO windows (key, count, expiry) VALUES (?, ?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                       (key, amount, now + expiry))
            (count,) = db.execute("SELECT count FROM windows WHERE key = ?", (key,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(count)

    def get(self, key: str) -> int:
        row = self._connection().execute(
            "SELECT count FROM windows WHERE key = ? AND expiry > ?", (key, time.time())
        ).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._connection().execute(
            "SELECT expiry FROM windows WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        try:
            self._connection().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def reset(self) -> int | None:
        return self._connection().execute("DELETE FROM windows").rowcount

    def clear(self, key: str) -> None:
        self._connection().execute("DELETE FROM windows WHERE key = ?", (key,))
