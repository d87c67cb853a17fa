"""`bulkWrite` (MongoDB 8.0) through pymongo's `client.bulk_write`: mixed namespaces, ordered
and unordered, verbose results, errors per operation, results through a cursor, inside a
transaction, and as a retryable write whose retry runs nothing twice."""

from __future__ import annotations

import pytest
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.errors import ClientBulkWriteException, OperationFailure


def test_mixed_namespaces_with_verbose_results(client, db):
    a, b = f"{db.name}.a", f"{db.name}.b"
    db.a.insert_many([{"_id": i, "x": i} for i in range(5)])
    result = client.bulk_write(
        [
            InsertOne({"_id": 10, "x": 10}, namespace=a),
            InsertOne({"_id": 1, "y": 1}, namespace=b),
            UpdateOne({"_id": 1}, {"$inc": {"x": 100}}, namespace=a),
            UpdateMany({"x": {"$lt": 4}}, {"$set": {"small": True}}, namespace=a),
            ReplaceOne({"_id": 7}, {"z": 7}, upsert=True, namespace=b),
            DeleteOne({"_id": 0}, namespace=a),
            DeleteMany({"x": {"$gte": 3, "$lt": 5}}, namespace=a),
        ],
        verbose_results=True,
    )
    assert (result.inserted_count, result.upserted_count) == (2, 1)
    assert (result.matched_count, result.modified_count, result.deleted_count) == (4, 4, 3)
    assert result.insert_results[0].inserted_id == 10
    assert result.update_results[2].matched_count == 1
    assert result.update_results[3].modified_count == 3
    assert result.update_results[4].upserted_id == 7
    assert result.delete_results[6].deleted_count == 2
    assert sorted(d["_id"] for d in db.a.find()) == [1, 2, 10]
    assert db.a.find_one({"_id": 1}) == {"_id": 1, "x": 101}
    assert sorted(d["_id"] for d in db.b.find()) == [1, 7]


def test_ordered_stops_at_the_first_error_and_unordered_goes_on(client, db):
    ns = f"{db.name}.c"
    db.c.insert_one({"_id": 1})
    models = [InsertOne({"_id": 2}, namespace=ns), InsertOne({"_id": 1}, namespace=ns), InsertOne({"_id": 3}, namespace=ns)]
    with pytest.raises(ClientBulkWriteException) as e:
        client.bulk_write(models)
    assert [(w["idx"], w["code"]) for w in e.value.write_errors] == [(1, 11000)]
    assert e.value.partial_result.inserted_count == 1
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2]
    db.c.delete_many({"_id": {"$ne": 1}})
    with pytest.raises(ClientBulkWriteException) as e:
        client.bulk_write(models, ordered=False)
    assert e.value.partial_result.inserted_count == 2
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2, 3]
    # A bad update is that op's error, not the command's.
    with pytest.raises(ClientBulkWriteException) as e:
        client.bulk_write([UpdateOne({}, {"$bogus": {"a": 1}}, namespace=ns), InsertOne({"_id": 4}, namespace=ns)], ordered=False)
    assert e.value.write_errors[0]["idx"] == 0
    assert db.c.count_documents({"_id": 4}) == 1


def test_results_come_through_a_cursor(client, db):
    ns = f"{db.name}.many"
    reply = client.admin.command(
        {
            "bulkWrite": 1,
            "ops": [{"insert": 0, "document": {"_id": i}} for i in range(250)],
            "nsInfo": [{"ns": ns}],
            "cursor": {"batchSize": 100},
        }
    )
    assert reply["nInserted"] == 250 and reply["nErrors"] == 0
    cursor = reply["cursor"]
    assert cursor["ns"] == "admin.$cmd.bulkWrite" and len(cursor["firstBatch"]) == 100 and cursor["id"] != 0
    more = client.admin.command({"getMore": cursor["id"], "collection": "$cmd.bulkWrite"})
    assert len(more["cursor"]["nextBatch"]) == 150 and more["cursor"]["id"] == 0
    # errorsOnly leaves successes out.
    reply = client.admin.command(
        {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 0}}, {"insert": 0, "document": {"_id": 999}}],
         "nsInfo": [{"ns": ns}], "errorsOnly": True, "ordered": False}
    )
    assert [r["idx"] for r in reply["cursor"]["firstBatch"]] == [0]
    assert (reply["nErrors"], reply["nInserted"]) == (1, 1)


def test_bad_commands_are_refused_whole(client, db):
    ns = f"{db.name}.bad"
    cases = [
        ({"bulkWrite": 1, "ops": [{"insert": 1, "document": {}}], "nsInfo": [{"ns": ns}]}, 2),
        ({"bulkWrite": 1, "ops": [{"insert": 0, "document": {}, "x": 1}], "nsInfo": [{"ns": ns}]}, 40415),
        ({"bulkWrite": 1, "ops": [{"insert": 0, "document": {}}], "nsInfo": [{"ns": "nodot"}]}, 73),
        ({"bulkWrite": 1, "ops": [], "nsInfo": [{"ns": ns}]}, 16),
    ]
    for command, code in cases:
        with pytest.raises(OperationFailure) as e:
            client.admin.command(command)
        assert e.value.code == code, command
    with pytest.raises(OperationFailure) as e:
        db.command({"bulkWrite": 1, "ops": [{"insert": 0, "document": {}}], "nsInfo": [{"ns": ns}]})
    assert e.value.code == 13  # admin only
    assert db.bad.count_documents({}) == 0


def test_inside_a_transaction(client, db):
    ns = f"{db.name}.txn"
    db.txn.insert_one({"_id": 0})
    with client.start_session() as s:
        with s.start_transaction():
            client.bulk_write([InsertOne({"_id": 1}, namespace=ns), UpdateOne({"_id": 0}, {"$set": {"a": 1}}, namespace=ns)], session=s)
            assert db.txn.count_documents({}) == 1  # not visible outside yet
            s.abort_transaction()
    assert list(db.txn.find()) == [{"_id": 0}]
    with client.start_session() as s:
        with s.start_transaction():
            client.bulk_write([InsertOne({"_id": 1}, namespace=ns)], session=s)
    assert db.txn.count_documents({}) == 2


@pytest.fixture(scope="module")
def test_server():
    from conftest import MangroveServer

    srv = MangroveServer(extra_args=["--enable-test-commands"])
    yield srv
    srv.stop()


def test_a_retried_bulk_write_runs_nothing_twice(test_server):
    from pymongo import MongoClient, monitoring

    class Started(monitoring.CommandListener):
        names: list[str] = []

        def started(self, event):
            self.names.append(event.command_name)

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    listener = Started()
    client = MongoClient(test_server.uri, event_listeners=[listener])
    db = client.retrying
    ns = f"{db.name}.retry"
    db.retry.insert_one({"_id": 0, "n": 0})
    # The driver retries after a network error the server raises once the ops ran.
    client.admin.command({"configureFailPoint": "onPrimaryTransactionalWrite", "mode": {"times": 1},
                          "data": {"closeConnection": True}})
    try:
        result = client.bulk_write([UpdateOne({"_id": 0}, {"$inc": {"n": 1}}, namespace=ns), InsertOne({"_id": 1}, namespace=ns)])
    finally:
        client.admin.command({"configureFailPoint": "onPrimaryTransactionalWrite", "mode": "off"})
    # Sent twice: the first attempt ran and lost its connection; the retry answered from the
    # session's record.
    assert listener.names.count("bulkWrite") == 2
    assert result.modified_count == 1 and result.inserted_count == 1
    assert db.retry.find_one({"_id": 0})["n"] == 1
    assert db.retry.count_documents({}) == 2
    client.close()


def test_update_one_takes_the_first_match_in_sort_order(client, db):
    """MongoDB 8.0's `sort` on updateOne and replaceOne, through bulkWrite and update."""
    ns = f"{db.name}.sorted"
    db.sorted.insert_many([{"_id": i, "x": i * 11} for i in (1, 2, 3)])
    client.bulk_write([UpdateOne({"_id": {"$gt": 1}}, {"$inc": {"x": 1}}, sort={"_id": -1}, namespace=ns)])
    assert db.sorted.find_one({"_id": 3})["x"] == 34
    db.sorted.replace_one({"_id": {"$gt": 1}}, {"x": 0}, sort={"x": 1})
    assert db.sorted.find_one({"_id": 2}) == {"_id": 2, "x": 0}
    reply = db.command({"update": "sorted", "updates": [{"q": {}, "u": {"$set": {"y": 1}}, "multi": True, "sort": {"x": 1}}]})
    assert reply["writeErrors"][0]["code"] == 9 and reply["n"] == 0
    assert db.sorted.count_documents({"y": 1}) == 0
