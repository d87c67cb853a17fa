"""Collations through pymongo: case- and accent-insensitive matching, locale-style ordering,
numericOrdering, and clear errors for options Mangrove does not implement."""

from __future__ import annotations

import pytest
from pymongo.collation import Collation
from pymongo.errors import OperationFailure

CI = Collation(locale="en_US", strength=2)


def test_case_insensitive_reads_and_writes(db):
    db.words.insert_many(
        [{"_id": 1, "w": "ping"}, {"_id": 2, "w": "PING"}, {"_id": 3, "w": "píng"}, {"_id": 4, "w": "pong"}]
    )
    assert sorted(d["_id"] for d in db.words.find({"w": "Ping"}, collation=CI)) == [1, 2]
    assert [d["_id"] for d in db.words.find({"w": "Ping"})] == []
    # Strength 1 ignores accents as well.
    assert db.words.count_documents({"w": "ping"}, collation=Collation("en", strength=1)) == 3
    # Values equal under the collation are one value, listed in collation order.
    assert db.words.distinct("w", collation=CI) in (["ping", "píng", "pong"], ["PING", "píng", "pong"])
    # A collated query answered through getMore still honours the collation.
    got = [d["_id"] for d in db.words.find({"w": {"$gte": "PING"}}, collation=CI, batch_size=1)]
    assert sorted(got) == [1, 2, 3, 4]
    r = db.words.update_many({"w": "PING"}, {"$set": {"hit": True}}, collation=CI)
    assert r.matched_count == 2
    r = db.words.delete_many({"w": "PONG"}, collation=CI)
    assert r.deleted_count == 1
    assert [d["_id"] for d in db.words.aggregate([{"$match": {"w": "PING"}}], collation=CI)] == [1, 2]


def test_ordering_and_numeric_ordering(db):
    db.names.insert_many([{"n": s} for s in ["banana", "Apple", "apple", "cherry", "Éclair", "eclair"]])
    en = Collation(locale="en")
    ordered = [d["n"] for d in db.names.find(sort=[("n", 1)], collation=en)]
    # Binary order would put every capital first; the collation interleaves them.
    assert ordered == ["apple", "Apple", "banana", "cherry", "eclair", "Éclair"]
    db.items.insert_many([{"s": f"item{i}"} for i in (10, 9, 100, 1)])
    num = Collation(locale="en", numericOrdering=True)
    assert [d["s"] for d in db.items.find(sort=[("s", 1)], collation=num)] == [
        "item1",
        "item9",
        "item10",
        "item100",
    ]


def test_unsupported_collation_options_are_refused(db):
    db.x.insert_one({"a": "b"})
    with pytest.raises(OperationFailure) as e:
        list(db.x.find({}, collation=Collation("en", caseFirst="upper")))
    assert e.value.code == 2 and "caseFirst" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        db.x.create_index("a", collation=Collation("en", strength=2))
    assert e.value.code == 2
