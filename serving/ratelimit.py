"""Per-client rate limits on the routes that take them, counted across every worker.

:class:`RateLimits` holds one fixed-window limit per limited route
(``/predict``, ``/feedback``) and is consulted once per request by
:mod:`serving.hooks`, as every other cross-cutting rule is: a route without a
limit costs one dict lookup, not a pass through a limiter extension (measured:
flask-limiter's global hook took ~90 µs of every request, limited or not, an
eighth of a single-image inference).

Counts live in a ``limits`` storage named by a URI
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

import math
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

#: Response headers that tell a limited client where it stands (the common convention).
LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER = (
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class RateLimited(Exception):
    """A client over a route's limit: answered 429 with ``Retry-After``."""

    def __init__(self, limit: RateLimitItem, retry_after_s: int) -> None:
        super().__init__(f"too many requests from this client: the limit is {limit}; "
                         "see Retry-After")
        self.retry_after_s = retry_after_s


class RateLimits:
    """Fixed-window limits per client on named routes, e.g. ``{"images.predict": "600/minute"}``.

    A limit string may hold several limits (``"10/second;600/minute"``); a
    request counts against each, and is refused by the first it exceeds.
    """

    def __init__(self, storage_uri: str, limits: Mapping[str, str]) -> None:
        self._limiter = FixedWindowRateLimiter(storage_from_string(storage_uri))
        self._limits = {route: parse_many(text) for route, text in limits.items() if text}

    def hit(self, route: str | None, client: str) -> list[tuple[str, str]]:
        """Count a request of ``client`` on ``route``: the headers its answer carries,
        or :class:`RateLimited`. Routes without a limit count nothing."""
        limits = self._limits.get(route or "")
        if not limits:
            return []
        stats = []
        for limit in limits:
            if not self._limiter.hit(limit, route, client):
                reset = self._limiter.get_window_stats(limit, route, client).reset_time
                raise RateLimited(limit, max(1, math.ceil(reset - time.time())))
            stats.append((limit, self._limiter.get_window_stats(limit, route, client)))
        limit, window = min(stats, key=lambda pair: pair[1].remaining)  # the tightest
        return [(LIMIT_HEADER, str(limit.amount)), (REMAINING_HEADER, str(window.remaining)),
                (RESET_HEADER, str(math.ceil(window.reset_time)))]

_SCHEMA = ("CREATE TABLE IF NOT EXISTS windows "
           "(key TEXT PRIMARY KEY, count INTEGER NOT NULL, expiry REAL NOT NULL)")
#: How long a connection waits for another to release the file, in seconds.
LOCK_TIMEOUT_S = 5.0


def _locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL, retrying while another process holds it.

    Workers start together and all switch a fresh file at once. The switch takes
    the file's exclusive lock, and SQLite answers a connection that would deadlock
    waiting for it with "database is locked" at once, without its busy timeout: a
    worker died at start-up that way (2 of 160 starts in a stress test).
    """
    import tenacity

    for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(_locked), reraise=True,
            stop=tenacity.stop_after_delay(LOCK_TIMEOUT_S),
            wait=tenacity.wait_random(0.001, 0.02)):
        with attempt:
            db.execute("PRAGMA journal_mode=WAL")


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
            db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
            _use_wal(db)
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
