"""The README walkthrough, run verbatim against a real ``ctrlplane serve`` (as ``make run`` starts
it: the embedded SQLite database in ``./.ctrlplane``, the real Docker engine).

Every ```bash block between "## Walkthrough" and "## Configuration" runs, in order, in one bash
process (so variables and helpers carry over, as in the terminal the README describes), and its
output must match the plain ``` block that follows it, where ``...`` stands for any text (IDs,
times, ports). A ```python block whose first line is ``# <file name>`` is written to that file
first, as the reader saves it. Every block runs: there is no way to skip one (a
``<!-- readme-test: skip: ... -->`` marker, which an earlier version honoured, now fails the
test). Once the
webhook block has started its receiver in the background, the receiver's ``verified ...`` lines
interleave with later blocks' output (the README says so); they are left out of those comparisons.

The server differs from ``make run``'s only where the README says so or a test must: its own
``CTRLPLANE_CLUSTER_NAME``, port 0 (the blocks read ``CTRLPLANE_PORT``),
``CTRLPLANE_OUTBOUND_ALLOW_CIDRS=127.0.0.0/8`` (the webhook section), and its router: a real Caddy
of the test's own (``tests/network/processes.py``), its admin API and HTTP/HTTPS listeners on free
loopback ports instead of ``localhost:2019``, 80 and 443, so the blocks read ``ROUTER_PORT`` (the
README's way to name a router on another port than 80) and instances' URLs carry that port (the
README's expected outputs leave it as ``...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from docker import DockerClient

from tests.conftest import require_binary
from tests.network.processes import Caddy
from tests.providers.docker_engine import docker_engine, remove_cluster
from tests.waiting import eventually

__all__ = ["docker_engine"]
pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- readme-test: skip")
SERVING = re.compile(r"serving on (http://\S+)")
END = "@@readme-block-end@@"


@dataclass
class Block:
    line: int
    code: str
    expected: str | None
    marked_skip: bool


def walkthrough() -> tuple[list[Block], dict[str, str]]:
    """The walkthrough's bash blocks with their expected output, and the files it asks to save."""
    text = README.read_text()
    start, end = text.index("\n## Walkthrough"), text.index("\n## Configuration")
    blocks: list[Block] = []
    files: dict[str, str] = {}
    previous_end = start
    for fence in FENCE.finditer(text, start, end):
        language, body = fence.group(1), fence.group(2)
        between = text[previous_end : fence.start()]
        previous_end = fence.end()
        if language == "bash":
            line = text.count("\n", 0, fence.start()) + 1
            blocks.append(Block(line, body, None, SKIP.search(between) is not None))
        elif language == "python" and body.startswith("# "):
            files[body.split("\n", 1)[0][2:].strip()] = body
        elif language == "" and blocks and blocks[-1].expected is None and "```bash" not in between:
            blocks[-1].expected = body
    return blocks, files


def matches(expected: str, actual: str) -> bool:
    def lines(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    # "inst_01m8..." stands for any ID of that kind: the digits after the prefix are a time
    expected = re.sub(r"\b([a-z]+_)[0-9a-z]+\.\.\.", r"\1...", expected)
    pattern = ".*?".join(re.escape(piece) for piece in lines(expected).split("..."))
    return re.fullmatch(pattern, lines(actual), re.DOTALL) is not None


def test_the_walkthrough_is_found_with_its_outputs() -> None:
    blocks, files = walkthrough()
    assert len(blocks) > 20 and "webhook_receiver.py" in files
    assert sum(block.expected is not None for block in blocks) > 20
    # issue 20: every block of the walkthrough runs and its output is checked (a block without an
    # output block after it must print nothing)
    assert [block.line for block in blocks if block.marked_skip] == []
    assert matches("a ...\nz", "a b\nc d\nz") and not matches("a\nz", "a\nb\nz")


# Slow by design: every command of the README in a shell, against a real server and real containers.
async def test_the_readme_walkthrough_runs_verbatim(docker_engine: DockerClient, tmp_path: Path) -> None:
    for binary in ("bash", "curl", "docker", "python3"):
        require_binary(binary, "the README walkthrough")
    blocks, files = walkthrough()
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the README's .venv/bin/...: this test's own venv
    (tmp_path / "tests").symlink_to(REPO / "tests")
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    cluster = f"test-readme-{uuid.uuid4().hex[:8]}"
    caddy = Caddy(tmp_path / "caddy")
    caddy.start()
    plain = {k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")}
    server_env = {
        **plain,
        "CTRLPLANE_PORT": "0",
        "CTRLPLANE_CLUSTER_NAME": cluster,
        "CTRLPLANE_ROUTER": "caddy",
        "CTRLPLANE_ROUTER_ADMIN_ADDRESS": caddy.admin_address,
        "CTRLPLANE_ROUTER_HTTP_LISTEN": f"127.0.0.1:{caddy.http_port}",
        "CTRLPLANE_ROUTER_HTTPS_LISTEN": f"127.0.0.1:{caddy.https_port}",
        "CTRLPLANE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
        "CTRLPLANE_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        try:
            server = subprocess.Popen(
                [sys.executable, "-m", "ctrlplane.cli", "serve"], cwd=tmp_path, env=server_env, stdout=log, stderr=log
            )
        except BaseException:
            caddy.stop()
            raise
    shell: subprocess.Popen[str] | None = None
    try:
        url = await _serving(server, log_path)
        port = url.rsplit(":", 1)[1]
        script = "exec 2>&1\n" + "".join(f"{block.code}\nprintf '\\n{END}\\n'\n" for block in blocks)
        (tmp_path / "walkthrough.sh").write_text(script)
        transcript = tmp_path / "transcript.txt"
        with transcript.open("w") as out:
            # a file, not a pipe: the background receiver the walkthrough starts keeps its stdout open
            shell = subprocess.Popen(
                ["bash", "walkthrough.sh"],
                cwd=tmp_path,
                env={**plain, "CTRLPLANE_PORT": port, "ROUTER_PORT": str(caddy.http_port)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                start_new_session=True,
            )
        try:
            await asyncio.to_thread(shell.wait, 240)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the walkthrough hung; its output so far:\n{transcript.read_text()[-3000:]}"
            ) from None
        output = transcript.read_text()
        ran = blocks
        outputs = output.split(f"\n{END}\n")
        assert len(outputs) >= len(ran), f"the walkthrough stopped early:\n{output[-3000:]}"
        failures = []
        for block, actual in zip(ran, outputs, strict=False):
            actual = actual.lstrip("\n")
            if "webhook_receiver.py" not in block.code:  # the receiver's lines, as the README says
                actual = "".join(line for line in actual.splitlines(True) if not line.startswith("verified "))
            if "Traceback" in actual:
                failures.append(f"README line {block.line}: a Python traceback:\n{actual}")
            elif not matches(block.expected or "", actual):
                failures.append(f"README line {block.line}:\n--- expected\n{block.expected}--- got\n{actual}\n")
        assert not failures, "\n".join(failures) + f"\nserver log:\n{log_path.read_text()[-2000:]}"
        print(f"README blocks run: {len(ran)}")
    finally:
        if shell is not None and shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(timeout=10)
        elif shell is not None:
            # the walkthrough's background jobs (the webhook receiver) are in the shell's session
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        caddy.stop()
        remove_cluster(docker_engine, cluster)


async def _serving(server: subprocess.Popen[bytes], log_path: Path) -> str:
    """The server's URL once it answers ``/readyz``."""

    async def ready() -> str | None:
        assert server.poll() is None, f"ctrlplane serve exited: {log_path.read_text()[-3000:]}"
        found = SERVING.search(log_path.read_text(errors="replace"))
        if found is None:
            return None
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                answered = (await client.get(f"{found.group(1)}/readyz")).status_code == 200
        except httpx.TransportError:
            return None
        return found.group(1) if answered else None

    return await eventually(ready, lambda: f"ctrlplane serve answering: {log_path.read_text()[-3000:]}", timeout=60)
