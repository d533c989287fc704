"""The admission gate in front of XGBoost's federated server across silos.

XGBoost's server binds every interface and accepts any certificate its CA signed, so a bank's valid
certificate from any address could join a training. Across silos fedrisk therefore starts the server on
loopback (hostguard's loopback-bind, its sockets checked) and puts this gate on the configured address: it
completes mutual TLS with the consortium's CA, admits a connection only when the client's certificate names
one of the run's institutions and the connection comes from that institution's node address, and then relays
bytes to the server. It lives only while the trees grow.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fedrisk.trees")


def node_addresses(address: str) -> set[str]:
    """The IP addresses a node's configured address (host:port) resolves to."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}


@dataclass
class Gate:
    """Listens on `bind` (an IP address of this host; port 0: any free one); forwards admitted connections to the
    server at 127.0.0.1:`upstream`. `admitted`: institution (certificate name) -> the addresses its node may
    connect from."""

    bind: str
    upstream: int
    admitted: dict[str, set[str]]
    ca: Path
    cert: Path
    key: Path
    refused: list[str] = field(default_factory=list)  # why each refused connection was refused
    port: int = 0

    def __post_init__(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        context.set_alpn_protocols(["h2"])  # gRPC speaks HTTP/2
        self.context = context
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.bind, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="trees-gate", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, (address, *_) = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._admit, args=(client, address), daemon=True).start()

    def _refuse(self, client: socket.socket, why: str) -> None:
        self.refused.append(why)
        log.warning("XGBoost federated server: %s", why)
        client.close()

    def _admit(self, client: socket.socket, address: str) -> None:
        client.settimeout(30)
        # Relayed messages are small and answered at once: with Nagle's algorithm each waited for the other end's
        # delayed acknowledgement (tens of ms per exchange, several exchanges per tree level).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            secured = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError) as error:
            return self._refuse(client, f"refused a connection from {address}: TLS handshake failed ({error})")
        subject = dict(pair for rdn in (secured.getpeercert() or {}).get("subject", ()) for pair in rdn)
        name = subject.get("commonName", "")
        if name not in self.admitted:
            return self._refuse(
                secured,
                f"refused {name or 'an unnamed certificate'} from {address}: not an "
                f"institution admitted to this training",
            )
        if address not in self.admitted[name]:
            return self._refuse(
                secured,
                f"refused {name} from {address}: not the address of {name}'s node "
                f"({', '.join(sorted(self.admitted[name]))})",
            )
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            return self._refuse(secured, f"cannot reach the federated server for {name}: {error}")
        secured.settimeout(None)
        server.settimeout(None)
        with self.lock:
            self.connections += [secured, server]
        self._relay(secured, server)

    def _relay(self, secured: ssl.SSLSocket, server: socket.socket) -> None:
        """Bytes both ways, in this one thread (a TLS connection is not used from two threads at once)."""
        try:
            while True:
                ready = [secured] if secured.pending() else select.select([secured, server], [], [])[0]
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (server if source is secured else secured).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for end in (secured, server):
                try:
                    end.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                try:
                    connection.close()
                except OSError:
                    pass
