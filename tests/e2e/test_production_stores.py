"""The production set-up, for real: a Prefect server and an MLflow tracking server (artifacts proxied) both on
PostgreSQL, and the retraining lock held by the database, so that it holds across hosts.

Needs a PostgreSQL server: FEDRISK_TEST_POSTGRES_URL (`.ci/run` starts one on loopback), else the tests skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from contract.schema import load_schema
from tests.conftest import (
    BIN,
    FEDRISK,
    POSTGRES,
    answers,
    free_port,
    new_database,
    requires_postgres,
    running,
    wait_for,
    write_config,
)

LABEL_COLUMN = load_schema("credit_default").label.column
pytestmark = requires_postgres()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, small_consortium):
    """A Prefect server and an MLflow tracking server, each on its own PostgreSQL database, on loopback; the
    environment of a `fedrisk` command that uses them (and the database lock), as a coordinator would."""
    root = tmp_path_factory.mktemp("production")
    suffix = uuid.uuid4().hex[:8]
    prefect_db, mlflow_db = new_database(f"prefect_{suffix}"), new_database(f"mlflow_{suffix}")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    prefect_env = {
        **base,
        "PREFECT_HOME": str(root / "prefect-server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db.replace("postgresql://", "postgresql+asyncpg://"),
    }
    env = {
        **base,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": prefect_url,
        "COLUMNS": "200",
        "MLFLOW_TRACKING_URI": mlflow_url,
        "FEDRISK_LOCK_DATABASE_URL": POSTGRES,
        "FEDRISK_RUNS_DIR": str(root / "runs"),
        "FEDRISK_LOG_FILE": str(root / "fedrisk.log"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # a worker or `fedrisk serve` asks for due runs every second
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    with (
        running(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            prefect_env,
            root / "prefect-server.log",
        ) as prefect,
        running(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                mlflow_db,
                "--serve-artifacts",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            base,
            root / "mlflow-server.log",
        ) as tracking,
    ):
        wait_for(lambda: answers(f"{prefect_url}/health"), prefect, root / "prefect-server.log", "prefect server")
        wait_for(lambda: answers(f"{mlflow_url}/health"), tracking, root / "mlflow-server.log", "mlflow server")
        yield SimpleNamespace(
            env=env,
            root=root,
            prefect_url=prefect_url,
            mlflow_url=mlflow_url,
            artifacts=root / "artifacts",
            data=small_consortium,
        )


def _fedrisk(stores, *args: str, timeout: float = 600) -> tuple[int, str]:
    done = subprocess.run(
        [FEDRISK, *args], env=stores.env, capture_output=True, text=True, timeout=timeout, cwd=stores.root
    )
    return done.returncode, done.stdout + done.stderr


def _flow_runs(stores, name: str | None = None, tag: str | None = None) -> list:
    """The flow runs on the Prefect server named `name` or tagged `tag` (a retraining: `model:NAME`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterTags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wanted = (
        FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        if name
        else FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
    )
    with temporary_settings({PREFECT_API_URL: stores.prefect_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=wanted)


def _config(stores, model_name: str, **settings) -> Path:
    """A small retraining of the four test institutions (3 rounds, quorum 3) with `settings` on top."""
    return write_config(
        stores.root / f"{model_name}.yaml",
        stores.data,
        **{
            "model_name": model_name,
            "quorum": 3,
            "training": {"rounds": 3},
            "promotion": {"max_calibration_error": None},
            **settings,
        },
    )


@pytest.mark.slow
def test_a_deployment_run_on_a_worker_registers_through_both_servers_then_traces_lists_and_scores(stores, tmp_path):
    """Deploy, trigger, a process worker runs it: Prefect's records on PostgreSQL, MLflow's through its server
    (artifacts proxied); then every read command and both ways of scoring go through the tracking server."""
    model = "credit_production"
    code, output = _fedrisk(stores, "deploy")
    assert code == 0 and "deployed retrain-from-config/credit-default-weekly to work pool fedrisk-process" in output, (
        output
    )
    with running(
        [str(BIN / "prefect"), "worker", "start", "--pool", "fedrisk-process"], stores.env, stores.root / "worker.log"
    ):
        code, output = _fedrisk(
            stores,
            "trigger",
            "credit-default-demo-daily",
            "--param",
            f"config_file={_config(stores, model)}",
            "--timeout",
            "500",
        )
    assert code == 0, output + (stores.root / "worker.log").read_text()[-3000:]
    assert f"{model} v1 triggered credit-default-demo-daily: COMPLETED" in output

    client = MlflowClient(stores.mlflow_url)
    version = client.get_model_version_by_alias(model, "champion")
    assert str(version.version) == "1" and version.tags["promotion.decision"] == "promoted"
    assert version.tags["prefect.deployment"] == "retrain-from-config/credit-default-demo-daily"
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients never touch the files
    assert {"model_card.html", "validation", "plots", "config"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    assert list(stores.artifacts.rglob("model_card.html"))  # where the server keeps them
    [flow_run] = _flow_runs(stores, tag=f"model:{model}")  # the Prefect server's record, on PostgreSQL
    assert flow_run.state.is_completed() and version.tags["prefect.flow_run_id"] == str(flow_run.id)

    code, output = _fedrisk(stores, "lineage", f"{model}@champion")
    assert code == 0 and "UNRESOLVED" not in output, output
    assert f"{stores.mlflow_url}/#/models/{model}/versions/1" in output  # the tracking server serves the UI
    code, output = _fedrisk(stores, "models", "list", model)
    assert code == 0 and "challenger, champion" in output, output
    code, output = _fedrisk(stores, "ledger")
    assert code == 0 and f"No differentially private retrainings yet in {stores.mlflow_url}" in output, output

    applicants = tmp_path / "applicants.csv"
    pd.read_csv(stores.data["birch_credit_union"]).head(200).drop(columns=[LABEL_COLUMN]).to_csv(
        applicants, index=False
    )
    code, output = _fedrisk(
        stores,
        "score",
        "--model",
        f"{model}@champion",
        "--input",
        str(applicants),
        "--output",
        str(tmp_path / "scores.csv"),
    )
    assert code == 0 and f"Scored 200 of 200 rows with {model} version 1" in output, output
    scored = pd.read_csv(tmp_path / "scores.csv")["default_probability"]
    np.testing.assert_allclose(_serve_and_score(stores, model, applicants), scored, rtol=1e-5)


@pytest.mark.slow
def test_fedrisk_serve_runs_a_deployment_against_the_postgresql_server(stores):
    broken = _config(stores, "credit_served", quorum=4)  # every institution required, one file missing
    broken.write_text(broken.read_text().replace(str(stores.data["cedar_savings"]), str(stores.root / "absent.csv")))
    log = stores.root / "serve.log"
    with running([FEDRISK, "serve"], stores.env, log) as serving:
        wait_for(lambda: "runs start in this process" in log.read_text(), serving, log, "fedrisk serve", timeout=120)
        code, output = _fedrisk(
            stores, "trigger", "credit-default-weekly", "--param", f"config_file={broken}", "--timeout", "300"
        )
    assert code == 1 and "credit_served triggered credit-default-weekly: FAILED" in output, output
    assert "institution 'cedar_savings'" in output and "file not found" in output


@pytest.mark.slow
def test_two_retrainings_of_one_model_from_two_hosts_run_one_after_the_other(stores):
    """Two processes with nothing shared but the servers (each its own checkpoints directory), started at
    once: the database lock makes the second wait, then run; both versions are registered."""
    model = "credit_contended"
    config = _config(stores, model, training={"rounds": 2})  # small: the point is the order, not the model
    hosts = [
        subprocess.Popen(
            [FEDRISK, "retrain", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=stores.root,
            env={**stores.env, "FEDRISK_RUNS_DIR": str(stores.root / f"host-{n}")},
        )
        for n in (1, 2)
    ]
    outputs = [host.communicate(timeout=900)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], "\n".join(outputs)
    waited = [output for output in outputs if f"another retraining of {model} is running" in output]
    assert len(waited) == 1, "\n".join(outputs)
    assert re.search(
        rf"another retraining of {model} is running \(flow run [0-9a-f-]{{36}}, pid \d+ on 127\.0\.0\.1, "
        r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); waiting up to 3600 s",
        waited[0],
    ), waited[0]
    client = MlflowClient(stores.mlflow_url)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{model}'")) == [1, 2]
    # Whichever took the lock first ran first; both flow runs start at once, so that is the one that ended first.
    first, second = sorted(_flow_runs(stores, tag=f"model:{model}"), key=lambda run: run.end_time)
    validations = sorted(_flow_runs(stores, name=f"validate-{model}"), key=lambda run: run.start_time)
    assert first.state.is_completed() and second.state.is_completed()
    assert validations[1].start_time >= first.end_time  # the second did nothing until the first had finished


def _serve_and_score(stores, model: str, rows: Path) -> list[float]:
    """`mlflow models serve -m models:/MODEL@champion` through the tracking server; its scores of `rows`."""
    port = free_port()
    log = stores.root / "serve-model.log"
    env = {**stores.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # it execs uvicorn from PATH
    with running(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{model}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env,
        log,
    ) as serving:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), serving, log, "mlflow models serve")
        frame = pd.read_csv(rows)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            timeout=60,
            json={"dataframe_split": json.loads(frame.to_json(orient="split", index=False))},
        )
        assert answer.status_code == 200, answer.text
    return [p["default_probability"] for p in answer.json()["predictions"]]


def _with_password(url: str, password: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.netloc.rsplit('@', 1)[-1]}"))


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_and_the_lock_url_is_shown_and_stored_nowhere(small_consortium, tmp_path):
    """MLflow's store and the lock on PostgreSQL with a password in their URLs (the server trusts loopback, so any
    password connects): a retraining and the read commands print it nowhere, and neither the log file, Prefect's
    database, MLflow's database nor its artifacts hold it."""
    import psycopg

    password = f"pw-{uuid.uuid4().hex[:12]}"
    tracking = _with_password(new_database(f"mlflow_secret_{uuid.uuid4().hex[:8]}"), password)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")},
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "MLFLOW_TRACKING_URI": tracking,
        "COLUMNS": "200",
        "FEDRISK_LOCK_DATABASE_URL": _with_password(POSTGRES, password),
        "FEDRISK_RUNS_DIR": str(tmp_path / "runs"),
        "FEDRISK_LOG_FILE": str(tmp_path / "fedrisk.log"),
    }
    config = write_config(
        tmp_path / "secret.yaml",
        small_consortium,
        model_name="credit_secret",
        quorum=3,
        training={"rounds": 2},
        promotion={"max_calibration_error": None},
    )
    shown = []
    for args in (
        ["retrain", "--config", str(config)],
        ["models", "list", "credit_secret"],
        ["models", "list", "credit_absent"],
        ["ledger"],
    ):
        done = subprocess.run([FEDRISK, *args], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        shown.append(done.stdout + done.stderr)
    assert "credit_secret" in shown[1] and "postgres:***@" in shown[1], shown[1]  # the store, masked
    assert "no registered model 'credit_absent'" in shown[2], shown[2]
    stored = {str(path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert any(name.endswith("prefect.db") for name in stored) and any("model_card" in name for name in stored)
    with psycopg.connect(tracking.replace(password, "x"), autocommit=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            rows = connection.execute(f'SELECT row_to_json(t)::text FROM "{table}" t').fetchall()
            stored[f"mlflow table {table}"] = "\n".join(r[0] for r in rows).encode()
    leaks = [
        where
        for where, data in {**{f"command {i}": s.encode() for i, s in enumerate(shown)}, **stored}.items()
        if password.encode() in data
    ]
    assert leaks == []
