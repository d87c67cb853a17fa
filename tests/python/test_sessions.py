"""Sessions, retryable writes and transaction bookkeeping through pymongo: DDL waiting for the
transactions on its namespace, currentOp and serverStatus.transactions, retryable writes that
never run twice (even across a kill -9), session commands, setParameter, fail points only with
--enable-test-commands, and collections created inside transactions."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from bson import Int64
from conftest import MangroveServer, report
from pymongo import MongoClient
from pymongo.errors import OperationFailure


def test_drop_waits_for_the_transaction_on_its_namespace(server, client, db):
    db.items.insert_one({"_id": 1})
    s = client.start_session()
    s.start_transaction()
    db.items.insert_one({"_id": 2}, session=s)

    other = MongoClient(server.uri)
    done = threading.Event()
    failure: list[BaseException] = []

    def drop():
        try:
            other.get_database(db.name).drop_collection("items")
        except BaseException as e:  # noqa: BLE001
            failure.append(e)
        done.set()

    t = threading.Thread(target=drop)
    t.start()
    # The drop is parked behind the transaction, which currentOp shows with its namespace.
    assert not done.wait(1.0), "drop did not wait for the open transaction"
    ops = client.admin.command("currentOp")["inprog"]
    mine = [o for o in ops if o["lsid"]["id"] == s.session_id["id"]]
    assert mine and f"{db.name}.items" in mine[0]["transaction"]["namespaces"], ops
    started = time.monotonic()
    s.end_session()  # aborts the transaction: the drop goes ahead at once
    assert done.wait(10.0), "drop still waiting after end_session"
    report(f"[pymongo] drop proceeded {time.monotonic() - started:.3f}s after end_session")
    t.join()
    assert not failure, failure
    assert "items" not in db.list_collection_names()
    other.close()


def test_server_status_and_current_op_count_transactions(client, db):
    def txn_status():
        return client.admin.command("serverStatus")["transactions"]

    before = txn_status()
    for key in ("currentActive", "currentInactive", "currentOpen", "totalStarted",
                "totalCommitted", "totalAborted", "totalPrepared", "writeConflicts"):
        assert key in before, before
    db.c.insert_one({"_id": 1, "n": 0})
    a = client.start_session()
    a.start_transaction()
    db.c.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=a)
    during = txn_status()
    assert during["currentOpen"] == before["currentOpen"] + 1
    assert during["currentInactive"] >= 1
    op = next(o for o in client.admin.command("currentOp")["inprog"]
              if o["lsid"]["id"] == a.session_id["id"])
    assert op["transaction"]["parameters"]["txnNumber"] >= 1
    assert op["transaction"]["timeOpenMicros"] > 0
    b = client.start_session()
    b.start_transaction()
    with pytest.raises(OperationFailure) as e:
        db.c.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=b)
    assert e.value.code == 112
    b.end_session()
    a.commit_transaction()
    a.end_session()
    after = txn_status()
    assert after["totalStarted"] == before["totalStarted"] + 2
    assert after["totalCommitted"] == before["totalCommitted"] + 1
    assert after["totalAborted"] == before["totalAborted"] + 1
    assert after["writeConflicts"] == before["writeConflicts"] + 1
    assert after["currentOpen"] == before["currentOpen"]
    report(f"[pymongo] serverStatus.transactions after: {after}")


def _retryable(db, session, cmd: dict, txn_number: int):
    """Sends a write with an explicit txnNumber, as a driver's retry would resend it."""
    return db.command({**cmd, "txnNumber": Int64(txn_number)}, session=session)


def test_retryable_writes_run_once_even_across_kill_9(restartable):
    server = restartable()
    c = MongoClient(server.uri)
    db = c.retry
    db.c.insert_many([{"_id": 1, "n": 0}, {"_id": 2, "n": 0}])
    s = c.start_session()
    inc = {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}]}
    fam = {"findAndModify": "c", "query": {"_id": 2}, "update": {"$inc": {"n": 10}},
           "new": True}
    first = _retryable(db, s, inc, 7)
    again = _retryable(db, s, inc, 7)
    assert (first["n"], first["nModified"]) == (1, 1)
    assert (again["n"], again["nModified"]) == (1, 1)
    assert db.c.find_one({"_id": 1})["n"] == 1
    fam_first = _retryable(db, s, fam, 8)["value"]
    assert fam_first == {"_id": 2, "n": 10}
    assert db.c.find_one({"_id": 2})["n"] == 10
    lsid = s.session_id
    server.kill()  # SIGKILL: no shutdown, no final checkpoint
    c.close()

    server = restartable()
    c = MongoClient(server.uri)
    db = c.retry
    s = c.start_session()
    # A driver retrying after the crash resends with the same lsid. pymongo stamps its own
    # session's id on every command, so give this session the old id (a private field).
    assert s.session_id != lsid  # materializes the lazily created server session
    s._server_session.session_id = lsid  # noqa: SLF001
    fam_retry = _retryable(db, s, fam, 8)
    assert fam_retry["value"] == {"_id": 2, "n": 10}, "retry after restart must return the original post-image"
    assert db.c.find_one({"_id": 2})["n"] == 10, "retried findAndModify ran again"
    with pytest.raises(OperationFailure) as e:
        _retryable(db, s, inc, 7)
    assert e.value.code == 225, e.value.details  # TransactionTooOld: 8 superseded 7
    report("[pymongo] retryable findAndModify after kill -9: original post-image returned, not re-run")
    c.close()
    server.stop()


def test_session_commands(client, db):
    started = client.admin.command("startSession")
    assert started["timeoutMinutes"] == 30 and "id" in started["id"]
    client.admin.command("refreshSessions", [started["id"]])
    db.k.insert_one({"_id": 1})
    s = client.start_session()
    s.start_transaction()
    db.k.update_one({"_id": 1}, {"$set": {"x": 1}}, session=s)
    client.admin.command("killAllSessionsByPattern", [{"lsid": s.session_id}])
    # The killed session's transaction is gone: its intent no longer blocks others.
    db.k.update_one({"_id": 1}, {"$set": {"x": 2}})
    with pytest.raises(OperationFailure) as e:
        s.commit_transaction()
    assert e.value.code == 251


def test_set_parameter_changes_the_lifetime_limit(client, db):
    was = client.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=1)["was"]
    try:
        assert client.admin.command("getParameter", 1, transactionLifetimeLimitSeconds=1)[
            "transactionLifetimeLimitSeconds"] == 1
        db.l.insert_one({"_id": 1})
        s = client.start_session()
        s.start_transaction()
        db.l.update_one({"_id": 1}, {"$set": {"x": 1}}, session=s)
        time.sleep(3)
        with pytest.raises(OperationFailure) as e:
            db.l.update_one({"_id": 1}, {"$set": {"x": 2}}, session=s)
        assert e.value.code == 251 and e.value.has_error_label("TransientTransactionError")
        s.end_session()
    finally:
        client.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=was)
    with pytest.raises(OperationFailure) as e:
        client.admin.command("setParameter", 1, noSuchParameter=1)
    assert e.value.code == 72


def test_fail_points_exist_only_with_enable_test_commands(client):
    params = client.admin.command("getParameter", "*")
    assert params["enableTestCommands"] is False
    with pytest.raises(OperationFailure) as e:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert e.value.code == 59
    server = MangroveServer(extra_args=["--enable-test-commands"])
    try:
        c = MongoClient(server.uri, retryWrites=False)
        assert c.admin.command("getParameter", "*")["enableTestCommands"] is True
        c.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                        data={"failCommands": ["insert"], "errorCode": 11601})
        with pytest.raises(OperationFailure) as e:
            c.fp.c.insert_one({"_id": 1})
        assert e.value.code == 11601 and e.value.details["codeName"] == "Interrupted"
        c.fp.c.insert_one({"_id": 1})  # the point fired once and turned itself off
        assert c.fp.c.count_documents({}) == 1
        c.close()
    finally:
        server.stop()


def test_collections_created_in_transactions(client, db):
    a, b = client.start_session(), client.start_session()
    a.start_transaction()
    b.start_transaction()
    # Both create the same collection implicitly: no conflict, unlike mongod's lock timeouts.
    db.fresh.insert_one({"_id": "a"}, session=a)
    db.fresh.insert_one({"_id": "b"}, session=b)
    assert "fresh" not in db.list_collection_names(), "visible before any commit"
    a.commit_transaction()
    b.commit_transaction()
    assert sorted(d["_id"] for d in db.fresh.find()) == ["a", "b"]
    a.start_transaction()
    db.create_collection("explicit", session=a)
    assert "explicit" not in db.list_collection_names()
    a.commit_transaction()
    assert "explicit" in db.list_collection_names()
    a.end_session()
    b.end_session()


def test_list_local_sessions_shows_sessions_in_use(client):
    s = client.start_session()
    client.admin.command("ping", session=s)
    listed = list(client.admin.aggregate([{"$listLocalSessions": {}},
                                          {"$match": {"_id.id": s.session_id["id"]}}]))
    assert len(listed) == 1 and "lastUse" in listed[0], listed
    mine = list(client.config.system.sessions.aggregate([{"$listSessions": {}},
                                                         {"$match": {"_id.id": s.session_id["id"]}}]))
    assert len(mine) == 1
    s.end_session()


def test_rename_collection_moves_everything_and_survives_kill_9(restartable):
    server = restartable()
    c = MongoClient(server.uri)
    c.r.src.insert_many([{"_id": i} for i in range(50)])
    c.r.old.insert_one({"_id": "stale"})
    with pytest.raises(OperationFailure) as e:
        c.r.src.rename("old")
    assert e.value.code == 48  # NamespaceExists without dropTarget
    # A transaction on the source holds the rename back until it ends.
    s = c.start_session()
    s.start_transaction()
    c.r.src.insert_one({"_id": 50}, session=s)
    done = threading.Event()
    threading.Thread(target=lambda: (c.r.src.rename("old", dropTarget=True), done.set()),
                     daemon=True).start()
    assert not done.wait(0.5), "rename did not wait for the transaction on its source"
    s.commit_transaction()
    assert done.wait(10)
    assert sorted(c.r.list_collection_names()) == ["old"]
    assert c.r.old.count_documents({}) == 51 and c.r.old.find_one({"_id": "stale"}) is None
    server.kill()  # SIGKILL: no shutdown, no final checkpoint
    c.close()
    server = restartable()
    c = MongoClient(server.uri)
    assert sorted(c.r.list_collection_names()) == ["old"]
    assert c.r.old.count_documents({}) == 51 and c.r.old.find_one({"_id": "stale"}) is None
    c.close()
    server.stop()


def test_a_commit_retried_across_kill_9_still_reports_committed(restartable):
    server = restartable()
    c = MongoClient(server.uri)
    c.t.c.insert_one({"_id": 0})
    s = c.start_session()
    s.start_transaction()
    c.t.c.insert_one({"_id": 1}, session=s)
    s.commit_transaction()
    lsid, n = s.session_id, s._transaction_id  # noqa: SLF001
    server.kill()  # SIGKILL: no shutdown, no final checkpoint
    c.close()

    server = restartable()
    c = MongoClient(server.uri)
    s = c.start_session()
    assert s.session_id != lsid
    s._server_session.session_id = lsid  # noqa: SLF001 (the driver's retry reuses the lsid)
    reply = c.admin.command(
        {"commitTransaction": 1, "txnNumber": Int64(n), "autocommit": False}, session=s)
    assert reply["ok"] == 1.0, reply
    # Not NoSuchTransaction with TransientTransactionError, which would make a driver run
    # the whole transaction again; and the data was written once.
    assert c.t.c.count_documents({}) == 2
    report("[pymongo] commitTransaction retried after kill -9: ok (the recorded outcome)")
    c.close()
    server.stop()


def test_cursors_opened_in_a_transaction_belong_to_it(client, db):
    db.cur.insert_many([{"_id": i} for i in range(6)])
    s = client.start_session()
    s.start_transaction()
    inside = db.cur.find({}, batch_size=2, session=s)
    assert [d["_id"] for d in inside] == list(range(6))  # getMores within the transaction
    leftover = db.cur.find({}, batch_size=2, session=s)
    next(leftover)
    s.commit_transaction()
    with pytest.raises(OperationFailure) as e:
        list(leftover)  # continued outside the transaction that opened it
    assert e.value.code == 50740, e.value.details
    s.end_session()
