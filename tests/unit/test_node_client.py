"""consortium.nodes: the coordinator's side across silos. An institution whose node refuses the training at Prepare
(outside its policy) is left out like a lost one and the quorum decides; a refusal is never retried. Real nodes
(NodeService behind its gRPC server, mutual TLS on loopback) in this process."""

from contextlib import ExitStack, contextmanager
from types import SimpleNamespace

import grpc
import pytest

from consortium.nodes import NodeConsortium, NodeError, NodeHandle, Tls
from consortium.protocol import TrainingStopped
from contract.data import Split
from contract.schema import load_schema
from fed_models.training import TrainingSpec, build_stages
from hostguard.pki import init_ca, issue
from institution.statistics import feature_space
from node.config import NodeConfig
from node.server import start_server
from node.service import NodeService
from tasks.training import _worth_retrying
from tests.conftest import TEST_EXPECTATIONS_DIR

CREDIT = load_schema("credit_default")
BANKS = ("alder_bank", "birch_credit_union", "cedar_savings")
SPLIT = Split(0.2, 0.1, 1)


@contextmanager
def _serving(small_consortium, tmp_path, names, settings, **consortium):
    """A node per name in this process over mutual TLS (`settings(name)`: the rest of its config); yields the
    admitted consortium (NodeConsortium's `consortium` fields) and stops every server."""
    pki = tmp_path / "pki"
    init_ca(pki)
    for name in (*names, "coordinator"):
        issue(pki, name, ("localhost", "127.0.0.1"))
    with ExitStack() as stack:
        handles = []
        for name in names:
            config = NodeConfig.model_validate(
                {
                    "institution": name,
                    "listen": "127.0.0.1:0",
                    "schema": "credit_default",
                    "extract": {"path": str(small_consortium[name])},
                    "work_dir": str(tmp_path / name),
                    "tls": {"ca": pki / "ca.crt", "cert": pki / f"{name}.crt", "key": pki / f"{name}.key"},
                    **settings(name),
                }
            )
            server, port = start_server(config, NodeService(config, TEST_EXPECTATIONS_DIR))
            stack.callback(server.stop, None)
            handles.append(NodeHandle(name, f"127.0.0.1:{port}"))
        admitted = NodeConsortium(
            tuple(handles),
            Tls(str(pki / "ca.crt"), str(pki / "coordinator.crt"), str(pki / "coordinator.key")),
            **consortium,
        )
        reports = [admitted.validate(name, CREDIT, None, TEST_EXPECTATIONS_DIR) for name in names]
        yield admitted.admit(reports)


@pytest.fixture
def nodes(small_consortium, tmp_path):
    """Three nodes; cedar's policy allows at most 3 rounds. Yields the admitted consortium (quorum 2)."""
    policy = {"cedar_savings": 3}
    with _serving(
        small_consortium, tmp_path, BANKS, lambda name: {"policy": {"max_rounds": policy.get(name, 100)}}, quorum=2
    ) as consortium:
        yield consortium


def _training(consortium, quorum: int):
    from dataclasses import replace

    consortium = replace(consortium, quorum=quorum)
    features = list(CREDIT.features)
    stats = [consortium.statistics(name, CREDIT, features, SPLIT) for name in consortium.names]
    space = feature_space(CREDIT, features, SPLIT, stats)
    spec = TrainingSpec(rounds=5, seed=1)
    from fed_models import runtime

    runtime.ensure_context()
    return consortium.training(space, "run-refused"), build_stages(spec, space.mean, space.std, n_clients=3)


def test_an_institution_refusing_at_prepare_is_left_out_and_the_quorum_decides(nodes):
    institutions, stages = _training(nodes, quorum=2)
    institutions.prepare(stages)
    assert list(institutions.lost) == ["cedar_savings"]
    assert institutions.lost["cedar_savings"].startswith(
        "quarantined at the start of the training: institution 'cedar_savings'"
    )
    assert "agreed to at most 3 rounds, the run plans 5 (policy.max_rounds)" in institutions.lost["cedar_savings"]
    updates = institutions.train_round(stages, 1, stages.initial_weights, [0, 1, 2])
    assert [u.institution for u in updates] == ["alder_bank", "birch_credit_union"]

    institutions, stages = _training(nodes, quorum=3)
    with pytest.raises(
        TrainingStopped,
        match=r"the start of the training: .*cedar_savings.*\(policy.max_rounds\) "
        r"\(refused\); 2 institution\(s\) left, quorum is 3",
    ):
        institutions.prepare(stages)


def test_a_refusal_is_not_retried_a_fault_is():
    def state(error):
        return SimpleNamespace(data=error)

    assert not _worth_retrying(None, None, state(NodeError("refused", grpc.StatusCode.FAILED_PRECONDITION)))
    assert not _worth_retrying(None, None, state(TrainingStopped("quorum")))
    assert _worth_retrying(None, None, state(NodeError("unreachable", grpc.StatusCode.UNAVAILABLE)))
    assert _worth_retrying(None, None, state(RuntimeError("a lost TFF worker")))


@pytest.fixture
def secure_nodes(small_consortium, tmp_path):
    """Four nodes of one consortium (a secure sum holds at least three of them), in this process over mutual TLS.
    Yields the admitted consortium under secure aggregation (threshold 3) and each node's work directory."""
    names = (*BANKS, "dune_finance")
    members = {"consortium": {"members": list(names)}}
    with _serving(small_consortium, tmp_path, names, lambda _: members, quorum=3, secure_threshold=3) as consortium:
        yield consortium, {name: tmp_path / name for name in names}


def test_under_secure_aggregation_a_node_past_the_deadline_is_left_out_of_that_sum_and_its_input_is_never_summed(
    secure_nodes, monkeypatch
):
    """Each node trains and holds its round's update; dune_finance's round 2 is held back past the deadline: the
    round's secure sum holds the three others; dune's round-2 update, back before round 3, is dropped, never summed
    (alone in a later sum it would be read), and dune trains round 3 from the latest model and is in its sum."""
    import json
    import threading

    import numpy as np

    import consortium.nodes as client
    from fed_models.training import Schedule, train

    consortium, work_dirs = secure_nodes
    features = list(CREDIT.features)
    space = feature_space(CREDIT, features, SPLIT, [consortium.statistics(n, CREDIT, features, SPLIT) for n in BANKS])
    released = threading.Event()
    real_call = client.call

    def call(handle, tls, request):
        if handle.institution == "dune_finance" and request.operation == "TrainRound" and request.round == 2:
            assert request.hold  # it keeps its update for the round's secure sum
            assert released.wait(timeout=300)
        return real_call(handle, tls, request)

    monkeypatch.setattr(client, "call", call)
    runner = consortium.training(space, "run-secure-deadline")
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("round 2: on time:"):  # the round closed without dune: let its training through, and
            released.set()  # go on once it is back (its late update then waits in the runner's queue)
            for thread in threading.enumerate():
                if thread.name == "round-2-dune_finance":
                    thread.join(timeout=300)

    runner.log = log
    # Round 1 builds each node's TFF computations: on a loaded 2-core machine that took over 2 s (a node then missed
    # round 1); round 2 waits the whole deadline for dune_finance.
    schedule = Schedule("deadline", deadline_seconds=8.0, late_updates="drop")
    spec = TrainingSpec(rounds=3, seed=1, aggregation="plain", schedule=schedule)
    result = train(runner, np.asarray(space.mean), np.asarray(space.std), spec)

    assert [(r.institutions, r.missed_deadline, r.late_dropped) for r in result.rounds] == [
        (4, 0, 0),
        (3, 1, 0),
        (4, 0, 1),
    ]
    assert result.participation["dune_finance"] == [[1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]]
    assert (
        "round 2: on time: alder_bank, birch_credit_union, cedar_savings; dune_finance missed the deadline (still "
        "training from round 2)" in lines
    )
    assert (
        "round 3: on time: alder_bank, birch_credit_union, cedar_savings, dune_finance; dune_finance's update from "
        "round 2 late by 1: dropped" in lines
    )
    dune = work_dirs["dune_finance"]
    assert (dune / "rounds" / "run-secure-deadline" / "round_2.json").exists()  # trained, and charged
    summed = [json.loads(line)["description"] for line in (dune / "secure_inputs.jsonl").read_text().splitlines()]
    rounds = [d for d in summed if d.startswith("its update of round")]
    assert rounds == [
        "its update of round 1 of run run-secure-deadline",
        "its update of round 3 of run run-secure-deadline",
    ]
