"""The Ruby driver transaction guide (../shared/seeds/004_*.txt), scenario by scenario, through
pymongo against one Mangrove server started with --enable-test-commands (for the fail points
that make commit outcomes unknown). Each scenario reports what the driver saw."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import MangroveServer, report
from pymongo import MongoClient, ReadPreference, WriteConcern
from pymongo.errors import InvalidOperation, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern


@pytest.fixture(scope="module")
def test_server():
    srv = MangroveServer(extra_args=["--enable-test-commands"])
    yield srv
    srv.stop()


@pytest.fixture()
def c1(test_server):
    c = MongoClient(test_server.uri)
    yield c
    c.admin.command("configureFailPoint", "failCommand", mode="off")
    c.close()


def test_seed_with_transaction_commits(c1):
    coll = c1.seed1.coll
    with c1.start_session() as session:
        session.with_transaction(lambda s: coll.insert_one({"hello": "world"}, session=s))
    assert coll.count_documents({"hello": "world"}) == 1
    report("[seed/pymongo] with_transaction: insert_one({hello: 'world'}) committed")


def test_seed_with_transaction_retries_a_transient_error(c1):
    coll = c1.seed2.coll
    coll.insert_one({"_id": 0})
    # The first insert inside the transaction fails as a write conflict would.
    c1.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                     data={"failCommands": ["insert"], "errorCode": 112})
    calls = []

    def block(s):
        calls.append(1)
        coll.insert_one({"hello": "world"}, session=s)

    with c1.start_session() as session:
        session.with_transaction(block)
    assert len(calls) == 2 and coll.count_documents({"hello": "world"}) == 1
    report(f"[seed/pymongo] with_transaction: block ran {len(calls)} times "
           "(WriteConflict labelled TransientTransactionError, then committed)")


def test_seed_concern_and_read_preference_options(c1):
    coll = c1.seed3.coll
    with c1.start_session() as session:
        session.with_transaction(
            lambda s: coll.insert_one({"hello": "world"}, session=s),
            read_concern=ReadConcern("majority"),
            write_concern=WriteConcern("majority"),
            read_preference=ReadPreference.PRIMARY,
        )
        # The guide's {w: 3}: one node cannot satisfy it, and says so as a replica set would.
        session.start_transaction(write_concern=WriteConcern(w=3))
        coll.insert_one({"hello": "w3"}, session=session)
        with pytest.raises(OperationFailure) as e:
            session.commit_transaction()
    assert e.value.code == 100
    wce = e.value.details.get("writeConcernError", e.value.details)
    report("[seed/pymongo] read_concern majority + write_concern majority + read primary: committed; "
           f"w: 3 -> writeConcernError {wce.get('codeName')} (the commit itself applied)")
    assert coll.count_documents({}) == 2


def test_seed_low_level_api(c1):
    coll = c1.seed4.coll
    session = c1.start_session()
    session.start_transaction(read_concern=ReadConcern("majority"),
                              write_concern=WriteConcern("majority"))
    coll.insert_one({"n": 1}, session=session)
    session.commit_transaction()
    session.start_transaction()
    coll.insert_one({"n": 2}, session=session)
    session.abort_transaction()
    session.start_transaction()
    coll.insert_one({"n": 3}, session=session)
    session.end_session()  # ending a session with an open transaction aborts it
    assert sorted(d["n"] for d in coll.find()) == [1]
    report("[seed/pymongo] start/commit kept n=1; abort dropped n=2; end_session aborted n=3")


def test_seed_drop_hangs_until_end_session(test_server, c1):
    c1.test_db.foo.insert_one({"test": 1})
    session = c1.start_session()
    session.start_transaction()
    c1.test_db.foo.insert_one({"test": 2}, session=session)
    c2 = MongoClient(test_server.uri)
    done = threading.Event()
    threading.Thread(target=lambda: (c2.drop_database("test_db"), done.set()), daemon=True).start()
    hung = not done.wait(1.0)
    t0 = time.monotonic()
    session.end_session()
    assert done.wait(10), "dropDatabase still hanging after end_session"
    waited = time.monotonic() - t0
    assert hung, "dropDatabase did not wait for the open transaction"
    assert "test_db" not in c1.list_database_names()
    report(f"[seed/pymongo] c2.database.drop hung while the transaction was open; "
           f"proceeded {waited:.3f}s after session.end_session")
    c2.close()


def test_seed_drop_hangs_until_the_lifetime_limit(test_server, c1):
    c1.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=2)
    try:
        c1.test_db2.foo.insert_one({"test": 1})
        session = c1.start_session()
        session.start_transaction()
        c1.test_db2.foo.insert_one({"test": 2}, session=session)
        c2 = MongoClient(test_server.uri)
        t0 = time.monotonic()
        c2.drop_database("test_db2")  # hangs until the server expires the transaction
        waited = time.monotonic() - t0
        assert waited >= 1.0, f"dropDatabase returned after {waited:.2f}s, before the limit"
        with pytest.raises(OperationFailure) as e:
            session.commit_transaction()
        assert e.value.code == 251
        report(f"[seed/pymongo] without end_session, drop waited {waited:.1f}s for "
               "transactionLifetimeLimitSeconds=2; the commit then got NoSuchTransaction")
        c2.close()
        session.end_session()
    finally:
        c1.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=60)


def test_seed_commit_retry_on_unknown_commit_result(c1):
    coll = c1.seed6.coll
    coll.insert_one({"_id": 0})
    session = c1.start_session()
    session.start_transaction()
    coll.insert_one({"_id": 1}, session=session)
    # Two dropped connections: pymongo's own single commit retry fails too, so the
    # application sees UnknownTransactionCommitResult and retries as the guide shows.
    c1.admin.command("configureFailPoint", "failCommand", mode={"times": 2},
                     data={"failCommands": ["commitTransaction"], "closeConnection": True})
    attempts = 0
    labels = []
    while True:
        attempts += 1
        try:
            session.commit_transaction()
            break
        except PyMongoError as e:
            labels.append(sorted(getattr(e, "_error_labels", set())))
            if e.has_error_label("UnknownTransactionCommitResult") and attempts < 5:
                continue
            raise
    assert coll.count_documents({"_id": 1}) == 1
    session.end_session()
    report(f"[seed/pymongo] commit_transaction: application retried {attempts - 1} time(s) on "
           f"UnknownTransactionCommitResult (labels {labels}); committed exactly once")


def test_seed_nesting_is_an_error(c1):
    with c1.start_session() as session:
        session.start_transaction()
        with pytest.raises(InvalidOperation) as e:
            session.start_transaction()
        with pytest.raises(InvalidOperation):
            session.with_transaction(lambda s: None)
        session.abort_transaction()
    report(f"[seed/pymongo] nested start_transaction -> InvalidOperation: {e.value}")
