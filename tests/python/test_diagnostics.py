"""Statistics and diagnosis commands through pymongo (issue 16, item 2): top, validate,
$currentOp, killOp and the log components, as mongod 7.0 shapes them."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern


def test_top_counts_time_per_collection_and_kind(client, db):
    ns = f"{db.name}.t"
    before = client.admin.command("top")["totals"].get(ns)
    assert before is None
    db.t.insert_many([{"a": i} for i in range(3)])
    db.t.insert_one({"a": 3})
    list(db.t.find())
    db.t.update_one({"a": 1}, {"$set": {"b": 1}})
    db.t.delete_one({"a": 2})
    db.t.count_documents({})
    top = client.admin.command("top")["totals"]
    assert top["note"] == "all times in microseconds"
    entry = top[ns]
    counts = {k: v["count"] for k, v in entry.items()}
    assert counts["insert"] == 2 and counts["queries"] == 1
    assert counts["update"] == 1 and counts["remove"] == 1 and counts["commands"] == 1
    assert counts["total"] == 6 == counts["readLock"] + counts["writeLock"]
    assert counts["writeLock"] == 4
    assert entry["total"]["time"] >= entry["insert"]["time"] > 0
    db.t.drop()
    assert ns not in client.admin.command("top")["totals"]
    with pytest.raises(OperationFailure) as e:
        db.command("top")
    assert e.value.code == 13


def test_validate_counts_keys_per_index_and_refuses_repair(db):
    db.v.insert_many([{"tags": ["a", "b", "c"]}, {"tags": []}, {"tags": "d"}])
    db.v.create_index("tags")
    r = db.command("validate", "v", full=True)
    assert r["valid"] is True and r["errors"] == [] and r["nrecords"] == 3
    # A multikey index holds a key per array element (an empty array: one, undefined).
    assert r["keysPerIndex"] == {"_id_": 3, "tags_1": 5}
    assert r["indexDetails"]["tags_1"] == {"valid": True}
    for cmd, code in (({"validate": "missing"}, 26), ({"validate": "v", "repair": True}, 72), ({"validate": 1}, 14)):
        with pytest.raises(OperationFailure) as e:
            db.command(cmd)
        assert e.value.code == code, cmd
    db.create_collection("view", viewOn="v", pipeline=[])
    with pytest.raises(OperationFailure) as e:
        db.command("validate", "view")
    assert e.value.code == 166


def test_current_op_shows_open_transactions(client, db):
    db.c.insert_one({"_id": 0})
    with client.start_session() as s:
        s.start_transaction()
        db.c.insert_one({"_id": 1}, session=s)
        in_txn = {"$match": {"transaction": {"$exists": True}}}
        ops = list(client.admin.aggregate([{"$currentOp": {"allUsers": True}}, in_txn]))
        assert len(ops) == 1
        assert ops[0]["type"] == "idleSession" and ops[0]["active"] is False
        assert ops[0]["lsid"]["id"] == s.session_id["id"]
        assert ops[0]["transaction"]["parameters"]["txnNumber"] >= 1
        assert f"{db.name}.c" in ops[0]["transaction"]["namespaces"]
        idle = list(client.admin.aggregate([{"$currentOp": {"idleSessions": False}}]))
        # The aggregate itself is running (with a number killOp takes); the idle transaction
        # is left out.
        assert all(o["type"] == "op" for o in idle)
        me = [o for o in idle if o["ns"] == "admin.$cmd.aggregate"]
        assert len(me) == 1 and me[0]["op"] == "command" and me[0]["opid"] > 0
        assert me[0]["command"]["pipeline"] == [{"$currentOp": {"idleSessions": False}}]
        s.abort_transaction()
    assert list(client.admin.aggregate([{"$currentOp": {}}, in_txn])) == []
    with pytest.raises(OperationFailure) as e:
        list(db.aggregate([{"$currentOp": {}}]))
    assert e.value.code == 73
    with pytest.raises(OperationFailure) as e:
        list(client.admin.aggregate([{"$currentOp": {"bogus": True}}]))
    assert e.value.code == 9


def test_kill_op_and_log_components(client):
    r = client.admin.command("killOp", op=12345)
    assert (r["info"], r["ok"]) == ("attempting to kill op", 1.0)
    with pytest.raises(OperationFailure) as e:
        client.admin.command("killOp")
    assert e.value.code == 40414
    with pytest.raises(OperationFailure) as e:
        client.admin.command("killOp", op="x")
    assert e.value.code == 14
    tree = client.admin.command("getParameter", logComponentVerbosity=1)["logComponentVerbosity"]
    assert tree["verbosity"] == 0 and tree["storage"] == {"verbosity": -1}



def test_server_status_mem_follows_the_process(client, server):
    mem = client.admin.command("serverStatus")["mem"]
    assert mem["supported"] is True and mem["bits"] == 64
    with open(f"/proc/{server.proc.pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    # The same process, read a moment apart: within 64 MiB of each other.
    assert abs(mem["resident"] - rss_kib // 1024) < 64
    assert mem["virtual"] >= mem["resident"] > 0


def test_data_size_counts_documents_and_bytes(db):
    docs = [{"_id": i, "k": i, "pad": "x" * i} for i in range(10)]
    db.ds.insert_many(docs)
    ns = f"{db.name}.ds"
    import bson

    whole = db.command("dataSize", ns)
    assert whole["numObjects"] == 10
    assert whole["size"] == sum(len(bson.encode(d)) for d in docs)
    part = db.command("dataSize", ns, keyPattern={"k": 1}, min={"k": 3}, max={"k": 6})
    assert part["numObjects"] == 3
    assert part["size"] == sum(len(bson.encode(d)) for d in docs[3:6])
    assert db.command("dataSize", f"{db.name}.missing")["numObjects"] == 0
    with pytest.raises(OperationFailure) as e:
        db.command("dataSize", ns, keyPattern={"k": 1})
    assert e.value.code == 2


def test_fsync_answers_and_refuses_to_lock(client, db):
    db.f.with_options(write_concern=WriteConcern(w=1)).insert_one({"a": 1})
    assert client.admin.command("fsync")["numFiles"] == 1
    with pytest.raises(OperationFailure) as e:
        client.admin.command("fsync", lock=True)
    assert e.value.code == 115
    with pytest.raises(OperationFailure) as e:
        client.admin.command("fsyncUnlock")
    assert e.value.code == 20


def test_server_status_network_counts_requests_and_bytes(client):
    before = client.admin.command("serverStatus")["network"]
    for _ in range(10):
        client.admin.command("ping")
    after = client.admin.command("serverStatus")["network"]
    # The 10 pings and the first serverStatus, at least (monitors may add hellos).
    assert after["numRequests"] - before["numRequests"] >= 11
    assert after["bytesIn"] - before["bytesIn"] >= 11 * 16
    assert after["bytesOut"] > before["bytesOut"]


def test_get_log_keeps_recent_lines_and_startup_warnings():
    from pymongo import MongoClient

    from conftest import MangroveServer

    # Binding every interface without --advertise is warned about before serving starts.
    srv = MangroveServer(extra_args=["--bind", "0.0.0.0", "--insecure-no-auth"])
    try:
        c = MongoClient(srv.uri, serverSelectionTimeoutMS=10_000)
        warnings = c.admin.command("getLog", "startupWarnings")
        assert warnings["totalLinesWritten"] >= 1
        assert any('"s":"W"' in line and "advertis" in line for line in warnings["log"]), warnings
        log = c.admin.command("getLog", "global")
        assert log["totalLinesWritten"] == len(log["log"]) >= 2
        assert any('"msg":"server ready"' in line for line in log["log"])
        assert c.admin.command("getLog", "*")["names"] == ["startupWarnings", "global"]
        with pytest.raises(OperationFailure) as e:
            c.admin.command("getLog", "nope")
        assert e.value.code == 2
        c.close()
    finally:
        srv.stop()
