"""The parties of tests/unit/test_gate.py's network-namespace case, each run inside its own namespace:
`python -m tests.netns_trees coordinator|worker|rogue ...`.

coordinator PKI BIND ADMITTED_ADDRESS: XGBoost's federated server for one worker on loopback, behind the gate on
  BIND admitting alder_bank from ADMITTED_ADDRESS; prints the gate's port, waits for a line on stdin, then prints
  the gate's refusals as JSON.
worker PKI SERVER: alder_bank's real XGBoost worker, a few boosting rounds of synthetic rows against SERVER.
rogue PKI NAME SERVER: a TLS client with NAME's valid certificate; prints what the connection gave back.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import tempfile
from pathlib import Path


def coordinator(pki: Path, bind: str, admitted: str) -> None:
    from fed_trees.gate import Gate
    from fed_trees.training import start_server
    from hostguard import loopback
    from hostguard.processes import stop

    with tempfile.TemporaryDirectory() as work:
        server, upstream = start_server(1, None, Path(work), loopback.isolation(False, "XGBoost federated server"))
        gate = Gate(
            bind, upstream, {"alder_bank": {admitted}}, pki / "ca.crt", pki / "coordinator.crt", pki / "coordinator.key"
        )
        try:
            print(gate.port, flush=True)
            sys.stdin.readline()
        finally:
            gate.close()
            stop(server)
        print(json.dumps(gate.refused), flush=True)


def worker(pki: Path, server: str) -> None:
    import numpy as np

    from fed_trees.spec import TreeSpec
    from fed_trees.training import TreeData, run_worker

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(float)
    data = TreeData("alder_bank", x[:300], y[:300], x[300:], y[300:])
    with tempfile.TemporaryDirectory() as work:
        result = run_worker(
            data,
            TreeSpec(rounds=3, max_depth=2, early_stopping_rounds=None),
            Path(work),
            rank=0,
            world_size=1,
            server=server,
            ca=pki / "ca.crt",
            cert=pki / "alder_bank.crt",
            key=pki / "alder_bank.key",
            timeout=120,
        )
        print(json.dumps({"rounds": len(result.rounds)}), flush=True)


def rogue(pki: Path, name: str, server: str) -> None:
    host, port = server.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=host) as secured:
            secured.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # HTTP/2's preface, as gRPC opens
            try:
                answer = secured.recv(1024)
            except (OSError, ssl.SSLError) as error:
                answer = f"closed ({type(error).__name__})".encode()
    print(json.dumps({"answer": answer.decode(errors="replace")}), flush=True)


if __name__ == "__main__":
    role, pki, *rest = sys.argv[1:]
    {"coordinator": coordinator, "worker": worker, "rogue": rogue}[role](Path(pki), *rest)
