"""`convertToCapped` (MongoDB 7.0 behaviour): the collection becomes capped in one step, keeps
its documents in natural (insertion) order, the newest that fit its size, only its `_id`
index, and then behaves as any capped collection (trimming, tailable cursors); change streams
and the oplog see the command and the documents it removed; bad input gets mongod's codes."""

from __future__ import annotations

import bson
import pytest
from pymongo import CursorType
from pymongo.errors import OperationFailure

PAD = "x" * 1000


def convert(db, name, size):
    return db.command("convertToCapped", name, size=size)


def ids(coll):
    return [d["_id"] for d in coll.find()]


def test_converts_keeping_natural_order_and_only_the_id_index(db):
    # Inserted out of _id order, so natural order is not _id order.
    order = [5, 3, 9, 1, 7, 2, 8]
    db.c.insert_many([{"_id": i, "v": i} for i in order])
    db.c.create_index("v")
    db.c.update_one({"_id": 9}, {"$set": {"w": 1}})
    assert convert(db, "c", 100_000)["ok"] == 1.0
    [entry] = db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"]
    assert (entry["options"]["capped"], entry["options"]["size"]) == (True, 100_000)
    assert [i["name"] for i in db.c.list_indexes()] == ["_id_"]
    assert ids(db.c) == order
    assert db.c.find_one({"_id": 9}) == {"_id": 9, "v": 9, "w": 1}
    assert db.c.find_one({"_id": 7}) == {"_id": 7, "v": 7}
    # Now capped: a new document comes last, `_id` stays unique, updates keep places.
    db.c.insert_one({"_id": 4})
    assert ids(db.c) == order + [4]
    with pytest.raises(OperationFailure) as e:
        db.c.insert_one({"_id": 4})
    assert e.value.code == 11000
    assert list(db.c.find().sort("$natural", -1))[0]["_id"] == 4


def test_keeps_the_newest_documents_that_fit_and_trims_after(db):
    db.c.insert_many([{"_id": i, "pad": PAD} for i in range(10)])
    size = len(bson.encode({"_id": 0, "pad": PAD}))
    convert(db, "c", 4096)
    # A cap of 4 KiB holds the newest documents whose sizes add up to at most 4,096 bytes.
    fit = 4096 // size
    assert ids(db.c) == list(range(10 - fit, 10))
    # Later inserts evict the oldest, as in any capped collection.
    db.c.insert_one({"_id": 10, "pad": PAD})
    assert ids(db.c) == list(range(11 - fit, 11))
    assert db.command("collStats", "c")["capped"] is True


def test_a_tailable_cursor_follows_the_converted_collection(db):
    db.c.insert_many([{"_id": i} for i in range(3)])
    convert(db, "c", 10_000)
    cursor = db.c.find(cursor_type=CursorType.TAILABLE)
    assert [d["_id"] for d in cursor] == [0, 1, 2]
    db.c.insert_one({"_id": 3})
    assert [d["_id"] for d in cursor] == [3]
    assert cursor.alive


def test_an_already_capped_collection_sheds_what_no_longer_fits(db):
    db.create_collection("c", capped=True, size=100_000)
    db.c.insert_many([{"_id": i, "pad": PAD} for i in range(8)])
    convert(db, "c", 4096)
    size = len(bson.encode({"_id": 0, "pad": PAD}))
    fit = 4096 // size
    assert ids(db.c) == list(range(8 - fit, 8))
    db.c.insert_one({"_id": 8, "pad": PAD})
    assert ids(db.c) == list(range(9 - fit, 9))


def test_change_streams_and_the_oplog_see_the_command_and_the_removed_documents(client, db):
    db.c.insert_many([{"_id": i, "pad": PAD} for i in range(6)])
    fit = 4096 // len(bson.encode({"_id": 0, "pad": PAD}))
    with db.c.watch(show_expanded_events=True) as stream:
        convert(db, "c", 4096)
        db.c.insert_one({"_id": "after"})
        events = []
        while not events or events[-1]["operationType"] != "insert":
            events.append(stream.next())
    removed = [e["documentKey"]["_id"] for e in events if e["operationType"] == "delete"]
    assert removed == list(range(6 - fit))
    kinds = [e["operationType"] for e in events]
    assert kinds == ["delete"] * len(removed) + ["modify", "insert"], kinds
    assert events[len(removed)]["operationDescription"]["capped"] is True
    entry = client.local["oplog.rs"].find_one({"ns": f"{db.name}.$cmd", "o.convertToCapped": "c"})
    assert entry["op"] == "c"
    assert entry["o"] == {"convertToCapped": "c", "size": 4096}


def test_survives_a_restart(restartable):
    from pymongo import MongoClient

    server = restartable()
    with MongoClient(server.uri) as c:
        c.t.c.insert_many([{"_id": i} for i in (3, 1, 2)])
        convert(c.t, "c", 10_000)
    server.stop()
    server = restartable()
    with MongoClient(server.uri) as c:
        assert ids(c.t.c) == [3, 1, 2]
        c.t.c.insert_one({"_id": 0})
        assert ids(c.t.c) == [3, 1, 2, 0]
        assert c.t.command("collStats", "c")["capped"] is True


def test_bad_input_gets_mongod_codes(client, db):
    db.c.insert_one({"_id": 1})
    db.command("create", "v", viewOn="c", pipeline=[])
    cases = [
        ({"convertToCapped": "missing", "size": 4096}, 26),
        ({"convertToCapped": "v", "size": 4096}, 166),
        ({"convertToCapped": "c"}, 40414),
        ({"convertToCapped": "c", "size": "big"}, 14),
        ({"convertToCapped": "c", "size": 5.308156746568726e21}, 2),
        ({"convertToCapped": "c", "size": 4096, "max": 3}, 40415),
    ]
    for command, code in cases:
        with pytest.raises(OperationFailure) as e:
            db.command(command)
        assert e.value.code == code, (command, e.value.details)
    # Nothing changed.
    assert "capped" not in db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]["options"]
    with client.start_session() as s:
        s.start_transaction()
        db.c.find_one({}, session=s)
        with pytest.raises(OperationFailure) as e:
            db.command("convertToCapped", "c", size=4096, session=s)
        assert e.value.code == 263


def test_a_collection_too_large_for_one_transaction_is_left_as_it_was():
    from conftest import MangroveServer
    from pymongo import MongoClient

    # A transaction may hold a quarter of --cache-size: 2 MiB here.
    server = MangroveServer(extra_args=["--cache-size", "8"])
    try:
        with MongoClient(server.uri) as c:
            c.t.c.insert_many([{"_id": i, "pad": PAD} for i in range(3000)])
            c.t.c.create_index("pad")
            with pytest.raises(OperationFailure) as e:
                convert(c.t, "c", 10_000_000)
            assert "--cache-size" in str(e.value), e.value.details
            [entry] = c.t.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"]
            assert "capped" not in entry["options"]
            assert sorted(i["name"] for i in c.t.c.list_indexes()) == ["_id_", "pad_1"]
            assert c.t.c.count_documents({}) == 3000
    finally:
        server.stop()


def test_writes_racing_the_conversion_land_under_insertion_numbers(db):
    """Inserts and upserts that looked the collection up before it became capped start over
    under the capped collection's writer: every acknowledged write is there once, in insertion
    order (each `$recordId` an insertion number, increasing), and none fails."""
    import threading
    import time

    db.c.insert_many([{"_id": i} for i in range(200)])
    stop = threading.Event()
    acked, errors = [], []

    def write(base, kind):
        n = 0
        while not stop.is_set():
            _id = base + n
            try:
                if kind == 0:
                    db.c.insert_one({"_id": _id})
                elif kind == 1:
                    db.c.insert_many([{"_id": _id}, {"_id": _id + 1}])
                    acked.append(_id + 1)
                    n += 1
                elif kind == 2:
                    db.c.update_one({"_id": _id}, {"$set": {"u": 1}}, upsert=True)
                else:
                    db.c.find_one_and_update({"_id": _id}, {"$set": {"u": 1}}, upsert=True)
                acked.append(_id)
            except Exception as e:  # noqa: BLE001 - every failure is one to report
                errors.append(repr(e))
            n += 1

    writers = [threading.Thread(target=write, args=(100_000 * (k + 1), k)) for k in range(4)]
    for w in writers:
        w.start()
    time.sleep(0.2)
    convert(db, "c", 50_000_000)
    time.sleep(0.2)
    stop.set()
    for w in writers:
        w.join()
    assert errors == []
    docs = list(db.c.find({}, show_record_id=True))
    ids_seen = [d["_id"] for d in docs]
    assert sorted(ids_seen) == sorted(list(range(200)) + acked)
    record_ids = [d["$recordId"] for d in docs]
    assert all(0 < a < b for a, b in zip(record_ids, record_ids[1:])), record_ids[-10:]
