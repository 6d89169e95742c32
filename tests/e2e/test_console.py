"""The web console in a real headless chromium, against a running ``costproxy serve`` with a seeded
ledger and the simulated provider: sign in, budgets filling up, alerts and their delivery, keys,
CSV export, decision explanations, and a read-only token that cannot write.

Each test saves a screenshot of each screen it visits under ``build/screenshots/`` at desktop
(1280 px) and phone (375 px) width, and checks that the page does not overflow the phone screen
and that the browser reported no Content-Security-Policy violation.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.console_stack import LAUNCH_FLAGS, SCREENSHOTS, call, require_browser, stack, until

pytestmark = pytest.mark.timeout(240)
CHAT = [{"role": "user", "content": "Summarize: the quarterly report shows growth in every region."}]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    sync_playwright = require_browser()
    with stack(tmp_path_factory.mktemp("console")) as env, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=LAUNCH_FLAGS)
        env["browser"] = browser
        yield env
        browser.close()


class Screen:
    """One browser context (one signed-in user) with screenshot and sanity helpers."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.base = env["base"]
        self.context = env["browser"].new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.on("dialog", lambda d: d.accept())

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")

    def sign_in(self, token: str) -> None:
        self.goto("/ui")
        assert "/ui/login" in self.page.url
        self.page.get_by_label("Admin token or read-only token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(self.base + "/ui")
        self.page.wait_for_load_state("networkidle")

    def shoot(self, name: str) -> None:
        """Save ``name-desktop.png`` and ``name-phone.png``; the page must fit a 375 px screen."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
        self.page.set_viewport_size({"width": 375, "height": 800})
        self.page.wait_for_timeout(150)  # charts resize on the next animation frame
        overflow = self.page.evaluate("document.documentElement.scrollWidth")
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
        self.page.set_viewport_size({"width": 1280, "height": 900})
        assert overflow <= 375, f"{name} is {overflow} px wide at phone width"
        csp = [p for p in self.problems if "Content Security Policy" in p or "Refused to" in p]
        assert not csp, csp
        # refusals the test provokes (400 for a bad field, 401, 403) are logged by the browser; nothing else may be
        unexpected = [p for p in self.problems if not re.search(r"status of 4\d\d", p)]
        assert not unexpected, unexpected

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def admin(deployment: dict[str, Any]) -> Iterator[Screen]:
    screen = Screen(deployment)
    screen.sign_in(ADMIN_TOKEN)
    yield screen
    screen.close()


def client_for(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def new_key(base: str, **fields: str) -> str:
    status, body = call(base, "POST", "/api/v1/keys", fields)
    assert status == 201, body
    return str(body["key"])


def test_sign_in_overview_and_keyboard_navigation(deployment: dict[str, Any]) -> None:
    screen = Screen(deployment)
    screen.goto("/")
    assert screen.page.url.endswith("/ui/login")
    screen.page.get_by_label("Admin token or read-only token").fill("not-the-token")
    screen.page.get_by_role("button", name="Sign in").click()
    assert "not valid" in screen.page.locator("#login-error").inner_text()
    screen.problems.clear()  # the 401 of the refused sign-in is logged by the browser
    screen.shoot("login")
    screen.sign_in(ADMIN_TOKEN)
    page = screen.page
    until(lambda: page.locator("#kpi-period").inner_text().startswith("$"), "the overview figures")
    assert page.locator("#ov-auto-table table tbody tr").count() >= 1
    assert page.locator("#kpi-saving").inner_text().startswith("$")
    cookies = screen.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("costproxy_session", True, "Strict")]
    assert ADMIN_TOKEN not in page.content()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "/ui"
    screen.shoot("overview")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    assert call(deployment["base"], "GET", "/api/v1/budgets", token="")[0] == 401
    screen.goto("/ui/budgets")
    assert "/ui/login" in page.url
    screen.close()


def test_budget_fills_alert_fires_and_webhook_is_delivered(admin: Screen, deployment: dict[str, Any]) -> None:
    page, receiver = admin.page, deployment["receiver"]
    admin.goto("/ui/alerts")
    page.get_by_role("button", name="Add a webhook").click()
    page.get_by_label("URL").fill(receiver.url)
    page.get_by_role("button", name="Subscribe").click()
    secret = page.locator("#secret-panel input").input_value()
    assert secret and page.get_by_role("button", name="Copy").is_visible()
    admin.goto("/ui/budgets")
    page.get_by_role("button", name="New budget").click()
    page.get_by_label("Name").fill("Growth team")
    page.get_by_label("Scope id").fill("growth")
    page.get_by_label("Limit (USD)").fill("a lot")
    page.get_by_role("button", name="Create budget").click()
    amount_error = page.locator('[data-error-for="amount"]')
    until(lambda: amount_error.inner_text(), "the validation message beside the limit")
    assert page.get_by_label("Limit (USD)").get_attribute("aria-invalid") == "true"
    admin.shoot("budget-form-error")
    page.get_by_label("Limit (USD)").fill("0.0002")
    page.get_by_role("button", name="Create budget").click()
    row = page.get_by_role("row").filter(has_text="Growth team")
    until(lambda: row.count(), "the new budget in the list")
    key = new_key(deployment["base"], team="growth", user="gus", org="acme", name="growth app")
    client = client_for(deployment["base"], key)

    def filled() -> bool:  # one more request through the fake provider, until the budget is past 50 %
        try:
            client.chat.completions.create(model="small", messages=CHAT, max_tokens=60)
        except openai.RateLimitError:  # the budget refused: it is full
            return True
        _, budgets = call(deployment["base"], "GET", "/api/v1/budgets?scopeType=team&scopeId=growth&withStatus=1")
        return bool(budgets["data"][0]["status"]["percentUsed"] > 50)

    until(filled, "the budget to fill past 50 %")
    admin.goto("/ui/budgets")
    state = page.get_by_role("row").filter(has_text="Growth team").locator(".badge")
    assert state.inner_text() in ("warning", "critical", "exhausted")
    admin.shoot("budgets")
    page.get_by_role("link", name="Growth team").click()
    page.wait_for_load_state("networkidle")
    assert page.locator("#b-facts").inner_text().count("$") >= 4
    until(lambda: page.locator("#b-alerts tbody tr").count() >= 1, "the fired threshold on the budget page")
    assert page.evaluate("!!Chart.getChart(document.getElementById('b-chart'))")
    admin.shoot("budget")
    until(lambda: any(r["body"].get("type") == "budget.threshold_crossed" for r in receiver.received),
          "the threshold webhook at the receiver")
    crossed = next(r for r in receiver.received if r["body"]["type"] == "budget.threshold_crossed")
    assert crossed["headers"]["X-Costproxy-Signature"].startswith("t=")
    admin.goto("/ui/alerts")
    until(lambda: page.locator("#event-list").inner_text().count("budget.threshold_crossed"), "the event list")
    page.get_by_role("button", name="Deliveries").first.click()
    until(lambda: "delivered" in page.locator("#delivery-panel").inner_text(), "a delivered delivery")
    page.get_by_role("button", name="Send test").first.click()
    until(lambda: any(r["body"].get("type") == "webhook.test" for r in receiver.received), "the test event")
    admin.shoot("alerts")
    before = len(receiver.received)
    page.get_by_role("button", name="Redeliver").last.click()
    until(lambda: len(receiver.received) > before, "the redelivered event")
    assert receiver.received[-1]["body"]["id"] in {r["body"]["id"] for r in receiver.received[:before]}
    page.get_by_role("button", name="Rotate secret").click()
    rotated = until(lambda: page.locator("#secret-panel input").input_value() != secret and
                    page.locator("#secret-panel input").input_value(), "the rotated secret")
    assert rotated.startswith(secret[:6])  # same prefix scheme, new value
    page.get_by_role("button", name="Remove").click()
    until(lambda: "No webhook yet." in page.locator("#webhook-list").inner_text(), "the webhook to be removed")
    admin.goto("/ui")  # the overview now lists the budget at risk and its alerts
    until(lambda: "Growth team" in page.locator("#ov-risk").inner_text(), "the budget at risk on the overview")
    assert "crossed 50 %" in page.locator("#ov-alerts").inner_text()
    admin.shoot("overview-with-alerts")


def test_issue_use_and_revoke_a_key(admin: Screen, deployment: dict[str, Any]) -> None:
    page = admin.page
    admin.context.grant_permissions(["clipboard-read", "clipboard-write"])
    admin.goto("/ui/keys")
    page.get_by_label("Name").fill("billing service")
    page.get_by_label("Team").fill("billing")
    page.get_by_label("User").fill("hana")
    page.get_by_role("button", name="Issue key").click()
    secret = page.locator("#new-key input").input_value()
    assert secret.startswith("cp-")
    page.locator("#new-key").get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    admin.shoot("keys-issued")
    client_for(deployment["base"], secret).chat.completions.create(model="small", messages=CHAT, max_tokens=20)
    admin.goto("/ui/keys")
    row = page.get_by_role("row").filter(has_text="billing service")
    assert "never" not in row.inner_text() and "team billing" in row.inner_text()
    admin.shoot("keys")
    row.get_by_role("button", name="Revoke billing service").click()
    until(lambda: "revoked" in page.get_by_role("row").filter(has_text="billing service").inner_text(),
          "the revoked state")
    with pytest.raises(openai.AuthenticationError):
        client_for(deployment["base"], secret).chat.completions.create(model="small", messages=CHAT)


def test_reports_drill_down_hover_and_csv_equal_the_api(admin: Screen, deployment: dict[str, Any],
                                                        tmp_path: Path) -> None:
    page = admin.page
    admin.goto("/ui/reports?groupBy=team&range=7d")
    until(lambda: page.locator("#panels table").count(), "the report table")
    box = page.locator("#chart-team").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
    until(lambda: page.evaluate("Chart.getChart(document.getElementById('chart-team')).tooltip"
                                ".getActiveElements().length > 0"), "a tooltip with the hovered values")
    admin.shoot("reports")
    with page.expect_download() as download:
        page.locator('[data-csv="team"]').click()
    shown = download.value.path().read_bytes().decode("utf-8")
    tz = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    status, api_csv = call(deployment["base"], "GET", f"/api/v1/analytics/spend?groupBy=team&range=7d&bucket=auto"
                                                      f"&tz={tz}&format=csv")
    assert status == 200
    table_rows = [r.locator("th").first.inner_text() for r in page.locator("#panels tbody tr").all()]
    csv_rows = list(csv.reader(io.StringIO(shown)))
    assert [r[0] for r in csv_rows[1:-1]] == table_rows  # the CSV has exactly the rows shown, in order
    assert shown == api_csv
    page.get_by_role("link", name="Keys and models of team search").click()
    until(lambda: page.locator("#chart-model").count() and page.locator("#chart-key").count(), "the drill-down")
    assert "team=search" in page.url and page.get_by_role("heading", name="Models of team search").is_visible()
    admin.shoot("reports-drill-down")


def test_decision_explanation_and_rules(admin: Screen, deployment: dict[str, Any]) -> None:
    key = new_key(deployment["base"], team="search", user="ana", name="search app")
    raw = client_for(deployment["base"], key).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Classify the sentiment: I love this phone."}])
    decision_id = raw.headers["x-costproxy-decision-id"]
    page = admin.page
    admin.goto("/ui/routing")
    page.get_by_role("button", name=f"Explain decision {decision_id}").click()
    panel = page.locator("#explain")
    until(lambda: "Candidates and scores" in panel.inner_text(), "the explanation")
    text = panel.inner_text()
    assert "economy-for-classification" in text and "Saved" in text and "✓" in text
    assert "economy-for-classification" in page.locator("#rule-savings").inner_text()
    assert "valid" in page.locator("#rule-state").inner_text()
    admin.shoot("routing")


def test_read_only_token_sees_but_cannot_write(deployment: dict[str, Any]) -> None:
    base = deployment["base"]
    status, created = call(base, "POST", "/api/v1/tokens", {"name": "finance viewer"})
    assert status == 201
    screen = Screen(deployment)
    screen.sign_in(created["token"])
    page = screen.page
    assert "finance viewer" in page.locator(".who").inner_text()
    screen.goto("/ui/budgets")
    until(lambda: page.locator("#budget-list table").count(), "the budget list")
    assert not page.get_by_role("button", name="New budget").is_visible()
    assert page.get_by_role("button", name="Delete").count() == 0 or not page.get_by_role(
        "button", name="Delete").first.is_visible()
    screen.shoot("budgets-read-only")
    screen.goto("/ui/keys")
    assert not page.get_by_role("button", name="Issue key").is_visible()
    assert not page.get_by_role("button", name="Revoke").first.is_visible()
    refused = page.evaluate("""async () => {
        const s = await (await fetch('/ui/session')).json();
        const r = await fetch('/api/v1/budgets', {method: 'POST', headers: {'Content-Type': 'application/json',
            'X-CSRF-Token': s.csrfToken}, body: JSON.stringify({scopeType: 'team', scopeId: 'x', amount: '1'})});
        return [r.status, (await r.json()).error.code];
    }""")
    assert refused == [403, "forbidden"]
    screen.problems.clear()  # the refused write is logged by the browser
    status, scoped = call(base, "POST", "/api/v1/tokens", {"name": "growth lead",
                                                            "scopes": [{"scopeType": "team", "scopeId": "growth"}]})
    limited = Screen(deployment)
    limited.sign_in(scoped["token"])
    assert limited.page.get_by_role("link", name="Keys").count() == 0
    limited.goto("/ui/reports")
    until(lambda: limited.page.locator("#panels table, #panels .empty").count(), "the scoped report")
    assert set(r.locator("th").first.inner_text() for r in limited.page.locator("#panels tbody tr").all()) <= {"growth"}
    limited.shoot("reports-scoped")
    screen.close()
    limited.close()
