"""$jsonSchema through pymongo: find, count_documents, and mongod's error code for a bad schema."""

from __future__ import annotations

import pytest
from bson.int64 import Int64
from pymongo.errors import OperationFailure

PEOPLE = [
    {"_id": 1, "name": "Ada", "age": 36, "tags": ["math", "code"]},
    {"_id": 2, "name": "Bo", "age": "unknown"},
    {"_id": 3, "name": "Cy", "age": Int64(17), "tags": ["x", "x"]},
    {"_id": 4, "age": 50},
    {"_id": 5, "name": "Di", "age": 41.5, "email": "di@example.com"},
]

SCHEMA = {
    "bsonType": "object",
    "required": ["name", "age"],
    "properties": {
        "name": {"bsonType": "string", "minLength": 2},
        "age": {"bsonType": "number", "minimum": 18},
        "tags": {"bsonType": "array", "uniqueItems": True, "items": {"bsonType": "string"}},
    },
}


def test_find_with_json_schema(db):
    db.people.insert_many(PEOPLE)
    found = sorted(d["_id"] for d in db.people.find({"$jsonSchema": SCHEMA}))
    # 2: age is a string; 3: under 18 and duplicate tags; 4: no name.
    assert found == [1, 5]
    rejected = sorted(d["_id"] for d in db.people.find({"$nor": [{"$jsonSchema": SCHEMA}]}))
    assert rejected == [2, 3, 4]
    closed = {
        "properties": {"_id": {}, "name": {}, "age": {}, "tags": {}},
        "additionalProperties": False,
    }
    assert sorted(d["_id"] for d in db.people.find({"$jsonSchema": closed})) == [1, 2, 3, 4]


def test_count_documents_with_json_schema(db):
    db.people.insert_many(PEOPLE)
    assert db.people.count_documents({"$jsonSchema": SCHEMA}) == 2
    assert db.people.count_documents({"$jsonSchema": SCHEMA, "age": {"$gt": 40}}) == 1
    assert db.people.count_documents({"$jsonSchema": {"required": ["email"]}}) == 1
    either = {"$or": [{"$jsonSchema": {"required": ["email"]}}, {"_id": 4}]}
    assert db.people.count_documents(either) == 2


def test_bad_schema_is_rejected_with_mongod_code(db):
    db.people.insert_one({"_id": 1})
    cases = [
        ({"format": "email"}, 9),
        ({"frobnicate": 1}, 9),
        ({"type": "integer"}, 9),
        ({"minimum": "a"}, 14),
    ]
    for schema, code in cases:
        with pytest.raises(OperationFailure) as e:
            list(db.people.find({"$jsonSchema": schema}))
        assert e.value.code == code, schema
