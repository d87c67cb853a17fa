"""find's returnKey, showRecordId, min and max (as MongoDB 7.0 answers them) through pymongo."""

from __future__ import annotations

import pytest
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import OperationFailure


def _fill(coll, n=10):
    coll.insert_many([{"_id": i, "j": i, "k": i * 10} for i in range(n)])


def test_return_key_shows_the_index_entry(db):
    _fill(db.c)
    db.c.create_index([("j", ASCENDING)])
    got = list(db.c.find({"j": {"$gte": 7}}, return_key=True).sort("j", ASCENDING))
    assert got == [{"j": 7}, {"j": 8}, {"j": 9}]
    # The projection is ignored with returnKey.
    got = list(db.c.find({"j": 3}, {"k": 1}, return_key=True))
    assert got == [{"j": 3}]
    # A compound index shows all its fields.
    db.c.create_index([("k", DESCENDING), ("j", ASCENDING)])
    got = list(db.c.find({"k": 50}, return_key=True).hint([("k", DESCENDING), ("j", ASCENDING)]))
    assert got == [{"k": 50, "j": 5}]


def test_return_key_multikey_shows_the_matching_entry(db):
    db.m.insert_one({"_id": 1, "tags": [5, 1, 9]})
    db.m.create_index("tags")
    assert list(db.m.find({"tags": {"$gt": 6}}, return_key=True)) == [{"tags": 9}]
    assert list(db.m.find({"tags": {"$lt": 3}}, return_key=True)) == [{"tags": 1}]


def test_return_key_collscan_and_id(db):
    _fill(db.c, 3)
    # A collection scan reads no index: empty documents, one per match.
    assert list(db.c.find({"k": {"$gte": 10}}, return_key=True)) == [{}, {}]
    # The _id point lookup and _id ranges show the _id key.
    assert list(db.c.find({"_id": 2}, return_key=True)) == [{"_id": 2}]
    assert list(db.c.find({"_id": {"$lt": 2}}, return_key=True).sort("_id", 1)) == [
        {"_id": 0},
        {"_id": 1},
    ]


def test_return_key_streams_across_batches(db):
    _fill(db.c, 50)
    db.c.create_index("j")
    got = list(db.c.find({"j": {"$gte": 0}}, return_key=True, batch_size=7))
    assert got == [{"j": i} for i in range(50)]
    assert list(db.c.find({}, return_key=True, batch_size=7)) == [{}] * 50


def test_show_record_id_normal_collection(db):
    _fill(db.c, 20)
    docs = list(db.c.find({}, batch_size=6, show_record_id=True))
    assert len(docs) == 20
    for d in docs:
        # Appended at the end, an int64, positive.
        assert list(d)[-1] == "$recordId"
        assert isinstance(d["$recordId"], int) and d["$recordId"] > 0
        assert d["k"] == d["_id"] * 10
    ids = {d["_id"]: d["$recordId"] for d in docs}
    assert len(set(ids.values())) == 20
    # Stable: the same document shows the same record id along another access path.
    again = db.c.find_one({"_id": 7}, show_record_id=True)
    assert again["$recordId"] == ids[7]
    # Kept by an inclusion projection, which would otherwise drop it.
    proj = db.c.find_one({"_id": 7}, {"k": 1}, show_record_id=True)
    assert proj == {"_id": 7, "k": 70, "$recordId": ids[7]}
    # Without the option there is no $recordId.
    assert "$recordId" not in db.c.find_one({"_id": 7})


def test_show_record_id_capped_is_insertion_order(db):
    db.create_collection("cap", capped=True, size=100000)
    db.cap.insert_many([{"_id": 100 - i, "v": i} for i in range(5)])
    docs = list(db.cap.find({}, show_record_id=True))
    assert [d["v"] for d in docs] == [0, 1, 2, 3, 4]
    rids = [d["$recordId"] for d in docs]
    assert rids == sorted(rids) and len(set(rids)) == 5
    assert rids[-1] - rids[0] == 4


def test_min_max_with_hint(db):
    _fill(db.c)
    db.c.create_index("j")
    hint = [("j", ASCENDING)]
    got = [d["j"] for d in db.c.find().min([("j", 3)]).max([("j", 6)]).hint(hint)]
    assert got == [3, 4, 5]
    assert len(db.c.find().min([("j", 3)]).hint(hint).to_list()) == 7
    assert len(db.c.find().max([("j", 3)]).hint(hint).to_list()) == 3
    # The filter still applies inside the bounds.
    got = [d["j"] for d in db.c.find({"k": {"$ne": 40}}).min([("j", 3)]).max([("j", 6)]).hint(hint)]
    assert got == [3, 5]
    # With returnKey, the keys of the bounded walk.
    got = list(db.c.find(return_key=True).min([("j", 8)]).hint(hint))
    assert got == [{"j": 8}, {"j": 9}]


def test_min_max_compound_descending_and_id(db):
    _fill(db.c)
    db.c.create_index([("j", ASCENDING), ("k", DESCENDING)])
    hint = [("j", ASCENDING), ("k", DESCENDING)]
    cur = db.c.find().min([("j", 2), ("k", 20)]).max([("j", 4), ("k", 40)]).hint(hint)
    assert [d["j"] for d in cur] == [2, 3]
    # Descending field: min is the start of the walk in index order.
    db.c.create_index([("k", DESCENDING)])
    cur = db.c.find().min([("k", 60)]).max([("k", 30)]).hint([("k", DESCENDING)])
    assert [d["k"] for d in cur] == [60, 50, 40]
    # The _id index.
    cur = db.c.find().min([("_id", 5)]).max([("_id", 8)]).hint([("_id", 1)])
    assert [d["_id"] for d in cur] == [5, 6, 7]


def test_min_max_explain_shows_the_bounds(db):
    _fill(db.c)
    db.c.create_index("j")
    plan = db.c.find().min([("j", 3)]).max([("j", 6)]).hint([("j", 1)]).explain()
    stage = plan["queryPlanner"]["winningPlan"]
    while stage["stage"] != "IXSCAN":
        stage = stage["inputStage"]
    assert stage["indexName"] == "j_1"
    assert stage["indexBounds"] == {"j": ["[3, 6)"]}


def _code(excinfo) -> int:
    return excinfo.value.code


def test_min_max_errors(db):
    _fill(db.c)
    db.c.create_index([("j", ASCENDING), ("k", ASCENDING)])
    hint = [("j", ASCENDING), ("k", ASCENDING)]
    with pytest.raises(OperationFailure) as e:
        db.command("find", "c", min={"j": 3})
    assert _code(e) == 51173
    with pytest.raises(OperationFailure) as e:
        db.c.find().max([("k", 3), ("j", 3)]).hint(hint).to_list()
    assert _code(e) == 51174
    with pytest.raises(OperationFailure) as e:
        db.c.find().min([("j", 3)]).hint(hint).to_list()
    assert _code(e) == 51174
    with pytest.raises(OperationFailure) as e:
        db.c.find().min([("j", 5), ("k", 1)]).max([("j", 5), ("k", 1)]).hint(hint).to_list()
    assert _code(e) == 51175
    with pytest.raises(OperationFailure) as e:
        db.c.find().min([("j", 6), ("k", 1)]).max([("j", 5), ("k", 1)]).hint(hint).to_list()
    assert _code(e) == 51175
    with pytest.raises(OperationFailure):
        db.c.find().min([("j", 3)]).hint("no_such_index").to_list()


def test_options_refused_on_views(db):
    _fill(db.c, 3)
    db.create_collection("v", viewOn="c", pipeline=[])
    for option in ({"returnKey": True}, {"showRecordId": True}, {"min": {"j": 1}}):
        with pytest.raises(OperationFailure) as e:
            db.command("find", "v", **option)
        assert _code(e) == 2
    # Off is fine.
    assert len(db.command("find", "v", returnKey=False)["cursor"]["firstBatch"]) == 3
