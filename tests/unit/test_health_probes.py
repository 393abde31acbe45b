"""Health-check targets and probes against real loopback sockets: what a target may name, and that
a probe only ever connects to the replica's endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from ctrlplane.health.probes import Target, parse_target, probe, run_check
from ctrlplane.health.scheduler import next_run
from ctrlplane.provisioning.contract import Endpoint, ExecResult, PortSpec, ReplicaStatus, Resources, WorkloadSpec
from ctrlplane.settings import Settings, SettingsError
from tests.fakes import FakeProvider, FakeReplica


@pytest.mark.parametrize(
    ("type", "target", "expected"),
    [
        ("http", "http://localhost:8080/healthz", Target("http", 8080, "/healthz", "localhost:8080")),
        ("http", "http://LOCALHOST:8080/a?b=c", Target("http", 8080, "/a?b=c", "localhost:8080")),
        ("http", "http://localhost/", Target("http", 80, "/", "localhost:80")),
        ("tcp", "localhost:5432", Target("tcp", 5432)),
        ("tcp", "tcp://localhost:5432", Target("tcp", 5432)),
        ("tcp", "5432", Target("tcp", 5432)),
        ("command", "cat '/tmp/a file' -n", Target("command", argv=("cat", "/tmp/a file", "-n"))),
    ],
)
def test_valid_targets(type: str, target: str, expected: Target) -> None:
    assert parse_target(type, target) == expected


@pytest.mark.parametrize(
    ("type", "target"),
    [
        ("http", "http://example.com:8080/"),
        ("http", "http://127.0.0.1:8080/"),
        ("http", "http://[::1]:8080/"),
        ("http", "http://localhost.:8080/"),
        ("http", "http://localhost.evil.com:8080/"),
        ("http", "http://user@localhost:8080/"),
        ("http", "ftp://localhost:8080/"),
        ("http", "localhost:8080"),
        ("http", "http://localhost:0/"),
        ("http", "http://localhost:8080\r\nX: y/"),
        ("tcp", "example.com:80"),
        ("tcp", "localhost:"),
        ("tcp", "localhost:http"),
        ("command", ""),
        ("command", "echo 'open"),
        ("grpc", "localhost:1"),
    ],
)
def test_invalid_targets(type: str, target: str) -> None:
    with pytest.raises(ValueError):
        parse_target(type, target)


@dataclass
class Server:
    """A loopback HTTP server answering ``GET /<status>`` with that status; it remembers requests."""

    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0


@pytest.fixture
async def http_server() -> AsyncIterator[Server]:
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        server.requests.append(head)
        path = head.split(b" ")[1].decode()
        if path == "/hang":
            await asyncio.sleep(30)
        status = int(path.strip("/").split("?")[0] or 200)
        extra = b"Location: http://example.com/\r\n" if 300 <= status < 400 else b""
        writer.write(b"HTTP/1.1 %d X\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n" % (status, extra))
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    yield server
    listener.close()


def replica(
    host_port: int, *, host: str = "127.0.0.1", container_port: int = 8080, state: str = "running"
) -> ReplicaStatus:
    endpoint = Endpoint(
        container_port=container_port, protocol="tcp", host=host, host_port=host_port, url=f"http://{host}:{host_port}"
    )
    return ReplicaStatus(replica=0, generation=1, name="r0", state=state, endpoints=(endpoint,))  # type: ignore[arg-type]


async def test_http_probe_goes_to_the_replicas_loopback_port_with_the_targets_host(http_server: Server) -> None:
    fake = FakeProvider()
    ok = await probe(
        fake, "inst", parse_target("http", "http://localhost:8080/204"), replica(http_server.port), timeout=2
    )
    assert (ok.ok, ok.message) == (True, "HTTP 204")
    assert b"host: localhost:8080" in http_server.requests[0].lower()
    failing = await probe(
        fake, "inst", parse_target("http", "http://localhost:8080/503"), replica(http_server.port), timeout=2
    )
    assert (failing.ok, failing.message) == (False, "HTTP 503")


async def test_http_probe_counts_a_redirect_as_healthy_and_never_follows_it(http_server: Server) -> None:
    fake = FakeProvider()
    result = await probe(
        fake, "inst", parse_target("http", "http://localhost:8080/302"), replica(http_server.port), timeout=2
    )
    assert (result.ok, result.message) == (True, "HTTP 302")
    assert http_server.connections == 1


async def test_an_endpoint_off_the_loopback_is_never_contacted(http_server: Server) -> None:
    fake = FakeProvider()
    target = parse_target("http", "http://localhost:8080/200")
    result = await probe(fake, "inst", target, replica(http_server.port, host="192.0.2.10"), timeout=2)
    assert not result.ok
    assert "not on the loopback" in result.message
    assert http_server.connections == 0
    unpublished = await probe(fake, "inst", target, replica(http_server.port, container_port=9090), timeout=2)
    assert (unpublished.ok, unpublished.message) == (False, "port 8080 is not published by replica 0")


async def test_http_probe_times_out(http_server: Server) -> None:
    result = await probe(
        FakeProvider(),
        "inst",
        parse_target("http", "http://localhost:8080/hang"),
        replica(http_server.port),
        timeout=0.3,
    )
    assert (result.ok, result.message) == (False, "no answer within 0.3s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_tcp_probe_passes_on_a_listener_and_fails_on_a_closed_port_or_an_immediate_close(
    http_server: Server,
) -> None:
    fake, target = FakeProvider(), parse_target("tcp", "localhost:8080")
    assert (await probe(fake, "inst", target, replica(http_server.port), timeout=2)).ok
    refused = await probe(fake, "inst", target, replica(free_port()), timeout=2)
    assert not refused.ok

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    closer = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    try:
        closed = await probe(fake, "inst", target, replica(closer.sockets[0].getsockname()[1]), timeout=2)
    finally:
        closer.close()
    assert (closed.ok, closed.message) == (False, "the connection was closed at once: nothing listens on the port")


async def test_a_replica_that_does_not_run_fails_without_a_connection(http_server: Server) -> None:
    result = await probe(
        FakeProvider(), "inst", parse_target("tcp", "8080"), replica(http_server.port, state="exited"), timeout=2
    )
    assert (result.ok, result.message) == (False, "replica 0 is exited")
    assert http_server.connections == 0


async def test_run_check_runs_a_command_in_every_replica_of_the_generation() -> None:
    fake = FakeProvider()
    spec = WorkloadSpec(
        instance_id="inst_a", tenant_id="ten_a", name="a", image="img", resources=Resources(250, 64), replicas=2,
        ports=(PortSpec(8080),), env={"MARK": "one"},
    )  # fmt: skip
    await fake.provision(spec)
    seen: list[tuple[int, int]] = []

    def handler(target: FakeReplica, command: list[str]) -> ExecResult:
        seen.append((target.generation, target.replica))
        return ExecResult(exit_code=0 if target.replica == 0 else 2, output="")

    fake.exec_handler = handler
    result = await run_check(fake, "inst_a", 1, parse_target("command", "ready"), timeout=1)
    assert sorted(seen) == [(1, 0), (1, 1)]
    assert (result.ok, result.message) == (False, "replica 0: exit 0; replica 1: exit 2")
    missing = await run_check(fake, "inst_a", 7, parse_target("command", "ready"), timeout=1)
    assert (missing.ok, missing.message) == (False, "no replica of generation 7 exists")


def test_health_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CTRLPLANE_HEALTH_CONCURRENCY": "4",
            "CTRLPLANE_HEALTH_TICK_SECONDS": "0.5",
            "CTRLPLANE_HEALTH_JITTER": "0.2",
            "CTRLPLANE_HEALTH_RESULT_RETENTION": "36h",
            "CTRLPLANE_HEALTH_RESULTS_PER_CHECK": "500",
            "CTRLPLANE_HEALTH_PRUNE_INTERVAL_SECONDS": "30",
        }
    )
    assert (settings.health_concurrency, settings.health_tick_seconds, settings.health_jitter) == (4, 0.5, 0.2)
    assert (settings.health_result_retention_seconds, settings.health_results_per_check) == (36 * 3600, 500)
    assert settings.health_prune_interval_seconds == 30


@pytest.mark.parametrize(
    "environ",
    [
        {"CTRLPLANE_HEALTH_CONCURRENCY": "0"},
        {"CTRLPLANE_HEALTH_JITTER": "0.9"},
        {"CTRLPLANE_HEALTH_RESULT_RETENTION": "a week"},
        {"CTRLPLANE_HEALTH_RESULT_RETENTION": "0s"},
        {"CTRLPLANE_HEALTH_RESULTS_PER_CHECK": "0"},
        {"CTRLPLANE_HEALTH_TICK_SECONDS": "-1"},
    ],
)
def test_bad_health_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(environ)


def test_next_runs_spread_within_the_jitter() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    offsets = {(next_run(now, 30, 0.1) - now).total_seconds() for _ in range(200)}
    assert all(27 <= offset <= 33 for offset in offsets)
    assert len(offsets) > 100
    assert {(next_run(now, 30, 0.0) - now).total_seconds()} == {30.0}
