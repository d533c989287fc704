"""hostguard.processes: nothing a `fedrisk` command starts outlives it, however it ends."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from hostguard import loopback
from tests.conftest import (
    FEDRISK,
    cli_environment,
    descendants,
    host_addresses,
    read_until,
    wait_until_gone,
    write_config,
)


def test_an_owned_child_ends_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, threading; from pathlib import Path; from hostguard.processes import spawn_owned; "
                f"child = spawn_owned(['sleep', '600'], Path({str(tmp_path / 'log')!r})); "
                "print(child.pid, flush=True); threading.Event().wait()"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        start_new_session=True,
    )
    try:
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until_gone([child], timeout=30) == []
    finally:
        os.killpg(parent.pid, signal.SIGKILL) if parent.poll() is None else None


@pytest.mark.slow
def test_a_retraining_killed_mid_training_leaves_no_process_and_listened_on_loopback_only(small_consortium, tmp_path):
    config = write_config(tmp_path / "run.yaml", small_consortium, training={"rounds": 500})
    cli = subprocess.Popen(
        [FEDRISK, "retrain", "--config", str(config)],
        env=cli_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        read_until(cli, "round 2/500", timeout=300)
        children = descendants(cli.pid)
        assert "worker_binary" in children.values(), children  # TFF's worker
        assert any("python" in name for name in children.values()), children  # the temporary Prefect API
        listening = {pid: loopback.listening_addresses(pid) for pid in children}
        ports = [port for sockets in listening.values() for _, port in sockets]
        assert len(ports) >= 2, listening
        assert all(loopback.is_loopback(address) for sockets in listening.values() for address, _ in sockets), listening
        for address in host_addresses():
            for port in ports:
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((address, port), timeout=5).close()
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        assert wait_until_gone(children, timeout=30) == [], descendants(1)
    finally:
        try:
            os.killpg(cli.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
