"""Collection schema validation through pymongo: create/collMod options, DocumentValidationFailure
(121) with errInfo on every kind of write, moderate, warn, bypass, transactions and a restart."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, OperationFailure, WriteError

SCHEMA = {
    "$jsonSchema": {
        "bsonType": "object",
        "required": ["name", "qty"],
        "properties": {
            "name": {"bsonType": "string", "description": "must be a string"},
            "qty": {"bsonType": "int", "minimum": 0},
        },
    }
}


def make(db, **options):
    db.create_collection("items", validator=SCHEMA, **options)
    return db.items


def test_options_are_listed_as_given(db):
    make(db)
    info = db.command("listCollections", filter={"name": "items"})["cursor"]["firstBatch"][0]
    assert info["options"] == {"validator": SCHEMA}
    db.command("collMod", "items", validationLevel="moderate", validationAction="warn")
    options = db.items.options()
    assert options == {"validator": SCHEMA, "validationLevel": "moderate", "validationAction": "warn"}


def test_insert_failure_carries_err_info(db):
    items = make(db)
    items.insert_one({"_id": 1, "name": "ok", "qty": 3})
    with pytest.raises(WriteError) as raised:
        items.insert_one({"_id": 2, "name": "bad", "qty": -1})
    err = raised.value
    assert err.code == 121
    info = err.details["errInfo"]
    assert info["failingDocumentId"] == 2
    details = info["details"]
    assert details["operatorName"] == "$jsonSchema"
    [rule] = details["schemaRulesNotSatisfied"]
    assert rule["operatorName"] == "properties"
    [prop] = rule["propertiesNotSatisfied"]
    assert prop["propertyName"] == "qty"
    assert prop["details"] == [
        {
            "operatorName": "minimum",
            "specifiedAs": {"minimum": 0},
            "reason": "comparison failed",
            "consideredValue": -1,
        }
    ]

    with pytest.raises(WriteError) as raised:
        items.insert_one({"_id": 3})
    [rule] = raised.value.details["errInfo"]["details"]["schemaRulesNotSatisfied"]
    assert rule == {
        "operatorName": "required",
        "specifiedAs": {"required": ["name", "qty"]},
        "missingProperties": ["name", "qty"],
    }


def test_batches_ordered_and_unordered(db):
    items = make(db)
    docs = [{"_id": 1, "name": "a", "qty": 1}, {"_id": 2}, {"_id": 3, "name": "c", "qty": 3}]
    with pytest.raises(BulkWriteError) as raised:
        items.insert_many(docs)
    result = raised.value.details
    assert result["nInserted"] == 1
    [error] = result["writeErrors"]
    assert (error["index"], error["code"]) == (1, 121)
    assert error["errInfo"]["failingDocumentId"] == 2
    items.delete_many({})
    with pytest.raises(BulkWriteError) as raised:
        items.insert_many(docs, ordered=False)
    assert raised.value.details["nInserted"] == 2
    assert sorted(d["_id"] for d in items.find()) == [1, 3]


def test_updates_upserts_and_find_and_modify(db):
    items = make(db)
    items.insert_one({"_id": 1, "name": "a", "qty": 1})
    with pytest.raises(WriteError) as raised:
        items.update_one({"_id": 1}, {"$set": {"qty": "many"}})
    assert raised.value.code == 121
    with pytest.raises(WriteError):
        items.replace_one({"_id": 1}, {"name": "no qty"})
    with pytest.raises(WriteError):
        items.update_one({"_id": 9}, {"$set": {"name": "x"}}, upsert=True)
    with pytest.raises(OperationFailure) as raised:
        items.find_one_and_update({"_id": 1}, {"$unset": {"name": ""}})
    assert raised.value.code == 121
    assert raised.value.details["errInfo"]["failingDocumentId"] == 1
    assert list(items.find()) == [{"_id": 1, "name": "a", "qty": 1}]
    items.update_one({"_id": 1}, {"$inc": {"qty": 1}})
    assert items.find_one()["qty"] == 2


def test_moderate_and_bypass(db):
    items = make(db)
    items.insert_one({"_id": 1, "legacy": True}, bypass_document_validation=True)
    items.insert_one({"_id": 2, "name": "b", "qty": 2})
    with pytest.raises(WriteError):
        items.update_one({"_id": 1}, {"$set": {"legacy": False}})
    db.command("collMod", "items", validationLevel="moderate")
    items.update_one({"_id": 1}, {"$set": {"legacy": False}})
    with pytest.raises(WriteError):
        items.update_one({"_id": 2}, {"$set": {"qty": -5}})
    items.update_one({"_id": 2}, {"$set": {"qty": -5}}, bypass_document_validation=True)
    assert items.find_one({"_id": 2})["qty"] == -5


def test_warn_allows_the_write(db, server):
    items = make(db, validationAction="warn")
    items.insert_one({"_id": "w1"})
    assert items.count_documents({}) == 1
    assert "Document would fail validation" in server.log_tail(200)


def test_bad_options(db):
    for options, code in [
        ({"validationLevel": "sometimes"}, 2),
        ({"validationAction": "shout"}, 2),
        ({"validator": {"$where": "true"}}, 2),
        ({"validator": {"qty": {"$nearSphere": [0, 0]}}}, 2),
    ]:
        with pytest.raises(OperationFailure) as raised:
            db.command("create", "bad", **options)
        assert raised.value.code == code, options
    # $expr is allowed.
    db.command("create", "expr", validator={"$expr": {"$lt": ["$lo", "$hi"]}})
    with pytest.raises(WriteError) as raised:
        db.expr.insert_one({"_id": 1, "lo": 5, "hi": 1})
    assert raised.value.details["errInfo"]["details"]["expressionResult"] is False


def test_inside_a_transaction(client, db):
    items = make(db)
    with client.start_session() as session:
        session.start_transaction()
        items.insert_one({"_id": 1, "name": "a", "qty": 1}, session=session)
        with pytest.raises(OperationFailure) as raised:
            items.insert_one({"_id": 2, "qty": "x"}, session=session)
        assert raised.value.code == 121
        session.abort_transaction()
    assert items.count_documents({}) == 0


def test_validator_survives_restart(restartable):
    first = restartable()
    client = MongoClient(first.uri, serverSelectionTimeoutMS=10_000)
    client.v.create_collection("items", validator=SCHEMA, validationLevel="strict")
    client.close()
    first.stop()
    second = restartable()
    client = MongoClient(second.uri, serverSelectionTimeoutMS=10_000)
    assert client.v.items.options() == {"validator": SCHEMA, "validationLevel": "strict"}
    with pytest.raises(WriteError):
        client.v.items.insert_one({"_id": 1})
    client.close()
