"""Blocking stages spilling to disk (`allowDiskUse`, MongoDB 7.0 behaviour): with a small
per-stage memory limit a few MB of documents spill to `<data dir>/_tmp`, the results equal the
in-memory order (ties in input order), `allowDiskUse: false` and `allowDiskUseByDefault: false`
keep the 292 error, spill files go when the cursor is exhausted or killed, and a damaged spill
file fails the read with an error naming it."""

from __future__ import annotations

import os

import bson
import pytest
from pymongo.errors import OperationFailure

SORT_LIMIT = "internalQueryMaxBlockingSortMemoryUsageBytes"
GROUP_LIMIT = "internalDocumentSourceGroupMaxMemoryBytes"
N = 3000
PAD = "x" * 1000


@pytest.fixture()
def small_limits(client):
    admin = client.admin
    old = admin.command("getParameter", 1, **{SORT_LIMIT: 1, GROUP_LIMIT: 1})
    admin.command("setParameter", 1, **{SORT_LIMIT: 512 * 1024, GROUP_LIMIT: 256 * 1024})
    yield
    admin.command("setParameter", 1, **{SORT_LIMIT: old[SORT_LIMIT], GROUP_LIMIT: old[GROUP_LIMIT]})
    admin.command("setParameter", 1, allowDiskUseByDefault=True)


@pytest.fixture()
def coll(db, small_limits):
    # About 3 MB: six times the sort limit. `k` has many ties.
    db.big.insert_many(
        [{"_id": i, "k": (i * 7919) % 17, "s": f"{(i * 31) % 101:03}", "pad": PAD} for i in range(N)]
    )
    return db.big


def tmp_files(server) -> list[str]:
    tmp = server.data_dir / "_tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


def expected(key, reverse=False):
    docs = [{"_id": i, "k": (i * 7919) % 17} for i in range(N)]
    # Python's sort is stable; reverse=True would reverse ties too, so negate instead.
    return [d["_id"] for d in sorted(docs, key=lambda d: -d[key] if reverse else d[key])]


def test_a_large_sort_spills_and_answers_in_order_with_ties_kept(server, coll):
    cursor = coll.aggregate([{"$sort": {"k": 1}}, {"$project": {"pad": 0}}], batchSize=10)
    first = [next(cursor)["_id"] for _ in range(10)]
    # Between batches the sort's runs are on disk, in one file.
    files = tmp_files(server)
    assert len(files) == 1, files
    assert (server.data_dir / "_tmp" / files[0]).stat().st_size > 512 * 1024
    rest = [d["_id"] for d in cursor]
    assert first + rest == expected("k")
    assert tmp_files(server) == []
    # Descending, through find (a blocking sort with no index), with skip and limit.
    got = [d["_id"] for d in coll.find({}, {"pad": 0}).sort("k", -1).skip(5).limit(2000)]
    assert got == expected("k", reverse=True)[5:2005]
    got = [d["_id"] for d in coll.find({}, {"pad": 0}).sort([("s", 1), ("k", -1)])]
    docs = [{"_id": i, "k": (i * 7919) % 17, "s": f"{(i * 31) % 101:03}"} for i in range(N)]
    assert got == [d["_id"] for d in sorted(docs, key=lambda d: (d["s"], -d["k"]))]
    assert tmp_files(server) == []


def test_allow_disk_use_false_and_the_default_parameter_keep_292(client, coll):
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate([{"$sort": {"k": 1}}], allowDiskUse=False))
    assert e.value.code == 292
    with pytest.raises(OperationFailure) as e:
        list(coll.find().sort("k", 1).allow_disk_use(False))
    assert e.value.code == 292
    with pytest.raises(OperationFailure) as e:
        coll.database.command("aggregate", "big", pipeline=[], cursor={}, allowDiskUse="yes")
    assert e.value.code == 14
    assert client.admin.command("getParameter", 1, allowDiskUseByDefault=1)["allowDiskUseByDefault"]
    client.admin.command("setParameter", 1, allowDiskUseByDefault=False)
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate([{"$sort": {"k": 1}}]))
    assert e.value.code == 292
    with pytest.raises(OperationFailure) as e:
        list(coll.find().sort("k", 1))
    assert e.value.code == 292
    # An explicit allowDiskUse: true still spills.
    got = [d["_id"] for d in coll.aggregate([{"$sort": {"k": 1}}], allowDiskUse=True)]
    assert got == expected("k")


def test_killing_a_half_read_cursor_deletes_its_spill_file(server, client, coll):
    cursor = coll.aggregate([{"$sort": {"k": -1}}], batchSize=5)
    next(cursor)
    assert len(tmp_files(server)) == 1
    cursor.close()  # killCursors
    assert tmp_files(server) == []
    cursor = coll.find().sort("k", 1).batch_size(5)
    next(cursor)
    assert len(tmp_files(server)) == 1
    cursor.close()
    assert tmp_files(server) == []


def test_a_damaged_spill_file_fails_the_read_and_names_the_file(server, coll):
    cursor = coll.aggregate([{"$sort": {"s": 1}}], batchSize=2)
    next(cursor)
    [name] = tmp_files(server)
    path = server.data_dir / "_tmp" / name
    size = path.stat().st_size
    # Readers have read at most 256 KiB of each run ahead: flip a byte every 4 KiB after that.
    with open(path, "r+b") as f:
        for at in range(300 * 1024, size, 4096):
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(OperationFailure) as e:
        list(cursor)
    assert e.value.code == 301, e.value
    assert name in str(e.value) and "damaged at offset" in str(e.value)
    assert tmp_files(server) == []


def test_a_large_group_spills_and_equals_the_unspilled_result(server, client, coll):
    pipeline = [
        {"$group": {
            "_id": "$_id",
            "k": {"$first": "$k"},
            "n": {"$sum": 1},
            "pads": {"$push": {"$substrBytes": ["$pad", 0, 3]}},
        }},
        {"$sort": {"_id": 1}},
    ]
    cursor = coll.aggregate(pipeline, batchSize=5)
    first = [next(cursor) for _ in range(5)]
    got = first + list(cursor)
    assert got == [{"_id": i, "k": (i * 7919) % 17, "n": 1, "pads": ["xxx"]} for i in range(N)]
    assert tmp_files(server) == []
    # Few groups fed many times: states of one key merged across runs, in input order.
    pipeline = [{"$group": {"_id": "$k", "ids": {"$push": "$_id"}, "last": {"$last": "$_id"}}}]
    got = sorted(coll.aggregate(pipeline), key=lambda d: d["_id"])
    for d in got:
        ids = [i for i in range(N) if (i * 7919) % 17 == d["_id"]]
        assert d["ids"] == ids and d["last"] == ids[-1]
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate(pipeline[:1] + [{"$sort": {"_id": 1}}], allowDiskUse=False))
    assert e.value.code == 292


def test_spills_past_max_spill_bytes_fail_with_out_of_disk_space():
    from pymongo import MongoClient

    from conftest import MangroveServer

    srv = MangroveServer(extra_args=["--max-spill-bytes", "600000"])
    try:
        c = MongoClient(srv.uri, serverSelectionTimeoutMS=10_000)
        c.admin.command("setParameter", 1, **{SORT_LIMIT: 256 * 1024})
        docs = [{"_id": i, "k": i % 17, "pad": PAD} for i in range(N)]
        c.t.big.insert_many(docs)
        with pytest.raises(OperationFailure) as e:
            list(c.t.big.aggregate([{"$sort": {"k": 1}}]))
        assert e.value.code == 14031, e.value
        assert "--max-spill-bytes" in str(e.value)
        assert tmp_files(srv) == []
        # A smaller input fits the bound (the space of the failed sort was given back).
        got = [d["_id"] for d in c.t.big.aggregate([{"$match": {"_id": {"$lt": 500}}}, {"$sort": {"k": 1}}])]
        assert got == [d["_id"] for d in sorted(docs[:500], key=lambda d: d["k"])]
        c.close()
    finally:
        srv.stop()


def test_leftover_spill_files_are_removed_at_startup(restartable):
    first = restartable()
    first.stop()
    tmp = first.data_dir / "_tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "spill-7.bin").write_bytes(b"left by a crashed server")
    restartable()
    assert os.listdir(tmp) == []


def test_the_profiler_reports_used_disk(db, coll):
    db.command("profile", 2)
    try:
        list(coll.aggregate([{"$sort": {"k": 1}}, {"$limit": 3000}, {"$count": "n"}]))
        list(coll.aggregate([{"$match": {"_id": {"$lt": 10}}}, {"$sort": {"k": 1}}]))
    finally:
        db.command("profile", 0)
    entries = [e for e in db.system.profile.find({"op": "command", "command.aggregate": "big"})]
    assert [e.get("usedDisk", False) for e in entries] == [True, False]


def test_a_full_disk_fails_the_spill_with_out_of_disk_space(tmp_path):
    """A real ENOSPC: the data directory on a small tmpfs, filled up before the sort spills."""
    import subprocess

    from pymongo import MongoClient

    from conftest import MangroveServer

    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    srv = None
    try:
        srv = MangroveServer(data_dir=mnt / "data")
        c = MongoClient(srv.uri, serverSelectionTimeoutMS=10_000)
        c.admin.command("setParameter", 1, **{SORT_LIMIT: 256 * 1024})
        docs = [{"_id": i, "k": i % 17, "pad": PAD} for i in range(N)]
        c.t.big.insert_many(docs)
        st = os.statvfs(mnt)
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 64 * 1024))
        with pytest.raises(OperationFailure) as e:
            list(c.t.big.aggregate([{"$sort": {"k": 1}}]))
        assert e.value.code == 14031, e.value
        assert "spill file" in str(e.value), e.value
        assert tmp_files(srv) == []
        filler.unlink()
        got = [d["_id"] for d in c.t.big.aggregate([{"$sort": {"k": 1}}])]
        assert got == [d["_id"] for d in sorted(docs, key=lambda d: d["k"])]
        assert srv.alive()
        c.close()
    finally:
        if srv is not None:
            srv.stop()
        subprocess.run(["umount", str(mnt)])


def test_a_find_sort_spills_in_a_transaction_but_not_under_a_collation(server, client, coll):
    with client.start_session() as s:
        with s.start_transaction():
            got = [d["_id"] for d in coll.find({}, {"k": 1}, session=s).sort("k", 1).batch_size(7)]
    assert got == expected("k")
    assert tmp_files(server) == []
    # A collated cursor could not keep its collation for getMore: it stays within memory.
    with pytest.raises(OperationFailure) as e:
        list(coll.find().sort("k", 1).collation({"locale": "en"}))
    assert e.value.code == 292


def test_a_large_bucket_auto_spills_and_equals_the_in_memory_result(server, coll):
    pipeline = [{"$bucketAuto": {
        "groupBy": "$s", "buckets": 6,
        "output": {"n": {"$sum": 1}, "first": {"$first": "$_id"}, "last": {"$last": "$_id"}},
    }}]
    got = list(coll.aggregate(pipeline))
    # In memory, in Python: sorted by `s` (stable), cut into buckets of about N/6, equal keys
    # kept together, each bucket's max the next bucket's min.
    docs = sorted(({"_id": i, "s": f"{(i * 31) % 101:03}"} for i in range(N)), key=lambda d: d["s"])
    buckets, i, approx = [], 0, round(N / 6)
    while i < N:
        last = len(buckets) == 5
        end = N if last else min(N, i + approx)
        while end < N and docs[end]["s"] == docs[end - 1]["s"]:
            end += 1
        part = docs[i:end]
        upper = docs[end]["s"] if end < N else part[-1]["s"]
        buckets.append({"_id": {"min": part[0]["s"], "max": upper}, "n": len(part),
                        "first": part[0]["_id"], "last": part[-1]["_id"]})
        i = end
    assert got == buckets
    assert tmp_files(server) == []
    coll.database.command("profile", 2)
    try:
        list(coll.aggregate(pipeline, comment="bucketAuto spill"))
    finally:
        coll.database.command("profile", 0)
    [entry] = coll.database.system.profile.find({"command.comment": "bucketAuto spill"})
    assert entry.get("usedDisk") is True
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate(pipeline, allowDiskUse=False))
    assert e.value.code == 292


def test_a_large_set_window_fields_spills_a_partition_at_a_time(server, coll):
    pipeline = [
        {"$setWindowFields": {
            "partitionBy": "$k",
            "sortBy": {"_id": -1},
            "output": {"seen": {"$count": {}, "window": {"documents": ["unbounded", "current"]}}},
        }},
        {"$project": {"pad": 0}},
    ]
    got = list(coll.aggregate(pipeline, comment="window spill"))
    expected = []
    for k in range(17):
        ids = sorted((i for i in range(N) if (i * 7919) % 17 == k), reverse=True)
        expected += [{"_id": i, "k": k, "s": f"{(i * 31) % 101:03}", "seen": n + 1} for n, i in enumerate(ids)]
    assert got == expected
    assert tmp_files(server) == []
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate(pipeline, allowDiskUse=False))
    assert e.value.code == 5643011


def profiled_used_disk(coll, pipeline, comment):
    coll.database.command("profile", 2)
    try:
        list(coll.aggregate(pipeline, comment=comment))
    finally:
        coll.database.command("profile", 0)
    [entry] = coll.database.system.profile.find({"command.comment": comment, "op": "command"})
    return entry.get("usedDisk", False)


def test_a_large_sample_spills_and_stays_a_uniform_sample_without_duplicates(server, coll):
    # 1,000 documents of ~1 KB: twice the 512 KiB limit, so the top 1,000 by random key spill.
    pipeline = [{"$sample": {"size": 1000}}, {"$project": {"pad": 0}}]
    means = []
    for _ in range(3):
        cursor = coll.aggregate(pipeline, batchSize=10)
        first = [next(cursor) for _ in range(10)]
        # Between batches the kept documents are being merged from their runs on disk.
        assert len(tmp_files(server)) == 1
        got = first + list(cursor)
        assert tmp_files(server) == []
        ids = [d["_id"] for d in got]
        assert len(ids) == 1000 and len(set(ids)) == 1000
        assert all(d == {"_id": d["_id"], "k": (d["_id"] * 7919) % 17, "s": f"{(d['_id'] * 31) % 101:03}"} for d in got)
        assert ids != sorted(ids)
        # Every third of the input is represented about equally (333 expected, σ ≈ 12).
        thirds = [sum(1 for i in ids if i * 3 // N == t) for t in range(3)]
        assert all(250 <= n <= 420 for n in thirds), thirds
        means.append(sum(ids) / len(ids))
    assert len(set(means)) == 3, "three samples were the same"
    # A size above the input's answers every document once.
    assert sorted(d["_id"] for d in coll.aggregate([{"$sample": {"size": 5000}}])) == list(range(N))
    assert profiled_used_disk(coll, pipeline, "sample spill") is True
    assert profiled_used_disk(coll, [{"$sample": {"size": 10}}], "small sample") is False
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate(pipeline, allowDiskUse=False))
    assert e.value.code == 292
    assert "$sample" in str(e.value)


def test_a_large_densify_spills_and_equals_the_in_memory_result(server, coll):
    pipeline = [
        {"$densify": {"field": "_id", "partitionByFields": ["k"], "range": {"step": 1, "bounds": "partition"}}},
        {"$project": {"pad": 0, "s": 0}},
    ]
    cursor = coll.aggregate(pipeline, batchSize=100)
    first = [next(cursor) for _ in range(100)]
    assert len(tmp_files(server)) == 1
    got = first + list(cursor)
    assert tmp_files(server) == []
    # By partition, then value: each partition's ids, from its lowest to its highest, filled.
    expected = []
    for k in range(17):
        ids = [i for i in range(N) if (i * 7919) % 17 == k]
        expected += [{"_id": v, "k": k} for v in range(ids[0], ids[-1] + 1)]
    assert len(got) == len(expected) and got == expected
    # `full` bounds with an explicit step over a smaller input (still past the limit).
    full = [
        {"$match": {"k": {"$lt": 3}}},
        {"$densify": {"field": "_id", "partitionByFields": ["k"], "range": {"step": 100, "bounds": [0, 3000]}}},
        {"$project": {"pad": 0, "s": 0}},
    ]
    got = list(coll.aggregate(full))
    expected = []
    for k in range(3):
        ids = {i for i in range(N) if (i * 7919) % 17 == k}
        values = sorted(ids | set(range(0, 3000, 100)))
        expected += [{"_id": v, "k": k} for v in values]
    assert got == expected
    assert profiled_used_disk(coll, pipeline, "densify spill") is True
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate(pipeline, allowDiskUse=False))
    assert e.value.code == 292
    assert "$densify" in str(e.value)


def explain_stages(db, pipeline, **options):
    command = {"aggregate": "big", "pipeline": pipeline, "cursor": {}, **options}
    return db.command("explain", command, verbosity="executionStats")["stages"]


def test_explain_reports_used_disk_per_stage(server, db, coll):
    pipeline = [
        {"$match": {"_id": {"$gte": 0}}},
        {"$sort": {"k": 1}},
        {"$group": {"_id": "$k", "n": {"$sum": 1}}},
        {"$sort": {"_id": -1}},
        {"$project": {"n": 1}},
    ]
    stages = explain_stages(db, pipeline)
    cursor, first_sort, group, second_sort, project = stages
    assert cursor["$cursor"]["queryPlanner"]["parsedQuery"] == {"_id": {"$gte": 0}}
    assert cursor["$cursor"]["executionStats"]["totalDocsExamined"] == N
    assert cursor["nReturned"] == N
    # The 3 MB sort spilled (runs of at most its 512 KiB limit); the 17 groups and their sort
    # stayed in memory. Field names as mongod 7.0's.
    sorted_bytes = sum(len(bson.encode(d)) for d in coll.find())
    assert first_sort["$sort"] == {"k": 1}
    assert (first_sort["usedDisk"], first_sort["nReturned"]) == (True, N)
    assert first_sort["totalDataSizeSortedBytesEstimate"] == sorted_bytes
    assert first_sort["spills"] >= sorted_bytes // (512 * 1024)
    assert 0 < first_sort["spilledRecords"] <= N
    # Each spilled document is written with its framing.
    per_doc = len(bson.encode(coll.find_one()))
    assert first_sort["spilledDataStorageSize"] >= first_sort["spilledRecords"] * per_doc
    assert group["$group"] == {"_id": "$k", "n": {"$sum": 1}}
    assert (group["usedDisk"], group["nReturned"], group["spills"]) == (False, 17, 0)
    assert (group["spillFileSizeBytes"], group["numBytesSpilledEstimate"]) == (0, 0)
    groups = list(coll.aggregate([{"$group": {"_id": "$k", "n": {"$sum": 1}}}]))
    assert group["totalOutputDataSizeBytes"] == sum(len(bson.encode(g)) for g in groups)
    assert (second_sort["usedDisk"], second_sort["nReturned"]) == (False, 17)
    assert (second_sort["spills"], second_sort["spilledDataStorageSize"]) == (0, 0)
    # Times are cumulative: each stage's includes the stages before it.
    times = [s["executionTimeMillisEstimate"] for s in stages]
    assert times == sorted(times), times
    # A stage that cannot spill has no usedDisk, as in mongod.
    assert "usedDisk" not in project and project["nReturned"] == 17
    assert tmp_files(server) == []
    # $sample and $densify report theirs; without allowDiskUse nothing spills.
    [_, sample] = explain_stages(db, [{"$sample": {"size": 1000}}])
    assert (sample["usedDisk"], sample["nReturned"]) == (True, 1000)
    [_, densify] = explain_stages(db, [{"$densify": {"field": "_id", "range": {"step": 1, "bounds": "full"}}}])
    assert (densify["usedDisk"], densify["nReturned"]) == (True, N)
    [_, small] = explain_stages(db, [{"$match": {"_id": {"$lt": 5}}}, {"$sort": {"k": 1}}])
    assert small["usedDisk"] is False and small["nReturned"] == 5
    with pytest.raises(OperationFailure) as e:
        explain_stages(db, [{"$sort": {"k": 1}}], allowDiskUse=False)
    assert e.value.code == 292
    # A pipeline that is its $match alone is the query's explain, as mongod gives it.
    reply = db.command("explain", {"aggregate": "big", "pipeline": [{"$match": {"k": 1}}], "cursor": {}},
                       verbosity="executionStats")
    assert "stages" not in reply and reply["executionStats"]["nReturned"] == len([i for i in range(N) if (i * 7919) % 17 == 1])


def test_blocking_stages_inside_a_facet_spill(coll):
    # The `$group` holds 3,000 groups of 1 KB, far past its 256 KB limit; only its count leaves
    # the sub-pipeline, so the `$facet` result (one document, at most 16 MiB) stays small.
    grouped = [{"$group": {"_id": "$_id", "p": {"$first": "$pad"}}}, {"$count": "groups"}]
    facet = [{"$facet": {"n": grouped, "m": [{"$count": "docs"}]}}]
    assert list(coll.aggregate(facet, allowDiskUse=True)) == [
        {"n": [{"groups": N}], "m": [{"docs": N}]}
    ]
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate(facet, allowDiskUse=False))
    assert e.value.code == 292


def test_a_find_explain_shows_what_its_sort_spilled(db, coll):
    def sort_stage(**options):
        command = {"find": "big", "sort": {"k": 1, "_id": 1}, "projection": {"pad": 0}, **options}
        stage = db.command("explain", command, verbosity="executionStats")["executionStats"]
        stage = stage["executionStages"]
        while stage["stage"] != "SORT":
            stage = stage["inputStage"]
        return stage

    sorted_bytes = sum(len(bson.encode(d)) for d in coll.find())
    sort = sort_stage()
    assert (sort["usedDisk"], sort["memLimit"]) == (True, 512 * 1024)
    assert sort["totalDataSizeSorted"] == sorted_bytes
    assert sort["spills"] >= sorted_bytes // (512 * 1024)
    assert sort["spilledDataStorageSize"] > 0
    # A top-k sort keeps only skip + limit documents, and never spills.
    small = sort_stage(limit=5, skip=2)
    assert (small["usedDisk"], small["spills"], small["spilledDataStorageSize"]) == (False, 0, 0)
    assert small["nReturned"] == 5
    # Without allowDiskUse the explain fails as the find would.
    with pytest.raises(OperationFailure) as e:
        sort_stage(allowDiskUse=False)
    assert e.value.code == 292
    # At queryPlanner nothing runs, so nothing fails.
    plan = db.command("explain", {"find": "big", "sort": {"k": 1}, "allowDiskUse": False},
                      verbosity="queryPlanner")
    assert plan["queryPlanner"]["winningPlan"]["stage"] in ("SORT", "PROJECTION_DEFAULT")
