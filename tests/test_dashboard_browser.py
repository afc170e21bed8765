"""The dashboard in a real browser: headless Debian Chromium driven by Selenium, against the real
dashboard and a real nats-server. Also makes the README's screenshots (docs/dashboard-*.png).

Needs ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped without them.
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from oqron_nats import Client, JobState, RetryPolicy, queue
from oqron_nats.dashboard import BearerAuth
from oqron_nats.testing.server import LocalServer

from .dashboard_helpers import Served

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)
DOCS = Path(__file__).resolve().parent.parent / "docs"
SHOTS = (
    DOCS
    if os.environ.get("OQRON_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "oqron-shots"
)
"""Where the screenshots go: the README's (docs/) only when asked, so a test run leaves the tree
clean."""
SECRET = "4111-1111-1111-1111"
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = Options()
    options.binary_location = CHROMIUM or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1360,860", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    SHOTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


async def call(fn: Callable[..., T], *args: Any) -> T:
    """A blocking browser call, off the event loop (the test's workers keep running)."""
    return await asyncio.to_thread(fn, *args)


async def until(check: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Ask the browser until ``check`` is truthy (no reload happens meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await call(check)
        except Exception as exc:  # an element swapped out under us: ask again
            result = None
            last: Any = exc
        else:
            last = result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.1)


def text_of(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def click(driver: Any, element_id: str) -> bool:
    driver.find_element(By.ID, element_id).click()
    return True


def cell(driver: Any, queue_name: str, state: str) -> str:
    return text_of(driver, f'#queue-{queue_name} td[data-state="{state}"]')


async def mark_page(driver: Any) -> None:
    """Mark the loaded page, so a later check can tell it was never reloaded."""
    await call(driver.execute_script, "window.__notReloaded = true;")


async def not_reloaded(driver: Any) -> bool:
    return bool(await call(driver.execute_script, "return window.__notReloaded === true;"))


async def test_the_overview_counts_and_a_new_job_appear_without_a_reload(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    q = queue("emails", client=client)
    for n in range(2):
        await q.add({"n": n})
    with Served(nats_server.url, namespace) as served:
        await call(browser.get, served.url + "/")
        await until(lambda: cell(browser, "emails", "waiting") == "2", "2 waiting")
        await mark_page(browser)
        await q.add({"n": 2})
        await until(lambda: cell(browser, "emails", "waiting") == "3", "the overview to count 3")
        assert await not_reloaded(browser)

        await call(browser.get, served.url + "/queues/emails")
        await mark_page(browser)
        late = await q.add({"n": 3})
        await until(lambda: browser.find_elements(By.ID, f"job-{late.id}"), "the new job's row")
        assert await not_reloaded(browser)


async def test_a_running_jobs_progress_bar_moves(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    release = asyncio.Event()

    async def handler(ctx: Any) -> None:
        for percent in range(5, 100, 5):
            ctx.progress(percent, f"step {percent // 5}")
            await asyncio.sleep(0.25)
        await release.wait()

    q = queue("video", handler, client=client)
    with Served(nats_server.url, namespace) as served:
        async with q:
            job = await q.add({"file": "cat.mp4"})
            await call(browser.get, f"{served.url}/queues/video/jobs/{job.id}")
            await mark_page(browser)

            def now() -> int:
                bar = browser.find_element(By.CSS_SELECTOR, "#progress .progress")
                return int(bar.get_attribute("aria-valuenow") or 0)

            first = await until(now, "some progress")
            later = await until(lambda: now() >= first + 15 and now(), "the bar to move on")
            assert later > first and await not_reloaded(browser)
            await call(browser.save_screenshot, str(SHOTS / "dashboard-job.png"))
            release.set()
            await until(lambda: text_of(browser, "#job-state") == "completed", "completed")


async def test_retry_of_a_failed_job_from_its_page_runs_it_to_completion(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    healthy = asyncio.Event()

    async def handler(ctx: Any) -> str:
        if not healthy.is_set():
            raise ConnectionError("the mail server is down")
        return "sent"

    q = queue("mail", handler, client=client, retries=RetryPolicy(max=0))
    with Served(nats_server.url, namespace) as served:
        async with q:
            job = await q.add({"to": "ops@example.com"})
            assert (await job.wait(10)).state == JobState.FAILED
            await call(browser.get, f"{served.url}/queues/mail/jobs/{job.id}")
            await until(lambda: "mail server is down" in text_of(browser, "#job-error"), "error")
            first = '#attempt-errors tr[data-attempt="1"]'
            said = "ConnectionError: the mail server is down"
            await until(lambda: said in text_of(browser, first), "the first attempt's error")
            healthy.set()
            await until(lambda: click(browser, "action-retry"), "the retry button")
            await until(lambda: text_of(browser, "#job-state") == "completed", "completed")
            done = await q.get_job(job.id)
            assert done is not None and done.state == JobState.COMPLETED
            assert done.result == "sent"


async def test_remove_of_a_failed_job_from_its_page(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    async def handler(ctx: Any) -> None:
        raise ValueError("bad input")

    q = queue("purge-me", handler, client=client, retries=RetryPolicy(max=0))
    with Served(nats_server.url, namespace) as served:
        async with q:
            job = await q.add({"n": 1})
            assert (await job.wait(10)).state == JobState.FAILED
        await call(browser.get, f"{served.url}/queues/purge-me/jobs/{job.id}")
        await until(lambda: click(browser, "action-remove"), "the remove button")
        await asyncio.sleep(0.3)
        assert await q.get_job(job.id) is not None, "not without ticking 'sure' (required)"
        await until(lambda: click(browser, "remove-sure"), "the checkbox")
        await until(lambda: click(browser, "action-remove"), "the remove button")
        await until(lambda: "The job was removed." in text_of(browser, "body"), "the flash")
        assert "/queues/purge-me" in browser.current_url
        assert await q.get_job(job.id) is None


async def test_pause_from_the_queue_page_stops_the_workers_claiming(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    async def handler(ctx: Any) -> None:
        return None

    q = queue("reports", handler, client=client)
    with Served(nats_server.url, namespace) as served:
        async with q:
            first = await q.add({"n": 1})
            await first.wait(10)
            await call(browser.get, f"{served.url}/queues/reports")
            await until(lambda: click(browser, "pause"), "the pause button")
            await until(lambda: browser.find_elements(By.ID, "paused-flag"), "the paused flag")
            assert await q.is_paused()
            held = await q.add({"n": 2})
            await asyncio.sleep(1.5)
            state = (await q.get_job(held.id)).state  # type: ignore[union-attr]
            assert state in (JobState.WAITING, JobState.PAUSED), "a paused queue's job ran"
            await until(lambda: click(browser, "resume"), "the resume button")
            assert (await held.wait(10)).state == JobState.COMPLETED


async def test_a_secret_field_never_appears_in_the_html(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    q = queue("payments", client=client, secret_fields=["card"])
    job = await q.add({"card": SECRET, "amount": 12})
    with Served(nats_server.url, namespace, queues=[q]) as served:
        for path in ("/", "/queues/payments", f"/queues/payments/jobs/{job.id}",
                     f"/queues/payments?find={job.id}"):  # fmt: skip
            await call(browser.get, served.url + path)
            assert SECRET not in html.unescape(await call(lambda: browser.page_source)), path
        await call(browser.get, f"{served.url}/queues/payments/jobs/{job.id}")
        await until(lambda: '"card": "***"' in text_of(browser, "#job-data"), "the masked card")


async def test_read_only_mode_shows_no_action_and_refuses_a_post(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    q = queue("ledger", client=client)
    job = await q.add({"n": 1})
    with Served(nats_server.url, namespace, read_only=True) as served:
        await call(browser.get, f"{served.url}/queues/ledger/jobs/{job.id}")
        assert await call(browser.find_elements, By.CSS_SELECTOR, "button") == []
        await call(browser.get, f"{served.url}/queues/ledger")
        assert await call(browser.find_elements, By.CSS_SELECTOR, "form[method=post]") == []
        status = await call(
            browser.execute_async_script,
            "const done = arguments[arguments.length - 1];"
            "const body = new URLSearchParams({csrf: 'x'});"
            "fetch('/queues/ledger/pause', {method: 'POST', body}).then(r => done(r.status));",
        )
    assert status == 403
    assert not await q.is_paused()


async def test_a_request_without_auth_is_refused_when_auth_is_on(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    await queue("vault", client=client).add({"n": 1})
    with Served(nats_server.url, namespace, auth=BearerAuth("t0ken-of-ops")) as served:
        await call(browser.get, served.url + "/queues/vault")
        body = await call(text_of, browser, "body")
    assert "401" in body and "vault" not in body


async def test_screenshots_of_the_overview_and_a_queue(
    nats_server: LocalServer, client: Client, namespace: str, browser: Any
) -> None:
    async def handler(ctx: Any) -> str:
        ctx.progress(50, "half way")
        await asyncio.sleep(0.05)
        if ctx.data.get("n", 0) % 7 == 3:
            raise ValueError("the template has no field 'greeting'")
        return "ok"

    emails = queue("emails", handler, client=client, retries=RetryPolicy(max=0),
                   secret_fields=["api_key"])  # fmt: skip
    thumbnails = queue("thumbnails", client=client)
    invoices = queue("invoices", client=client)
    with Served(nats_server.url, namespace, queues=[emails], refresh=0.5) as served:
        jobs = [await emails.add({"n": n, "to": f"user{n}@example.com", "api_key": SECRET})
                for n in range(40)]  # fmt: skip
        await call(browser.get, served.url + "/")  # the dashboard listens from now on
        await until(lambda: cell(browser, "emails", "waiting") == "40", "the queue listed")
        await asyncio.sleep(1.0)  # its listener is on
        async with emails:
            for job in jobs:
                await job.wait(20)
        for n in range(25):
            await thumbnails.add({"image": f"img-{n}.png"}, delay=60 if n % 5 == 0 else None)
        for n in range(8):
            await invoices.add({"invoice": n})
        await invoices.pause()
        await call(browser.get, served.url + "/")
        await until(lambda: cell(browser, "invoices", "paused") in ("0", "8"), "the overview")
        await call(browser.save_screenshot, str(SHOTS / "dashboard-overview.png"))
        await call(browser.get, served.url + "/queues/emails?state=completed")
        await call(browser.save_screenshot, str(SHOTS / "dashboard-queue.png"))
        assert SECRET not in await call(lambda: browser.page_source)
