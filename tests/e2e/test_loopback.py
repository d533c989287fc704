"""hostguard.loopback: servers that bind every interface are kept on loopback, or refused."""

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hostguard import loopback
from tests.conftest import host_addresses

PROBE_SERVER = textwrap.dedent("""
    import socket, sys
    servers = []
    for family, address, v6only in [(socket.AF_INET, "0.0.0.0", None), (socket.AF_INET6, "::", 0),
                                    (socket.AF_INET6, "::", 1)]:
        server = socket.socket(family, socket.SOCK_STREAM)
        if v6only is not None:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        server.bind((address, 0))
        server.listen()
        servers.append(server)
    print(" ".join(str(s.getsockname()[1]) for s in servers), flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def no_compiler(tmp_path, monkeypatch):
    """A host where the loopback library is neither cached nor buildable."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))


def test_wildcard_binds_become_loopback_binds_for_both_families():
    preload = loopback.isolation(allow_exposed=False)
    with subprocess.Popen(
        [sys.executable, "-c", PROBE_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**preload.environment(), "PATH": "/usr/bin:/bin"},
    ) as server:
        try:
            ports = [int(p) for p in server.stdout.readline().split()]
            listening = loopback.listening_addresses(server.pid)
        finally:
            server.stdin.close()
    assert sorted(port for _, port in listening) == sorted(ports)
    by_port = dict((port, address) for address, port in listening)
    assert by_port[ports[0]] == "127.0.0.1"
    assert by_port[ports[1]] == "::ffff:7f00:1"  # dual-stack: IPv4 clients of 127.0.0.1 still connect
    assert by_port[ports[2]] == "::1"
    assert all(loopback.is_loopback(address) for address, _ in listening)


def test_the_tff_worker_listens_on_loopback_only_and_refuses_other_addresses():
    from fed_models import runtime
    from fed_models.training import ClientData, TrainingSpec, train

    rng = np.random.default_rng(0)
    client = ClientData("a", rng.normal(size=(40, 2)), rng.integers(0, 2, 40).astype(float))
    train([client], np.zeros(2), np.ones(2), TrainingSpec(rounds=1))
    pid = runtime.worker_pid()
    sockets = loopback.listening_addresses(pid)
    assert sockets and all(loopback.is_loopback(address) for address, _ in sockets), sockets
    port = sockets[0][1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # reachable from this machine
    for address in host_addresses():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


def test_without_a_compiler_the_worker_is_refused_naming_the_risk_and_the_override(no_compiler):
    with pytest.raises(loopback.WorkerExposureRefused) as refused:
        loopback.isolation(allow_exposed=False)
    message = str(refused.value)
    assert message.startswith(
        "refusing to start the TFF worker: it would listen on every network interface without authentication"
    )
    assert "no C compiler to build loopback_bind.c" in message
    assert "set FEDRISK_ALLOW_EXPOSED_WORKER=1 to accept the exposure" in message
    accepted = loopback.isolation(allow_exposed=True)
    assert accepted.exposed and accepted.environment() == {}
    assert accepted.mechanism == "none: exposed on all interfaces, accepted by FEDRISK_ALLOW_EXPOSED_WORKER=1"


def test_a_shared_cache_directory_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "fedrisk").mkdir(mode=0o777)
    (tmp_path / "fedrisk").chmod(0o777)
    with pytest.raises(loopback.WorkerExposureRefused, match="is not private to this user"):
        loopback.isolation(allow_exposed=False)


def test_a_retraining_without_isolation_is_refused_before_reading_anything(
    prefect_api, no_compiler, tracking_uri, small_consortium, tmp_path
):
    from mlflow import MlflowClient

    from flows.config import parse_config
    from flows.retrain import retrain

    config = parse_config(
        {
            "model_name": "refused",
            "institutions": [{"name": name, "path": str(path)} for name, path in small_consortium.items()],
        },
        tmp_path,
    )
    with pytest.raises(loopback.WorkerExposureRefused, match="Nothing was trained or registered"):
        retrain(config)
    assert MlflowClient(tracking_uri).search_registered_models() == []
    assert MlflowClient(tracking_uri).search_experiments(filter_string="name = 'fedrisk-refused'") == []


@pytest.mark.slow
def test_the_override_trains_with_an_exposed_worker_and_records_it(small_consortium, tmp_path):
    """Run where no other host can reach it: in a network namespace of its own with loopback only."""
    from mlflow import MlflowClient

    from tests.conftest import FEDRISK, cli_environment, write_config

    if subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True).returncode:
        pytest.skip("unprivileged user and network namespaces are not available here (unshare -rn)")
    config = write_config(tmp_path / "run.yaml", small_consortium, training={"rounds": 2})
    env = cli_environment(
        tmp_path,
        FEDRISK_ALLOW_EXPOSED_WORKER="1",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        CC=str(tmp_path / "no-such-cc"),
    )
    result = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" "$@"',
            FEDRISK,
            "retrain",
            "--config",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("m", "1")
    expected = "none: exposed on all interfaces, accepted by FEDRISK_ALLOW_EXPOSED_WORKER=1"
    assert version.tags["security.worker_isolation"] == expected
    assert client.get_run(version.run_id).data.tags["security.worker_isolation"] == expected
