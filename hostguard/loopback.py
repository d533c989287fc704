"""Listening sockets on loopback only, for servers that cannot be told which address to bind.

TFF's `worker_binary` runs any serialized computation it receives, unauthenticated, and binds
every interface; XGBoost's federated server binds every interface too. Started with the
LD_PRELOAD library built here from `loopback_bind.c`, their wildcard binds become loopback binds;
after start, `require_loopback` reads the process's listening sockets from /proc and refuses
anything else. Where the library cannot be built (no C compiler), `isolation` refuses unless the
operator sets the one override, for a host whose firewall blocks the port range.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

OVERRIDE_VARIABLE = "FEDRISK_ALLOW_EXPOSED_WORKER"
SOURCE = Path(__file__).with_name("loopback_bind.c")
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp*


class WorkerExposureRefused(RuntimeError):
    """No way to keep a worker on loopback here, and the operator has not accepted the exposure."""


@dataclass(frozen=True)
class Isolation:
    """How a worker's listening socket is kept private: `mechanism` names it for the lineage."""

    mechanism: str
    preload: Path | None  # the LD_PRELOAD library, None when the operator accepted an exposed worker

    @property
    def exposed(self) -> bool:
        return self.preload is None

    def environment(self) -> dict[str, str]:
        """Variables to start the worker with."""
        if self.preload is None:
            return {}
        earlier = os.environ.get("LD_PRELOAD", "")
        return {"LD_PRELOAD": f"{self.preload}{' ' + earlier if earlier else ''}"}


class _BuildFailed(RuntimeError):
    pass


def _cache_dir() -> Path:
    """A directory only this user can write: a preloaded library in a shared temp dir could be swapped."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedrisk"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = base.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise _BuildFailed(f"{base} is not private to this user (owner uid {info.st_uid}, mode {oct(info.st_mode)})")
    return base


def build_preload() -> Path:
    """The loopback-bind library, compiled once per source version with $CC (default `cc`)."""
    source = SOURCE.read_bytes()
    target = _cache_dir() / f"loopback_bind-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise _BuildFailed(f"no C compiler to build {SOURCE.name} ({compiler!r} not found; install gcc or set CC)")
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(SOURCE), "-ldl"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise _BuildFailed(f"{compiler} could not build {SOURCE.name}: {result.stderr.strip()[-500:]}")
        os.replace(built, target)
    return target


def isolation(allow_exposed: bool, what: str = "TFF worker") -> Isolation:
    """The loopback mechanism, or (with the operator's override) an accepted exposure; else refuse."""
    try:
        return Isolation("loopback-bind (LD_PRELOAD)", build_preload())
    except (_BuildFailed, OSError) as error:
        if allow_exposed:
            return Isolation(f"none: exposed on all interfaces, accepted by {OVERRIDE_VARIABLE}=1", None)
        raise WorkerExposureRefused(refusal(what, str(error))) from None


def refusal(what: str, why: str) -> str:
    return (
        f"refusing to start the {what}: it would listen on every network interface without "
        f"authentication, and whoever reaches its port could run computations that read this host's "
        f"files (every institution extract here) and write files as this user. It cannot be kept on "
        f"loopback here: {why}. Nothing was trained or registered. Only on a host whose firewall blocks "
        f"inbound connections to ports 1024-65535, set {OVERRIDE_VARIABLE}=1 to accept the exposure (it is "
        f"recorded on the MLflow run and the model version)."
    )


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and inode in inodes:
                address, port = local.split(":")
                found.append((str(_address(address)), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def require_loopback(pid: int, what: str) -> list[tuple[str, int]]:
    """The process's listening sockets, or WorkerExposureRefused when one is reachable from elsewhere."""
    sockets = listening_addresses(pid)
    exposed = [f"{address}:{port}" for address, port in sockets if not is_loopback(address)]
    if exposed:
        raise WorkerExposureRefused(
            refusal(what, f"it listens on {', '.join(exposed)} despite the loopback-bind library (pid {pid})")
        )
    return sockets
