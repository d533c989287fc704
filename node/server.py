"""The node's gRPC server: mutual TLS with the consortium CA, and only the configured coordinator answered.

A client without a certificate signed by the consortium's CA does not complete the TLS handshake; a
client with one whose name is not the node's configured coordinator is refused each call. Messages are
bounded in size; every operation's failure goes back as a status with a sentence, never a traceback
(the node's own log keeps the traceback).
"""

from __future__ import annotations

import logging
import traceback
from concurrent.futures import ThreadPoolExecutor

import grpc

from contract.data import InstitutionDataError
from node import wire
from node.audit import AuditTrail
from node.config import NodeConfig
from node.messages import OPERATIONS
from node.policy import NodeRefusal, UnknownRun
from node.service import NodeService

SERVICE = "fedrisk.Node"
log = logging.getLogger("fedrisk.node")


def message_options(max_mb: int) -> list[tuple[str, int]]:
    size = max_mb * 1024 * 1024
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def _epsilon(operation: str, answer) -> float | None:
    """The privacy a served request charged (its run's epsilon at this node), from its answer."""
    if operation == "TrainRound":  # its update in the clear (bytes), or held for a secure sum (its public part)
        return (answer if isinstance(answer, dict) else wire.decode(answer)).get("epsilon")
    if operation == "SecureBegin" and isinstance(answer, dict):
        return answer.get("meta", {}).get("epsilon")
    return None


def _handler(service: NodeService, name: str, coordinator: str, audit: AuditTrail):
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        peer = (context.auth_context().get("x509_common_name") or [b""])[0].decode()
        if peer != coordinator:
            reason = (
                f"institution '{service.name}' answers only the coordinator '{coordinator}', not "
                f"'{peer or 'an unnamed client'}'"
            )
            audit.record(peer, name, None, "refused", reason=reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        try:
            plain = wire.decode(request)
        except wire.WireError as error:
            audit.record(peer, name, None, "refused", reason=str(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"institution '{service.name}': {error}")
        try:
            result = service.answer(name, plain)
        except wire.WireError as error:  # a field missing, mistyped or unknown (node.messages)
            audit.record(peer, name, plain, "refused", reason=str(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"institution '{service.name}': {error}")
        except (NodeRefusal, InstitutionDataError) as error:
            audit.record(peer, name, plain, "refused", reason=str(error))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except UnknownRun as error:
            audit.record(peer, name, plain, "refused", reason=str(error))
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except Exception as error:  # the node's log has the traceback; the coordinator gets a sentence
            log.error("%s failed:\n%s", name, traceback.format_exc())
            audit.record(peer, name, plain, "failed", reason=f"{type(error).__name__}: {error}")
            context.abort(
                grpc.StatusCode.INTERNAL,  # the error's text may quote the extract: it stays here
                f"institution '{service.name}': {name} failed ({type(error).__name__}; the node's log "
                f"and audit trail say more)",
            )
        answer = result if isinstance(result, bytes) else wire.encode(result)
        audit.record(peer, name, plain, "served", len(answer), _epsilon(name, result))
        return answer

    return handle


def start_server(config: NodeConfig, service: NodeService) -> tuple[grpc.Server, int]:
    """Start the node's server on `config.listen`; return it and the port it listens on."""
    ca, cert, key = config.tls.read()
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    server = grpc.server(ThreadPoolExecutor(max_workers=8), options=message_options(config.max_message_mb))
    audit = AuditTrail(config.work_dir)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(_handler(service, name, config.coordinator, audit))
        for name in OPERATIONS
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    server.start()
    return server, port


def serve_until_stopped(config: NodeConfig, expectations_dir, isolation, listening) -> None:
    """`fedrisk node serve`: load TensorFlow/TFF once if the policy trains networks (they stay loaded between
    rounds), start the server, call `listening(port)`, and serve until SIGTERM or SIGINT; then stop, letting calls
    in flight finish."""
    import signal
    import threading

    if config.policy.trains_networks:
        from fed_models import runtime

        runtime.ensure_context(isolation)
    server, port = start_server(config, NodeService(config, expectations_dir, isolation))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    listening(port)
    stop.wait()
    server.stop(grace=5).wait()
