"""node.audit: every request a node served, refused or failed is in its audit trail (work_dir/audit.jsonl) with
the peer's certificate name, and `fedrisk node audit` shows it. Real TLS handshakes on loopback."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from consortium.nodes import NodeError, NodeHandle, Tls, send
from flows.cli import app
from hostguard.pki import init_ca, issue
from node.audit import AuditTrail
from node.config import load_node_config
from node.server import start_server
from node.service import NodeService
from tests.conftest import TEST_EXPECTATIONS_DIR


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    for name in ("coordinator", "dune_finance", "bank_b"):
        issue(directory, name, ("localhost", "127.0.0.1"))
    return directory


def _tls(pki: Path, name: str) -> Tls:
    return Tls(str(pki / "ca.crt"), str(pki / f"{name}.crt"), str(pki / f"{name}.key"))


def test_every_request_served_or_refused_is_in_the_audit_trail_and_shown_by_the_cli(pki, small_consortium, tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "institution": "dune_finance",
                "listen": "127.0.0.1:0",
                "schema": "credit_default",
                "extract": {"path": str(small_consortium["dune_finance"])},
                "work_dir": str(tmp_path / "state"),
                "tls": {
                    "ca": str(pki / "ca.crt"),
                    "cert": str(pki / "dune_finance.crt"),
                    "key": str(pki / "dune_finance.key"),
                },
                "policy": {"max_rounds": 5},
            }
        )
    )
    config = load_node_config(path)
    server, port = start_server(config, NodeService(config, TEST_EXPECTATIONS_DIR))
    handle = NodeHandle("dune_finance", f"127.0.0.1:{port}")
    try:
        send(handle, _tls(pki, "coordinator"), "Describe", {})
        with pytest.raises(NodeError, match="follows schema credit_default version 2"):
            send(handle, _tls(pki, "coordinator"), "Validate", {"schema": {"name": "german_credit", "version": 1}})
        with pytest.raises(NodeError, match="answers only the coordinator 'coordinator', not 'bank_b'"):
            send(handle, _tls(pki, "bank_b"), "Describe", {})
        with pytest.raises(NodeError, match="no secure sum"):
            send(
                handle,
                _tls(pki, "coordinator"),
                "SecureBegin",
                {
                    "session": "s1",
                    "participants": ["dune_finance", "a", "b"],
                    "threshold": 2,
                    "added": "statistics",
                    "request": {},
                },
            )
    finally:
        server.stop(None)

    entries = AuditTrail(config.work_dir).read()
    assert [(e.peer, e.operation, e.outcome) for e in entries] == [
        ("coordinator", "Describe", "served"),
        ("coordinator", "Validate", "refused"),
        ("bank_b", "Describe", "refused"),
        ("coordinator", "SecureBegin", "refused"),
    ]
    assert entries[0].bytes_returned > 0 and entries[0].reason is None
    assert "follows schema credit_default version 2; the coordinator asked for german_credit version 1" in entries[
        1
    ].reason and entries[1].parameters == {"schema": "german_credit v1"}
    assert entries[3].parameters == {
        "session": "s1",
        "adds": "statistics",
        "participants": ["dune_finance", "a", "b"],
        "threshold": 2,
    }

    shown = CliRunner().invoke(app, ["node", "audit", "--config", str(path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "node dune_finance: the last 4 of 4 requests" in shown.output
    for text in ("served", "refused", "bank_b", "SecureBegin", "answers only the coordinator"):
        assert text in shown.output
