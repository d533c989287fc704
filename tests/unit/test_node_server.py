"""node.server: mutual TLS with the consortium CA; a node answers only its coordinator, and the coordinator
talks only to the institution it expects. Real TLS handshakes on loopback."""

from pathlib import Path

import grpc
import pytest

from consortium.nodes import NodeError, NodeHandle, Tls, send
from hostguard.pki import init_ca, issue
from node import wire
from node.config import NodeConfig, TlsFiles
from node.server import SERVICE, start_server
from node.service import NodeService


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    for name in ("coordinator", "bank_a", "bank_b"):
        issue(directory, name, ("localhost", "127.0.0.1"))
    other = directory / "other"
    init_ca(other)
    issue(other, "coordinator", ("127.0.0.1",))
    return directory


def _node(pki: Path, tmp_path: Path, name: str = "bank_a", cert: str | None = None):
    config = NodeConfig.model_validate(
        {
            "institution": name,
            "listen": "127.0.0.1:0",
            "schema": "credit_default",
            "extract": {"path": str(tmp_path / "extract.csv")},
            "work_dir": str(tmp_path / "state"),
            "tls": TlsFiles(ca=pki / "ca.crt", cert=pki / f"{cert or name}.crt", key=pki / f"{cert or name}.key"),
        }
    )
    server, port = start_server(config, NodeService(config))
    return server, NodeHandle(name, f"127.0.0.1:{port}")


def _tls(pki: Path, name: str) -> Tls:
    return Tls(str(pki / "ca.crt"), str(pki / f"{name}.crt"), str(pki / f"{name}.key"))


def test_the_coordinator_is_answered(pki, tmp_path):
    server, handle = _node(pki, tmp_path)
    try:
        answer = send(handle, _tls(pki, "coordinator"), "Describe", {})
    finally:
        server.stop(None)
    assert answer["institution"] == "bank_a" and answer["schema"] == {"name": "credit_default", "version": 2}


def test_a_request_missing_or_mistyping_a_field_is_refused_naming_it_and_audited(pki, tmp_path):
    """The node types every request before serving it (node.messages): the coordinator is told which field, the
    value it sent is not echoed, and the audit trail records the refusal."""
    from node.audit import AuditTrail

    server, handle = _node(pki, tmp_path)
    try:
        with pytest.raises(NodeError) as refused:
            send(handle, _tls(pki, "coordinator"), "TrainRound", {"run_key": "r", "round": "first", "weights": {}})
    finally:
        server.stop(None)
    reason = (
        "TrainRound: field 'round': Input should be a valid integer, unable to parse string as an integer; "
        "field 'client_seed': Field required"
    )
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(refused.value) == f"institution 'bank_a' node at {handle.address}: institution 'bank_a': {reason}"
    assert "first" not in str(refused.value)
    [entry] = AuditTrail(tmp_path / "state").read()
    assert (entry.operation, entry.outcome, entry.reason) == ("TrainRound", "refused", reason)


def test_a_client_without_a_consortium_certificate_does_not_get_through_the_handshake(pki, tmp_path):
    server, handle = _node(pki, tmp_path)
    try:
        for credentials in (
            grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes()),  # no client certificate
            grpc.ssl_channel_credentials(
                (pki / "ca.crt").read_bytes(),  # another CA's coordinator
                (pki / "other" / "coordinator.key").read_bytes(),
                (pki / "other" / "coordinator.crt").read_bytes(),
            ),
        ):
            channel = grpc.secure_channel(
                handle.address, credentials, options=[("grpc.ssl_target_name_override", "bank_a")]
            )
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(f"/{SERVICE}/Describe")(wire.encode({}), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
    finally:
        server.stop(None)


def test_another_institution_is_not_the_coordinator(pki, tmp_path):
    server, handle = _node(pki, tmp_path)
    try:
        with pytest.raises(NodeError) as refused:
            send(handle, _tls(pki, "bank_b"), "Describe", {})
    finally:
        server.stop(None)
    assert str(refused.value) == (
        f"institution 'bank_a' node at {handle.address}: institution 'bank_a' answers only "
        f"the coordinator 'coordinator', not 'bank_b'"
    )
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_the_coordinator_refuses_a_node_presenting_another_institutions_certificate(pki, tmp_path):
    server, handle = _node(pki, tmp_path, cert="bank_b")  # configured as bank_a, but holds bank_b's certificate
    try:
        with pytest.raises(NodeError) as refused:
            send(handle, _tls(pki, "coordinator"), "Describe", {})
    finally:
        server.stop(None)
    assert str(refused.value).startswith(f"institution 'bank_a': unreachable at {handle.address}: ")
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_an_unreachable_node_is_named_with_its_address(pki):
    from tests.conftest import free_port

    handle = NodeHandle("bank_c", f"127.0.0.1:{free_port()}")
    with pytest.raises(NodeError, match=rf"^institution 'bank_c': unreachable at {handle.address}: "):
        send(handle, _tls(pki, "coordinator"), "Describe", {})
