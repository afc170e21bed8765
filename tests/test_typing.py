"""The package is typed for its users: mypy --strict on user code sees the payload type through
queue(), add(), the handler's ctx and job.wait(), and flags misuse (py.typed is shipped).

A user's mypy checks the snippets below with oqron_nats importable as an installed package (the
repository root on PYTHONPATH). Without py.typed it reports "missing library stubs or py.typed
marker" and every type from oqron_nats is Any, which these tests catch. A job's link to the
queue it waits through is checked at run time too: it stays out of the record, == and repr.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import oqron_nats
from oqron_nats.core.errors import InvalidState
from oqron_nats.core.job import Job, JobState, bind, with_data

PACKAGE_ROOT = Path(oqron_nats.__file__).resolve().parents[1]
"""The directory holding the oqron_nats under test (this checkout)."""

# Each `reveal_type` line says the type it must reveal (`# reveals: ...`); each line of misuse
# says the error code mypy must give it (`# error: ...`). Nothing else may be reported.
USER = """\
from __future__ import annotations

import msgspec

from oqron_nats import JobContext, queue


class Email(msgspec.Struct):
    to: str
    subject: str


async def send(ctx: JobContext[Email]) -> str:
    reveal_type(ctx.data)  # reveals: user.Email
    return ctx.data.to


async def main() -> None:
    emails = queue("x", send, payload=Email)
    reveal_type(emails)  # reveals: oqron_nats.queue.Queue[user.Email, Never]
    job = await emails.add(Email(to="a@example.com", subject="hi"))
    reveal_type(job)  # reveals: oqron_nats.core.job.Job[user.Email]
    reveal_type(job.data)  # reveals: user.Email
    reveal_type(await job.wait(10))  # reveals: oqron_nats.core.job.Job[user.Email]
    reveal_type(await emails.wait(job.id))  # reveals: oqron_nats.core.job.Job[user.Email]
    reveal_type(await emails.get_job(job.id))  # reveals: oqron_nats.core.job.Job[user.Email] | None
    skipping = queue("y", send, payload=Email, disabled_behavior="skip")
    added = await skipping.add(Email(to="b@example.com", subject="hi"))
    reveal_type(added)  # reveals: oqron_nats.core.job.Job[user.Email] | oqron_nats.queue.Skipped
    publisher = queue("z", payload=Email)
    reveal_type(publisher)  # reveals: oqron_nats.queue.Queue[user.Email, Never]
    untyped = queue("w")
    reveal_type(untyped)  # reveals: oqron_nats.queue.Queue[Any, Never]
"""

MISUSE = """\
from __future__ import annotations

import msgspec

from oqron_nats import JobContext, queue, worker


class Email(msgspec.Struct):
    to: str


class Sms(msgspec.Struct):
    number: str


async def send(ctx: JobContext[Email]) -> None:
    print(ctx.data.no_such_field)  # error: attr-defined


def options() -> None:
    queue("o", send, payload=Email, concurency=3)  # error: call-overload
    queue("o", send, payload=Email, lock_ttl="30s")  # error: call-overload
    worker("o", send, payload=Email, concurency=3)  # error: call-arg
    worker("o", send, payload=Email, concurrency="3")  # error: arg-type
    worker("o", send, payload=Email, max_jobs=None, codec=None, lag_monitor=True)


async def main() -> None:
    emails = queue("x", send, payload=Email)
    job = await emails.add(Email(to="a@example.com"))
    print(job.data.no_such_field)  # error: attr-defined
    queue("y", send, payload=Sms)  # error: arg-type
    await job.wait("soon")  # error: arg-type
    number: int = (await job.wait()).data  # error: assignment
    print(number)
    await emails.add(Email(to="b@example.com"), dely=3)  # error: call-arg
    await emails.add(Email(to="c@example.com"), priority="high")  # error: arg-type
"""

REPORT_LINE = re.compile(r"^(?P<file>\w+)\.py:(?P<line>\d+): (?P<kind>error|note): (?P<text>.*)$")
ERROR_CODE = re.compile(r"\[(?P<code>[a-z-]+)\]$")


def union_syntax(revealed: str) -> str:
    """A revealed ``Union[A, B]`` (mypy before 1.11) written as ``A | B``, as mypy now does."""
    if not (revealed.startswith("Union[") and revealed.endswith("]")):
        return revealed
    members, depth, start = [], 0, len("Union[")
    for at, char in enumerate(revealed[start:-1], start=start):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            members.append(revealed[start:at].strip())
            start = at + 1
    return " | ".join([*members, revealed[start:-1].strip()])


def expected(source: str, marker: str) -> dict[int, str]:
    """What each marked line of ``source`` expects, by line number."""
    found = {}
    for number, line in enumerate(source.splitlines(), start=1):
        _, sep, want = line.partition(f"# {marker}: ")
        if sep:
            found[number] = want.strip()
    return found


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """mypy --strict on the two snippets, as a user runs it: (line, kind, text) per file."""
    tmp = tmp_path_factory.mktemp("typing")
    (tmp / "user.py").write_text(USER)
    (tmp / "misuse.py").write_text(MISUSE)
    (tmp / "mypy.ini").write_text("[mypy]\n")  # none of this repository's settings
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(PACKAGE_ROOT)
    command = [
        sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini",
        "--cache-dir", str(tmp / "cache"), "--no-color-output", "--no-error-summary",
        "--show-error-codes", "--hide-error-context", "user.py", "misuse.py",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp, env=env, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 1, f"mypy found no misuse, or crashed:\n{done.stdout}{done.stderr}"
    report: dict[str, list[tuple[int, str, str]]] = {"user": [], "misuse": []}
    for line in done.stdout.splitlines():
        match = REPORT_LINE.match(line)
        assert match, f"an unexpected line from mypy: {line!r}\n{done.stdout}"
        report[match["file"]].append((int(match["line"]), match["kind"], match["text"]))
    return report


def test_the_package_is_not_skipped_as_untyped(
    mypy_report: dict[str, list[tuple[int, str, str]]],
) -> None:
    """py.typed is there: mypy analyzes oqron_nats instead of skipping it as Any."""
    assert (PACKAGE_ROOT / "oqron_nats" / "py.typed").is_file()
    texts = [text for lines in mypy_report.values() for _, _, text in lines]
    assert not [t for t in texts if "py.typed" in t or "import-untyped" in t], texts


def test_user_code_sees_the_payload_type(
    mypy_report: dict[str, list[tuple[int, str, str]]],
) -> None:
    """queue(..., payload=Email) is a Queue[Email, ...]; ctx.data, add(), job.wait() give Email."""
    errors = [(n, text) for n, kind, text in mypy_report["user"] if kind == "error"]
    assert errors == []
    revealed = {
        n: union_syntax(text.removeprefix("Revealed type is ").strip('"'))
        for n, kind, text in mypy_report["user"]
        if kind == "note" and text.startswith("Revealed type is ")
    }
    assert revealed == expected(USER, "reveals")


def test_misuse_is_an_error(mypy_report: dict[str, list[tuple[int, str, str]]]) -> None:
    """A field the payload does not have, a handler for another payload type, a wrong timeout,
    a misspelt or wrongly typed queue option. An overloaded ``queue()`` may get two errors of
    the same code for one misuse (no variant matches, and why)."""
    codes: dict[int, set[str]] = {}
    for n, kind, text in mypy_report["misuse"]:
        if kind == "error":
            match = ERROR_CODE.search(text)
            assert match, text
            codes.setdefault(n, set()).add(match["code"])
    want = {n: {code} for n, code in expected(MISUSE, "error").items()}
    assert codes == want, mypy_report["misuse"]


# -- a job's link to the queue it waits through ---------------------------------------------


class Email(msgspec.Struct):
    to: str


class Recorder:
    """A stand-in for the queue a job waits through: records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float | None]] = []

    async def wait(self, job_id: str, timeout: float | None = None) -> Job[Any]:
        self.asked.append((job_id, timeout))
        return new_job(job_id, state=JobState.COMPLETED)


def new_job(job_id: str = "j1", state: JobState = JobState.WAITING) -> Job[Any]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Job(id=job_id, queue="q", state=state, data={"to": "a"}, created_at=at,
               correlation_id="c")  # fmt: skip


def test_a_bound_job_waits_through_its_queue() -> None:
    waiter = Recorder()
    job = bind(new_job(), waiter)
    done = asyncio.run(job.wait(5))
    assert done.state == JobState.COMPLETED and waiter.asked == [("j1", 5)]
    typed = with_data(job, Email(to="a"))  # the typed copy a queue returns keeps the link
    asyncio.run(typed.wait())
    assert waiter.asked == [("j1", 5), ("j1", None)]


def test_the_link_stays_out_of_the_record_equality_and_repr() -> None:
    plain = new_job()
    bound = bind(new_job(), Recorder())
    assert msgspec.json.encode(bound) == msgspec.json.encode(plain)
    assert bound == plain
    assert repr(bound) == repr(plain)
    decoded = msgspec.json.decode(msgspec.json.encode(bound), type=Job[Any])
    with pytest.raises(InvalidState, match="only a job returned by a queue"):
        asyncio.run(decoded.wait(1))
