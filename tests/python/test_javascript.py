"""Server-side JavaScript through pymongo: $where (find, count, update, delete), $function,
$accumulator, mapReduce with every output mode, finalize and scope, and the bounds and switches:
maxTimeMS (50), the per-call time limit (262), --javascript-enabled=false, transactions (263)."""

from __future__ import annotations

import time

import pytest
from bson import Code, Int64, ObjectId
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import MangroveServer


def seed(db):
    db.c.insert_many([{"_id": i, "a": i, "g": "even" if i % 2 == 0 else "odd"} for i in range(10)])
    return db.c


def test_where_string_and_function_forms(db):
    c = seed(db)
    assert sorted(d["_id"] for d in c.find({"$where": "this.a > 6"})) == [7, 8, 9]
    assert sorted(d["_id"] for d in c.find({"$where": "return obj.a < 2;"})) == [0, 1]
    fn = Code("function() { return this.g == 'odd' && this.a % 3 == 0; }")
    assert sorted(d["_id"] for d in c.find({"$where": fn})) == [3, 9]
    # With an indexable condition next to it, both must hold.
    c.create_index("a")
    assert [d["_id"] for d in c.find({"a": {"$gte": 5}, "$where": "this.a % 2 == 0"}).sort("a", 1)] == [6, 8]
    # The count command runs $where; count_documents is an aggregate, whose $match refuses it.
    assert c.database.command("count", "c", query={"$where": "this.g === 'even'"})["n"] == 5
    with pytest.raises(OperationFailure) as e:
        c.count_documents({"$where": "true"})
    assert e.value.code == 2


def test_where_in_writes(db):
    c = seed(db)
    r = c.update_many({"$where": "this.a >= 8"}, {"$set": {"big": True}})
    assert r.modified_count == 2
    assert sorted(d["_id"] for d in c.find({"big": True})) == [8, 9]
    r = c.delete_many({"$where": function_of("this.a < 3")})
    assert r.deleted_count == 3
    assert c.count_documents({}) == 7


def function_of(expr: str) -> Code:
    return Code("function() { return " + expr + "; }")


def test_where_sees_bson_types(db):
    oid = ObjectId()
    db.t.insert_one({"_id": oid, "n": Int64(5), "when": __import__("datetime").datetime(2020, 5, 17)})
    hit = db.t.find_one({"$where": "this._id.str == '%s' && this.n == 5 && this.when.getUTCFullYear() == 2020" % oid})
    assert hit is not None and hit["_id"] == oid


def test_where_errors(db):
    c = seed(db)
    with pytest.raises(OperationFailure) as e:
        list(c.find({"$where": "this.a >"}))
    assert e.value.code == 139 and e.value.details["codeName"] == "JSInterpreterFailure"
    with pytest.raises(OperationFailure) as e:
        list(c.find({"$where": "if (this.a == 4) throw new Error('four'); return true"}))
    assert e.value.code == 139 and "four" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        list(c.aggregate([{"$match": {"$where": "true"}}]))
    assert e.value.code == 2


def test_endless_where_stops_at_max_time_ms(db):
    seed(db)
    started = time.monotonic()
    with pytest.raises(OperationFailure) as e:
        list(db.c.find({"$where": "while (true) {}"}).max_time_ms(300))
    assert e.value.code == 50 and e.value.details["codeName"] == "MaxTimeMSExpired"
    assert time.monotonic() - started < 10
    # Writes take the deadline too (reported per statement, as write errors).
    endless = {"$where": "while (true) {}"}
    for cmd, stmts in (("delete", {"deletes": [{"q": endless, "limit": 0}]}),
                       ("delete", {"deletes": [{"q": endless, "limit": 1}]}),
                       ("update", {"updates": [{"q": endless, "u": {"$set": {"x": 1}}, "multi": True}]})):
        r = db.command(cmd, "c", maxTimeMS=300, **stmts)
        assert r["writeErrors"][0]["code"] == 50, (cmd, r)
    # The server goes on answering JavaScript afterwards.
    assert len(list(db.c.find({"$where": "this.a == 1"}))) == 1


def test_function_expression(db):
    c = seed(db)
    got = list(c.aggregate([
        {"$match": {"a": {"$lt": 3}}},
        {"$project": {"s": {"$function": {
            "body": "function(g, a) { return g.toUpperCase() + '-' + (a * 10); }",
            "args": ["$g", "$a"], "lang": "js"}}}},
        {"$sort": {"_id": 1}},
    ]))
    assert [d["s"] for d in got] == ["EVEN-0", "ODD-10", "EVEN-20"]
    # In a find filter, through $expr.
    f = {"$expr": {"$function": {"body": Code("function(a) { return a > 7; }"), "args": ["$a"], "lang": "js"}}}
    assert sorted(d["_id"] for d in c.find(f)) == [8, 9]
    with pytest.raises(OperationFailure) as e:
        list(c.aggregate([{"$project": {"s": {"$function": {"body": "function() {}", "args": [], "lang": "python"}}}}]))
    assert e.value.code == 31419


def test_accumulator_in_group(db):
    c = seed(db)
    got = list(c.aggregate([
        {"$group": {"_id": "$g", "avg": {"$accumulator": {
            "init": "function() { return { sum: 0, n: 0 }; }",
            "accumulate": "function(s, a) { return { sum: s.sum + a, n: s.n + 1 }; }",
            "accumulateArgs": ["$a"],
            "merge": "function(x, y) { return { sum: x.sum + y.sum, n: x.n + y.n }; }",
            "finalize": "function(s) { return s.sum / s.n; }",
            "lang": "js"}}}},
        {"$sort": {"_id": 1}},
    ]))
    assert got == [{"_id": "even", "avg": 4.0}, {"_id": "odd", "avg": 5.0}]


MAP = "function() { emit(this.g, { n: 1, total: this.a * factor }); }"
REDUCE = ("function(key, values) { var r = { n: 0, total: 0 };"
          " values.forEach(function(v) { r.n += v.n; r.total += v.total; }); return r; }")
FINALIZE = "function(key, v) { v.avg = v.total / v.n; return v; }"


def test_map_reduce_inline_with_finalize_scope_query_sort_limit(db):
    seed(db)
    r = db.command("mapReduce", "c", map=Code(MAP), reduce=Code(REDUCE), finalize=Code(FINALIZE),
                   scope={"factor": 2}, out={"inline": 1})
    assert r["ok"] == 1.0
    results = sorted(r["results"], key=lambda d: d["_id"])
    assert results == [
        {"_id": "even", "value": {"n": 5.0, "total": 40.0, "avg": 8.0}},
        {"_id": "odd", "value": {"n": 5.0, "total": 50.0, "avg": 10.0}},
    ]
    r = db.command("mapReduce", "c", map=MAP, reduce=REDUCE, scope={"factor": 1},
                   query={"a": {"$gte": 2}}, sort={"a": 1}, limit=3, out={"inline": 1})
    got = {d["_id"]: d["value"] for d in r["results"]}
    assert got == {"even": {"n": 2.0, "total": 6.0}, "odd": {"n": 1.0, "total": 3.0}}


def test_map_reduce_output_modes(db):
    seed(db)
    common = {"map": MAP, "reduce": REDUCE, "scope": {"factor": 1}}
    r = db.command("mapReduce", "c", out="res", **common)
    assert (r["result"], r["ok"]) == ("res", 1.0)
    assert {d["_id"]: d["value"]["total"] for d in db.res.find()} == {"even": 20.0, "odd": 25.0}
    # replace drops what was there.
    db.res.insert_one({"_id": "stale"})
    db.command("mapReduce", "c", out={"replace": "res"}, query={"g": "odd"}, **common)
    assert [d["_id"] for d in db.res.find()] == ["odd"]
    # merge keeps other keys and overwrites matching ones.
    db.res.insert_one({"_id": "other", "value": 1})
    db.command("mapReduce", "c", out={"merge": "res"}, query={"g": "even"}, **common)
    assert {d["_id"] for d in db.res.find()} == {"odd", "even", "other"}
    # reduce folds the new value into the existing one with the reduce function.
    db.command("mapReduce", "c", out={"reduce": "res"}, query={"g": "odd"}, **common)
    assert db.res.find_one({"_id": "odd"})["value"] == {"n": 10.0, "total": 50.0}
    assert db.res.find_one({"_id": "other"})["value"] == 1
    # Another database.
    r = db.command("mapReduce", "c", out={"replace": "elsewhere", "db": db.name + "_out"}, **common)
    assert r["result"] == {"db": db.name + "_out", "collection": "elsewhere"}
    assert db.client[db.name + "_out"].elsewhere.count_documents({}) == 2


def test_map_reduce_errors(client, db):
    seed(db)
    with pytest.raises(OperationFailure) as e:
        db.command("mapReduce", "c", map="function() { emit(this.g, 1", reduce=REDUCE, out={"inline": 1})
    assert e.value.code == 139
    with pytest.raises(OperationFailure) as e:
        db.command("mapReduce", "c", map=MAP, reduce=REDUCE)
    assert e.value.code == 40414
    with pytest.raises(OperationFailure) as e:
        db.command("mapReduce", "c", map="function() { while (true) {} }", reduce=REDUCE,
                   out={"inline": 1}, maxTimeMS=300)
    assert e.value.code == 50
    with client.start_session() as s:
        with s.start_transaction():
            db.c.insert_one({"_id": 100}, session=s)
            with pytest.raises(OperationFailure) as e:
                db.command("mapReduce", "c", map=MAP, reduce=REDUCE, out={"inline": 1}, session=s)
            assert e.value.code == 263


def test_a_disabled_engine_refuses_every_javascript_feature():
    srv = MangroveServer(extra_args=["--javascript-enabled=false"])
    try:
        c = MongoClient(srv.uri, serverSelectionTimeoutMS=10_000)
        db = c.js_off
        db.c.insert_one({"a": 1})
        with pytest.raises(OperationFailure) as e:
            list(db.c.find({"$where": "true"}))
        assert e.value.code == 6108304 and "no globalScriptEngine" in str(e.value)
        fn = {"$function": {"body": "function() { return 1; }", "args": [], "lang": "js"}}
        with pytest.raises(OperationFailure) as e:
            list(db.c.aggregate([{"$project": {"x": fn}}]))
        assert e.value.code == 31264
        acc = {"$accumulator": {"init": "function() { return 0; }", "accumulate": "function(s) { return s; }",
                                "accumulateArgs": [], "merge": "function(a) { return a; }", "lang": "js"}}
        with pytest.raises(OperationFailure) as e:
            list(db.c.aggregate([{"$group": {"_id": None, "x": acc}}]))
        assert e.value.code == 31264
        with pytest.raises(OperationFailure) as e:
            db.command("mapReduce", "c", map=MAP, reduce=REDUCE, out={"inline": 1})
        assert e.value.code == 31264
        # Everything else still works.
        assert db.c.count_documents({"a": 1}) == 1
        c.close()
    finally:
        srv.stop()


def test_the_per_call_time_limit_without_max_time_ms():
    srv = MangroveServer(extra_args=["--javascript-time-limit-ms", "300"])
    try:
        c = MongoClient(srv.uri, serverSelectionTimeoutMS=10_000)
        c.t.c.insert_one({"a": 1})
        started = time.monotonic()
        with pytest.raises(OperationFailure) as e:
            c.t.c.delete_many({"$where": "while (true) {}"})
        assert e.value.code == 262 and "javascript-time-limit-ms" in str(e.value)
        assert time.monotonic() - started < 10
        assert c.t.c.count_documents({}) == 1
        c.close()
    finally:
        srv.stop()


def test_map_reduce_output_needs_write_rights():
    srv = MangroveServer(extra_args=["--auth"])
    try:
        with MongoClient(srv.uri, serverSelectionTimeoutMS=10_000) as c:
            c.admin.command("createUser", "root", pwd="pw", roles=["root"])
        with MongoClient(srv.uri, username="root", password="pw", serverSelectionTimeoutMS=10_000) as c:
            c.shop.c.insert_many([{"g": "x", "a": 1}, {"g": "x", "a": 2}])
            c.admin.command("createUser", "reader", pwd="pw", roles=[{"role": "read", "db": "shop"}])
        with MongoClient(srv.uri, username="reader", password="pw", serverSelectionTimeoutMS=10_000) as c:
            args = {"map": "function() { emit(this.g, this.a); }",
                    "reduce": "function(k, vs) { return Array.sum(vs); }"}
            r = c.shop.command("mapReduce", "c", out={"inline": 1}, **args)
            assert r["results"] == [{"_id": "x", "value": 3.0}]
            with pytest.raises(OperationFailure) as e:
                c.shop.command("mapReduce", "c", out="res", **args)
            assert e.value.code == 13
            assert "res" not in c.shop.list_collection_names()
    finally:
        srv.stop()
