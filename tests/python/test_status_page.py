"""--metrics-addr's status page (issue 16, item 4): GET /status.json follows the work done, and
GET / loads in a real headless Chromium, polls, draws its SVG charts, lists an open
transaction and reports no JS error. Chromium comes from Debian (scripts/test installs it);
without it this module fails, it does not skip."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from html.parser import HTMLParser

import pytest
from pymongo import MongoClient

from conftest import MangroveServer


@pytest.fixture(scope="module")
def served():
    srv = MangroveServer(extra_args=["--metrics-addr", "127.0.0.1:0"])
    srv.base_url = srv.metrics_base
    yield srv
    srv.stop()


def status(srv) -> dict:
    with urllib.request.urlopen(srv.base_url + "/status.json", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def lsid_text(session) -> str:
    return str(uuid.UUID(bytes=bytes(session.session_id["id"])))


def test_status_json_follows_the_work(served):
    before = status(served)
    for key in ("uptimeSeconds", "connections", "logCommits", "operations", "latency",
                "transactions", "slowOps"):
        assert key in before, key
    assert set(before["operations"]) == {"insert", "query", "update", "delete", "getmore", "command"}
    assert len(before["latency"]["buckets"]) == 16
    c = MongoClient(served.uri, serverSelectionTimeoutMS=10_000)
    try:
        # Every operation is slow: it reaches the slow-operation ring.
        c.st.command("profile", 0, slowms=-1)
        for i in range(10):
            c.st.j.insert_one({"_id": i})
        c.st.command("profile", 0, slowms=100)
        with c.start_session() as s:
            s.start_transaction()
            c.st.j.insert_one({"_id": "in-txn"}, session=s)
            lsid = lsid_text(s)
            during = status(served)
            s.abort_transaction()
        after = status(served)
    finally:
        c.close()
    assert after["logCommits"] - before["logCommits"] >= 10
    assert after["operations"]["insert"] - before["operations"]["insert"] == 11
    assert after["latency"]["count"] > before["latency"]["count"]
    assert after["latency"]["buckets"][-1][1] <= after["latency"]["count"]
    assert during["transactions"]["open"] == 1
    [txn] = during["transactions"]["list"]
    assert txn["lsid"] == lsid
    assert txn["namespaces"] == ["st.j"]
    assert txn["ageSeconds"] >= 0
    assert after["transactions"]["open"] == 0 and after["transactions"]["list"] == []
    slow_inserts = [o for o in after["slowOps"] if o["ns"] == "st.j" and o["command"] == "insert"]
    assert len(slow_inserts) == 10, after["slowOps"]
    assert len(after["slowOps"]) <= 50


def test_only_get_and_known_paths(served):
    req = urllib.request.Request(served.base_url + "/status.json", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(served.base_url + "/status.html", timeout=10)
    assert e.value.code == 404
    with urllib.request.urlopen(served.base_url + "/", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        page = r.read().decode()
    # Self-contained: nothing loaded from elsewhere.
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "innerHTML" not in page


VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr"}


class Dom(HTMLParser):
    """What the test reads from Chromium's dumped DOM."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.title = ""
        self.polylines: dict[str, list[int]] = {}
        self.text: dict[str, str] = {"errors": "", "txns": ""}
        self.svg = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.svg = a.get("id")
        if tag == "polyline" and self.svg:
            points = (a.get("points") or "").split()
            self.polylines.setdefault(self.svg, []).append(len(points))
        if tag not in VOID:
            self.stack.append(a.get("id") or tag)

    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title":
            self.title += data
        for key in self.text:
            if key in self.stack:
                self.text[key] += data


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: the status page test needs a headless browser. "
            "Install it with `apt-get install -y chromium` (scripts/test does this as root)."
        )
    return path


def test_page_in_headless_chromium(served):
    browser = chromium()
    c = MongoClient(served.uri, serverSelectionTimeoutMS=10_000)
    try:
        for i in range(20):
            c.page.t.insert_one({"_id": i, "n": "<b>not html</b>"})
        with c.start_session() as s:
            s.start_transaction()
            c.page.t.insert_one({"_id": "open"}, session=s)
            lsid = lsid_text(s)
            with tempfile.TemporaryDirectory() as profile:
                run = subprocess.run(
                    [browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                     "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
                     "--virtual-time-budget=5000", "--dump-dom", served.base_url + "/"],
                    capture_output=True, text=True, timeout=120,
                )
            s.abort_transaction()
    finally:
        c.close()
    assert run.returncode == 0, run.stderr[-3000:]
    dom = Dom()
    dom.feed(run.stdout)
    print("title:", dom.title, "| polylines:", dom.polylines, "| errors:", repr(dom.text["errors"]),
          "| txns:", dom.text["txns"])
    assert dom.title == "Mangrove status", run.stdout[:2000]
    assert dom.text["errors"].strip() == "", dom.text["errors"]
    # The page never logs: any console message (an uncaught error, a CSP violation, a failed
    # fetch) shows as an INFO:CONSOLE line on stderr, whatever its level.
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    # Two series, two series, one series; each with at least two points (three polls or more).
    charts = ("chart-throughput", "chart-latency", "chart-txns")
    assert [len(dom.polylines.get(k, [])) for k in charts] == [2, 2, 1], dom.polylines
    for chart, lines in dom.polylines.items():
        assert all(n >= 2 for n in lines), (chart, lines)
    assert lsid in dom.text["txns"], dom.text["txns"]
    assert "page.t" in dom.text["txns"]
