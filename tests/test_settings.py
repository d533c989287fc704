"""flows.settings: where links point when MLflow is a tracking server, a local store, or set by hand."""

from flows.settings import Settings


def test_the_mlflow_ui_is_the_tracking_server_when_there_is_one(monkeypatch):
    monkeypatch.delenv("FEDRISK_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///tmp/mlflow.db")
    assert Settings().mlflow_ui_url == "http://127.0.0.1:5000"  # `mlflow ui`'s default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.bank.example/")
    assert Settings().mlflow_ui_url == "https://mlflow.bank.example"
    monkeypatch.setenv("FEDRISK_MLFLOW_UI_URL", "http://127.0.0.1:5500")
    assert Settings().mlflow_ui_url == "http://127.0.0.1:5500"
