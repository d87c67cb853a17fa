"""--metrics-addr (issue 16, item 4): the Prometheus text exposition parses with Prometheus'
own client library, and its counters follow what the server does."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from bson import Int64, SON
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


def wait_for(url: str, ready, timeout: float = 15.0) -> dict:
    """Scrapes until `ready(samples)` holds (the last scrape either way)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_checkpoints_are_counted_and_timed():
    srv = MangroveServer(extra_args=["--metrics-addr", "127.0.0.1:0", "--checkpoint-interval-secs", "1"])
    try:
        url = srv.metrics_base + "/metrics"
        before = scrape(url)
        done = before[("mangrove_checkpoints_total", ())]
        c = MongoClient(srv.uri, serverSelectionTimeoutMS=10_000)
        c.m.t.insert_many([{"i": i} for i in range(100)])
        after = wait_for(url, lambda s: s[("mangrove_checkpoints_total", ())] > done)
        c.close()
        n = after[("mangrove_checkpoints_total", ())]
        assert n > done
        assert after[("mangrove_checkpoint_duration_seconds_count", ())] == n
        assert after[("mangrove_checkpoint_duration_seconds_bucket", (("le", "+Inf"),))] == n
        assert after[("mangrove_checkpoint_duration_seconds_sum", ())] > 0
    finally:
        srv.stop()


def test_retried_writes_are_counted(metered):
    c = MongoClient(metered.uri, serverSelectionTimeoutMS=10_000)
    name = "mangrove_retryable_writes_retried_total"
    before = scrape(metered.metrics_url)
    # Its own client: the session (and its txnNumber 7) must not go back to `c`'s pool.
    own = MongoClient(metered.uri, serverSelectionTimeoutMS=10_000)
    with own.start_session() as s:
        # The same statement twice under one txnNumber: the second is answered from the record.
        insert = SON([("insert", "retried"), ("documents", [{"_id": 1}]), ("txnNumber", Int64(7))])
        assert own.m.command(insert, session=s)["n"] == 1
        assert own.m.command(insert, session=s)["n"] == 1
    own.close()
    assert c.m.retried.count_documents({}) == 1
    after = scrape(metered.metrics_url)
    assert after[(name, ())] - before[(name, ())] == 1

    # A write outside a transaction that meets the transaction's write waits and retries.
    name = "mangrove_write_conflicts_retried_total"
    c.m.held.insert_one({"_id": 1, "n": 0})
    with c.start_session() as s:
        s.start_transaction()
        c.m.held.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=s)
        blocked = threading.Thread(target=lambda: c.m.held.update_one({"_id": 1}, {"$inc": {"n": 10}}))
        blocked.start()
        waiting = wait_for(metered.metrics_url, lambda x: x[(name, ())] > after[(name, ())])
        s.commit_transaction()
    blocked.join(10)
    assert waiting[(name, ())] > after[(name, ())]
    assert c.m.held.find_one({"_id": 1})["n"] == 11
    c.close()


def test_change_streams_and_their_events_are_counted(metered):
    c = MongoClient(metered.uri, serverSelectionTimeoutMS=10_000)
    opened, events = "mangrove_change_streams_open", "mangrove_change_events_delivered_total"
    before = scrape(metered.metrics_url)
    with c.m.w.watch(max_await_time_ms=200) as stream:
        during = scrape(metered.metrics_url)
        assert during[(opened, ())] - before[(opened, ())] == 1
        c.m.w.insert_many([{"a": 1}, {"a": 2}])
        seen = [stream.next()["fullDocument"]["a"] for _ in range(2)]
        assert seen == [1, 2]
    after = wait_for(metered.metrics_url, lambda s: s[(opened, ())] == before[(opened, ())])
    assert after[(opened, ())] == before[(opened, ())]
    assert after[(events, ())] - before[(events, ())] == 2
    c.close()


def test_streams_watching_alike_share_batches_and_each_sees_every_event(metered):
    """Streams with the same options take batches one of them read (changes/board.rs): each
    still sees every event once, in order, with the same tokens as the others; a stream with
    other options or stages after $changeStream sees what it asked for."""
    c = MongoClient(metered.uri, serverSelectionTimeoutMS=10_000)
    coll = c.m.shared_batches
    coll.insert_many([{"_id": i, "n": 0} for i in range(20)])
    shared = "mangrove_change_events_shared_total"
    before = scrape(metered.metrics_url)
    transfers, inserts = 400, 50
    alike = [coll.watch(max_await_time_ms=100) for _ in range(4)]
    lookup = coll.watch(full_document="updateLookup", max_await_time_ms=100)
    matched = coll.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=100)

    def write():
        w = MongoClient(metered.uri)
        for i in range(transfers):
            with w.start_session() as s, s.start_transaction():
                w.m.shared_batches.update_one({"_id": i % 20}, {"$inc": {"n": 1}}, session=s)
                w.m.shared_batches.update_one({"_id": (i + 7) % 20}, {"$inc": {"n": -1}}, session=s)
            if i % 8 == 0:
                w.m.shared_batches.insert_one({"_id": 100 + i // 8})
        w.close()

    writer = threading.Thread(target=write)
    writer.start()
    expected = 2 * transfers + inserts

    def drain(stream, n):
        got = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            e = stream.try_next()
            if e is not None:
                got.append(e)
        return got

    wanted = [(s, expected) for s in [*alike, lookup]] + [(matched, inserts)]
    results = [None] * len(wanted)

    def drain_into(i):
        results[i] = drain(*wanted[i])

    readers = [threading.Thread(target=drain_into, args=(i,)) for i in range(len(wanted))]
    for r in readers:
        r.start()
    for r in readers:
        r.join(90)
    writer.join(60)
    *seen, looked_up, inserted = results
    for s in [*alike, lookup, matched]:
        assert s.try_next() is None, "no event beyond the writes"
        s.close()
    first = seen[0]
    assert len(first) == expected
    assert [e["operationType"] for e in first].count("insert") == inserts
    for other in seen[1:]:
        assert [e["_id"] for e in other] == [e["_id"] for e in first], "same events, same order"
    assert [e["_id"] for e in looked_up] == [e["_id"] for e in first]
    assert all("fullDocument" in e for e in looked_up if e["operationType"] == "update")
    assert not any("fullDocument" in e for e in first if e["operationType"] == "update")
    assert [e["_id"] for e in inserted] == [e["_id"] for e in first if e["operationType"] == "insert"]
    after = scrape(metered.metrics_url)
    assert after[(shared, ())] > before[(shared, ())], "the streams watching alike shared batches"
    c.close()
