"""--metrics-addr (issue 16, item 4): the Prometheus text exposition parses with Prometheus'
own client library, and its counters follow what the server does."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from conftest import MangroveServer


@pytest.fixture(scope="module")
def metered():
    srv = MangroveServer(extra_args=["--metrics-addr", "127.0.0.1:0"])
    srv.metrics_url = srv.metrics_base + "/metrics"
    yield srv
    srv.stop()


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_parse_and_follow_the_work(metered):
    before = scrape(metered.metrics_url)
    c = MongoClient(metered.uri, serverSelectionTimeoutMS=10_000)
    for i in range(20):
        c.m.t.insert_one({"_id": i})
    with c.start_session() as s:
        s.start_transaction()
        c.m.t.insert_one({"_id": "in-txn"}, session=s)
        open_now = scrape(metered.metrics_url)
        s.commit_transaction()
    list(c.m.t.find())
    after = scrape(metered.metrics_url)
    c.close()

    def delta(name, labels=()):
        return after[(name, labels)] - before.get((name, labels), 0)

    assert delta("mangrove_log_commits_total") >= 21
    assert after[("mangrove_log_group_commits_total", ())] <= after[("mangrove_log_commits_total", ())]
    assert delta("mangrove_operations_total", (("type", "insert"),)) == 21
    assert open_now[("mangrove_transactions_open", ())] == 1
    assert after[("mangrove_transactions_open", ())] == 0
    assert delta("mangrove_transactions_committed_total") == 1
    # One fdatasync observation per group-commit round.
    assert after[("mangrove_log_fdatasync_seconds_count", ())] == after[("mangrove_log_group_commits_total", ())]
    assert after[("mangrove_log_group_commit_size_sum", ())] == after[("mangrove_log_commits_total", ())]
    inserts = after[("mangrove_command_duration_seconds_count", (("command", "insert"),))]
    assert inserts - before.get(("mangrove_command_duration_seconds_count", (("command", "insert"),)), 0) == 21
    assert after[("mangrove_command_duration_seconds_bucket", (("command", "insert"), ("le", "+Inf")))] == inserts
    assert after[("mangrove_cache_limit_bytes", ())] > 0


def test_other_paths_and_methods_are_refused(metered):
    base = metered.metrics_url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/nope", timeout=10)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(metered.metrics_url, method="POST", data=b"x"), timeout=10)
    assert e.value.code == 405
