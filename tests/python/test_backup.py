"""Online backup and point-in-time restore through the real binary (issue 16, items 5 and 6).

A server with ``--log-archive-dir`` and small log segments takes writes from several threads
while ``mangrove backup`` copies it; then a collection is dropped by mistake and the server is
killed with SIGKILL. ``mangrove restore`` rebuilds, from the backup, the archive and the dead
server's log, a data directory holding every acknowledged write up to the transaction before
the drop, and nothing after it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pymongo import MongoClient, WriteConcern
from pymongo.errors import OperationFailure

from conftest import MangroveServer, mangrove_bin

PAD = "x" * 2000


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(mangrove_bin()), *args], capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        pytest.fail(f"mangrove {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture()
def work():
    d = Path(tempfile.mkdtemp(prefix="mangrove-backup-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def writers(client: MongoClient, acked: list[int], stop: threading.Event, start: int):
    coll = client.shop.get_collection("orders", write_concern=WriteConcern(j=True))

    def write(first: int) -> None:
        i = first
        while not stop.is_set():
            coll.insert_one({"_id": i, "pad": PAD})
            acked.append(i)
            i += 2

    threads = [threading.Thread(target=write, args=(start + k,)) for k in range(2)]
    for t in threads:
        t.start()
    return threads


def test_backup_under_load_then_restore_before_a_drop_after_kill_9(work):
    data, archive, backup = work / "data", work / "archive", work / "backup"
    data.mkdir()
    srv = MangroveServer(
        [
            "--log-archive-dir", str(archive),
            "--log-segment-size", "1",
            "--oplog-size-mb", "1",
            "--checkpoint-interval-secs", "1",
        ],
        data_dir=data,
    )
    client = MongoClient(srv.uri, directConnection=True)
    try:
        acked: list[int] = []
        stop = threading.Event()
        threads = writers(client, acked, stop, 0)
        while len(acked) < 400:
            time.sleep(0.05)
        acked_before_backup = set(acked)
        out = run("backup", "--to", str(backup), "--uri", srv.uri)
        assert "backup written to" in out.stdout, out.stdout
        # More writes, over several segments, while the checkpointer archives and trims.
        while len(acked) < 2500:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        all_orders = set(acked)
        client.shop.audit.insert_one({"_id": "before-drop"})
        client.shop.orders.drop()
        client.get_database("shop", write_concern=WriteConcern(j=True)).audit.insert_one(
            {"_id": "after-drop"}
        )
        time.sleep(2.5)  # a checkpoint or two: sealed segments archived, then removed
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
    finally:
        client.close()
        srv.kill()
    assert list(archive.glob("*.log")), "the archive holds sealed segments"

    # Finding the point: the one transaction that dropped the collection.
    listed = run("log", "list", "--data-dir", str(data), "--op", "drop", "--ns", "shop.orders")
    lines = [line for line in listed.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "drop shop.orders" in lines[0], listed.stdout
    archived = run("log", "list", "--log-dir", str(archive), "--ns", "shop.orders")
    assert "insert shop.orders" in archived.stdout, archived.stdout[:500]

    verify = run("backup", "verify", str(backup))
    assert verify.stdout.startswith("ok:"), verify.stdout

    # Without the archive, the log between the backup and the live log's oldest segment is
    # missing: named, not skipped.
    gap = run(
        "restore", "--from", str(backup), "--archive", str(data / "log"),
        "--to", str(work / "gap"), check=False,
    )
    assert gap.returncode != 0 and "--log-archive-dir" in gap.stderr, gap.stderr

    restored = work / "restored"
    out = run(
        "restore", "--from", str(backup),
        "--archive", str(archive), "--archive", str(data / "log"),
        "--until-before-ns-drop", "shop.orders",
        "--to", str(restored),
    )
    assert "stopped before:" in out.stdout and "drop shop.orders" in out.stdout, out.stdout

    srv2 = MangroveServer(data_dir=restored)
    client2 = MongoClient(srv2.uri, directConnection=True)
    try:
        ids = {d["_id"] for d in client2.shop.orders.find({}, {"_id": 1})}
        assert acked_before_backup <= ids
        assert ids == all_orders, f"missing {sorted(all_orders - ids)[:10]}, extra {sorted(ids - all_orders)[:10]}"
        assert [d["_id"] for d in client2.shop.audit.find()] == ["before-drop"]
    finally:
        client2.close()
        srv2.stop()


def test_verify_names_a_damaged_file_and_restore_refuses_it(work):
    srv = MangroveServer()
    client = MongoClient(srv.uri, directConnection=True)
    try:
        client.db.c.insert_many([{"_id": i, "pad": PAD} for i in range(200)])
        run("backup", "--to", str(work / "b"), "--uri", srv.uri)
    finally:
        client.close()
        srv.stop()
    segment = sorted((work / "b" / "log").glob("*.log"))[-1]
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    segment.write_bytes(bytes(raw))
    verify = run("backup", "verify", str(work / "b"), check=False)
    assert verify.returncode == 2, verify
    assert segment.name in verify.stdout and "damaged" in verify.stdout, verify.stdout
    restore = run("restore", "--from", str(work / "b"), "--to", str(work / "r"), check=False)
    assert restore.returncode != 0
    assert segment.name in restore.stderr and "backup verify" in restore.stderr, restore.stderr


def test_create_backup_refuses_bad_directories(client, work):
    with pytest.raises(OperationFailure) as e:
        client.admin.command("createBackup", 1)
    assert e.value.code == 2
    with pytest.raises(OperationFailure) as e:
        client.admin.command("createBackup", 1, backupDir="relative/dir")
    assert e.value.code == 2 and "absolute" in str(e.value)
    (work / "full").mkdir()
    (work / "full" / "keep").write_text("x")
    with pytest.raises(OperationFailure) as e:
        client.admin.command("createBackup", 1, backupDir=str(work / "full"))
    assert e.value.code == 20 and "not empty" in str(e.value)
    assert (work / "full" / "keep").read_text() == "x"
    with pytest.raises(OperationFailure) as e:
        client.admin.command("createBackup", 1, backupDir=str(work / "new"), bogus=1)
    assert e.value.code in (40415, 8000, 2), e.value
    reply = client.admin.command("createBackup", 1, backupDir=str(work / "ok"))
    assert reply["ok"] == 1 and reply["files"] >= 3
    assert (work / "ok" / "manifest.json").exists()


def test_restore_a_time_before_the_backup_is_refused(work):
    srv = MangroveServer(["--checkpoint-interval-secs", "1"])
    client = MongoClient(srv.uri, directConnection=True)
    try:
        client.db.c.insert_one({"_id": 1})
        time.sleep(1.5)  # a checkpoint: the backup's base holds the insert
        run("backup", "--to", str(work / "b"), "--uri", srv.uri)
    finally:
        client.close()
        srv.stop()
    out = run(
        "restore", "--from", str(work / "b"), "--to", str(work / "r"),
        "--until", "2020-01-01T00:00:00Z", check=False,
    )
    assert out.returncode != 0 and "older backup" in out.stderr, out.stderr
