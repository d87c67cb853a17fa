"""Time-series and clustered collections through pymongo (issue 15 item 3 and clustered
collections): options as mongod 7.0 checks and lists them, measurements kept one document each
in insertion order with repeatable `_id`s, the time field enforced, TTL by time, and clustered
collections' `_id` index shown as clustered."""

from __future__ import annotations

import datetime
import time

import pytest
from pymongo.errors import OperationFailure


def utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).replace(tzinfo=None)


def test_a_timeseries_collection_is_listed_and_queried_like_mongod(db):
    db.create_collection(
        "weather",
        timeseries={"timeField": "ts", "metaField": "sensor", "granularity": "minutes"},
        expireAfterSeconds=86400,
    )
    info = next(db.list_collections(filter={"name": "weather"}))
    assert info["type"] == "timeseries"
    assert info["options"]["timeseries"] == {
        "timeField": "ts",
        "metaField": "sensor",
        "granularity": "minutes",
        "bucketMaxSpanSeconds": 86400,
    }
    assert info["options"]["expireAfterSeconds"] == 86400
    # mongod's default index on (meta, time); no _id index, and the TTL machinery is hidden.
    assert [i["key"] for i in db.weather.list_indexes()] == [{"sensor": 1, "ts": 1}]
    now = time.time()
    docs = [{"_id": 1, "ts": utc(now - i), "sensor": i % 3, "temp": 20 + i} for i in range(30)]
    db.weather.insert_many(docs)
    # `_id`s repeat, as in mongod (no unique `_id` index on measurements).
    assert db.weather.count_documents({"_id": 1}) == 30
    # Unsorted reads come back in insertion order.
    assert [d["temp"] for d in db.weather.find()] == [20 + i for i in range(30)]
    assert db.weather.count_documents({"sensor": 2}) == 10
    hot = list(db.weather.aggregate([{"$group": {"_id": "$sensor", "max": {"$max": "$temp"}}}, {"$sort": {"_id": 1}}]))
    assert [h["max"] for h in hot] == [47, 48, 49]
    db.weather.update_many({"sensor": 0}, {"$set": {"checked": True}})
    assert db.weather.count_documents({"checked": True}) == 10
    assert db.weather.delete_many({"temp": {"$gte": 40}}).deleted_count == 10


def test_the_time_field_must_be_a_date(db):
    db.create_collection("m", timeseries={"timeField": "t"})
    for bad in ({"v": 1}, {"t": "yesterday", "v": 1}):
        with pytest.raises(OperationFailure) as e:
            db.m.insert_one(bad)
        assert e.value.code == 2
        assert "'t' must be present and contain a valid BSON UTC datetime value" in str(e.value)
    db.m.insert_one({"t": utc(time.time()), "v": 1})
    with pytest.raises(OperationFailure) as e:
        db.m.update_one({"v": 1}, {"$unset": {"t": 1}})
    assert e.value.code == 2
    assert db.m.count_documents({"t": {"$type": "date"}}) == 1


def test_timeseries_options_are_checked(db):
    cases = [
        ({"metaField": "m"}, 40414),
        ({"timeField": "t", "metaField": "t"}, 2),
        ({"timeField": "t", "granularity": "days"}, 2),
        ({"timeField": "t", "bucketMaxSpanSeconds": 60}, 72),
        ({"timeField": "t", "bucketMaxSpanSeconds": 60, "bucketRoundingSeconds": 30}, 72),
        ({"timeField": "t", "granularity": "hours", "bucketRoundingSeconds": 60}, 72),
        ({"timeField": "t", "what": 1}, 40415),
    ]
    for i, (spec, code) in enumerate(cases):
        with pytest.raises(OperationFailure) as e:
            db.create_collection(f"bad{i}", timeseries=spec)
        assert e.value.code == code, spec
    with pytest.raises(OperationFailure) as e:
        db.create_collection("plain", expireAfterSeconds=10)
    assert e.value.code == 72
    assert "bad0" not in db.list_collection_names()


def test_timeseries_writes_are_refused_in_transactions(client, db):
    db.create_collection("tx_ts", timeseries={"timeField": "t"})
    with client.start_session() as s:
        with pytest.raises(OperationFailure) as e:
            with s.start_transaction():
                db.tx_ts.insert_one({"t": utc(time.time())}, session=s)
        assert e.value.code == 263
    assert db.tx_ts.count_documents({}) == 0


def test_measurements_expire_by_their_time(client, db):
    db.create_collection("ttl_ts", timeseries={"timeField": "t"}, expireAfterSeconds=60)
    now = time.time()
    db.ttl_ts.insert_many([{"t": utc(now - 3600), "old": True}, {"t": utc(now), "old": False}])
    was = client.admin.command("getParameter", 1, ttlMonitorSleepSecs=1)["ttlMonitorSleepSecs"]
    client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
    try:
        deadline = time.time() + 20
        while db.ttl_ts.count_documents({"old": True}) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        client.admin.command("setParameter", 1, ttlMonitorSleepSecs=was)
    assert [d["old"] for d in db.ttl_ts.find()] == [False]


def test_clustered_collections_show_their_clustered_id_index(db):
    db.create_collection("clu", clusteredIndex={"key": {"_id": 1}, "unique": True, "name": "by id"})
    info = next(db.list_collections(filter={"name": "clu"}))
    assert info["options"]["clusteredIndex"] == {"key": {"_id": 1}, "unique": True, "name": "by id", "v": 2}
    assert list(db.clu.list_indexes()) == [{"v": 2, "key": {"_id": 1}, "name": "by id", "unique": True, "clustered": True}]
    db.clu.insert_many([{"_id": 3}, {"_id": 1}, {"_id": 2}])
    assert [d["_id"] for d in db.clu.find()] == [1, 2, 3]
    for bad in ({"key": {"a": 1}, "unique": True}, {"key": {"_id": 1}}, {"key": {"_id": 1}, "unique": False}):
        with pytest.raises(OperationFailure):
            db.create_collection("clu_bad", clusteredIndex=bad)
