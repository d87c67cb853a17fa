"""`mangrove dump` and `mangrove restore --dump`: mongodump 100.x's directory layout
(`<db>/<coll>.bson` + `<coll>.metadata.json`, `.gz` with --gzip), loaded back as mongorestore
does. Dumps come from the module's server and are restored into a second, empty one."""

from __future__ import annotations

import datetime
import gzip
import re
import subprocess
import uuid
from pathlib import Path

import bson
import pytest
from bson import json_util
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo import MongoClient

from conftest import MangroveServer, mangrove_bin

RAW = CodecOptions(document_class=RawBSONDocument)


@pytest.fixture(scope="module")
def target():
    """A second server the dumps are restored into."""
    srv = MangroveServer()
    yield srv
    srv.stop()


@pytest.fixture()
def tclient(target):
    c = MongoClient(target.uri, serverSelectionTimeoutMS=10_000)
    yield c
    c.close()


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(mangrove_bin()), *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert r.returncode == 0, f"{args} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def dump(server, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("dump", "--uri", server.uri, "--out", str(out), *extra)


def restore(target, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("restore", "--uri", target.uri, "--dump", str(out), *extra, check=check)


def raw_docs(coll) -> list[bytes]:
    """The collection's documents as their exact BSON bytes, in _id order."""
    c = coll.with_options(codec_options=RAW)
    return [d.raw for d in c.find({}, sort=[("_id", 1)])]


def index_specs(coll) -> dict:
    return {
        i["name"]: {k: v for k, v in i.items() if k not in ("v", "ns")}
        for i in coll.list_indexes()
    }


def coll_options(db) -> dict:
    return {c["name"]: (c["type"], c["options"]) for c in db.list_collections()}


def every_type_docs() -> list[dict]:
    return [
        {
            "_id": 1,
            "double": 1.5,
            "inf": float("inf"),
            "string": "héllo\x00 wörld",
            "doc": {"z": 1, "a": {"deep": [1, [2, [3, {"x": None}]]]}},
            "array": [[1, 2], [], [[{"a": 1}]]],
            "bin_generic": Binary(b"\x00\x01\xff", 0),
            "bin_function": Binary(b"f", 1),
            "bin_uuid": Binary(uuid.UUID(int=7).bytes, 4),
            "bin_md5": Binary(b"0123456789abcdef", 5),
            "bin_user": Binary(b"user", 0x80),
            "oid": ObjectId("0123456789ab0123456789ab"),
            "bool": True,
            "date": datetime.datetime(2024, 2, 29, 12, 0, 0, 123000),
            "null": None,
            "regex": Regex("^a.*b$", "im"),
            "code": Code("function() { return 1; }"),
            "code_scope": Code("function() { return x; }", {"x": 1}),
            "int32": 42,
            "timestamp": Timestamp(1_700_000_000, 3),
            "int64": Int64(1 << 40),
            "decimal": Decimal128("1234567890.123456789012345678901234"),
            "minkey": MinKey(),
            "maxkey": MaxKey(),
        },
        {"_id": "string id", "n": Decimal128("-0E+10")},
        {"_id": ObjectId(), "x": Decimal128("NaN")},
    ]


def populate_round_trip(client) -> None:
    a = client.rt_a
    a.items.insert_many(
        [
            {
                "_id": i,
                "a": i % 7,
                "b": -i,
                "t": f"word{i} common",
                "loc": {"type": "Point", "coordinates": [i % 90, i % 45]},
                "at": datetime.datetime(2024, 1, 1),
            }
            for i in range(300)
        ]
    )
    a.items.create_index([("a", 1), ("b", -1)], unique=True, name="a_b")
    a.items.create_index("b", partialFilterExpression={"a": {"$gt": 3}}, name="b_partial")
    a.items.create_index("at", expireAfterSeconds=10**8)
    a.items.create_index([("t", "text")], default_language="french")
    a.items.create_index([("loc", "2dsphere")])
    a.create_collection("capped", capped=True, size=64 * 1024, max=50)
    a.capped.insert_many([{"_id": i} for i in range(60)])
    a.create_collection(
        "strict",
        validator={"$jsonSchema": {"required": ["name"]}},
        validationLevel="strict",
        collation={"locale": "fr", "strength": 2},
    )
    a.strict.insert_many([{"_id": i, "name": f"n{i}"} for i in range(5)])
    a.create_collection(
        "metrics", timeseries={"timeField": "ts", "metaField": "m", "granularity": "minutes"}
    )
    a.metrics.insert_many(
        [{"ts": datetime.datetime(2024, 1, 1, 0, i), "m": {"s": i % 3}, "v": i} for i in range(20)]
    )
    a.command("create", "small_items", viewOn="items", pipeline=[{"$match": {"a": {"$lt": 2}}}])
    b = client.rt_b
    b.types.insert_many(every_type_docs())
    # A document near the 16 MiB limit.
    b.big.insert_one({"_id": "big", "pad": "x" * (16 * 1024 * 1024 - 200)})
    b.empty.insert_one({"_id": 0})
    b.empty.delete_many({})
    b.create_collection("never_used")


def test_round_trip_keeps_documents_byte_for_byte_with_indexes_options_and_views(
    server, client, target, tclient, tmp_path
):
    populate_round_trip(client)
    out = tmp_path / "dump"
    r = dump(server, out)
    assert "done dumping rt_a.items (300 documents)" in r.stdout
    assert "done dumping rt_b.big (1 documents)" in r.stdout
    assert not {"admin", "local", "config"} & {p.name for p in out.iterdir()}
    assert not list(out.rglob("*.partial"))
    assert not (out / "rt_a" / "small_items.bson").exists()
    r = restore(target, out)
    assert "finished restoring rt_a.items (300 documents, 0 failures)" in r.stdout
    summary = r"^\d+ document\(s\) restored successfully\. 0 document\(s\) failed to restore\.$"
    assert re.search(summary, r.stdout, re.M)
    for name in ("rt_a", "rt_b"):
        src, dst = client[name], tclient[name]
        assert coll_options(dst) == coll_options(src), name
        for coll in src.list_collections():
            if coll["type"] == "view":
                continue
            n = coll["name"]
            assert index_specs(dst[n]) == index_specs(src[n]), n
            if coll["type"] == "timeseries":
                # Measurements get no stable order; compare them as sets of documents.
                assert sorted(map(bytes, raw_docs(dst[n]))) == sorted(map(bytes, raw_docs(src[n])))
            else:
                assert raw_docs(dst[n]) == raw_docs(src[n]), n
    assert sorted(d["_id"] for d in tclient.rt_a.small_items.find()) == sorted(
        d["_id"] for d in client.rt_a.items.find({"a": {"$lt": 2}})
    )
    # The options act, not only show: the capped collection stays capped, the validator refuses.
    tclient.rt_a.capped.insert_many([{"_id": 100 + i} for i in range(60)])
    assert tclient.rt_a.capped.count_documents({}) == 50
    with pytest.raises(Exception, match="validation"):
        tclient.rt_a.strict.insert_one({"_id": 99})
    assert tclient.rt_a.strict.count_documents({"name": "N1"}) == 1  # strength-2 collation
    assert tclient.rt_a.items.find_one({"$text": {"$search": "word7"}})["_id"] == 7


def test_files_are_what_mongodump_writes(server, client, tmp_path):
    db = client.fmt
    db.c.insert_many([{"_id": i, "k": [i, {"n": Int64(i)}]} for i in range(5)])
    db.c.create_index([("k", -1), ("_id", 1)])
    db.command("create", "v", viewOn="c", pipeline=[{"$project": {"k": 0}}])
    out = tmp_path / "dump"
    dump(server, out, "--db", "fmt")
    with open(out / "fmt" / "c.bson", "rb") as f:
        assert list(bson.decode_file_iter(f)) == list(db.c.find(sort=[("_id", 1)]))
    text = (out / "fmt" / "c.metadata.json").read_text()
    meta = json_util.loads(text)
    assert list(meta) == ["indexes", "uuid", "collectionName", "type"]
    assert meta["collectionName"] == "c" and meta["type"] == "collection"
    info = db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]
    assert meta["uuid"] == info["info"]["uuid"].hex() and len(meta["uuid"]) == 32
    keys = [list(i["key"].items()) for i in meta["indexes"]]
    assert keys == [[("_id", 1)], [("k", -1), ("_id", 1)]]
    # Canonical Extended JSON v2: numbers keep their BSON type.
    assert '"v":{"$numberInt":"2"}' in text
    vmeta = json_util.loads((out / "fmt" / "v.metadata.json").read_text())
    assert list(vmeta) == ["options", "indexes", "collectionName", "type"]
    assert vmeta["type"] == "view" and vmeta["indexes"] == []
    assert vmeta["options"] == {"viewOn": "c", "pipeline": [{"$project": {"k": 0}}]}
    assert not (out / "fmt" / "v.bson").exists()


def test_gzip_dump_restores(server, client, target, tclient, tmp_path):
    client.gz.c.insert_many([{"_id": i, "s": "abc" * 100} for i in range(200)])
    client.gz.c.create_index("s")
    out = tmp_path / "dump"
    dump(server, out, "--db", "gz", "--gzip")
    names = sorted(p.name for p in (out / "gz").iterdir())
    assert names == ["c.bson.gz", "c.metadata.json.gz"]
    data = gzip.decompress((out / "gz" / "c.bson.gz").read_bytes())
    assert len(bson.decode_all(data)) == 200
    meta = gzip.decompress((out / "gz" / "c.metadata.json.gz").read_bytes())
    assert json_util.loads(meta)["collectionName"] == "c"
    restore(target, out, "--db", "gz")
    assert raw_docs(tclient.gz.c) == raw_docs(client.gz.c)
    assert "s_1" in index_specs(tclient.gz.c)


def test_db_and_collection_filters(server, client, target, tclient, tmp_path):
    for dbn in ("f1", "f2"):
        for cn in ("x", "y"):
            client[dbn][cn].insert_many([{"_id": i, "k": i} for i in range(3)])
            client[dbn][cn].create_index("k")
    out = tmp_path / "one"
    r = dump(server, out, "--db", "f1", "--collection", "y")
    assert r.stdout.strip() == "done dumping f1.y (3 documents)"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert files == ["f1", "f1/y.bson", "f1/y.metadata.json"]
    full = tmp_path / "full"
    dump(server, full, "--db", "f2")
    files = sorted(p.name for p in (full / "f2").iterdir())
    assert files == ["x.bson", "x.metadata.json", "y.bson", "y.metadata.json"]
    assert not (full / "f1").exists()
    r = restore(target, full, "--db", "f2", "--collection", "x")
    assert "finished restoring f2.x (3 documents, 0 failures)" in r.stdout
    assert tclient.f2.list_collection_names() == ["x"]
    assert sorted(index_specs(tclient.f2.x)) == ["_id_", "k_1"]
    restore(target, full, "--db", "f2", "--collection", "y", "--no-index-restore")
    assert sorted(index_specs(tclient.f2.y)) == ["_id_"]
    # --db with the database's own directory, as `mongorestore --db f1 dump/f1` takes it.
    restore(target, out / "f1", "--db", "f1")
    assert tclient.f1.list_collection_names() == ["y"]
    r = run("dump", "--uri", server.uri, "--collection", "x", check=False)
    assert r.returncode != 0 and "--db" in r.stderr


def test_query_dumps_only_matching_documents(server, client, tmp_path):
    oid = ObjectId()
    client.q.c.insert_many(
        [{"_id": i, "n": i, "at": datetime.datetime(2024, 1, 1 + i)} for i in range(10)]
        + [{"_id": oid}]
    )
    out = tmp_path / "dump"
    r = dump(server, out, "--db", "q", "--collection", "c", "--query", '{"n": {"$gte": 7}}')
    assert "(3 documents)" in r.stdout
    with open(out / "q" / "c.bson", "rb") as f:
        assert [d["_id"] for d in bson.decode_file_iter(f)] == [7, 8, 9]
    # Extended JSON in the query: dates and ObjectIds.
    query = '{"at": {"$lt": {"$date": "2024-01-03T00:00:00Z"}}}'
    dump(server, out, "--db", "q", "--collection", "c", "--query", query)
    with open(out / "q" / "c.bson", "rb") as f:
        assert [d["_id"] for d in bson.decode_file_iter(f)] == [0, 1]
    dump(server, out, "--db", "q", "--collection", "c", "--query", json_util.dumps({"_id": oid}))
    with open(out / "q" / "c.bson", "rb") as f:
        assert [d["_id"] for d in bson.decode_file_iter(f)] == [oid]
    args = ["--db", "q", "--collection", "c", "--out", str(out), "--query", "{nope"]
    r = run("dump", "--uri", server.uri, *args, check=False)
    assert r.returncode != 0 and "--query" in r.stderr


def test_drop_replaces_and_duplicates_count_as_failures(server, client, target, tclient, tmp_path):
    client.dup.c.insert_many([{"_id": i, "v": "dumped"} for i in range(10)])
    out = tmp_path / "dump"
    dump(server, out, "--db", "dup")
    tclient.dup.c.insert_many(
        [{"_id": i, "v": "already there"} for i in (2, 5, 6)] + [{"_id": 100}]
    )
    r = restore(target, out, "--batch-size", "4")
    assert "finished restoring dup.c (7 documents, 3 failures)" in r.stdout
    assert "continuing through error: E11000" in r.stdout and "dup key" in r.stdout
    assert "7 document(s) restored successfully. 3 document(s) failed to restore." in r.stdout
    assert tclient.dup.c.count_documents({}) == 11
    assert tclient.dup.c.find_one({"_id": 5})["v"] == "already there"
    r = restore(target, out, "--drop")
    assert "dropping collection dup.c before restoring" in r.stdout
    assert "finished restoring dup.c (10 documents, 0 failures)" in r.stdout
    restored = sorted((d["_id"], d["v"]) for d in tclient.dup.c.find())
    assert restored == [(i, "dumped") for i in range(10)]


def test_damaged_bson_file_stops_with_file_and_offset(server, client, target, tclient, tmp_path):
    docs = [{"_id": i, "pad": "p" * (i * 10)} for i in range(8)]
    client.dmg.c.insert_many(docs)
    out = tmp_path / "dump"
    dump(server, out, "--db", "dmg")
    path = out / "dmg" / "c.bson"
    data = path.read_bytes()
    sizes = [len(bson.encode(d)) for d in docs]
    assert sum(sizes) == len(data)
    # Cut the file in the middle of the sixth document.
    cut = sum(sizes[:5]) + sizes[5] // 2
    path.write_bytes(data[:cut])
    r = restore(target, out, "--batch-size", "2", check=False)
    assert r.returncode != 0
    assert str(path) in r.stderr and f"byte offset {sum(sizes[:5])}" in r.stderr
    assert "after 5 whole documents" in r.stderr and "Dump the collection again" in r.stderr
    assert "finished restoring dmg.c (5 documents, 0 failures)" in r.stdout
    assert sorted(d["_id"] for d in tclient.dmg.c.find()) == [0, 1, 2, 3, 4]
    # An impossible length (a negative one) names its offset too.
    bad = bytearray(data)
    bad[sum(sizes[:3]) : sum(sizes[:3]) + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(bad))
    r = restore(target, out, "--drop", check=False)
    assert r.returncode != 0
    assert f"byte offset {sum(sizes[:3])}" in r.stderr and "-1 bytes is impossible" in r.stderr
    assert tclient.dmg.c.count_documents({}) == 3


def test_restore_needs_dump_dir(target, tmp_path):
    r = run("restore", "--uri", target.uri, check=False)
    assert r.returncode != 0 and "pass --dump DIR to load a mongodump directory" in r.stderr
    r = run("restore", "--uri", target.uri, "--dump", str(tmp_path), check=False)
    assert r.returncode != 0 and "no .bson or .metadata.json files" in r.stderr


def test_unreachable_server_is_a_clear_error(tmp_path):
    uri = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500"
    r = run("dump", "--uri", uri, "--out", str(tmp_path), check=False)
    assert r.returncode != 0 and "cannot reach the server" in r.stderr


def test_mongod_timeseries_buckets_are_refused_clearly(target, tmp_path):
    # mongod before 8.3 dumps a time-series collection's buckets as system.buckets.<name>.bson;
    # Mangrove keeps measurements, so it says so instead of inserting buckets as documents.
    (tmp_path / "tsdb").mkdir()
    (tmp_path / "tsdb" / "system.buckets.m.bson").write_bytes(bson.encode({"_id": 1}))
    r = restore(target, tmp_path, check=False)
    assert r.returncode != 0
    assert "tsdb.system.buckets.m" in r.stderr and "buckets" in r.stderr


def test_auth_and_tls_come_from_the_uri(tmp_path):
    """The driver reads credentials and TLS settings from --uri, as any client does."""
    from test_tls_auth import make_ca

    ca = make_ca(tmp_path, "ca")
    srv = MangroveServer(
        ["--tls-mode", "requireTLS", "--tls-certificate-key-file", str(ca / "server.pem"), "--auth"]
    )
    try:
        tls = f"tls=true&tlsCAFile={ca / 'ca.pem'}"
        with MongoClient(srv.uri + "?" + tls, serverSelectionTimeoutMS=5000) as c:
            c.admin.command("createUser", "app", pwd="pw", roles=["readWriteAnyDatabase"])
        uri = f"mongodb://app:pw@{srv.address}/?authSource=admin&{tls}"
        with MongoClient(uri) as c:
            c.sec.c.insert_many([{"_id": i} for i in range(4)])
            out = tmp_path / "dump"
            r = run("dump", "--uri", uri, "--out", str(out))
            assert "done dumping sec.c (4 documents)" in r.stdout
            c.sec.c.delete_many({"_id": {"$gt": 1}})
            r = run("restore", "--uri", uri, "--dump", str(out), "--drop")
            assert "finished restoring sec.c (4 documents, 0 failures)" in r.stdout
            assert c.sec.c.count_documents({}) == 4
        wrong = f"mongodb://app:nope@{srv.address}/?authSource=admin&{tls}"
        r = run("dump", "--uri", wrong, "--out", str(out), check=False)
        assert r.returncode != 0 and "Authentication failed" in r.stderr
        r = run("dump", "--uri", srv.uri + "?serverSelectionTimeoutMS=1000", "--out", str(out),
                check=False)
        assert r.returncode != 0 and "cannot reach the server" in r.stderr
    finally:
        srv.stop()


def test_restore_reads_names_from_escaped_files_and_empty_metadata(target, tclient, tmp_path):
    # As mongodump names files (Go's url.QueryEscape) when there is no collectionName to read;
    # an empty metadata file is no metadata, as mongorestore reads it.
    db = tmp_path / "hand"
    db.mkdir()
    (db / "caf%C3%A9s+bar.bson").write_bytes(b"".join(bson.encode({"_id": i}) for i in range(3)))
    (db / "caf%C3%A9s+bar.metadata.json").write_text("")
    (db / "notes.txt").write_text("ignored")
    r = restore(target, tmp_path)
    assert "finished restoring hand.cafés bar (3 documents, 0 failures)" in r.stdout
    assert tclient.hand["cafés bar"].count_documents({}) == 3
