"""Online backup and point-in-time restore through the real binary (issue 16, items 5 and 6).

A server with ``--log-archive-dir`` and small log segments takes writes from several threads
while ``mangrove backup`` copies it; then a collection is dropped by mistake and the server is
killed with SIGKILL. ``mangrove restore`` rebuilds, from the backup, the archive and the dead
server's log, a data directory holding every acknowledged write up to the transaction before
the drop, and nothing after it.
"""

from __future__ import annotations

import re
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

    # A damaged archived segment stops a restore, named, never skipped.
    damaged = sorted(archive.glob("*.log"))[-1]
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0x08
    damaged.write_bytes(bytes(raw))
    refused = run(
        "restore", "--from", str(backup), "--archive", str(archive), "--archive", str(data / "log"),
        "--until-before-ns-drop", "shop.orders", "--to", str(work / "damaged"), check=False,
    )
    assert refused.returncode != 0 and damaged.name in refused.stderr, refused.stderr

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


def test_backup_under_32_transfer_clients_equals_a_snapshot_at_its_timestamp(work):
    """The issue's test: the restored state conserves the total and equals a snapshot read at
    the backup's last commit, taken on the live server."""
    import random

    from bson import Timestamp
    from pymongo.read_concern import ReadConcern

    accounts, opening = 200, 1000
    srv = MangroveServer(["--log-segment-size", "1", "--checkpoint-interval-secs", "1"])
    client = MongoClient(srv.uri, directConnection=True, maxPoolSize=40)
    try:
        bank = client.bank
        bank.accounts.insert_many([{"_id": i, "balance": opening} for i in range(accounts)])
        # A snapshot transaction left open keeps the history, so the live server can still
        # answer a snapshot read at the backup's timestamp afterwards.
        pin = client.start_session()
        pin.start_transaction(read_concern=ReadConcern("snapshot"))
        bank.accounts.find_one({}, session=pin)

        stop, errors, done = threading.Event(), [], [0]

        def transfer(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                a, b = rng.sample(range(accounts), 2)
                amount = rng.randint(1, 50)

                def txn(s):
                    bank.accounts.update_one({"_id": a}, {"$inc": {"balance": -amount}}, session=s)
                    bank.accounts.update_one({"_id": b}, {"$inc": {"balance": amount}}, session=s)

                try:
                    with client.start_session() as s:
                        s.with_transaction(txn)
                    done[0] += 1
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

        threads = [threading.Thread(target=transfer, args=(k,)) for k in range(32)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before = done[0]
        out = run("backup", "--to", str(work / "b"), "--uri", srv.uri)
        during = done[0] - before
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert before > 0 and during >= 0
        t, i = (int(x) for x in re.search(r"up to the commit (\d+):(\d+)", out.stdout).groups())
        snap = bank.command(
            "find", "accounts", batchSize=accounts + 1,
            readConcern={"level": "snapshot", "atClusterTime": Timestamp(t, i)},
        )["cursor"]["firstBatch"]
        pin.abort_transaction()
        pin.end_session()
    finally:
        client.close()
        srv.stop()
    assert sum(d["balance"] for d in snap) == accounts * opening

    run("restore", "--from", str(work / "b"), "--to", str(work / "r"))
    srv2 = MangroveServer(data_dir=work / "r")
    client2 = MongoClient(srv2.uri, directConnection=True)
    try:
        restored = list(client2.bank.accounts.find().sort("_id", 1))
    finally:
        client2.close()
        srv2.stop()
    assert sum(d["balance"] for d in restored) == accounts * opening
    assert restored == sorted(snap, key=lambda d: d["_id"])
    assert any(d["balance"] != opening for d in restored), "transfers happened before the backup"


def test_backup_needs_the_backup_role_under_auth(work):
    srv = MangroveServer(["--auth"])
    try:
        local = MongoClient(srv.uri, directConnection=True)
        local.admin.command("createUser", "root", pwd="pw-root", roles=["root"])
        local.close()
        admin = MongoClient(srv.uri, directConnection=True, username="root", password="pw-root")
        admin.admin.command("createUser", "ops", pwd="pw-ops", roles=["backup"])
        admin.admin.command("createUser", "app", pwd="pw-app", roles=["readWriteAnyDatabase"])
        admin.close()
        base = f"mongodb://{{}}@{srv.address}/?authSource=admin"
        refused = run("backup", "--to", str(work / "no"), "--uri", base.format("app:pw-app"), check=False)
        assert refused.returncode != 0 and "backup or hostManager role" in refused.stderr, refused.stderr
        assert not (work / "no" / "manifest.json").exists()
        run("backup", "--to", str(work / "yes"), "--uri", base.format("ops:pw-ops"))
        assert run("backup", "verify", str(work / "yes")).stdout.startswith("ok:")
    finally:
        srv.stop()


def test_a_backup_cut_by_kill_9_is_never_taken_for_a_whole_one(work):
    srv = MangroveServer()
    client = MongoClient(srv.uri, directConnection=True)
    pad = "y" * 4000
    try:
        for start in range(0, 40_000, 1000):
            client.db.big.insert_many([{"_id": i, "pad": pad} for i in range(start, start + 1000)])
        backup = subprocess.Popen(
            [str(mangrove_bin()), "backup", "--to", str(work / "cut"), "--uri", srv.uri],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        while not (work / "cut").exists() or not any((work / "cut").iterdir()):
            time.sleep(0.005)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        backup.wait(timeout=60)
    finally:
        client.close()
        srv.kill()
    assert backup.returncode != 0
    assert not (work / "cut" / "manifest.json").exists()
    verify = run("backup", "verify", str(work / "cut"), check=False)
    assert verify.returncode == 2 and "did not finish" in verify.stderr, verify
    restore = run("restore", "--from", str(work / "cut"), "--to", str(work / "r"), check=False)
    assert restore.returncode != 0 and "did not finish" in restore.stderr, restore.stderr


def test_an_archive_that_cannot_be_written_keeps_the_log_until_it_can(work):
    archive = work / "archive"
    archive.write_text("a file where the archive directory should be")
    data = work / "data"
    data.mkdir()
    srv = MangroveServer(
        ["--log-archive-dir", str(archive), "--log-segment-size", "1",
         "--oplog-size-mb", "1", "--checkpoint-interval-secs", "1"],
        data_dir=data,
    )
    client = MongoClient(srv.uri, directConnection=True)
    try:
        pad = "z" * 2000
        for start in range(0, 3000, 500):
            client.db.c.insert_many([{"_id": i, "pad": pad} for i in range(start, start + 500)])
        time.sleep(2.5)
        kept = sorted(p.name for p in (data / "log").glob("*.log"))
        assert len(kept) >= 4, kept  # nothing removed: the archive would have a hole
        assert "cannot archive the log" in srv.log_tail(200)
        # Fixed: the next checkpoint archives every sealed segment, then trims the log.
        archive.unlink()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(list((data / "log").glob("*.log"))) >= len(kept):
            time.sleep(0.2)
        archived = sorted(p.name for p in archive.glob("*.log"))
        assert set(kept[:-1]) <= set(archived), (kept, archived)
        assert len(list((data / "log").glob("*.log"))) < len(kept)
    finally:
        client.close()
        srv.stop()
