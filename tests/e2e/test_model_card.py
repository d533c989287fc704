"""The model card of each registered version: every section and plot, from aggregates."""

import base64
import re

import mlflow
import pytest

from tests.conftest import Browser, requires_offline_browser


@pytest.fixture
def cards(registered):
    mlflow.set_tracking_uri(registered.tracking_uri)
    client = mlflow.MlflowClient()
    return {
        v: mlflow.artifacts.load_text(client.get_model_version(registered.name, v).tags["model_card"])
        for v in ("1", "2")
    }


def _images(card: str) -> dict[str, bytes]:
    return {
        name: base64.b64decode(data)
        for name, data in re.findall(r'alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', card)
    }


def test_the_card_has_every_plot_and_section(registered, cards):
    card = cards["1"]
    images = _images(card)
    assert set(images) == {"convergence", "roc", "calibration"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000 for png in images.values())
    for heading in (
        "Intended use",
        "Promotion decision",
        "Model and training",
        "Holdout metrics per institution",
        "ROC curve per institution",
        "Calibration",
        "Data per institution",
        "Lineage",
    ):
        assert f">{heading}</h" in card
    assert registered.config.use.replace("'", "&#x27;") in card
    assert "<b>Promoted to champion</b>: promoted: no champion yet" in card
    assert "Policy: metric roc_auc, min improvement 0.0, " in card and "{&#x27;" not in card  # words, not a dict
    rows = re.findall(r"<tr><td>([a-z_]+)</td><td>([^<]+)</td><td>(0\.\d{4})</td>", card)
    # Every institution reports the new model and both simulation baselines on its holdout.
    assert {(name, role) for name, role, _ in rows} == {
        (name, role)
        for name in registered.data
        for role in ("new model", "local-only (simulation)", "pooled data (simulation)")
    }
    for e in registered.first.evaluations:
        assert (e.institution, "new model", f"{e.metrics['challenger']['roc_auc']:.4f}") in rows
        assert (e.institution, "local-only (simulation)", f"{e.metrics['local_only']['roc_auc']:.4f}") in rows
    assert "simulation-mode baselines" in card
    for report in registered.first.validation:
        assert f'<td>{report.institution}</td><td><span class="pass">admitted</span></td><td>{report.rows}</td>' in card


def test_the_challengers_card_compares_it_with_the_champion_and_states_the_decision(cards, registered):
    card = cards["2"]
    assert "<b>Not promoted</b>: champion v1 kept" in card
    assert '<li class="fail">fail: roc_auc' in card and '<li class="pass">pass: pooled ECE' in card
    assert all(f"<tr><td>{name}</td><td>champion</td>" in card for name in registered.data)


def test_baselines_and_plots_are_logged_with_the_run(registered):
    client = mlflow.MlflowClient(registered.tracking_uri)
    run = client.get_run(registered.first.registration.run_id)
    metrics = run.data.metrics
    for name in registered.data:
        for role in ("challenger", "baseline_local_only", "baseline_pooled_data"):
            assert 0.5 < metrics[f"{role}/institution/{name}/roc_auc"] < 1
        assert (
            sum(metrics[f"challenger/institution/{name}/{k}"] for k in ("tp", "fp", "tn", "fn"))
            == metrics[f"holdout_rows/{name}"]
        )
    assert all(
        f"{role}/weighted/{m}" in metrics
        for role in ("challenger", "baseline_local_only", "baseline_pooled_data")
        for m in ("roc_auc", "pr_auc", "gini", "ece", "recall_at_fpr")
    )
    assert metrics["baseline_pooled_data/all_holdouts/ece"] > 0
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        "plots/convergence.png",
        "plots/roc.png",
        "plots/calibration.png",
        "plots/fairness_sex.png",  # the schema's protected attributes: one plot each
        "plots/fairness_age.png",
    }


@requires_offline_browser()
def test_the_card_fits_a_1400_pixel_window_without_scrolling_sideways(cards, tmp_path):
    """Long names, digests and paths break; a table wider than the page scrolls inside itself."""
    page = tmp_path / "card.html"
    page.write_text(cards["2"])
    browser = Browser(tmp_path / "profile", size=(1400, 1000))
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.send("Page.enable", session)
        window = {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
        browser.send("Emulation.setDeviceMetricsOverride", session, **window)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        widths = browser.send(
            "Runtime.evaluate",
            session,
            expression="[document.documentElement.scrollWidth, document.documentElement.clientWidth]",
            returnByValue=True,
        )["result"]["value"]
    finally:
        browser.close()
    assert widths[0] <= widths[1] <= 1400, widths
