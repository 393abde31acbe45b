"""`make run` installs only what serving needs; `make install` (and so `make test`) adds the test and
development tools. Read from what make would run (`make -n`) for a venv that does not exist."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[2]


def planned(target: str, tmp_path: Path) -> str:
    make = require_binary("make", "the Makefile test")
    venv = f"VENV={tmp_path / 'venv'}"
    # Called from `make test` (as CI does), the parent's MAKELEVEL and MAKEFLAGS would make this make
    # print "Entering/Leaving directory" lines and inherit its flags: plan as a top-level make would.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}
    command = [make, "--no-print-directory", "-n", venv, target]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout


def test_make_run_installs_no_test_or_development_tools(tmp_path: Path) -> None:
    commands = planned("run", tmp_path)
    installs = [line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("[test" not in line and "dev]" not in line for line in installs), commands
    assert commands.strip().splitlines()[-1].endswith("bin/ctrlplane serve")


def test_make_install_adds_the_test_and_development_tools(tmp_path: Path) -> None:
    assert "-e '.[test,dev]'" in planned("install", tmp_path)
