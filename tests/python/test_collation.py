"""Collations through pymongo: case- and accent-insensitive matching, locale-style ordering,
numericOrdering, and clear errors for options Mangrove does not implement."""

from __future__ import annotations

import signal

import pytest
from pymongo import MongoClient
from pymongo.collation import Collation
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

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
    # An index takes the same collations, and refuses the same options.
    with pytest.raises(OperationFailure) as e:
        db.x.create_index("a", collation=Collation("en", caseFirst="upper"))
    assert e.value.code == 2
    assert [i["name"] for i in db.x.list_indexes()] == ["_id_"]


def winning_index(explain: dict) -> str | None:
    plan = explain["queryPlanner"]["winningPlan"]
    while plan.get("inputStage") is not None and plan["stage"] != "IXSCAN":
        plan = plan["inputStage"]
    return plan.get("indexName")


def test_an_index_with_a_collation_serves_queries_under_it(db):
    import random

    rng = random.Random(5)
    words = ["apple", "Apple", "APPLE", "äpple", "banana", "Banana", "item9", "item10", "item010", "cherry", "Çherry"]
    db.fruit.insert_many([{"_id": i, "w": rng.choice(words), "n": i % 7} for i in range(400)])
    db.fruit.create_index("w", name="w_ci", collation={"locale": "en", "strength": 2})
    spec = {i["name"]: i for i in db.fruit.list_indexes()}["w_ci"]
    assert spec["collation"]["locale"] == "en" and spec["collation"]["strength"] == 2
    for coll_spec in (CI, Collation("en", strength=2)):
        for query in ({"w": "apple"}, {"w": {"$in": ["BANANA", "item9"]}}, {"w": {"$gt": "b", "$lt": "c"}}, {"w": {"$gte": "Item"}}):
            want = sorted(d["_id"] for d in db.fruit.find(query, collation=coll_spec).hint([("$natural", 1)]))
            got = sorted(d["_id"] for d in db.fruit.find(query, collation=coll_spec))
            assert got == want, query
            e = db.fruit.find(query, collation=Collation("en", strength=2)).explain()
            assert winning_index(e) == "w_ci", query
    # Keys examined are the matches only: "apple" and "APPLE" are one key at strength 2.
    e = db.fruit.find({"w": "apple"}, collation=Collation("en", strength=2)).explain()
    n = db.fruit.count_documents({"w": "apple"}, collation=Collation("en", strength=2))
    assert e["executionStats"]["totalKeysExamined"] == n
    # Without the collation (binary strings) the index cannot serve, and results stay binary.
    assert winning_index(db.fruit.find({"w": "apple"}).explain()) is None
    assert all(d["w"] == "apple" for d in db.fruit.find({"w": "apple"}))
    # The index's order is the collation's: a sort under it is served, in that order.
    got = [d["w"] for d in db.fruit.find({}, {"w": 1}, collation=Collation("en", strength=2)).sort("w", 1)]
    assert [w.lower() for w in got][:1] == ["apple"]
    assert got.index("banana" if "banana" in got else "Banana") > got.index("apple" if "apple" in got else "Apple")


def test_a_unique_index_with_a_collation_refuses_equal_strings(db):
    db.users.create_index("email", unique=True, collation={"locale": "en", "strength": 2})
    db.users.insert_one({"email": "Ann@Example.com"})
    from pymongo.errors import DuplicateKeyError

    with pytest.raises(DuplicateKeyError):
        db.users.insert_one({"email": "ann@example.COM"})
    db.users.insert_one({"email": "bob@example.com"})
    assert db.users.count_documents({}) == 2
    with pytest.raises(OperationFailure):
        db.users.create_index("_id", collation={"locale": "en", "strength": 2})


def test_a_collection_default_collation_applies_to_every_command(db):
    db.create_collection("ci", collation=CI)
    opts = next(db.list_collections(filter={"name": "ci"}))["options"]
    # Stored normalized, as mongod lists it.
    assert opts["collation"]["locale"] == "en_US" and opts["collation"]["strength"] == 2
    assert opts["collation"]["version"] == "57.1" and opts["collation"]["caseFirst"] == "off"
    db.ci.insert_many([{"_id": 1, "w": "abc"}, {"_id": 2, "w": "ABC"}, {"_id": 3, "w": "abd"}])
    # Without a collation of their own, reads, counts, distinct and aggregate use the default.
    assert sorted(d["_id"] for d in db.ci.find({"w": "Abc"})) == [1, 2]
    assert db.ci.count_documents({"w": "abc"}) == 2
    assert db.command("count", "ci", query={"w": "abc"})["n"] == 2
    assert len(db.ci.distinct("w")) == 2
    assert [d["_id"] for d in db.ci.aggregate([{"$match": {"w": "ABC"}}, {"$sort": {"_id": 1}}])] == [1, 2]
    # A command's own collation, the simple one included, overrides the default.
    assert [d["_id"] for d in db.ci.find({"w": "Abc"}, collation=Collation("simple"))] == []
    assert [d["_id"] for d in db.ci.find({"w": "abc"}, collation=Collation("simple"))] == [1]
    # Writes match under it too.
    assert db.ci.update_many({"w": "ABC"}, {"$set": {"hit": True}}).matched_count == 2
    doc = db.ci.find_one_and_update({"w": "ABD"}, {"$set": {"hit": True}}, return_document=True)
    assert doc["_id"] == 3 and doc["hit"] is True
    assert db.ci.delete_many({"w": "aBc"}).deleted_count == 2
    assert [d["_id"] for d in db.ci.find()] == [3]


def test_indexes_inherit_the_collection_default_collation(db):
    db.create_collection("ci", collation=CI)
    db.ci.create_index("w")
    db.ci.create_index("v", collation=Collation("simple"))
    by_name = {i["name"]: i for i in db.ci.list_indexes()}
    assert by_name["w_1"]["collation"]["locale"] == "en_US"
    assert "collation" not in by_name["v_1"]
    # A unique index inherits it too: strings equal under it are duplicates.
    db.create_collection("cu", collation=CI)
    db.cu.create_index("u", unique=True)
    db.cu.insert_one({"u": "x"})
    with pytest.raises(DuplicateKeyError):
        db.cu.insert_one({"u": "X"})
    # The inherited index serves the default-collated query.
    db.ci.insert_many([{"w": f"w{i}"} for i in range(50)])
    assert winning_index(db.ci.find({"w": "W7"}).explain()) == "w_1"
    assert [d["w"] for d in db.ci.find({"w": "W7"})] == ["w7"]


def test_id_lookups_under_a_default_collation(db):
    db.create_collection("ci", collation=CI)
    db.ci.insert_many([{"_id": "Key"}, {"_id": 7}])
    # A string `_id` matches under the collation (mongod's `_id` index is collated too).
    assert [d["_id"] for d in db.ci.find({"_id": "KEY"})] == ["Key"]
    # A non-string `_id` is still a point lookup.
    plan = db.ci.find({"_id": 7}).explain()["queryPlanner"]["winningPlan"]
    assert plan["stage"] in ("IDHACK", "EXPRESS_IXSCAN", "FETCH", "CLUSTERED_IXSCAN"), plan
    assert db.ci.find_one({"_id": 7}) == {"_id": 7}


def test_a_default_collation_collates_the_id_index(db):
    db.create_collection("ci", collation=CI)
    db.ci.insert_one({"_id": "a", "v": 1})
    # mongod's `_id` index inherits the default collation: "A" is the same key.
    with pytest.raises(DuplicateKeyError) as e:
        db.ci.insert_one({"_id": "A"})
    assert e.value.code == 11000
    # As mongod, the message and errInfo name the collation the keys are compared under.
    collation = e.value.details["collation"]
    assert (collation["locale"], collation["strength"]) == ("en_US", 2)
    assert f"index: _id_ collation: {{ locale: \"en_US\", caseLevel: false," in str(e.value)
    assert e.value.details["keyValue"] == {"_id": "A"}
    db.ci.create_index("u", unique=True)
    db.ci.insert_one({"_id": "u1", "u": "x"})
    with pytest.raises(DuplicateKeyError) as e:
        db.ci.insert_one({"_id": "u2", "u": "X"})
    assert e.value.details["collation"] == collation
    assert "index: u_1 collation: { locale:" in str(e.value)
    db.ci.delete_many({"_id": "u1"})
    db.ci.drop_index("u_1")
    # A binary index names none.
    db.plain.insert_one({"_id": "a"})
    with pytest.raises(DuplicateKeyError) as e:
        db.plain.insert_one({"_id": "a"})
    assert "collation" not in e.value.details
    assert " collation: " not in e.value.details["errmsg"]
    with pytest.raises(BulkWriteError) as e:
        db.ci.insert_many([{"_id": "b"}, {"_id": "B"}, {"_id": "c"}], ordered=False)
    assert e.value.details["nInserted"] == 2
    assert [w["index"] for w in e.value.details["writeErrors"]] == [1]
    # Found under the default collation, by a point lookup; stored as first given.
    assert list(db.ci.find({"_id": "A"})) == [{"_id": "a", "v": 1}]
    plan = db.ci.find({"_id": "A"}).explain()["queryPlanner"]["winningPlan"]
    assert plan["stage"] in ("IDHACK", "EXPRESS_IXSCAN"), plan
    # Another collation compares with its own rules (and cannot use the `_id` keys).
    assert list(db.ci.find({"_id": "A"}, collation=Collation("simple"))) == []
    assert [d["_id"] for d in db.ci.find({"_id": "a"}, collation=Collation("simple"))] == ["a"]
    assert db.ci.count_documents({"_id": {"$in": ["A", "B"]}}) == 2
    assert db.ci.count_documents({"_id": {"$gte": "B"}}) == 2
    assert [d["_id"] for d in db.ci.aggregate([{"$match": {"_id": "C"}}])] == ["c"]
    # `$out` into it keys what it writes under the collation too.
    db.src.insert_many([{"_id": "x"}, {"_id": "X"}])
    with pytest.raises(OperationFailure) as e:
        db.src.aggregate([{"$out": "ci"}])
    assert e.value.code == 11000
    assert sorted(d["_id"] for d in db.ci.find()) == ["a", "b", "c"]
    # Strings inside an `_id` document or array are collated too, as in index keys.
    db.ci.insert_one({"_id": {"k": "x", "l": ["Y", 1]}})
    with pytest.raises(DuplicateKeyError):
        db.ci.insert_one({"_id": {"k": "X", "l": ["y", 1]}})
    assert db.ci.count_documents({"_id": {"k": "X", "l": ["y", 1]}}) == 1
    # `listIndexes` and `listCollections` show the `_id` index with the collation; the
    # options show only what was given.
    id_index = next(i for i in db.ci.list_indexes() if i["name"] == "_id_")
    assert id_index["collation"]["locale"] == "en_US" and id_index["collation"]["strength"] == 2
    info = next(db.list_collections(filter={"name": "ci"}))
    assert info["idIndex"]["collation"] == id_index["collation"]
    assert list(info["options"]) == ["collation"]
    # So `create` with the same options is still the idempotent no-op of mongod 7.0.
    db.command("create", "ci", collation=info["options"]["collation"])
    with pytest.raises(OperationFailure) as e:
        db.command("create", "ci")
    assert e.value.code == 48


def test_writes_by_id_follow_the_id_collation(db):
    db.create_collection("ci", collation=CI)
    db.ci.insert_many([{"_id": "a", "v": 1}, {"_id": "b", "v": 1}])
    assert db.ci.update_one({"_id": "A"}, {"$set": {"v": 2}}).modified_count == 1
    assert db.ci.replace_one({"_id": "B"}, {"v": 3}).modified_count == 1
    assert list(db.ci.find().sort("_id", 1)) == [{"_id": "a", "v": 2}, {"_id": "b", "v": 3}]
    # `_id` stays immutable byte for byte: "a" to "A" is a change even though they collate equal.
    with pytest.raises(OperationFailure) as e:
        db.ci.update_one({"_id": "a"}, {"$set": {"_id": "A"}})
    assert e.value.code == 66
    # Under the simple collation, "A" matches nothing.
    simple = Collation("simple")
    assert db.ci.update_one({"_id": "A"}, {"$set": {"v": 9}}, collation=simple).matched_count == 0
    assert db.ci.delete_one({"_id": "B"}, collation=simple).deleted_count == 0
    # An upsert that matches under the collation updates; one that does not inserts, keyed
    # under the collation too.
    r = db.ci.update_one({"_id": "A"}, {"$set": {"u": 1}}, upsert=True)
    assert (r.matched_count, r.upserted_id) == (1, None)
    r = db.ci.update_one({"_id": "C"}, {"$set": {"u": 1}}, upsert=True)
    assert r.upserted_id == "C"
    with pytest.raises(DuplicateKeyError):
        db.ci.insert_one({"_id": "c"})
    doc = db.ci.find_one_and_update({"_id": "c"}, {"$inc": {"u": 1}}, return_document=True)
    assert doc == {"_id": "C", "u": 2}
    assert db.ci.find_one_and_delete({"_id": "B"})["_id"] == "b"
    assert db.ci.delete_one({"_id": "C"}).deleted_count == 1
    assert [d["_id"] for d in db.ci.find()] == ["a"]


def test_ids_stay_binary_without_a_default_collation(db):
    db.plain.insert_many([{"_id": "a"}, {"_id": "A"}])
    assert [d["_id"] for d in db.plain.find({"_id": "A"})] == ["A"]
    # A query collation still matches both; the keys stay two.
    assert db.plain.count_documents({"_id": "a"}, collation=CI) == 2
    assert "collation" not in next(i for i in db.plain.list_indexes() if i["name"] == "_id_")
    # The simple collation as a default is no collation at all.
    db.create_collection("simple", collation=Collation("simple"))
    db.simple.insert_many([{"_id": "a"}, {"_id": "A"}])
    assert db.simple.count_documents({}) == 2


def test_collated_ids_survive_a_restart(restartable):
    server = restartable()
    c = MongoClient(server.uri, w="majority")
    c.db.create_collection("ci", collation=CI)
    c.db.ci.insert_one({"_id": "a"})
    c.db.plain.insert_one({"_id": "a"})
    c.close()
    server.stop(signal.SIGKILL)
    server = restartable()
    c = MongoClient(server.uri)
    with pytest.raises(DuplicateKeyError):
        c.db.ci.insert_one({"_id": "A"})
    assert [d["_id"] for d in c.db.ci.find({"_id": "A"})] == ["a"]
    c.db.plain.insert_one({"_id": "A"})
    assert c.db.plain.count_documents({}) == 2
    id_index = next(i for i in c.db.ci.list_indexes() if i["name"] == "_id_")
    assert id_index["collation"]["strength"] == 2
    c.close()


def test_a_view_keeps_its_default_collation(db):
    # Reads under it are in test_views.py; here, what is stored and listed.
    db.create_collection("base")
    db.create_collection("v", viewOn="base", pipeline=[], collation=CI)
    options = next(db.list_collections(filter={"name": "v"}))["options"]
    assert options["collation"]["locale"] == "en_US" and options["viewOn"] == "base"
    # The simple collation is no default at all, as for collections.
    db.create_collection("v2", viewOn="base", pipeline=[], collation=Collation("simple"))
    assert "collation" not in next(db.list_collections(filter={"name": "v2"}))["options"]
