"""killOp through pymongo (issue 16): a running operation found in $currentOp by its comment
is interrupted with Interrupted (11601), as mongod does; a statement of a transaction aborts the
transaction, an awaiting getMore ends and takes its cursor with it, and the server answers on."""

from __future__ import annotations

import threading
import time

import pytest
from pymongo.errors import OperationFailure

# Each document sleeps this long in $where: 40 of them keep a find busy for 20 s.
SLOW_WHERE = {"$where": "sleep(500); return true"}


def in_thread(fn):
    """Runs `fn` in a thread; the dict gets its `value` or its `error`."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def running(client, match: dict, timeout: float = 10.0) -> dict:
    """The one running operation `match` selects in $currentOp, once it shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ops = list(client.admin.aggregate([{"$currentOp": {"allUsers": True}}, {"$match": match}]))
        if ops:
            assert len(ops) == 1, ops
            return ops[0]
        time.sleep(0.05)
    raise AssertionError(f"no running operation matched {match}")


def assert_interrupted(thread, out, since: float) -> None:
    thread.join(10)
    assert not thread.is_alive(), "the killed operation is still running"
    assert time.monotonic() - since < 5
    e = out.get("error")
    assert isinstance(e, OperationFailure), out
    assert e.code == 11601 and e.details["codeName"] == "Interrupted", e.details


def test_kill_op_interrupts_a_running_find(client, db):
    db.c.insert_many([{"_id": i} for i in range(40)])
    t, out = in_thread(lambda: list(db.c.find(SLOW_WHERE, comment="slow find")))
    op = running(client, {"command.comment": "slow find"})
    assert (op["type"], op["op"], op["ns"], op["active"]) == ("op", "query", f"{db.name}.c", True)
    assert op["command"]["find"] == "c" and "killPending" not in op
    assert isinstance(op["opid"], int) and op["opid"] > 0
    assert op["connectionId"] > 0 and op["desc"] == f"conn{op['connectionId']}"
    since = time.monotonic()
    r = client.admin.command("killOp", op=op["opid"])
    assert (r["info"], r["ok"]) == ("attempting to kill op", 1.0)
    assert_interrupted(t, out, since)
    # The server answers on, and the operation is gone.
    assert client.admin.command("ping")["ok"] == 1.0
    ops = list(client.admin.aggregate([{"$currentOp": {}}, {"$match": {"command.comment": "slow find"}}]))
    assert ops == []
    assert len(list(db.c.find({"_id": {"$lt": 5}}))) == 5


def test_kill_op_interrupts_a_long_scan_without_javascript(client, db):
    db.c.insert_many([{"_id": i} for i in range(5000)])
    # Builds an array of 100,000 numbers per document: seconds for the whole collection.
    heavy = {"$expr": {"$lt": [{"$size": {"$range": [0, 100_000]}}, 0]}}
    t, out = in_thread(lambda: list(db.c.find(heavy, comment="slow scan")))
    # The server answers while the scan holds one worker: $currentOp lists the scan as running.
    # (How soon it answers is a timing goal, not asserted here: a loaded machine delays it.)
    op = running(client, {"command.comment": "slow scan"})
    assert op["planSummary"] == "COLLSCAN" and op["active"] is True
    since = time.monotonic()
    client.admin.command("killOp", op=op["opid"])
    assert_interrupted(t, out, since)


def test_kill_op_of_a_statement_aborts_its_transaction(client, db):
    db.c.insert_many([{"_id": i} for i in range(40)])
    with client.start_session() as s:
        s.start_transaction()
        db.c.insert_one({"_id": "mine"}, session=s)
        t, out = in_thread(lambda: list(db.c.find(SLOW_WHERE, comment="slow in txn", session=s)))
        op = running(client, {"command.comment": "slow in txn"})
        assert op["lsid"]["id"] == s.session_id["id"]
        assert op["transaction"]["parameters"]["txnNumber"] >= 1
        assert op["transaction"]["namespaces"] == [f"{db.name}.c"]
        since = time.monotonic()
        client.admin.command("killOp", op=op["opid"])
        assert_interrupted(t, out, since)
        # mongod aborts the transaction of a killed statement.
        with pytest.raises(OperationFailure) as e:
            s.commit_transaction()
        assert e.value.code == 251
    assert db.c.find_one({"_id": "mine"}) is None


def test_kill_op_interrupts_a_write_waiting_behind_a_transaction(client, db):
    db.c.insert_one({"_id": 1, "n": 0})
    with client.start_session() as s:
        s.start_transaction()
        db.c.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=s)
        # Outside the transaction, this write waits (retrying) for the document it holds.
        t, out = in_thread(lambda: db.c.update_one({"_id": 1}, {"$inc": {"n": 10}}, comment="blocked write"))
        op = running(client, {"command.comment": "blocked write"})
        assert (op["op"], op["ns"]) == ("update", f"{db.name}.c")
        since = time.monotonic()
        client.admin.command("killOp", op=op["opid"])
        assert_interrupted(t, out, since)
        s.commit_transaction()
    assert db.c.find_one({"_id": 1})["n"] == 1


def test_kill_op_ends_an_awaiting_get_more_and_its_cursor(client, db):
    db.create_collection("capped", capped=True, size=4096)
    db.capped.insert_one({"a": 1})
    with client.start_session() as s:
        first = db.command("find", "capped", tailable=True, awaitData=True, batchSize=1, session=s)
        cid = first["cursor"]["id"]
        assert cid != 0 and len(first["cursor"]["firstBatch"]) == 1
        t, out = in_thread(
            lambda: db.command("getMore", cid, collection="capped", maxTimeMS=30_000, comment="tail", session=s)
        )
        op = running(client, {"command.comment": "tail"})
        assert (op["op"], op["ns"]) == ("getmore", f"{db.name}.capped")
        since = time.monotonic()
        client.admin.command("killOp", op=op["opid"])
        assert_interrupted(t, out, since)
        # A failed getMore takes its cursor with it, as in mongod.
        gone = db.command("killCursors", "capped", cursors=[cid], session=s)
        assert gone["cursorsNotFound"] == [cid]


def test_kill_op_answers_for_unknown_ops_and_checks_its_argument(client):
    assert client.admin.command("killOp", op=2_000_000_000)["ok"] == 1.0
    for bad, code in ((2**31, 26823), (-(2**31) - 1, 26823), ("x", 14)):
        with pytest.raises(OperationFailure) as e:
            client.admin.command("killOp", op=bad)
        assert e.value.code == code, bad
    with pytest.raises(OperationFailure) as e:
        client.admin.command("killOp")
    assert e.value.code == 40414


def test_without_the_killop_action_a_user_kills_only_its_own_operations():
    from pymongo import MongoClient

    from conftest import MangroveServer

    srv = MangroveServer(extra_args=["--auth"])

    def connect(user):
        return MongoClient(srv.uri, username=user, password="pw", serverSelectionTimeoutMS=10_000)

    try:
        with MongoClient(srv.uri, serverSelectionTimeoutMS=10_000) as c:
            c.admin.command("createUser", "root", pwd="pw", roles=["root"])
        root, alice, bob = connect("root"), connect("alice"), connect("bob")
        for name in ("alice", "bob"):
            root.admin.command("createUser", name, pwd="pw", roles=[{"role": "read", "db": "shop"}])
        root.shop.c.insert_many([{"_id": i} for i in range(40)])
        t, out = in_thread(lambda: list(alice.shop.c.find(SLOW_WHERE, comment="alice's")))
        opid = running(root, {"command.comment": "alice's"})["opid"]
        for bad in (opid, 2_000_000_000):
            with pytest.raises(OperationFailure) as e:
                bob.admin.command("killOp", op=bad)
            assert e.value.code == 13
        since = time.monotonic()
        assert alice.admin.command("killOp", op=opid)["ok"] == 1.0
        assert_interrupted(t, out, since)
        for c in (root, alice, bob):
            c.close()
    finally:
        srv.stop()
