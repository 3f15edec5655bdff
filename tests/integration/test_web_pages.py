"""The status pages in a real browser (Debian's Chromium, driven by Playwright) after a multi-day
simulated account (tests/web_scenario.py): every figure on a page is checked against the database
with plain SQL here, not through the pages' own queries.

The browser is the system's (`scripts/install-browser.sh` installs Debian's package); it is never
downloaded. Set SYNCSVC_TEST_SCREENSHOT_DIR=docs/screenshots to refresh the README's screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc import scheduler, serve
from syncsvc.simulator import run_simulator
from syncsvc.store import db
from tests import web_scenario
from tests.conftest import TEMPLATE, _scratch_database
from tests.processes import serve_port
from tests.web_scenario import SCRIPT, Scenario

pytestmark = pytest.mark.db

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TOKEN = "page-token-5d1c9a"


def _chromium() -> str:
    path = os.environ.get("SYNCSVC_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Debian's chromium is not installed: run `bash scripts/install-browser.sh`"
            " (scripts/test.sh does)"
        )
    return path


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    profile = tempfile.mkdtemp(prefix="syncsvc-chromium-")
    try:
        async with async_playwright() as pw:
            # A persistent context is how Playwright takes a --user-data-dir of our own.
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=_chromium(),
                args=CHROMIUM_FLAGS,
                viewport=VIEWPORT,  # type: ignore[arg-type]
                java_script_enabled=True,  # on: a script that got through would run
            )
            try:
                assert context.browser is None or context.browser.is_connected()
                yield context  # type: ignore[misc]
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
async def account(pg_server_url: URL, pg_template: URL) -> AsyncIterator[tuple[URL, Scenario]]:
    """One database holding the eight-run scenario, shared by this module's page tests."""
    async with _scratch_database(pg_server_url, TEMPLATE) as url:
        engine = db.make_engine(url)
        try:
            async with run_simulator(web_scenario.CONFIG, host="127.0.0.1", port=0) as sim:
                scenario = await web_scenario.build(sim, engine, url)
        finally:
            await engine.dispose()
        yield url, scenario


@pytest.fixture
async def site(account: tuple[URL, Scenario]) -> AsyncIterator[str]:
    url, _ = account
    engine = db.make_engine(url)
    try:
        async with web_scenario.pages_server(
            engine, web_scenario.settings_for("http://127.0.0.1:9")
        ) as base:
            yield base
    finally:
        await engine.dispose()


async def _sql(url: URL, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _open(browser: Any, url: str) -> Page:
    page: Page = await browser.new_page()
    response = await page.goto(url)
    assert response is not None, url
    assert response.status == 200, url
    return page


async def _shot(page: Page, name: str, tmp: Path) -> None:
    """A 1280x800 screenshot, into SYNCSVC_TEST_SCREENSHOT_DIR when set (the README's images)."""
    target = Path(os.environ.get("SYNCSVC_TEST_SCREENSHOT_DIR") or tmp)
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    data = await page.screenshot(path=str(target / f"{name}.png"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1280
    assert int.from_bytes(data[20:24], "big") == 800


def _n(text: str) -> int:
    return int(text.replace(",", "").replace("–", "0").strip() or 0)


async def test_runs_page_shows_every_run_newest_first_with_its_status_in_words_and_its_counts(
    browser: Any, account: tuple[URL, Scenario], site: str, tmp_path: Path
) -> None:
    url, scenario = account
    truth = await _sql(
        url,
        "SELECT id, status, account, records, inserted, updated, deleted, rekeyed FROM runs"
        " ORDER BY id DESC",
    )
    page = await _open(browser, site + "/")
    rows = page.locator("#runs tbody tr[data-run]")
    assert await rows.count() == len(truth) == 8
    for i, t in enumerate(truth):
        row = rows.nth(i)
        assert await row.get_attribute("data-run") == str(t["id"])
        cells = [c.strip() for c in await row.locator("td").all_inner_texts()]
        # Run, status (its word, not only a colour), ..., account, env, records, ins, upd, del,
        # rekeys
        assert cells[1] == t["status"]
        assert cells[4] == t["account"]
        assert [_n(c) for c in cells[6:11]] == [
            t["records"],
            t["inserted"],
            t["updated"],
            t["deleted"],
            t["rekeyed"],
        ]
    statuses = {t["id"]: t["status"] for t in truth}
    assert statuses[scenario.runs["partial"]] == "partial"
    assert statuses[scenario.runs["held"]] == "held"
    assert statuses[scenario.runs["interrupted"]] == "interrupted"
    # The why column: the partial run names its failing unit and that unit's error.
    (failed,) = await _sql(
        url,
        "SELECT resource, scope, error_message FROM fetches"
        " WHERE run_id = $1 AND status = 'failed'",
        scenario.runs["partial"],
    )
    why = await page.locator(f"tr[data-run='{scenario.runs['partial']}'] [data-why]").inner_text()
    assert failed["scope"] == scenario.failing_event
    assert why.startswith(f"{failed['resource']} {failed['scope']}: ")
    assert failed["error_message"][:60] in why
    held_why = await page.locator(f"tr[data-run='{scenario.runs['held']}'] td.why").inner_text()
    assert "live rows would be deleted" in held_why
    await _shot(page, "runs", tmp_path)


async def test_partial_run_page_lists_the_failed_unit_first_with_its_code_and_error(
    browser: Any, account: tuple[URL, Scenario], site: str, tmp_path: Path
) -> None:
    url, scenario = account
    run_id = scenario.runs["partial"]
    units = await _sql(
        url,
        "SELECT id, status, attempts, records, error_code, error_message FROM fetches"
        " WHERE run_id = $1",
        run_id,
    )
    page = await _open(browser, f"{site}/runs/{run_id}")
    rows = page.locator("#units tbody tr[data-unit]")
    assert await rows.count() == len(units)
    failed = next(u for u in units if u["status"] == "failed")
    assert await rows.first.get_attribute("data-unit") == str(failed["id"])
    cells = [c.strip() for c in await rows.first.locator("td").all_inner_texts()]
    assert cells[2] == "failed"
    assert _n(cells[3]) == failed["attempts"] == 2
    error = await page.locator(f"tr[data-error-of='{failed['id']}']").inner_text()
    assert failed["error_message"] in error
    assert (f"code {failed['error_code']}" in error) == (failed["error_code"] is not None)
    by_id = {str(u["id"]): u for u in units}
    for i in range(await rows.count()):
        row = rows.nth(i)
        u = by_id[await row.get_attribute("data-unit") or ""]
        cells = [c.strip() for c in await row.locator("td").all_inner_texts()]
        assert cells[2] == u["status"]
        assert _n(cells[5]) == u["records"]
    await _shot(page, "run-partial", tmp_path)


async def test_held_run_page_shows_each_held_scope_its_numbers_and_the_override_command(
    browser: Any, account: tuple[URL, Scenario], site: str, tmp_path: Path
) -> None:
    url, scenario = account
    run_id = scenario.runs["held"]
    held = await _sql(
        url,
        """
SELECT id, h ->> 'event_guid' AS event_guid, (h ->> 'live')::int AS live,
       (h ->> 'deletes')::int AS deletes
FROM fetches, jsonb_array_elements(details -> 'held') AS h
WHERE run_id = $1 AND status = 'held'
""",
        run_id,
    )
    assert held
    page = await _open(browser, f"{site}/runs/{run_id}")
    assert (await page.locator("#override").inner_text()).strip() == "syncsvc run --override-hold"
    rows = page.locator("#held tbody tr")
    assert await rows.count() == len(held)
    for h in held:
        row = page.locator(f"#held tr[data-held='{h['id']}:{h['event_guid']}']")
        assert _n(await row.locator("[data-live]").inner_text()) == h["live"]
        assert _n(await row.locator("[data-deletes]").inner_text()) == h["deletes"]
        share = await row.locator("[data-share]").inner_text()
        assert share == f"{h['deletes'] / h['live'] * 100:.1f}%"
    assert "1.0%" in await page.locator("#held").inner_text()  # the threshold it was held at
    await _shot(page, "run-held", tmp_path)


async def test_interrupted_run_page_says_interrupted_in_words(
    browser: Any, account: tuple[URL, Scenario], site: str
) -> None:
    _, scenario = account
    page = await _open(browser, f"{site}/runs/{scenario.runs['interrupted']}")
    assert (await page.locator("h1 .status").inner_text()).strip() == "interrupted"
    assert "stopped by a signal" in await page.locator("#why").inner_text()


async def test_custom_value_with_a_script_element_renders_as_text_and_never_runs(
    browser: Any, account: tuple[URL, Scenario], site: str, tmp_path: Path
) -> None:
    url, scenario = account
    run_id = scenario.runs["script"]
    (stored,) = await _sql(
        url,
        "SELECT count(*) AS n FROM changes WHERE run_id = $1"
        " AND after -> 'customFields' ->> 'type_business' = $2",
        run_id,
        SCRIPT,
    )
    assert stored["n"] > 0  # the API's markup reached the change log as a plain value
    page = await _open(browser, f"{site}/runs/{run_id}")
    samples = await page.locator("#samples").inner_text()
    assert "custom.type_business" in samples
    assert SCRIPT in samples  # shown as the text it is
    assert await page.evaluate("window.__pwned") is None  # and never executed
    assert await page.locator("script").count() == 0
    await page.locator("#samples").scroll_into_view_if_needed()
    html = await page.content()
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    await _shot(page, "run", tmp_path)


async def test_trends_page_charts_the_last_30_days_as_inline_svg_with_nothing_from_outside(
    browser: Any, account: tuple[URL, Scenario], site: str, tmp_path: Path
) -> None:
    page: Page = await browser.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    response = await page.goto(site + "/trends")
    assert response is not None
    assert response.status == 200
    assert await page.locator(".chart svg").count() == 3
    assert await page.locator("script").count() == 0
    assert requested == [site + "/trends"]  # no script, style, font or image from anywhere
    text = await page.locator("main").inner_text()
    assert "(8 runs)" in text
    await _shot(page, "trends", tmp_path)


async def test_consumers_page_shows_cursor_lag_and_a_failing_delivery(
    browser: Any, account: tuple[URL, Scenario], site: str, tmp_path: Path
) -> None:
    url, _ = account
    conn = await asyncpg.connect(db.libpq_url(url))
    try:
        head = await conn.fetchval("SELECT max(seq) FROM changes")
        await conn.execute(
            """
INSERT INTO consumers (name, cursor, webhook_url, status, last_error, failing_since,
                       last_delivered_at, filters)
VALUES ('warehouse', $1, NULL, 'active', NULL, NULL, now(), '{"entity": ["user"]}'),
       ('crm-mirror', $2, 'https://hooks.example/secret-path?sig=abc', 'failing',
        'HTTP 503 from the webhook <b>after</b> 5 attempts', now() - interval '3 hours',
        now() - interval '4 hours', '{}')
ON CONFLICT (name) DO NOTHING
""",
            head,
            head - 120,
        )
    finally:
        await conn.close()
    page = await _open(browser, site + "/consumers")
    crm = page.locator("tr[data-consumer='crm-mirror']")
    assert (await crm.locator(".status").inner_text()).strip() == "failing"
    assert _n(await crm.locator("[data-lag-rows]").inner_text()) == 120
    wh = page.locator("tr[data-consumer='warehouse']")
    assert _n(await wh.locator("[data-lag-rows]").inner_text()) == 0
    text = await page.locator("#consumers").inner_text()
    assert "HTTP 503 from the webhook <b>after</b> 5 attempts" in text
    assert "secret-path" not in await page.content()  # a webhook URL may carry a secret
    await _shot(page, "consumers", tmp_path)


async def test_now_page_shows_the_run_in_progress_its_units_the_schedule_and_health(
    browser: Any, engine: AsyncEngine, db_url: URL, tmp_path: Path
) -> None:
    async with run_simulator(web_scenario.CONFIG, host="127.0.0.1", port=0) as sim:
        settings = web_scenario.settings_for(sim.base_url, schedule="30 2 * * *")
        await sim.control({"faults": [{"kind": "hold", "resource": "sessionData.do", "times": 1}]})
        run = asyncio.create_task(scheduler.run_once(settings, engine))
        try:
            # Synchronize on state: the simulator has the session unit's request (and holds it).
            stats = sim.simulator.stats
            while not stats.requests["sessionData.do"]:
                stats.changed.clear()
                await stats.changed.wait()
            health = serve.Health(engine, settings.schedule, time.time(), 3600.0)
            async with web_scenario.pages_server(engine, settings, health) as base:
                page = await _open(browser, base + "/now")
                running = await page.locator("#running").inner_text()
                (run_row,) = await _sql(db_url, "SELECT id FROM runs WHERE status = 'running'")
                assert f"Run #{run_row['id']}" in running
                assert "sessionData.do" in running  # in flight
                assert "02:30:00 UTC" in await page.locator("#schedule").inner_text()
                ok, reason = await health.check()
                health_text = await page.locator("#health").inner_text()
                assert ("healthy" if ok else "unhealthy") in health_text
                assert reason in health_text
                await _shot(page, "now", tmp_path)
        finally:
            await sim.control({"release": True})
            result = await run
        assert result.status == "succeeded"


async def test_token_guards_the_pages_but_not_healthz_or_metrics_and_is_never_shown(
    account: tuple[URL, Scenario],
) -> None:
    url, scenario = account
    engine = db.make_engine(url)
    settings = web_scenario.settings_for("http://127.0.0.1:9", status_page_token=TOKEN)
    try:
        async with (
            web_scenario.pages_server(engine, settings) as base,
            aiohttp.ClientSession() as http,
        ):
            pages = ["/", f"/runs/{scenario.runs['held']}", "/trends", "/consumers", "/now"]
            for path in pages:
                async with http.get(base + path) as resp:
                    assert resp.status == 401, path
                    assert resp.headers["WWW-Authenticate"].startswith("Basic")
                wrong = "Basic " + base64.b64encode(b"ops:wrong").decode()
                async with http.get(base + path, headers={"Authorization": wrong}) as resp:
                    assert resp.status == 401, path
            for path in ("/healthz", "/metrics"):
                async with http.get(base + path) as resp:
                    assert resp.status in (200, 503), path
            basic = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
            for header in (basic, f"Bearer {TOKEN}"):
                for path in pages:
                    async with http.get(base + path, headers={"Authorization": header}) as resp:
                        body = await resp.text()
                        assert resp.status == 200, path
                        assert TOKEN not in body
                        assert "sim-account-token" not in body
                        assert "script-src" not in resp.headers["Content-Security-Policy"]
                        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    finally:
        await engine.dispose()


async def test_bad_run_ids_get_a_one_line_answer_not_a_traceback(site: str) -> None:
    async with aiohttp.ClientSession() as http:
        for path, status in (("/runs/999999", 404), ("/runs/x", 400), ("/?before=-1", 400)):
            async with http.get(site + path) as resp:
                assert resp.status == status, path
                assert len((await resp.text()).strip().splitlines()) == 1


async def test_syncsvc_serve_serves_the_pages_behind_a_token_read_from_a_file(
    db_url: URL, tmp_path: Path
) -> None:
    token_file = tmp_path / "page-token"
    token_file.write_text(TOKEN + "\n")
    proc = _start_serve(db_url, token_file, tmp_path)
    try:
        port = await asyncio.to_thread(serve_port, proc)
        base = f"http://127.0.0.1:{port}"
        basic = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as resp:
                assert resp.status == 401
            async with http.get(base + "/", headers={"Authorization": basic}) as resp:
                assert resp.status == 200
                assert "No runs yet." in await resp.text()
            async with http.get(base + "/now", headers={"Authorization": basic}) as resp:
                assert "none was due since the service started" in await resp.text()
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=120)
    assert proc.returncode == 0, err
    assert TOKEN not in out + err


def _start_serve(url: URL, token_file: Path, home: Path) -> subprocess.Popen[str]:
    """`syncsvc serve` as deployed: settings from the environment, the page token from a file."""
    return subprocess.Popen(
        [sys.executable, "-m", "syncsvc", "serve"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "SYNCSVC_DATABASE_URL": db.libpq_url(url),
            "SYNCSVC_BASE_URL": "http://127.0.0.1:9/api/",
            "SYNCSVC_API_TOKEN": "sim-account-token",
            "SYNCSVC_STATUS_PAGE_TOKEN_FILE": str(token_file),
            "SYNCSVC_LOG_FORMAT": "json",
            "SYNCSVC_SERVE_PORT": "0",
            "SYNCSVC_SERVE_HOST": "127.0.0.1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
