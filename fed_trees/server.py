"""XGBoost's federated server, as its own process: `python -m fed_trees.server N PORT [KEY CERT CA]`.

It sums the workers' gradient histograms; it binds every interface, has no option to choose the address
and admits any certificate of its CA, so it is always started with hostguard's loopback-bind library (like
TFF's worker) and its sockets are checked. In simulation the workers dial it on loopback over mutual TLS;
across silos it runs without TLS and only fed_trees.gate reaches it (the gate admits the run's nodes). It ends
when the training ends.
"""

from __future__ import annotations

import sys

import xgboost.federated


def main(args: list[str]) -> None:
    n_workers, port = int(args[0]), int(args[1])
    tls = dict(zip(("server_key_path", "server_cert_path", "client_cert_path"), args[2:5], strict=False))
    print(f"federated server for {n_workers} workers on port {port}", flush=True)
    xgboost.federated.run_federated_server(n_workers=n_workers, port=port, blocking=True, timeout=900, **tls)


if __name__ == "__main__":
    main(sys.argv[1:])
