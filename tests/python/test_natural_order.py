"""Natural order (issue 15): an unsorted find returns documents in the order they were inserted,
as mongod does, not in `_id` order; updates keep a document's place, a delete and re-insert
moves it last, and the order survives restarts (crash or clean) and renames."""

import signal

from pymongo import MongoClient

# _ids deliberately out of order, of mixed types.
IDS = [5, "b", 1, 9.5, "a", 3, {"k": 1}, 2]


def ids(cursor):
    return [d["_id"] for d in cursor]


def test_find_returns_insertion_order(db):
    for i in IDS:
        db.c.insert_one({"_id": i, "v": 1})
    assert ids(db.c.find()) == IDS
    assert ids(db.c.find({"v": 1})) == IDS
    # Across getMores, and backward with a $natural sort or hint.
    assert ids(db.c.find(batch_size=3)) == IDS
    assert ids(db.c.find().sort("$natural", -1)) == IDS[::-1]
    assert ids(db.c.find().hint([("$natural", -1)])) == IDS[::-1]
    assert ids(db.c.find().hint([("$natural", 1)]).batch_size(2)) == IDS
    assert ids(db.c.find().skip(2).limit(3)) == IDS[2:5]
    # A sort on _id still sorts.
    assert ids(db.c.find({"_id": {"$type": "number"}}).sort("_id", 1)) == [1, 2, 3, 5, 9.5]
    # An aggregate without a sort reads the same order.
    assert ids(db.c.aggregate([{"$match": {}}])) == IDS
    assert ids(db.c.aggregate([{"$project": {"v": 0}}], batchSize=2)) == IDS


def test_insert_many_keeps_its_order(db):
    db.c.insert_many([{"_id": i} for i in IDS])
    db.c.insert_many([{"_id": 0}, {"_id": -1}])
    assert ids(db.c.find()) == IDS + [0, -1]


def test_updates_keep_the_place_and_reinserts_go_last(db):
    db.c.insert_many([{"_id": i, "pad": ""} for i in [3, 1, 2]])
    db.c.update_one({"_id": 1}, {"$set": {"pad": "x" * 10_000}})
    db.c.replace_one({"_id": 3}, {"pad": "y"})
    assert ids(db.c.find()) == [3, 1, 2]
    db.c.delete_one({"_id": 3})
    db.c.insert_one({"_id": 3})
    assert ids(db.c.find()) == [1, 2, 3]
    # An upsert that inserts goes last too.
    db.c.update_one({"_id": 0}, {"$set": {"v": 1}}, upsert=True)
    assert ids(db.c.find()) == [1, 2, 3, 0]


def test_single_document_writes_pick_the_first_in_natural_order(db):
    db.c.insert_many([{"_id": i, "v": 1} for i in [9, 4, 7]])
    db.c.update_one({"v": 1}, {"$set": {"first": True}})
    assert db.c.find_one({"first": True})["_id"] == 9
    assert db.c.find_one_and_update({"v": 1}, {"$set": {"v": 2}})["_id"] == 9
    db.c.delete_one({"v": 1})
    assert ids(db.c.find()) == [9, 7]


def test_a_transaction_sees_its_inserts_after_the_committed_ones(client, db):
    db.c.insert_many([{"_id": i} for i in [2, 1]])
    with client.start_session() as s, s.start_transaction():
        db.c.insert_one({"_id": 0}, session=s)
        db.c.delete_one({"_id": 2}, session=s)
        db.c.insert_one({"_id": -5}, session=s)
        assert ids(db.c.find(session=s)) == [1, 0, -5]
        assert ids(db.c.find(session=s).sort("$natural", -1)) == [-5, 0, 1]
        assert ids(db.c.find(session=s, batch_size=1)) == [1, 0, -5]
        # Outside, nothing yet.
        assert ids(db.c.find()) == [2, 1]
    assert ids(db.c.find()) == [1, 0, -5]


def test_rename_keeps_the_order(client, db):
    db.c.insert_many([{"_id": i} for i in IDS])
    db.c.rename("d")
    assert ids(db.d.find()) == IDS
    client.admin.command("renameCollection", f"{db.name}.d", to=f"{db.name}_other.e")
    assert ids(client[f"{db.name}_other"].e.find()) == IDS
    client.drop_database(f"{db.name}_other")


def test_the_order_survives_a_crash_and_a_clean_restart(restartable):
    server = restartable()
    # Acknowledged only once durable, so the kill loses none of it.
    c = MongoClient(server.uri, w="majority")
    coll = c.db.c
    coll.insert_many([{"_id": i} for i in IDS])
    coll.delete_one({"_id": 1})
    coll.insert_one({"_id": 1})
    expected = [i for i in IDS if i != 1] + [1]
    assert ids(coll.find()) == expected
    c.close()
    server.stop(signal.SIGKILL)
    server = restartable()
    c = MongoClient(server.uri, w="majority")
    assert ids(c.db.c.find()) == expected
    c.db.c.insert_one({"_id": 0})
    c.close()
    assert server.stop() == 0
    server = restartable()
    c = MongoClient(server.uri)
    assert ids(c.db.c.find()) == expected + [0]
    c.close()
