"""The profiler (issue 15, item 5): `profile`, `system.profile` with mongod's fields, the slow
query log, through pymongo as ODM test suites use it (count the queries an operation sent)."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure


@pytest.fixture()
def profiled(db):
    db.items.insert_many([{"a": i, "tag": "x" if i % 2 else "y"} for i in range(40)])
    db.items.create_index("a")
    db.command("profile", 2)
    yield db
    db.command("profile", 0, slowms=100, sampleRate=1.0, filter="unset")


def entries(db, **match):
    return list(db.system.profile.find(match))


def test_profile_reports_and_changes_the_settings(db):
    assert db.command("profile", -1)["was"] == 0
    before = db.command("profile", 1, slowms=7, sampleRate=0.5)
    assert (before["was"], before["slowms"], before["sampleRate"]) == (0, 100, 1.0)
    now = db.command("profile", -1)
    assert (now["was"], now["slowms"], now["sampleRate"]) == (1, 7, 0.5)
    assert db.system.profile.options() == {"capped": True, "size": 1024 * 1024}
    db.command("profile", 0, slowms=100, sampleRate=1.0)
    for bad, code in [({"sampleRate": 2.0}, 2), ({"slowms": "x"}, 14), ({"unknown": 1}, 40415)]:
        with pytest.raises(OperationFailure) as e:
            db.command("profile", 1, **bad)
        assert e.value.code == code, bad
    with pytest.raises(OperationFailure) as e:
        db.command("profile", 3)
    assert e.value.code == 2


def test_level_two_records_every_operation_with_mongods_fields(profiled):
    db = profiled
    assert db.items.find_one({"a": 7})["a"] == 7
    assert len(list(db.items.find({"tag": "x"}))) == 20
    db.items.update_one({"a": 3}, {"$set": {"b": 1}})
    db.items.delete_one({"a": 4})
    db.items.insert_one({"a": 100})

    (point,) = entries(db, op="query", **{"command.filter": {"a": 7}})
    assert point["ns"] == f"{db.name}.items"
    assert point["planSummary"] == "IXSCAN { a: 1 }"
    assert (point["keysExamined"], point["docsExamined"], point["nreturned"]) == (1, 1, 1)
    for field in ["millis", "ts", "client", "responseLength", "protocol", "numYield", "user"]:
        assert field in point, field

    (scan,) = entries(db, op="query", **{"command.filter": {"tag": "x"}})
    assert scan["planSummary"] == "COLLSCAN"
    assert scan["docsExamined"] == 40 and scan["nreturned"] == 20

    (update,) = entries(db, op="update")
    assert (update["nMatched"], update["nModified"]) == (1, 1)
    (remove,) = entries(db, op="remove")
    assert remove["ndeleted"] == 1
    (insert,) = entries(db, op="insert")
    assert insert["ninserted"] == 1
    # Reads of system.profile itself are not profiled.
    assert entries(db, ns=f"{db.name}.system.profile") == []


def test_get_more_is_profiled_as_getmore(profiled):
    db = profiled
    assert len(list(db.items.find().batch_size(15))) == 40
    getmores = entries(db, op="getmore")
    assert [e["nreturned"] for e in getmores] == [15, 10]


def test_level_one_records_only_slow_operations_and_a_filter_replaces_slowness(profiled):
    db = profiled
    db.command("profile", 1, slowms=60_000)
    db.system.profile.drop()
    db.items.find_one({"a": 1})
    assert entries(db) == []
    # Everything is slower than -1 ms.
    db.command("profile", 1, slowms=-1)
    db.items.find_one({"a": 2})
    assert len(entries(db, op="query")) == 1
    db.command("profile", 1, slowms=60_000, filter={"op": "update"})
    db.system.profile.drop()
    db.items.find_one({"a": 3})
    db.items.update_one({"a": 5}, {"$set": {"c": 1}})
    assert [e["op"] for e in entries(db)] == ["update"]
    assert db.command("profile", -1)["filter"] == {"op": "update"}


def test_failed_operations_carry_their_error(profiled):
    db = profiled
    with pytest.raises(OperationFailure):
        db.command("find", "items", filter={"$bogus": 1})
    (failed,) = entries(db, op="query")
    assert failed["ok"] == 0.0 and failed["errCode"] == 2


def test_system_profile_stays_within_its_size(profiled):
    db = profiled
    for i in range(3000):
        db.items.find_one({"a": i % 40})
    size = db.command("collStats", "system.profile")["size"]
    assert size <= 1024 * 1024
    assert db.system.profile.count_documents({}) < 3000
