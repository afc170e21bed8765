"""The README's first example runs as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import oqron_nats
from oqron_nats import Client
from oqron_nats.names import STATE_CODES, markdown_table
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


def test_the_what_is_in_nats_table_is_the_one_generated_from_names() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What is in NATS\n") :]
    section = section[: section.index("\n## ", 1)]
    assert markdown_table() in section, (
        "the README's table differs from the names the code builds: paste the output of "
        "python -c 'from oqron_nats.names import markdown_table as t; print(t())'"
    )


async def test_the_table_names_every_stream_and_bucket_of_a_queue(
    client: Client, namespace: str
) -> None:
    await client.prepare_queue(client.names("orders"))  # what `oqron provision orders` does
    conn = await client.connect()
    found = {name for name in await conn.stream_names(subject=">") if f"_{namespace}_" in name}
    written = set(re.findall(r"`([^`]+)`", markdown_table()))
    for placeholder in list(written):  # the index streams, one per state
        if "X<c>" in placeholder:
            written |= {placeholder.replace("<c>", code) for code in STATE_CODES.values()}
    named = {n.replace("<ns>", namespace).replace("<q>", "orders") for n in written}
    named |= {f"KV_{n}" for n in named}  # a KV bucket is a stream named KV_<bucket>
    assert len(found) == 9 + 1 + 1 + 3 + 2, found  # index, work, records, shared buckets, DLQ, RATE
    assert found <= named, f"not in the table: {sorted(found - named)}"


def test_the_readme_imports_what_its_python_examples_call() -> None:
    """Every `from oqron_nats import ...` of the README runs, and a block that imports from
    oqron_nats imports every public name it calls (run_main was called but not exported)."""
    assert "run_main" in oqron_nats.__all__
    public = set(oqron_nats.__all__)
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        imports = re.findall(r"^from oqron_nats\S* import (?:\([^)]*\)|.*)$", block, re.M)
        if not imports:
            continue
        imported: set[str] = set()
        for statement in imports:
            namespace: dict[str, object] = {}
            exec(statement, namespace)  # the README's own import lines
            imported |= set(namespace) - {"__builtins__"}
        called = set(re.findall(r"\b([A-Za-z_]\w*)\(", block)) & public  # comments too
        assert called <= imported, f"called, not imported: {sorted(called - imported)}"
