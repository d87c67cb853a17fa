"""Shared fixtures for the pymongo integration tests.

Every module gets its own Mangrove server: a fresh temporary data directory,
``--port 0`` so the OS picks a free loopback port, and the address parsed
from the single ``mangrove ready: listening on HOST:PORT`` line the server
prints on stdout.  The server is stopped with SIGTERM at the end.

``MANGROVE_BIN`` overrides the binary (default: ``target/debug/mangrove``,
or ``$CARGO_TARGET_DIR/debug/mangrove``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(r"listening on (\S+):(\d+)")
METRICS_RE = re.compile(r"^mangrove metrics: (http://\S+)/metrics$")
STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 15.0

# Lines collected by tests (e.g. the topology each client saw) and printed in
# the terminal summary, so the run's output shows them without `-s`.
REPORT_LINES: list[str] = []


def report(line: str) -> None:
    """Print a line now (visible with -s) and again in the final summary."""
    print(line)
    REPORT_LINES.append(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if REPORT_LINES:
        terminalreporter.section("mangrove driver observations (pymongo)")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)


def mangrove_bin() -> Path:
    env = os.environ.get("MANGROVE_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "debug" / "mangrove"


class MangroveServer:
    """A running `mangrove serve` child process."""

    def __init__(
        self,
        extra_args: list[str] | None = None,
        replset: str | None = "rs0",
        data_dir: Path | None = None,
    ):
        binary = mangrove_bin()
        if not binary.exists():
            pytest.fail(
                f"mangrove binary not found at {binary}; run `cargo build -p mangrove` "
                "or set MANGROVE_BIN"
            )
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mangrove-pytest-"))
        # A caller-owned data directory outlives this process (restart tests); ours does not.
        self.data_dir = data_dir or self.tmpdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.tmpdir / "server.log"
        args = [str(binary), "serve", "--port", "0", "--data-dir", str(self.data_dir)]
        if "--bind" not in (extra_args or []):
            args += ["--bind", "127.0.0.1"]
        if replset:
            args += ["--replset", replset]
        args += extra_args or []
        self.args = args
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.tmpdir,
        )
        self.stdout_lines: list[str] = []
        ready = threading.Event()
        self.host: str | None = None
        self.port: int | None = None

        def pump() -> None:
            # Keep draining stdout for the life of the process so the server
            # never blocks on a full pipe.
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                if not ready.is_set():
                    m = READY_RE.search(line)
                    if m:
                        self.host, self.port = m.group(1), int(m.group(2))
                        ready.set()
            ready.set()  # EOF: wake the waiter, it will notice no address

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ready.wait(0.1):
            if time.monotonic() > deadline:
                break
        if self.port is None:
            self.kill()
            pytest.fail(
                "mangrove did not print 'listening on HOST:PORT' within "
                f"{STARTUP_TIMEOUT}s (exit={self.proc.poll()}).\nargs: {args}\n"
                f"stdout: {self.stdout_lines}\nstderr tail:\n{self.log_tail()}"
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.address}/"

    @property
    def metrics_base(self) -> str:
        """`http://HOST:PORT` of `--metrics-addr`, from the line printed before the ready one
        (so `--metrics-addr 127.0.0.1:0` needs no port picked in advance)."""
        for line in self.stdout_lines:
            m = METRICS_RE.search(line)
            if m:
                return m.group(1)
        pytest.fail(f"the server printed no 'mangrove metrics:' line: {self.stdout_lines}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            self._log.flush()
            lines = self.log_path.read_text("utf-8", "replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the server and wait; returns its exit code (None if it had to be killed)."""
        code: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = None
        else:
            code = self.proc.returncode
        self._cleanup()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    srv = MangroveServer()
    yield srv
    alive = srv.alive()
    tail = srv.log_tail()
    code = srv.stop()
    assert alive, f"server died during the module's tests; stderr tail:\n{tail}"
    assert code == 0, f"server exit code after SIGTERM was {code}; stderr tail:\n{tail}"


@pytest.fixture()
def client(server):
    c = MongoClient(server.uri, serverSelectionTimeoutMS=10_000, connectTimeoutMS=5_000)
    yield c
    c.close()


@pytest.fixture()
def db(client, request):
    # One database per test so tests never see each other's data.
    name = "t_" + re.sub(r"[^A-Za-z0-9]", "_", request.node.name)[:50]
    return client[name]


@pytest.fixture()
def restartable():
    """Starts servers on one data directory that outlives each of them (restart tests); at the
    end every server started is killed and the directory removed, whatever the test did."""
    data = Path(tempfile.mkdtemp(prefix="mangrove-restart-"))
    started: list[MangroveServer] = []

    def start() -> MangroveServer:
        server = MangroveServer(data_dir=data)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()  # a no-op for one that already stopped
    shutil.rmtree(data, ignore_errors=True)
