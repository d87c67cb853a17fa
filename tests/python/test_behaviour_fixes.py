"""Silent differences from mongod 7.0 found by other projects' suites (issue 15, item 8), each
checked through pymongo as an application meets it."""

from __future__ import annotations

import pytest
from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, OperationFailure


def test_get_more_and_kill_cursors_in_a_snapshot_session(client, db):
    db.snap.insert_many([{"_id": i} for i in range(5)])
    with client.start_session(snapshot=True) as s:
        # pymongo repeats readConcern snapshot on getMore; mongod accepts it.
        assert [d["_id"] for d in db.snap.find({}, batch_size=2, session=s)] == [0, 1, 2, 3, 4]
        cursor = db.snap.find({}, batch_size=2, session=s)
        next(cursor)
        cursor.close()  # killCursors with the same readConcern
    # The snapshot session read at its own time: a later write is not in a repeated read.
    with client.start_session(snapshot=True) as s:
        first = list(db.snap.find({}, batch_size=2, session=s))
        db.snap.insert_one({"_id": 99})
        again = list(db.snap.find({}, batch_size=2, session=s))
        assert first == again and {"_id": 99} not in again


def assert_unsatisfiable(reply):
    assert reply["ok"] == 1.0
    assert reply["writeConcernError"]["code"] == 100
    assert reply["writeConcernError"]["codeName"] == "UnsatisfiableWriteConcern"


def test_ddl_reports_an_unsatisfiable_write_concern(client, db):
    w2 = {"w": 2}
    assert_unsatisfiable(db.command("create", "wc_created", writeConcern=w2))
    assert "wc_created" in db.list_collection_names()
    assert_unsatisfiable(db.command("drop", "wc_created", writeConcern=w2))
    db.wc_source.insert_one({"_id": 1})
    reply = client.admin.command(
        "renameCollection", f"{db.name}.wc_source", to=f"{db.name}.wc_target", writeConcern=w2
    )
    assert_unsatisfiable(reply)
    assert db.wc_target.find_one() == {"_id": 1}
    assert_unsatisfiable(db.command("dropDatabase", writeConcern=w2))
    assert db.name not in client.list_database_names()


def test_drop_database_says_what_it_dropped(client):
    client.gone_db.c.insert_one({})
    assert client.gone_db.command("dropDatabase")["dropped"] == "gone_db"
    assert "gone_db" not in client.list_database_names()


def test_list_databases_always_shows_admin_config_and_local(client):
    names = client.list_database_names()
    assert "admin" in names and "local" in names and "config" in names
    assert names == sorted(names)


def test_list_indexes_keeps_background_and_ignores_it_for_identity(db):
    db.bg.create_index("y", background=True)
    spec = {i["name"]: i for i in db.bg.list_indexes()}["y_1"]
    assert spec["background"] is True
    # The same index without the flag already exists: no conflict, nothing created.
    assert db.bg.create_index("y") == "y_1"
    assert len(list(db.bg.list_indexes())) == 2
    with pytest.raises(OperationFailure) as e:
        db.bg.create_index("z", background="yes")
    assert e.value.code == 14


def test_id_index_takes_no_options(db):
    db.ids.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as e:
        db.command(
            "createIndexes", "ids", indexes=[{"key": {"_id": 1}, "name": "_id_", "unique": True}]
        )
    assert e.value.code == 197
    assert e.value.details["codeName"] == "InvalidIndexSpecificationOption"
    assert [i["name"] for i in db.ids.list_indexes()] == ["_id_"]


def test_two_positional_operators_are_refused(db):
    db.pos.insert_one({"_id": 1, "x": [{"test": [1]}]})
    with pytest.raises(OperationFailure) as e:
        db.pos.update_one({"x.test": 1}, {"$set": {"x.$.test.$": 2}})
    assert e.value.code == 2
    assert "Too many positional" in e.value.details["errmsg"]


def test_sparse_unique_index_leaves_out_paths_through_empty_arrays(db):
    db.sp.create_index([("a.b", ASCENDING)], unique=True, sparse=True)
    db.sp.insert_many([{"a": []}, {"a": []}, {"a": [{"c": 1}]}, {"a": [{"c": 1}]}, {"a": 1}])
    db.sp.insert_one({"a": [{"b": 1}]})
    with pytest.raises(BulkWriteError):
        db.sp.insert_many([{"a": [{"b": 1}]}])
    assert db.sp.count_documents({"a.b": 1}) == 1
    assert db.sp.count_documents({}) == 6


def test_positional_update_after_exists(db):
    db.ex.insert_one({"_id": 1, "a": [{"b": {"c": 1}}, {"b": {"d": 1}}]})
    result = db.ex.update_one({"a.b.d": {"$exists": True}}, {"$set": {"a.$.x": 1}})
    assert result.modified_count == 1
    assert db.ex.find_one() == {"_id": 1, "a": [{"b": {"c": 1}}, {"b": {"d": 1}, "x": 1}]}


def test_dbref_fields_inside_elem_match(db):
    db.refs.insert_many(
        [
            {"_id": 1, "refs": [{"$ref": "c", "$id": 5, "$db": "t"}]},
            {"_id": 2, "refs": [{"$ref": "c", "$id": 6}]},
        ]
    )
    found = db.refs.find({"refs": {"$elemMatch": {"$ref": "c", "$id": 5}}})
    assert [d["_id"] for d in found] == [1]


def test_merge_after_list_local_sessions_writes(client, db):
    with client.start_session() as s:
        client.admin.command("ping", session=s)
        out = list(
            client.admin.aggregate(
                [
                    {"$listLocalSessions": {}},
                    {"$project": {"lastUse": 1}},
                    {"$merge": {"into": {"db": db.name, "coll": "sessions_copy"}}},
                ]
            )
        )
        assert out == []
        ids = [d["_id"]["id"] for d in db.sessions_copy.find()]
        assert s.session_id["id"] in ids


@pytest.fixture(scope="module")
def test_server():
    from conftest import MangroveServer

    srv = MangroveServer(extra_args=["--enable-test-commands"])
    yield srv
    srv.stop()


def test_max_time_always_time_out_fail_point(test_server):
    from pymongo import MongoClient
    from pymongo.errors import ExecutionTimeout

    c = MongoClient(test_server.uri)
    c.fp.c.insert_one({"_id": 1})
    c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="alwaysOn")
    try:
        with pytest.raises(ExecutionTimeout) as e:
            c.fp.c.find_one({}, max_time_ms=60_000)
        assert e.value.code == 50
        # Without maxTimeMS nothing times out.
        assert c.fp.c.find_one({}) == {"_id": 1}
    finally:
        c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")
    assert c.fp.c.find_one({}, max_time_ms=60_000) == {"_id": 1}
    c.close()


def test_fail_command_on_the_handshake(test_server):
    from pymongo import MongoClient

    admin = MongoClient(test_server.uri)
    admin.admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": 1},
        data={"failCommands": ["hello", "isMaster"], "appName": "handshake-fail", "errorCode": 91},
    )
    # The handshake names its application itself; pymongo retries once it fails.
    other = MongoClient(test_server.uri, appname="handshake-fail", serverSelectionTimeoutMS=5000)
    assert other.admin.command("ping")["ok"] == 1.0
    reply = admin.admin.command("configureFailPoint", "failCommand", mode="off")
    assert reply["count"] == 1
    other.close()
    admin.close()


def test_planner_uses_a_partial_index_when_the_query_implies_its_filter(db):
    db.part.insert_many([{"a": i, "b": i % 3} for i in range(60)])
    db.part.create_index("a", partialFilterExpression={"b": {"$gt": 0}})

    def stage(query):
        plan = db.part.find(query).explain()["queryPlanner"]["winningPlan"]
        return plan.get("inputStage", plan)["stage"]

    for implied in [{"a": 4, "b": 1}, {"a": 4, "b": {"$gte": 1}}, {"a": 4, "b": {"$in": [1, 2]}}]:
        assert stage(implied) == "IXSCAN", implied
        expected = [d for d in db.part.find(implied).hint([("$natural", 1)])]
        assert list(db.part.find(implied)) == expected
    for not_implied in [{"a": 4}, {"a": 4, "b": 0}, {"a": 4, "b": {"$gte": 0}}, {"a": 4, "b": "x"}]:
        assert stage(not_implied) == "COLLSCAN", not_implied


def test_a_cursor_spends_its_find_max_time_ms_across_get_mores(test_server):
    from pymongo import MongoClient
    from pymongo.errors import ExecutionTimeout

    c = MongoClient(test_server.uri)
    c.fp.many.insert_many([{"i": i} for i in range(50)])
    cursor = c.fp.many.find().batch_size(5).max_time_ms(60_000)
    next(cursor)
    c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="alwaysOn")
    try:
        with pytest.raises(ExecutionTimeout):
            list(cursor)
    finally:
        c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")
    # Without a limit on the find, its getMores have none either.
    unlimited = c.fp.many.find().batch_size(5)
    next(unlimited)
    c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="alwaysOn")
    try:
        assert len(list(unlimited)) == 49
    finally:
        c.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")
    c.close()


def test_an_empty_collation_is_the_simple_one(db):
    """mongod builds no collator for `collation: {}`; it used to be refused for its missing
    locale here."""
    db.c.insert_many([{"_id": 1, "w": "a"}, {"_id": 2, "w": "A"}])
    assert [d["_id"] for d in db.c.find({"w": "a"}, collation={})] == [1]
    assert db.c.count_documents({"w": {"$gte": "a"}}, collation={}) == 1
