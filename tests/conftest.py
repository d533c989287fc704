"""Shared fixtures: one Prefect API and one TFF runtime per test session, a fresh MLflow store per test."""

from __future__ import annotations

import atexit
import fcntl
import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_SCRATCH = tempfile.mkdtemp(prefix="fedrisk-test-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(Path(_SCRATCH) / "prefect")
os.environ.pop("PREFECT_API_URL", None)
os.environ["FEDRISK_RUNS_DIR"] = str(Path(_SCRATCH) / "runs")
os.environ["FEDRISK_LOG_FILE"] = str(Path(_SCRATCH) / "fedrisk.log")
# GX writes every validation result into its context: give the tests a copy of the committed one.
os.environ["FEDRISK_EXPECTATIONS_DIR"] = str(
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "expectations",
        Path(_SCRATCH) / "expectations",
        ignore=shutil.ignore_patterns("uncommitted", "__pycache__"),
    )
)

import flows  # noqa: E402,F401  (library defaults, before prefect/mlflow/GX are imported)
from contract.synthetic import synthesize  # noqa: E402

TEST_EXPECTATIONS_DIR = Path(os.environ["FEDRISK_EXPECTATIONS_DIR"])
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UCI_DIR = SHARED_DATA / "uci_default_credit"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real (temporary) Prefect API for the session's flow runs; its URL, for `fedrisk` commands run
    as their own processes (which then skip starting a temporary API of their own)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session", autouse=True)
def _stop_tff_worker():
    """Stop the TFF worker by its pid when the session ends (if TFF was used)."""
    yield
    import sys

    if "fed_models.runtime" in sys.modules:
        sys.modules["fed_models.runtime"].stop_worker()


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def small_consortium(tmp_path_factory) -> dict[str, Path]:
    """Four synthetic institutions at a quarter of the demo's size (5000/2000/1000/500 rows)."""
    return synthesize(tmp_path_factory.mktemp("consortium"), n_institutions=4, seed=3, rows_scale=0.25)


def require_uci() -> Path:
    if not UCI_DIR.is_dir():
        pytest.skip(f"real UCI credit data not found at {UCI_DIR} (../shared/data is absent)")
    return UCI_DIR


@pytest.fixture(scope="session")
def registered(prefect_api, small_consortium, tmp_path_factory):
    """One model retrained twice on the small consortium with simulation baselines, in its own
    MLflow store: version 1 is champion, version 2 (same data and settings) its challenger.

    Tests that read it point MLFLOW_TRACKING_URI at `registered.tracking_uri`.
    """
    from types import SimpleNamespace

    from flows.config import parse_config
    from flows.retrain import retrain

    root = tmp_path_factory.mktemp("registered")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    config = parse_config(
        {
            "model_name": "credit_registered",
            "institutions": [{"name": n, "path": str(p)} for n, p in small_consortium.items()],
            "training": {"rounds": 8},
            "baselines": {"enabled": True, "max_epochs": 20},
            "quorum": 3,
            "seed": 2,
        },
        Path("."),
    )
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        first, second = retrain(config), retrain(config)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return SimpleNamespace(
        tracking_uri=uri,
        artifacts=root / "mlruns" / "artifacts",
        config=config,
        first=first,
        second=second,
        data=small_consortium,
        name=config.model_name,
    )


def answers(url: str, timeout: float = 2) -> bool:
    """Whether the HTTP server a test started answers `url` with 200 yet (for wait_for)."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server or worker process for the length of a block, its output in `log`; stopped by its
    process id (its whole process group) however the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 30 s; a group already gone is fine."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_for(ready: Callable[[], bool], process: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> None:
    """Poll `ready` until it holds; fail with the process's last output if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{what}: process exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not ready in {timeout:g} s:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of `pid` (children, their children, ...) as pid -> command name, from /proc."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if rest[0] == "Z":  # a zombie has ended; only its parent has not reaped it
            continue
        parents.setdefault(int(rest[1]), []).append(int(entry.name))
        names[int(entry.name)] = name
    found, frontier = {}, [pid]
    while frontier:
        for child in parents.get(frontier.pop(), []):
            found[child] = names[child]
            frontier.append(child)
    return found


def wait_until_gone(pids, timeout: float) -> list[int]:
    """Wait (on each process's exit, through a pidfd) until every pid has ended; return those still alive."""
    import select

    alive = []
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([handle], [], [], max(0.0, deadline - time.monotonic()))[0]:
                alive.append(pid)
        finally:
            os.close(handle)
    return alive


def host_addresses() -> list[str]:
    """This host's own non-loopback IPv4 addresses (traffic to them never leaves the machine)."""
    import fcntl
    import struct

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                found.append(address)
    return found


FEDRISK = str(Path(sys.executable).parent / "fedrisk")  # the console script, as `uv run fedrisk` runs it


def serve_nodes(stack, configs: dict[str, dict], root: Path) -> dict[str, str]:
    """`fedrisk node serve` for each node config (institution -> its YAML as a dict), each in `root/NAME` with its
    log, stopped by its process group's id when `stack` (an ExitStack) closes; returns each one's listen address
    once every node listens."""
    import yaml

    started = {}
    for name, config in configs.items():
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "node.yaml").write_text(yaml.safe_dump(config))
        log = directory / "node.log"
        process = stack.enter_context(
            running([FEDRISK, "node", "serve", "--config", str(directory / "node.yaml")], dict(os.environ), log)
        )
        started[name] = (process, log)
    for name, (process, log) in started.items():
        wait_for(lambda log=log: "listening on" in log.read_text(), process, log, f"node {name}")
    return {name: config["listen"] for name, config in configs.items()}


def read_until(process: subprocess.Popen, text: str, timeout: float) -> str:
    """Read a process's (text) stdout line by line until a line contains `text`; return all read so far.
    Fails with the output when the process ends or `timeout` passes first."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line with {text!r} in {timeout:g} s:\n{''.join(seen)[-3000:]}") from None
        if line is None:
            raise AssertionError(f"process ended ({process.wait()}) before {text!r}:\n{''.join(seen)[-3000:]}")
        seen.append(line)
        if text in line:
            return "".join(seen)


def cli_output(monkeypatch, width: int = 250) -> io.StringIO:
    """What the `fedrisk` commands print, into a buffer wide enough not to wrap cells (every module of the CLI).

    Not capsys: Prefect rebuilds its log handlers on whatever sys.stderr is when a flow starts, and a capsys
    buffer is closed after its test.
    """
    from rich.console import Console

    import flows.cli  # noqa: F401  (imports every command's module)

    buffer = io.StringIO()
    console = Console(file=buffer, width=width)
    for name, module in list(sys.modules.items()):
        if name.startswith("flows.cli.") and hasattr(module, "console"):
            monkeypatch.setattr(module, "console", console)
    return buffer


def cli_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `fedrisk` command run as its own process, as on a fresh machine: its own
    temporary Prefect API and MLflow store under `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return {
        **env,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "COLUMNS": "200",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        **extra,
    }


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _above_9(fd: int) -> int:
    """`fd` moved to 10 or above, so that the child's fds 3 and 4 are always copies of it: a pipe that os.pipe()
    happened to open at 3 or 4 would otherwise stay close-on-exec there and be gone in chromium."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


SCREENSHOTS = os.environ.get("FEDRISK_SCREENSHOTS_DIR")  # set: pages a test opens are also saved there
# A page's text with its frames' (MLflow shows an HTML artifact, the model card, in a sandboxed iframe from a blob:
# URL: its document is out of reach, the blob is not).
PAGE_TEXT = """(async () => [document.body ? document.body.innerText : '', ...(await Promise.all(
    [...document.querySelectorAll('iframe')].map(async f => {
        try { return f.contentDocument.body.innerText } catch (e) {}
        try { return await (await fetch(f.src)).text() } catch (e) { return '' } })))].join('\\n'))()"""


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe). `offline`: in a
    network namespace of its own (`unshare --net`: not even loopback is up), so nothing can be fetched; else it
    reaches this machine's loopback only (every other host name resolves to nothing)."""

    def __init__(self, profile: Path, offline: bool = True, size: tuple[int, int] = (1400, 1000)) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        to_browser, from_browser = _above_9(to_browser), _above_9(from_browser)
        self.log = profile.parent / "chromium.log"
        assert CHROMIUM is not None
        command = [
            *(["unshare", "--net"] if offline else []),
            CHROMIUM,
            "--headless",
            f"--window-size={size[0]},{size[1]}",
            *([] if offline else ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]),
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # The protocol's fds 3 (commands in) and 4 (replies out), placed by bash rather than by Python code run
        # between fork and exec (this process has gRPC's threads).
        place = f"3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" {place}', "bash", *command],
                pass_fds=(to_browser, from_browser),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params):
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        try:
            os.write(self._write, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(self._gone()) from None
        while True:
            reply = self._receive()
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def _gone(self) -> str:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return f"chromium closed the protocol pipe (exit {self.process.poll()}); its last lines: " + " | ".join(
            self.log.read_text(errors="replace").splitlines()[-5:]
        )

    def tab(self) -> str:
        """A new page with its events on; the session id the page's commands take."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session)
        return session

    def text_once_shown(self, session: str, url: str, shown: list[str], name: str, timeout: float = 90) -> str:
        """Open `url` and wait until its text (with its frames') holds everything in `shown` (the MLflow and
        Prefect UIs render in the browser); the text it ended with. Saved as NAME.png under
        FEDRISK_SCREENSHOTS_DIR when that is set (docs/images)."""
        import base64

        self.send("Page.navigate", session, url=url)
        deadline, text = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            page = self.send("Runtime.evaluate", session, expression=PAGE_TEXT, awaitPromise=True, returnByValue=True)
            text = page["result"]["value"]
            if all(s in text for s in shown):
                break
            time.sleep(0.5)  # a rendered single-page app sends no event: poll what it shows
        if SCREENSHOTS:
            image = self.send("Page.captureScreenshot", session, format="png")["data"]
            (Path(SCREENSHOTS) / f"{name}.png").write_bytes(base64.b64decode(image))
        return text

    def wait_for(self, method: str) -> dict:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive())
        return next(e for e in self.events if e.get("method") == method)

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 65536)
            assert chunk, self._gone()
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@functools.cache
def offline_browser_missing() -> str | None:
    """Why a headless-browser test off the network cannot run here (Chromium, `unshare --net`), or None."""
    if CHROMIUM is None:
        return "headless-browser test: Debian's chromium is not installed (apt-get install chromium)"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--net", "true"]).returncode:
        return "needs `unshare --net` (root or user namespaces) to take the browser off the network"
    return None


def requires_offline_browser():
    """A skip mark, saying why, for a test that opens a page in Chromium with no network at all."""
    why = offline_browser_missing()
    return pytest.mark.skipif(why is not None, reason=why or "")


def run_in_terminal(command: list[str], env: dict[str, str], columns: int = 160) -> list[tuple[float, str]]:
    """Run `command` on a pseudo-terminal of `columns` columns; return what it wrote, as (wall time, text)
    in the order it arrived."""
    import fcntl
    import select
    import struct
    import termios

    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        command, stdin=terminal, stdout=terminal, stderr=terminal, env=env, start_new_session=True
    )
    os.close(terminal)
    received: list[tuple[float, str]] = []
    try:
        while True:
            if select.select([controller], [], [], 600)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                received.append((time.time(), chunk.decode(errors="replace")))
            else:
                raise AssertionError("no output for 600 s:\n" + "".join(t for _, t in received)[-3000:])
    finally:
        os.close(controller)
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        process.wait(timeout=60)
    assert process.returncode == 0, "".join(t for _, t in received)[-5000:]
    return received


@pytest.fixture(scope="session")
def demo_in_terminal(tmp_path_factory):
    """`fedrisk demo` exactly as a person first runs it: its own process on a pseudo-terminal (160 columns), a
    temporary Prefect API, the demo's data synthesized, an MLflow store of its own, all under `root`. Run once
    per session: what it showed (`received`, as run_in_terminal returns it) and when it began and ended (`started`,
    `finished`) serve the terminal test and the pipeline-overhead benchmark's test."""
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("demo-in-terminal")
    env = cli_environment(
        root,
        TERM="xterm-256color",
        COLUMNS="160",
        FEDRISK_DEMO_DATA_DIR=str(root / "demo"),
        FEDRISK_RUNS_DIR=str(root / "runs"),
        FEDRISK_LOG_FILE=str(root / "fedrisk.log"),
    )
    started = time.time()
    received = run_in_terminal([FEDRISK, "demo"], env)
    return SimpleNamespace(root=root, received=received, started=started, finished=time.time())


def run_config(consortium: dict[str, Path], **settings):
    """A validated run config (runconfig.RunConfig) over `consortium` with `settings` on top (model "m")."""
    from flows.config import parse_config

    institutions = [{"name": n, "path": str(p)} for n, p in consortium.items()]
    return parse_config({"model_name": "m", "institutions": institutions, **settings}, Path("."))


def write_config(path: Path, consortium: dict[str, Path], **settings) -> Path:
    """A run config over `consortium` with `settings` (YAML-able values) on top."""
    import yaml

    data = {"model_name": "m", "institutions": [{"name": n, "path": str(p)} for n, p in consortium.items()], **settings}
    path.write_text(yaml.safe_dump(data))
    return path


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None)


class PostgresCluster:
    """A PostgreSQL cluster of a test's own on a loopback port (initdb, pg_ctl), which the test may restart or
    stop; run as the `postgres` user when the tests run as root (initdb refuses root). Stopped with `stop`."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        self.bin, self.port = PG_BIN.parent, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fedrisk-test-pg-"))  # outside pytest's 0700 tmp: postgres reads it
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_owner(f"{self.bin}/initdb -D {self.dir}/data --auth=trust -U postgres", chown=True)
        self.start()

    def _as_owner(self, command: str, chown: bool = False) -> None:
        if os.getuid() == 0:
            if chown:
                subprocess.run(["chown", "-R", "postgres", str(self.dir)], check=True)
            command = f"su postgres -s /bin/bash -c '{command}'"
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"

    def _ctl(self, action: str) -> None:
        self._as_owner(
            f"{self.bin}/pg_ctl -D {self.dir}/data -l {self.dir}/server.log -w -m fast "
            f'-o "-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}" {action}'
        )

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """What `pg_ctl restart` does to a client: every connection dropped, every session's locks released."""
        self._ctl("restart")

    def stop(self) -> None:
        self._ctl("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


POSTGRES = os.environ.get("FEDRISK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
BIN = Path(sys.executable).parent  # this environment's prefect, mlflow and fedrisk commands


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the test PostgreSQL server (POSTGRES) cannot be used, or None (asked once per process)."""
    try:
        import psycopg

        psycopg.connect(POSTGRES, connect_timeout=3).close()
        return None
    except Exception as error:  # no driver, no server, refused
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def requires_postgres():
    """A skip mark, saying why, for tests that need the test PostgreSQL server (`.ci/run` starts one)."""
    why = postgres_unreachable()
    return pytest.mark.skipif(
        why is not None,
        reason=f"no PostgreSQL server at {POSTGRES} ({why}); set FEDRISK_TEST_POSTGRES_URL (`.ci/run` starts one)",
    )


def new_database(name: str) -> str:
    """A new database on the test server (dropped with the server's cluster); its URL."""
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def postgres_cluster():
    """A PostgreSQL cluster the test may restart (skips, saying why, where PostgreSQL is not installed)."""
    if PG_BIN is None:
        pytest.skip(
            "PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin; Debian's "
            "postgresql package, which `.ci/run` installs)"
        )
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


class WatchedProcess:
    """A process (its own process group) and its output, read by one thread as it comes, so that a test waits on
    the line that says something happened."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import queue
        import threading

        self.process = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, text: str, timeout: float) -> str:
        """Wait for a line with `text` (failing with the output if the process ends or time runs out)."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {timeout:g} s:\n{''.join(self.seen)[-3000:]}") from None
            if line is None:
                raise AssertionError(f"ended ({self.process.wait()}) before {text!r}:\n{''.join(self.seen)[-3000:]}")
            self.seen.append(line)
            if text in line:
                return line

    def end(self, timeout: float = 120) -> int:
        """Wait for the process to end; its exit code (all its output is in `seen` then)."""
        code = self.process.wait(timeout=timeout)
        while (line := self.lines.get(timeout=30)) is not None:
            self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


# What only an end-to-end test may use: a Prefect API, the session's registered model, a PostgreSQL cluster.
END_TO_END_FIXTURES = {"prefect_api", "registered", "demo_in_terminal", "postgres_cluster"}
# Session fixtures that run the product once for several tests: those tests share one worker.
SHARED_RUNS = ("registered", "demo_in_terminal")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A unit test (tests/unit/) that starts a service or runs a retraining is refused: it belongs in tests/e2e/.

    How the two CI workers share the suite (`--dist loadgroup`): the tests that share an expensive fixture run
    on one worker (a session's run in SHARED_RUNS; a module's servers or nodes), grouped; every other test is
    scheduled on its own. The long ones (marked slow, or a group) go first, so that short tests fill the end and
    both workers finish together."""

    def group(item) -> str | None:
        for name in SHARED_RUNS:
            if name in item.fixturenames:
                return name
        shared = item._fixtureinfo.name2fixturedefs
        if any(definitions[-1].scope == "module" for definitions in shared.values()):
            return item.nodeid.split("::")[0]
        return None

    for item in items:
        started = sorted(END_TO_END_FIXTURES & set(item.fixturenames))
        if item.nodeid.startswith("tests/unit/") and started:
            raise pytest.UsageError(f"{item.nodeid} uses {', '.join(started)}: an end-to-end test, for tests/e2e/")
    for item in items:
        name = group(item)
        if name:
            item.add_marker(pytest.mark.xdist_group(name))
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") or item.get_closest_marker("xdist_group") else 1)
