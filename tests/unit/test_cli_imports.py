"""The ``ctrlplane`` client commands (deploy, rollback, status, env, run...) start without importing
the server: a CI pipeline calls them once a step, and the server's imports (SQLAlchemy, Alembic,
Litestar) cost about a second of CPU before a request is sent."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_ONLY = ("sqlalchemy", "alembic", "litestar", "uvicorn", "docker", "kubernetes")


def test_the_client_commands_import_none_of_the_servers_libraries() -> None:
    probe = (
        "import contextlib, io, json, sys\n"
        "import ctrlplane.cli, ctrlplane.client, ctrlplane.environments.commands\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    ctrlplane.cli.main(['status', '--help'])  # builds every subcommand's parser, the agent's too\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = json.loads(answer.stdout)
    assert [name for name in SERVER_ONLY if name in loaded] == []
