"""fedrisk flows: the retraining pipeline, its CLI and deployments (orchestration only)."""

import os
from pathlib import Path

# Quiet, offline-friendly defaults for the libraries the flows drive; the environment wins.
for _name, _value in {
    # TensorFlow's C++ log: "3" hides the "Unable to register cuDNN/cuFFT/cuBLAS factory" errors every CPU-only
    # start prints (a real failure still raises in Python); `fedrisk --verbose` shows warnings and errors.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Fail fast (seconds, not minutes) when a remote tracking server is unreachable.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}.items():
    os.environ.setdefault(_name, _value)

# Prefect creates its home folder but not the folders above it (and only warns): a PREFECT_HOME whose parent does
# not exist yet (a new account's ~/.fedrisk/prefect) is made whole here, so Prefect finds it.
if os.environ.get("PREFECT_HOME"):
    try:
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # not ours to make: Prefect says it cannot create it
