"""flows.settings: where links point when MLflow is a tracking server, a local store, or set by hand; which
retraining lock applies."""

from flows.settings import Settings


def test_the_mlflow_ui_is_the_tracking_server_when_there_is_one(monkeypatch):
    monkeypatch.delenv("FEDRISK_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///tmp/mlflow.db")
    assert Settings().mlflow_ui_url == "http://127.0.0.1:5000"  # `mlflow ui`'s default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.bank.example/")
    assert Settings().mlflow_ui_url == "https://mlflow.bank.example"
    monkeypatch.setenv("FEDRISK_MLFLOW_UI_URL", "http://127.0.0.1:5500")
    assert Settings().mlflow_ui_url == "http://127.0.0.1:5500"


def test_the_retraining_lock_is_the_database_when_the_registry_is_one(monkeypatch):
    monkeypatch.delenv("FEDRISK_LOCK_DATABASE_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///tmp/mlflow.db")
    assert Settings().lock_database_url == ""  # a file lock on this machine
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.bank.example:5000")
    assert Settings().lock_database_url == ""  # the tracking server does not say where its database is
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg://mlflow@db.bank.example/mlflow")
    assert Settings().lock_database_url == "postgresql://mlflow@db.bank.example/mlflow"
    monkeypatch.setenv("FEDRISK_LOCK_DATABASE_URL", "postgresql://fedrisk@locks.bank.example/fedrisk")
    assert Settings().lock_database_url == "postgresql://fedrisk@locks.bank.example/fedrisk"


def test_a_prefect_home_in_a_folder_not_made_yet_is_made_whole(tmp_path):
    """Prefect makes its home folder but not the folders above it (it warns, and a `fedrisk` command then failed
    with a traceback): the flows package makes it before Prefect reads its settings."""
    import os
    import subprocess
    import sys

    home = tmp_path / "account" / ".fedrisk" / "prefect"
    done = subprocess.run(
        [sys.executable, "-c", "import flows, prefect.settings; print(prefect.settings.PREFECT_HOME.value())"],
        env={**os.environ, "PREFECT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == str(home), done.stdout + done.stderr
    assert home.is_dir() and "Failed to create the Prefect home directory" not in done.stderr
