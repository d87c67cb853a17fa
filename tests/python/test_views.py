"""Read-only views (create with viewOn/pipeline) through pymongo."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure


def test_views_read_through_their_pipeline(client, db):
    db.orders.insert_many(
        [{"_id": i, "cust": "ann" if i % 2 else "bob", "total": i * 10} for i in range(1, 7)]
    )
    db.create_collection("big", viewOn="orders", pipeline=[{"$match": {"total": {"$gte": 30}}}])
    db.command("create", "ann_big", viewOn="big", pipeline=[{"$match": {"cust": "ann"}}])
    views = {c["name"]: c for c in db.list_collections()}
    assert views["big"]["type"] == "view" and views["big"]["info"]["readOnly"] is True
    assert views["orders"]["type"] == "collection"
    assert sorted(d["_id"] for d in db.big.find()) == [3, 4, 5, 6]
    assert [d["_id"] for d in db.big.find({"cust": "bob"}, sort=[("total", -1)], limit=1)] == [6]
    assert db.big.count_documents({}) == 4
    assert db.big.estimated_document_count() == 4
    assert sorted(db.big.distinct("cust")) == ["ann", "bob"]
    # A view on a view.
    assert sorted(d["_id"] for d in db.ann_big.find()) == [3, 5]
    got = list(db.big.aggregate([{"$group": {"_id": "$cust", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]))
    assert got == [{"_id": "ann", "n": 2}, {"_id": "bob", "n": 2}]
    # Views follow their source: a new order shows up at once.
    db.orders.insert_one({"_id": 7, "cust": "ann", "total": 70})
    assert db.ann_big.count_documents({}) == 3
    # Inside a transaction a view sees the transaction's own writes.
    with client.start_session() as s:
        with s.start_transaction():
            db.orders.insert_one({"_id": 8, "cust": "ann", "total": 80}, session=s)
            assert db.ann_big.count_documents({}, session=s) == 4
            assert db.ann_big.count_documents({}) == 3


def test_views_refuse_writes(db):
    db.src.insert_one({"_id": 1})
    db.create_collection("v", viewOn="src", pipeline=[])
    for write in (
        lambda: db.v.insert_one({"_id": 2}),
        lambda: db.v.update_one({"_id": 1}, {"$set": {"a": 1}}),
        lambda: db.v.delete_one({"_id": 1}),
        lambda: db.v.find_one_and_delete({"_id": 1}),
        lambda: db.v.create_index("a"),
    ):
        with pytest.raises(OperationFailure) as e:
            write()
        assert e.value.code == 166
    with pytest.raises(OperationFailure) as e:
        db.command("create", "bad", viewOn="src", pipeline=[{"$out": "x"}])
    assert e.value.code == 167
    db.drop_collection("v")
    assert "v" not in db.list_collection_names()
    assert db.src.count_documents({}) == 1


def test_view_cycles_end_in_an_error(db):
    db.command("create", "va", viewOn="vb", pipeline=[])
    db.command("create", "vb", viewOn="va", pipeline=[])
    with pytest.raises(OperationFailure) as e:
        list(db.va.find())
    assert e.value.code == 165  # ViewDepthLimitExceeded
    db.src.insert_one({"_id": 1})
    db.command(
        "create",
        "selfish",
        viewOn="src",
        pipeline=[{"$lookup": {"from": "selfish", "localField": "_id", "foreignField": "_id", "as": "me"}}],
    )
    with pytest.raises(OperationFailure) as e:
        list(db.selfish.find())
    assert "depth" in str(e.value)
    db.command("ping")  # the server is still there
