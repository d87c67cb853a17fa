"""Perl-compatible regular expressions (issue 15 item 7): look-around and back-references in
`$regex` and the `$regex*` expressions, as mongod's PCRE2 allows, and a catastrophic pattern
stopped with an error instead of stalling the server."""

from __future__ import annotations

import time

import pytest
from bson.regex import Regex
from pymongo.errors import OperationFailure


def test_look_around_and_back_references(db):
    db.users.insert_many([{"_id": 1, "name": "user42"}, {"_id": 2, "name": "admin42"}, {"_id": 3, "name": "plain"},
                          {"_id": 4, "name": "bye bye"}])
    got = [d["_id"] for d in db.users.find({"name": {"$regex": r"^(?=.*\d)(?!admin)\w+$"}})]
    assert got == [1]
    assert [d["_id"] for d in db.users.find({"name": Regex(r"\b(\w+) \1\b")})] == [4]
    out = list(db.users.aggregate([
        {"$match": {"_id": 2}},
        {"$project": {"digits": {"$regexFind": {"input": "$name", "regex": r"(?<=n)\d+"}}}},
    ]))
    assert out[0]["digits"]["match"] == "42" and out[0]["digits"]["idx"] == 5


def test_a_catastrophic_pattern_fails_fast_and_the_server_goes_on(db):
    db.bt.insert_one({"s": "a" * 40 + "b"})
    started = time.monotonic()
    with pytest.raises(OperationFailure) as e:
        list(db.bt.find({"s": {"$regex": r"^(a+)+\1$"}}))
    assert e.value.code == 51156
    assert time.monotonic() - started < 10
    with pytest.raises(OperationFailure) as e:
        list(db.bt.aggregate([{"$project": {"m": {"$regexMatch": {"input": "$s", "regex": r"^(a+)+\1$"}}}}]))
    assert e.value.code == 51156
    assert db.bt.count_documents({"s": {"$regex": "^a+b$"}}) == 1
