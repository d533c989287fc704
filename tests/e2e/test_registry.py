"""tracking.registry: a registration whose tracking server is lost midway leaves no half version."""

import os
import signal
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import (
    BIN,
    FEDRISK,
    WatchedProcess,
    answers,
    free_port,
    new_database,
    requires_postgres,
    running,
    wait_for,
    write_config,
)
from tracking.versions import REGISTRATION_TAG


def _registration_rows(database: str, model: str) -> dict[str, dict]:
    """Each version's registration state, aliases and MLflow run, read from the tracking server's own database
    (its server may be down)."""
    import psycopg

    with psycopg.connect(database) as connection:
        versions = connection.execute("SELECT version, run_id FROM model_versions WHERE name = %s", (model,)).fetchall()
        tags = dict(
            connection.execute(
                "SELECT version, value FROM model_version_tags WHERE name = %s AND key = %s", (model, REGISTRATION_TAG)
            ).fetchall()
        )
        aliases = connection.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (model,)
        ).fetchall()
    return {
        str(v): {"registration": tags.get(v), "run_id": run, "aliases": sorted(a for a, n in aliases if n == v)}
        for v, run in versions
    }


@pytest.mark.slow
@requires_postgres()
def test_a_tracking_server_lost_while_registering_leaves_no_half_version_and_the_retry_settles_it(
    prefect_api, small_consortium, tmp_path
):
    """The MLflow server (on PostgreSQL, as in production) killed the moment the new version's row exists: nothing
    half-registered is visible (no alias, marked unfinished), and once the server is back the registration's retry
    deletes that version, ends its MLflow run FAILED and registers the model whole."""
    import uuid

    database, port = new_database(f"mlflow_{uuid.uuid4().hex[:8]}"), free_port()
    url = f"http://127.0.0.1:{port}"
    server = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        database,
        "--serve-artifacts",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    two = {name: small_consortium[name] for name in ("cedar_savings", "dune_finance")}  # the smallest: quick
    config = write_config(
        tmp_path / "m.yaml", two, quorum=2, training={"rounds": 2}, promotion={"max_calibration_error": None}
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": url,
        "COLUMNS": "200",
        "FEDRISK_RUNS_DIR": str(tmp_path / "runs"),
        "FEDRISK_LOG_FILE": str(tmp_path / "fedrisk.log"),
        "FEDRISK_REGISTRY_RETRY_SECONDS": "60",  # 2, 4, 8, 16, 32 s apart: a restart takes 5-20 s
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }  # each call fails at once; the task's retries back off
    with running(server, env, tmp_path / "server.log") as tracking:
        wait_for(lambda: answers(f"{url}/health"), tracking, tmp_path / "server.log", "mlflow server")
        retraining = WatchedProcess([FEDRISK, "retrain", "--config", str(config)], env)
        try:
            retraining.until("registering the new version of m", timeout=300)
            while not _registration_rows(database, "m"):
                assert retraining.process.poll() is None, "".join(retraining.seen)
                time.sleep(0.01)
            os.killpg(tracking.pid, signal.SIGKILL)  # the server gone between the version's row and its aliases
            retraining.until("the MLflow run of this registration could not be ended", timeout=120)
            [(version, half)] = _registration_rows(database, "m").items()
            assert half["registration"] in ("incomplete", "aliases pending") and half["aliases"] == [], half
            with running(server, env, tmp_path / "server-again.log") as again:  # back, within the retries
                wait_for(lambda: answers(f"{url}/health"), again, tmp_path / "server-again.log", "mlflow server")
                assert retraining.end(timeout=400) == 0, "".join(retraining.seen)[-3000:]
                output = "".join(retraining.seen)
                assert f"an earlier registration of m had not finished: version {version} deleted" in output
                client = MlflowClient(url)
                [registered] = client.search_model_versions("name='m'")
                assert registered.version != version and registered.tags[REGISTRATION_TAG] == "complete"
                assert str(client.get_model_version_by_alias("m", "champion").version) == str(registered.version)
                assert client.get_run(half["run_id"]).info.status == "FAILED"  # never left RUNNING
                assert client.get_run(registered.run_id).info.status == "FINISHED"
        finally:
            retraining.kill()
