"""The README's first example runs as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from oqron_nats.server import LocalServer

from .helpers import ROOT


def test_the_fifteen_line_example_runs(nats_server: LocalServer, namespace: str) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    assert len([line for line in example.splitlines() if line.strip()]) <= 15
    env = {**os.environ, "OQRON_NATS_URL": nats_server.url, "OQRON_NAMESPACE": namespace}
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "state=<JobState.COMPLETED: 'completed'>" in done.stdout
    assert "'message_id': 'ses-welcome-1'" in done.stdout
