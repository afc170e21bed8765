"""The admin commands of ``oqron``, against the real server: output, --json and exit codes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import Client, DeadLetter, JobContext, JobState, RetryPolicy, queue, worker
from oqron_nats.ops.cli import main
from oqron_nats.testing.server import LocalServer, find_binary

from .helpers import ROOT, eventually, listed_active, wait_for_state
from .support import namespace_streams


async def oqron(
    capsys: pytest.CaptureFixture[str], server: LocalServer, namespace: str, *argv: str
) -> tuple[int, str, str]:
    """Run the CLI (in a thread: it runs its own event loop); exit code, stdout, stderr."""
    code = await asyncio.to_thread(main, [*argv, "--url", server.url, "--namespace", namespace])
    out, err = capsys.readouterr()
    return code, out, err


async def oqron_json(
    capsys: pytest.CaptureFixture[str], server: LocalServer, namespace: str, *argv: str
) -> Any:
    code, out, err = await oqron(capsys, server, namespace, *argv, "--json")
    assert code == 0, err
    # the one JSON line (workers running in this test log to stdout too)
    [line] = [line for line in out.splitlines() if line.startswith(("[", "{"))]
    return json.loads(line)


async def test_queues_shows_counts_pause_oldest_job_and_workers(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    idle = queue("cli-idle", client=client)
    for n in range(3):
        await idle.add({"n": n})
    await idle.add({"n": "later"}, delay=timedelta(hours=1))
    await idle.pause()
    await idle.add({"n": "held"})
    running = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        running.set()
        await asyncio.sleep(30)

    busy = worker("cli-busy", handler, client=client, concurrency=1, shutdown_timeout=0.5)
    await busy.start()
    try:
        await busy.queue.add({"n": 0})
        await asyncio.wait_for(running.wait(), 10)
        await listed_active(busy.queue, 1)
        rows = await oqron_json(capsys, nats_server, namespace, "queues")
        by_name = {row["name"]: row for row in rows}
        assert set(by_name) == {"cli-idle", "cli-busy"}
        assert by_name["cli-idle"] | {"oldest_waiting_seconds": None} == {
            "name": "cli-idle", "waiting": 3, "active": 0, "delayed": 1, "completed": 0,
            "failed": 0,
            "paused_jobs": 1, "paused": True, "oldest_waiting_seconds": None, "workers": 0,
            "rejected": 0,
        }  # fmt: skip
        assert by_name["cli-idle"]["oldest_waiting_seconds"] >= 0
        assert by_name["cli-busy"]["active"] == 1
        assert by_name["cli-busy"]["workers"] == 1
        assert by_name["cli-busy"]["oldest_waiting_seconds"] is None

        code, out, _ = await oqron(capsys, nats_server, namespace, "queues")
        assert code == 0
        header, *lines = out.splitlines()
        assert header.split() == [
            "QUEUE", "WAITING", "ACTIVE", "DELAYED", "COMPLETED", "FAILED", "PAUSED", "OLDEST",
            "WORKERS", "REJECTED",
        ]  # fmt: skip
        assert any(line.startswith("cli-idle") and "yes (1 held)" in line for line in lines)
    finally:
        await busy.stop()
    rows = await oqron_json(capsys, nats_server, namespace, "queues")
    assert {row["name"]: row["workers"] for row in rows}["cli-busy"] == 0, "presence removed"


async def test_queues_count_completed_jobs_and_jobs_list_shows_progress(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    release = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data["n"] == "slow":
            await ctx.progress(30, "encoding")
            await release.wait()
        return "done"

    busy = worker("cli-progress", handler, client=client, concurrency=2, shutdown_timeout=0.5)
    await busy.start()
    try:
        done = [await busy.queue.add({"n": n}) for n in range(2)]
        for job in done:
            await wait_for_state(busy.queue, job.id, JobState.COMPLETED)
        slow = await busy.queue.add({"n": "slow"})

        async def in_progress() -> bool:
            job = await busy.queue.get_job(slow.id)
            return job is not None and job.progress == 30

        await eventually(in_progress, what="the slow job to report progress")
        await listed_active(busy.queue, 1)
        [row] = await oqron_json(capsys, nats_server, namespace, "queues")
        assert (row["completed"], row["active"]) == (2, 1)
        code, out, _ = await oqron(capsys, nats_server, namespace, "queues")
        assert code == 0
        header, line = (x.split() for x in out.splitlines()[-2:])
        assert header[:5] == ["QUEUE", "WAITING", "ACTIVE", "DELAYED", "COMPLETED"]
        assert line[:5] == ["cli-progress", "0", "1", "0", "2"]

        code, out, _ = await oqron(capsys, nats_server, namespace, "jobs", "list", "cli-progress")
        assert code == 0
        table = out.splitlines()[-4:]  # the header and three jobs
        assert table[0].split()[:4] == ["ID", "STATE", "ATTEMPT", "PROGRESS"]
        column = table[0].index("PROGRESS")
        rows = {line.split()[0]: line for line in table[1:]}
        assert rows[slow.id][column:].startswith("30% encoding ")
        for job in done:
            assert rows[job.id].split()[1] == "completed"
            assert rows[job.id][column:].split()[0] == "-", "its handler reported no progress"
    finally:
        release.set()
        await busy.stop()


async def test_queues_watch_redraws_until_its_count(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await queue("cli-watch", client=client).add({"n": 0})
    started = time.monotonic()
    code, out, err = await oqron(
        capsys, nats_server, namespace, "queues", "--watch", "--count", "3", "--interval", "0.1",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    frames = [json.loads(line) for line in out.splitlines()]
    assert [[row["name"] for row in frame] for frame in frames] == [["cli-watch"]] * 3
    assert time.monotonic() - started >= 0.2, "it waited the interval between redraws"

    code, out, err = await oqron(
        capsys, nats_server, namespace, "queues", "--watch", "--count", "2", "--interval", "0.1"
    )
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines() if line.startswith("QUEUE")] == [
        "QUEUE", "QUEUE"
    ]  # fmt: skip
    assert len([line for line in out.splitlines() if line.startswith("cli-watch ")]) == 2
    assert "every 0.1s (Ctrl-C stops)" in out

    for argv in (["--count", "2"], ["--interval", "2"]):
        with pytest.raises(SystemExit) as usage:
            main(["queues", *argv])
        assert usage.value.code == 2
        assert "go with --watch" in capsys.readouterr().err


@pytest.mark.parametrize(("sig", "as_json"), [(signal.SIGTERM, True), (signal.SIGINT, False)])
async def test_queues_watch_shows_changes_and_stops_on_ctrl_c_or_sigterm(
    nats_server: LocalServer, client: Client, namespace: str, sig: signal.Signals, as_json: bool
) -> None:
    q = queue("cli-watch", client=client)
    await q.add({"n": 0})
    argv = [sys.executable, "-m", "oqron_nats", "queues", "--watch", "--interval", "0.2",
            "--url", nats_server.url, "--namespace", namespace]  # fmt: skip
    watching = await asyncio.create_subprocess_exec(
        *argv, *(["--json"] if as_json else []), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout = watching.stdout
    assert stdout is not None

    async def until_waiting(count: int) -> None:
        """Read redraws until one shows ``count`` waiting jobs."""
        while True:
            line = (await asyncio.wait_for(stdout.readline(), 10)).decode()
            assert line, "the watch ended early"
            if as_json:
                [row] = json.loads(line)
                waiting = row["waiting"]
            elif line.startswith("cli-watch "):
                waiting = int(line.split()[1])
            else:
                continue
            if waiting == count:
                return

    try:
        await until_waiting(1)
        await q.add({"n": 1})
        await until_waiting(2)  # each redraw reads NATS again
        watching.send_signal(sig)
        _, err = await asyncio.wait_for(watching.communicate(), 10)
        assert watching.returncode == 0, err
        assert err == b""
    finally:
        if watching.returncode is None:
            watching.kill()
            await watching.wait()


async def test_jobs_list_show_and_actions(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    q = queue("cli-jobs", client=client)
    first = await q.add({"n": 1}, correlation_id="req-cli-1")
    later = await q.add({"n": 2}, delay=timedelta(hours=1))

    listed = await oqron_json(capsys, nats_server, namespace, "jobs", "list", "cli-jobs")
    assert [job["id"] for job in listed] == [later.id, first.id]
    listed = await oqron_json(
        capsys, nats_server, namespace, "jobs", "list", "cli-jobs", "--status", "delayed"
    )
    assert [job["id"] for job in listed] == [later.id]
    code, out, _ = await oqron(capsys, nats_server, namespace, "jobs", "list", "cli-jobs")
    assert code == 0 and first.id in out and "req-cli-1" in out

    shown = await oqron_json(capsys, nats_server, namespace, "jobs", "show", first.id)
    assert (shown["id"], shown["queue"], shown["state"]) == (first.id, "cli-jobs", "waiting")
    assert shown["data"] == {"n": 1}

    done = await oqron_json(capsys, nats_server, namespace, "jobs", "promote", later.id)
    assert done == {"job_id": later.id, "queue": "cli-jobs", "done": "promote"}
    promoted = await q.get_job(later.id)
    assert promoted is not None and promoted.state == JobState.WAITING

    assert await oqron_json(capsys, nats_server, namespace, "jobs", "cancel", first.id)
    cancelled = await q.get_job(first.id)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    await oqron_json(capsys, nats_server, namespace, "jobs", "retry", first.id)
    retried = await q.get_job(first.id)
    assert retried is not None and retried.state == JobState.WAITING

    # refused: exit 1 with the reason; a malformed id is bad usage: exit 2
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "retry", first.id)
    assert code == 1 and "waiting" in err
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "show", "no-such-job")
    assert code == 1 and "no-such-job" in err
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "show", "bad.id")
    assert code == 2 and "job id" in err


async def test_jobs_list_pages_with_limit_and_offset(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    q = queue("cli-pages", client=client)
    jobs = [await q.add({"n": n}) for n in range(4)]
    newest_first = [job.id for job in reversed(jobs)]

    async def page(*argv: str) -> list[str]:
        rows = await oqron_json(capsys, nats_server, namespace, "jobs", "list", "cli-pages", *argv)
        return [row["id"] for row in rows]

    assert await page() == newest_first
    assert await page("--limit", "2") == newest_first[:2]
    assert await page("--offset", "1", "--limit", "2") == newest_first[1:3]
    assert await page("--offset", "3") == newest_first[3:]
    assert await page("--offset", "4") == []


@pytest.mark.parametrize(
    ("argv", "flag", "says"),
    [
        (["dlq", "list", "q", "--limit", "-5"], "--limit", "must be 1 or more, not -5"),
        (["dlq", "list", "q", "--limit", "0"], "--limit", "must be 1 or more, not 0"),
        (["dlq", "list", "q", "--limit", "ten"], "--limit", "'ten' is not a whole number"),
        (["jobs", "list", "q", "--limit", "-1"], "--limit", "must be 1 or more, not -1"),
        (["jobs", "list", "q", "--limit", "2.5"], "--limit", "'2.5' is not a whole number"),
        (["jobs", "list", "q", "--offset", "-1"], "--offset", "must be 0 or more, not -1"),
        (["jobs", "list", "q", "--offset", "x"], "--offset", "'x' is not a whole number"),
    ],
)
def test_every_limit_and_offset_is_checked_the_same_way(
    argv: list[str], flag: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(argv)  # refused before connecting to anything
    assert usage.value.code == 2
    assert f"argument {flag}: {says}" in capsys.readouterr().err


async def test_queue_pause_resume_drain(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    q = queue("cli-control", client=client)
    provisioned = await oqron_json(capsys, nats_server, namespace, "provision", "cli-control")
    assert provisioned == {"provisioned": ["cli-control"]}
    assert await oqron_json(capsys, nats_server, namespace, "queue", "pause", "cli-control")
    assert await q.is_paused()
    await q.add({"n": 1})
    resumed = await oqron_json(capsys, nats_server, namespace, "queue", "resume", "cli-control")
    assert resumed == {"queue": "cli-control", "done": "resume", "released": 1}
    assert not await q.is_paused()

    async def handler(ctx: JobContext[Any]) -> None:
        return None

    consumer = worker("cli-control", handler, client=client)
    await consumer.start()
    try:
        drained = await oqron_json(
            capsys, nats_server, namespace, "queue", "drain", "cli-control", "--timeout", "20"
        )
        assert drained["done"] == "drain"
        assert await q.count(JobState.WAITING) == 0
    finally:
        await consumer.stop()


async def test_queue_obliterate_refuses_while_a_job_runs_unless_forced(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    running = asyncio.Event()
    stopped: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        running.set()
        stopped.append(await ctx.signal)

    busy = worker("cli-doomed", handler, client=client, concurrency=1, shutdown_timeout=0.5)
    await busy.start()
    try:
        active = await busy.queue.add({"n": 0})
        await asyncio.wait_for(running.wait(), 10)
        await listed_active(busy.queue, 1)
        queued = [await busy.queue.add({"n": n}) for n in range(1, 3)]

        code, out, err = await oqron(
            capsys, nats_server, namespace, "queue", "drain", "cli-doomed", "--timeout", "0.3"
        )
        assert (code, out) == (1, "") and "still has active jobs after 0.3 s" in err
        assert await busy.queue.is_paused(), "a drain that timed out leaves the queue paused"

        code, out, err = await oqron(
            capsys, nats_server, namespace, "queue", "obliterate", "cli-doomed"
        )
        assert (code, out) == (1, "")
        assert "1 active job(s), so nothing was removed" in err and "--force" in err
        for job in (active, *queued):
            assert await busy.queue.get_job(job.id) is not None, "nothing removed"
        assert await busy.queue.count() == 3

        gone = await oqron_json(
            capsys, nats_server, namespace, "queue", "obliterate", "cli-doomed", "--force"
        )
        assert gone == {"queue": "cli-doomed", "done": "obliterate", "removed": 3}
        for job in (active, *queued):
            assert await busy.queue.get_job(job.id) is None
        await eventually(lambda: _told(stopped), what="the running handler to be told to stop")
    finally:
        await busy.stop()
    assert await busy.queue.is_paused(), "obliterate keeps the pause it found"


async def _told(stopped: list[str]) -> bool:
    return stopped == ["cancelled"]


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_drain_timeout_must_be_a_positive_number_of_seconds(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["queue", "drain", "q", "--timeout", timeout])
    assert usage.value.code == 2
    assert "--timeout" in capsys.readouterr().err


async def test_without_json_every_command_answers_in_sentences(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def said(*argv: str) -> str:
        code, out, err = await oqron(capsys, nats_server, namespace, *argv)
        assert code == 0, err
        [answer] = out.splitlines()  # one sentence
        with pytest.raises(json.JSONDecodeError):
            json.loads(answer)  # for people; --json is for scripts
        return answer

    assert await said("provision", "cli-plain") == (
        "provisioned (its streams and buckets exist): cli-plain"
    )
    q = queue("cli-plain", client=client)
    assert await said("queue", "pause", "cli-plain") == (
        "queue cli-plain paused: running jobs finish, no job starts until it is resumed"
    )
    held = await q.add({"n": 1})
    assert await said("queue", "resume", "cli-plain") == (
        "queue cli-plain resumed; 1 held job released"
    )
    delayed = await q.add({"n": 2}, delay=3600)
    assert await said("jobs", "promote", delayed.id) == (
        f"job {delayed.id} of queue cli-plain promoted: it runs now"
    )
    assert await said("jobs", "cancel", held.id) == f"job {held.id} of queue cli-plain cancelled"
    assert await said("jobs", "retry", held.id) == (
        f"job {held.id} of queue cli-plain will run again"
    )
    assert await said("dlq", "replay", "cli-plain") == (
        "queue cli-plain has no dead letters to replay"
    )
    assert await said("queue", "drain", "cli-plain") == (
        "queue cli-plain drained: it is paused and no job is active"
    )
    assert await said("queue", "obliterate", "cli-plain") == (
        "queue cli-plain obliterated: 2 jobs removed"
    )


async def test_jobs_show_lists_the_important_fields_the_error_and_the_timeline(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        await ctx.progress(40, "halfway")
        raise RuntimeError(f"broken input {ctx.data['n']}")

    failing = worker("cli-show", handler, client=client, retries=RetryPolicy(max=0))
    await failing.start()
    try:
        job = await failing.queue.add({"n": 7}, correlation_id="req-show-1")
        await wait_for_state(failing.queue, job.id, JobState.FAILED)
    finally:
        await failing.stop()

    code, out, err = await oqron(capsys, nats_server, namespace, "jobs", "show", job.id)
    assert code == 0, err
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    fields = dict(re.findall(r"^(\w[\w ]*?)  +(.*)$", out, re.M))
    assert fields["job"] == job.id
    assert fields["queue"] == "cli-show"
    assert fields["state"] == "failed"
    assert re.fullmatch(r"1 of \d+", fields["attempt"])
    assert fields["progress"] == "40% halfway"
    assert fields["correlation id"] == "req-show-1"
    assert fields["data"] == '{"n":7}'
    assert fields["error"] == "RuntimeError: broken input 7"
    assert "Traceback" in out and "in handler" in out, "the stored traceback, indented"
    timeline = re.findall(r"^(?:timeline)? +[-\d]+ [:.\d]+ UTC  (\S+) +(.*)$", out, re.M)
    assert [state for state, _ in timeline] == ["waiting", "active", "failed"], out
    assert timeline[0][1] == "added" and timeline[2][1] == "RuntimeError"
    assert out.splitlines()[-3].startswith("timeline  ")
    width = out.index(job.id)
    assert all(line[width - 2 : width] == "  " for line in out.splitlines()), "aligned"

    published = await queue("cli-show", client=client).add({"n": 8})  # attempts: the worker's
    code, out, err = await oqron(capsys, nats_server, namespace, "jobs", "show", published.id)
    assert code == 0, err
    fields = dict(re.findall(r"^(\w[\w ]*?)  +(.*)$", out, re.M))
    assert fields["attempt"] == "0 (the worker's retry policy says how many)"
    assert "progress" not in fields and "error" not in fields, "nothing reported, nothing failed"

    shown = await oqron_json(capsys, nats_server, namespace, "jobs", "show", job.id)
    assert (shown["id"], shown["state"], shown["error"]["message"]) == (
        job.id, "failed", "broken input 7",
    )  # fmt: skip


async def test_dlq_list_and_replay(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    healed = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> str:
        if not healed.is_set():
            raise RuntimeError(f"broken input {ctx.data['n']}")
        return "ok"

    failing = worker(
        "cli-dlq", handler, client=client,
        retries=RetryPolicy(max=0), dead_letter=DeadLetter(enabled=True),
    )  # fmt: skip
    await failing.start()
    try:
        jobs = [await failing.queue.add({"n": n}) for n in range(2)]
        for job in jobs:
            await wait_for_state(failing.queue, job.id, JobState.FAILED)
        letters = await oqron_json(capsys, nats_server, namespace, "dlq", "list", "cli-dlq")
        assert sorted(d["id"] for d in letters) == sorted(j.id for j in jobs)
        assert {d["error"]["message"] for d in letters} == {"broken input 0", "broken input 1"}
        code, out, _ = await oqron(capsys, nats_server, namespace, "dlq", "list", "cli-dlq")
        assert code == 0 and "RuntimeError: broken input 0" in out

        healed.set()
        replayed = await oqron_json(capsys, nats_server, namespace, "dlq", "replay", "cli-dlq")
        assert sorted(replayed["replayed"]) == sorted(j.id for j in jobs)
        for job in jobs:
            await wait_for_state(failing.queue, job.id, JobState.COMPLETED)

        async def emptied() -> bool:
            return not await oqron_json(capsys, nats_server, namespace, "dlq", "list", "cli-dlq")

        await eventually(emptied, what="replayed dead letters to be gone")
    finally:
        await failing.stop()


QUEUE_COMMANDS = [
    ["queue", "pause"], ["queue", "resume"], ["queue", "drain", "--timeout", "5"],
    ["queue", "obliterate"], ["queue", "obliterate", "--force"],
    ["jobs", "list"], ["dlq", "list"], ["dlq", "replay"], ["dlq", "rejected"],
]  # fmt: skip
"""Every admin command that names a queue (the queue's name goes last)."""


async def test_a_command_on_a_queue_that_does_not_exist_is_refused_and_creates_nothing(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def streams() -> list[str]:
        return sorted(await namespace_streams(client))

    for provisioned in (False, True):  # an empty namespace, then one with another queue
        if provisioned:
            await queue("real", client=client).add({"n": 1})
        before = await streams()
        for command in QUEUE_COMMANDS:
            code, out, err = await oqron(capsys, nats_server, namespace, *command, "nosuchqueue")
            assert (code, out) == (1, ""), (command, code, out, err)
            assert "no such queue 'nosuchqueue'" in err, (command, err)
        assert await streams() == before, "nothing was created"
        names = [row["name"] for row in await oqron_json(capsys, nats_server, namespace, "queues")]
        assert names == (["real"] if provisioned else [])


async def test_connection_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["queues", "--url", "nats://127.0.0.1:1"])
    assert code == 3
    assert "could not connect" in capsys.readouterr().err
    code = await asyncio.to_thread(main, ["worker", "no_such_module_here:thing"])
    assert code == 2
    assert "cannot import 'no_such_module_here'" in capsys.readouterr().err
    code = await asyncio.to_thread(main, ["worker", "oqron_nats.ops.cli:main"])
    assert code == 2
    assert "not a worker" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "frobnicate", "x"])
    assert usage.value.code == 2


def test_the_console_script_and_the_module_run_the_same_cli() -> None:
    script = Path(sys.executable).with_name("oqron")
    assert script.exists(), "pip install -e . installs the `oqron` console script"
    for command in ([str(script)], [sys.executable, "-m", "oqron_nats"]):
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        for name in ("worker", "queues", "jobs", "queue", "dlq", "demo", "server"):
            assert name in done.stdout


@pytest.mark.parametrize("cluster", [False, True])
def test_the_development_server_runs_until_sigterm(tmp_path: Path, cluster: bool) -> None:
    argv = [sys.executable, "-m", "oqron_nats", "server", "--store", str(tmp_path / "store")]
    argv += ["--cluster"] if cluster else ["--port", "0"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        said = [server.stdout.readline() for _ in range(3 if cluster else 2)]
        assert said[-1].startswith("Ctrl-C stops it"), said
        url = said[0].split(" at ")[1].split()[0]
        assert url.count("nats://") == (3 if cluster else 1)
        if cluster:
            assert said[1].startswith("export OQRON_NATS_URL=nats://")
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


async def test_a_server_without_jetstream_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain = subprocess.Popen([find_binary(), "-a", "127.0.0.1", "-p", str(port)])  # no -js
    try:
        url = f"nats://127.0.0.1:{port}"
        for _ in range(200):  # until it listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.02)
        code = await asyncio.to_thread(main, ["queues", "--url", url])
        assert code == 3
        assert "runs without JetStream" in capsys.readouterr().err
    finally:
        plain.terminate()
        plain.wait()
