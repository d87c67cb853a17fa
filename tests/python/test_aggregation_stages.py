"""Aggregation stages and expressions through pymongo: $lookup (equality, pipeline and combined
forms, also inside a transaction), $unwind, $facet, $sortByCount, $group with expressions,
$documents on {aggregate: 1}, expression errors, and find projections with expressions."""

from __future__ import annotations

import datetime

import pytest
from pymongo.errors import OperationFailure


@pytest.fixture()
def shop(db):
    db.orders.insert_many(
        [
            {"_id": 1, "item": "tea", "qty": 2, "tags": ["hot", "drink"]},
            {"_id": 2, "item": ["milk", "tea"], "qty": 1, "tags": []},
            {"_id": 3, "qty": 5},
            {"_id": 4, "item": "cake", "qty": 3, "tags": ["sweet"]},
        ]
    )
    db.inventory.insert_many(
        [
            {"_id": 10, "sku": "tea", "stock": 100},
            {"_id": 11, "sku": "milk", "stock": 4},
            {"_id": 12, "sku": "bread", "stock": 0},
            {"_id": 13, "stock": 7},
        ]
    )
    return db


def test_lookup_equality_form(shop):
    out = list(
        shop.orders.aggregate(
            [
                {"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku", "as": "inv"}},
                {"$project": {"ids": "$inv._id"}},
                {"$sort": {"_id": 1}},
            ]
        )
    )
    assert out == [
        {"_id": 1, "ids": [10]},
        {"_id": 2, "ids": [10, 11]},
        {"_id": 3, "ids": [13]},
        {"_id": 4, "ids": []},
    ]
    # A collection that does not exist joins nothing.
    out = list(shop.orders.aggregate([{"$lookup": {"from": "nope", "localField": "item", "foreignField": "x", "as": "m"}}]))
    assert all(d["m"] == [] for d in out)


def test_lookup_pipeline_form_with_let(shop):
    out = list(
        shop.orders.aggregate(
            [
                {"$match": {"_id": {"$in": [1, 4]}}},
                {
                    "$lookup": {
                        "from": "inventory",
                        "let": {"want": "$item", "need": "$qty"},
                        "pipeline": [
                            {"$match": {"$expr": {"$and": [{"$eq": ["$sku", "$$want"]}, {"$gte": ["$stock", "$$need"]}]}}},
                            {"$project": {"_id": 0, "sku": 1, "spare": {"$subtract": ["$stock", "$$need"]}}},
                        ],
                        "as": "avail",
                    }
                },
                {"$sort": {"_id": 1}},
            ]
        )
    )
    assert [d["avail"] for d in out] == [[{"sku": "tea", "spare": 98}], []]


def test_lookup_combined_form(shop):
    out = list(
        shop.orders.aggregate(
            [
                {"$match": {"_id": 2}},
                {
                    "$lookup": {
                        "from": "inventory",
                        "localField": "item",
                        "foreignField": "sku",
                        "let": {"q": "$qty"},
                        "pipeline": [{"$match": {"$expr": {"$gt": ["$stock", {"$multiply": ["$$q", 10]}]}}}],
                        "as": "rich",
                    }
                },
            ]
        )
    )
    assert [d["_id"] for d in out[0]["rich"]] == [10]


def test_lookup_in_a_transaction_sees_uncommitted_foreign_writes(client, shop):
    with client.start_session() as s:
        with s.start_transaction():
            shop.inventory.insert_one({"_id": 14, "sku": "cake", "stock": 9}, session=s)
            out = list(
                shop.orders.aggregate(
                    [
                        {"$match": {"_id": 4}},
                        {"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku", "as": "inv"}},
                    ],
                    session=s,
                )
            )
            assert [d["_id"] for d in out[0]["inv"]] == [14]
            # Outside the transaction the insert is not visible yet.
            out = list(
                shop.orders.aggregate(
                    [
                        {"$match": {"_id": 4}},
                        {"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku", "as": "inv"}},
                    ]
                )
            )
            assert out[0]["inv"] == []


def test_unwind_forms(shop):
    out = list(shop.orders.aggregate([{"$unwind": "$tags"}, {"$project": {"tags": 1}}, {"$sort": {"_id": 1, "tags": 1}}]))
    assert out == [
        {"_id": 1, "tags": "drink"},
        {"_id": 1, "tags": "hot"},
        {"_id": 4, "tags": "sweet"},
    ]
    out = list(
        shop.orders.aggregate(
            [
                {"$unwind": {"path": "$tags", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": True}},
                {"$project": {"tags": 1, "i": 1}},
                {"$sort": {"_id": 1, "i": 1}},
            ]
        )
    )
    assert out == [
        {"_id": 1, "tags": "hot", "i": 0},
        {"_id": 1, "tags": "drink", "i": 1},
        {"_id": 2, "i": None},
        {"_id": 3, "i": None},
        {"_id": 4, "tags": "sweet", "i": 0},
    ]
    with pytest.raises(OperationFailure) as e:
        list(shop.orders.aggregate([{"$unwind": "tags"}]))
    assert e.value.code == 28818


def test_facet_and_sort_by_count(shop):
    out = list(
        shop.orders.aggregate(
            [
                {
                    "$facet": {
                        "tags": [{"$unwind": "$tags"}, {"$sortByCount": "$tags"}, {"$sort": {"count": -1, "_id": 1}}],
                        "total": [{"$group": {"_id": None, "q": {"$sum": "$qty"}}}, {"$project": {"_id": 0}}],
                    }
                }
            ]
        )
    )
    assert out == [
        {
            "tags": [{"_id": "drink", "count": 1}, {"_id": "hot", "count": 1}, {"_id": "sweet", "count": 1}],
            "total": [{"q": 11}],
        }
    ]
    shop.orders.insert_one({"_id": 5, "tags": ["hot"]})
    out = list(shop.orders.aggregate([{"$unwind": "$tags"}, {"$sortByCount": "$tags"}, {"$limit": 1}]))
    assert out == [{"_id": "hot", "count": 2}]


def test_group_with_expressions(db):
    db.events.insert_many(
        [
            {"_id": 1, "at": datetime.datetime(2024, 1, 5, 10), "amount": 5, "user": "Ann"},
            {"_id": 2, "at": datetime.datetime(2024, 1, 20, 11), "amount": 7.5, "user": "ann"},
            {"_id": 3, "at": datetime.datetime(2024, 2, 1, 12), "amount": 1, "user": "Bob"},
        ]
    )
    out = list(
        db.events.aggregate(
            [
                {
                    "$group": {
                        "_id": {"month": {"$dateToString": {"format": "%Y-%m", "date": "$at"}}},
                        "total": {"$sum": {"$multiply": ["$amount", 2]}},
                        "users": {"$addToSet": {"$toLower": "$user"}},
                        "n": {"$count": {}},
                    }
                },
                {"$sort": {"_id.month": 1}},
                {"$addFields": {"label": {"$concat": ["m:", "$_id.month"]}, "big": {"$cond": [{"$gt": ["$total", 10]}, "yes", "no"]}}},
            ]
        )
    )
    assert out == [
        {"_id": {"month": "2024-01"}, "total": 25.0, "users": ["ann"], "n": 2, "label": "m:2024-01", "big": "yes"},
        {"_id": {"month": "2024-02"}, "total": 2, "users": ["bob"], "n": 1, "label": "m:2024-02", "big": "no"},
    ]


def test_documents_on_a_database(db):
    out = list(
        db.aggregate(
            [
                {"$documents": [{"x": 1}, {"x": 2}, {"x": 3}]},
                {"$match": {"x": {"$gte": 2}}},
                {"$project": {"_id": 0, "y": {"$multiply": ["$x", 10]}}},
            ]
        )
    )
    assert out == [{"y": 20}, {"y": 30}]
    with pytest.raises(OperationFailure):
        list(db.aggregate([{"$match": {}}]))


def test_expression_errors_carry_mongodb_codes(db):
    db.c.insert_one({"_id": 1, "a": 1, "s": "x"})
    cases = [
        ({"$divide": ["$a", 0]}, 2),
        ({"$arrayElemAt": ["$s", 0]}, 28689),
        ({"$frobnicate": 1}, 168),
        ({"$toInt": "$s"}, 241),
    ]
    for expr, code in cases:
        with pytest.raises(OperationFailure) as e:
            list(db.c.aggregate([{"$project": {"r": expr}}]))
        assert e.value.code == code, expr


def test_find_projection_with_expressions(db):
    db.c.insert_one({"_id": 1, "a": {"b": 5}, "n": 2, "arr": [1, 2, 3]})
    got = db.c.find_one(
        {},
        {"x": "$a.b", "y": {"$literal": 1}, "z": {"$add": ["$n", 1]}, "arr": {"$slice": 1}, "s": {"$size": "$arr"}},
    )
    assert got == {"_id": 1, "x": 5, "y": 1, "z": 3, "arr": [1], "s": 3}


def test_graph_lookup_and_union_with(db):
    db.emp.insert_many(
        [
            {"_id": 1, "name": "Dev"},
            {"_id": 2, "name": "Eliot", "boss": "Dev"},
            {"_id": 3, "name": "Ron", "boss": "Eliot"},
            {"_id": 4, "name": "Asya", "boss": "Ron"},
        ]
    )
    out = list(
        db.emp.aggregate(
            [
                {"$match": {"name": "Asya"}},
                {
                    "$graphLookup": {
                        "from": "emp",
                        "startWith": "$boss",
                        "connectFromField": "boss",
                        "connectToField": "name",
                        "as": "chain",
                        "depthField": "depth",
                    }
                },
                {"$unwind": "$chain"},
                {"$sort": {"chain.depth": 1}},
                {"$project": {"_id": 0, "who": "$chain.name", "depth": "$chain.depth"}},
            ]
        )
    )
    assert out == [{"who": "Ron", "depth": 0}, {"who": "Eliot", "depth": 1}, {"who": "Dev", "depth": 2}]
    db.contractors.insert_many([{"_id": 10, "name": "Zed"}])
    names = [
        d["name"]
        for d in db.emp.aggregate(
            [{"$unionWith": {"coll": "contractors", "pipeline": [{"$project": {"name": 1}}]}}, {"$sort": {"name": 1}}]
        )
    ]
    assert names == ["Asya", "Dev", "Eliot", "Ron", "Zed"]


def test_group_n_accumulators_and_date_operators(db):
    db.m.insert_many(
        [
            {"_id": i, "g": i % 2, "at": datetime.datetime(2024, 1, 31) + datetime.timedelta(days=i)}
            for i in range(6)
        ]
    )
    out = list(
        db.m.aggregate(
            [
                {"$group": {"_id": "$g", "top": {"$maxN": {"input": "$_id", "n": 2}}, "last": {"$last": "$at"}}},
                {"$sort": {"_id": 1}},
                {
                    "$project": {
                        "top": 1,
                        "month": {"$dateTrunc": {"date": "$last", "unit": "month"}},
                        "plus": {"$dateAdd": {"startDate": "$last", "unit": "month", "amount": 1}},
                    }
                },
            ]
        )
    )
    assert out == [
        {"_id": 0, "top": [4, 2], "month": datetime.datetime(2024, 2, 1), "plus": datetime.datetime(2024, 3, 4)},
        {"_id": 1, "top": [5, 3], "month": datetime.datetime(2024, 2, 1), "plus": datetime.datetime(2024, 3, 5)},
    ]


def test_expr_runtime_errors_fail_the_query(db):
    """An $expr that fails on some document fails the read (as in mongod), whatever the access
    path: collection scan, index scan, count, update."""
    db.e.insert_many([{"_id": 1, "a": 1}, {"_id": 2, "a": 0}])
    bad = {"$expr": {"$gt": [{"$divide": [1, "$a"]}, 0]}}
    for run in (
        lambda: list(db.e.find(bad)),
        lambda: db.e.count_documents(bad),
        lambda: db.e.update_many(bad, {"$set": {"x": 1}}),
    ):
        with pytest.raises(OperationFailure) as e:
            run()
        assert e.value.code == 2
    db.e.create_index("a")
    with pytest.raises(OperationFailure) as e:
        list(db.e.find({"a": {"$gte": 0}, **bad}))
    assert e.value.code == 2
    assert db.e.count_documents({"x": 1}) == 0


def test_window_bucket_auto_top_and_percentile_stages(db):
    """MongoDB 7.0's analytics surface: $setWindowFields, $bucketAuto, $top/$topN, $percentile,
    $densify, $fill and $redact, on the documentation's examples."""
    db.cakes.insert_many(
        [
            {"_id": 0, "state": "CA", "price": 13, "quantity": 120},
            {"_id": 2, "state": "CA", "price": 12, "quantity": 145},
            {"_id": 4, "state": "CA", "price": 41, "quantity": 162},
            {"_id": 3, "state": "WA", "price": 13, "quantity": 104},
        ]
    )
    out = list(
        db.cakes.aggregate(
            [
                {
                    "$setWindowFields": {
                        "partitionBy": "$state",
                        "sortBy": {"quantity": -1},
                        "output": {
                            "rank": {"$rank": {}},
                            "running": {"$sum": "$quantity", "window": {"documents": ["unbounded", "current"]}},
                        },
                    }
                },
                {"$project": {"rank": 1, "running": 1}},
            ]
        )
    )
    assert out == [
        {"_id": 4, "rank": 1, "running": 162},
        {"_id": 2, "rank": 2, "running": 307},
        {"_id": 0, "rank": 3, "running": 427},
        {"_id": 3, "rank": 1, "running": 104},
    ]
    out = list(
        db.cakes.aggregate(
            [
                {
                    "$group": {
                        "_id": "$state",
                        "top": {"$top": {"output": "$_id", "sortBy": {"price": -1}}},
                        "p": {"$percentile": {"input": "$quantity", "p": [0.5], "method": "approximate"}},
                    }
                },
                {"$sort": {"_id": 1}},
            ]
        )
    )
    assert out == [{"_id": "CA", "top": 4, "p": [145.0]}, {"_id": "WA", "top": 3, "p": [104.0]}]
    out = list(db.cakes.aggregate([{"$bucketAuto": {"groupBy": "$price", "buckets": 2}}]))
    # Equal values share a bucket, so the first takes both 13s.
    assert out == [{"_id": {"min": 12, "max": 41}, "count": 3}, {"_id": {"min": 41, "max": 41}, "count": 1}]
    out = list(
        db.cakes.aggregate(
            [
                {"$match": {"state": "CA"}},
                {"$densify": {"field": "price", "range": {"step": 10, "bounds": "full"}}},
                {"$fill": {"sortBy": {"price": 1}, "output": {"quantity": {"method": "locf"}}}},
                {"$project": {"_id": 0, "price": 1, "quantity": 1}},
            ]
        )
    )
    assert out == [
        {"price": 12, "quantity": 145},
        {"price": 13, "quantity": 120},
        {"price": 22, "quantity": 120},
        {"price": 32, "quantity": 120},
        {"price": 41, "quantity": 162},
    ]
    assert list(db.cakes.aggregate([{"$redact": "$$PRUNE"}])) == []
    with pytest.raises(OperationFailure) as e:
        list(db.cakes.aggregate([{"$setWindowFields": {"output": {"r": {"$rank": {}}}}}]))
    assert e.value.code == 5371602
