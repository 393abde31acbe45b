"""``ctrlplane`` commands as real processes, forked from a parent that imported ctrlplane once.

A test that needs a real server (to SIGKILL it, restart it, run several) used to start
``python -m ctrlplane.cli serve``: each lifetime imported ctrlplane, SQLAlchemy and Litestar
again, about 1.5 s of CPU before the server read its settings, and the suite starts hundreds of
them. Here each pytest worker starts one ``forkserver`` (``multiprocessing``) that imports
those modules once, at its start, and forks every command from there, as gunicorn's
``--preload`` does. The child is still its own process with its own pid, environment, log file
and exit status: it can be signalled, SIGKILLed and waited for like the ``subprocess`` it
replaces. The preload only imports: importing ctrlplane starts no thread, opens no connection
and reads no setting (``tests/unit/test_forkserve.py`` guards that), so nothing of the parent's
state reaches a child.

``Forked`` has the part of ``subprocess.Popen``'s interface the tests use; ``run`` is
``subprocess.run(..., capture_output=True, text=True)`` for a ctrlplane command.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

PRELOAD = [
    "ctrlplane.app",
    "ctrlplane.cli",
    "ctrlplane.serving",
    "ctrlplane.agent.main",
    "ctrlplane_docker",
    "ctrlplane_kubernetes",
    "ctrlplane_nodes",
    "uvicorn",
    # what a server imports only once it runs: its database driver, anyio's event loop backend,
    # httpx's transport, the migrations' models, uvicorn's lifespan, loop and websocket modules
    "aiosqlite",
    "anyio._backends._asyncio",
    "httpcore",
    "ctrlplane.models",
    "uvicorn.lifespan.on",
    "uvicorn.loops.asyncio",
    "uvicorn.protocols.websockets.auto",
    "tests.forkserve_settle",
]
"""What the fork server imports once: the server, the agent, the provider plugins (their entry
points import them when a server starts), and what they import; then it builds a server's app
ahead and freezes that heap (``tests/forkserve_settle.py``)."""

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)

ENTRY_POINTS = {"ctrlplane.cli": "ctrlplane.cli:main", "ctrlplane.agent.main": "ctrlplane.agent.main:main"}
"""``python -m MODULE`` of the commands the tests run, and the function that module's ``__main__`` calls."""


def _command(module: str, argv: Sequence[str], env: Mapping[str, str], stdout: str, stderr: str) -> None:
    """The child: the command's environment and output files, then its ``main``; its return value
    is the exit status (``SystemExit``, as ``python -m`` would)."""
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [module, *argv]
    owner, name = ENTRY_POINTS[module].split(":")
    main = getattr(__import__(owner, fromlist=[name]), name)
    sys.exit(main(list(argv)))


class Forked:
    """A forked command, with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``, ``returncode``,
    ``send_signal``, ``terminate`` and ``kill``."""

    def __init__(self, module: str, argv: Sequence[str], env: Mapping[str, str], stdout: Path, stderr: Path) -> None:
        self._process = _context.Process(
            target=_command, args=(module, list(argv), dict(env), str(stdout), str(stderr)), daemon=False
        )
        self._process.start()
        assert self._process.pid is not None
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"forked {self.pid}", timeout or 0)
        return self._process.exitcode

    def send_signal(self, number: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(module: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> Forked:
    """``python -m MODULE ARGV`` with ``env``, its output appended to ``log``."""
    return Forked(module, argv, env, log, log)


def run(
    module: str, argv: Sequence[str], env: Mapping[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGV`` with ``env`` to its end, its output captured as text."""
    with tempfile.TemporaryDirectory(prefix="ctrlplane-run-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        child = Forked(module, argv, env, out, err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
            raise
        return subprocess.CompletedProcess(
            [module, *argv], code, out.read_text(errors="replace"), err.read_text(errors="replace")
        )
