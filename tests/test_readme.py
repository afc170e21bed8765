"""The README's first example runs as written against a real server."""

from __future__ import annotations

import ast
import inspect
import os
import re
import runpy
import subprocess
import sys
import tomllib

import oqron_nats
from oqron_nats import Client
from oqron_nats._nats import stream_of
from oqron_nats._nats.names import STATE_CODES, markdown_table
from oqron_nats.core.config import QueueOptions
from oqron_nats.ops.cli import build_parser
from oqron_nats.testing.server import LocalServer

from .helpers import ROOT
from .support import inbox_and_pending_size, namespace_streams


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
        "python -c 'from oqron_nats._nats.names import markdown_table as t; print(t())'"
    )


async def test_the_table_names_every_stream_and_bucket_of_a_queue(
    client: Client, namespace: str
) -> None:
    await client._prepare_queue(client.names("orders"))  # what `oqron provision orders` does
    found = await namespace_streams(client)
    written = set(re.findall(r"`([^`]+)`", markdown_table()))
    for placeholder in list(written):  # the index streams, one per state
        if "X<c>" in placeholder:
            written |= {placeholder.replace("<c>", code) for code in STATE_CODES.values()}
    named = {n.replace("<ns>", namespace).replace("<q>", "orders") for n in written}
    named |= {stream_of(n) for n in named}  # a KV bucket is a stream of its own
    assert len(found) == 1 + 1 + 1 + 3 + 2, found  # index, work, records, shared buckets, DLQ, RATE
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


def test_the_readme_says_how_to_use_the_environment_dev_py_creates() -> None:
    readme = (ROOT / "README.md").read_text()
    opening = readme[: readme.index("## Fifteen lines")]
    dev = runpy.run_path(str(ROOT / "dev.py"), run_name="dev")  # its __main__ does not run
    venv = dev["VENV"].relative_to(ROOT)
    assert f"source {venv}/bin/activate" in opening
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "oqron" in scripts
    assert f"{venv}/bin/oqron queues" in opening
    assert f"{venv}/bin/python -m oqron_nats server" in opening


async def test_the_connect_options_example_reaches_nats_py(
    nats_server: LocalServer, namespace: str
) -> None:
    readme = (ROOT / "README.md").read_text()
    [example] = re.findall(r"connect_options=(\{[^}]*\})\)", readme)
    options = eval(example, {"__builtins__": {}})  # the README's literal, e.g. 8 * 1024 * 1024
    assert options["inbox_prefix"] == "_INBOX_billing"
    async with Client(nats_server.url, namespace=namespace, connect_options=options) as client:
        inbox, pending_size = await inbox_and_pending_size(client, "billing")  # replies arrive
        assert inbox.startswith("_INBOX_billing.")
        assert pending_size == options["pending_size"]


def test_every_admin_command_of_the_readme_parses() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Admin commands\n") :]
    [block] = re.findall(r"```sh\n(.*?)```", section[: section.index("\n## ", 1)], re.S)
    placeholders = {"ID": "job-1", "S": "5", "N": "3", "...": ""}
    parsed = 0
    for line in block.splitlines():
        command = line.split("#")[0].replace("[", "").replace("]", "").split()
        assert command[0] == "oqron", line
        words = [placeholders.get(word, word) for word in command[1:]]
        words = [word for word in words if word]
        for n, word in enumerate(words):
            if "|" in word:  # alternatives: each must parse
                for choice in word.split("|"):
                    build_parser().parse_args([*words[:n], choice, *words[n + 1 :]])
                    parsed += 1
                break
        else:
            build_parser().parse_args(words)
            parsed += 1
    assert parsed >= 15


def test_the_readme_gives_one_duration_for_the_full_chaos_run() -> None:
    readme = (ROOT / "README.md").read_text()
    said = re.findall(r"tests\.chaos --full`?[^(]{0,60}\(about (\d+) minutes", readme)
    assert len(said) >= 2, said  # Reliability and Development
    assert len(set(said)) == 1, f"the full chaos run takes {' or '.join(said)} minutes"


def test_the_api_example_shows_every_queue_option() -> None:
    """The README's ``q = queue(...)`` example names each queue option (QueueOptions, the one
    source) and each of queue()'s own keywords, and nothing else."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("\nq = queue(\n") :]
    call = ast.parse(block[: block.index("\n)\n") + 2]).body[0].value  # type: ignore[attr-defined]
    shown = {keyword.arg for keyword in call.keywords}
    own = {
        name
        for name, p in inspect.signature(oqron_nats.queue).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert shown == set(QueueOptions.__annotations__) | own
