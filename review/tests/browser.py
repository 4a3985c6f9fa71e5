"""Real Chromium for the browser tests (review/tests/test_browser.py), through Playwright's sync API.

A pytest plugin (the test module names it in ``pytest_plugins``):

- ``chromium`` fixture: a ``BrowserSession`` that launches Debian's Chromium (``$HITL_CHROMIUM``,
  else ``/usr/bin/chromium``; Playwright's own browsers are not downloaded) on first use. Start it
  only once the test's rows are written and its server runs: while Playwright's sync API is
  active its event loop runs in this thread, and Django refuses database calls from a thread
  with a running loop (SynchronousOnlyOperation). It is closed before the server is stopped and
  before the test database is flushed (it depends on ``serve``).
- On a failure (setup or call), a full-page screenshot of every open page goes to
  ``var/test-artifacts/`` and the report gets a section with their paths, each page's URL and
  the tail of every server's log, so all of it shows in the CI log next to the failure.

The root conftest skips tests marked ``browser`` when the browser is missing, or fails them when
``HITL_REQUIRE_BROWSER=1`` (CI).
"""
import os
import re
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 20_000  # each wait on a condition: generous, for a slow shared machine (a test takes ~5-10 s)
PASSWORD = "browser-pw-1"  # the reviewers' password, typed into the admin login form
ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"

_SESSION = pytest.StashKey()


def chromium_executable() -> str:
    return os.environ.get("HITL_CHROMIUM") or CHROMIUM


def server_password_hash(password: str = PASSWORD, _cache={}) -> str:
    """A hash the server accepts: the test settings hash with MD5 only (fast), the server runs
    the real settings, whose hashers do not include MD5. PBKDF2 with the default iterations
    (so the server does not rehash it at login); computed once per run."""
    if password not in _cache:
        from django.contrib.auth.hashers import PBKDF2PasswordHasher

        hasher = PBKDF2PasswordHasher()
        _cache[password] = hasher.encode(password, hasher.salt())
    return _cache[password]


class BrowserSession:
    def __init__(self):
        self._playwright = None
        self.browser = None
        self.contexts = []
        self.servers = []  # core.tests.test_asgi_handler.Server: their logs go into the failure report

    def _launch(self):
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=WAIT_MS)  # expect()'s own default is 5 s, not the context's timeout
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=chromium_executable(),
            args=["--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check"])

    def new_context(self, server, **options):
        """A fresh browser profile (its own cookies) on ``server``; pages wait up to WAIT_MS.
        ``options`` go to Playwright's new_context (a phone: ``viewport``, ``has_touch``, ``is_mobile``)."""
        if self.browser is None:
            self._launch()
        if server not in self.servers:
            self.servers.append(server)
        context = self.browser.new_context(**{"base_url": f"http://127.0.0.1:{server.port}",
                                              "viewport": {"width": 1280, "height": 900}, **options})
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        self.contexts.append(context)
        return context

    def capture(self, test_name: str) -> str:
        """Screenshots of every open page, and the servers' log tails: the report's text."""
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:120]
        lines = []
        for c, context in enumerate(self.contexts):
            try:
                pages = list(context.pages)
            except Exception as exc:  # noqa: BLE001 (a crashed browser: report it, keep going)
                lines.append(f"context {c}: pages unavailable ({exc})")
                continue
            for p, page in enumerate(pages):
                path = ARTIFACTS_DIR / f"{safe}-{stamp}-context{c}-page{p}.png"
                try:
                    page.screenshot(path=str(path), full_page=True, timeout=10_000)
                    lines.append(f"screenshot: {path}  (url {page.url})")
                except Exception as exc:  # noqa: BLE001
                    lines.append(f"screenshot of context {c} page {p} ({page.url}) failed: {exc}")
        if not lines:
            lines.append("no page was open")
        for server in self.servers:
            lines.append(f"\n--- tail of the log of daphne on port {server.port} "
                         f"({'running' if server.proc.poll() is None else f'exited {server.proc.returncode}'}) ---")
            try:
                lines.append(server.log())
            except OSError as exc:
                lines.append(f"(log unreadable: {exc})")
        return "\n".join(lines)

    def close(self):
        for context in self.contexts:
            try:
                context.close()
            except Exception:  # noqa: BLE001 (closing after a crash)
                pass
        try:
            if self.browser is not None:
                self.browser.close()
        finally:
            # Always (a failed launch too): until Playwright stops, its event loop runs in this
            # thread and the test database's flush would be refused.
            if self._playwright is not None:
                self._playwright.stop()
                self._playwright = None


@pytest.fixture
def chromium(request, serve):
    session = BrowserSession()
    request.node.stash[_SESSION] = session
    try:
        yield session
    finally:
        request.node.stash[_SESSION] = None
        session.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    session = item.stash.get(_SESSION, None)
    if report.failed and report.when in ("setup", "call") and session is not None:
        try:
            text = session.capture(item.nodeid)
        except Exception as exc:  # noqa: BLE001 (the report must still go out)
            text = f"capturing the failure artifacts failed: {exc!r}"
        report.sections.append(("browser: screenshots and server log", text))
    return report


# --- page helpers -----------------------------------------------------------------------------
def log_in(context, username: str, password: str = PASSWORD, next_path: str = "/review/"):
    """A page logged in through the admin login form, on ``next_path``, its websocket live."""
    page = context.new_page()
    page.goto(f"/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.url.endswith(next_path), (page.url, page.content()[:2000])
    wait_live(page)
    return page


def wait_live(page):
    """Until live.js runs (htmx and the static files were served) and its websocket is open."""
    page.wait_for_function("() => !!(window.htmx && window.hitlLive)")
    page.locator("#live-status[data-state=live]").wait_for()


def requests_to(page, wanted) -> list:
    """The URLs of the page's requests from now on for which ``wanted(url)`` holds, as they come."""
    urls: list = []
    page.on("request", lambda r: urls.append(r.url) if wanted(r.url) else None)
    return urls


def open_page(context, path: str):
    """A new page of ``context`` (already logged in) on ``path``, its websocket live."""
    page = context.new_page()
    page.goto(path)
    wait_live(page)
    return page


def mark_page(page):
    """Marks the loaded document: ``assert_not_reloaded`` then proves no reload or navigation happened."""
    page.evaluate("() => { window.__hitlNotReloaded = true; }")


def assert_not_reloaded(page):
    assert page.evaluate("() => window.__hitlNotReloaded === true"), f"{page.url} was reloaded"


def full_log(server) -> str:
    return server.log_path.read_text(errors="replace")
