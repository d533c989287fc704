"""An institution's validation page renders, styles included, in a browser with no network at all."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from contract.data import Extract
from contract.schema import load_schema
from institution.validation import validate_extract
from tests.conftest import TEST_EXPECTATIONS_DIR, Browser, requires_offline_browser

STYLED = {"PASSED": "rgb(227, 245, 231)", "FAILED": "rgb(253, 231, 231)", "WARNING": "rgb(255, 244, 214)"}
PAGE_REPORT = """JSON.stringify({
  verdict: document.getElementById('verdict').innerText,
  rows: [...document.querySelectorAll('#checks tbody tr')].map(tr => {
    const badge = tr.querySelector('.status'), style = getComputedStyle(badge);
    return {status: badge.innerText, background: style.backgroundColor, check: tr.children[1].innerText,
            column: tr.children[2].innerText, shown: badge.offsetWidth > 0 && badge.offsetHeight > 0};
  })})"""


@requires_offline_browser()
def test_a_quarantined_institutions_page_shows_each_checks_status_offline(small_consortium, tmp_path):
    path = tmp_path / "cedar.csv"
    frame = pd.read_csv(small_consortium["cedar_savings"])
    frame.loc[:24, "AGE"] = 150  # 25 customers aged 150: the AGE range check fails
    frame.to_csv(path, index=False)
    report = validate_extract(
        Extract("cedar_savings", path, {}), load_schema("credit_default"), expectations_dir=TEST_EXPECTATIONS_DIR
    )
    assert not report.passed

    browser = Browser(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.send("Network.enable", session)
        browser.send("Page.enable", session)
        browser.send("Page.navigate", session, url=Path(report.data_docs).as_uri())
        browser.wait_for("Page.loadEventFired")
        result = browser.send("Runtime.evaluate", session, expression=PAGE_REPORT, returnByValue=True)
    finally:
        browser.close()
    page = json.loads(result["result"]["value"])

    requested = [
        e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(url.startswith("file://") for url in requested), requested  # nothing else to fetch
    assert page["verdict"] == f"Quarantined: 1 of {report.checks_evaluated} checks failed"
    assert len(page["rows"]) == report.checks_evaluated
    for row in page["rows"]:  # each check's status is text, shown, and styled by the page's own CSS
        assert row["shown"] and row["status"] in STYLED and row["background"] == STYLED[row["status"]], row
    [failed] = [row for row in page["rows"] if row["status"] == "FAILED"]
    assert failed["column"] == "AGE" and "between 18 and 100" in failed["check"]
    assert sum(row["status"] == "PASSED" for row in page["rows"]) == report.checks_evaluated - 1
