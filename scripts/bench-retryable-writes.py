#!/usr/bin/env python3
"""What retryable writes cost: single-document inserts from one pymongo client with
retryWrites off and on, at w:1/j:false (no fdatasync wait) and w:"majority" (durable), against a
fresh server on a free port. Runs each pair twice, interleaved, so drift shows as noise.

    .venv/bin/python scripts/bench-retryable-writes.py [N]

A retryable write also rewrites the session's record in config.transactions in the same commit
(see crates/server/src/retryable.rs), so the durable case pays for a slightly larger log record.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient, WriteConcern

ROOT = Path(__file__).resolve().parents[1]


def start_server(data_dir: str) -> tuple[subprocess.Popen, int]:
    binary = os.environ.get("MANGROVE_BIN", str(ROOT / "target" / "debug" / "mangrove"))
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--data-dir", data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"listening on \S+:(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    with tempfile.TemporaryDirectory(prefix="mangrove-bench-") as data:
        proc, port = start_server(data)
        try:
            print(f"{n} single-document inserts per row, one client, server {port}")
            print(f"{'write concern':14s} {'retryWrites':11s} {'inserts/s':>10s} {'us/insert':>10s}")
            for name, wc in [("w:1 j:false", WriteConcern(w=1, j=False)),
                             ("w:majority", WriteConcern("majority"))]:
                for retry in (False, True, False, True):
                    c = MongoClient(f"mongodb://127.0.0.1:{port}/", retryWrites=retry)
                    coll = c.bench.get_collection(f"c{time.monotonic_ns()}", write_concern=wc)
                    coll.insert_one({"_id": -1})  # create the collection outside the timing
                    t0 = time.perf_counter()
                    for i in range(n):
                        coll.insert_one({"_id": i, "v": "x" * 50})
                    dt = time.perf_counter() - t0
                    print(f"{name:14s} {str(retry):11s} {n / dt:10.0f} {dt / n * 1e6:10.0f}")
                    c.close()
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
