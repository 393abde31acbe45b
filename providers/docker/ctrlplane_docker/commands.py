"""Running a command inside a replica with a deadline.

The SDK's ``exec_run`` waits for the command however long it runs, and its socket reads wait
forever, so a worker thread stuck on a hung command could never be reclaimed. Here the exec's
multiplexed stream is read straight from its socket, each read bounded by the time left; past the
deadline the socket is closed and the thread returns. The engine has no call to kill an exec'd
process, so a command that overran keeps running inside the container until it ends by itself.
"""

from __future__ import annotations

import select
import time
from typing import Any

from docker import APIClient  # type: ignore[import-untyped, unused-ignore]

from ctrlplane.provisioning.contract import ExecResult
from ctrlplane.provisioning.errors import ProviderError

MAX_OUTPUT_BYTES = 1024 * 1024
HEADER_BYTES = 8


def _read(sock: Any, size: int, deadline: float) -> bytes:
    """Up to ``size`` bytes once the socket is readable; b"" at end of stream."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    readable, _, _ = select.select([sock], [], [], remaining)
    if not readable:
        raise TimeoutError
    data = sock.recv(size) if hasattr(sock, "recv") else sock.read(size)
    return bytes(data or b"")


def _read_exactly(sock: Any, size: int, deadline: float) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = _read(sock, size - len(data), deadline)
        if not chunk:
            return None
        data += chunk
    return data


def run_command(api: APIClient, container_id: str, command: list[str], *, timeout: float) -> ExecResult:
    """Run ``command`` in the container; stdout and stderr come back interleaved as one text."""
    deadline = time.monotonic() + timeout
    exec_id = str(api.exec_create(container_id, command, stdout=True, stderr=True)["Id"])
    sock: Any = api.exec_start(exec_id, socket=True)
    output = bytearray()
    try:
        while (header := _read_exactly(sock, HEADER_BYTES, deadline)) is not None:
            payload = _read_exactly(sock, int.from_bytes(header[4:8], "big"), deadline)
            if payload is None:
                break
            output += payload[: max(MAX_OUTPUT_BYTES - len(output), 0)]
    except TimeoutError:
        raise ProviderError(
            f"command {command!r} did not finish within {timeout:g}s", details={"timeout": timeout}
        ) from None
    finally:
        # The exec's connection is never handed back to the SDK's pool: close the socket itself.
        underlying = getattr(sock, "_sock", None)
        sock.close()
        if underlying is not None:
            underlying.close()
    # The stream ends as the process exits; the engine may record the exit code a moment later.
    while True:
        inspected = api.exec_inspect(exec_id)
        if not inspected.get("Running") and inspected.get("ExitCode") is not None:
            return ExecResult(exit_code=int(inspected["ExitCode"]), output=output.decode("utf-8", "replace"))
        if time.monotonic() >= deadline:
            raise ProviderError(f"command {command!r} did not finish within {timeout:g}s", details={"timeout": timeout})
        time.sleep(0.02)
