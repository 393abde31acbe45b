"""tests/forkserve.py: ctrlplane commands forked from a parent that imported ctrlplane once must
behave as the fresh processes they replace."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

from tests import forkserve

ROOT = Path(__file__).resolve().parents[2]


def test_the_preload_starts_no_thread() -> None:
    """A fork copies no thread but may copy a lock one held: the fork server's imports start none."""
    probe = f"import threading\nfor name in {forkserve.PRELOAD!r}: __import__(name)\nprint(threading.active_count())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["1"], done.stdout + done.stderr


def _reads_environment(node: ast.AST) -> bool:
    for found in ast.walk(node):
        if isinstance(found, ast.Attribute) and found.attr in ("environ", "getenv", "environb"):
            return True
    return False


def test_no_module_reads_the_environment_at_import() -> None:
    """A value read at import would be the fork server's, not the child's: settings are read when a
    command runs (``Settings.from_env``), never in a module's or a class's body."""
    offenders = []
    for path in sorted([*ROOT.joinpath("ctrlplane").rglob("*.py"), *ROOT.joinpath("providers").rglob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        bodies = [tree.body, *(n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]
        for body in bodies:
            for statement in body:
                if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                if _reads_environment(statement):
                    offenders.append(f"{path.relative_to(ROOT)}:{statement.lineno}")
    assert offenders == []


def test_a_forked_command_has_its_own_environment_output_and_exit_status(tmp_path: Path) -> None:
    done = forkserve.run("ctrlplane.cli", ["token", "issue", "--admin"], {"CTRLPLANE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2  # a JWT
    refused = forkserve.run("ctrlplane.cli", ["serve", "--workers", "0"], {"CTRLPLANE_DATA_DIR": str(tmp_path)})
    assert refused.returncode == 2
    assert "--workers must be at least 1" in refused.stderr


def test_a_forked_server_is_signalled_and_waited_for_like_a_subprocess(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {
        "CTRLPLANE_DATA_DIR": str(tmp_path),
        "CTRLPLANE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/ctrlplane.db",
        "CTRLPLANE_PORT": "0",
        "CTRLPLANE_PROVIDERS": "docker",
    }
    server = forkserve.start("ctrlplane.cli", ["serve"], env, log)
    assert server.poll() is None
    server.send_signal(signal.SIGKILL)
    assert server.wait(30) == -signal.SIGKILL
    assert server.returncode == -signal.SIGKILL
