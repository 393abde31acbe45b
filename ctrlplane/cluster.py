"""Several replicas on one database: leader election, cross-replica wake-ups, and the SQLite rule.

On PostgreSQL any number of ``ctrlplane serve`` processes share one database:

* **Operations** are claimed with ``FOR UPDATE SKIP LOCKED`` and leases (``operations/queue.py``),
  so every replica's workers take part and a dead replica's operations are finished by another
  once their lease expires.
* **Singleton loops** (the reconciler, provider health, and whatever ``Background.leader_only``
  wraps) run on one elected leader. ``LeaderElection`` holds a session-level advisory lock on a
  dedicated connection outside the pool. A leader that dies closes that connection and the
  server frees the lock at once; followers retry every third of ``CTRLPLANE_LEADER_LEASE_SECONDS``,
  so one of them leads within one lease period. A leader pings its connection on the same
  period and steps down (cancelling its singleton loops) when the ping fails or times out: the
  lock may already be someone else's. A brief overlap (at most two thirds of a lease, only when
  the leader's connection is cut while the process lives on) is harmless because every singleton
  loop takes its decisions under row locks, as it must anyway.
* **Row-cache invalidations** (``rowcache.py``) arrive on the same connection: PostgreSQL's row
  triggers (migration 0012) notify ``ctrlplane_rows`` with ``table:id`` at commit. The cache is
  live only while this connection listens, and is cleared whenever it (re)connects. A write
  request's ``barrier`` sends a sync token on ``ctrlplane_rows`` after its commit and waits for
  it to come back: notifications arrive in commit order, so by then its own invalidations have
  been applied (concurrent barriers share one token, a round, with one timeout). A cached API
  key's read asks for a round when it reads the key and waits for it once its answer is ready.
* **Wake-ups** cross replicas with ``LISTEN/NOTIFY``: ``NotifyRelay`` listens on a dedicated
  connection and wakes the local ``events`` and ``work`` signals when another replica notifies
  them; a local ``Signal.notify()`` (called after each commit that appends events or queues work)
  sends a ``NOTIFY``. Sends are coalesced and never block the caller. Notifications missed while
  the connection is down are covered by the waiters' polling, and every signal is woken once
  after a reconnect.

On SQLite one process is the supported mode: ``SingleProcessLock`` takes an exclusive ``flock``
on ``<database file>.lock`` when ``ctrlplane serve`` starts, so a second server on the same file
is refused with a message naming the holder. A lock file, not a database lock, because SQLite's
own locks are per transaction and a long-held one would block the first server's writes too; and
the kernel frees a ``flock`` when its process dies, even by SIGKILL, so a crash never leaves a
stale lock behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy.engine import make_url

from ctrlplane.rowcache import RowCache
from ctrlplane.signals import Signal

log = structlog.get_logger("ctrlplane.cluster")

LEADER_LOCK_KEY = zlib.crc32(b"ctrlplane:leader")
NOTIFY_CHANNEL = "ctrlplane_signals"
ROWS_CHANNEL = "ctrlplane_rows"
BARRIER_TIMEOUT_SECONDS = 2.0
RECONNECT_SECONDS = 1.0
# What a lost or crashed PostgreSQL raises on a long-lived connection; the loops reconnect on them.
# InternalClientError: asyncpg's protocol caught mid-operation by the server's crash ("cannot switch
# to state 12; another operation is in progress").
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL as a plain libpq DSN asyncpg connects with."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class LeaderElection:
    """Who runs the singleton loops. ``run`` campaigns forever; ``wait_until(True/False)`` waits
    for this process to become or stop being the leader. Without a DSN (SQLite: one process) the
    process leads as soon as ``run`` starts."""

    def __init__(self, dsn: str | None, *, lease_seconds: float, replica: str) -> None:
        self.dsn = dsn
        self.lease_seconds = lease_seconds
        self.replica = replica
        self.is_leader = False
        self._changed = asyncio.Event()

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        log.info("leader_elected" if leader else "leader_stepped_down", replica=self.replica)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, leader: bool) -> None:
        while self.is_leader != leader:
            await self._changed.wait()

    async def run(self) -> None:
        dsn = self.dsn
        try:
            if dsn is None:
                self._set(True)
                await asyncio.Event().wait()
            while dsn is not None:
                try:
                    await self._campaign(dsn)
                except CONNECTION_ERRORS as exc:
                    log.warning("leader_connection_lost", replica=self.replica, error=f"{type(exc).__name__}: {exc}")
                self._set(False)
                await asyncio.sleep(RECONNECT_SECONDS)
        finally:
            self._set(False)

    async def _campaign(self, dsn: str) -> None:
        period = self.lease_seconds / 3
        connection = await asyncpg.connect(dsn, timeout=self.lease_seconds)
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _c: lost.set())
        try:
            while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY, timeout=period):
                await asyncio.sleep(period)
            self._set(True)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), period)
                await connection.fetchval("SELECT 1", timeout=period)
            raise ConnectionError("the leader's connection was closed")
        finally:
            self._set(False)
            connection.terminate()


class NotifyRelay:
    """Carries ``Signal`` wake-ups between replicas over PostgreSQL ``LISTEN/NOTIFY``."""

    def __init__(
        self,
        dsn: str,
        signals: Mapping[str, Signal],
        *,
        replica: str,
        ping_seconds: float = 10.0,
        rows: RowCache | None = None,
    ) -> None:
        self.dsn = dsn
        self.signals = dict(signals)
        self.replica = replica
        self.ping_seconds = ping_seconds
        self.rows = rows
        self.connected = asyncio.Event()
        self._pending: dict[str, set[str] | None] = {}
        """Wake-ups to send, by signal: the tables they name, or None for any."""
        self._send = asyncio.Event()
        self.backend_pid: int | None = None
        """The PostgreSQL backend of the LISTEN connection while connected (for diagnostics)."""
        self._nonce = secrets.token_hex(8)  # this relay's sync tokens, whatever the replica's name
        self._sync_round = 0
        self._sync_wanted = False
        self._sync_done: dict[int, asyncio.Event] = {}
        self._sync_timers: dict[int, asyncio.TimerHandle] = {}
        for name, signal in self.signals.items():
            signal.publish = self._publisher(name)

    def barrier(self) -> asyncio.Event:
        """Ask for a sync round now: the event is set once every row notification committed before
        this call has been applied here. Concurrent callers share a round (one token, one event),
        and a round that is not back within ``BARRIER_TIMEOUT_SECONDS`` is given up by clearing the
        cache instead (its event set all the same). The round is asked for at the call, so a caller
        may do other work before it waits."""
        number = self._sync_round
        done = self._sync_done.get(number)
        if done is None:
            done = self._sync_done[number] = asyncio.Event()
            self._sync_timers[number] = asyncio.get_running_loop().call_later(
                BARRIER_TIMEOUT_SECONDS, self._barrier_timed_out, number
            )
            self._sync_wanted = True
            self._send.set()
        return done

    def _barrier_timed_out(self, number: int) -> None:
        log.warning("row_cache_barrier_timeout", replica=self.replica)
        if self.rows is not None:
            self.rows.clear()
        self._release_barriers(number)

    def _release_barriers(self, up_to: int | None = None) -> None:
        for number in [n for n in self._sync_done if up_to is None or n <= up_to]:
            self._sync_done.pop(number).set()
            self._sync_timers.pop(number).cancel()

    def _row_changed(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith("sync:"):
            nonce, _, number = payload[len("sync:") :].partition(":")
            if nonce == self._nonce and number.isdigit():
                self._release_barriers(int(number))
            return
        if self.rows is not None:
            self.rows.invalidate_payload(payload)

    def _rows_connected(self, up: bool) -> None:
        if self.rows is None:
            return
        self.rows.connected(up)
        self.rows.barrier_hook = self.barrier if up else None
        if not up:
            self._release_barriers()  # nothing is served from the cache until it reconnects

    def _publisher(self, name: str) -> Callable[[Collection[str] | None], None]:
        def publish(tables: Collection[str] | None) -> None:
            if name in self._pending:
                known = self._pending[name]
                self._pending[name] = None if known is None or tables is None else known | set(tables)
            else:
                self._pending[name] = None if tables is None else set(tables)
            self._send.set()

        return publish

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        """``name:replica`` wakes every waiter of that signal; ``name:replica|table,table`` those
        whose interest meets the tables (an older replica's ``name:replica`` stays understood)."""
        name, _, rest = payload.partition(":")
        sender, bar, listed = rest.partition("|")
        signal = self.signals.get(name)
        if signal is not None and sender != self.replica:
            signal.wake(frozenset(listed.split(",")) - {""} if bar else None)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._relay()
                except CONNECTION_ERRORS as exc:
                    log.warning("notify_connection_lost", replica=self.replica, error=f"{type(exc).__name__}: {exc}")
                self.connected.clear()
                self._rows_connected(False)
                await asyncio.sleep(RECONNECT_SECONDS)
        finally:
            self._rows_connected(False)
            for signal in self.signals.values():
                signal.publish = None

    async def _relay(self) -> None:
        connection = await asyncpg.connect(self.dsn, timeout=self.ping_seconds)
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _c: lost.set())
        try:
            self.backend_pid = connection.get_server_pid()
            await connection.add_listener(NOTIFY_CHANNEL, self._received)
            if self.rows is not None:
                await connection.add_listener(ROWS_CHANNEL, self._row_changed)
            self.connected.set()
            self._rows_connected(True)  # listening now: what was cached before is dropped
            for signal in self.signals.values():
                signal.wake()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._send.wait(), self.ping_seconds)
                self._send.clear()
                pending, self._pending = self._pending, {}
                for name, tables in sorted(pending.items()):
                    listed = "" if tables is None else "|" + ",".join(sorted(tables))
                    await connection.execute(
                        "SELECT pg_notify($1, $2)",
                        NOTIFY_CHANNEL,
                        f"{name}:{self.replica}{listed}",
                        timeout=self.ping_seconds,
                    )
                if self._sync_wanted:
                    # one turn of the loop first: the requests already scheduled ask for this round
                    # too, instead of for the next (under load, fewer and fuller rounds)
                    await asyncio.sleep(0)
                    self._sync_wanted = False
                    number, self._sync_round = self._sync_round, self._sync_round + 1
                    token = f"sync:{self._nonce}:{number}"
                    await connection.execute("SELECT pg_notify($1, $2)", ROWS_CHANNEL, token, timeout=self.ping_seconds)
                elif not pending:
                    await connection.fetchval("SELECT 1", timeout=self.ping_seconds)
            raise ConnectionError("the LISTEN connection was closed")
        finally:
            connection.terminate()


class AnotherServerRunning(RuntimeError):
    """A second server was started on a SQLite database another process serves."""


class SingleProcessLock:
    """An exclusive ``flock`` on ``<sqlite file>.lock``, held for the life of the server."""

    def __init__(self, database_path: Path) -> None:
        self.path = database_path.with_name(database_path.name + ".lock")
        self._file: TextIO | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AnotherServerRunning(
                f"another ctrlplane server (pid {holder}) already serves the SQLite database "
                f"{self.path.with_suffix('')}; SQLite supports one server process (lock file {self.path}). "
                "Stop the other server, or use PostgreSQL (CTRLPLANE_DATABASE_URL) to run several replicas."
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.close()


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL, or None for PostgreSQL and in-memory databases."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()
