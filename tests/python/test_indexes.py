"""Secondary indexes through pymongo: createIndex/listIndexes/dropIndexes, unique keys inside
and across transactions, TTL expiry, explain, and index results agreeing with collection scans.
"""

from __future__ import annotations

import datetime
import random
import threading
import time

import pytest
from bson import Int64
from conftest import report
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure


def winning_stage(explain: dict) -> dict:
    plan = explain["queryPlanner"]["winningPlan"]
    while plan["stage"] in ("LIMIT", "SKIP", "SORT", "PROJECTION_DEFAULT"):
        plan = plan["inputStage"]
    return plan


def test_create_list_drop(db):
    coll = db.items
    coll.insert_many([{"_id": i, "a": i % 7, "b": str(i)} for i in range(50)])
    assert coll.create_index("a") == "a_1"
    assert coll.create_index([("a", ASCENDING), ("b", DESCENDING)], name="ab") == "ab"
    assert coll.create_index("b", unique=True, sparse=True) == "b_1"
    names = [ix["name"] for ix in coll.list_indexes()]
    assert names == ["_id_", "a_1", "ab", "b_1"]
    info = coll.index_information()
    assert info["b_1"]["unique"] is True and info["b_1"]["sparse"] is True
    assert info["ab"]["key"] == [("a", 1), ("b", -1)]
    # The same index again is a no-op; a different one under an existing name is not.
    reply = db.command("createIndexes", "items", indexes=[{"key": {"a": 1}, "name": "a_1"}])
    assert reply["numIndexesBefore"] == reply["numIndexesAfter"] == 4
    assert reply["note"] == "all indexes already exist"
    with pytest.raises(OperationFailure) as e:
        coll.create_index("b", name="a_1")
    assert e.value.code == 86  # IndexKeySpecsConflict
    with pytest.raises(OperationFailure) as e:
        coll.create_index("a", name="other")
    assert e.value.code == 85  # IndexOptionsConflict
    with pytest.raises(OperationFailure) as e:
        coll.create_index([("t", "geoHaystack")])  # no such index type (text is supported)
    assert e.value.code == 67  # CannotCreateIndex
    with pytest.raises(OperationFailure) as e:
        coll.drop_index("_id_")
    assert e.value.code == 72
    with pytest.raises(OperationFailure) as e:
        coll.drop_index("nope")
    assert e.value.code == 27  # IndexNotFound
    coll.drop_index("ab")
    coll.drop_index([("a", 1)])
    assert [ix["name"] for ix in coll.list_indexes()] == ["_id_", "b_1"]
    coll.drop_indexes()
    assert [ix["name"] for ix in coll.list_indexes()] == ["_id_"]
    # The server answers NamespaceNotFound; pymongo turns that into an empty listing.
    with pytest.raises(OperationFailure) as e:
        db.command("listIndexes", "missing")
    assert e.value.code == 26
    assert list(db.missing.list_indexes()) == []


def test_unique_index_duplicate_key_details(db):
    coll = db.users
    coll.create_index([("email", ASCENDING)], unique=True)
    coll.insert_one({"_id": 1, "email": "a@x"})
    with pytest.raises(DuplicateKeyError) as e:
        coll.insert_one({"_id": 2, "email": "a@x"})
    assert e.value.details["keyPattern"] == {"email": 1}
    assert e.value.details["keyValue"] == {"email": "a@x"}
    assert "index: email_1 dup key" in e.value.details["errmsg"]
    # An update that would collide is refused and changes nothing.
    coll.insert_one({"_id": 3, "email": "b@x"})
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"_id": 3}, {"$set": {"email": "a@x"}})
    assert coll.find_one({"_id": 3})["email"] == "b@x"
    # Building a unique index over duplicates fails and leaves no index behind.
    # (Without an email they would collide on null: missing fields index as null.)
    db.other.insert_many([{"n": 1}, {"n": 1}])
    with pytest.raises(DuplicateKeyError):
        db.other.create_index("n", unique=True)
    assert "n_1" not in db.other.index_information()
    with pytest.raises(DuplicateKeyError) as e:
        coll.insert_one({"name": "no email"})
        coll.insert_one({"name": "no email either"})
    assert e.value.details["keyValue"] == {"email": None}
    # Unordered inserts report each duplicate and insert the rest.
    with pytest.raises(Exception) as e:
        coll.insert_many(
            [{"email": "c@x"}, {"email": "a@x"}, {"email": "d@x"}, {"email": "c@x"}],
            ordered=False,
        )
    errors = e.value.details["writeErrors"]
    assert [(w["index"], w["code"]) for w in errors] == [(1, 11000), (3, 11000)]
    assert coll.count_documents({"email": {"$in": ["c@x", "d@x"]}}) == 2


def test_create_index_unique_inside_a_transaction(client, db):
    name = "orders"
    db.drop_collection(name)
    with client.start_session() as s:
        s.start_transaction()
        db.create_collection(name, session=s)
        db[name].create_index("order_no", unique=True, session=s)
        db[name].insert_one({"order_no": 1}, session=s)
        # Inside the transaction the new index already holds...
        with pytest.raises(DuplicateKeyError):
            db[name].insert_one({"order_no": 1}, session=s)
        # ...and, as in MongoDB, the failed statement aborted the transaction.
        with pytest.raises(OperationFailure) as e:
            s.commit_transaction()
        assert e.value.code == 251  # NoSuchTransaction
    assert name not in db.list_collection_names()

    with client.start_session() as s:
        with s.start_transaction():
            db.create_collection(name, session=s)
            db[name].create_index("order_no", unique=True, session=s)
            db[name].insert_many([{"order_no": 1}, {"order_no": 2}], session=s)
    assert "order_no_1" in db[name].index_information()
    assert db[name].count_documents({}) == 2
    # An existing collection cannot get an index inside a transaction (MongoDB's rule).
    with client.start_session() as s:
        s.start_transaction()
        with pytest.raises(OperationFailure) as e:
            db[name].create_index("other", session=s)
        assert e.value.code == 263
        s.abort_transaction()


def test_concurrent_transactions_on_one_unique_key(client, db):
    coll = db.accounts
    coll.create_index("login", unique=True)
    s1, s2 = client.start_session(), client.start_session()
    s1.start_transaction()
    s2.start_transaction()
    coll.insert_one({"login": "ann"}, session=s1)
    # The second writer of the same key conflicts while the first is open (no lock wait).
    with pytest.raises(OperationFailure) as e:
        coll.insert_one({"login": "ann"}, session=s2)
    assert e.value.code == 112
    assert e.value.has_error_label("TransientTransactionError")
    s1.commit_transaction()
    s2.abort_transaction()
    # A retry (as with_transaction does) now sees the committed key: DuplicateKey.
    with pytest.raises(DuplicateKeyError):
        with s2.start_transaction():
            coll.insert_one({"login": "ann"}, session=s2)
    s1.end_session()
    s2.end_session()
    assert coll.count_documents({"login": "ann"}) == 1

    # Many threads racing with_transaction for the same keys: each key ends up exactly once.
    winners = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        c = MongoClient(client.address[0], client.address[1])
        try:
            with c.start_session() as s:
                for k in range(20):
                    try:
                        s.with_transaction(
                            lambda s, k=k: c[db.name].accounts.insert_one(
                                {"login": f"user{k}", "by": n}, session=s
                            )
                        )
                        with lock:
                            winners.append(k)
                    except DuplicateKeyError:
                        pass
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(winners) == list(range(20))
    assert coll.count_documents({"login": {"$regex": "^user"}}) == 20


def test_index_build_waits_for_open_transactions(client, db):
    coll = db.wait
    coll.insert_one({"_id": 0, "v": 0})
    s = client.start_session()
    s.start_transaction()
    coll.insert_one({"_id": 1, "v": 1}, session=s)
    done = threading.Event()

    def build() -> None:
        coll.create_index("v")
        done.set()

    t = threading.Thread(target=build)
    t.start()
    # It waits for the transaction, as MongoDB's build waits for its lock.
    assert not done.wait(1.0)
    s.commit_transaction()
    assert done.wait(10.0)
    t.join()
    s.end_session()
    # The index covers the transaction's document.
    assert [d["_id"] for d in coll.find({"v": 1}).hint("v_1")] == [1]


def test_sparse_partial_and_multikey(db):
    coll = db.kinds
    coll.insert_many(
        [
            {"_id": 1, "tags": ["a", "b"], "score": 5},
            {"_id": 2, "tags": ["b", "c"], "score": 50},
            {"_id": 3, "tags": [], "score": 500},
            {"_id": 4},
        ]
    )
    coll.create_index("tags")
    assert sorted(d["_id"] for d in coll.find({"tags": "b"})) == [1, 2]
    assert winning_stage(coll.find({"tags": "b"}).explain())["inputStage"]["stage"] == "IXSCAN"
    coll.create_index("score", sparse=True, name="score_sparse")
    # A sparse index cannot answer a query for missing values: the planner must not use it.
    assert [d["_id"] for d in coll.find({"score": None})] == [4]
    coll.create_index(
        [("score", -1)], name="big", partialFilterExpression={"score": {"$gt": 10}}
    )
    # A partial index serves only queries that imply its filter.
    assert winning_stage(coll.find({"score": {"$gt": 10}}).explain())["inputStage"]["indexName"] == "big"
    assert sorted(d["_id"] for d in coll.find({"score": {"$gt": 10}})) == [2, 3]
    # Two unique-on-partial documents only collide inside the filter.
    coll.create_index(
        [("tags", -1)], name="uniq_big", unique=True, partialFilterExpression={"score": {"$gt": 100}}
    )
    coll.insert_one({"_id": 5, "tags": ["z"], "score": 1})
    coll.insert_one({"_id": 6, "tags": ["z"], "score": 2})
    coll.insert_one({"_id": 7, "tags": ["z"], "score": 200})
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"_id": 8, "tags": ["z"], "score": 300})
    # Parallel arrays cannot be indexed together.
    with pytest.raises(OperationFailure) as e:
        coll.create_index([("tags", 1), ("arr", 1)], name="parallel")
        coll.insert_one({"_id": 9, "tags": [1, 2], "arr": [3, 4]})
    assert e.value.code == 171


def test_explain_shows_the_winning_plan(db):
    coll = db.plans
    coll.insert_many([{"_id": i, "k": i, "g": i % 10} for i in range(2000)])
    coll.create_index("k")
    e = coll.find({"k": 1234}).explain()
    stage = winning_stage(e)
    assert stage["stage"] == "FETCH"
    assert stage["inputStage"]["stage"] == "IXSCAN"
    assert stage["inputStage"]["indexName"] == "k_1"
    assert e["executionStats"]["totalKeysExamined"] == 1
    assert e["executionStats"]["totalDocsExamined"] == 1
    assert e["executionStats"]["nReturned"] == 1
    e = coll.find({"k": {"$gte": 100, "$lt": 200}}).explain()
    assert e["executionStats"]["nReturned"] == 100
    # Both bounds are used: the index is not multikey.
    assert e["executionStats"]["totalKeysExamined"] == 100
    assert winning_stage(e)["inputStage"]["isMultiKey"] is False
    # Once an array is indexed, range conditions on one field are no longer combined: each
    # may be met by a different element.
    coll.insert_one({"_id": "arr", "k": [1, 5000]})
    assert sorted(map(str, (d["_id"] for d in coll.find({"k": {"$gt": 1500, "$lt": 1502}})))) == [
        "1501",
        "arr",
    ]
    assert winning_stage(coll.find({"k": 1}).explain())["inputStage"]["isMultiKey"] is True
    e = coll.find({"g": 3}).explain()
    assert winning_stage(e)["stage"] == "COLLSCAN"
    assert e["executionStats"]["totalDocsExamined"] == coll.estimated_document_count()
    assert winning_stage(coll.find({"_id": 7}).explain())["stage"] == "IDHACK"
    assert winning_stage(coll.find({"k": 5}).hint([("$natural", 1)]).explain())["stage"] == "COLLSCAN"
    with pytest.raises(OperationFailure):
        list(coll.find({"k": 5}).hint("no_such_index"))
    report(
        "[pymongo] explain find({k: 1234}) on 2000 docs: IXSCAN k_1, "
        f"keys examined {1}, docs examined {1}"
    )


def random_value(rng: random.Random):
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randrange(-5, 5)
    if kind == 1:
        return rng.choice([0.5, -1.5, 2.0, 3.25])
    if kind == 2:
        return Int64(rng.randrange(-3, 3))
    if kind == 3:
        return rng.choice(["a", "b", "ab", ""])
    if kind == 4:
        return None
    if kind == 5:
        return [rng.randrange(-3, 3) for _ in range(rng.randrange(0, 3))]
    if kind == 6:
        return {"x": rng.randrange(3)}
    return rng.choice([True, False])


def test_index_results_agree_with_collection_scans(db):
    """Random documents of mixed types, many filters: every indexed answer must equal the
    answer of a collection scan (hint $natural)."""
    rng = random.Random(7)
    coll = db.agree
    docs = []
    for i in range(400):
        d = {"_id": i}
        for f in ("a", "b"):
            if rng.random() < 0.85:
                d[f] = random_value(rng)
        # The compound index (b, a) cannot hold two arrays (MongoDB refuses parallel arrays).
        while isinstance(d.get("b"), list):
            d["b"] = random_value(rng)
        docs.append(d)
    coll.insert_many(docs)
    coll.create_index("a")
    coll.create_index([("b", -1), ("a", 1)])
    filters = []
    for _ in range(150):
        v = random_value(rng)
        op = rng.choice(["eq", "$gt", "$gte", "$lt", "$lte", "$in", "$ne"])
        field = rng.choice(["a", "b"])
        if op == "eq":
            f = {field: v}
        elif op == "$in":
            f = {field: {"$in": [v, random_value(rng)]}}
        else:
            f = {field: {op: v}}
        if rng.random() < 0.3:
            f["a" if field == "b" else "b"] = random_value(rng)
        filters.append(f)
    used = 0
    for f in filters:
        want = sorted(d["_id"] for d in coll.find(f).hint([("$natural", 1)]))
        got = sorted(d["_id"] for d in coll.find(f))
        assert got == want, f"filter {f}: index gave {got}, scan gave {want}"
        assert coll.count_documents(f) == len(want)
        if winning_stage(coll.find(f).explain())["stage"] == "FETCH":
            used += 1
    # Sorted and limited: the index walk (forward or backward) must give the same keys in the
    # same order as a blocking sort (ties may differ in _id order, so compare the sort keys).
    for i, f in enumerate(filters[:60]):
        field = "b"
        direction = 1 if i % 2 else -1
        limit = 1 + i % 7
        via_index = [d.get(field) for d in coll.find(f).sort(field, direction).limit(limit)]
        via_scan = [
            d.get(field)
            for d in coll.find(f).sort(field, direction).limit(limit).hint([("$natural", 1)])
        ]
        assert via_index == via_scan, f"filter {f} sort {field} {direction}"
    assert used > 50, f"only {used} of {len(filters)} filters used an index"
    report(f"[pymongo] {len(filters)} random filters: indexed answers equal scans ({used} used an index)")


def test_ttl_index_expires_documents(client, db):
    client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
    try:
        coll = db.sessions
        coll.create_index("at", expireAfterSeconds=2)
        now = datetime.datetime.now(datetime.timezone.utc)
        coll.insert_many(
            [
                {"_id": "old", "at": now - datetime.timedelta(hours=1)},
                {"_id": "old-array", "at": [now + datetime.timedelta(hours=1), now - datetime.timedelta(hours=2)]},
                {"_id": "fresh", "at": now + datetime.timedelta(hours=1)},
                {"_id": "not-a-date", "at": "yesterday"},
                {"_id": "no-field"},
            ]
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and coll.count_documents({"_id": {"$regex": "^old"}}):
            time.sleep(0.2)
        assert sorted(d["_id"] for d in coll.find()) == ["fresh", "no-field", "not-a-date"]
        ttl = client.admin.command("serverStatus")["metrics"]["ttl"]
        assert ttl["deletedDocuments"] >= 2 and ttl["passes"] >= 1
        info = coll.index_information()["at_1"]
        assert info["expireAfterSeconds"] == 2
    finally:
        client.admin.command("setParameter", 1, ttlMonitorSleepSecs=60)


def test_indexes_survive_kill_9(restartable):
    server = restartable()
    c = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    coll = c.persist.items
    coll.insert_many([{"_id": i, "v": i % 13} for i in range(500)])
    coll.create_index("v")
    coll.create_index("u", unique=True, sparse=True)
    coll.update_many({"v": 3}, {"$set": {"v": 100}}, )
    coll.insert_one({"_id": "u1", "u": 1}, )
    coll.database.command("ping")
    c.close()
    server.kill()
    server = restartable()
    c = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    coll = c.persist.items
    assert [ix["name"] for ix in coll.list_indexes()] == ["_id_", "v_1", "u_1"]
    assert coll.count_documents({"v": 100}) == len([i for i in range(500) if i % 13 == 3])
    assert coll.count_documents({"v": 3}) == 0
    assert winning_stage(coll.find({"v": 100}).explain())["inputStage"]["stage"] == "IXSCAN"
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"u": 1})
    c.close()


def test_sort_served_by_an_index(db):
    coll = db.sorted
    coll.insert_many([{"_id": i, "k": (i * 37) % 1000, "g": i % 3} for i in range(1000)])
    coll.create_index([("g", 1), ("k", -1)])
    coll.create_index("k")

    def same(query, sort, limit):
        got = [d["_id"] for d in coll.find(query).sort(sort).limit(limit)]
        want = [d["_id"] for d in coll.find(query).sort(sort).limit(limit).hint([("$natural", 1)])]
        assert got == want
        return coll.find(query).sort(sort).limit(limit).explain()

    # No filter: the index order replaces the blocking sort, and the limit stops the walk.
    e = same({}, [("k", 1)], 5)
    assert "'SORT'" not in str(e["queryPlanner"]["winningPlan"])
    assert e["executionStats"]["totalKeysExamined"] == 5
    # An equality prefix, then the sort on the next field in the index's direction.
    e = same({"g": 1}, [("k", -1)], 10)
    assert winning_stage(e)["inputStage"]["indexName"] == "g_1_k_-1"
    assert "'SORT'" not in str(e["queryPlanner"]["winningPlan"])
    assert e["executionStats"]["totalKeysExamined"] == 10
    # A range on the sorted field itself.
    e = same({"k": {"$gt": 500}}, [("k", 1)], 3)
    assert e["executionStats"]["totalKeysExamined"] == 3
    # Against the index's direction the walk goes backward.
    e = same({}, [("k", -1)], 5)
    assert "'SORT'" not in str(e["queryPlanner"]["winningPlan"])
    assert winning_stage(e)["inputStage"]["direction"] == "backward"
    assert e["executionStats"]["totalKeysExamined"] == 5
    e = same({"g": 2}, [("k", 1)], 7)
    assert winning_stage(e)["inputStage"]["direction"] == "backward"
    e = same({"k": {"$in": [5, 500, 50, 900]}}, [("k", -1)], 10)
    assert "'SORT'" not in str(e["queryPlanner"]["winningPlan"])
    # The collection's own order serves `_id` sorts, both ways, lazily across getMore.
    e = same({}, [("_id", -1)], 3)
    assert winning_stage(e)["inputStage"]["indexName"] == "_id_"
    assert e["executionStats"]["totalDocsExamined"] == 3
    got = [d["_id"] for d in coll.find({"_id": {"$lt": 50}}, sort=[("_id", -1)], batch_size=4)]
    assert got == list(range(49, -1, -1))
    # Once the index is multikey its order no longer serves sorts.
    coll.insert_one({"_id": "arr", "k": [3, 999], "g": 0})
    e = same({}, [("k", 1)], 5)
    assert "'SORT'" in str(e["queryPlanner"]["winningPlan"])


def test_rename_and_drop_keep_index_bookkeeping(client, db):
    db.src.insert_many([{"_id": i, "u": i} for i in range(10)])
    db.src.create_index("u", unique=True)
    client.admin.command("renameCollection", f"{db.name}.src", to=f"{db.name}.dst")
    assert [ix["name"] for ix in db.dst.list_indexes()] == ["_id_", "u_1"]
    with pytest.raises(DuplicateKeyError):
        db.dst.insert_one({"u": 3})
    assert winning_stage(db.dst.find({"u": 4}).explain())["inputStage"]["indexName"] == "u_1"
    assert db.command("drop", "dst")["nIndexesWas"] == 2


def test_max_time_ms_stops_long_reads(db):
    from pymongo.errors import ExecutionTimeout

    db.big.insert_many([{"_id": i, "s": f"value {i}"} for i in range(100_000)])
    slow = {"s": {"$regex": "never matches$"}}
    with pytest.raises(ExecutionTimeout) as e:
        list(db.big.find(slow).max_time_ms(1))
    assert e.value.code == 50
    with pytest.raises(ExecutionTimeout):
        db.big.count_documents(slow, maxTimeMS=1)
    with pytest.raises(ExecutionTimeout):
        db.big.distinct("s", slow, maxTimeMS=1)
    # Without a deadline the same read completes.
    assert list(db.big.find(slow)) == []


def test_id_ranges_and_lists_use_the_primary_key_order(client, db):
    coll = db.ids
    coll.insert_many([{"_id": i, "v": i % 5} for i in range(5000)])
    ids = [4999, 3, 77, 1200, 77, 999999]
    e = coll.find({"_id": {"$in": ids}}).explain()
    assert winning_stage(e)["inputStage"]["indexName"] == "_id_"
    assert e["executionStats"]["totalDocsExamined"] == 4
    assert sorted(d["_id"] for d in coll.find({"_id": {"$in": ids}})) == [3, 77, 1200, 4999]
    e = coll.find({"_id": {"$gte": 100, "$lt": 110}, "v": 2}).explain()
    assert e["executionStats"]["totalDocsExamined"] == 10
    assert [d["_id"] for d in coll.find({"_id": {"$gte": 100, "$lt": 110}, "v": 2})] == [102, 107]
    # A lazy cursor over an _id range keeps its bounds across getMore.
    got = [d["_id"] for d in coll.find({"_id": {"$gt": 4000}}, batch_size=7)]
    assert got == list(range(4001, 5000))
    assert coll.delete_many({"_id": {"$in": [1, 2, 3]}}).deleted_count == 3
    # Inside a transaction the range sees the transaction's own writes.
    with client.start_session() as s:
        with s.start_transaction():
            coll.insert_one({"_id": 100000, "v": 9}, session=s)
            assert coll.count_documents({"_id": {"$gte": 99999}}, session=s) == 1
            assert [d["_id"] for d in coll.find({"_id": {"$gt": 4997}}, session=s)] == [4998, 4999, 100000]
            newest = coll.find({}, session=s).sort("_id", -1).limit(2)
            assert [d["_id"] for d in newest] == [100000, 4999]


def test_hashed_indexes_serve_equality_and_refuse_what_mongod_refuses(db):
    coll = db.hashed
    rng = random.Random(7)
    docs = [{"_id": i, "h": rng.choice([1, 2.0, Int64(3), "x", None, {"a": 1}]), "n": i} for i in range(300)]
    coll.insert_many(docs)
    coll.create_index([("h", "hashed")])
    coll.create_index([("n", ASCENDING), ("h", "hashed")], name="n_h")
    spec = {i["name"]: i for i in coll.list_indexes()}["h_hashed"]
    assert spec["key"] == {"h": "hashed"}
    for value in [1, 1.0, Int64(1), 2, "x", None, {"a": 1}, 99]:
        want = sorted(d["_id"] for d in coll.find({"h": value}).hint([("$natural", 1)]))
        got = sorted(d["_id"] for d in coll.find({"h": value}).hint("h_hashed"))
        assert got == want, value
        e = coll.find({"h": value}).explain()
        stage = winning_stage(e)
        assert stage["inputStage"]["indexName"] == "h_hashed", value
        # Only the matching hash is read (null also reads `undefined`'s hash).
        assert e["executionStats"]["totalKeysExamined"] <= len(want) + 1
    # $in is equality too; a range cannot use the hash order.
    ids = sorted(d["_id"] for d in coll.find({"h": {"$in": [1, "x"]}}))
    assert ids == sorted(d["_id"] for d in docs if d["h"] in (1, "x"))
    assert winning_stage(coll.find({"h": {"$in": [1, "x"]}}).explain())["inputStage"]["indexName"] == "h_hashed"
    assert winning_stage(coll.find({"h": {"$gt": 1}}).explain())["stage"] == "COLLSCAN"
    # A sort on the hashed field cannot come from its order.
    got = [d["h"] for d in coll.find({"h": {"$in": [1, 2]}}).sort("h", 1)]
    assert got == sorted(got)
    # The compound index serves its ordered prefix with the hash after it.
    assert [d["_id"] for d in coll.find({"n": 5, "h": docs[5]["h"]})] == [5]
    # returnKey shows the hash, as the index's key holds it.
    key = next(coll.find({"h": "x"}, return_key=True).hint("h_hashed"))
    assert set(key) == {"h"} and isinstance(key["h"], int) and key["h"] != "x"
    with pytest.raises(OperationFailure) as e:
        coll.insert_one({"_id": "arr", "h": [1, 2]})
    assert e.value.code == 16766
    assert coll.count_documents({"_id": "arr"}) == 0
    with pytest.raises(OperationFailure) as e:
        coll.create_index([("u", "hashed")], unique=True)
    assert e.value.code == 16764
    with pytest.raises(OperationFailure) as e:
        coll.create_index([("a", "hashed"), ("b", "hashed")])
    assert e.value.code == 31303
    # An existing array refuses the build and leaves no index behind.
    db.hashed_arr.insert_one({"h": [1]})
    with pytest.raises(OperationFailure) as e:
        db.hashed_arr.create_index([("h", "hashed")])
    assert e.value.code == 16766
    assert [i["name"] for i in db.hashed_arr.list_indexes()] == ["_id_"]


def test_index_stats_count_the_queries_each_index_served(db):
    coll = db.istats
    coll.insert_many([{"_id": i, "a": i, "b": i % 3} for i in range(50)])
    coll.create_index("a")
    coll.create_index("b")
    for i in range(5):
        coll.find_one({"a": i})
    coll.count_documents({"b": 1})
    coll.find_one({"_id": 3})
    stats = {s["name"]: s for s in coll.aggregate([{"$indexStats": {}}])}
    assert set(stats) == {"_id_", "a_1", "b_1"}
    assert stats["a_1"]["accesses"]["ops"] == 5
    assert stats["b_1"]["accesses"]["ops"] == 1
    assert stats["_id_"]["accesses"]["ops"] == 1
    assert stats["a_1"]["key"] == {"a": 1}
    assert stats["a_1"]["spec"]["name"] == "a_1"
    assert isinstance(stats["a_1"]["accesses"]["since"], datetime.datetime)
    # A new index of the same name starts again from zero.
    coll.drop_index("a_1")
    coll.create_index("a")
    after = {s["name"]: s for s in coll.aggregate([{"$indexStats": {}}])}
    assert after["a_1"]["accesses"]["ops"] == 0
    # Stages after it run; the stage itself takes no arguments and comes first.
    names = [s["name"] for s in coll.aggregate([{"$indexStats": {}}, {"$match": {"accesses.ops": {"$gt": 0}}}])]
    assert sorted(names) == ["_id_", "b_1"]
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate([{"$indexStats": {"x": 1}}]))
    assert e.value.code == 28803
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate([{"$match": {}}, {"$indexStats": {}}]))
    assert list(db.no_such.aggregate([{"$indexStats": {}}])) == []


def test_a_match_after_coll_stats_filters_its_document(db):
    """`$collStats` makes its own input, so a `$match` after it must still run (it used to be
    skipped as if an access path had applied it)."""
    db.cs.insert_one({"a": 1})
    assert len(list(db.cs.aggregate([{"$collStats": {"count": {}}}, {"$match": {"count": 1}}]))) == 1
    assert list(db.cs.aggregate([{"$collStats": {"count": {}}}, {"$match": {"count": 2}}])) == []
