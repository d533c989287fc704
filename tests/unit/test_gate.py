"""fed_trees.gate: XGBoost's federated server across silos admits only the run's institutions, each from its own
node's address, over mutual TLS with the consortium's CA; everything else is refused before a byte reaches it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from fed_trees.gate import Gate
from hostguard.pki import init_ca, issue


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    issue(directory, "coordinator", ("localhost", "127.0.0.1", "10.77.1.1"))
    for name in ("alder_bank", "birch_credit_union", "dune_finance"):
        issue(directory, name, ("127.0.0.1",))
    return directory


class Echo:
    """A loopback TCP server that sends back what it receives, counting its connections (the gate's upstream)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port, self.connections = self.listener.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection):
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)


def _ask(pki: Path, name: str, port: int, source: str = "127.0.0.1") -> bytes:
    """Connect from `source` with `name`'s certificate, send a line, return what comes back (b"": closed)."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as secured:
            secured.sendall(b"ping\n")
            try:
                return secured.recv(1024)
            except (ConnectionResetError, ssl.SSLError):
                return b""


def test_the_gate_relays_an_admitted_institution_and_refuses_other_names_and_addresses(pki):
    upstream = Echo()
    gate = Gate(
        "127.0.0.1",
        upstream.port,
        {"alder_bank": {"127.0.0.1"}, "birch_credit_union": {"127.0.0.2"}},
        pki / "ca.crt",
        pki / "coordinator.crt",
        pki / "coordinator.key",
    )
    try:
        assert _ask(pki, "alder_bank", gate.port) == b"ping\n"
        assert _ask(pki, "dune_finance", gate.port) == b""  # a member of the consortium, not of this training
        assert _ask(pki, "birch_credit_union", gate.port) == b""  # admitted, but not from its node's address
        assert _ask(pki, "birch_credit_union", gate.port, source="127.0.0.2") == b"ping\n"
    finally:
        gate.close()
    assert upstream.connections == 2
    assert gate.refused == [
        "refused dune_finance from 127.0.0.1: not an institution admitted to this training",
        "refused birch_credit_union from 127.0.0.1: not the address of birch_credit_union's node (127.0.0.2)",
    ]


def _netns(name: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", name, *command]


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (CI runs as root)",
)
def test_a_banks_certificate_from_an_address_that_is_not_its_node_cannot_join_the_trees(pki):
    """Three network namespaces made here: the coordinator (10.77.1.1, toward alder_bank's node at 10.77.1.2, and
    10.77.2.1 toward another host at 10.77.2.2). alder_bank's real XGBoost worker trains through the gate; alder's
    own valid certificate, and birch's, presented from 10.77.2.2 are refused."""
    tag = uuid.uuid4().hex[:6]
    coordinator, alder, elsewhere = (f"fr-{role}-{tag}" for role in ("coord", "alder", "else"))
    setup = [["ip", "netns", "add", ns] for ns in (coordinator, alder, elsewhere)]
    for ns, peer, ours, theirs in (
        (alder, f"fa{tag}", "10.77.1.1", "10.77.1.2"),
        (elsewhere, f"fe{tag}", "10.77.2.1", "10.77.2.2"),
    ):
        setup += [
            ["ip", "link", "add", f"c{peer}", "netns", coordinator, "type", "veth", "peer", "name", peer, "netns", ns],
            _netns(coordinator, "ip", "addr", "add", f"{ours}/24", "dev", f"c{peer}"),
            _netns(coordinator, "ip", "link", "set", f"c{peer}", "up"),
            _netns(ns, "ip", "addr", "add", f"{theirs}/24", "dev", peer),
            _netns(ns, "ip", "link", "set", peer, "up"),
            _netns(ns, "ip", "link", "set", "lo", "up"),
            _netns(ns, "ip", "route", "add", "default", "via", ours),
        ]
    setup.append(_netns(coordinator, "ip", "link", "set", "lo", "up"))
    python = [sys.executable, "-m", "tests.netns_trees"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = None
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True, timeout=30)
        server = subprocess.Popen(
            _netns(coordinator, *python, "coordinator", str(pki), "10.77.1.1", "10.77.1.2"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        port = int(server.stdout.readline())
        address = f"10.77.1.1:{port}"
        rogues = [
            json.loads(
                subprocess.run(
                    _netns(elsewhere, *python, "rogue", str(pki), name, address),
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
            )
            for name in ("alder_bank", "birch_credit_union")
        ]
        trained = subprocess.run(
            _netns(alder, *python, "worker", str(pki), address), env=env, capture_output=True, text=True, timeout=300
        )
        assert trained.returncode == 0, trained.stderr[-2000:]
        assert json.loads(trained.stdout.splitlines()[-1]) == {"rounds": 3}
        server.stdin.write("done\n")
        server.stdin.flush()
        refused = json.loads(server.stdout.readline())
        assert server.wait(timeout=60) == 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, 9)
            server.wait()
        for ns in (coordinator, alder, elsewhere):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    assert [r["answer"] for r in rogues] == ["", ""]  # the handshake holds, then the gate closes: nothing relayed
    assert refused == [
        "refused alder_bank from 10.77.2.2: not the address of alder_bank's node (10.77.1.2)",
        "refused birch_credit_union from 10.77.2.2: not an institution admitted to this training",
    ]
