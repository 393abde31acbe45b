"""Router request reporting: Caddy's JSON access log, received, attributed and stored.

Caddy writes one JSON line per request it handled to a ``net`` log writer pointed at the sink
(``AccessSink``), a loopback TCP listener this process runs (``CTRLPLANE_ROUTER_ACCESS_LOG_LISTEN``).
Each line is parsed (``parse_line``), attributed to the instance whose hostname it named and to the
longest of that instance's route paths its path falls under (``HostTable``), and added to a
``RequestBook`` in memory. Every ``CTRLPLANE_ROUTER_REPORT_FLUSH_SECONDS`` the book is drained into
the database in one transaction (``store``): one ``http_request_samples`` row per instance, route,
method and status class that had requests, and each instance's ``last_request_at`` moved forward,
so the cost per request is a dictionary update, never a write.

Per replica: the reverse proxy's ``upstream roundtrip`` lines (Caddy 2.6 and later log them at DEBUG on
``http.handlers.reverse_proxy``, with the dial address, the upstream's status and its time to
response headers; its access log names no upstream) go to the same sink, are parsed by
``parse_roundtrip`` and attributed through the hostname and the dial address to one replica of one
generation (``Destination.upstreams``), and are stored per flush in ``upstream_request_samples``:
what the deploy engine's traffic analysis reads (``deployments/analysis.py``).

Request bytes are the body bytes Caddy read (``bytes_read``, logged by Caddy 2.7 and later, the one
``tools/caddy/build.sh`` builds); an older Caddy's line has none, and its ``Content-Length`` header
stands in, so a chunked request counts 0 bytes there (Debian's 2.6.2).

Labels stay bounded: ``method`` is one of ``METHODS`` or ``OTHER``, ``status_class`` one of
``1xx`` to ``5xx``, ``route`` one of the instance's route paths (``/`` included); requests to a
hostname no instance serves are counted (``unattributed``) and dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import structlog
from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.instances.models import Instance
from ctrlplane.network.models import HttpRequestSample, InstanceTraffic, UpstreamRequestSample

log = structlog.get_logger("ctrlplane.router.access")

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds; a last, open bucket holds the slower requests."""
MAX_LINE_BYTES = 1024 * 1024
READ_BYTES = 256 * 1024


class _Request(msgspec.Struct):
    method: str = ""
    host: str = ""
    uri: str = ""
    headers: dict[str, list[str]] = msgspec.field(default_factory=dict)


class _Entry(msgspec.Struct):
    ts: float = 0.0
    logger: str = ""
    request: _Request | None = None
    duration: float = 0.0
    size: int = 0
    status: int = 0
    bytes_read: int | None = None
    """request body bytes Caddy read (2.7 and later); None from an older Caddy"""


class AccessRecord(msgspec.Struct, frozen=True):
    """One request as Caddy reported it."""

    at: float
    host: str
    method: str
    path: str
    status: int
    duration_seconds: float
    request_bytes: int
    response_bytes: int


_decoder = msgspec.json.Decoder(_Entry)


class _Roundtrip(msgspec.Struct):
    msg: str = ""
    upstream: str = ""
    duration: float = 0.0
    status: int = 0
    request: _Request | None = None


class RoundtripRecord(msgspec.Struct, frozen=True):
    """One round trip of the reverse proxy to one upstream (a retried request has several)."""

    host: str
    upstream: str
    status: int
    duration_seconds: float


_roundtrip_decoder = msgspec.json.Decoder(_Roundtrip)
ROUNDTRIP_MARK = b'"upstream roundtrip"'
PROXY_LOGGER_MARK = b'"logger":"http.handlers.reverse_proxy"'


def _hostname(raw: str) -> str:
    host = raw.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def parse_roundtrip(line: bytes) -> RoundtripRecord | None:
    """The reverse proxy's ``upstream roundtrip`` debug line; None for anything else."""
    if ROUNDTRIP_MARK not in line:
        return None
    try:
        entry = _roundtrip_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if entry.msg != "upstream roundtrip" or entry.request is None or not entry.upstream or entry.status <= 0:
        return None
    return RoundtripRecord(
        host=_hostname(entry.request.host),
        upstream=entry.upstream,
        status=entry.status,
        duration_seconds=max(0.0, entry.duration),
    )


def parse_line(line: bytes) -> AccessRecord | None:
    """The request of one access-log line; None for anything else (other loggers, garbage)."""
    try:
        entry = _decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    request = entry.request
    if request is None or not entry.logger.startswith("http.log.access") or entry.status <= 0:
        return None
    host = _hostname(request.host)
    length = 0
    if entry.bytes_read is not None:
        length = max(0, entry.bytes_read)
    else:  # Caddy before 2.7: the declared length, so a chunked request counts 0
        for name, values in request.headers.items():
            if name.lower() == "content-length" and values:
                with contextlib.suppress(ValueError):
                    length = max(0, int(values[0]))
    return AccessRecord(
        at=entry.ts,
        host=host,
        method=request.method.upper(),
        path=request.uri.split("?", 1)[0] or "/",
        status=entry.status,
        duration_seconds=max(0.0, entry.duration),
        request_bytes=length,
        response_bytes=max(0, entry.size),
    )


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def status_class(status: int) -> str:
    return f"{min(max(status // 100, 1), 5)}xx"


def bucket_index(seconds: float) -> int:
    return bisect.bisect_left(DURATION_BUCKETS, seconds)


def route_of(path: str, routes: Sequence[str]) -> str:
    """The longest of ``routes`` that ``path`` falls under, as Caddy matches them (``/`` always)."""
    best = "/"
    for route in routes:
        prefix = route.rstrip("/")
        if (path == route or path.startswith(prefix + "/")) and len(route) > len(best):
            best = route
    return best


@dataclass(frozen=True)
class Destination:
    instance_id: str
    tenant_id: str
    routes: tuple[str, ...]
    upstreams: dict[str, tuple[int, int]] = field(default_factory=dict)
    """dial address → (generation, replica) of the instance's upstreams in rotation"""


@dataclass
class HostTable:
    """Hostname → instance, replaced whole by the router each time it reads the database."""

    hosts: dict[str, Destination] = field(default_factory=dict)

    def replace(self, hosts: dict[str, Destination]) -> None:
        self.hosts = hosts

    def find(self, host: str) -> Destination | None:
        return self.hosts.get(host)


@dataclass
class Tally:
    requests: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    request_bytes: int = 0
    response_bytes: int = 0

    def add(self, record: AccessRecord) -> None:
        self.requests += 1
        self.duration_sum += record.duration_seconds
        self.buckets[bucket_index(record.duration_seconds)] += 1
        self.request_bytes += record.request_bytes
        self.response_bytes += record.response_bytes


Key = tuple[str, str, str, str, str]
"""(instance, tenant, route, method, status class)"""
Listener = Callable[[Destination, Key, AccessRecord], None]
"""Told of every attributed request (the Prometheus counters)."""


@dataclass
class ReplicaTally:
    requests: int = 0
    errors: int = 0
    """5xx answers"""
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def add(self, record: RoundtripRecord) -> None:
        self.requests += 1
        self.errors += record.status >= 500
        self.buckets[bucket_index(record.duration_seconds)] += 1

    def merge(self, other: ReplicaTally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


ReplicaKey = tuple[str, str, int, int]
"""(instance, tenant, generation, replica)"""


@dataclass
class Batch:
    tallies: dict[Key, Tally]
    last_request: dict[str, tuple[str, float]]
    """instance → (tenant, epoch seconds of its newest request)"""
    replicas: dict[ReplicaKey, ReplicaTally] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tallies or self.last_request or self.replicas)


class RequestBook:
    """Requests seen since the last drain, per instance, route, method and status class."""

    def __init__(self, hosts: HostTable) -> None:
        self.hosts = hosts
        self.tallies: dict[Key, Tally] = {}
        self.last_request: dict[str, tuple[str, float]] = {}
        self.replicas: dict[ReplicaKey, ReplicaTally] = {}
        self.unattributed = 0
        self.listeners: list[Listener] = []

    def add(self, record: AccessRecord) -> Destination | None:
        destination = self.hosts.find(record.host)
        if destination is None:
            self.unattributed += 1
            return None
        key = (
            destination.instance_id,
            destination.tenant_id,
            route_of(record.path, destination.routes),
            method_label(record.method),
            status_class(record.status),
        )
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = Tally()
        tally.add(record)
        previous = self.last_request.get(destination.instance_id)
        if previous is None or previous[1] < record.at:
            self.last_request[destination.instance_id] = (destination.tenant_id, record.at)
        for listener in self.listeners:
            listener(destination, key, record)
        return destination

    def add_roundtrip(self, record: RoundtripRecord) -> None:
        destination = self.hosts.find(record.host)
        owner = destination.upstreams.get(record.upstream) if destination is not None else None
        if destination is None or owner is None:
            return
        key = (destination.instance_id, destination.tenant_id, owner[0], owner[1])
        tally = self.replicas.get(key)
        if tally is None:
            tally = self.replicas[key] = ReplicaTally()
        tally.add(record)

    def drain(self) -> Batch:
        batch = Batch(self.tallies, self.last_request, self.replicas)
        self.tallies, self.last_request, self.replicas = {}, {}, {}
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch that could not be stored, so the next flush carries it."""
        for key, tally in batch.tallies.items():
            mine = self.tallies.setdefault(key, Tally())
            mine.requests += tally.requests
            mine.duration_sum += tally.duration_sum
            mine.buckets = [a + b for a, b in zip(mine.buckets, tally.buckets, strict=True)]
            mine.request_bytes += tally.request_bytes
            mine.response_bytes += tally.response_bytes
        for instance_id, (tenant_id, at) in batch.last_request.items():
            previous = self.last_request.get(instance_id)
            if previous is None or previous[1] < at:
                self.last_request[instance_id] = (tenant_id, at)
        for replica_key, replica_tally in batch.replicas.items():
            self.replicas.setdefault(replica_key, ReplicaTally()).merge(replica_tally)


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def store(session: AsyncSession, batch: Batch, taken_at: datetime) -> int:
    """Write a drained batch (in the caller's transaction): its sample rows and each instance's
    newer ``last_request_at``. Instances deleted meanwhile are skipped. Returns the rows written."""
    instance_ids = {key[0] for key in batch.tallies} | set(batch.last_request) | {key[0] for key in batch.replicas}
    if not instance_ids:
        return 0
    existing = set((await session.execute(select(Instance.id).where(Instance.id.in_(sorted(instance_ids))))).scalars())
    rows = [
        {
            "instance_id": instance_id,
            "step_seconds": 0,
            "taken_at": taken_at,
            "route": route,
            "method": method,
            "status_class": status,
            "tenant_id": tenant_id,
            "requests": tally.requests,
            "duration_seconds_sum": tally.duration_sum,
            "duration_buckets": tally.buckets,
            "request_bytes": tally.request_bytes,
            "response_bytes": tally.response_bytes,
        }
        for (instance_id, tenant_id, route, method, status), tally in sorted(batch.tallies.items())
        if instance_id in existing
    ]
    insert = _insert(session)
    if rows:
        await session.execute(insert(HttpRequestSample).values(rows).on_conflict_do_nothing())
    replica_rows = [
        {
            "instance_id": instance_id,
            "generation": generation,
            "replica": replica,
            "taken_at": taken_at,
            "tenant_id": tenant_id,
            "requests": tally.requests,
            "errors": tally.errors,
            "duration_buckets": tally.buckets,
        }
        for (instance_id, tenant_id, generation, replica), tally in sorted(batch.replicas.items())
        if instance_id in existing
    ]
    if replica_rows:
        await session.execute(insert(UpstreamRequestSample).values(replica_rows).on_conflict_do_nothing())
    for instance_id, (tenant_id, at) in sorted(batch.last_request.items()):
        if instance_id not in existing:
            continue
        moment = datetime.fromtimestamp(at, UTC)
        statement = insert(InstanceTraffic).values(instance_id=instance_id, tenant_id=tenant_id, last_request_at=moment)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["instance_id"],
                set_={"last_request_at": statement.excluded.last_request_at},
                where=or_(
                    InstanceTraffic.last_request_at.is_(None),
                    InstanceTraffic.last_request_at < statement.excluded.last_request_at,
                ),
            )
        )
    return len(rows)


class AccessSink:
    """The TCP listener Caddy's access log writes to, and the loop that flushes what it heard."""

    def __init__(self, listen: str, book: RequestBook, db: Database, flush_seconds: float) -> None:
        self.listen = listen
        self.book = book
        self.db = db
        self.flush_seconds = flush_seconds
        self.server: asyncio.Server | None = None
        self.lines = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str | None:
        """``host:port`` it listens on, once started."""
        if self.server is None or not self.server.sockets:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        self.server = await asyncio.start_server(self._connection, host, int(port))

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        pending = b""
        try:
            while True:
                # read what arrived, whole lines at once: one wake-up per chunk, not per request
                chunk = await reader.read(READ_BYTES)
                if not chunk:
                    return
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                if len(pending) > MAX_LINE_BYTES:
                    pending = b""
                add, add_roundtrip = self.book.add, self.book.add_roundtrip
                for line in lines:
                    self.lines += 1
                    if ROUNDTRIP_MARK in line:
                        roundtrip = parse_roundtrip(line)
                        if roundtrip is not None:
                            add_roundtrip(roundtrip)
                        continue
                    if PROXY_LOGGER_MARK in line:
                        continue  # the proxy's other debug lines ("selected upstream", ...)
                    record = parse_line(line)
                    if record is not None:
                        add(record)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def flush(self) -> int:
        batch = self.book.drain()
        if not batch:
            return 0
        try:
            async with self.db.write() as session, session.begin():
                return await store(session, batch, datetime.now(UTC))
        except Exception:
            self.book.restore(batch)
            raise

    async def run_flushes(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - kept in memory, stored at the next flush
                log.warning("access_flush_failed", error=str(exc))


def merge_buckets(rows: Iterable[Sequence[int]]) -> list[int]:
    total = [0] * (len(DURATION_BUCKETS) + 1)
    for buckets in rows:
        for i, count in enumerate(buckets[: len(total)]):
            total[i] += count
    return total


def quantile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a bucketed latency distribution, interpolated linearly inside its
    bucket as Prometheus' ``histogram_quantile`` does (the open last bucket answers its lower bound)."""
    count = sum(buckets)
    if count == 0:
        return None
    rank = q * count
    seen = 0.0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i == len(DURATION_BUCKETS):
                return DURATION_BUCKETS[-1]
            lower = DURATION_BUCKETS[i - 1] if i else 0.0
            upper = DURATION_BUCKETS[i]
            return lower + (upper - lower) * ((rank - seen) / n)
        seen += n
    return DURATION_BUCKETS[-1]
