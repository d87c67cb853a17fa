#!/usr/bin/env python3
"""Indexed reads against a collection scan on one collection of N documents (default 1,000,000):
a point lookup on an indexed field, a range of 100 documents, and the same point query forced to
a collection scan. Reports each query's plan, keys and documents examined (from explain), the
server-side execution time explain measures, and the client round-trip latency, p50 and p99.

    cargo build --release -p mangrove
    .venv/bin/python scripts/bench-indexes.py [N]

MANGROVE_BIN overrides the binary (default target/release/mangrove, else target/debug/mangrove).
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]


def binary() -> str:
    if "MANGROVE_BIN" in os.environ:
        return os.environ["MANGROVE_BIN"]
    release = ROOT / "target" / "release" / "mangrove"
    return str(release if release.exists() else ROOT / "target" / "debug" / "mangrove")


def start_server(data_dir: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [binary(), "serve", "--port", "0", "--data-dir", data_dir, "--cache-size", "4096"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"listening on \S+:(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p * len(s)))]


def measure(coll, name: str, make_filter, runs: int, hint=None) -> dict:
    rng = random.Random(1)
    lat = []
    for _ in range(runs):
        f = make_filter(rng)
        cur = coll.find(f)
        if hint is not None:
            cur = cur.hint(hint)
        t0 = time.perf_counter()
        docs = list(cur)
        lat.append((time.perf_counter() - t0) * 1e3)
    f = make_filter(random.Random(2))
    cur = coll.find(f)
    if hint is not None:
        cur = cur.hint(hint)
    e = cur.explain()
    stats = e["executionStats"]
    plan = e["queryPlanner"]["winningPlan"]
    stages = [plan["stage"]]
    while "inputStage" in plan:
        plan = plan["inputStage"]
        stages.append(plan["stage"])
    return {
        "query": name,
        "plan": " > ".join(stages),
        "returned": stats["nReturned"],
        "keys": stats["totalKeysExamined"],
        "docs": stats["totalDocsExamined"],
        "server_ms": stats.get("executionTimeMicros", stats["executionTimeMillis"] * 1000) / 1000,
        "p50": statistics.median(lat),
        "p99": pct(lat, 0.99),
        "runs": runs,
        "last": len(docs),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="mangrove-bench-idx-") as data:
        proc, port = start_server(data)
        try:
            c = MongoClient(f"mongodb://127.0.0.1:{port}/")
            coll = c.bench.docs
            keys = list(range(n))
            random.Random(0).shuffle(keys)
            t0 = time.perf_counter()
            batch = 10_000
            for start in range(0, n, batch):
                coll.insert_many(
                    [{"_id": i, "k": keys[i], "u": keys[i], "pad": "x" * 40}
                     for i in range(start, min(n, start + batch))],
                    ordered=False,
                )
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            coll.create_index("k")
            build = time.perf_counter() - t0
            print(f"{n:,} documents loaded in {load:.1f} s; index on k built in {build:.1f} s "
                  f"(binary {binary()})")
            rows = [
                measure(coll, "point: {k: x}", lambda r: {"k": r.randrange(n)}, 2000),
                measure(coll, "range: {k: {$gte: x, $lt: x+100}}",
                        lambda r: (lambda x: {"k": {"$gte": x, "$lt": x + 100}})(r.randrange(n - 100)),
                        1000),
                measure(coll, "point, unindexed: {u: x}", lambda r: {"u": r.randrange(n)}, 5),
                measure(coll, "range, unindexed: {u: {$gte: x, $lt: x+100}}",
                        lambda r: (lambda x: {"u": {"$gte": x, "$lt": x + 100}})(r.randrange(n - 100)),
                        5),
            ]
            print()
            print("| query | plan | returned | keys examined | docs examined | server ms (explain) "
                  "| round trip p50 ms | p99 ms | runs |")
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                print(f"| `{r['query']}` | {r['plan']} | {r['returned']} | {r['keys']:,} | "
                      f"{r['docs']:,} | {r['server_ms']:.3f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                      f"{r['runs']} |")
            point, scan = rows[0], rows[2]
            print(f"\npoint lookup: indexed p50 {point['p50']:.3f} ms vs collection scan p50 "
                  f"{scan['p50']:.1f} ms ({scan['p50'] / point['p50']:.0f}x)")
            c.close()
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
