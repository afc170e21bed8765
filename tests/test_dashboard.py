"""The dashboard over HTTP, served for real against a real nats-server: what it shows, what it
masks, what it refuses (auth, CSRF, read-only, an unsafe bind), and its live events."""

from __future__ import annotations

import asyncio
import html
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from oqron_nats import Client, JobState, RetryPolicy, queue
from oqron_nats.core.errors import ConfigError
from oqron_nats.dashboard import BasicAuth, BearerAuth
from oqron_nats.dashboard.live import Rates
from oqron_nats.dashboard.settings import check_bind, parse_auth, settings, trace_link
from oqron_nats.ops import admin
from oqron_nats.ops.cli import main
from oqron_nats.testing.server import LocalServer

from .dashboard_helpers import Served
from .helpers import eventually

SECRET = "4111-1111-1111-1111"
ROOT = Path(__file__).resolve().parent.parent


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has a form with a CSRF token"
    return found.group(1)


async def test_the_overview_lists_each_queue_with_its_counts(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    q = queue("mail", client=client)
    for n in range(3):
        await q.add({"n": n})
    await q.add({"n": 9}, delay=3600)
    await queue("empty", client=client).add({"n": 0})
    await queue("empty", client=client).obliterate()
    with Served(nats_server.url, namespace) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            page = await http.get("/")
    assert page.status_code == 200
    row = re.search(r'<tr id="queue-mail".*?</tr>', page.text, re.S)
    assert row, page.text
    counts = dict(re.findall(r'data-state="([a-z-]+)">(\d+)<', row.group(0)))
    assert counts["waiting"] == "3" and counts["delayed"] == "1" and counts["failed"] == "0"
    assert 'id="queue-empty"' in page.text


async def test_no_secret_value_is_ever_rendered(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    async def handler(ctx: Any) -> None:
        raise ValueError(f"card {ctx.data['card']} was declined")  # a careless handler

    # the worker's queue knows no secret fields: only the dashboard is told
    q = queue("pay", handler, client=client, retries=RetryPolicy(max=1))
    async with q:
        job = await q.add({"card": SECRET, "password": "hunter2-long", "amount": 5})
        await job.wait(10)
    with Served(nats_server.url, namespace, secret_fields=["card"]) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            pages = [
                await http.get(path)
                for path in (
                    "/", "/queues/pay?state=failed", "/queues/pay?state=dead",
                    f"/queues/pay/jobs/{job.id}", f"/queues/pay/jobs/{job.id}/detail",
                    f"/queues/pay?find={job.id}",
                )
            ]  # fmt: skip
    assert [p.status_code for p in pages] == [200] * len(pages)
    for page in pages:
        text = html.unescape(page.text)
        assert SECRET not in text and "hunter2-long" not in text, page.url
    shown = html.unescape(pages[3].text)
    assert '"card": "***"' in shown and '"amount": 5' in shown
    assert "card *** was declined" in shown, "the error is shown, its secret masked"
    # each attempt's error, newest first, masked as well (the worker's queue did not mask it)
    assert shown.index('data-attempt="2"') < shown.index('data-attempt="1"')
    assert shown.count("card *** was declined") >= 3


async def test_read_only_hides_and_refuses_every_action(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    q = queue("ro", client=client)
    job = await q.add({"n": 1})
    with Served(nats_server.url, namespace, read_only=True) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            page = await http.get("/queues/ro")
            job_page = await http.get(f"/queues/ro/jobs/{job.id}")
            posts = [
                await http.post("/queues/ro/pause", data={"csrf": "x"}),
                await http.post(f"/queues/ro/jobs/{job.id}/cancel", data={"csrf": "x"}),
            ]
    assert '<form method="post"' not in page.text + job_page.text
    assert [p.status_code for p in posts] == [403, 403]
    assert "read-only" in posts[0].text
    assert not await q.is_paused()
    assert (await q.get_job(job.id)).state == JobState.WAITING  # type: ignore[union-attr]


async def test_an_action_needs_its_csrf_token_and_the_same_origin(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    q = queue("guarded", client=client)
    await q.add({"n": 1})
    with Served(nats_server.url, namespace) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            token = csrf_of((await http.get("/queues/guarded")).text)
            no_token = await http.post("/queues/guarded/pause")
            wrong = await http.post("/queues/guarded/pause", data={"csrf": "0" * 64})
            elsewhere = await http.post(
                "/queues/guarded/pause", data={"csrf": token},
                headers={"Origin": "http://evil.example"},
            )  # fmt: skip
            assert not await q.is_paused()
            async with httpx.AsyncClient(base_url=served.url) as stranger:  # no cookie
                cookieless = await stranger.post("/queues/guarded/pause", data={"csrf": token})
            assert [r.status_code for r in (no_token, wrong, elsewhere, cookieless)] == [403] * 4
            assert not await q.is_paused()
            done = await http.post("/queues/guarded/pause", data={"csrf": token})
    assert done.status_code == 303 and done.headers["location"].endswith("done=pause")
    assert await q.is_paused()


async def test_remove_a_job_from_its_page(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    """Remove: a POST with the CSRF token; an active job is refused (cancel first), an unknown
    or already removed one is a 404, and read-only refuses it before anything is read."""
    started = asyncio.Event()

    async def handler(ctx: Any) -> None:
        started.set()
        await asyncio.sleep(30)

    q = queue("rm-page", handler, client=client, retries=RetryPolicy(max=0))
    waiting = await q.add({"n": 1})
    with Served(nats_server.url, namespace) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            page = (await http.get(f"/queues/rm-page/jobs/{waiting.id}")).text
            assert 'id="action-remove"' in page and "required" in page
            token = csrf_of(page)
            no_token = await http.post(f"/queues/rm-page/jobs/{waiting.id}/remove")
            assert no_token.status_code == 403
            url = f"/queues/rm-page/jobs/{waiting.id}/remove"
            done = await http.post(url, data={"csrf": token})
            assert done.status_code == 303
            assert done.headers["location"].endswith("/queues/rm-page?done=remove")
            assert await q.get_job(waiting.id) is None
            again = await http.post(url, data={"csrf": token})
            assert again.status_code == 404 and waiting.id in html.unescape(again.text)
            async with q:
                running = await q.add({"n": 2})
                await asyncio.wait_for(started.wait(), 10)
                await eventually(lambda: _is_active(q, running.id), what="the job to run")
                shown = (await http.get(f"/queues/rm-page/jobs/{running.id}")).text
                assert 'id="action-remove"' not in shown  # cancel first
                refused = await http.post(
                    f"/queues/rm-page/jobs/{running.id}/remove", data={"csrf": token}
                )
                assert refused.status_code == 409 and "cancel it first" in refused.text
                assert (await q.get_job(running.id)).state == JobState.ACTIVE  # type: ignore[union-attr]
                await q.cancel(running.id)
    kept = await q.add({"n": 3})
    with Served(nats_server.url, namespace, read_only=True) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            posted = await http.post(f"/queues/rm-page/jobs/{kept.id}/remove", data={"csrf": "x"})
    assert posted.status_code == 403
    assert await q.get_job(kept.id) is not None


async def _is_active(q: Any, job_id: str) -> bool:
    job = await q.get_job(job_id)
    return job is not None and job.state == JobState.ACTIVE


async def test_behind_a_proxy_that_rewrites_host_the_public_origin_passes(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    """A reverse proxy at https://ops.example.com forwards to the dashboard with its own Host
    (here 127.0.0.1:port): the browser's Origin is the public one. Refused until the dashboard
    is told its public URL; then that origin passes, and no other (nor plain http)."""
    q = queue("proxied", client=client)
    await q.add({"n": 1})
    public = {"Origin": "https://ops.example.com"}
    for public_url, expected in ((None, 403), ("https://OPS.example.com/oqron/", 303)):
        options = {} if public_url is None else {"public_url": public_url}
        with Served(nats_server.url, namespace, **options) as served:
            async with httpx.AsyncClient(base_url=served.url) as http:
                token = csrf_of((await http.get("/queues/proxied")).text)
                others = [
                    await http.post("/queues/proxied/pause", data={"csrf": token},
                                    headers={"Origin": origin})
                    for origin in ("http://ops.example.com", "https://ops.example.com:8443",
                                   "https://evil.example")
                ]  # fmt: skip
                assert [r.status_code for r in others] == [403] * 3
                assert not await q.is_paused()
                sent = await http.post(
                    "/queues/proxied/pause", data={"csrf": token}, headers=public
                )
                referred = await http.post(
                    "/queues/proxied/resume", data={"csrf": token},
                    headers={"Referer": "https://ops.example.com/oqron/queues/proxied"},
                )  # fmt: skip
        assert (sent.status_code, referred.status_code) == (expected, expected), public_url
    assert not await q.is_paused()  # paused, then resumed, through the public origin


def test_the_public_url_must_be_an_http_url() -> None:
    assert settings(public_url="https://ops.example.com/x").public_origin == (
        "https://ops.example.com"
    )
    assert settings(public_url="http://10.0.0.5:8080").public_origin == "http://10.0.0.5:8080"
    assert settings().public_origin is None
    for bad in ("ops.example.com", "ftp://ops.example.com", "https://", "https://u:p@ops.x",
                "https://ops.example.com/?a=1", "https://ops.example.com:99999"):  # fmt: skip
        with pytest.raises(ConfigError):
            settings(public_url=bad)


async def test_obliterate_needs_the_queue_name_typed(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    q = queue("doomed", client=client)
    await q.add({"n": 1})
    with Served(nats_server.url, namespace) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            token = csrf_of((await http.get("/queues/doomed")).text)
            typo = await http.post(
                "/queues/doomed/obliterate", data={"csrf": token, "confirm": "doome"}
            )
            assert typo.status_code == 400 and await q.count() == 1
            done = await http.post(
                "/queues/doomed/obliterate", data={"csrf": token, "confirm": "doomed"}
            )
    assert done.status_code == 303
    assert await q.count() == 0


@pytest.mark.parametrize("kind", ["basic", "bearer"])
async def test_a_request_without_auth_is_refused(
    nats_server: LocalServer, client: Client, namespace: str, kind: str
) -> None:
    await queue("private", client=client).add({"n": 1})
    auth = BasicAuth("ops", "s3cret-pass") if kind == "basic" else BearerAuth("tok-123456")
    good = ("ops", "s3cret-pass") if kind == "basic" else None
    headers = {} if kind == "basic" else {"Authorization": "Bearer tok-123456"}
    with Served(nats_server.url, namespace, auth=auth) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            for path in ("/", "/queues/private", "/events?overview=1", "/static/style.css"):
                refused = await http.get(path)
                assert refused.status_code == 401, path
                assert "private" not in refused.text
            wrong = await http.get("/", auth=("ops", "nope"), headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 401
            assert (await http.post("/queues/private/pause")).status_code == 401
            ok = await http.get("/", auth=good, headers=headers)
    assert ok.status_code == 200 and 'id="queue-private"' in ok.text
    assert refused.headers["www-authenticate"].lower().startswith(kind)


def test_auth_settings_read_secrets_from_files_and_never_show_them(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("correct horse\n")
    auth = parse_auth(f"basic:ops:{password}")
    assert auth == BasicAuth("ops", "correct horse")
    assert "correct" not in repr(auth)
    (tmp_path / "empty").write_text("\n")
    for bad in ("basic:ops", f"basic::{password}", "token:x", f"basic:ops:{tmp_path / 'empty'}",
                f"bearer:{tmp_path / 'missing'}"):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_auth(bad)


def test_binding_beyond_loopback_needs_auth_or_read_only() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, settings())
    for host in ("0.0.0.0", "10.1.2.3", "::", "dashboard.internal"):
        with pytest.raises(ConfigError, match="without --auth or --read-only"):
            check_bind(host, settings())
        check_bind(host, settings(read_only=True))
        check_bind(host, settings(auth=BearerAuth("t")))


def test_the_command_refuses_an_open_bind_before_serving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dashboard", "--host", "0.0.0.0", "--url", "nats://127.0.0.1:1"]) == 2
    assert "without --auth or --read-only" in capsys.readouterr().err


def test_trace_links_fill_their_template() -> None:
    values = {"trace_id": "abc", "correlation_id": "req 1", "job_id": "j1", "queue": "q"}
    assert trace_link("http://j/trace/{trace_id}", values) == "http://j/trace/abc"
    assert trace_link("http://j/search?tags=c%3D{correlation_id}", values) == (
        "http://j/search?tags=c%3Dreq%201"
    )
    assert trace_link("http://j/trace/{trace_id}", {**values, "trace_id": ""}) is None
    with pytest.raises(ConfigError):
        settings(trace_url="http://j/{span}")


def test_rates_count_an_hour_per_minute() -> None:
    rates = Rates()
    now = 1_000_000 * 60.0
    rates.count("q", "completed", now)
    rates.count("q", "completed", now - 60)
    rates.count("q", "failed", now - 59 * 60)
    rates.count("q", "failed", now - 61 * 60)  # more than an hour ago
    series = rates.series("q", now)
    assert len(series) == 60
    assert series[-1] == (1, 0) and series[-2] == (1, 0) and series[0] == (0, 1)
    assert sum(f for _, f in series) == 1


async def test_an_unknown_queue_is_a_404_and_is_not_created(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    with Served(nats_server.url, namespace) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:
            missing = await http.get("/queues/nosuch")
            bad = await http.get("/queues/no..such")
            gone = await http.get("/find?id=nojob")
    assert missing.status_code == 404 and "no such queue" in missing.text
    assert bad.status_code == 400
    assert gone.status_code == 404
    assert "nosuch" not in await admin.queue_names(client), "looking created no queue"


async def test_events_tell_a_queue_page_what_changed_as_it_happens(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    q = queue("evented", client=client)
    await q.add({"n": 0})
    seen: list[str] = []
    with Served(nats_server.url, namespace) as served:
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=10) as http,
            http.stream("GET", "/events?queue=evented") as stream,
        ):

            async def read() -> None:
                async for line in stream.aiter_lines():
                    seen.append(line)

            reader = asyncio.create_task(read())
            try:

                async def has(line: str) -> bool:
                    return line in seen

                await eventually(lambda: has("data: connected"), what="the first refresh")
                await q.add({"n": 1})
                await eventually(lambda: has("data: added"), what="the added event")
            finally:
                reader.cancel()
    assert seen[0] == ": connected"


async def test_the_command_serves_on_loopback_and_stops_cleanly_with_a_page_open(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    await queue("served", client=client).add({"n": 1})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "oqron_nats", "dashboard", "--port", str(port),
               "--url", nats_server.url, "--namespace", namespace]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               text=True)  # fmt: skip
    try:
        banner = await asyncio.to_thread(process.stdout.readline)  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}/" in banner
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert 'id="queue-served"' in (await http.get("/")).text
            async with http.stream("GET", "/events?overview=1") as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == ": connected"
                process.send_signal(signal.SIGINT)  # with the event stream still open
                code = await asyncio.to_thread(process.wait, 20)
    finally:
        process.kill()
        stderr = process.communicate()[1]
    assert code == 0, stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
