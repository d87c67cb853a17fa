"""Multi-document transactions through pymongo, as the Ruby guide seed and MongoDB 7.0 define
them: with_transaction, commit and abort, write conflicts with their retry labels, snapshot
reads, commands refused inside a transaction, end_session aborting, and the lifetime limit."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import MangroveServer, report
from pymongo import MongoClient
from pymongo.errors import InvalidOperation, OperationFailure


def seed(db):
    db.accounts.insert_many([{"_id": "a", "bal": 100}, {"_id": "b", "bal": 0}])


def balances(db):
    return {d["_id"]: d["bal"] for d in db.accounts.find()}


def test_with_transaction_commits_every_write_together(client, db):
    seed(db)

    def transfer(s):
        db.accounts.update_one({"_id": "a"}, {"$inc": {"bal": -30}}, session=s)
        db.accounts.update_one({"_id": "b"}, {"$inc": {"bal": 30}}, session=s)
        db.log.insert_one({"_id": 1, "what": "a->b 30"}, session=s)

    with client.start_session() as s:
        s.with_transaction(transfer)
    assert balances(db) == {"a": 70, "b": 30}
    assert db.log.find_one({"_id": 1})["what"] == "a->b 30"


def test_with_transaction_retries_a_transient_conflict(client, db):
    seed(db)
    attempts = []
    blocker = client.start_session()
    blocker.start_transaction()
    db.accounts.update_one({"_id": "a"}, {"$inc": {"bal": 1}}, session=blocker)

    def callback(s):
        attempts.append(1)
        if len(attempts) == 2:
            # The conflicting transaction is gone before the retry.
            blocker.abort_transaction()
        db.accounts.update_one({"_id": "a"}, {"$inc": {"bal": -10}}, session=s)

    with client.start_session() as s:
        s.with_transaction(callback)
    report(f"[pymongo] with_transaction attempts until commit: {len(attempts)}")
    assert len(attempts) == 2
    assert balances(db)["a"] == 90
    blocker.end_session()


def test_abort_discards_and_reads_see_own_writes(client, db):
    seed(db)
    with client.start_session() as s:
        s.start_transaction()
        db.accounts.update_one({"_id": "a"}, {"$set": {"bal": 0}}, session=s)
        assert db.accounts.find_one({"_id": "a"}, session=s)["bal"] == 0
        assert db.accounts.find_one({"_id": "a"})["bal"] == 100
        s.abort_transaction()
    assert balances(db) == {"a": 100, "b": 0}


def test_write_conflict_is_transient_and_aborts_the_loser(client, db):
    seed(db)
    s1, s2 = client.start_session(), client.start_session()
    s1.start_transaction()
    s2.start_transaction()
    db.accounts.update_one({"_id": "b"}, {"$inc": {"bal": 1}}, session=s1)
    with pytest.raises(OperationFailure) as conflict:
        db.accounts.update_one({"_id": "b"}, {"$inc": {"bal": 5}}, session=s2)
    assert conflict.value.code == 112
    assert conflict.value.has_error_label("TransientTransactionError")
    with pytest.raises(OperationFailure) as gone:
        s2.commit_transaction()
    assert gone.value.code == 251
    assert gone.value.has_error_label("TransientTransactionError")
    s1.commit_transaction()
    s1.commit_transaction()  # a retried commit returns the original outcome
    assert balances(db)["b"] == 1
    s1.end_session()
    s2.end_session()


def test_same_id_inserted_by_two_transactions(client, db):
    db.create_collection("c")
    s1, s2 = client.start_session(), client.start_session()
    s1.start_transaction()
    s2.start_transaction()
    db.c.insert_one({"_id": 1, "by": "s1"}, session=s1)
    with pytest.raises(OperationFailure) as e:
        db.c.insert_one({"_id": 1, "by": "s2"}, session=s2)
    assert e.value.code == 112 and e.value.has_error_label("TransientTransactionError")
    s1.commit_transaction()
    assert db.c.find_one({"_id": 1})["by"] == "s1"


def test_transaction_reads_one_snapshot(client, db):
    seed(db)
    with client.start_session() as s:
        s.start_transaction()
        assert db.accounts.find_one({"_id": "a"}, session=s)["bal"] == 100
        db.accounts.update_one({"_id": "a"}, {"$set": {"bal": 5}})  # committed outside
        db.accounts.insert_one({"_id": "c", "bal": 7})
        assert db.accounts.find_one({"_id": "a"}, session=s)["bal"] == 100
        assert sorted(d["_id"] for d in db.accounts.find({}, session=s)) == ["a", "b"]
        s.commit_transaction()
    assert balances(db)["a"] == 5


def test_commands_refused_inside_a_transaction(client, db):
    seed(db)
    with client.start_session() as s:
        s.start_transaction()
        db.accounts.find_one({}, session=s)
        with pytest.raises(OperationFailure) as e:
            db.command("count", "accounts", session=s)
        assert e.value.code == 263
        assert e.value.details["codeName"] == "OperationNotSupportedInTransaction"


def test_nested_start_transaction_is_an_error(client):
    with client.start_session() as s:
        s.start_transaction()
        with pytest.raises(InvalidOperation):
            s.start_transaction()
        s.abort_transaction()


def test_end_session_aborts_the_open_transaction(client, db):
    seed(db)
    s = client.start_session()
    s.start_transaction()
    db.accounts.update_one({"_id": "a"}, {"$set": {"bal": -1}}, session=s)
    s.end_session()
    # pymongo aborts on end_session; the intent is released, so another writer proceeds.
    other = MongoClient(client.address and f"mongodb://{client.address[0]}:{client.address[1]}/")
    other.get_database(db.name).accounts.update_one({"_id": "a"}, {"$inc": {"bal": 1}})
    assert balances(db)["a"] == 101
    other.close()


def test_closing_the_connection_does_not_abort_the_transaction(server, db):
    seed(db)
    c1 = MongoClient(server.uri)
    s = c1.start_session()
    s.start_transaction()
    c1.get_database(db.name).accounts.update_one({"_id": "a"}, {"$set": {"bal": 1}}, session=s)
    # Close every pooled connection, keep the session object: the transaction lives on.
    c1._topology.get_server_by_address(c1.address).pool.reset()  # noqa: SLF001
    s.commit_transaction()
    assert balances(db)["a"] == 1
    c1.close()


def test_commit_with_unsatisfiable_write_concern(client, db):
    from pymongo import WriteConcern

    seed(db)
    with client.start_session() as s:
        s.start_transaction(write_concern=WriteConcern(w=10))
        db.accounts.update_one({"_id": "a"}, {"$inc": {"bal": 1}}, session=s)
        with pytest.raises(OperationFailure) as e:
            s.commit_transaction()
        assert e.value.code == 100
        assert not e.value.has_error_label("TransientTransactionError")
    # The commit itself took effect, as on a replica set that cannot reach w: 10.
    assert balances(db)["a"] == 101


def test_lifetime_limit_aborts_an_idle_transaction():
    server = MangroveServer(extra_args=["--transaction-lifetime-limit-secs", "1"])
    try:
        c = MongoClient(server.uri)
        db = c.lifetime
        seed(db)
        s = c.start_session()
        s.start_transaction()
        db.accounts.update_one({"_id": "a"}, {"$set": {"bal": 0}}, session=s)
        time.sleep(2.5)
        with pytest.raises(OperationFailure) as e:
            db.accounts.update_one({"_id": "b"}, {"$set": {"bal": 0}}, session=s)
        assert e.value.code == 251 and e.value.has_error_label("TransientTransactionError")
        # The expired transaction's write intent is gone too.
        db.accounts.update_one({"_id": "a"}, {"$set": {"bal": 5}})
        assert balances(db)["a"] == 5
        c.close()
    finally:
        server.stop()


def test_concurrent_transfers_keep_the_sum(client, db):
    db.accounts.insert_many([{"_id": i, "bal": 100} for i in range(10)])
    errors = []

    def worker(k):
        try:
            for n in range(20):
                a, b = (k + n) % 10, (k + 3 * n + 1) % 10
                if a == b:
                    continue
                with client.start_session() as s:
                    s.with_transaction(
                        lambda s: (
                            db.accounts.update_one({"_id": a}, {"$inc": {"bal": -1}}, session=s),
                            db.accounts.update_one({"_id": b}, {"$inc": {"bal": 1}}, session=s),
                        )
                    )
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(d["bal"] for d in db.accounts.find()) == 1000
