"""Container logs as LogLines: read at once, or followed without blocking the event loop.

The engine multiplexes stdout and stderr on one stream and the SDK merges them, so each container
is read twice, once per stream, which tells every line's origin. A followed stream blocks until the
next line, so each one is drained by a daemon thread of its own that hands lines to the event loop
through a memory object stream (with back-pressure: a slow reader holds the thread, not memory).
Closing the async iterator closes the engine's streams, which wakes the threads and ends them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream
from docker import APIClient  # type: ignore[import-untyped, unused-ignore]
from docker.types.daemon import CancellableStream  # type: ignore[import-untyped, unused-ignore]

from ctrlplane.provisioning.contract import LogLine
from ctrlplane_docker.observe import parse_time

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")
THREAD_PREFIX = "ctrlplane-docker-logs"
BUFFERED_LINES = 256


@dataclass(frozen=True)
class Source:
    """One container whose logs are read, and the replica index its lines carry."""

    container_id: str
    name: str
    replica: int


def parse_line(raw: bytes, *, replica: int, stream: Stream) -> LogLine:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    stamp, _, message = text.partition(" ")
    timestamp = parse_time(stamp)
    if timestamp is None:
        timestamp, message = datetime.now(UTC), text
    return LogLine(timestamp=timestamp, replica=replica, stream=stream, message=message)


def _since_param(since: datetime | None) -> float | None:
    if since is None:
        return None
    aware = since if since.tzinfo else since.replace(tzinfo=UTC)
    return max(aware.timestamp(), 0.000001)


def read_logs(api: APIClient, sources: Iterable[Source], *, tail: int | None, since: datetime | None) -> list[LogLine]:
    """Every replica's lines merged oldest first; ``tail`` keeps the last lines of the merge."""
    if tail is not None and tail <= 0:
        return []
    since = since if since is None or since.tzinfo else since.replace(tzinfo=UTC)
    lines: list[LogLine] = []
    for source in sources:
        for stream in STREAMS:
            data = api.logs(
                source.container_id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                timestamps=True,
                tail="all" if tail is None else tail,
                since=_since_param(since),
            )
            lines += [parse_line(raw, replica=source.replica, stream=stream) for raw in data.split(b"\n") if raw]
    # The engine's ``since`` has whole-second precision on some versions; filter exactly here.
    if since is not None:
        lines = [line for line in lines if line.timestamp >= since]
    lines.sort(key=lambda line: (line.timestamp, line.replica))
    return lines if tail is None else lines[-tail:]


def open_streams(
    api: APIClient, sources: Iterable[Source], *, tail: int | None, since: datetime | None
) -> list[tuple[Source, Stream, CancellableStream[bytes]]]:
    opened: list[tuple[Source, Stream, CancellableStream[bytes]]] = []
    try:
        for source in sources:
            for stream in STREAMS:
                opened.append(
                    (
                        source,
                        stream,
                        api.logs(
                            source.container_id,
                            stdout=stream == "stdout",
                            stderr=stream == "stderr",
                            stream=True,
                            follow=True,
                            timestamps=True,
                            tail="all" if tail is None else max(tail, 0),
                            since=_since_param(since),
                        ),
                    )
                )
    except BaseException:
        close_streams(stream for _, _, stream in opened)
        raise
    return opened


def close_streams(streams: Iterable[CancellableStream[bytes]]) -> None:
    """Shut the streams' sockets down; a thread blocked reading one wakes with end-of-stream.
    Non-blocking: a socket shutdown does not wait for the peer."""
    for stream in streams:
        # An already closed or half torn down stream has no reader left to wake.
        with contextlib.suppress(Exception):
            stream.close()


def _pump(
    stream: CancellableStream[bytes],
    source: Source,
    kind: Stream,
    send: MemoryObjectSendStream[LogLine],
    token: anyio.lowlevel.EventLoopToken,
) -> None:
    """Thread body: read one followed stream and send its lines to the event loop until the stream
    ends (container stopped, stream closed) or the reader has gone away."""
    pending = b""
    try:
        for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                if raw:
                    anyio.from_thread.run(send.send, parse_line(raw, replica=source.replica, stream=kind), token=token)
        if pending:
            anyio.from_thread.run(send.send, parse_line(pending, replica=source.replica, stream=kind), token=token)
    except Exception:  # noqa: BLE001
        pass  # the reader closed its end, the engine dropped the stream or the loop is gone: nobody to tell
    finally:
        with contextlib.suppress(Exception):  # the event loop may have shut down already
            anyio.from_thread.run_sync(send.close, token=token)


async def follow(
    opened: Sequence[tuple[Source, Stream, CancellableStream[bytes]]], *, since: datetime | None
) -> AsyncGenerator[LogLine, None]:
    """Yield the lines of already opened follow streams as they arrive; closing this iterator (or
    breaking out of it) closes the streams and so ends their threads."""
    since = since if since is None or since.tzinfo else since.replace(tzinfo=UTC)
    token = anyio.lowlevel.current_token()
    send, receive = anyio.create_memory_object_stream[LogLine](max_buffer_size=BUFFERED_LINES)
    try:
        with send:
            for source, kind, stream in opened:
                threading.Thread(
                    target=_pump,
                    args=(stream, source, kind, send.clone(), token),
                    name=f"{THREAD_PREFIX}-{source.name}-{kind}",
                    daemon=True,
                ).start()
        async with receive:
            async for line in receive:
                if since is None or line.timestamp >= since:
                    yield line
    finally:
        receive.close()
        close_streams(stream for _, _, stream in opened)
