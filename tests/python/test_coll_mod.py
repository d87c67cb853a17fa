"""`collMod` beyond validation and pre-images, as mongod 7.0 takes it: an index's
`expireAfterSeconds` and `hidden`, a view's definition, a capped collection's limits, a
time-series collection's granularity and the TTL of time-series and clustered collections."""

from __future__ import annotations

import datetime
import time

import pytest
from pymongo.errors import OperationFailure


def code_of(db, **cmd) -> int:
    with pytest.raises(OperationFailure) as e:
        db.command("collMod", *cmd.pop("_name"), **cmd)
    return e.value.code


def winning_stage_index(explain: dict) -> str | None:
    plan = explain["queryPlanner"]["winningPlan"]
    while plan.get("inputStage") is not None and plan["stage"] != "IXSCAN":
        plan = plan["inputStage"]
    return plan.get("indexName")


def test_hiding_an_index_keeps_it_but_stops_the_planner_using_it(db):
    db.c.insert_many([{"a": i} for i in range(100)])
    db.c.create_index("a")
    assert winning_stage_index(db.c.find({"a": 5}).explain()) == "a_1"
    r = db.command("collMod", "c", index={"name": "a_1", "hidden": True})
    assert (r["hidden_old"], r["hidden_new"]) == (False, True)
    assert next(i for i in db.c.list_indexes() if i["name"] == "a_1")["hidden"] is True
    assert winning_stage_index(db.c.find({"a": 5}).explain()) is None
    assert [d["a"] for d in db.c.find({"a": 5})] == [5]
    # A hidden index cannot be hinted, by name or by key pattern.
    for hint in ("a_1", [("a", 1)]):
        with pytest.raises(OperationFailure) as e:
            list(db.c.find({"a": 5}).hint(hint))
        assert e.value.code == 2
    # Writes keep it up to date: unhidden, it answers for documents written meanwhile.
    db.c.insert_one({"a": 1000})
    r = db.command("collMod", "c", index={"keyPattern": {"a": 1}, "hidden": False})
    assert (r["hidden_old"], r["hidden_new"]) == (True, False)
    assert "hidden" not in next(i for i in db.c.list_indexes() if i["name"] == "a_1")
    assert winning_stage_index(db.c.find({"a": 1000}).explain()) == "a_1"
    assert [d["a"] for d in db.c.find({"a": 1000}).hint("a_1")] == [1000]


def test_an_index_ttl_is_changed_or_added(db):
    db.c.create_index("at", expireAfterSeconds=3600)
    r = db.command("collMod", "c", index={"name": "at_1", "expireAfterSeconds": 60})
    assert (r["expireAfterSeconds_old"], r["expireAfterSeconds_new"]) == (3600, 60)
    assert next(i for i in db.c.list_indexes() if i["name"] == "at_1")["expireAfterSeconds"] == 60
    # A single-field index without a TTL becomes a TTL index (mongod 5.1+).
    db.c.create_index("b")
    r = db.command("collMod", "c", index={"name": "b_1", "expireAfterSeconds": 5})
    assert "expireAfterSeconds_old" not in r and r["expireAfterSeconds_new"] == 5
    db.c.create_index([("x", 1), ("y", 1)])
    assert code_of(db, _name=["c"], index={"name": "x_1_y_1", "expireAfterSeconds": 5}) == 72
    assert code_of(db, _name=["c"], index={"name": "nope", "hidden": True}) == 27
    assert code_of(db, _name=["c"], index={"name": "_id_", "hidden": True}) == 2
    assert code_of(db, _name=["c"], index={"name": "b_1"}) == 72
    assert code_of(db, _name=["c"], index={"name": "b_1", "keyPattern": {"b": 1}, "hidden": True}) == 72
    assert code_of(db, _name=["c"], index={"name": "b_1", "unique": True}) == 72
    assert code_of(db, _name=["c"], index={"name": "b_1", "bogus": 1}) == 40415


def test_expired_documents_go_after_a_ttl_is_shortened(client, db):
    db.c.create_index("at", expireAfterSeconds=10 * 24 * 3600)
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    db.c.insert_many([{"at": old}, {"at": datetime.datetime.now(datetime.timezone.utc)}])
    was = client.admin.command("getParameter", 1, ttlMonitorSleepSecs=1)["ttlMonitorSleepSecs"]
    client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
    try:
        db.command("collMod", "c", index={"name": "at_1", "expireAfterSeconds": 60})
        deadline = time.monotonic() + 15
        while db.c.count_documents({}) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert db.c.count_documents({}) == 1
    finally:
        client.admin.command("setParameter", 1, ttlMonitorSleepSecs=was)


def test_a_view_is_redefined(db):
    db.base.insert_many([{"_id": i, "k": i % 2} for i in range(6)])
    db.other.insert_one({"_id": "o"})
    db.create_collection("v", viewOn="base", pipeline=[{"$match": {"k": 0}}])
    assert [d["_id"] for d in db.v.find()] == [0, 2, 4]
    db.command("collMod", "v", viewOn="base", pipeline=[{"$match": {"k": 1}}])
    assert [d["_id"] for d in db.v.find()] == [1, 3, 5]
    db.command("collMod", "v", viewOn="other", pipeline=[])
    assert [d["_id"] for d in db.v.find()] == ["o"]
    opts = next(db.list_collections(filter={"name": "v"}))["options"]
    assert opts["viewOn"] == "other" and opts["pipeline"] == []
    assert code_of(db, _name=["base"], viewOn="other", pipeline=[]) == 72
    assert code_of(db, _name=["v"], validator={"a": 1}) == 72


def test_capped_limits_are_changed_and_the_next_insert_trims(db):
    db.create_collection("cap", capped=True, size=1 << 20, max=10)
    db.cap.insert_many([{"n": i} for i in range(10)])
    db.command("collMod", "cap", cappedMax=3)
    opts = next(db.list_collections(filter={"name": "cap"}))["options"]
    assert opts["max"] == 3
    db.cap.insert_one({"n": 10})
    assert [d["n"] for d in db.cap.find()] == [8, 9, 10]
    db.command("collMod", "cap", cappedSize=8192)
    assert next(db.list_collections(filter={"name": "cap"}))["options"]["size"] == 8192
    assert code_of(db, _name=["cap"], cappedSize=-1) == 2
    assert code_of(db, _name=["cap"], cappedMax="x") == 14


def test_timeseries_granularity_and_expiry(db):
    db.create_collection("ts", timeseries={"timeField": "t", "metaField": "m"})
    db.command("collMod", "ts", timeseries={"granularity": "minutes"})
    ts = next(db.list_collections(filter={"name": "ts"}))["options"]["timeseries"]
    assert ts == {"timeField": "t", "metaField": "m", "granularity": "minutes", "bucketMaxSpanSeconds": 86400}
    assert code_of(db, _name=["ts"], timeseries={"granularity": "seconds"}) == 72
    assert code_of(db, _name=["ts"], timeseries={"timeField": "u"}) == 40415
    db.command("collMod", "ts", expireAfterSeconds=600)
    assert next(db.list_collections(filter={"name": "ts"}))["options"]["expireAfterSeconds"] == 600
    db.command("collMod", "ts", expireAfterSeconds="off")
    assert "expireAfterSeconds" not in next(db.list_collections(filter={"name": "ts"}))["options"]
    # The hidden TTL index never shows, whatever collMod did.
    assert [i["name"] for i in db.ts.list_indexes()] == ["m_1_t_1"]
    db.create_collection("plain")
    assert code_of(db, _name=["plain"], timeseries={"granularity": "hours"}) == 72
    assert code_of(db, _name=["plain"], expireAfterSeconds=5) == 72
    db.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
    db.command("collMod", "clustered", expireAfterSeconds=30)
    assert next(db.list_collections(filter={"name": "clustered"}))["options"]["expireAfterSeconds"] == 30


def test_a_clustered_collection_expires_by_its_id(client, db):
    # `create` with both options failed before (a TTL on `_id` was refused as the `_id` index's).
    db.create_collection(
        "events", clusteredIndex={"key": {"_id": 1}, "unique": True}, expireAfterSeconds=10 * 24 * 3600
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    db.events.insert_many([{"_id": now - datetime.timedelta(hours=2)}, {"_id": now}])
    was = client.admin.command("getParameter", 1, ttlMonitorSleepSecs=1)["ttlMonitorSleepSecs"]
    client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
    try:
        db.command("collMod", "events", expireAfterSeconds=3600)
        deadline = time.monotonic() + 15
        while db.events.count_documents({}) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert db.events.count_documents({}) == 1
    finally:
        client.admin.command("setParameter", 1, ttlMonitorSleepSecs=was)
