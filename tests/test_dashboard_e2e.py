"""The dashboard, driven end to end in headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service_helpers import live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(
    os.environ.get(
        "PERSONALIGN_SCREENSHOTS", Path(__file__).resolve().parents[1] / "results" / "screenshots"
    )
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make env installs it)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def test_user_manages_preferences_weights_and_chat(browser, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with live_server(tmp_path) as server:
        _, token = server.keys.create(scope="user", app="web", user="ana")
        _, other = server.keys.create(scope="user", app="web", user="bob")
        server.personalizer.memory.add("bob's private preference", user="web:bob")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/ui")
        assert page.url.endswith("/ui/login")
        page.fill("#key", "pal_wrong")
        page.click("button[type=submit]")
        assert "malformed" in page.inner_text("[role=alert]")
        page.fill("#key", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui")
        assert "personalign · ana" in page.inner_text("header")

        # add two preferences
        for text in ("I am vegetarian", "I prefer short answers"):
            page.fill("#add-pref input[name=text]", text)
            page.click("#add-pref button")
        prefs = page.locator("#preferences li .text").all_inner_texts()
        assert sorted(prefs) == ["I am vegetarian", "I prefer short answers"]
        assert "bob" not in page.content()

        # edit one: a new version, the old one goes to history
        item = page.locator("#preferences li", has_text="I am vegetarian")
        item.locator("summary").click()
        item.locator("input[name=text]").fill("I eat fish now (pescatarian)")
        item.locator("button", has_text="Save new version").click()
        assert "pescatarian" in page.inner_text("#preferences")
        assert "I am vegetarian" in page.inner_text("#history")
        assert "superseded" in page.inner_text("#history")

        # forget one
        page.locator("#preferences li", has_text="short answers").locator(
            "button", has_text="Forget"
        ).click()
        assert "short answers" not in page.inner_text("#preferences")
        assert "forgotten" in page.inner_text("#history")

        # move a slider and save
        page.locator("#w-warmth").fill("0.9")
        page.click("#weights button")
        assert page.locator("#w-warmth").input_value() == "0.9"
        stored = server.personalizer.memory.store.get_profile(user="web:ana")
        assert stored is not None and stored.weights["warmth"] == pytest.approx(0.9)

        # chat: the answer shows which preferences shaped it
        page.fill("textarea[name=message]", "I eat fish now: suggest a pescatarian dinner")
        page.click("#chat button")
        answer = page.inner_text("#chat .exchange .answer")
        assert "echo: I eat fish now" in answer
        assert answer.startswith("Happy to help!")  # the warmth slider reaches the reply
        assert "pescatarian" in page.inner_text("#chat .used")
        page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)

        # a user token cannot be used for someone else's data, and sign-out works
        page.click("header button")
        page.wait_for_url("**/ui/login")
        page.fill("#key", other)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui")
        assert "pescatarian" not in page.content()
        assert "bob's private preference" in page.inner_text("#preferences")
        page.screenshot(path=str(SHOTS / "dashboard_bob.png"), full_page=True)
        page.close()


def test_user_sees_and_drops_a_preferences_constraints(browser, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with live_server(tmp_path) as server:
        _, token = server.keys.create(scope="user", app="web", user="cleo")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/ui/login")
        page.fill("#key", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui")

        text = "From now on answer me in lowercase, under 50 words"
        page.fill("#add-pref input[name=text]", text)
        page.click("#add-pref button")
        item = page.locator("#preferences li[data-id]", has_text=text)
        item.locator(".constraint .describe").first.wait_for()  # the list re-renders
        shown = item.locator(".constraint .describe").all_inner_texts()
        assert shown == [
            "Write the whole answer in lowercase letters only.",
            "Keep the answer under 50 words.",
        ]
        page.screenshot(path=str(SHOTS / "dashboard_constraints.png"), full_page=True)

        # drop one: a new version with the same text, the other constraint kept
        item.locator(".constraint[data-kind=lowercase] button", has_text="drop").click()
        assert "dropped the lowercase constraint" in page.inner_text("[role=status]")
        item = page.locator("#preferences li[data-id]", has_text=text)
        assert item.locator(".constraint .describe").all_inner_texts() == [
            "Keep the answer under 50 words."
        ]
        assert "constraints edited" in item.inner_text()
        assert text in page.inner_text("#history") and "superseded" in page.inner_text("#history")
        constraints, _, _ = server.personalizer.constraints_for("web:cleo")
        assert [c.kind for c in constraints] == ["max_words"]

        # drop the last one: the preference stays, as text only
        item.locator(".constraint[data-kind=max_words] button", has_text="drop").click()
        item = page.locator("#preferences li[data-id]", has_text=text)
        assert item.locator(".constraint").count() == 0
        assert "no constraint applied" in item.inner_text()
        page.close()


def test_user_settles_a_conflict_in_the_dashboard(browser, tmp_path):
    """An open conflict shows both sides; "Keep this" keeps one and moves the other to
    history; a context-scoped preference says where it applies."""
    with live_server(tmp_path) as server:
        _, token = server.keys.create(scope="user", app="web", user="cai")
        store = server.personalizer.memory.store
        older = store.add("I love spicy food", user="web:cai")
        newer = store.add("I can't handle spicy food", user="web:cai")
        store.add_conflict(older.id, newer.id, user="web:cai")
        store.add("When I cook for my kids, nothing spicy.", user="web:cai")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/ui/login")
        page.fill("#key", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui")
        panel = page.inner_text("#conflicts")
        assert "I love spicy food" in panel and "I can't handle spicy food" in panel
        kids = page.locator("#preferences li[data-id]", has_text="my kids")
        assert "only when: cook for my kids" in kids.inner_text()
        page.locator('#conflicts button[aria-label="keep: I can\'t handle spicy food"]').click()
        page.wait_for_selector("[role=status]")
        assert "resolved" in page.inner_text("[role=status]")
        assert page.locator("#conflicts").count() == 0
        assert "I love spicy food" in page.inner_text("#history")
        assert "I love spicy food" not in page.inner_text("#preferences")
        page.close()
