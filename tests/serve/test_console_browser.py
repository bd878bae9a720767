"""The web console in a real browser: Debian's Chromium driven by Playwright.

Never `playwright install`: these tests launch /usr/lib/chromium/chromium (`.ci/run`
installs the `chromium` package) with --no-sandbox, and are skipped, saying why, only
when it or the playwright package is missing. They check behaviour (what a person can
see and do, and that the page changes without a reload), not pixels; the screenshots
they save (run page, report page) are artifacts to look at: in $OPSDSL_TEST_ARTIFACTS
when set, else in the test's temporary directory.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api import PACK, PEOPLE, add_user
from test_console import World
from test_serve import FIXTURES, Server

CHROMIUM = Path("/usr/lib/chromium/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `apt-get install chromium chromium-driver` (.ci/run does)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (test extra)")

# A question long enough to wrap on a phone, with a long unbroken word (a host name) in it.
QUESTION = (
    "Restart the whole api fleet now? This drains db-primary-01.eu-west-1.internal.example.com-replica-set-a "
    "and every pod behind the load balancer; customers see errors for about two minutes while the pool refills. "
    "Answer nodes to limit it (a comma-separated list), and say why in the comment."
)


def write_pack(folder: Path) -> Path:
    text = PACK.replace("Restart the fleet?", json.dumps(QUESTION))
    text = text.replace("PYTHON", json.dumps(sys.executable)).replace(
        "HELPER", json.dumps(str(FIXTURES / "serve_helper.py"))
    )
    path = folder / "console.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console-browser")
    state = tmp / "state"
    tokens = {name: add_user(state, name, role) for name, role in PEOPLE.items()}
    server = Server(tmp, "--drain-timeout", "5", pack=write_pack(tmp), state=state).start()
    world = World(server, tokens)
    try:
        yield world
    finally:
        world.close()
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("OPSDSL_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Tab:
    """One person's browser context and page, watching for CSP violations and script errors."""

    def __init__(self, browser: object, world: World, width: int = 1280, height: int = 900) -> None:
        self.world = world
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _console(self, message: object) -> None:
        if message.type in ("error", "warning") and "favicon" not in message.text:
            self.problems.append(message.text)

    def sign_in(self, name: str, then: str = "/console/runs") -> None:
        self.page.goto(self.world.server.url + then)
        assert "/console/sign-in" in self.page.url
        self.page.fill("#token", self.world.tokens.get(name, name))
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state()

    def close(self) -> None:
        self.context.close()
        csp = [p for p in self.problems if "Content Security Policy" in p or "Refused to" in p]
        assert csp == [], csp


def paused_change(world: World) -> str:
    run = world.fire({"name": "change", "labels": {"service": "api"}})
    world.wait_status(run, "paused")
    return run


def test_sign_in_is_refused_with_a_wrong_token(world: World, browser: object) -> None:
    tab = Tab(browser, world)
    tab.sign_in("opsdsl_" + "Z" * 43)
    assert tab.page.locator("[role=alert]").inner_text() == "Unknown or revoked token."
    tab.page.goto(world.server.url + "/console/runs")
    assert "/console/sign-in" in tab.page.url
    tab.close()


def test_two_people_approve_a_two_person_step_and_watch_it_finish_live(
    world: World, browser: object, artifacts: Path
) -> None:
    run = paused_change(world)
    alice, bob = Tab(browser, world), Tab(browser, world)
    alice.sign_in("alice", f"/console/runs/{run}")
    bob.sign_in("bob", f"/console/runs/{run}")
    for tab in (alice, bob):
        assert tab.page.url.endswith(f"/console/runs/{run}")
        tab.page.wait_for_selector('g[data-step="two_person"][data-status="awaiting approval"]')
    bob.page.evaluate("window.__notReloaded = true")
    alice.page.evaluate("window.__notReloaded = true")
    alice.page.screenshot(path=str(artifacts / "console-run.png"), full_page=True)

    bob.page.fill('[name="comment"]', "half-typed by bob")  # kept across the live update below
    alice.page.fill('[name="answer.nodes"]', "web-1")
    alice.page.fill('[name="comment"]', "drained first")
    alice.page.click("button.go")
    # Either the confirmation or the page's error: a refused approval says why in the failure.
    alice.page.wait_for_function(
        "document.body.innerText.includes('Approval recorded.') || document.querySelector('[role=alert]') !== null"
    )
    shown = alice.page.inner_text("body")
    assert "Approval recorded." in shown, shown[:2000]
    # bob's page learns of alice's approval without a reload
    bob.page.wait_for_selector("text=approved by alice", timeout=15_000)
    assert bob.page.evaluate("window.__notReloaded === true")
    assert bob.page.input_value('[name="comment"]') == "half-typed by bob"

    alice.page.evaluate("window.__notReloaded = true")  # alice's page was loaded again by her form's redirect
    bob.page.fill('[name="answer.nodes"]', "web-1")
    bob.page.click("button.go")
    # both watch the run end and the DAG's nodes turn
    for tab in (alice, bob):
        tab.page.wait_for_selector('#live[data-status="succeeded"]', timeout=30_000)
        tab.page.wait_for_selector('g[data-step="restart"][data-status="succeeded"]', timeout=10_000)
    assert alice.page.evaluate("window.__notReloaded === true")
    alice.page.screenshot(path=str(artifacts / "console-run-finished.png"), full_page=True)
    alice.close()
    bob.close()


def test_a_viewer_sees_no_approve_button_and_a_post_anyway_is_403(world: World, browser: object) -> None:
    run = paused_change(world)
    carol = Tab(browser, world)
    carol.sign_in("carol", f"/console/runs/{run}")
    assert carol.page.locator(".question").inner_text() == QUESTION
    assert carol.page.locator("button", has_text="Approve").count() == 0
    csrf = carol.page.locator('header input[name="csrf"]').first.get_attribute("value")
    response = carol.page.request.post(
        f"{world.server.url}/console/runs/{run}/steps/two_person/approve", form={"csrf": csrf, "comment": "me"}
    )
    assert response.status == 403 and "carol is a viewer" in response.text()
    carol.close()


def test_a_post_without_csrf_is_refused(world: World, browser: object) -> None:
    run = paused_change(world)
    alice = Tab(browser, world)
    alice.sign_in("alice", f"/console/runs/{run}")
    response = alice.page.request.post(
        f"{world.server.url}/console/runs/{run}/steps/two_person/approve", form={"comment": "no token"}
    )
    assert response.status == 403 and "CSRF" in response.text()
    assert world.entries(run, "approval.recorded") == []
    alice.close()


def test_on_a_phone_the_approval_question_is_shown_whole(world: World, browser: object, artifacts: Path) -> None:
    run = paused_change(world)
    phone = Tab(browser, world, width=390, height=844)
    phone.sign_in("alice", f"/console/runs/{run}")
    phone.page.screenshot(path=str(artifacts / "console-run-phone.png"))
    question = phone.page.locator(".ask .question").first
    assert question.inner_text() == QUESTION
    box = question.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    fits = question.evaluate("el => el.scrollWidth <= el.clientWidth && el.scrollHeight <= el.clientHeight + 1")
    assert fits, "the question is cut off or scrolls"
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    approve = phone.page.locator("button.go").first
    approve.scroll_into_view_if_needed()
    assert approve.is_visible()
    phone.close()


def test_an_incident_page_lists_its_evidence_and_downloads_its_export(
    world: World, browser: object, artifacts: Path
) -> None:
    run = world.fire({"name": "job", "labels": {"key": "k-2"}})
    world.wait_status(run, "succeeded")
    incident = world.server.query("SELECT incident_id FROM runs WHERE id = ?", run)[0][0]
    carol = Tab(browser, world)
    carol.sign_in("carol", f"/console/runs/{run}")
    carol.page.click(f"text={incident}")
    carol.page.wait_for_selector("#verdict")
    assert "Verified" in carol.page.locator("#verdict").inner_text()
    carol.page.screenshot(path=str(artifacts / "console-incident.png"), full_page=True)
    rows = carol.page.locator("#evidence tbody tr")
    assert rows.count() >= 1 and "sha256:" in rows.first.inner_text()
    with carol.page.expect_download() as waiting:
        carol.page.click("text=Download the export (.tar.gz)")
    download = waiting.value
    assert download.suggested_filename == f"{incident}.tar.gz"
    data = Path(download.path()).read_bytes()
    assert gzip.decompress(data)[:512].strip(b"\0")
    carol.close()


def test_the_report_page_draws_its_charts(world: World, browser: object, artifacts: Path) -> None:
    alice = Tab(browser, world)
    alice.sign_in("alice", "/console/report")
    charts = alice.page.locator(".chart svg")
    assert charts.count() == 3
    for i in range(3):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 50
    alice.page.screenshot(path=str(artifacts / "console-report.png"), full_page=True)
    alice.close()


def test_the_runs_list_shows_a_new_run_without_a_reload(world: World, browser: object, artifacts: Path) -> None:
    dave = Tab(browser, world)
    dave.sign_in("dave", "/console/runs")
    dave.page.wait_for_selector("table.runs")
    dave.page.evaluate("window.__notReloaded = true")
    run = world.fire({"name": "change", "labels": {"service": "list"}})
    row = dave.page.wait_for_selector(f'tr[data-run="{run}"]', timeout=20_000)
    dave.page.wait_for_selector(f'tr[data-run="{run}"][data-status="paused"]', timeout=20_000)
    assert "two_person" in row.inner_text()
    assert dave.page.evaluate("window.__notReloaded === true")
    dave.page.screenshot(path=str(artifacts / "console-runs.png"), full_page=True)
    dave.close()
