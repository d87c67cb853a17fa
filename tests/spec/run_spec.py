#!/usr/bin/env python3
"""Run the MongoDB drivers' unified spec tests, as shipped in the pymongo
source distribution, against a freshly started Mangrove server, and compare
the outcome with the checked-in exceptions list ``expected-failures.txt``.

Usage (from anywhere; use the repo's venv, which has pymongo and pytest):

    .venv/bin/python tests/spec/run_spec.py                  # every corpus
    .venv/bin/python tests/spec/run_spec.py --corpus sessions -k snapshot
    .venv/bin/python tests/spec/run_spec.py --list-corpora
    .venv/bin/python tests/spec/run_spec.py --update-expected

What it does:

1. downloads the pymongo sdist with pip into ``.cache/spec/`` (gitignored),
   checks its pinned sha256 and extracts it once;
2. for each pytest run (one or more modules), starts ``mangrove serve --port 0
   --enable-test-commands`` on a fresh data directory and runs pytest from
   (``--jobs`` runs at once, the longest first; each has its own server)
   the extracted sdist with ``DB_IP``/``DB_PORT`` pointing at it, collecting
   per-test outcomes as JUnit XML;
3. judges the outcome: a failing test that is not listed in
   expected-failures.txt fails the run, and so does a listed test that now
   passes (a stale entry). Skips are never silent: their reasons are grouped
   and counted in the summary.

``MANGROVE_BIN`` overrides the server binary (default ``target/debug/mangrove``,
or ``$CARGO_TARGET_DIR/debug/mangrove``), as in tests/python/conftest.py.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parent
REPO_ROOT = SPEC_DIR.parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "spec"
EXPECTED_FILE = SPEC_DIR / "expected-failures.txt"

# The spec tests are pinned to one pymongo release: its test runner and spec
# JSON files are the test suite, so a new release is a deliberate update (new
# version + new hash + re-triaged expected-failures.txt).
PYMONGO_VERSION = "4.20.0"
SDIST_NAME = f"pymongo-{PYMONGO_VERSION}.tar.gz"
SDIST_SHA256 = "f773b0aec28687587cdeda490463a82debc4566a4a3620dcc8dada9d2c0a1acd"


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    run: str  # the pytest run (key of RUNS) that holds it
    origin: str  # spec directory its tests are generated from, relative to test/


# One pytest run = one fresh server = one pytest invocation over these modules
# (paths relative to the sdist root). Modules under sdist_addons/ are ours and
# are copied into the sdist's test/ package before the run.
RUNS = {
    "transactions": [
        "test/test_transactions_unified.py",
        # transactions/unified/commit.json, which pymongo's module drops
        "test/test_mangrove_transactions_commit_unified.py",
    ],
    "sessions": ["test/test_sessions_unified.py"],
    "retryable-writes": ["test/test_retryable_writes_unified.py"],
    "causal-consistency": ["test/test_causal_consistency.py"],
    "crud": ["test/test_crud_unified.py"],
    # the unified change-stream corpus and pymongo's own change-stream tests
    "change-streams": ["test/test_change_stream.py"],
    "retryable-reads": ["test/test_retryable_reads_unified.py"],
    # pymongo's own cursor tests: tailable cursors over capped collections among them
    "cursor": ["test/test_cursor.py"],
    # authentication against a server started with --auth: pymongo's test package sees
    # getCmdLineOpts refused, creates its user through the localhost exception and runs
    # every test authenticated
    "auth": ["test/test_auth.py", "test/test_auth_spec.py"],
    # issue 15: what the versioned API, DDL helpers, monitoring and timeouts unlock
    "versioned-api": ["test/test_versioned_api_integration.py"],
    "collection-management": ["test/test_collection_management.py"],
    "index-management": ["test/test_index_management.py"],
    "command-monitoring": ["test/test_command_monitoring.py"],
    "csot": ["test/test_csot.py"],
    "unified-test-format": ["test/test_unified_format.py"],
}
# `mangrove serve` arguments a run needs beyond the common ones. Every run is authenticated:
# the server starts with --auth, pymongo's test package finds getCmdLineOpts refused, creates
# its root user through the localhost exception and runs every test as that user, so the spec
# tests that need auth (handshake errors during authentication) run too, and every command of
# every test passes the authorization check.
RUN_SERVER_ARGS = {run: ["--auth"] for run in RUNS}
ADDONS_DIR = SPEC_DIR / "sdist_addons"

# Order is the run order. Corpora of one run are split by the spec directory
# their tests come from (see mangrove_spec_plugin.py).
CORPORA = [
    Corpus("transactions", "transactions", "transactions/unified"),
    Corpus("transactions-convenient-api", "transactions", "transactions-convenient-api/unified"),
    Corpus("sessions", "sessions", "sessions"),
    Corpus("retryable-writes", "retryable-writes", "retryable_writes/unified"),
    Corpus("causal-consistency", "causal-consistency", "causal_consistency"),
    Corpus("crud", "crud", "crud/unified"),
    Corpus("change-streams", "change-streams", "change_streams/unified"),
    Corpus("retryable-reads", "retryable-reads", "retryable_reads/unified"),
    Corpus("cursor", "cursor", "cursor"),
    Corpus("auth", "auth", "auth"),
    Corpus("versioned-api", "versioned-api", "versioned-api"),
    Corpus("collection-management", "collection-management", "collection_management"),
    Corpus("index-management", "index-management", "index_management"),
    Corpus("command-monitoring", "command-monitoring", "command_monitoring"),
    Corpus("csot", "csot", "csot"),
    Corpus("unified-test-format", "unified-test-format", "unified-test-format/valid-pass"),
    Corpus(
        "unified-test-format-valid-fail", "unified-test-format", "unified-test-format/valid-fail"
    ),
]
CORPUS_BY_ORIGIN = {c.origin: c for c in CORPORA}
RUN_OF_MODULE = {m: run for run, modules in RUNS.items() for m in modules}

READY_RE = re.compile(r"listening on (\S+):(\d+)")
STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 15.0
# A whole module must finish in this time even if pytest-timeout cannot
# interrupt a hung test (it uses signals; a test stuck in C code ignores them).
MODULE_TIMEOUT = 30 * 60
# Seconds each run took in a full run on 2 cores: the longest start first, so that `--jobs`
# workers finish together. Only the order depends on these.
RUN_SECONDS = {
    "csot": 104,
    "retryable-reads": 71,
    "transactions": 51,
    "crud": 44,
    "retryable-writes": 32,
    "change-streams": 31,
    "unified-test-format": 15,
}

# Default server selection timeout for the tests' clients (pymongo: 30 s);
# see mangrove_spec_plugin.py. Ample for one server on loopback.
SERVER_SELECTION_TIMEOUT = 5

# Variables pymongo's test package reads to pick another target or client
# options (auth, TLS, compression, load balancer, stable API). Inherited from
# a developer's shell they would silently test something else.
SCRUBBED_ENV = [
    "DB_USER",
    "DB_PASSWORD",
    "CLIENT_PEM",
    "CA_PEM",
    "COMPRESSORS",
    "MONGODB_API_VERSION",
    "TEST_LOAD_BALANCER",
    "SINGLE_MONGOS_LB_URI",
    "MULTI_MONGOS_LB_URI",
]

OUTCOME_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def loud_warning(msg: str) -> None:
    bar = "!" * 78
    log(f"\n{bar}\n!! WARNING: {msg}\n{bar}\n")


# --------------------------------------------------------------------- sdist


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_sdist(cache: Path) -> Path:
    """Download (if needed), verify and extract (if needed) the pymongo sdist."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / SDIST_NAME
    if tarball.exists() and sha256_of(tarball) != SDIST_SHA256:
        log(f"spec: {tarball} has the wrong sha256; downloading it again")
        tarball.unlink()
    if not tarball.exists():
        log(f"spec: downloading the pymongo {PYMONGO_VERSION} sdist into {cache}")
        # pip, not a hand-made URL: it goes through the configured index.
        # --no-binary :all: makes it fetch the sdist (the wheel has no tests).
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"pymongo=={PYMONGO_VERSION}",
                "-d",
                str(cache),
            ],
            check=True,
        )
    actual = sha256_of(tarball)
    if actual != SDIST_SHA256:
        sys.exit(
            f"spec: sha256 mismatch for {tarball}:\n  expected {SDIST_SHA256}\n  got      {actual}"
        )

    root = cache / f"pymongo-{PYMONGO_VERSION}"
    # The marker is written last, so an interrupted extraction is redone.
    marker = root / ".mangrove-extracted"
    if marker.exists():
        return root
    log(f"spec: extracting {tarball.name}")
    shutil.rmtree(root, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="extract-", dir=cache))
    try:
        with tarfile.open(tarball) as tar:
            # filter="data" refuses absolute paths, links out of the tree, etc.
            tar.extractall(staging, filter="data")
        (staging / root.name).rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    marker.write_text(f"{SDIST_SHA256}\n")
    return root


# -------------------------------------------------------------------- server


def mangrove_bin() -> Path:
    env = os.environ.get("MANGROVE_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "debug" / "mangrove"


class ServerError(Exception):
    pass


class Server:
    """A `mangrove serve` child on a fresh data dir and an OS-chosen port."""

    def __init__(self, binary: Path, extra: list[str] | None = None):
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mangrove-spec-"))
        self.log_path = self.tmpdir / "server.log"
        self.args = [
            str(binary),
            "serve",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--data-dir",
            str(self.tmpdir / "data"),
            # configureFailPoint & co.: most error-handling spec tests need them
            # (without, pymongo skips them as "Test commands must be enabled").
            "--enable-test-commands",
            *(extra or []),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.tmpdir,
        )
        self.port: int | None = None
        ready = threading.Event()

        def pump() -> None:
            # Keep draining stdout for the life of the process so the server
            # never blocks on a full pipe.
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                m = READY_RE.search(raw.decode("utf-8", "replace"))
                if m and self.port is None:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()  # EOF: wake the waiter, it will notice no port

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(STARTUP_TIMEOUT)
        if self.port is None:
            code = self.proc.poll()
            tail = self.log_tail()
            self.stop()
            raise ServerError(
                f"mangrove did not print its ready line within {STARTUP_TIMEOUT:.0f}s "
                f"(exit={code})\nargs: {self.args}\nstderr tail:\n{tail}"
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            self._log.flush()
            lines = self.log_path.read_text("utf-8", "replace").splitlines()
        except (OSError, ValueError):
            return "<no log>"
        return "\n".join(lines[-n:])

    def stop(self, keep_log_as: Path | None = None) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        code: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = None
        else:
            code = self.proc.returncode
        if not self._log.closed:
            self._log.close()
        if keep_log_as is not None:
            shutil.copyfile(self.log_path, keep_log_as)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return code


# ------------------------------------------------------------------- results


@dataclasses.dataclass
class Result:
    nodeid: str
    corpus: str
    outcome: str  # passed | failed | error | skipped
    message: str = ""  # failure/error message or skip reason
    file_run_on: str = ""
    test_run_on: str = ""


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_junit(path: Path, fallback_corpus: str) -> list[Result]:
    """Per-test outcomes from pytest's JUnit XML, merged per node id.

    A test can appear twice (e.g. call failed and teardown errored); the worst
    outcome wins, with its message.
    """
    merged: dict[str, Result] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        classname, name = case.get("classname", ""), case.get("name", "")
        # Collection errors have no properties: rebuild an id from the class
        # path so they still show up as unexpected errors.
        nodeid = props.get("spec_nodeid") or f"{classname}::{name}"
        origin_corpus = CORPUS_BY_ORIGIN.get(props.get("spec_origin", ""))
        corpus = origin_corpus.name if origin_corpus else fallback_corpus
        outcome, message = "passed", ""
        for tag in ("error", "failure", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = el.get("message") or (el.text or "")
                break
        result = Result(
            nodeid,
            corpus,
            outcome,
            message,
            props.get("spec_file_run_on", ""),
            props.get("spec_test_run_on", ""),
        )
        old = merged.get(nodeid)
        if old is None or OUTCOME_RANK[outcome] > OUTCOME_RANK[old.outcome]:
            merged[nodeid] = result
    return list(merged.values())


def skip_reason(r: Result) -> str:
    """A skip reason with per-class noise removed, for grouping.

    pymongo says "TestFooBar runOnRequirements not satisfied" for a file-level
    requirement and just "runOnRequirements not satisfied" for a test-level
    one; add the requirement itself so the summary says what Mangrove lacks.
    """
    msg = one_line(r.message, 300)
    msg = re.sub(r"^Skipped: ", "", msg)
    if msg.endswith("runOnRequirements not satisfied"):
        if msg.startswith("Test"):
            return f"file runOnRequirements not satisfied: {r.file_run_on or '?'}"
        return f"test runOnRequirements not satisfied: {r.test_run_on or '?'}"
    return msg


# ----------------------------------------------------------- expected list


@dataclasses.dataclass
class Expected:
    lines: list[str]  # the file as read, for --update-expected
    reasons: dict[str, str]  # node id -> reason


def load_expected(path: Path) -> Expected:
    lines = path.read_text().splitlines() if path.exists() else []
    reasons: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        entry = parse_entry(line)
        if entry is None:
            continue
        nodeid, reason = entry
        if not reason:
            sys.exit(f"{path}:{lineno}: entry without a '# reason': {line!r}")
        if nodeid in reasons:
            sys.exit(f"{path}:{lineno}: duplicate entry {nodeid}")
        reasons[nodeid] = reason
    return Expected(lines, reasons)


def parse_entry(line: str) -> tuple[str, str] | None:
    """(node id, reason) for an entry line, None for blank/comment lines.

    Node ids hold no whitespace (pymongo turns the spaces of test descriptions
    into underscores), so the id is the first word and the reason follows '#'.
    """
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    nodeid, _, rest = stripped.partition(" ")
    rest = rest.strip()
    return nodeid, rest[1:].strip() if rest.startswith("#") else ""


# --------------------------------------------------------------------- run


@dataclasses.dataclass
class Run:
    name: str  # key of RUNS
    corpora: list[Corpus]  # the selected corpora it holds
    full: bool  # all its corpora and no -k: every test it has was run
    results: list[Result]
    problems: list[str]  # harness-level failures (server died, pytest crashed...)
    seconds: float


def pytest_timeout_args(per_test: int) -> list[str]:
    if per_test <= 0:
        return []
    if importlib.util.find_spec("pytest_timeout") is None:
        loud_warning("pytest-timeout is not installed: a hung test will stall the run")
        return []
    return ["--timeout", str(per_test)]


def describe_server(port: int) -> tuple[str, bool]:
    """What pymongo's runner will compare runOnRequirements with (version,
    topology), and whether test commands are on, as pymongo's runner checks it."""
    from pymongo import MongoClient  # the venv's; only for this one look
    from pymongo.errors import OperationFailure

    client = MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=5000)
    try:
        version = client.admin.command("buildInfo").get("version", "?")
        hello = client.admin.command("hello")
        try:
            test_commands = bool(client.admin.command("getParameter", "*").get("enableTestCommands"))
            auth = ""
        except OperationFailure as e:
            if e.code != 13:
                raise
            # --auth: no user yet to ask with; the harness always passes --enable-test-commands.
            test_commands, auth = True, ", --auth"
    finally:
        client.close()
    topology = f"replica set {hello['setName']!r}" if "setName" in hello else "standalone"
    about = f"version {version}, maxWireVersion {hello.get('maxWireVersion')}, {topology}{auth}"
    return about, test_commands


def run_pytest(
    sdist: Path,
    cache: Path,
    binary: Path,
    run_name: str,
    corpora: list[Corpus],
    full: bool,
    args: argparse.Namespace,
) -> Run:
    """Run one pytest invocation against its own fresh server."""
    names = ", ".join(c.name for c in corpora)
    junit = cache / "junit" / f"{run_name}.xml"
    pytest_log = cache / "logs" / f"{run_name}.pytest.log"
    server_log = cache / "logs" / f"{run_name}.server.log"
    for p in (junit, pytest_log, server_log):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)

    t0 = time.monotonic()
    problems: list[str] = []
    try:
        server = Server(binary, RUN_SERVER_ARGS.get(run_name))
    except ServerError as exc:
        return Run(run_name, corpora, full, [], [str(exc)], 0.0)
    try:
        about, test_commands = describe_server(server.port)
    except Exception as exc:  # pytest will show the real problem; only describing here
        about, test_commands = f"could not describe it: {exc}", True
    log(f"spec: {names}: mangrove on port {server.port} ({about})")
    if not test_commands:
        # pymongo would quietly skip every fail-point test: fail loudly instead.
        problems.append(
            "getParameter reports enableTestCommands false despite --enable-test-commands; "
            "fail-point tests were skipped"
        )

    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *RUNS[run_name],
        # Not the sdist's pyproject.toml: it turns every warning into an
        # error and hard-codes its own junit path and marker selection.
        "-c",
        "/dev/null",
        "--rootdir",
        ".",
        "-p",
        "no:cacheprovider",
        "-p",
        "mangrove_spec_plugin",
        f"--server-selection-timeout={SERVER_SELECTION_TIMEOUT}",
        "-q",
        "--tb=short",
        "--durations=10",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit2",
        # Keep a test's captured output out of the XML: the messages suffice
        # and the logs of hundreds of tests would make the file huge.
        "-o",
        "junit_logging=no",
        *pytest_timeout_args(args.timeout),
    ]
    if len(corpora) < sum(c.run == run_name for c in CORPORA):
        cmd += [f"--spec-origin={c.origin}" for c in corpora]
    if args.k:
        cmd += ["-k", args.k]
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(
        DB_IP="127.0.0.1",
        DB_PORT=str(server.port),
        PYTHONPATH=os.pathsep.join(filter(None, [str(SPEC_DIR), env.get("PYTHONPATH")])),
    )
    with open(pytest_log, "wb") as out:
        try:
            rc = subprocess.run(
                cmd,
                cwd=sdist,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=MODULE_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = None
            problems.append(f"pytest did not finish within {MODULE_TIMEOUT}s and was killed")

    alive = server.alive()
    tail = server.log_tail()
    code = server.stop(keep_log_as=server_log)
    if not alive:
        problems.append(f"the server died during the run (exit {code})")
    elif code != 0:
        problems.append(f"the server exited with {code} after SIGTERM (expected 0)")
    # pytest: 0 all passed, 1 some failed, 5 nothing collected (fine with -k);
    # anything else means the run itself broke and the XML may be partial.
    if rc is not None and rc not in (0, 1) and not (rc == 5 and args.k):
        problems.append(f"pytest exited with {rc} (see {pytest_log})")

    results: list[Result] = []
    if junit.exists():
        results = parse_junit(junit, corpora[0].name)
    elif not problems:
        problems.append(f"pytest wrote no {junit} (see {pytest_log})")
    if problems:
        problems.append(f"server stderr tail ({server_log}):\n{tail}")
    dt = time.monotonic() - t0
    log(f"spec: {names}: {last_line(pytest_log)} [{dt:.0f}s]")
    return Run(run_name, corpora, full, results, problems, dt)


def last_line(path: Path) -> str:
    try:
        lines = path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip("= ") if lines else ""


def install_addons(sdist: Path) -> None:
    """Copy our extra test modules into the sdist's test/ package (every run,
    so an edited addon takes effect without re-extracting)."""
    for src in ADDONS_DIR.glob("test_*.py"):
        shutil.copyfile(src, sdist / "test" / src.name)


# ------------------------------------------------------------------- report


def count(results: list[Result], expected: Expected) -> collections.Counter:
    c: collections.Counter = collections.Counter()
    for r in results:
        if r.outcome in ("failed", "error"):
            c["exp" if r.nodeid in expected.reasons else "unexp"] += 1
        else:
            c[r.outcome] += 1
    c["total"] = len(results)
    return c


def row(name: str, c: collections.Counter) -> str:
    runnable = c["total"] - c["skipped"]
    pct = f"({100 * c['passed'] / runnable:.0f}%)" if runnable else ""
    ratio = f"{c['passed']} / {runnable} {pct}"
    return (
        f"{name:<28} {c['passed']:>7} {c['exp']:>7} {c['unexp']:>8} {c['skipped']:>8} "
        f"{c['total']:>6}   {ratio:>17}"
    )


def print_table(runs: list[Run], expected: Expected) -> None:
    header = (
        f"{'corpus':<28} {'passed':>7} {'failed':>7} {'failed':>8} {'skipped':>8} "
        f"{'total':>6}   {'passed / runnable':>17}"
    )
    log(header)
    log(f"{'':<28} {'':>7} {'(exp.)':>7} {'(unexp.)':>8}")
    log("-" * len(header))
    totals: collections.Counter = collections.Counter()
    for run in runs:
        for corpus in run.corpora:
            c = count([r for r in run.results if r.corpus == corpus.name], expected)
            totals.update(c)
            log(row(corpus.name, c))
    log("-" * len(header))
    log(row("all", totals))


def write_results(path: Path, runs: list[Run], expected: Expected) -> None:
    with open(path, "w") as f:
        f.write(f"# spec test outcomes, {datetime.datetime.now().isoformat(timespec='seconds')}\n")
        f.write("# outcome  corpus  node-id  | message (failure, error or skip reason)\n")
        for run in runs:
            for r in sorted(run.results, key=lambda r: (r.corpus, r.nodeid)):
                tag = r.outcome
                if r.outcome in ("failed", "error"):
                    tag += "(expected)" if r.nodeid in expected.reasons else "(UNEXPECTED)"
                elif r.outcome == "passed" and r.nodeid in expected.reasons:
                    tag += "(STALE)"
                line = f"{tag:<18} {r.corpus:<28} {r.nodeid}"
                if r.outcome != "passed":
                    line += f"  | {one_line(r.message, 1000)}"
                f.write(line + "\n")


def entry_gone(nodeid: str, seen: set[str], fully_run: set[str]) -> bool:
    """A listed test that cannot exist: its run covered everything and did not
    have it, or its module belongs to no run at all."""
    if nodeid in seen:
        return False
    run = RUN_OF_MODULE.get(nodeid.split("::")[0])
    return run is None or run in fully_run


SECTION_PREFIX = "# --- "  # a cause's heading in expected-failures.txt


def drop_empty_sections(lines: list[str]) -> list[str]:
    """Remove '# --- cause' headings (and the blank line before them) whose
    entries have all been removed."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(SECTION_PREFIX):
            rest = lines[i + 1 :]
            end = next(
                (j for j, text in enumerate(rest) if text.startswith(SECTION_PREFIX)), len(rest)
            )
            if not any(parse_entry(text) for text in rest[:end]):
                if out and not out[-1].strip():
                    out.pop()
                continue
        out.append(line)
    return out


def update_expected(path: Path, expected: Expected, runs: list[Run]) -> tuple[int, int]:
    """Rewrite the exceptions file in place: drop entries for tests that ran
    and passed (or no longer exist), append new failures as '# TODO reason'.
    Comments, grouping and existing reasons are kept, and so are entries for
    tests this run did not cover (--corpus, -k) or skipped."""
    by_id = {r.nodeid: r for run in runs for r in run.results}
    fully_run = {run.name for run in runs if run.full}

    out: list[str] = []
    removed = 0
    for line in expected.lines:
        entry = parse_entry(line)
        if entry is not None:
            r = by_id.get(entry[0])
            if (r is not None and r.outcome == "passed") or entry_gone(
                entry[0], set(by_id), fully_run
            ):
                removed += 1
                continue
        out.append(line)
    out = drop_empty_sections(out)
    new = sorted(
        r.nodeid
        for r in by_id.values()
        if r.outcome in ("failed", "error") and r.nodeid not in expected.reasons
    )
    if new:
        while out and not out[-1].strip():
            out.pop()
        if out:
            out.append("")
        out.append(f"# Added by --update-expected on {datetime.date.today()}: give each a reason.")
        out += [f"{nodeid}  # TODO reason" for nodeid in new]
    path.write_text("\n".join(out) + "\n")
    return len(new), removed


# --------------------------------------------------------------------- main


def run_all(
    sdist: Path,
    cache: Path,
    server_bin: Path,
    by_run: dict[str, list[Corpus]],
    args: argparse.Namespace,
) -> list[Run]:
    """Every run, `args.jobs` at a time, longest first; results in CORPORA's order.
    Runs wait mostly on timeouts and round trips, not on the CPU, so two at once on two
    cores take about half the time."""
    order = sorted(by_run, key=lambda name: -RUN_SECONDS.get(name, 5))
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        for run_name in order:
            corpora = by_run[run_name]
            full = not args.k and len(corpora) == sum(c.run == run_name for c in CORPORA)
            futures[run_name] = pool.submit(
                run_pytest, sdist, cache, server_bin, run_name, corpora, full, args
            )
        return [futures[name].result() for name in by_run]



def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        action="append",
        choices=[c.name for c in CORPORA],
        metavar="NAME",
        help="run only this corpus (repeatable); see --list-corpora. Default: all",
    )
    parser.add_argument("--list-corpora", action="store_true", help="list corpora and exit")
    parser.add_argument("-k", metavar="EXPR", help="passed to pytest -k (test selection)")
    parser.add_argument(
        "--update-expected",
        action="store_true",
        help="rewrite the exceptions list from this run's failures (new ones get '# TODO reason')",
    )
    parser.add_argument(
        "--expected",
        type=Path,
        default=EXPECTED_FILE,
        metavar="FILE",
        help=f"the exceptions list (default: {EXPECTED_FILE.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--timeout", type=int, default=60, help="per-test timeout in seconds (0: none)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="pytest runs at once, each with its own server (default: 2)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"default: {DEFAULT_CACHE}"
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")

    if args.list_corpora:
        for c in CORPORA:
            log(f"{c.name:<28} test/{c.origin:<38} run by {' '.join(RUNS[c.run])}")
        return 0

    t_start = time.monotonic()
    binary = mangrove_bin()
    if not binary.exists():
        log(f"spec: mangrove binary not found at {binary}; build it or set MANGROVE_BIN")
        return 2
    cache = args.cache_dir.resolve()
    sdist = ensure_sdist(cache)
    install_addons(sdist)
    expected = load_expected(args.expected)

    by_run: dict[str, list[Corpus]] = {}
    for c in CORPORA:
        if not args.corpus or c.name in args.corpus:
            by_run.setdefault(c.run, []).append(c)

    # Every run uses one copy of the binary: a rebuild in the middle of the
    # harness (cargo replaces the file) must not mix two servers' results.
    built = datetime.datetime.fromtimestamp(binary.stat().st_mtime).isoformat(timespec="seconds")
    log(f"spec: server binary {binary} (built {built})")
    bin_dir = Path(tempfile.mkdtemp(prefix="mangrove-spec-bin-"))
    try:
        server_bin = bin_dir / binary.name
        shutil.copy2(binary, server_bin)
        runs = run_all(sdist, cache, server_bin, by_run, args)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)

    # ---- verdict
    results = [r for run in runs for r in run.results]
    failing = [r for r in results if r.outcome in ("failed", "error")]
    unexpected = [r for r in failing if r.nodeid not in expected.reasons]
    stale = [r for r in results if r.outcome == "passed" and r.nodeid in expected.reasons]
    seen = {r.nodeid for r in results}
    fully_run = {run.name for run in runs if run.full}
    unknown = sorted(n for n in expected.reasons if entry_gone(n, seen, fully_run))
    problems = [(run.name, p) for run in runs for p in run.problems]

    log("")
    log(f"spec: pymongo {PYMONGO_VERSION} unified spec tests against {binary} (built {built})")
    print_table(runs, expected)

    skips = collections.Counter(skip_reason(r) for r in results if r.outcome == "skipped")
    if skips:
        log("\nskip reasons (count  reason):")
        for reason, n in sorted(skips.items(), key=lambda kv: (-kv[1], kv[0])):
            log(f"  {n:>5}  {reason}")

    if unexpected:
        log(f"\nUNEXPECTED failures ({len(unexpected)}): fix them, or list them in {args.expected}")
        for r in sorted(unexpected, key=lambda r: r.nodeid):
            log(f"  {r.outcome.upper():<6} {r.nodeid}\n         {one_line(r.message, 300)}")
    if stale:
        log(f"\nSTALE entries ({len(stale)}): these now pass; remove them from {args.expected}")
        for r in sorted(stale, key=lambda r: r.nodeid):
            log(f"  {r.nodeid}")
    if unknown:
        log(f"\nSTALE entries ({len(unknown)}): no such test; remove them from {args.expected}")
        for nodeid in unknown:
            log(f"  {nodeid}")
    for run_name, p in problems:
        log(f"\nHARNESS PROBLEM in the {run_name} run: {p}")

    results_file = cache / "spec-results.txt"
    write_results(results_file, runs, expected)
    log(f"\nper-test outcomes: {results_file}")
    log(f"pytest output (tracebacks, slowest tests) and server logs: {cache / 'logs'}")

    if args.update_expected and problems:
        log(f"\nnot updating {args.expected}: the run itself had problems (see above)")
    elif args.update_expected:
        added, removed = update_expected(args.expected, expected, runs)
        log(f"\nupdated {args.expected}: {added} added (reason TODO), {removed} removed")
        # The file now matches this run.
        unexpected, stale, unknown = [], [], []

    ok = not (unexpected or stale or unknown or problems)
    n_passed = sum(r.outcome == "passed" for r in results)
    n_skipped = sum(r.outcome == "skipped" for r in results)
    log(
        f"\nspec: passed={n_passed} failing={len(failing)} (not listed: {len(unexpected)}) "
        f"skipped={n_skipped} stale-entries={len(stale) + len(unknown)}"
    )
    log(f"spec: {'OK' if ok else 'FAILED'} in {time.monotonic() - t_start:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
