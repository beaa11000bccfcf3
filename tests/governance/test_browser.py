"""One change from draft to deployed, in a real browser: an engineer authors it, a board member approves it.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`); Playwright never downloads one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from healthsync.choices import ChangeKind, ChangeStatus
from healthsync.models import ChangeRequest
from healthsync.seed import seed_reference_config
from tests.conftest import PASSWORD
from tests.governance.support import current

CHROMIUM = Path("/usr/bin/chromium")
A03 = "ehr-adt-a03-discharged"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's Chromium is not installed: apt-get install -y chromium"
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # The live server answers from its own threads; persistent connections there outlive the test and block
    # dropping the PostgreSQL test database.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--headless"]
        )
        yield browser
        browser.close()
        # Playwright runs the test in its own context, where the ORM opened a connection of its own: close it,
        # or PostgreSQL refuses to drop the test database.
        connections.close_all()


def _sign_in(browser: Any, live_server: Any, username: str) -> Any:
    page = browser.new_context().new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/?next=/governance/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/governance/")
    return page


def test_a_mapping_change_goes_from_draft_to_deployed_in_the_browser(
    browser, live_server, engineer, board_member
):
    seed_reference_config()
    rules = current(ChangeKind.MAPPING, A03)["rules"]
    index = next(i for i, rule in enumerate(rules) if rule["target"] == "disposition")

    author = _sign_in(browser, live_server, engineer.username)
    author.goto(f"{live_server.url}/governance/mappings/{A03}/edit/")
    author.select_option(f"select[name=rules-{index}-transform]", "upper")
    author.fill("input[name=title]", "Upper-case the discharge disposition")
    author.fill("textarea[name=reason]", "The RCM matches dispositions in capitals.")
    author.click("#save-draft")
    author.wait_for_selector("#submit-for-review")
    author.click("#submit-for-review")
    author.wait_for_selector("#cr-status:has-text('Submitted')")
    cr = ChangeRequest.objects.get()
    assert cr.author == engineer and cr.status == ChangeStatus.SUBMITTED

    reviewer = _sign_in(browser, live_server, board_member.username)
    reviewer.goto(f"{live_server.url}/governance/")
    reviewer.click(f"text=CR-{cr.pk}")
    assert reviewer.locator("text=disposition").first.is_visible()
    reviewer.check("input[name=decision][value=approve]")
    reviewer.fill("textarea[name=comment]", "Checked against the RCM spec.")
    reviewer.click("#review-submit")
    reviewer.wait_for_selector("#cr-status:has-text('Approved')")
    reviewer.click("#deploy")
    reviewer.wait_for_selector("#cr-status:has-text('Deployed')")

    cr.refresh_from_db()
    assert cr.status == ChangeStatus.DEPLOYED and cr.deployed_by == board_member
    live = current(ChangeKind.MAPPING, A03)["rules"][index]
    assert live["transform"] == "upper"
