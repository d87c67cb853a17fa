"""Geospatial indexes and operators through pymongo: 2dsphere and 2d indexes, validation on
insert (16755), $geoWithin/$geoIntersects with and without an index, $near/$nearSphere order and
distance limits, $geoNear, transactions, and explain showing the geo index at work."""

from __future__ import annotations

import math
import random

import pytest
from conftest import report
from pymongo import GEO2D, GEOSPHERE
from pymongo.errors import OperationFailure, WriteError

EARTH_M = 6378100.0


def point(lng, lat):
    return {"type": "Point", "coordinates": [lng, lat]}


def square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def haversine_m(a, b):
    la1, la2 = math.radians(a[1]), math.radians(b[1])
    dlat, dlon = la2 - la1, math.radians(b[0] - a[0])
    h = math.sin(dlat / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin(dlon / 2) ** 2
    return 2 * math.asin(min(1.0, math.sqrt(h))) * EARTH_M


def winning(explain):
    plan = explain["queryPlanner"]["winningPlan"]
    while plan["stage"] in ("LIMIT", "SKIP", "SORT", "PROJECTION_DEFAULT", "FETCH"):
        plan = plan["inputStage"]
    return plan


def test_index_specs_are_normalized(db):
    assert db.places.create_index([("loc", GEOSPHERE)]) == "loc_2dsphere"
    assert db.places.create_index([("cat", 1), ("loc2", GEOSPHERE)]) == "cat_1_loc2_2dsphere"
    assert db.flat.create_index([("pos", GEO2D)], min=-500, max=500, bits=20) == "pos_2d"
    info = {ix["name"]: ix for ix in db.places.list_indexes()}
    assert info["loc_2dsphere"]["2dsphereIndexVersion"] == 3
    assert dict(info["loc_2dsphere"]["key"]) == {"loc": "2dsphere"}
    flat = {ix["name"]: ix for ix in db.flat.list_indexes()}["pos_2d"]
    assert (flat["min"], flat["max"], flat["bits"]) == (-500, 500, 20)
    with pytest.raises(OperationFailure) as e:
        db.flat.create_index([("a", 1), ("b", GEO2D)])
    assert e.value.code == 67


def test_invalid_geometries_are_refused_with_16755(db):
    db.g.create_index([("loc", GEOSPHERE)])
    bad = [
        point(200, 0),
        {"type": "Point", "coordinates": ["x", 0]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]},
        {"type": "LineString", "coordinates": [[0, 0]]},
        {"type": "Nope", "coordinates": []},
        "somewhere",
    ]
    for i, loc in enumerate(bad):
        with pytest.raises(WriteError) as e:
            db.g.insert_one({"_id": i, "loc": loc})
        assert e.value.code == 16755, loc
        assert "Can't extract geo keys" in e.value.details["errmsg"]
    assert db.g.count_documents({}) == 0
    # Valid shapes of every type, legacy pairs, and documents without the field (not indexed).
    good = [
        point(2.35, 48.85),
        [2.35, 48.85],
        {"lng": 2.35, "lat": 48.85},
        {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
        {"type": "Polygon", "coordinates": [
            [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[1, 1], [2, 1], [2, 2], [1, 1]]]},
        {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
        {"type": "MultiPolygon", "coordinates": [square(0, 0, 1, 1)["coordinates"]]},
        {"type": "GeometryCollection", "geometries": [point(1, 2), square(5, 5, 6, 6)]},
    ]
    db.g.insert_many([{"_id": 100 + i, "loc": loc} for i, loc in enumerate(good)])
    db.g.insert_one({"_id": "none"})
    db.g.insert_one({"_id": "null", "loc": None})
    assert db.g.count_documents({}) == len(good) + 2
    # An update to a bad shape is refused too, and leaves the document as it was.
    with pytest.raises(WriteError) as e:
        db.g.update_one({"_id": 100}, {"$set": {"loc": point(0, 95)}})
    assert e.value.code == 16755
    assert db.g.find_one({"_id": 100})["loc"] == point(2.35, 48.85)
    # Building an index over a bad shape fails the build as mongod does.
    db.late.insert_one({"loc": point(0, 100)})
    with pytest.raises(OperationFailure) as e:
        db.late.create_index([("loc", GEOSPHERE)])
    assert e.value.code == 16755
    assert [ix["name"] for ix in db.late.list_indexes()] == ["_id_"]
    # 2d: out of the plane's bounds.
    db.f.create_index([("pos", GEO2D)])
    with pytest.raises(WriteError) as e:
        db.f.insert_one({"pos": [181, 0]})
    assert e.value.code == 13027


def load_points(coll, n=3000, seed=7):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lng, lat = rng.uniform(-10, 10), rng.uniform(40, 50)
        docs.append({"_id": i, "loc": point(lng, lat), "cat": i % 5})
    docs.append({"_id": "line", "loc": {"type": "LineString", "coordinates": [[-20, 45], [20, 45.5]]}})
    docs.append({"_id": "poly", "loc": square(-1, 44, 1, 46)})
    docs.append({"_id": "legacy", "loc": [0.5, 45.2]})
    coll.insert_many(docs)
    return docs


REGIONS = [
    {"$geoWithin": {"$geometry": square(-2, 43, 2, 47)}},
    {"$geoWithin": {"$geometry": square(0.1, 45.1, 0.3, 45.3)}},
    {"$geoWithin": {"$geometry": {"type": "MultiPolygon", "coordinates": [
        square(-5, 41, -4, 42)["coordinates"], square(4, 48, 5, 49)["coordinates"]]}}},
    {"$geoWithin": {"$box": [[-3, 42], [-2, 43]]}},
    {"$geoWithin": {"$polygon": [[0, 40], [3, 40], [0, 43]]}},
    {"$geoWithin": {"$center": [[5, 45], 0.5]}},
    {"$geoWithin": {"$centerSphere": [[5, 45], 50_000 / EARTH_M]}},
    {"$geoIntersects": {"$geometry": square(-0.5, 44.5, 0.5, 45.5)}},
    {"$geoIntersects": {"$geometry": {"type": "LineString", "coordinates": [[-9, 41], [9, 49]]}}},
    {"$geoIntersects": {"$geometry": point(0, 45.25)}},
]


def test_within_and_intersects_agree_with_and_without_index(db):
    load_points(db.pts)
    unindexed = [sorted(map(str, (d["_id"] for d in db.pts.find({"loc": q})))) for q in REGIONS]
    db.pts.create_index([("loc", GEOSPHERE)])
    total = db.pts.count_documents({})
    for q, expected in zip(REGIONS, unindexed):
        got = sorted(map(str, (d["_id"] for d in db.pts.find({"loc": q}))))
        assert got == expected, q
        scan = sorted(map(str, (d["_id"] for d in db.pts.find({"loc": q}).hint([("$natural", 1)]))))
        assert scan == expected, q
    # The polygon, the line and points inside: shapes are matched, not only points.
    assert "poly" in unindexed[7] and "line" in unindexed[8] and "poly" in unindexed[9]
    assert "legacy" in unindexed[0] and len(unindexed[0]) > 50
    e = db.pts.find({"loc": REGIONS[1]}).explain()
    ix = winning(e)
    assert ix["stage"] == "IXSCAN" and ix["indexName"] == "loc_2dsphere"
    assert dict(ix["keyPattern"]) == {"loc": "2dsphere"}
    assert ix["indexBounds"]["loc"]
    stats = e["executionStats"]
    assert stats["totalDocsExamined"] < total / 10
    assert stats["nReturned"] == len(unindexed[1])
    report(
        f"[pymongo] $geoWithin small polygon over {total} docs: keys {stats['totalKeysExamined']}, "
        f"docs {stats['totalDocsExamined']}, returned {stats['nReturned']}"
    )


def test_compound_2dsphere_with_an_ordinary_field(db):
    load_points(db.pts, n=1000)
    db.pts.create_index([("cat", 1), ("loc", GEOSPHERE)])
    q = {"cat": 3, "loc": REGIONS[0]}
    expected = sorted(map(str, (d["_id"] for d in db.pts.find(q).hint([("$natural", 1)]))))
    assert sorted(map(str, (d["_id"] for d in db.pts.find(q)))) == expected
    ix = winning(db.pts.find(q).explain())
    assert ix["stage"] == "IXSCAN" and ix["indexName"] == "cat_1_loc_2dsphere"
    # Documents without a location are not in the index: queries and sorts on `cat` alone
    # must not use it.
    db.pts.insert_many([{"_id": f"noloc{i}", "cat": 3} for i in range(5)])
    assert db.pts.count_documents({"cat": 3}) == 200 + 5
    assert winning(db.pts.find({"cat": 3}).explain())["stage"] == "COLLSCAN"
    assert len(list(db.pts.find({}, {"_id": 1}).sort("cat", 1))) == db.pts.estimated_document_count()


def test_near_orders_by_distance_with_limits(db):
    # Points due east of the origin along the equator, every 0.1 degree (about 11.1 km).
    db.eq.insert_many([{"_id": i, "loc": point(i / 10, 0)} for i in range(1, 41)])
    db.eq.insert_one({"_id": "far", "loc": point(90, 0)})
    with pytest.raises(OperationFailure) as e:
        list(db.eq.find({"loc": {"$near": {"$geometry": point(0, 0)}}}))
    assert e.value.code == 291
    assert "unable to find index for $geoNear query" in str(e.value)
    db.eq.create_index([("loc", GEOSPHERE)])
    near = {"$near": {"$geometry": point(0, 0)}}
    ids = [d["_id"] for d in db.eq.find({"loc": near})]
    assert ids == list(range(1, 41)) + ["far"]
    assert [d["_id"] for d in db.eq.find({"loc": near}).limit(3)] == [1, 2, 3]
    step = haversine_m((0, 0), (0.1, 0))
    limited = {"$near": {"$geometry": point(0, 0), "$minDistance": 2.5 * step, "$maxDistance": 5.5 * step}}
    assert [d["_id"] for d in db.eq.find({"loc": limited})] == [3, 4, 5]
    # From the other end the order reverses.
    ids = [d["_id"] for d in db.eq.find({"loc": {"$nearSphere": {"$geometry": point(4.05, 0)}}}).limit(4)]
    assert ids == [40, 39, 38, 37]
    # Legacy $nearSphere measures in radians.
    rad = 5.5 * step / EARTH_M
    ids = [d["_id"] for d in db.eq.find({"loc": {"$nearSphere": [0, 0], "$maxDistance": rad}})]
    assert ids == [1, 2, 3, 4, 5]
    e = db.eq.find({"loc": near}).limit(2).explain()
    stage = winning(e)
    assert stage["stage"] == "GEO_NEAR_2DSPHERE" and stage["indexName"] == "loc_2dsphere"
    assert e["executionStats"]["totalDocsExamined"] < 41


def test_near_on_a_2d_index_measures_on_the_plane(db):
    db.plane.insert_many([{"_id": f"{x},{y}", "pos": [x, y]} for x in range(-5, 6) for y in range(-5, 6)])
    with pytest.raises(OperationFailure) as e:
        list(db.plane.find({"pos": {"$near": [0, 0]}}))
    assert e.value.code == 291
    db.plane.create_index([("pos", GEO2D)])
    got = list(db.plane.find({"pos": {"$near": [0.2, 0.1], "$maxDistance": 1.5}}))
    dist = [math.dist(d["pos"], [0.2, 0.1]) for d in got]
    assert dist == sorted(dist) and all(x <= 1.5 for x in dist)
    assert got[0]["_id"] == "0,0" and len(got) == len([1 for x in range(-5, 6) for y in range(-5, 6)
                                                       if math.dist([x, y], [0.2, 0.1]) <= 1.5])
    box = {"pos": {"$geoWithin": {"$box": [[-1, -1], [2, 1]]}}}
    assert db.plane.count_documents(box) == 4 * 3
    assert sorted(d["_id"] for d in db.plane.find(box)) == sorted(
        d["_id"] for d in db.plane.find(box).hint([("$natural", 1)]))
    assert winning(db.plane.find(box).explain())["stage"] == "IXSCAN"
    assert winning(db.plane.find({"pos": {"$near": [0, 0]}}).explain())["stage"] == "GEO_NEAR_2D"


def test_geo_near_stage(db):
    db.eq.insert_many([{"_id": i, "loc": point(i / 10, 0), "odd": i % 2} for i in range(1, 21)])
    with pytest.raises(OperationFailure) as e:
        list(db.eq.aggregate([{"$geoNear": {"near": point(0, 0), "distanceField": "d"}}]))
    assert e.value.code == 27
    db.eq.create_index([("loc", GEOSPHERE)])
    out = list(db.eq.aggregate([
        {"$geoNear": {"near": point(0, 0), "distanceField": "dist.m", "query": {"odd": 1},
                      "includeLocs": "where", "maxDistance": 100_000, "spherical": True}},
        {"$limit": 4},
    ]))
    assert [d["_id"] for d in out] == [1, 3, 5, 7]
    for d in out:
        assert d["where"] == d["loc"]
        assert abs(d["dist"]["m"] - haversine_m((0, 0), (d["_id"] / 10, 0))) < 1.0
    km = list(db.eq.aggregate([{"$geoNear": {"near": point(0, 0), "distanceField": "d",
                                             "distanceMultiplier": 0.001, "key": "loc"}}]))
    assert [d["_id"] for d in km] == list(range(1, 21)) and abs(km[0]["d"] - 11.13) < 0.05
    with pytest.raises(OperationFailure) as e:
        list(db.eq.aggregate([{"$match": {}}, {"$geoNear": {"near": point(0, 0), "distanceField": "d"}}]))
    assert e.value.code == 40602
    with pytest.raises(OperationFailure) as e:
        list(db.eq.aggregate([{"$match": {"loc": {"$near": {"$geometry": point(0, 0)}}}}]))
    assert e.value.code == 2


def test_transactions_see_their_own_geo_writes(client, db):
    db.t.create_index([("loc", GEOSPHERE)])
    db.t.insert_one({"_id": "out", "loc": point(50, 50)})
    within = {"loc": {"$geoWithin": {"$geometry": square(-1, -1, 1, 1)}}}
    with client.start_session() as s:
        with s.start_transaction():
            db.t.insert_one({"_id": "in", "loc": point(0.5, 0.5)}, session=s)
            assert [d["_id"] for d in db.t.find(within, session=s)] == ["in"]
            assert db.t.count_documents(within) == 0
            near = {"loc": {"$near": {"$geometry": point(0, 0)}}}
            assert [d["_id"] for d in db.t.find(near, session=s)] == ["in", "out"]
            agg = db.t.aggregate([{"$geoNear": {"near": point(0, 0), "distanceField": "d"}}], session=s)
            assert [d["_id"] for d in agg] == ["in", "out"]
            with pytest.raises(WriteError) as e:
                db.t.insert_one({"_id": "bad", "loc": point(0, 91)}, session=s)
            assert e.value.code == 16755
            s.abort_transaction()
    assert db.t.count_documents(within) == 0
    with client.start_session() as s:
        with s.start_transaction():
            db.t.insert_one({"_id": "in", "loc": point(0.5, 0.5)}, session=s)
    assert [d["_id"] for d in db.t.find(within)] == ["in"]


def test_geo_near_streams_in_distance_order_past_one_chunk(db):
    load_points(db.pts, n=2500)
    db.pts.create_index([("loc", GEOSPHERE)])
    out = list(db.pts.aggregate([
        {"$geoNear": {"near": point(1, 45), "distanceField": "d", "query": {"cat": {"$ne": 4}}}},
        {"$project": {"d": 1}},
    ], batchSize=100))
    assert len(out) == 2000 + 3
    dist = [d["d"] for d in out]
    assert dist == sorted(dist)
    first = list(db.pts.aggregate([
        {"$geoNear": {"near": point(1, 45), "distanceField": "d", "query": {"cat": {"$ne": 4}}}},
        {"$limit": 5},
    ]))
    assert [d["_id"] for d in first] == [d["_id"] for d in out[:5]]
