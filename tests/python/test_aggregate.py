"""The first slice of aggregation through pymongo: count_documents, $group accumulators, stage
errors, and aggregate inside a transaction."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure


def test_count_documents_with_filter_skip_and_limit(db):
    db.c.insert_many([{"_id": i, "k": i % 3} for i in range(30)])
    assert db.c.count_documents({}) == 30
    assert db.c.count_documents({"k": 1}) == 10
    assert db.c.count_documents({"k": 1}, skip=4, limit=3) == 3
    assert db.empty.count_documents({}) == 0


def test_group_accumulators(db):
    db.sales.insert_many(
        [
            {"_id": 1, "item": "tea", "qty": 2, "price": 1.5},
            {"_id": 2, "item": "tea", "qty": 3, "price": 2.5},
            {"_id": 3, "item": "milk", "qty": 1, "price": 1.0},
        ]
    )
    out = list(
        db.sales.aggregate(
            [
                {"$match": {"qty": {"$gte": 1}}},
                {
                    "$group": {
                        "_id": "$item",
                        "n": {"$sum": 1},
                        "qty": {"$sum": "$qty"},
                        "avg": {"$avg": "$price"},
                        "min": {"$min": "$price"},
                        "max": {"$max": "$price"},
                        "first": {"$first": "$_id"},
                        "ids": {"$push": "$_id"},
                    }
                },
                {"$sort": {"_id": 1}},
            ]
        )
    )
    assert out == [
        {"_id": "milk", "n": 1, "qty": 1, "avg": 1.0, "min": 1.0, "max": 1.0, "first": 3, "ids": [3]},
        {"_id": "tea", "n": 2, "qty": 5, "avg": 2.0, "min": 1.5, "max": 2.5, "first": 1, "ids": [1, 2]},
    ]
    assert list(db.sales.aggregate([{"$count": "total"}])) == [{"total": 3}]
    assert list(db.sales.aggregate([{"$sort": {"qty": -1}}, {"$limit": 1}, {"$project": {"item": 1}}])) == [
        {"_id": 2, "item": "tea"}
    ]


def test_unknown_stage_and_expression_are_refused(db):
    db.c.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as e:
        list(db.c.aggregate([{"$frobnicate": {}}]))
    assert e.value.code == 40324
    with pytest.raises(OperationFailure) as e:
        list(db.c.aggregate([{"$group": {"_id": {"$frobnicate": [1, 2]}}}]))
    assert e.value.code == 168


def test_aggregate_in_a_transaction_sees_its_own_writes(client, db):
    db.c.insert_many([{"_id": i, "v": 1} for i in range(5)])
    with client.start_session() as s:
        with s.start_transaction():
            db.c.insert_one({"_id": 99, "v": 10}, session=s)
            got = list(db.c.aggregate([{"$group": {"_id": None, "total": {"$sum": "$v"}}}], session=s))
            assert got == [{"_id": None, "total": 15}]
            assert db.c.count_documents({}, session=s) == 6
    assert db.c.count_documents({}) == 6


def test_out_replaces_and_merge_combines(client, db):
    from pymongo.errors import OperationFailure

    db.src.insert_many([{"_id": i, "g": i % 2} for i in range(6)])
    db.dst.insert_one({"_id": "old"})
    assert list(db.src.aggregate([{"$match": {"g": 0}}, {"$out": "dst"}])) == []
    assert sorted(d["_id"] for d in db.dst.find()) == [0, 2, 4]
    db.dst.update_one({"_id": 0}, {"$set": {"kept": True}})
    db.src.aggregate([{"$merge": {"into": "dst", "whenMatched": "merge"}}])
    assert db.dst.count_documents({}) == 6
    assert db.dst.find_one({"_id": 0}) == {"_id": 0, "g": 0, "kept": True}
    db.src.aggregate([{"$merge": {"into": "dst", "whenMatched": "keepExisting",
                                  "whenNotMatched": "discard"}}])
    assert db.dst.count_documents({}) == 6
    with pytest.raises(OperationFailure) as e:
        db.src.aggregate([{"$merge": {"into": "dst", "whenMatched": "fail"}}])
    assert e.value.code == 11000
    with client.start_session() as s:
        s.start_transaction()
        with pytest.raises(OperationFailure) as e:
            db.src.aggregate([{"$out": "dst2"}], session=s)
        assert e.value.code == 263
