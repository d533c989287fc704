"""Infrastructure settings (where things live), from the environment with local defaults."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hostguard.credentials import masked

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MLRUNS_DIR = PROJECT_ROOT / "mlruns"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    def model_post_init(self, context) -> None:
        if not self.mlflow_ui_url:  # a tracking server serves its own UI
            remote = self.mlflow_tracking_uri.startswith(("http://", "https://"))
            self.mlflow_ui_url = masked(self.mlflow_tracking_uri.rstrip("/")) if remote else "http://127.0.0.1:5000"
        if not self.lock_database_url and self.mlflow_tracking_uri.startswith("postgresql"):
            self.lock_database_url = self.mlflow_tracking_uri  # MLflow's own database server holds the lock
        # psycopg takes postgresql:// URLs; SQLAlchemy's driver suffix (postgresql+psycopg://) is dropped.
        self.lock_database_url = re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", self.lock_database_url)

    mlflow_tracking_uri: str = Field(
        default=f"sqlite:///{MLRUNS_DIR / 'mlflow.db'}", validation_alias="MLFLOW_TRACKING_URI"
    )
    mlflow_ui_url: str = Field(
        default="",
        validation_alias="FEDRISK_MLFLOW_UI_URL",
        description="Where the MLflow UI serves this store, for links in Prefect artifacts: the tracking server "
        "itself when MLFLOW_TRACKING_URI is http(s), else `mlflow ui`'s default http://127.0.0.1:5000.",
    )
    expectations_dir: Path = Field(
        default=PROJECT_ROOT / "expectations",
        validation_alias="FEDRISK_EXPECTATIONS_DIR",
        description="GX file context (suites, and validation results under gx/uncommitted).",
    )
    runs_dir: Path = Field(
        default=MLRUNS_DIR / "runs",
        validation_alias="FEDRISK_RUNS_DIR",
        description="Working directory of each retraining (round checkpoints), kept until it registers.",
    )
    log_file: Path = Field(
        default=MLRUNS_DIR / "fedrisk.log",
        validation_alias="FEDRISK_LOG_FILE",
        description="Every command's full log (libraries included); the terminal shows status lines only, "
        "unless --verbose.",
    )
    lock_database_url: str = Field(
        default="",
        validation_alias="FEDRISK_LOCK_DATABASE_URL",
        description="A PostgreSQL database (postgresql://USER@HOST/DB) whose advisory lock serializes the "
        "retrainings of a model across every host that runs them; default: the MLflow store when it "
        "is PostgreSQL, else a file lock on this machine.",
    )
    prefect_start_seconds: float = Field(
        default=300,
        gt=0,
        le=3600,
        validation_alias="FEDRISK_PREFECT_START_SECONDS",
        description="How long a command waits for the temporary Prefect API it starts (without PREFECT_API_URL) to "
        "answer; a busy machine may need minutes. Its log (prefect-api-PID.log beside the log file) is kept when it "
        "does not start.",
    )
    lock_wait_seconds: float = Field(
        default=3600,
        ge=0,
        validation_alias="FEDRISK_LOCK_WAIT_SECONDS",
        description="How long a retraining waits for another retraining of the same model to finish before "
        "it gives up (one retraining per model at a time).",
    )
    registry_retry_seconds: float = Field(
        default=240,
        ge=0,
        le=3600,
        validation_alias="FEDRISK_REGISTRY_RETRY_SECONDS",
        description="How long a trained model's registration (and its ledger entries) keeps retrying the tracking "
        "server after a transient failure (a refused or dropped connection, an HTTP 5xx): long enough "
        "to ride out a server restart rather than lose the training. Retries back off from 2 s to at "
        "most 60 s apart. (Before training, an unreachable server stops the run within seconds.)",
    )
    allow_exposed_worker: bool = Field(
        default=False,
        validation_alias="FEDRISK_ALLOW_EXPOSED_WORKER",
        description="Accept a TFF worker listening on every interface where it cannot be kept on loopback (no "
        "C compiler for the loopback-bind library). Only for hosts whose firewall blocks the port "
        "range; recorded on the run and the version.",
    )
    demo_data_dir: Path = Field(default=PROJECT_ROOT / "data" / "demo", validation_alias="FEDRISK_DEMO_DATA_DIR")
