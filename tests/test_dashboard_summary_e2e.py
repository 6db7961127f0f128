"""The dashboard's date picker and profile summary page, in headless Chromium."""

from __future__ import annotations

from datetime import UTC, datetime

from service_helpers import live_server
from test_dashboard_e2e import SHOTS, browser, pytestmark  # noqa: F401  (fixture, skip mark)


def test_user_picks_a_date_and_sees_their_profile_then(browser, tmp_path):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    with live_server(tmp_path) as server:
        _, token = server.keys.create(scope="user", app="web", user="ana")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/ui/login")
        page.fill("#key", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui")
        for text in ("I am vegetarian", "Answer in lowercase"):
            page.fill("#add-pref input[name=text]", text)
            page.click("#add-pref button")
        item = page.locator("#preferences li", has_text="I am vegetarian")
        item.locator("summary").click()
        item.locator("input[name=text]").fill("I eat fish now")
        item.locator("button", has_text="Save new version").click()

        # a day long past: nothing was stored then
        page.fill("#as-of-date", "2001-03-01")
        page.click("#as-of-form button")
        page.wait_for_url("**/ui/summary?as_of=2001-03-01")
        assert "No preferences then" in page.inner_text("#topics")
        assert page.locator("#as-of-date").input_value() == "2001-03-01"

        # today: the current profile, grouped by topic, with what applies to every answer
        page.fill("#as-of-date", datetime.now(UTC).date().isoformat())
        page.click("#as-of-form button")
        topics = page.inner_text("#topics")
        assert "I eat fish now" in topics and "Answer in lowercase" in topics
        assert "I am vegetarian" not in topics
        assert page.locator("#applied .constraint[data-kind=lowercase]").count() == 1
        assert "changed: I am vegetarian → I eat fish now" in page.inner_text("#changes")
        page.screenshot(path=str(SHOTS / "dashboard_summary.png"), full_page=True)
        page.close()
