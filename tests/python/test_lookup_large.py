"""`$lookup` into a collection larger than the per-stage memory limit (issue 15).

The join no longer reads the foreign collection whole. When it does not fit, or when an index
answers `foreignField`, it asks for each input document's matches instead: through that index,
or by a scan (mongod's indexed and nested-loop joins). So it answers where it used to fail with
292. The tests check that:
- the results equal what the in-memory hash join gives for a small collection;
- a transaction's join sees its own writes;
- a lazy cursor's `getMore`s join from the cursor's snapshot.
`$graphLookup` likewise searches round by round (one query per round) when its collection does
not fit or an index answers `connectToField`, and `$unionWith` reads the other collection in
chunks."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure

SORT_LIMIT = "internalQueryMaxBlockingSortMemoryUsageBytes"
N = 3000
KEYS = 50
PAD = "x" * 1000


@pytest.fixture()
def small_limit(client):
    admin = client.admin
    old = admin.command("getParameter", 1, **{SORT_LIMIT: 1})[SORT_LIMIT]
    admin.command("setParameter", 1, **{SORT_LIMIT: 512 * 1024})
    yield
    admin.command("setParameter", 1, **{SORT_LIMIT: old})


@pytest.fixture()
def big(db, small_limit):
    # About 3 MB: six times the limit.
    db.big.insert_many([{"_id": i, "k": i % KEYS, "pad": PAD} for i in range(N)])
    # Orders whose k is 50..59 join nothing.
    db.orders.insert_many([{"_id": j, "k": (j * 7) % 60} for j in range(20)])
    return db


def joined_ids(k: int) -> list[int]:
    return [i for i in range(N) if i % KEYS == k]


def equality_join(db, **kwargs) -> dict[int, list[int]]:
    out = db.orders.aggregate(
        [
            {"$lookup": {"from": "big", "localField": "k", "foreignField": "k", "as": "m"}},
            {"$project": {"m": "$m._id"}},
        ],
        **kwargs,
    )
    return {d["_id"]: sorted(d["m"], key=str) for d in out}


def expected_join() -> dict[int, list[int]]:
    return {j: sorted(joined_ids((j * 7) % 60), key=str) for j in range(20)}


def test_an_equality_join_into_a_collection_past_the_limit_answers(big):
    # A scan per input document, then the index.
    assert equality_join(big) == expected_join()
    big.big.create_index("k")
    assert equality_join(big) == expected_join()
    # Nothing joined for a missing local field joins documents whose field is null or missing.
    big.orders.insert_one({"_id": "no k"})
    big.big.insert_one({"_id": "null k", "k": None})
    out = list(
        big.orders.aggregate(
            [
                {"$match": {"_id": "no k"}},
                {"$lookup": {"from": "big", "localField": "k", "foreignField": "k", "as": "m"}},
            ]
        )
    )
    assert [d["_id"] for d in out[0]["m"]] == ["null k"]


def test_arrays_on_either_side_join_through_their_elements(big):
    big.orders.insert_one({"_id": "several", "k": [1, 2]})
    big.big.insert_one({"_id": "array", "k": [2, 99]})
    out = big.orders.aggregate(
        [
            {"$match": {"_id": "several"}},
            {"$lookup": {"from": "big", "localField": "k", "foreignField": "k", "as": "m"}},
            {"$project": {"m": "$m._id"}},
        ]
    )
    want = sorted(joined_ids(1) + joined_ids(2)) + ["array"]
    assert sorted(next(out)["m"], key=str) == sorted(want, key=str)


def test_a_pipeline_join_with_let_past_the_limit_answers(big):
    out = big.orders.aggregate(
        [
            {
                "$lookup": {
                    "from": "big",
                    "let": {"kk": "$k"},
                    "pipeline": [
                        {"$match": {"$expr": {"$eq": ["$k", "$$kk"]}}},
                        {"$project": {"_id": 1}},
                    ],
                    "as": "m",
                }
            },
        ]
    )
    got = {d["_id"]: sorted((x["_id"] for x in d["m"]), key=str) for d in out}
    assert got == expected_join()


def test_each_input_documents_matches_are_still_bounded(big):
    # 60 documents of 1 KB per key fit; a join of every document to each order does not.
    with pytest.raises(OperationFailure) as e:
        list(big.orders.aggregate([{"$lookup": {"from": "big", "pipeline": [], "as": "all"}}]))
    assert e.value.code == 292


def test_a_join_in_a_transaction_sees_its_own_writes(client, big):
    big.big.create_index("k")
    with client.start_session() as s:
        s.start_transaction()
        big.big.insert_one({"_id": "mine", "k": 0, "pad": PAD}, session=s)
        big.big.delete_one({"_id": 0}, session=s)
        got = equality_join(big, session=s)
        s.abort_transaction()
    want = expected_join()
    want[0] = sorted([i for i in joined_ids(0) if i != 0] + ["mine"], key=str)
    assert got == want


def test_a_lazy_cursor_joins_from_its_snapshot(big):
    cursor = big.orders.aggregate(
        [
            {"$lookup": {"from": "big", "localField": "k", "foreignField": "k", "as": "m"}},
            {"$project": {"m": "$m._id"}},
        ],
        batchSize=2,
    )
    first = [next(cursor) for _ in range(2)]
    # Written after the cursor opened: not seen by its later batches.
    big.big.insert_many([{"_id": f"late{k}", "k": k} for k in range(KEYS)])
    got = {d["_id"]: sorted(d["m"], key=str) for d in first + list(cursor)}
    assert got == expected_join()


def expected_descendants(start: int, max_depth: int, even_only: bool) -> dict[int, int]:
    """Breadth-first over the tree parent(i) = (i - 1) // 2, as $graphLookup searches."""
    found: dict[int, int] = {}
    frontier, depth = [start], 0
    while frontier and depth <= max_depth:
        children = [c for p in frontier for c in (2 * p + 1, 2 * p + 2) if c < N]
        children = [c for c in children if not even_only or c % 2 == 0]
        for c in children:
            found.setdefault(c, depth)
        frontier, depth = children, depth + 1
    return found


def test_a_graph_lookup_past_the_limit_searches_round_by_round(client, db, small_limit):
    db.tree.insert_many([{"_id": i, "parent": (i - 1) // 2, "even": i % 2 == 0, "pad": PAD} for i in range(N)])
    db.q.insert_one({"_id": "q", "start": 5})

    def search(restrict: dict | None) -> dict[int, int]:
        stage = {
            "from": "tree",
            "startWith": "$start",
            "connectFromField": "_id",
            "connectToField": "parent",
            "as": "found",
            "maxDepth": 3,
            "depthField": "depth",
        }
        if restrict:
            stage["restrictSearchWithMatch"] = restrict
        (out,) = db.q.aggregate([{"$graphLookup": stage}])
        found = {d["_id"]: d["depth"] for d in out["found"]}
        assert len(found) == len(out["found"]), "each document is reported once"
        return found

    # About 3 MB past a 512 KB limit: one query per round, a scan each, then through the index.
    ways = {"scan per round": search(None), "scan per round, restricted": search({"even": True})}
    db.tree.create_index("parent")
    ways["index per round"] = search(None)
    ways["index per round, restricted"] = search({"even": True})
    # With the collection fitting the limit again: held in memory.
    db.tree.drop_indexes()
    client.admin.command("setParameter", 1, **{SORT_LIMIT: 64 << 20})
    ways["in memory"] = search(None)
    ways["in memory, restricted"] = search({"even": True})
    for way, found in ways.items():
        assert found == expected_descendants(5, 3, "restricted" in way), way


def test_a_union_with_past_the_limit_streams_the_other_collection(big):
    # About 3 MB past a 512 KB limit, read in chunks of at most the limit across a cursor's
    # getMores, from the cursor's snapshot.
    cursor = big.orders.aggregate([{"$unionWith": "big"}, {"$project": {"pad": 0}}], batchSize=100)
    ids = [next(cursor)["_id"] for _ in range(100)]
    big.big.insert_one({"_id": "late", "k": 0})
    ids += [d["_id"] for d in cursor]
    assert ids == list(range(20)) + list(range(N))
    big.big.delete_one({"_id": "late"})
    # With a pipeline of its own, a blocking stage included.
    out = big.orders.aggregate(
        [
            {"$unionWith": {"coll": "big", "pipeline": [{"$group": {"_id": "$k", "n": {"$sum": 1}}}]}},
            {"$match": {"n": {"$exists": True}}},
            {"$sort": {"_id": 1}},
        ]
    )
    assert [(d["_id"], d["n"]) for d in out] == [(k, N // KEYS) for k in range(KEYS)]


def lookup_explain(db) -> dict:
    explained = db.command(
        "explain",
        {
            "aggregate": "orders",
            "pipeline": [{"$lookup": {"from": "big", "localField": "k", "foreignField": "k", "as": "m"}}],
            "cursor": {},
        },
        verbosity="executionStats",
    )
    (stage,) = [s for s in explained["stages"] if "$lookup" in s]
    return stage


def test_explain_shows_how_a_lookup_read_its_foreign_collection(client, big):
    # Past the limit, no index: one scan of the whole collection per order.
    stage = lookup_explain(big)
    assert (stage["collectionScans"], stage["indexesUsed"]) == (20, [])
    assert stage["totalDocsExamined"] == 20 * N and stage["totalKeysExamined"] == 0
    assert stage["nReturned"] == 20
    # Through the index: only the matching keys and documents.
    big.big.create_index("k")
    stage = lookup_explain(big)
    assert (stage["collectionScans"], stage["indexesUsed"]) == (0, ["k_1"])
    joined = sum(len(joined_ids((j * 7) % 60)) for j in range(20))
    assert stage["totalKeysExamined"] >= joined and stage["totalDocsExamined"] == joined
    # Fitting the limit, no index: read once, whole (a hash join).
    big.big.drop_indexes()
    client.admin.command("setParameter", 1, **{SORT_LIMIT: 64 << 20})
    stage = lookup_explain(big)
    assert (stage["collectionScans"], stage["indexesUsed"]) == (1, [])
    assert stage["totalDocsExamined"] == N
