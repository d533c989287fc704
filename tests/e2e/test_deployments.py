"""Retraining as a service: prefect.yaml's deployments on a real `prefect server start`, registered with
`fedrisk deploy` and run by a process worker, or served by `fedrisk serve`; runs started and followed
with `fedrisk trigger`, each command in its own process as a user runs it."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from contract.synthetic import synthesize
from flows.config import load_config
from flows.deployments import DeploymentError, load_deployments
from flows.monitor import BREACH_EVENT
from flows.retrain import resolve_config_file, retrain_from_config
from flows.settings import PROJECT_ROOT
from tasks.reporting import artifact_key
from tests.conftest import CHROMIUM, Browser, free_port, running, wait_for

BIN = Path(sys.executable).parent
MODEL = "credit_service"
# A worker or `fedrisk serve` asks for due runs every second (Prefect's default: every 10 s).
QUICK_PICKUP = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1"}


def test_prefect_yaml_schedules_the_retrainings_and_the_monitoring_with_their_configs():
    specs = {spec.name: spec for spec in load_deployments()}
    assert set(specs) == {"credit-default-weekly", "credit-default-demo-daily", "credit-default-demo-monitor",
                          "credit-default-monitor", "retrain-on-breach"}  # fmt: skip
    # A monitoring deployment for each model a retraining deployment trains, on the same config.
    retrained = {s.parameters["config_file"] for s in specs.values() if s.full_name.startswith("retrain-from-config/")}
    monitored = {s.parameters["config_file"] for s in specs.values() if s.full_name.startswith("monitor-from-config/")}
    assert monitored == retrained == {"configs/uci_default_credit.yaml", "configs/demo.yaml"}
    weekly, daily, monitor = (
        specs["credit-default-weekly"],
        specs["credit-default-demo-daily"],
        specs["credit-default-demo-monitor"],
    )
    assert [(s.cron, s.timezone) for s in weekly.schedules] == [("0 2 * * 1", "Europe/London")]
    assert [(s.cron, s.timezone) for s in daily.schedules] == [("30 6 * * *", "Europe/London")]
    assert [(s.cron, s.timezone) for s in monitor.schedules] == [("0 7 1 * *", "Europe/London")]
    for spec in specs.values():
        assert spec.work_pool.name == "fedrisk-process"
        load_config(resolve_config_file(spec.parameters["config_file"]))  # each names a valid committed config
    assert monitor.full_name == "monitor-from-config/credit-default-demo-monitor"
    assert weekly.parameters["config_file"] == "configs/uci_default_credit.yaml"
    # The automation: any model's breach runs the retraining with the config monitoring read and the breach.
    on_breach = specs["retrain-on-breach"]
    [trigger] = on_breach.triggers
    assert on_breach.full_name == "retrain-from-config/retrain-on-breach" and on_breach.schedules == []
    assert trigger.expect == [BREACH_EVENT] and trigger.match == {"prefect.resource.id": "fedrisk.model.*"}
    assert trigger.parameters["monitoring"] == "{{ event.payload }}"
    assert set(trigger.parameters) == set(inspect.signature(retrain_from_config.fn).parameters)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schedules": [{"cron": "0 25 * * *", "timezone": "Europe/London"}]}, "deployment 'nightly': "),
        ({"schedules": [{"cron": "0 2 * * *", "timezone": "Europe/Londres"}]}, "Europe/Londres"),
        ({"concurrency_limit": 2}, "concurrency_limit\n  Extra inputs are not permitted"),
        ({"entrypoint": "retrain"}, "entrypoint\n  String should match pattern"),
    ],
)
def test_a_bad_deployment_is_refused_with_its_name_and_field(change, message, tmp_path):
    entry = {
        "name": "nightly",
        "entrypoint": "flows/retrain.py:retrain_from_config",
        "parameters": {"config_file": "configs/demo.yaml"},
        "work_pool": {"name": "fedrisk-process"},
        **change,
    }
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"deployments": [entry]}))
    with pytest.raises(DeploymentError) as error:
        load_deployments(path)
    assert str(error.value).startswith(f"{path}: deployment 'nightly': ") and message in str(error.value)


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_consortium):
    """`prefect server start` on a free loopback port with its own PREFECT_HOME, and the environment
    the fedrisk commands, worker and flow runs share (a fresh MLflow store); stopped by its pid."""
    root = tmp_path_factory.mktemp("service")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": url,
        "COLUMNS": "200",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "FEDRISK_RUNS_DIR": str(root / "runs"),
        **QUICK_PICKUP,
    }
    institutions = "".join(f"  - {{name: {name}, path: {path}}}\n" for name, path in small_consortium.items())
    good = root / "service.yaml"
    good.write_text(
        f"model_name: {MODEL}\ninstitutions:\n{institutions}quorum: 4\ntraining: {{rounds: 5}}\n"
        f"promotion: {{max_calibration_error: null}}\n"
    )
    broken = root / "broken.yaml"  # one extract missing, every institution required
    broken.write_text(good.read_text().replace(str(small_consortium["cedar_savings"]), str(root / "absent.csv")))
    log = root / "server.log"
    with running(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log
    ) as process:
        wait_for(lambda: _healthy(url), process, log, "prefect server start", timeout=180)
        yield SimpleNamespace(url=url, env=env, root=root, good=good, broken=broken, process=process)
    assert process.poll() is not None  # stopped by its pid
    assert not _healthy(url)


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _fedrisk(server, *args: str, timeout: float = 600) -> tuple[int, str]:
    result = subprocess.run(
        [str(BIN / "fedrisk"), *args], env=server.env, capture_output=True, text=True, timeout=timeout
    )
    return result.returncode, result.stdout + result.stderr


def _api(server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Client:
        def __enter__(self):
            self.settings = temporary_settings({PREFECT_API_URL: server.url})
            self.settings.__enter__()
            self.client = get_client(sync_client=True).__enter__()
            return self.client

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return Client()


def _started_run_id(output: str) -> str:
    return re.search(r"Started flow run \S+ \(([0-9a-f-]{36})\)", output).group(1)


@pytest.fixture(scope="module")
def triggered(server):
    """`fedrisk deploy`, then a process worker and `fedrisk trigger` of the daily deployment (3 rounds): what each
    command printed and exited with, and the flow run the trigger started."""
    deployed = _fedrisk(server, "deploy")
    log = server.root / "worker.log"
    with running([str(BIN / "prefect"), "worker", "start", "--pool", "fedrisk-process"], server.env, log):
        code, output = _fedrisk(
            server,
            "trigger",
            "credit-default-demo-daily",
            "--param",
            f"config_file={server.good}",
            "--param",
            "training.rounds=3",
            "--timeout",
            "500",
        )
    assert code == 0, output + log.read_text()[-3000:]
    run_page = f"{server.url.removesuffix('/api')}/runs/flow-run/{_started_run_id(output)}"
    return SimpleNamespace(deployed=deployed, output=output, run_id=_started_run_id(output), run_page=run_page)


def test_deploy_then_trigger_runs_on_a_worker_and_registers_the_model(server, triggered):
    code, output = triggered.deployed
    assert code == 0, output
    assert (
        "deployed retrain-from-config/credit-default-weekly to work pool fedrisk-process: "
        "cron '0 2 * * 1' (Europe/London)"
    ) in output
    assert "Runs wait for a worker: prefect worker start --pool fedrisk-process" in output
    assert "Looks like you're deploying" not in output and "Successfully created" not in output  # ours, once
    with _api(server) as client:
        weekly = client.read_deployment_by_name("retrain-from-config/credit-default-weekly")
        daily = client.read_deployment_by_name("retrain-from-config/credit-default-demo-daily")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in weekly.schedules] == [
        ("0 2 * * 1", "Europe/London", True)
    ]
    assert [(s.schedule.cron, s.schedule.timezone) for s in daily.schedules] == [("30 6 * * *", "Europe/London")]
    assert (
        weekly.work_pool_name == "fedrisk-process"
        and weekly.parameters["config_file"] == "configs/uci_default_credit.yaml"
    )

    output, run_id = triggered.output, triggered.run_id
    assert "state: Running" in output and "state: Completed" in output
    assert re.search(r"round 3/3: train loss 0\.\d+, validation loss 0\.\d+", output)  # progress, as it runs
    assert f"- Model `{MODEL}` [version 1](" in output  # the run's summary (piped: its Markdown as written)
    assert f"{MODEL} v1 triggered credit-default-demo-daily: COMPLETED" in output  # named as its MLflow run
    assert f"registered {MODEL} version 1 (aliases: challenger, champion)" in output  # the run's last log lines
    assert max(len(line) for line in output.splitlines()) < 1000  # piped: no title padded to 4,096 columns

    with _api(server) as client:
        assert client.read_flow_run(run_id).state.is_completed()

    client = MlflowClient(server.env["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions(f"name='{MODEL}'")
    assert str(version.version) == "1" and {
        k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()
    } == {"champion": "1", "challenger": "1"}
    assert version.tags["prefect.flow_run_id"] == run_id
    assert version.tags["prefect.deployment"] == "retrain-from-config/credit-default-demo-daily"
    assert version.tags["prefect.flow_run_url"] == triggered.run_page and triggered.run_page in output  # printed
    assert client.get_run(version.run_id).data.params["training.rounds"] == "3"  # the trigger's override


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless-browser test: Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_prefect_ui_shows_the_triggered_run_by_name_and_its_summary_by_key(server, triggered, tmp_path):
    """In the Prefect UI `prefect server start` serves: the flow run's page, named like its MLflow run with its
    tags; the model's retraining summary listed on the Artifacts page by its key, and shown."""
    ui = server.url.removesuffix("/api")
    name, key = f"{MODEL} v1 triggered credit-default-demo-daily", artifact_key("retrain", MODEL)
    with _api(server) as client:
        [summary_id] = [
            a.id
            for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            if a.flow_run_id is not None and str(a.flow_run_id) == triggered.run_id
        ]
    browser = Browser(tmp_path / "profile", offline=False)
    try:
        session = browser.tab()
        run = browser.text_once_shown(
            session, triggered.run_page, [name, "version:1", "submitted to"], "prefect-flow-run"
        )
        listed = browser.text_once_shown(session, f"{ui}/artifacts/key/{key}", [name], "prefect-artifact-key")
        summary = browser.text_once_shown(
            session,
            f"{ui}/artifacts/artifact/{summary_id}",
            [f"Retraining of {MODEL}", "Holdout metrics"],
            "prefect-artifact",
        )
    finally:
        browser.close()
    assert name in run and f"model:{MODEL}" in run and "trigger:triggered" in run and "version:1" in run, run[:2000]
    assert f"Retraining summary for {MODEL}" in listed and name in listed, listed[:2000]
    assert f"Model {MODEL} version 1" in summary and "Holdout metrics" in summary, summary[:2000]


def _triggered_runs(server) -> int:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with _api(server) as client:  # the scheduler's own future runs are not counted
        return len(client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["triggered"]))))


@pytest.mark.parametrize("listening", [False, True], ids=["nothing listens", "a server that never answers"])
def test_deploy_to_a_server_that_does_not_answer_is_one_line(listening, tmp_path):
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        port = hung.getsockname()[1]
        if listening:
            hung.listen(8)  # the kernel completes the handshake; nobody ever reads the request
        else:
            hung.close()
        env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(tmp_path)}
        done = subprocess.run([str(BIN / "fedrisk"), "deploy"], env=env, capture_output=True, text=True, timeout=150)
    output = done.stdout + done.stderr  # asked once for 10 s; retried at 60 s each it outlasts 150 s
    assert done.returncode == 2 and f"no Prefect API answers at http://127.0.0.1:{port}/api" in output, output
    assert "Traceback" not in output and len(output.strip().splitlines()) <= 2, output


def test_trigger_refuses_bad_input_before_starting_a_run(server):
    _fedrisk(server, "deploy")
    runs_before = _triggered_runs(server)
    code, output = _fedrisk(
        server,
        "trigger",
        "credit-default-demo-daily",
        "--param",
        f"config_file={server.good}",
        "--param",
        "training.roundz=3",
    )
    assert code == 2 and "unknown key 'roundz' in section training; did you mean 'rounds'?" in output, output
    code, output = _fedrisk(server, "trigger", "credit-default-hourly")
    assert code == 2 and "no deployment 'retrain-from-config/credit-default-hourly' on the server" in output
    assert _triggered_runs(server) == runs_before


def test_serve_runs_the_deployments_from_one_process(server):
    log = server.root / "serve.log"
    with running([str(BIN / "fedrisk"), "serve"], server.env, log) as serving:
        wait_for(lambda: "runs start in this process" in log.read_text(), serving, log, "fedrisk serve", timeout=120)
        assert "serving retrain-from-config/credit-default-weekly: cron '0 2 * * 1' (Europe/London)" in log.read_text()
        code, output = _fedrisk(
            server, "trigger", "credit-default-weekly", "--param", f"config_file={server.broken}", "--timeout", "300"
        )
    # A validation failure fails the run at once (exit 1), with the reason, and is not retried.
    assert code == 1 and "only 3 of 4 institutions passed validation, quorum is 4" in output, output
    assert "state: Running" in output and f"{MODEL} triggered credit-default-weekly: FAILED" in output
    assert f"institution 'cedar_savings': {server.root / 'absent.csv'}: file not found" in output
    with _api(server) as client:
        failed = client.read_flow_run(_started_run_id(output))
    assert failed.state.is_failed() and failed.run_count == 1


def test_the_deployed_flow_reads_its_config_like_the_cli():
    assert retrain_from_config.name == "retrain-from-config"
    assert resolve_config_file("configs/demo.yaml") == PROJECT_ROOT / "configs" / "demo.yaml"
    assert resolve_config_file("/abs/run.yaml") == Path("/abs/run.yaml")


def _month_config(server, name: str, months: dict[str, Path]) -> Path:
    """The service's run config with each institution's extract of a later month as its monitoring_path."""
    config = yaml.safe_load(server.good.read_text())
    for institution in config["institutions"]:
        institution["monitoring_path"] = str(months[institution["name"]])
    path = server.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _runs_of(server, deployment: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with _api(server) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            sort=FlowRunSort.START_TIME_ASC,
        )


def _finished_runs(server, deployment: str, count: int):
    runs = _runs_of(server, deployment)
    return len(runs) >= count and all(r.state and r.state.is_final() for r in runs)


def test_a_breach_found_by_monitoring_starts_the_retraining_that_its_lineage_names(server, triggered):
    """The scenario of a later month on the service: a stable month is a report and nothing more; a month where one
    bank's limits fall and its default rate rises is a breach at that bank, whose Prefect event the automation
    of retrain-on-breach (deployed from prefect.yaml) answers with a retraining; the new version's lineage names
    the breach; a second breach within the cool-down trains nothing."""
    stable = synthesize(server.root / "month-stable", 4, seed=21, rows_scale=0.25)
    shifted = synthesize(
        server.root / "month-shifted",
        4,
        seed=22,
        rows_scale=0.25,
        changes={"dune_finance": {"median_limit": 12_000, "default_rate": 0.6}},
    )
    stable_config, shifted_config = _month_config(server, "stable", stable), _month_config(server, "shifted", shifted)
    code, output = _fedrisk(server, "deploy")  # for the worker again (test_serve served them from its process)
    assert code == 0 and "retrain-from-config/retrain-on-breach to work pool fedrisk-process: on event" in output, (
        output
    )
    log = server.root / "monitoring-worker.log"
    with running([str(BIN / "prefect"), "worker", "start", "--pool", "fedrisk-process"], server.env, log) as worker:
        code, output = _fedrisk(server, "monitor", "--config", str(stable_config))
        assert code == 0, output
        assert f"Monitoring {MODEL} version 1 for " in output and "act:" not in output, output
        code, output = _fedrisk(server, "monitor", "--config", str(shifted_config))
        assert code == 6, output
        assert re.search(
            r"dune_finance: 500 rows against \d+ at development \(its own development sample\): act", output
        )
        assert re.search(r"act: LIMIT_BAL stability index \d\.\d+ at or above 0\.25", output), output
        assert re.search(r"act: the portfolio defaulted at [\d.]+% against its PD", output), output
        monitoring_run = re.search(r"MLflow run: \S+/runs/([0-9a-f]{32})", output).group(1)
        wait_for(lambda: _finished_runs(server, "retrain-on-breach", 1), worker, log, "retraining on breach", 600)
        [retraining] = _runs_of(server, "retrain-on-breach")
        assert retraining.state.is_completed(), log.read_text()[-3000:]

        client = MlflowClient(server.env["MLFLOW_TRACKING_URI"])
        version = client.get_model_version(MODEL, "2")
        tags = version.tags
        assert tags["prefect.trigger"] == "monitoring" and tags["prefect.flow_run_id"] == str(retraining.id)
        assert tags["prefect.deployment"] == "retrain-from-config/retrain-on-breach"
        assert tags["monitoring.run_id"] == monitoring_run and tags["monitoring.version"] == "1"
        assert tags["monitoring.reason"].startswith("dune_finance: LIMIT_BAL stability index")
        assert "consortium:" not in tags["monitoring.reason"].split(";")[0]
        assert retraining.name == f"{MODEL} v2 monitoring retrain-on-breach"
        monitoring = client.get_run(monitoring_run)
        assert monitoring.data.tags["monitoring.status"] == "act" and monitoring.data.tags["model.version"] == "1"
        assert monitoring.data.metrics["dune_finance/feature_stability/LIMIT_BAL"] >= 0.25
        assert client.get_model_version(MODEL, "1").tags["monitoring.run_id"] == monitoring_run

        # The same breach again, within the cool-down: the automation runs the deployment, which trains nothing.
        code, output = _fedrisk(server, "monitor", "--config", str(shifted_config))
        assert code == 6, output
        wait_for(lambda: _finished_runs(server, "retrain-on-breach", 2), worker, log, "second retraining", 300)
        second = _runs_of(server, "retrain-on-breach")[1]
        assert second.state.is_completed()

        def said_why() -> bool:  # the worker sends a run's last log lines after its final state
            with _api(server) as api:
                logged = [entry.message for entry in api.read_logs(log_filter=_logs_of(second.id))]
            return any(
                line.startswith(f"not retrained: monitoring started a retraining of {MODEL}")
                and "the cool-down is 24 h (monitoring.cooldown_hours)" in line
                for line in logged
            )

        wait_for(said_why, worker, log, "the cool-down's reason in the run's logs", 60)
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")) == ["1", "2"]
    assert len(_runs_of(server, "retrain-on-breach")) == 2  # the stable month started none


def _logs_of(flow_run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
