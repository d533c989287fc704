"""An institution's validation page: every check of one validation, its parameters, result and pass/fail, as
one self-contained HTML file (styles inline, no script, no fonts or stylesheets from a network), so that it
renders the same on a bank's closed network as anywhere. GX's own Data Docs load Bootstrap, jQuery and fonts
from public CDNs and show an empty status column offline. Counts and observed values only: no row."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; margin: 2rem; color: #1d2330; }
h1 { font-size: 1.4rem; margin-bottom: 0.2rem; } .meta { color: #555; margin-bottom: 1rem; }
.summary { font-size: 1.1rem; margin: 1rem 0; padding: 0.6rem 1rem; border-radius: 6px; display: inline-block; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #dde1e8; padding: 0.45rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f1f3f7; } td.params, td.result { font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 0.82rem; word-break: break-word; }
.status { font-weight: 700; white-space: nowrap; padding: 0.15rem 0.5rem; border-radius: 4px; }
.passed { background: #e3f5e7; color: #17692c; } .failed { background: #fde7e7; color: #a11b1b; }
.warning { background: #fff4d6; color: #7a5600; }
"""
STATUS_TEXT = {"passed": "PASSED", "failed": "FAILED", "warning": "WARNING"}
_HIDDEN_KWARGS = {"column", "column_list", "batch_id", "result_format", "catch_exceptions", "include_config"}


def check_status(result, warning: bool) -> str:
    """passed, failed (an `error` check: it quarantines the extract) or warning (reported, admitted)."""
    return "passed" if result.success else ("warning" if warning else "failed")


def render_page(
    run_name: str, suite: str, checks: list[tuple[object, str, str]], hidden: list[bool] | None = None
) -> str:
    """The page of one validation named `run_name` (the institution's name when an extract is validated):
    `checks` are (GX expectation result, status, result text); `hidden[i]`: check i's parameters are not shown
    (figures of the institution's private reference)."""
    failed = sum(status == "failed" for _, status, _ in checks)
    warned = sum(status == "warning" for _, status, _ in checks)
    overall = "failed" if failed else ("warning" if warned else "passed")
    verdict = (
        f"Quarantined: {failed} of {len(checks)} checks failed"
        if failed
        else f"Admitted: all {len(checks)} checks passed" + (f", {warned} with a warning" if warned else "")
    )
    hidden = hidden or [False] * len(checks)
    rows = "\n".join(
        _row(result, status, text, hide) for (result, status, text), hide in zip(checks, hidden, strict=True)
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"Validation of {run_name}: suite {suite}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{when}; Great Expectations suite {html.escape(suite)}</div>
<div class="summary {overall}" id="verdict">{html.escape(verdict)}</div>
<table id="checks">
<thead><tr><th>status</th><th>check</th><th>column</th><th>parameters</th><th>result</th></tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""


def _row(result, status: str, text: str, hidden: bool = False) -> str:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or []) or "(table)"
    params = {k: v for k, v in kwargs.items() if k not in _HIDDEN_KWARGS and v is not None}
    shown = (
        "(the institution's reference)"
        if hidden
        else "; ".join(f"{k}={json.dumps(v, default=str)}" for k, v in params.items())
    )
    check = config.description or config.type
    return (
        f'<tr class="{status}"><td><span class="status {status}">{STATUS_TEXT[status]}</span></td>'
        f"<td>{html.escape(check)}</td><td>{html.escape(str(column))}</td>"
        f'<td class="params">{html.escape(shown)}</td><td class="result">{html.escape(text)}</td></tr>'
    )
