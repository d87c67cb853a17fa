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


def test_a_view_has_its_own_default_collation(db):
    db.names.insert_many([{"_id": 1, "n": "a"}, {"_id": 2, "n": "A"}, {"_id": 3, "n": "b"}])
    ci = {"locale": "en", "strength": 2}
    db.command("create", "names_ci", viewOn="names", pipeline=[], collation=ci)
    info = next(db.list_collections(filter={"name": "names_ci"}))
    assert info["type"] == "view" and info["options"]["collation"]["locale"] == "en"
    assert info["options"]["collation"]["strength"] == 2
    # Queries on the view use its collation; the collection itself stays binary.
    assert sorted(d["_id"] for d in db.names_ci.find({"n": "a"})) == [1, 2]
    assert [d["_id"] for d in db.names.find({"n": "a"})] == [1]
    assert db.names_ci.count_documents({"n": "A"}) == 2
    assert sorted(db.names_ci.distinct("n")) in (["a", "b"], ["A", "b"])
    agg = list(db.names_ci.aggregate([{"$match": {"n": "B"}}]))
    assert [d["_id"] for d in agg] == [3]
    # Naming the view's own collation is fine; another one is refused, as mongod does.
    assert len(list(db.names_ci.find({"n": "a"}, collation=ci))) == 2
    with pytest.raises(OperationFailure) as e:
        list(db.names_ci.find({"n": "a"}, collation={"locale": "fr"}))
    assert e.value.code == 167
    with pytest.raises(OperationFailure) as e:
        list(db.names_ci.aggregate([], collation={"locale": "simple"}))
    assert e.value.code == 167
    # A view without a collation is simple, even over a collection with a default one.
    db.command("create", "names_ci_coll", collation=ci)
    db.names_ci_coll.insert_many([{"_id": 1, "n": "a"}, {"_id": 2, "n": "A"}])
    assert db.names_ci_coll.count_documents({"n": "a"}) == 2
    db.command("create", "names_plain", viewOn="names_ci_coll", pipeline=[])
    assert [d["_id"] for d in db.names_plain.find({"n": "a"})] == [1]
    with pytest.raises(OperationFailure) as e:
        list(db.names_plain.find({}, collation=ci))
    assert e.value.code == 167
    # Views on views share their collation.
    db.command("create", "names_ci2", viewOn="names_ci", pipeline=[], collation=ci)
    assert db.names_ci2.count_documents({"n": "a"}) == 2
    with pytest.raises(OperationFailure) as e:
        db.command("create", "names_mixed", viewOn="names_ci", pipeline=[])
    assert e.value.code == 167
