"""An institution's validation page renders, styles included, in a browser with no network at all."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from contract.data import Extract
from contract.schema import load_schema
from institution.validation import validate_extract
from tests.conftest import TEST_EXPECTATIONS_DIR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STYLED = {"PASSED": "rgb(227, 245, 231)", "FAILED": "rgb(253, 231, 231)", "WARNING": "rgb(255, 244, 214)"}
PAGE_REPORT = """JSON.stringify({
  verdict: document.getElementById('verdict').innerText,
  rows: [...document.querySelectorAll('#checks tbody tr')].map(tr => {
    const badge = tr.querySelector('.status'), style = getComputedStyle(badge);
    return {status: badge.innerText, background: style.backgroundColor, check: tr.children[1].innerText,
            column: tr.children[2].innerText, shown: badge.offsetWidth > 0 && badge.offsetHeight > 0};
  })})"""


def _above_9(fd: int) -> int:
    """`fd` moved to 10 or above, so that the child's fds 3 and 4 are always copies of it: a pipe that os.pipe()
    happened to open at 3 or 4 would otherwise stay close-on-exec there and be gone in chromium."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe), in a network
    namespace of its own (`unshare --net`: not even loopback is up), so nothing can be fetched."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        to_browser, from_browser = _above_9(to_browser), _above_9(from_browser)
        self.log = profile.parent / "chromium.log"
        command = [
            "unshare",
            "--net",
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # The protocol's fds 3 (commands in) and 4 (replies out), placed by bash rather than by Python code run
        # between fork and exec (this process has gRPC's threads).
        place = f"3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" {place}', "bash", *command],
                pass_fds=(to_browser, from_browser),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params):
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        try:
            os.write(self._write, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(self._gone()) from None
        while True:
            reply = self._receive()
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def _gone(self) -> str:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return f"chromium closed the protocol pipe (exit {self.process.poll()}); its last lines: " + " | ".join(
            self.log.read_text(errors="replace").splitlines()[-5:]
        )

    def wait_for(self, method: str) -> dict:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive())
        return next(e for e in self.events if e.get("method") == method)

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 65536)
            assert chunk, self._gone()
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless-browser test: Debian's chromium is not installed (apt-get install chromium)"
)
@pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "--net", "true"]).returncode,
    reason="needs `unshare --net` (root or user namespaces) to take the browser off the network",
)
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
