"""findAndModify through pymongo's find_one_and_* helpers, inside and outside transactions."""

from __future__ import annotations

import pytest
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure


def test_update_returns_before_or_after(db):
    db.c.insert_many([{"_id": 1, "n": 1, "k": "x"}, {"_id": 2, "n": 5, "k": "x"}])
    before = db.c.find_one_and_update({"k": "x"}, {"$inc": {"n": 10}}, sort=[("n", -1)])
    assert before == {"_id": 2, "n": 5, "k": "x"}
    after = db.c.find_one_and_update(
        {"_id": 1}, {"$inc": {"n": 1}}, projection={"n": 1, "_id": 0}, return_document=ReturnDocument.AFTER
    )
    assert after == {"n": 2}
    assert db.c.find_one({"_id": 2})["n"] == 15


def test_upsert_replace_and_delete(db):
    created = db.c.find_one_and_update(
        {"_id": "new"}, {"$set": {"v": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert created == {"_id": "new", "v": 1}
    assert db.c.find_one_and_update({"_id": "none"}, {"$set": {"v": 1}}) is None
    replaced = db.c.find_one_and_replace({"_id": "new"}, {"w": 2}, return_document=ReturnDocument.AFTER)
    assert replaced == {"_id": "new", "w": 2}
    assert db.c.find_one_and_delete({"_id": "new"}) == {"_id": "new", "w": 2}
    assert db.c.find_one({"_id": "new"}) is None
    assert db.c.find_one_and_delete({"_id": "new"}) is None


def test_invalid_combinations_are_refused(db):
    with pytest.raises(OperationFailure) as e:
        db.command("findAndModify", "c", query={}, remove=True, update={"$set": {"a": 1}})
    assert e.value.code == 9
    with pytest.raises(OperationFailure) as e:
        db.command("findAndModify", "c", query={})
    assert e.value.code == 9


def test_inside_a_transaction(client, db):
    db.c.insert_one({"_id": 1, "n": 0})
    with client.start_session() as s:
        with s.start_transaction():
            got = db.c.find_one_and_update(
                {"_id": 1}, {"$inc": {"n": 1}}, session=s, return_document=ReturnDocument.AFTER
            )
            assert got["n"] == 1
            assert db.c.find_one({"_id": 1})["n"] == 0  # not visible outside yet
    assert db.c.find_one({"_id": 1})["n"] == 1
