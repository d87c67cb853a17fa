#!/usr/bin/env python3
"""Peak server memory of the issue-11 transaction cases, for a given `mangrove` binary.

    .venv/bin/python scripts/measure-txn-memory.py target/release/mangrove [--cache-size 128]

Cases (each on a fresh server and data directory, with --cache-size as given):
  txn-200mb      one transaction inserting 100 KB documents until 200 MB or refused
  txn-1m-docs    one transaction inserting 1,000,000 documents of 100 bytes, or until refused
  update-many    update_many({}, {$inc}) over 200,000 documents, with the slowest concurrent ping

Prints, per case: the outcome (committed, or the error code), the server's peak RSS (VmHWM,
reset after seeding where the kernel allows it) and for update-many the slowest ping. A watchdog
kills the server above 4 GB so an unbounded case ends instead of swapping.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pymongo import MongoClient
from pymongo.errors import PyMongoError

WATCHDOG_BYTES = 4 << 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, binary, cache):
        self.dir = tempfile.mkdtemp(prefix="mangrove-measure-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", str(self.port), "--data-dir", self.dir + "/data",
             "--cache-size", str(cache)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdout.readline()
        self.client = MongoClient(f"mongodb://127.0.0.1:{self.port}/?directConnection=true",
                                  serverSelectionTimeoutMS=5000, socketTimeoutMS=600000)
        self.killed = False
        threading.Thread(target=self.watchdog, daemon=True).start()

    def watchdog(self):
        while self.proc.poll() is None:
            try:
                if vm_rss(self.proc.pid) > WATCHDOG_BYTES:
                    self.killed = True
                    self.proc.kill()
                    return
            except FileNotFoundError:
                return
            time.sleep(0.05)

    def reset_peak(self):
        try:  # Linux 4.0+: writing 5 to clear_refs resets VmHWM
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_mb(self):
        if self.killed:
            return WATCHDOG_BYTES / 2**20
        return vm_hwm(self.proc.pid) / 2**20 if self.proc.poll() is None else float("nan")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def in_txn(server, make_docs, batches):
    coll = server.client.db.big
    with server.client.start_session() as s:
        s.start_transaction()
        try:
            for b in range(batches):
                coll.insert_many(make_docs(b), session=s)
            s.commit_transaction()
            return "committed"
        except PyMongoError as e:
            write_errors = (getattr(e, "details", None) or {}).get("writeErrors") or [{}]
            code = write_errors[0].get("code") or getattr(e, "code", None)
            return f"refused ({code})" if not server.killed else "server killed at 4 GB"


def case_txn_200mb(server):
    pad = "x" * 100_000
    return in_txn(server, lambda b: [{"_id": b * 20 + i, "pad": pad} for i in range(20)], 100)


def case_txn_1m_docs(server):
    pad = "y" * 100
    return in_txn(server, lambda b: [{"_id": b * 10_000 + i, "pad": pad} for i in range(10_000)], 100)


def case_update_many(server):
    coll = server.client.db.many
    for start in range(0, 200_000, 20_000):
        coll.insert_many([{"_id": i, "n": 0, "pad": "z" * 80} for i in range(start, start + 20_000)])
    server.reset_peak()
    pinger = MongoClient(f"mongodb://127.0.0.1:{server.port}/?directConnection=true")
    slowest = [0.0]
    done = threading.Event()

    def ping():
        while not done.is_set():
            t = time.perf_counter()
            try:
                pinger.admin.command("ping")
            except PyMongoError:
                return
            slowest[0] = max(slowest[0], time.perf_counter() - t)
            time.sleep(0.005)

    t = threading.Thread(target=ping)
    t.start()
    try:
        r = coll.update_many({}, {"$inc": {"n": 1}})
        outcome = f"modified {r.modified_count}"
    except PyMongoError as e:
        outcome = "server killed at 4 GB" if server.killed else f"failed: {e}"
    done.set()
    t.join()
    return f"{outcome}, slowest ping {slowest[0] * 1000:.0f} ms"


CASES = {"txn-200mb": case_txn_200mb, "txn-1m-docs": case_txn_1m_docs, "update-many": case_update_many}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--cache-size", type=int, default=128)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    for name in args.cases.split(","):
        server = Server(args.binary, args.cache_size)
        try:
            outcome = CASES[name](server)
            peak = server.peak_mb()
        finally:
            server.stop()
        print(f"{name:12} {outcome:45} peak RSS {peak:7.0f} MB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
