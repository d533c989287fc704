"""Cross-silo end to end: three institution nodes as separate OS processes on loopback, each with only its own
directory and data, mutual TLS, and a coordinator whose config has no data path. The retraining registers the
same model the simulation does, the coordinator opens none of the institutions' files, and a node that is down
at the start or dies mid-training is handled: quarantined, left out while the quorum holds, or the run stops
with nothing registered and resumes identically once the node is back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from flows.config import parse_config
from flows.cross_silo_demo import COORDINATOR, node_config
from flows.retrain import retrain
from hostguard.pki import init_ca, issue
from tests.conftest import descendants, free_port, read_until, wait_until_gone
from tracking.versions import list_versions

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
BANKS = ("alder_bank", "birch_credit_union", "cedar_savings")
SETTINGS = {
    "training": {"rounds": 5, "algorithm": "fedadam", "model": {"kind": "mlp", "hidden_units": [8]}},
    "seed": 4,
    "promotion": {"max_calibration_error": None},
}


class Node:
    """One institution's node: its own directory (extract, TLS files, config) and process."""

    def __init__(self, name: str, directory: Path, port: int):
        self.name, self.directory, self.port = name, directory, port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "node", "serve", "--config", str(self.directory / "node.yaml")],
            cwd=self.directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def wait(self) -> None:
        read_until(self.process, "listening on", timeout=300)

    def kill(self) -> None:
        children = descendants(self.process.pid)
        assert "worker_binary" in children.values()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        assert wait_until_gone(children, timeout=30) == []  # its TFF worker dies with it

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def _killed_after_round(victim: Node, round_num: int, restart: bool = True):
    """Inside the block `victim` is killed (SIGKILL) once round `round_num` is trained; it starts again after the
    block when `restart` (if it was killed: starting a second one would leave the first running unstopped)."""
    from tasks.training import round_listener

    def kill(metrics):
        if metrics.get("round") == round_num and victim.process.poll() is None:
            victim.kill()

    try:
        with round_listener(kill):
            yield
    finally:
        if restart and victim.process.poll() is not None:  # a victim still running (the run failed first) stays
            victim.start()
            victim.wait()


@pytest.fixture(scope="module")
def consortium(small_consortium, tmp_path_factory):
    """The PKI, and a node per bank, each in a directory of its own with a copy of only its own extract."""
    root = tmp_path_factory.mktemp("cross_silo")
    pki = root / "pki"
    init_ca(pki)
    issue(pki, COORDINATOR, ("localhost", "127.0.0.1"))  # also XGBoost's federated server, dialled as localhost
    nodes = {}
    for name in BANKS:
        directory = root / "nodes" / name
        (directory / "tls").mkdir(parents=True)
        issue(pki, name, ("127.0.0.1",))
        for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
            shutil.copy(pki / file, directory / "tls" / file)
        shutil.copy(small_consortium[name], directory / "credit.csv")
        month = directory / "month.csv"  # this period's extract of its scoring population, replaced each month
        node_config(name, directory, "credit_default", directory / "credit.csv", free_port(), list(BANKS), month)
        nodes[name] = Node(
            name, directory, int((directory / "node.yaml").read_text().split("listen: 127.0.0.1:")[1].split()[0])
        )
    for node in nodes.values():
        node.start()
    try:
        for node in nodes.values():
            node.wait()
        yield root, pki, nodes
    finally:
        for node in nodes.values():
            node.stop()


def _coordinator_plain(pki: Path, nodes, name: str, quorum: int = 3, **settings) -> dict:
    """A coordinator's run config (as its YAML would say it) for `nodes`."""
    institutions = [{"name": n.name, "node": f"127.0.0.1:{n.port}"} for n in nodes]
    return {
        "model_name": name,
        "quorum": quorum,
        "institutions": institutions,
        **SETTINGS,
        **settings,
        "tls": {
            "ca": str(pki / "ca.crt"),
            "cert": str(pki / f"{COORDINATOR}.crt"),
            "key": str(pki / f"{COORDINATOR}.key"),
        },
    }


def _coordinator(pki: Path, nodes, name: str, quorum: int = 3, extra: dict | None = None, **settings):
    plain = _coordinator_plain(pki, nodes, name, quorum, **settings)
    plain["institutions"] += list((extra or {}).values())
    return parse_config(plain, Path("."))


def _node(root: Path, pki: Path, name: str, extract: Path, policy: dict | None = None) -> Node:
    """A node of one more bank (or another node of a bank, with its certificate), its extract `extract` (copied
    into its directory), not yet started."""
    directory = root / "nodes" / name
    (directory / "tls").mkdir(parents=True)
    if not (pki / f"{name}.crt").is_file():
        issue(pki, name, ("127.0.0.1",))
    for file in ("ca.crt", f"{name}.crt", f"{name}.key"):
        shutil.copy(pki / file, directory / "tls" / file)
    shutil.copy(extract, directory / extract.name)
    port = free_port()
    members = list(dict.fromkeys([*BANKS, name]))
    path = node_config(name, directory, "credit_default", directory / extract.name, port, members)
    if policy:
        import yaml

        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "policy": policy}))
    return Node(name, directory, port)


def _weights(tracking_uri: str, name: str, version: str, tmp_path: Path) -> list[np.ndarray]:
    import mlflow

    from riskmodel import model as exported
    from tracking.registry import exported_model_dir

    mlflow.set_tracking_uri(tracking_uri)
    target = tmp_path / "downloads" / str(abs(hash(tracking_uri)))
    path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(target)))
    return exported.load(exported_model_dir(path)).predictor.get_weights()


class OpenAudit:
    """Every file path this process opens while active (Python's audit hook for open)."""

    paths: list[str] = []
    active = False

    @classmethod
    def hook(cls, event, args):
        if cls.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            cls.paths.append(os.fsdecode(args[0]))


sys.addaudithook(OpenAudit.hook)


@pytest.fixture(scope="module")
def across_nodes(consortium, prefect_api, tmp_path_factory):
    """One retraining through the nodes (SETTINGS, quorum 3) into a store of its own, and every path the coordinator
    opened meanwhile: the run the simulation is compared with, and the uninterrupted run a resumed one must equal."""
    from types import SimpleNamespace

    _, pki, nodes = consortium
    store = f"sqlite:///{tmp_path_factory.mktemp('across_nodes') / 'mlflow.db'}"
    config = _coordinator(pki, nodes.values(), "credit_xs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        OpenAudit.paths, OpenAudit.active = [], True
        try:
            summary = retrain(config)
        finally:
            OpenAudit.active = False
    return SimpleNamespace(config=config, summary=summary, store=store, opened=list(OpenAudit.paths))


def test_nodes_train_the_same_model_as_the_simulation_and_the_coordinator_reads_no_row(
    consortium, across_nodes, small_consortium, tmp_path, monkeypatch
):
    root, _, _ = consortium
    simulation_store = f"sqlite:///{tmp_path / 'simulation' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", simulation_store)
    simulated = retrain(
        parse_config(
            {
                "model_name": "credit_xs",
                "quorum": 3,
                **SETTINGS,
                "institutions": [{"name": n, "path": str(small_consortium[n])} for n in BANKS],
            },
            Path("."),
        )
    )

    across, store = across_nodes.summary, across_nodes.store
    assert all(i.path is None for i in across_nodes.config.institutions)  # the coordinator is never told where data is
    opened = [
        p
        for p in across_nodes.opened
        if str(root / "nodes") in os.path.abspath(p)
        or any(os.path.abspath(p) == str(small_consortium[n]) for n in BANKS)
    ]
    assert opened == [] and across_nodes.opened  # it opened files (its store, its suite), none of the institutions'

    assert [r.passed for r in across.validation] == [True] * 3
    assert [r.digest for r in across.validation] == [r.digest for r in simulated.validation]
    for mine, theirs in zip(
        _weights(store, "credit_xs", "1", tmp_path), _weights(simulation_store, "credit_xs", "1", tmp_path), strict=True
    ):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    assert across.training.best_round == simulated.training.best_round
    for name, value in simulated.weighted.items():
        assert across.weighted[name] == pytest.approx(value, abs=1e-6), name
    tags = MlflowClient(store).get_model_version("credit_xs", "1").tags
    assert tags["execution"] == "cross-silo (institution nodes, mutual TLS)" and tags["simulation"] == "false"


def test_a_node_down_at_the_start_is_quarantined_and_the_quorum_decides(consortium, tracking_uri):
    _, pki, nodes = consortium
    address = f"127.0.0.1:{free_port()}"
    config = _coordinator(
        pki, nodes.values(), "credit_xs_down", quorum=3, extra={"dune": {"name": "dune_finance", "node": address}}
    )
    summary = retrain(config)
    [down] = [r for r in summary.validation if not r.passed]
    assert down.institution == "dune_finance"
    assert down.reasons[0].startswith(f"institution 'dune_finance': unreachable at {address}: ")
    assert [e.institution for e in summary.evaluations] == list(BANKS)


def test_a_node_lost_mid_training_is_left_out_while_the_quorum_holds(consortium, tracking_uri, caplog):
    """The loss is said as it happens, the best round is chosen among rounds validated by the same institutions,
    and the version, trained and evaluated without the lost bank, is registered but not promoted by default."""
    _, pki, nodes = consortium
    with _killed_after_round(nodes["cedar_savings"], 2):
        summary = retrain(_coordinator(pki, nodes.values(), "credit_xs_lost", quorum=2))
    assert [r["institutions"] for r in summary.training.rounds] == [3, 3, 2, 2, 2]
    assert summary.training.lost["cedar_savings"].startswith(
        "left out from round 3: institution 'cedar_savings': unreachable at "
    )
    said = caplog.messages
    [warned] = [i for i, m in enumerate(said) if m.startswith("institution 'cedar_savings' left out from round 3: ")]
    assert said[warned].endswith("the run goes on with 2 institution(s) (quorum 2)")
    assert warned < min(i for i, m in enumerate(said) if m.startswith("round 3/5: "))  # at once, not at the end
    assert summary.training.best_round >= 3  # losses over 2 banks are not compared with losses over 3
    assert [e.institution for e in summary.evaluations] == ["alder_bank", "birch_credit_union"]
    assert not summary.registration.promoted
    assert "trained and evaluated without cedar_savings, lost mid-training" in summary.registration.reason
    tags = MlflowClient(tracking_uri).get_model_version("credit_xs_lost", "1").tags
    assert tags["institution.cedar_savings.lost"].startswith("left out from round 3")
    [listed] = list_versions(tracking_uri, "credit_xs_lost")  # `fedrisk models list` says it too
    assert listed.lost == ("cedar_savings",) and listed.decision == "not promoted"


def test_below_quorum_mid_training_nothing_is_registered_and_the_next_run_resumes_identically(
    consortium, across_nodes, tracking_uri
):
    from consortium.nodes import TrainingStopped

    _, pki, nodes = consortium
    victim = nodes["birch_credit_union"]
    config = _coordinator(pki, nodes.values(), "credit_xs_resume", quorum=3)
    uninterrupted = across_nodes.summary  # the same settings, never interrupted

    with _killed_after_round(victim, 2, restart=False), pytest.raises(TrainingStopped) as stopped:
        retrain(config)
    assert "2 institution(s) left, quorum is 3: the run stops, nothing is registered" in str(stopped.value)
    client = MlflowClient(tracking_uri)
    assert client.search_model_versions("name='credit_xs_resume'") == []

    victim.start()
    victim.wait()
    resumed = retrain(config)
    assert resumed.training.resumed_from_round == 2 and resumed.training.lost == {}
    assert resumed.weighted == uninterrupted.weighted  # a node never trains a round twice: identical


def test_nothing_of_a_headerless_extract_or_a_system_file_leaves_its_node(
    consortium, small_consortium, prefect_api, tracking_uri, tmp_path, monkeypatch
):
    """Two careless banks: one exports its extract without the header line, one points its node at a system file.
    Both are quarantined with a reason in counts, and no byte of their content reaches what the coordinator
    receives, the MLflow store and artifacts, Prefect's database, or the coordinator's terminal and log file.
    A third bank's policy refuses the training when it begins: it is quarantined with its refusal. And the
    coordinator asks for a lax DP delta (0.5, where DP-SGD's epsilon is about 0): each node accounts at its own
    (1/rows) and the registry records the nodes' figures, so both ledgers agree."""
    import yaml
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    import consortium.nodes as client
    from node import wire

    root, pki, nodes = consortium
    customer = "987654321,123457,2,2,1,24,2,2,-1,-1,-2,-2,3913,3102,689,0,0,0,0,689,0,0,0,0,1"
    headerless = tmp_path / "eel.csv"
    headerless.write_text(customer + "\n" + "\n".join(small_consortium["cedar_savings"].read_text().splitlines()[2:]))
    system = tmp_path / "passwd"
    system.write_text("fedrisk-marker-7f3a:x:0:0:root:/root:/bin/bash\nmarker-c2d9:x:2:2::/bin:/usr/sbin/nologin\n")
    careless = [
        _node(root, pki, "eel_bank", headerless),
        _node(root, pki, "fir_bank", system),
        _node(root, pki, "gum_bank", small_consortium["dune_finance"], {"max_rounds": 1}),
    ]
    secrets = [b"987654321", b"fedrisk-marker-7f3a", b"marker-c2d9"]
    received: list[bytes] = []
    decode = wire.decode
    monkeypatch.setattr(client.wire, "decode", lambda data: received.append(bytes(data)) or decode(data))
    for node in careless:
        node.start()
    try:
        for node in careless:
            node.wait()
        config = _coordinator_plain(
            pki,
            [*nodes.values(), *careless],
            "credit_xs_careless",
            quorum=3,
            training={"rounds": 2, "model": {"kind": "logistic_regression"}},
            privacy={"mechanism": "record_level", "noise_multiplier": 1.1, "delta": 0.5},
        )
        (tmp_path / "coordinator.yaml").write_text(yaml.safe_dump(config))
        log_file = tmp_path / "coordinator.log"
        env = {
            **os.environ,
            "PREFECT_API_URL": prefect_api,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "FEDRISK_LOG_FILE": str(log_file),
        }
        terminal = subprocess.run(
            [sys.executable, "-m", "flows.cli", "retrain", "--config", str(tmp_path / "coordinator.yaml")],
            env=env,
            capture_output=True,
            timeout=900,
        )
        assert terminal.returncode == 0, terminal.stdout.decode()[-3000:]
        # The validation as the coordinator received it (its process ran the CLI; this one asks once more).
        tls = client.Tls(str(pki / "ca.crt"), str(pki / f"{COORDINATOR}.crt"), str(pki / f"{COORDINATOR}.key"))
        for node in careless:
            client.send(
                client.NodeHandle(node.name, f"127.0.0.1:{node.port}"),
                tls,
                "Validate",
                {"schema": {"name": "credit_default", "version": 2}},
            )
    finally:
        for node in careless:
            node.stop()
    database = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    searched = {
        "what the coordinator received": b"".join(received),
        "terminal": terminal.stdout + terminal.stderr,
        "log file": log_file.read_bytes(),
    }
    for path in [*Path(tracking_uri.split("///", 1)[1]).parent.rglob("*"), *database.parent.glob(database.name + "*")]:
        if path.is_file():
            searched[str(path)] = path.read_bytes()
    assert len(searched) > 5 and any(b"checks passed" in v or b"quarantined" in v for v in searched.values())
    leaks = [(where, secret) for where, data in searched.items() for secret in secrets if secret in data]
    assert leaks == []
    shown = terminal.stdout.decode() + terminal.stderr.decode()
    assert "eel_bank" in shown and "the first line looks like a row, not a header (25 of 25 fields" in shown
    assert "fir_bank" in shown and "one column found, the schema declares 25" in shown
    # A bank whose policy refuses the training when it begins is quarantined like a failed validation, with why.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as prefect:  # the latest table: republished once the training began
        [table] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validation-credit-xs-careless"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    rows = {row["institution"]: row for row in json.loads(table.data)}
    assert {name: rows[name]["status"] for name in ("alder_bank", "eel_bank", "fir_bank", "gum_bank")} == {
        "alder_bank": "admitted",
        "eel_bank": "quarantined",
        "fir_bank": "quarantined",
        "gum_bank": "quarantined",
    }
    assert "agreed to at most 1 rounds, the run plans 2 (policy.max_rounds)" in json.dumps(rows["gum_bank"])

    from tracking.ledger import read_ledger

    [entry] = [e for e in read_ledger(tracking_uri) if e.model_name == "credit_xs_careless"]
    version = entry.version or "1"
    tags = MlflowClient(tracking_uri).get_model_version("credit_xs_careless", version).tags
    for name, node in nodes.items():
        ledger = json.loads((node.directory / "state" / "ledger.json").read_text())
        [(training, charged)] = [(k, v) for k, v in ledger.items() if k.startswith(entry.run_key)]
        assert charged["delta"] < 0.01 and charged["rounds"] == 2  # 1/rows (720 and more), not the 0.5 asked for
        assert charged["epsilon"] > 0.1  # at delta 0.5 the same rounds would cost about 0
        assert float(tags[f"privacy.epsilon.{name}"]) == pytest.approx(charged["epsilon"], abs=1e-4), training
        assert float(tags[f"privacy.delta.{name}"]) == pytest.approx(charged["delta"], rel=1e-2)
        assert entry.epsilon[name] == pytest.approx(charged["epsilon"], abs=1e-9) and entry.status == "spent"


def test_nodes_start_their_own_xgboost_workers_and_grow_the_trees_the_simulation_grows(
    consortium, small_consortium, tmp_path, monkeypatch
):
    _, pki, nodes = consortium
    trees = {
        "training": {
            "engine": "xgboost",
            "rounds": 30,
            "max_depth": 3,
            "learning_rate": 0.2,
            "early_stopping": {"patience": 5},
        }
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'simulation' / 'mlflow.db'}")
    simulated = retrain(
        parse_config(
            {
                "model_name": "trees_xs",
                "quorum": 3,
                "seed": 4,
                **trees,
                "institutions": [{"name": n, "path": str(small_consortium[n])} for n in BANKS],
            },
            Path("."),
        )
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nodes' / 'mlflow.db'}")
    config = _coordinator(pki, nodes.values(), "trees_xs")
    config = type(config).model_validate({**config.plain(), **trees, "tls": config.tls})
    import consortium.nodes as client
    from tasks.training import round_listener

    growing, shown = [], []  # TrainTrees calls in flight; each round shown, and whether trees were still growing
    send = client.send

    def counted(handle, tls, operation, request):
        growing.append(operation) if operation == "TrainTrees" else None
        try:
            return send(handle, tls, operation, request)
        finally:
            growing.remove(operation) if operation == "TrainTrees" else None

    monkeypatch.setattr(client, "send", counted)
    with round_listener(
        lambda event: shown.append((event["round"], bool(growing))) if event.get("event") == "round" else None
    ):
        across = retrain(config)
    assert [r["validation_auc"] for r in across.training.rounds] == pytest.approx(
        [r["validation_auc"] for r in simulated.training.rounds]
    )
    assert [r for r, _ in shown] == [r["round"] for r in across.training.rounds]  # each once, in order
    assert any(live for _, live in shown)  # round by round while the trees grew, not all at the end
    tags = MlflowClient().get_model_version("trees_xs", "1").tags
    assert tags["security.worker_isolation"].startswith("XGBoost's federated server on loopback (loopback-bind")
    assert "reached only through fedrisk's admission gate on 127.0.0.1:" in tags["security.worker_isolation"]
    for name, value in simulated.weighted.items():
        assert across.weighted[name] == pytest.approx(value, abs=1e-6), name
    assert MlflowClient().get_model_version("trees_xs", "1").tags["training.engine"] == "xgboost"


def test_tuning_across_nodes_trains_each_trial_at_the_nodes_which_score_only_the_best_trials_model(
    consortium, tracking_uri
):
    """Each trial is a training the nodes know by its own id; the nodes evaluate the best trial's model, as a model
    of a training they took part in (and no other)."""
    _, pki, nodes = consortium
    trees = {"engine": "xgboost", "rounds": 20, "early_stopping": {"patience": 5}}
    config = _coordinator(
        pki,
        nodes.values(),
        "tuned_xs",
        training=trees,
        tuning={"trials": 3, "pruning": False, "parameters": {"max_depth": {"low": 1, "high": 4}}},
    )
    summary = retrain(config)
    client = MlflowClient()
    run = client.get_run(summary.registration.run_id)
    assert run.data.tags["tuning.trials"] == "3 of 3 (0 pruned)"
    trials = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    keys = {int(t.data.tags["tuning.trial"]): t.data.tags["tuning.key"] for t in trials}
    best = keys[int(run.data.tags["tuning.best_trial"])]
    assert len(set(keys.values())) == 3 and all(e.metrics["challenger"]["roc_auc"] > 0.6 for e in summary.evaluations)
    for node in nodes.values():
        records = [json.loads(p.read_text()) for p in (node.directory / "state" / "runs").glob("*.json")]
        known = {r["run_key"]: r for r in records if r["run_key"] in keys.values()}
        assert set(known) == set(keys.values()), node.name  # each trial a training of its own at every node
        assert {key: r["evaluations"] for key, r in known.items() if r["evaluations"]} == {best: 1}  # the best's only


def _libraries(pid: int) -> set[str]:
    """The shared libraries mapped into a process (its /proc maps), as file names."""
    mapped = [line.split() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()]
    return {Path(parts[-1]).name for parts in mapped if len(parts) == 6 and ".so" in parts[-1]}


def test_nodes_that_train_only_trees_never_load_tensorflow(small_consortium, consortium, tmp_path, tracking_uri):
    """A bank's node whose policy trains only trees serves a whole tree training (validation, statistics, its
    XGBoost worker, evaluation) without importing TensorFlow or starting a TFF worker: a smaller, faster node."""
    _, pki, _ = consortium
    nodes = [
        _node(tmp_path, pki, name, small_consortium[name], policy={"model_kinds": ["gradient_boosted_trees"]})
        for name in BANKS
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait()
        config = _coordinator_plain(pki, nodes, "trees_lean")
        config["training"] = {"engine": "xgboost", "rounds": 5, "max_depth": 3}
        summary = retrain(parse_config(config, Path(".")))
        assert summary.registration.version == "1" and summary.weighted["roc_auc"] > 0.7
        for node in nodes:
            assert "worker_binary" not in descendants(node.process.pid).values()
            loaded = _libraries(node.process.pid)
            assert "libxgboost.so" in loaded  # it did grow trees in this process
            assert not [name for name in loaded if "tensorflow" in name], node.name
    finally:
        for node in nodes:
            node.stop()


def _leaves(value):
    """Every value in a decoded message, through its dicts and lists."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _numbers(value):
    """Every number in a decoded message (array elements included)."""
    for leaf in _leaves(value):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
            yield from leaf.ravel().tolist()
        elif isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            yield leaf


def _arrays(value):
    return (leaf for leaf in _leaves(value) if isinstance(leaf, np.ndarray))


def _secure(config, **settings):
    return type(config).model_validate({**config.plain(), "tls": config.tls, **settings})


def test_with_secure_aggregation_the_coordinator_receives_only_sums_and_trains_the_same_model(
    consortium, small_consortium, tracking_uri, monkeypatch, tmp_path, caplog
):
    """The same training with `training.aggregation: plain`, in the clear and under secure aggregation: the same
    weights (to the quantization). Everything the coordinator received in the secure run is captured: no
    institution's statistics or update is in it, and each masked update is uncorrelated with the update it hides
    (read from the node's own round log)."""
    import consortium.nodes as client
    from contract.data import Extract, Split, load_parts
    from institution.statistics import local_statistics
    from node import wire
    from secagg import ring
    from secagg.ring import VectorSpec

    root, pki, nodes = consortium
    plain_aggregation = {"training": {**SETTINGS["training"], "aggregation": "plain"}}
    retrain(_secure(_coordinator(pki, nodes.values(), "credit_plain_sum"), **plain_aggregation))
    received, real_call = [], client.send

    def capture(handle, tls, operation, request):
        answer = real_call(handle, tls, operation, request)
        received.append((handle.institution, operation, answer))
        return answer

    def round_logs() -> set[Path]:
        return {log for node in nodes.values() for log in (node.directory / "state" / "rounds").glob("*/round_*.msg")}

    before = round_logs()
    monkeypatch.setattr(client, "send", capture)
    config = _secure(
        _coordinator(pki, nodes.values(), "credit_secure_sum"), secure_aggregation=True, **plain_aggregation
    )
    secure = retrain(config)

    for mine, theirs in zip(
        _weights(tracking_uri, "credit_secure_sum", "1", tmp_path),
        _weights(tracking_uri, "credit_plain_sum", "1", tmp_path),
        strict=True,
    ):
        np.testing.assert_allclose(mine, theirs, atol=2e-5)
    assert [r["institutions"] for r in secure.training.rounds] == [3] * 5
    complete = "secure sum: keys 3/3, shares 3/3, masked inputs 3/3, consistency 3/3, unmasking 3/3 (threshold 2)"
    for line in ("federated statistics, " + complete, "round 5: " + complete, "validation of round 5: " + complete):
        assert line in caplog.text  # the flow's round log says how many nodes completed each phase
    registry = MlflowClient(tracking_uri)
    tags = registry.get_model_version("credit_secure_sum", "1").tags
    # Each node's counts per grade and feature bin (the development reference) leave in the clear only without it;
    # with it the version keeps their secure sum alone.
    for model, secure_sum in (("credit_plain_sum", False), ("credit_secure_sum", True)):
        run_id = registry.get_model_version(model, "1").run_id
        local = registry.download_artifacts(run_id, "monitoring/reference.json", str(tmp_path / model))
        reference = json.loads(Path(local).read_text())
        assert (reference["institutions"] == {}) == secure_sum and ("secure_sum" in reference) == secure_sum
    assert "development reference for monitoring, " + complete in caplog.text
    assert {k: v for k, v in tags.items() if k.startswith("secure_aggregation")} == {
        "secure_aggregation": "true",
        "secure_aggregation.institutions": "3",
        "secure_aggregation.threshold": "2",
        "secure_aggregation.bit_width": "32",
        "secure_aggregation.clip_norm": "10",
    }

    operations = {operation for _, operation, _ in received}
    assert operations == {
        "Validate",
        "Prepare",
        "SecureBegin",
        "SecureShare",
        "SecureMask",
        "SecureConsistency",
        "SecureUnmask",
        "Evaluate",
    }  # no Statistics, TrainRound or ValidateRound answered in the clear
    # No institution's statistics: none of its sums or sums of squares appears in anything received after validation
    # (the validation report, whole-extract counts and a profile, is visible by design).
    split = Split(config.holdout_fraction, config.training.validation_fraction, config.seed)
    secrets = set()
    for name in BANKS:
        rows = load_parts(Extract(name, small_consortium[name]), config.data_schema, split, ("train",))["train"]
        found = local_statistics(name, rows, config.data_schema, config.feature_names)
        secrets |= {round(v, 3) for v in [*found.sums.values(), *found.sums_of_squares.values()] if abs(v) > 1000}
    leaked = {
        (who, op, round(v, 3))
        for who, op, answer in received
        if op != "Validate"
        for v in _numbers(answer)
        if round(v, 3) in secrets
    }
    assert secrets and not leaked
    # No update: each node's own round log has its updates; what came back masked does not correlate with them.
    masked = [a for _, op, answer in received if op == "SecureMask" for a in _arrays(answer)]
    updates = [
        np.concatenate([np.ravel(u) for u in wire.decode(log.read_bytes())["update"]])
        for log in sorted(round_logs() - before)
    ]
    assert len(updates) == 3 * 5
    size = len(updates[0])
    hidden = [m for m in masked if m.size == size * 4]
    assert len(hidden) == 3 * 5  # one masked update per institution per round
    floats = [
        a for _, op, answer in received if op.startswith("Secure") for a in _arrays(answer) if a.dtype.kind == "f"
    ]
    assert all(a.size != size for a in floats)  # no update-sized vector of floats at all
    spec = VectorSpec(size, 32, ring.scale_for(10.0, 3, 32))
    # A uniform vector's sample correlation with a fixed one has standard deviation 1/sqrt(size): 5 of them bound
    # all 225 pairs by chance with probability 1 - 1e-4, where a masked update that leaked its update correlates ~1.
    bound = 5 / np.sqrt(size)
    assert bound < 0.5
    for vector in hidden:
        decoded = ring.decode(ring.from_bytes(vector, spec), spec)
        assert max(abs(np.corrcoef(decoded, u)[0, 1]) for u in updates) < bound


def test_under_secure_aggregation_a_lost_node_ends_the_run_cleanly_when_too_few_remain(consortium, tracking_uri):
    """cedar dies after round 2: the round it misses cannot be a secure sum of the two left (a sum of two
    reveals each to the other), so the run stops, nothing is registered."""
    from consortium.nodes import TrainingStopped

    _, pki, nodes = consortium
    # Its own seed: the same data and settings as another secure training would make the same round updates, which
    # the nodes add to one sum only (tests/e2e/test_adversarial_coordinator.py).
    with _killed_after_round(nodes["cedar_savings"], 2), pytest.raises(TrainingStopped) as stopped:
        retrain(
            _secure(_coordinator(pki, nodes.values(), "credit_secure_lost", quorum=2), secure_aggregation=True, seed=5)
        )
    assert "round 3" in str(stopped.value) and "nothing is registered" in str(stopped.value)
    assert "only 2 institution(s) completed; a secure sum needs at least 3" in str(stopped.value)
    assert MlflowClient(tracking_uri).search_model_versions("name='credit_secure_lost'") == []


def test_monitoring_across_silos_under_secure_aggregation_names_the_bank_that_moved_and_its_retraining_says_why(
    consortium, small_consortium, tracking_uri, monkeypatch, tmp_path, caplog
):
    """The monitoring scenario across node processes with secure aggregation on. The version's development reference
    is a secure sum of the nodes' counts of their development rows (their totals: every row of their extracts);
    each month every node counts its own month extract and the counts are summed securely: the coordinator reads the
    consortium's report, and of each bank only its status and its findings by name (the bank's own report, with its
    figures, stays at its node). A stable month: no breach. A month where cedar_savings' limits fall and its defaults
    rise: cedar_savings acts, the breach event names it, and the retraining it starts records it in its lineage.
    Nothing a node counted reaches the coordinator in the clear; a node refuses to count in the clear for a model
    trained under secure aggregation, and to count with a model it did not evaluate as a challenger."""
    import json

    import mlflow
    import pandas as pd
    import prefect.events
    import yaml

    import consortium.nodes as client
    from contract.synthetic import synthesize
    from flows.config import load_config
    from flows.monitor import MonitoringBreach, monitor_champion
    from flows.retrain import retrain_from_config
    from institution.monitoring import REFERENCE_ARTIFACT, counts_vector, monitor_extract
    from riskmodel import model as exported
    from runconfig import MonitoringConfig
    from tracking.registry import exported_model_dir

    root, pki, nodes = consortium
    plain = _coordinator_plain(pki, nodes.values(), "credit_watch", secure_aggregation=True, seed=6)
    plain["training"] = {**plain["training"], "rounds": 3}
    config_file = tmp_path / "credit_watch.yaml"
    config_file.write_text(yaml.safe_dump(plain))
    config = load_config(config_file)
    received, real_send = [], client.send

    def capture(handle, tls, operation, request):
        answer = real_send(handle, tls, operation, request)
        received.append((handle.institution, operation, answer))
        return answer

    monkeypatch.setattr(client, "send", capture)
    retrain_from_config(str(config_file))
    registry = MlflowClient(tracking_uri)
    version = registry.get_model_version("credit_watch", "1")
    reference = json.loads(
        Path(registry.download_artifacts(version.run_id, REFERENCE_ARTIFACT, str(tmp_path))).read_text()
    )
    extracts = [pd.read_csv(small_consortium[name]) for name in BANKS]
    assert reference["institutions"] == {} and reference["secure_sum"]["institutions"] == list(BANKS)
    summed = reference["secure_sum"]["counts"]
    assert sum(summed["rows"]) == sum(len(e) for e in extracts)
    assert sum(summed["defaults"]) == sum(int(e[config.data_schema.label.column].sum()) for e in extracts)
    # No bank's own counts: its development counts and its counts by protected group come only as secure sums.
    assert all(a["reference"] is None and a["fairness"] == {} for _, op, a in received if op == "Evaluate")
    complete = "secure sum: keys 3/3, shares 3/3, masked inputs 3/3, consistency 3/3, unmasking 3/3 (threshold 2)"
    assert f"development reference for monitoring, {complete}" in caplog.text
    assert f"fair-lending counts, {complete}" in caplog.text
    # The fair-lending figures come from that secure sum: every holdout row in one group of each attribute, and
    # the guardrail judged them (the version is champion: monitoring reads it below).
    metrics = registry.get_run(version.run_id).data.metrics
    holdouts = sum(metrics[f"holdout_rows/{name}"] for name in BANKS)
    assert metrics["fairness/sex/female/rows"] + metrics["fairness/sex/male/rows"] == holdouts
    assert not any(key.startswith(f"fairness/{name}/") for key in metrics for name in BANKS)  # no bank's own
    assert version.tags["promotion.decision"] == "promoted", version.tags["promotion.reason"]
    assert "pass: no sex group's adverse impact ratio below 0.8" in version.tags["promotion.checks"]

    model = exported_model_dir(
        Path(mlflow.artifacts.download_artifacts("models:/credit_watch/1", dst_path=str(tmp_path / "v1")))
    )
    stable = synthesize(tmp_path / "stable", 4, seed=31, rows_scale=0.25)
    shifted = synthesize(
        tmp_path / "shifted",
        4,
        seed=32,
        rows_scale=0.25,
        changes={"cedar_savings": {"median_limit": 12_000, "default_rate": 0.6}},
    )
    emitted, real_emit = [], prefect.events.emit_event

    def emit(**event):
        emitted.append(event)
        return real_emit(**event)

    monkeypatch.setattr(prefect.events, "emit_event", emit)

    def month(files: dict[str, Path], period: str):
        for name in BANKS:
            shutil.copy(files[name], nodes[name].directory / "month.csv")
        del received[:]
        return monitor_champion(config, period)

    calm = month(stable, "2026-11")
    assert calm.status != "act" and emitted == [] and calm.unmonitored == {}
    assert [r.scope for r in calm.reports] == [*BANKS, "consortium"]
    assert calm.reports[-1].rows == sum(len(pd.read_csv(stable[name])) for name in BANKS)

    moved = month(shifted, "2026-12")
    by_scope = {r.scope: r for r in moved.reports}
    assert moved.status == "act" and by_scope["cedar_savings"].status == "act"
    assert {by_scope[name].status for name in ("alder_bank", "birch_credit_union")} <= {"stable", "warn"}
    assert all(f.startswith(("act: ", "warn: ")) for f in by_scope["cedar_savings"].findings)
    assert f"monitoring of 2026-12, {complete}" in caplog.text
    [event] = emitted
    breach = MonitoringBreach(**event["payload"])
    assert "cedar_savings" in breach.reason and breach.version == "1" and breach.period == "2026-12"
    # Only secure sums crossed, and nothing a node counted is in them in the clear (its report's status and its
    # findings' names, and its row total, as public as its validation report, are).
    assert {op for _, op, _ in received} <= {
        "SecureBegin",
        "SecureShare",
        "SecureMask",
        "SecureConsistency",
        "SecureUnmask",
    }
    loaded = exported.load(model)
    for name in BANKS:
        counted = monitor_extract(shifted[name], config.data_schema, loaded)
        secrets = {round(v, 3) for v in counts_vector(counted.counts, loaded.bins) if v > 100} - {
            counted.counts.total,
            counted.rows,
        }
        assert secrets
        leaked = {round(v, 3) for who, _, answer in received if who == name for v in _numbers(answer)} & secrets
        assert not leaked, (name, leaked)
    # The same month's counts in a second sum (which could leave one bank out, and the difference be its counts):
    # every node refuses, naming the sum it added them to.
    from flows.validate import consortium_of

    again = consortium_of(config).secure_monitor(config.data_schema, model, "2026-12", MonitoringConfig())
    assert again.counts is None and set(again.unmonitored) >= set(BANKS)
    for name in BANKS:
        assert "already added its monitoring counts of model" in again.unmonitored[name]
        assert "(rule: one sum per input)" in again.unmonitored[name]
    digest = exported.files_digest(model)
    own = nodes["cedar_savings"].directory / "state" / "monitoring" / f"2026-12-{digest[:12]}.md"
    assert "act" in own.read_text() and "stability" in own.read_text()  # the bank's own report, with its figures
    # In the clear the node counts nothing for this model, nor anything for a model it did not evaluate.
    handle, tls = (
        client.NodeHandle("alder_bank", f"127.0.0.1:{nodes['alder_bank'].port}"),
        client.Tls(str(pki / "ca.crt"), str(pki / f"{COORDINATOR}.crt"), str(pki / f"{COORDINATOR}.key")),
    )
    request = {
        "schema": {"name": "credit_default", "version": config.data_schema.version},
        "period": "2026-12",
        "thresholds": MonitoringConfig().model_dump(),
    }
    with pytest.raises(client.NodeError, match="sends its monitoring counts only through secure aggregation"):
        real_send(handle, tls, "Monitor", {**request, "model": client._zip_model(model)})
    stranger = tmp_path / "stranger"
    shutil.copytree(model, stranger)
    manifest = json.loads((stranger / exported.MANIFEST).read_text())
    (stranger / exported.MANIFEST).write_text(json.dumps({**manifest, "note": "not the one trained"}))
    with pytest.raises(client.NodeError, match="monitors only a model it evaluated as a training's challenger"):
        real_send(handle, tls, "Monitor", {**request, "model": client._zip_model(stranger)})

    # The retraining the breach starts (the automation's parameters), its own seed: its rounds are new inputs.
    retrain_from_config(str(config_file), {"seed": 7}, breach)
    tags = registry.get_model_version("credit_watch", "2").tags
    assert tags["prefect.trigger"] == "monitoring" and "cedar_savings" in tags["monitoring.reason"]
    assert tags["monitoring.period"] == "2026-12" and tags["monitoring.version"] == "1"


def test_across_silos_under_secure_aggregation_a_bank_biased_against_women_keeps_the_model_from_champion(
    consortium, tracking_uri, tmp_path, caplog
):
    """The fair-lending scenario at node processes with secure aggregation: alder_bank's history is biased against
    women (tests/e2e/test_fairness.py in simulation). The consortium's counts by group are one secure sum, no bank's
    own figures reach the coordinator, and the guardrail keeps the model from champion naming the group."""
    from contract.synthetic import synthesize

    root, pki, nodes = consortium
    changes = {name: {"age_mean": 36} for name in BANKS}
    changes["alder_bank"]["sex_bias"] = 3.0
    biased = synthesize(tmp_path / "biased", 3, seed=3, rows_scale=0.25, changes=changes)
    kept = {name: nodes[name].directory / "credit.csv" for name in BANKS}
    for name, extract in kept.items():  # each node's extract replaced for this run, restored after it
        shutil.copy(extract, tmp_path / f"{name}.original.csv")
        shutil.copy(biased[name], extract)
    try:
        config = _secure(
            _coordinator(pki, nodes.values(), "credit_biased"),
            secure_aggregation=True,
            seed=9,
            training={"rounds": 4, "model": {"kind": "logistic_regression"}},
            evaluation={"threshold": 0.25},
            promotion={"max_calibration_error": 0.1},
        )
        summary = retrain(config)
    finally:
        for name, extract in kept.items():
            shutil.copy(tmp_path / f"{name}.original.csv", extract)
    registration = summary.registration
    assert not registration.promoted
    assert registration.reason.startswith("not promoted, no champion set: adverse impact ratio below 0.8: sex female ")
    assert "fair-lending counts, secure sum: keys 3/3" in caplog.text
    metrics = MlflowClient(tracking_uri).get_run(registration.run_id).data.metrics
    assert metrics["fairness/sex/female/adverse_impact_ratio"] < 0.8
    assert not any(key.startswith(f"fairness/{name}/") for key in metrics for name in BANKS)


@contextmanager
def _frozen_in_round(victim: Node, round_num: int, thawed_when: str):
    """Inside the block `victim` is stopped (SIGSTOP: alive, its connections open, computing nothing) once round
    `round_num - 1` is done, and continued (SIGCONT) the moment the run logs a line starting with `thawed_when`,
    the run going on once the victim's work in flight has come back: a node genuinely too slow for those rounds."""
    import logging
    import threading

    from tasks.training import round_listener

    def freeze(metrics):
        if metrics.get("round") == round_num - 1:
            os.kill(victim.process.pid, signal.SIGSTOP)

    class Thaw(logging.Handler):
        def emit(self, record):  # in the coordinator's thread: it goes on once the victim's late work is back
            if record.getMessage().startswith(thawed_when):
                os.kill(victim.process.pid, signal.SIGCONT)
                for thread in threading.enumerate():
                    if thread.name.startswith("round-") and thread.name.endswith(f"-{victim.name}"):
                        thread.join(timeout=300)

    thaw = Thaw()
    logging.getLogger().addHandler(thaw)
    try:
        with round_listener(freeze):
            yield
    finally:
        logging.getLogger().removeHandler(thaw)
        os.kill(victim.process.pid, signal.SIGCONT)


def _scheduled(**schedule) -> dict:
    return {"training": {**SETTINGS["training"], "schedule": schedule}}


@pytest.mark.parametrize("late_updates", ["discount", "drop"])
def test_a_node_that_misses_the_deadline_is_left_out_of_that_round_only_and_its_late_update_counts_as_configured(
    consortium, tracking_uri, caplog, late_updates
):
    """cedar_savings is stopped through round 2: the round closes at its deadline with the two others (two thirds
    of the rows, over min_share), cedar's round-2 update arrives in round 3, one version late, and is applied at
    1/(1+1)^0.5 of its weight or dropped; cedar trains round 3 from the latest model and every round after."""
    _, pki, nodes = consortium
    name = f"credit_xs_deadline_{late_updates}"
    config = _coordinator(
        pki, nodes.values(), name, **_scheduled(mode="deadline", deadline_seconds=20, late_updates=late_updates)
    )
    with _frozen_in_round(nodes["cedar_savings"], 2, "round 2: on time: alder_bank, birch_credit_union;"):
        summary = retrain(config)
    rounds = summary.training.rounds
    applied = late_updates == "discount"
    assert [r["missed_deadline"] for r in rounds] == [0, 1, 0, 0, 0]
    assert [r["late_applied"] for r in rounds] == [0, 0, int(applied), 0, 0]
    assert [r["late_dropped"] for r in rounds] == [0, 0, int(not applied), 0, 0]
    assert [r["institutions"] for r in rounds] == [3, 2, 3, 3, 3]  # cedar's round 3 counted once, on time
    assert rounds[2]["staleness"] == (1.0 if applied else 0.0)
    said = caplog.messages
    assert (
        "round 2: on time: alder_bank, birch_credit_union; cedar_savings missed the deadline (still training "
        "from round 2)" in said
    )
    fate = "applied at 0.71 of its weight" if applied else "dropped"
    late = f"cedar_savings's update from round 2 late by 1: {fate}"
    assert f"round 3: on time: alder_bank, birch_credit_union, cedar_savings; {late}" in said
    assert summary.training.lost == {}  # missing a deadline is not being lost
    assert summary.training.rounds_trained == dict.fromkeys(BANKS, 5)  # each node's own round log
    assert [e.institution for e in summary.evaluations] == list(BANKS)
    tags = MlflowClient(tracking_uri).get_model_version(name, "1").tags
    assert tags["training.schedule"].startswith("deadline 20 s, at least 50% of the fit rows reported")
    assert tags["institution.cedar_savings.rounds"] == (
        f"an update on time in 4 of 5 rounds (4 updates); missed the deadline in 1; late updates applied "
        f"{int(applied)}, dropped {int(not applied)}"
    )
    assert tags["institution.alder_bank.rounds"].startswith("an update on time in 5 of 5 rounds")


def test_buffered_steps_go_on_without_a_stopped_node_and_apply_its_update_at_its_staleness(
    consortium, tracking_uri, caplog
):
    """FedBuff with a buffer of two: while cedar_savings is stopped the two others make every server step; cedar's
    update, trained from an older model, is applied when it arrives at 1/(1+s)^0.5 of its weight. Every step is
    two updates, and no node trains more than the run's declared rounds."""
    _, pki, nodes = consortium
    schedule = {"mode": "buffered", "buffer_size": 2, "max_staleness": 10}
    config = _coordinator(pki, nodes.values(), "credit_xs_buffered", **_scheduled(**schedule))
    with _frozen_in_round(nodes["cedar_savings"], 2, "round 3: "):
        summary = retrain(config)
    rounds = summary.training.rounds
    assert len(rounds) == 5
    participation = MlflowClient(tracking_uri).download_artifacts(
        MlflowClient(tracking_uri).get_model_version("credit_xs_buffered", "1").run_id, "training/participation.json"
    )
    counts = json.loads(Path(participation).read_text())
    assert counts["columns"] == ["on time", "late, applied", "late, dropped", "missed the deadline"]
    per_round = np.sum([counts["institutions"][name] for name in BANKS], axis=0)  # rounds x kinds
    assert [int(on_time + applied) for on_time, applied, _, _ in per_round] == [2] * 5  # a step is two updates
    assert sum(r["late_applied"] for r in rounds) >= 1 and sum(r["missed_deadline"] for r in rounds) == 0
    assert summary.training.best_round >= 1  # validation ran beside the steps, a round at a time
    late = [m for m in caplog.messages if "cedar_savings's update from round" in m]
    assert late and all("applied at 0." in m for m in late)
    assert all(n <= 5 for n in summary.training.rounds_trained.values())  # within the declared rounds
    tags = MlflowClient(tracking_uri).get_model_version("credit_xs_buffered", "1").tags
    assert tags["training.schedule"].startswith("buffered asynchronous (FedBuff), a server step per 2 updates")
    assert [e.institution for e in summary.evaluations] == list(BANKS)


def test_under_secure_aggregation_a_buffer_is_one_secure_sum_of_held_updates(consortium, tracking_uri, tmp_path):
    """Under secure aggregation a buffer of all three banks: each node trains and holds its update, each step is one
    secure sum of the held updates (BufferedRound), and a node holding an update waits for the step: it trains the
    weights synchronous rounds in the clear train (to the quantization). No update is answered in the clear. (Seed
    11, its own: a deterministic training with another secure test's seed and settings reproduces its updates exactly,
    which each node refuses to add to a second sum.)"""
    import consortium.nodes as client

    _, pki, nodes = consortium
    training = {**SETTINGS["training"], "rounds": 3, "aggregation": "plain"}
    retrain(_coordinator(pki, nodes.values(), "credit_synchronous_plain", training=training, seed=11))
    training["schedule"] = {"mode": "buffered", "buffer_size": 3}
    sent: list[tuple[str, dict]] = []
    real_send = client.send

    def capture(handle, tls, operation, request):
        answer = real_send(handle, tls, operation, request)
        sent.append((operation, request, answer))
        return answer

    client.send = capture
    try:
        config = _coordinator(pki, nodes.values(), "credit_secure_buffered", training=training, seed=11)
        summary = retrain(_secure(config, secure_aggregation=True))
    finally:
        client.send = real_send
    for mine, theirs in zip(
        _weights(tracking_uri, "credit_secure_buffered", "1", tmp_path),
        _weights(tracking_uri, "credit_synchronous_plain", "1", tmp_path),
        strict=True,
    ):
        np.testing.assert_allclose(mine, theirs, atol=2e-5)  # stochastic rounding to the ring, as above
    trained = [(request, answer) for operation, request, answer in sent if operation == "TrainRound"]
    assert len(trained) == 9 and all(request["hold"] for request, _ in trained)
    assert all(set(answer) == {"rounds_trained", "epsilon", "delta"} for _, answer in trained)
    buffers = [r for operation, r, _ in sent if operation == "SecureBegin" and r["added"] == "buffered_round"]
    assert len(buffers) == 9  # three steps, three nodes each
    assert [r["late_applied"] for r in summary.training.rounds] == [0, 0, 0]
