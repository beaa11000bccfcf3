"""A revenue-cycle user works the exception queue in a real browser (Playwright driving Debian's Chromium):
filters the queue, opens the exception, fixes the missing insurance, resubmits and sees the claim go out to a
real RCM simulator. Skipped, with the reason, where Chromium or Playwright is missing; never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from connectors.simulators import hl7_builder
from healthsync.choices import ExceptionStatus, RunStatus
from healthsync.models import ExceptionItem
from tests.conftest import PASSWORD
from tests.pipeline_support import feed
from tests.workflows.support import workflow_destinations
from workflows.models import WorkflowRun

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)


@pytest.fixture
def sims() -> Iterator[tuple]:
    with workflow_destinations() as pair:
        yield pair


@pytest.mark.django_db(transaction=True)
def test_a_revenue_cycle_user_fixes_missing_insurance_and_the_claim_goes_out(
    sims: tuple, rcm_analyst: User, live_server: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rcm, erp = sims
    # Another account's stop, so that filtering has something to filter out.
    feed(hl7_builder.adt_a03(encounter_id="V2002", include_diagnosis=False))
    feed(
        hl7_builder.adt_a01(include_insurance=False),
        hl7_builder.dft_p03(),
        hl7_builder.adt_a03(include_insurance=False),
    )
    target = ExceptionItem.objects.get(business_key="V1001")
    assert rcm.claim_count == 0
    # Playwright's sync API runs an event loop in this thread; the ORM calls after it are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert shutil.which(CHROMIUM)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{live_server.url}/accounts/login/?next=/exceptions/")
            page.fill("#id_username", rcm_analyst.username)
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url("**/exceptions/**")
            assert page.locator("#exception-table tbody tr[data-href]").count() == 2
            page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)

            page.fill("#id_q", "V1001")
            page.press("#id_q", "Enter")
            page.wait_for_function(
                "document.querySelectorAll('#exception-table tbody tr[data-href]').length === 1"
            )

            # Keyboard: j focuses the first row, Enter opens it.
            page.locator("h1").click()
            page.keyboard.press("j")
            page.keyboard.press("Enter")
            page.wait_for_url(f"**/exceptions/{target.pk}/")
            assert "insurance is missing" in page.content()

            page.get_by_label("Insurance payer").fill("Cigna")
            page.get_by_label("Payer id").fill("CIGNA01")
            page.get_by_role("button", name="Resubmit with these values").click()
            # htmx swaps the workspace in place: the comment trail says what was done.
            page.wait_for_selector("text=and retried", timeout=15000)
            page.screenshot(path=str(tmp_path / "after-resubmit.png"), full_page=True)
            page.goto(f"{live_server.url}/exceptions/{target.pk}/")
            html = page.content()
        finally:
            browser.close()

    assert "Resolved" in html
    assert "submitted to the RCM" in html
    target.refresh_from_db()
    assert target.status == ExceptionStatus.RESOLVED
    assert rcm.claim_count == 1
    claim = next(iter(rcm.claims.values()))["claim"]
    assert claim["payer"] == {**claim["payer"], "id": "CIGNA01", "name": "Cigna"}
    assert erp.entry_count == 1
    assert WorkflowRun.objects.get(business_key="V1001").status == RunStatus.COMPLETED
