"""The README's demo command runs end to end: its own server, progress, a retry, a dead letter."""

from __future__ import annotations

import subprocess
import sys

from .helpers import ROOT


def test_the_demo_runs_and_tells_the_story() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "oqron_nats", "demo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "started a local nats-server with JetStream" in out
    assert "100%  upload" in out
    assert "flaky.png    attempt 1 failed: storage timed out (will retry)" in out
    assert "flaky.png    completed" in out
    assert "corrupt.png  FAILED after 3 attempts" in out
    assert "copied to the dead-letter stream" in out
    assert "dead-letter stream holds 1 job(s)" in out
    assert "scheduled.jpg completed" in out
    assert out.count(" completed  attempts=") == 6
    assert "demo finished" in out
