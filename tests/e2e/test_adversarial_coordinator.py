"""A coordinator that deviates from secure aggregation, with its own valid certificate, against unmodified nodes:
each way found to read one bank's exact input is refused with a message naming the rule it breaks.

The scripted coordinator drives real nodes: `NodeService`s in this process (each its own work directory) and,
in the slow test, `fedrisk node serve` processes over mutual TLS. The attacks:
1. the same input in several sums (over different participants), statistics and round updates;
2. per-node encoding parameters (clip norm, weight) chosen to single out one bank;
3. the coordinator in the roster (its certificate is the consortium's);
4. a threshold of its choosing;
5. inconsistent views: the victim gets only t - 1 peers' shares, the others are told those peers dropped;
and a sum of two inputs released when one participant drops after sharing.
"""

from __future__ import annotations

import itertools
import shutil
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from contract.schema import load_schema
from hostguard.pki import init_ca, issue
from node import messages, secure, wire
from node.config import NodeConfig
from node.policy import NodeRefusal
from node.service import NodeService
from secagg.protocol import (
    RULE_CERTIFICATE,
    RULE_CONSISTENCY,
    RULE_ENCODING,
    RULE_MEMBERS,
    RULE_MIN_INPUTS,
    RULE_ONE_SUM,
    RULE_ROSTER,
    RULE_SAME_PARAMETERS,
    RULE_THRESHOLD,
    Advertisement,
    Identity,
)
from tests.conftest import TEST_EXPECTATIONS_DIR, free_port, serve_nodes

CREDIT = load_schema("credit_default")
SCHEMA = {"name": CREDIT.name, "version": CREDIT.version}
ALDER, BIRCH, CEDAR, DUNE = BANKS = ("alder_bank", "birch_credit_union", "cedar_savings", "dune_finance")
COORDINATOR = "coordinator"
_sessions = itertools.count()


class Refused(Exception):
    """A node's refusal, as the coordinator reads it."""


def split(seed: int) -> dict:
    return {"holdout_fraction": 0.2, "validation_fraction": 0.1, "seed": seed}


class Coordinator:
    """The deviating coordinator: it speaks the nodes' protocol, each call one node's operation; `ask` returns the
    answer or raises Refused with the node's sentence."""

    def __init__(self, call, digests: dict[str, str], identity: Identity):
        self.call, self.digests, self.identity = call, digests, identity

    def ask(self, name: str, operation: str, request: dict):
        return self.call(name, operation, request)

    def refusal(self, name: str, operation: str, request: dict) -> str:
        with pytest.raises(Refused) as refused:
            self.ask(name, operation, request)
        return str(refused.value)

    def statistics(self, name: str, session: str, participants, threshold: int, seed: int) -> dict:
        return {
            "session": session,
            "participants": list(participants),
            "threshold": threshold,
            "added": "statistics",
            "request": {
                "schema": SCHEMA,
                "digest": self.digests[name],
                "features": list(CREDIT.features),
                "split": split(seed),
            },
        }

    def honest_statistics(self, names, threshold: int, seed: int) -> secure.SessionResult:
        """A whole statistics sum by the protocol (what an honest coordinator does)."""
        session = f"statistics/{next(_sessions)}"
        return secure.run_session(
            list(names),
            list(range(len(names))),
            session,
            {"sums": secure.SUMS},
            lambda i: (
                "statistics",
                messages.parse("Statistics", self.statistics(names[i], session, names, threshold, seed)["request"]),
            ),
            lambda indices, when, operation: {i: operation(i) for i in indices},
            lambda i, request: self.ask(names[i], request.operation, request.plain()),
            threshold,
            "statistics",
        )

    def keys_and_shares(self, names, session: str, threshold: int, seed: int):
        """Phases 1 and 2 at every named node: their advertisements and each one's sealed shares."""
        begun = {n: self.ask(n, "SecureBegin", self.statistics(n, session, names, threshold, seed)) for n in names}
        roster = {n: answer["keys"] for n, answer in begun.items()}
        shares = {n: self.ask(n, "SecureShare", {"session": session, "roster": roster})["shares"] for n in names}
        return roster, shares


def _in_process_call(services: dict[str, NodeService]):
    def call(name: str, operation: str, request: dict):
        try:  # through the wire format both ways, as over gRPC
            answer = services[name].answer(operation, wire.decode(wire.encode(request)))
        except (NodeRefusal, wire.WireError) as error:
            raise Refused(str(error)) from None
        return wire.decode(answer if isinstance(answer, bytes) else wire.encode(answer))

    return call


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    for name in (*BANKS, COORDINATOR):
        issue(directory, name, ("localhost", "127.0.0.1"))
    return directory


def _config(pki: Path, name: str, extract: Path, work_dir: Path, **consortium) -> dict:
    return {
        "institution": name,
        "listen": f"127.0.0.1:{free_port()}",
        "schema": "credit_default",
        "extract": {"path": str(extract)},
        "work_dir": str(work_dir),
        "coordinator": COORDINATOR,
        "tls": {"ca": str(pki / "ca.crt"), "cert": str(pki / f"{name}.crt"), "key": str(pki / f"{name}.key")},
        "consortium": {"members": list(BANKS), **consortium},
    }


@pytest.fixture(scope="module")
def digests(pki, small_consortium, tmp_path_factory) -> dict[str, str]:
    """Each bank's extract validated once (the digest every later request is pinned to)."""
    work = tmp_path_factory.mktemp("validation")
    found = {}
    for name in BANKS:
        service = NodeService(
            NodeConfig.model_validate(_config(pki, name, small_consortium[name], work / name)), TEST_EXPECTATIONS_DIR
        )
        report = service.answer("Validate", {"schema": SCHEMA})["report"]
        assert report["passed"], report["reasons"]
        found[name] = report["digest"]
    return found


def _identity(pki: Path) -> Identity:
    return Identity(
        COORDINATOR,
        (pki / f"{COORDINATOR}.crt").read_bytes(),
        (pki / f"{COORDINATOR}.key").read_bytes(),
        (pki / "ca.crt").read_bytes(),
    )


@pytest.fixture
def coordinator(pki, digests, small_consortium, tmp_path):
    """Four unmodified nodes in this process, each with a fresh work directory, and the coordinator's script."""

    def build(**consortium) -> Coordinator:
        services = {
            name: NodeService(
                NodeConfig.model_validate(
                    _config(pki, name, small_consortium[name], tmp_path / f"{name}-{len(consortium)}", **consortium)
                ),
                TEST_EXPECTATIONS_DIR,
            )
            for name in BANKS
        }
        return Coordinator(_in_process_call(services), digests, _identity(pki))

    return build


# --- the attacks: each returns nothing and asserts that every try was refused by the rule it breaks ----------


def same_input_in_several_sums(c: Coordinator, seed: int) -> None:
    """1. A sum over {alder, birch, cedar}, then one over {alder, birch, dune}: their difference would be
    cedar's statistics minus dune's, and with the 3-subsets of four banks every bank's exactly."""
    first = c.honest_statistics([ALDER, BIRCH, CEDAR], 3, seed)
    assert first.sent == [ALDER, BIRCH, CEDAR]
    second = f"statistics/{next(_sessions)}"
    for name in (ALDER, BIRCH):
        message = c.refusal(name, "SecureBegin", c.statistics(name, second, [ALDER, BIRCH, DUNE], 3, seed))
        assert f"institution '{name}' already added the statistics of its extract" in message
        assert (
            f"a second sum over the same input would let the coordinator subtract the sums and read it (rule: "
            f"{RULE_ONE_SUM})" in message
        )
    # A retry of a session must ask the same: dune's input is new, but the session it began cannot change its
    # participants.
    c.ask(DUNE, "SecureBegin", c.statistics(DUNE, second, [ALDER, BIRCH, DUNE], 3, seed))
    message = c.refusal(DUNE, "SecureBegin", c.statistics(DUNE, second, [BIRCH, CEDAR, DUNE], 3, seed))
    assert (
        f"secure sum {second} began with other participants, threshold or operation; a retry continues the "
        f"same session (rule: {RULE_ONE_SUM})" in message
    )


def coordinator_in_the_roster(c: Coordinator, seed: int) -> None:
    """3. The coordinator named a participant, or its own keys (under its consortium certificate) put in the
    roster at sharing, or relayed under a member's name."""
    session = f"statistics/{next(_sessions)}"
    for name in (ALDER, BIRCH):
        message = c.refusal(name, "SecureBegin", c.statistics(name, session, [ALDER, BIRCH, COORDINATOR], 2, seed))
        assert f"['{COORDINATOR}'] is not a member of the consortium" in message
        assert f"(rule: {RULE_MEMBERS})" in message
    session = f"statistics/{next(_sessions)}"
    begun = {
        n: c.ask(n, "SecureBegin", c.statistics(n, session, [ALDER, BIRCH, CEDAR], 3, seed))
        for n in (ALDER, BIRCH, CEDAR)
    }
    victim = Advertisement.from_dict(begun[ALDER]["keys"])
    own = replace(victim, institution=COORDINATOR, certificate=c.identity.certificate, signature=b"")
    own = replace(own, signature=c.identity.sign(own.payload()))
    roster = {ALDER: begun[ALDER]["keys"], BIRCH: begun[BIRCH]["keys"], COORDINATOR: own.as_dict()}
    message = c.refusal(ALDER, "SecureShare", {"session": session, "roster": roster})
    assert (
        f"relayed keys of ['{ALDER}', '{BIRCH}', '{COORDINATOR}'], but the session began with the participants "
        f"['{ALDER}', '{BIRCH}', '{CEDAR}'] (rule: {RULE_ROSTER})" in message
    )
    posing = replace(own, institution=CEDAR)
    posing = replace(posing, signature=c.identity.sign(posing.payload()))
    message = c.refusal(
        ALDER,
        "SecureShare",
        {
            "session": session,
            "roster": {ALDER: begun[ALDER]["keys"], BIRCH: begun[BIRCH]["keys"], CEDAR: posing.as_dict()},
        },
    )
    assert f"signed by the certificate of ['{COORDINATOR}']" in message and f"(rule: {RULE_CERTIFICATE})" in message


def threshold_of_its_choosing(c: Coordinator, seed: int) -> None:
    """4. t = 2 for four banks (so that two nodes told 'everyone sent' and two told 'the victim dropped' each
    give one kind of share), or a threshold above the participants."""
    session = f"statistics/{next(_sessions)}"
    for name in BANKS:
        message = c.refusal(name, "SecureBegin", c.statistics(name, session, BANKS, 2, seed))
        assert "threshold 2 for 4 participants is asked for; the threshold must be at least 3 (of 4 members)" in message
        assert f"(rule: {RULE_THRESHOLD})" in message
    message = c.refusal(ALDER, "SecureBegin", c.statistics(ALDER, session, [ALDER, BIRCH, CEDAR], 4, seed))
    assert f"(rule: {RULE_THRESHOLD})" in message


def inconsistent_views(c: Coordinator, seed: int) -> None:
    """5. Four banks at the default majority threshold (3), no institution colluding: alder gets only birch's and
    cedar's shares (t - 1 peers), so it masks towards them alone; dune is told birch and cedar dropped, so that it
    would hand over their mask keys while alder's self-mask seed comes from the others. Every step that would
    release a share is refused."""
    session = f"statistics/{next(_sessions)}"
    _, shares = c.keys_and_shares(BANKS, session, 3, seed)
    inbox = {name: {sender: boxes[name] for sender, boxes in shares.items() if name in boxes} for name in BANKS}
    inbox[ALDER] = {BIRCH: inbox[ALDER][BIRCH], CEDAR: inbox[ALDER][CEDAR]}
    for name in BANKS:
        c.ask(name, "SecureMask", {"session": session, "inbox": inbox[name]})
    told = [ALDER, DUNE]  # birch and cedar "dropped"
    message = c.refusal(DUNE, "SecureConsistency", {"session": session, "sent": told})
    assert (
        f"only 2 institution(s) sent masked inputs; a released sum holds at least 3 (threshold 3) (rule: "
        f"{RULE_MIN_INPUTS})" in message
    )
    message = c.refusal(ALDER, "SecureConsistency", {"session": session, "sent": [ALDER, BIRCH, DUNE]})
    assert (
        f"the senders named include ['{DUNE}'], whose keys '{ALDER}' never received: the coordinator shows the "
        f"institutions different views (rule: {RULE_CONSISTENCY})" in message
    )
    # Without signatures from the threshold's senders on one list, nobody unmasks; forged ones do not count.
    signed = {DUNE: c.ask(DUNE, "SecureConsistency", {"session": session, "sent": [BIRCH, CEDAR, DUNE]})["signature"]}
    forged = {name: c.identity.sign(b"anything").hex() for name in (ALDER, BIRCH, CEDAR)}
    message = c.refusal(
        DUNE, "SecureUnmask", {"session": session, "sent": [BIRCH, CEDAR, DUNE], "signatures": {**forged, **signed}}
    )
    assert "only 1 valid signature(s)" in message and f"(rule: {RULE_CONSISTENCY})" in message
    for name in (BIRCH, CEDAR):
        message = c.refusal(name, "SecureUnmask", {"session": session, "sent": told, "signatures": signed})
        assert f"it unmasks only the list it signed (rule: {RULE_CONSISTENCY})" in message


def sum_of_two_inputs(c: Coordinator, seed: int) -> None:
    """Three banks begin; cedar drops before sharing (alder and birch would mask towards each other alone), or after
    sharing (a list of two senders): neither masks nor signs a sum of two."""
    session = f"statistics/{next(_sessions)}"
    names = [ALDER, BIRCH, CEDAR]
    _, shares = c.keys_and_shares(names, session, 3, seed)
    message = c.refusal(ALDER, "SecureMask", {"session": session, "inbox": {BIRCH: shares[BIRCH][ALDER]}})
    assert (
        f"only 2 institution(s) shared their keys with '{ALDER}'; it masks its input only in a sum of at least 3"
        in message
        and f"(rule: {RULE_MIN_INPUTS})" in message
    )
    session = f"statistics/{next(_sessions)}"
    _, shares = c.keys_and_shares(names, session, 3, seed + 1000)
    for name in (ALDER, BIRCH):  # cedar's shares arrived, then cedar dropped
        c.ask(name, "SecureMask", {"session": session, "inbox": {s: b[name] for s, b in shares.items() if name in b}})
    for name in (ALDER, BIRCH):
        message = c.refusal(name, "SecureConsistency", {"session": session, "sent": [ALDER, BIRCH]})
        assert "only 2 institution(s) sent masked inputs; a released sum holds at least 3" in message
        message = c.refusal(name, "SecureUnmask", {"session": session, "sent": [ALDER, BIRCH], "signatures": {}})
        assert f"(rule: {RULE_CONSISTENCY})" in message


STATISTICS_ATTACKS = [
    same_input_in_several_sums,
    coordinator_in_the_roster,
    threshold_of_its_choosing,
    inconsistent_views,
    sum_of_two_inputs,
]


@pytest.mark.parametrize("attack", STATISTICS_ATTACKS, ids=lambda a: a.__name__)
def test_a_deviating_coordinator_is_refused_by_nodes_in_process(coordinator, attack):
    attack(coordinator(), seed=1)


# --- round updates: the run's encoding, and one sum per round's update ----------------------------------------


def _prepare(c: Coordinator, names, run_key: str, encodings: dict[str, dict | None]) -> dict:
    """Plain statistics (these nodes allow them), the layout, and a secure run prepared at each node with the
    encoding the coordinator chose for it (None: none sent); returns the first round's request (without the
    seed)."""
    from fed_models.training import TrainingSpec, build_stages, spec_as_dict, weights_as_lists
    from institution.statistics import LocalStatistics, consortium_layout, standardization

    features = list(CREDIT.features)
    stats = [
        LocalStatistics(
            **c.ask(
                n, "Statistics", {"schema": SCHEMA, "digest": c.digests[n], "features": features, "split": split(7)}
            )
        )
        for n in names
    ]
    layout = consortium_layout(CREDIT, features, stats)
    mean, std = standardization(layout, stats)
    spec = TrainingSpec(rounds=2, batch_size=64, seed=1)
    for name in names:
        request = {
            "schema": SCHEMA,
            "digest": c.digests[name],
            "run_key": run_key,
            "spec": spec_as_dict(spec),
            "mean": mean,
            "std": std,
            "layout": layout.to_json(),
            "split": split(7),
            "secure_aggregation": True,
        }
        if encodings[name] is None:
            raise Refused(c.refusal(name, "Prepare", request))
        c.ask(name, "Prepare", {**request, "secure_encoding": encodings[name]})
    from fed_models import runtime

    runtime.ensure_context()  # fedrisk's own TFF worker, stopped by its pid at the session's end (conftest)
    weights = weights_as_lists(build_stages(spec, np.asarray(mean), np.asarray(std), n_clients=1).initial_weights)
    return {"run_key": run_key, "round": 1, "weights": weights}


def _round(name: str, session: str, participants, threshold: int, request: dict, seed: int) -> dict:
    return {
        "session": session,
        "participants": list(participants),
        "threshold": threshold,
        "added": "train_round",
        "request": {**request, "client_seed": seed},
    }


def rounds_attacks(c: Coordinator) -> None:
    """1 and 2 on round updates: a round's update added to a second sum is refused; a run prepared with a different
    encoding at one node (so the victim's 'sum' would be its own unclipped update) is refused at sharing by every
    node, and an encoding whose weight bound the node's round exceeds is refused at the node."""
    names = [ALDER, BIRCH, CEDAR, DUNE]
    common = secure.Encoding(10.0, 4, 1e6).as_dict()
    request = _prepare(c, names, "run-common", {n: common for n in names})
    encoding = secure.Encoding.from_dict(common)
    session = f"round/{next(_sessions)}"
    trio = [ALDER, BIRCH, CEDAR]
    result = secure.run_session(
        trio,
        [0, 1, 2],
        session,
        encoding.specs(),
        lambda i: ("train_round", messages.parse("TrainRound", {**request, "client_seed": i})),
        lambda indices, when, operation: {i: operation(i) for i in indices},
        lambda i, body: c.ask(trio[i], body.operation, body.plain()),
        3,
        "round 1",
    )
    summed = secure.decode_round(result.sums, result.meta[ALDER], 3, encoding)
    assert summed.institutions == 3 and 0 < summed.weight <= 3
    again = f"round/{next(_sessions)}"
    for name in (ALDER, BIRCH):
        message = c.refusal(
            name, "SecureBegin", _round(name, again, [ALDER, BIRCH, DUNE], 3, request, trio.index(name))
        )
        assert f"already added its update of round 1 of run run-common to secure sum {session}" in message
        assert f"(rule: {RULE_ONE_SUM})" in message

    singled = secure.Encoding(100.0, 3, 1.0e6).as_dict()
    others = secure.Encoding(1e6, 3, 1e9).as_dict()
    request = _prepare(c, trio, "run-singled", {ALDER: singled, BIRCH: others, CEDAR: others})
    session = f"round/{next(_sessions)}"
    roster = {n: c.ask(n, "SecureBegin", _round(n, session, trio, 3, request, i))["keys"] for i, n in enumerate(trio)}
    for name in trio:
        message = c.refusal(name, "SecureShare", {"session": session, "roster": roster})
        assert (
            "was given other session parameters (participants, threshold, encoding or weights) than this "
            f"institution: the coordinator told the institutions different things (rule: {RULE_SAME_PARAMETERS})"
            in message
        )

    # A sum's encoding is the run's, fixed at Prepare: a per-sum clip norm or weight is no field of the protocol.
    lax = {**_round(ALDER, f"round/{next(_sessions)}", trio, 3, request, 0), "clip_norm": 1e30}
    assert "SecureBegin: field 'clip_norm': Unexpected keyword argument" in c.refusal(ALDER, "SecureBegin", lax)

    request = _prepare(c, trio, "run-bound", {n: secure.Encoding(10.0, 3, 5.0).as_dict() for n in trio})
    message = c.refusal(ALDER, "SecureBegin", _round(ALDER, f"round/{next(_sessions)}", trio, 3, request, 0))
    assert "more than the run's weight bound 5" in message and f"(rule: {RULE_ENCODING})" in message
    with pytest.raises(
        Refused,
        match=rf"a run under secure aggregation must fix its encoding at Prepare \(rule: "
        rf"{RULE_ENCODING}\)",
    ):
        _prepare(c, [ALDER], "run-none", {ALDER: None})


def test_round_updates_enter_one_sum_each_encoded_as_the_run_fixed_it(coordinator):
    rounds_attacks(coordinator())


# --- a buffered run's held updates: each in one sum, at no more than its own weight -----------------------------


def _buffered(name: str, session: str, participants, buffer: dict, step: int = 1) -> dict:
    return {
        "session": session,
        "participants": list(participants),
        "threshold": 3,
        "added": "buffered_round",
        "request": {"run_key": "run-buffered", "step": step, "buffer": buffer},
    }


def buffered_attacks(c: Coordinator) -> None:
    """A held update (TrainRound with hold) never answers in the clear; it enters one buffered sum at its own
    weight times a discount of at most 1, named by the weights it trained from; a second sum over it is refused
    under either name (buffered_round or train_round), so two sums cannot be subtracted."""
    from node.runs import round_weights_digest

    names = [ALDER, BIRCH, CEDAR, DUNE]
    encoding = secure.Encoding(10.0, 4, 1e6)
    request = _prepare(c, names, "run-buffered", {n: encoding.as_dict() for n in names})
    held = {}
    for i, name in enumerate(names):
        held[name] = c.ask(name, "TrainRound", {**request, "client_seed": i, "hold": True})
        assert set(held[name]) == {"rounds_trained", "epsilon", "delta"}  # no update, no metric
    assert "sends its model updates only through secure aggregation" in c.refusal(
        ALDER, "TrainRound", {**request, "client_seed": 0}
    )
    digest = round_weights_digest(request["weights"])
    trio = [ALDER, BIRCH, CEDAR]
    fair = {ALDER: [1, digest, 1.0], BIRCH: [1, digest, 1.0], CEDAR: [1, digest, 0.5]}
    for attempt, refusal in (
        ({**fair, CEDAR: [1, digest, 1.5]}, "a staleness discount is in (0, 1], not 1.5"),
        ({**fair, CEDAR: [1, "0" * 64, 1.0]}, "holds no update of round 1 of run run-buffered trained from weights"),
        ({**fair, CEDAR: [2, digest, 1.0]}, "holds no update of round 2 of run run-buffered"),
        ({ALDER: fair[ALDER], BIRCH: fair[BIRCH]}, "'cedar_savings' is not in the buffer of step 1"),
    ):
        assert refusal in c.refusal(CEDAR, "SecureBegin", _buffered(CEDAR, f"buffer/{next(_sessions)}", trio, attempt))
    session = f"buffer/{next(_sessions)}"
    result = secure.run_session(
        trio,
        [0, 1, 2],
        session,
        encoding.specs(),
        lambda i: (
            "buffered_round",
            messages.BufferedRound(**_buffered(trio[i], session, trio, fair)["request"]),
        ),
        lambda indices, when, operation: {i: operation(i) for i in indices},
        lambda i, body: c.ask(trio[i], body.operation, body.plain()),
        3,
        "step 1",
    )
    summed = secure.decode_round(result.sums, result.meta[ALDER], 3, encoding)
    assert summed.institutions == 3 and 0 < summed.weight < 3
    again = f"buffer/{next(_sessions)}"
    others = [ALDER, BIRCH, DUNE]
    dune = {ALDER: fair[ALDER], BIRCH: fair[BIRCH], DUNE: [1, digest, 1.0]}
    for name in (ALDER, BIRCH):
        message = c.refusal(name, "SecureBegin", _buffered(name, again, others, dune))
        assert f"already added its update of round 1 of run run-buffered to secure sum {session}" in message
        assert f"(rule: {RULE_ONE_SUM})" in message
        as_round = _round(name, f"round/{next(_sessions)}", others, 3, request, names.index(name))
        assert f"to secure sum {session}" in c.refusal(name, "SecureBegin", as_round)


def test_a_buffered_runs_held_updates_enter_one_sum_each_at_their_own_weight_or_less(coordinator):
    buffered_attacks(coordinator())


# --- the same script against node processes over mutual TLS ---------------------------------------------------


@pytest.mark.slow
def test_a_deviating_coordinator_is_refused_by_node_processes(pki, digests, small_consortium, tmp_path):
    """Four `fedrisk node serve` processes, each in its own directory with its own extract; the scripted coordinator
    dials them with its valid certificate. Every attack above is refused there as in process."""
    from consortium.nodes import NodeError, NodeHandle, Tls, send

    configs = {}
    for name in BANKS:
        (tmp_path / name).mkdir()
        shutil.copy(small_consortium[name], tmp_path / name / "credit.csv")
        configs[name] = _config(pki, name, tmp_path / name / "credit.csv", tmp_path / name / "state")
    with ExitStack() as stack:  # each node stopped by its process group's id, however the test ends
        handles = {name: NodeHandle(name, address) for name, address in serve_nodes(stack, configs, tmp_path).items()}
        tls = Tls(str(pki / "ca.crt"), str(pki / f"{COORDINATOR}.crt"), str(pki / f"{COORDINATOR}.key"))

        def over_tls(name: str, operation: str, request: dict):
            try:
                return send(handles[name], tls, operation, request)
            except NodeError as error:
                raise Refused(str(error)) from None

        c = Coordinator(over_tls, digests, _identity(pki))
        for seed, attack in enumerate(STATISTICS_ATTACKS, start=10):  # each its own inputs (its own split)
            attack(c, seed=seed)
        rounds_attacks(c)
