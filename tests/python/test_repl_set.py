"""The one-member replica set's surface through pymongo (issue 16, item 1): replSetGetStatus and
replSetGetConfig agree with hello, local.system.replset holds the config, and the default read
and write concerns survive a kill -9."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure


def test_status_and_config_agree_with_hello(client):
    hello = client.admin.command("hello")
    status = client.admin.command("replSetGetStatus")
    config = client.admin.command("replSetGetConfig")["config"]
    assert status["set"] == hello["setName"] == config["_id"]
    [member] = status["members"]
    assert (member["name"], member["stateStr"], member["state"], member["self"]) == (hello["me"], "PRIMARY", 1, True)
    assert member["optime"]["ts"] >= hello["lastWrite"]["opTime"]["ts"]
    assert [m["host"] for m in config["members"]] == hello["hosts"]
    assert config["version"] == hello["setVersion"]
    # The set's id is the same every time it is asked for.
    again = client.admin.command("replSetGetConfig")["config"]["settings"]["replicaSetId"]
    assert again == config["settings"]["replicaSetId"]
    assert client.local.system.replset.find_one() == config
    assert "system.replset" in client.local.list_collection_names()
    # Database commands elsewhere are refused as on mongod (admin only).
    with pytest.raises(OperationFailure) as e:
        client.test.command("replSetGetStatus")
    assert e.value.code == 13


def test_initiate_and_step_down_are_refused(client):
    with pytest.raises(OperationFailure) as e:
        client.admin.command("replSetInitiate", {})
    assert e.value.code == 23 and e.value.details["codeName"] == "AlreadyInitialized"
    with pytest.raises(OperationFailure) as e:
        client.admin.command("replSetStepDown", 60)
    assert e.value.code == 262
    assert client.admin.command("hello")["isWritablePrimary"] is True


def test_default_rw_concern_is_checked_and_survives_kill_9(restartable):
    server = restartable()
    c = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    assert c.admin.command("getDefaultRWConcern")["defaultWriteConcernSource"] == "implicit"
    for bad in ({"defaultWriteConcern": {"w": 0}}, {"defaultWriteConcern": {}}, {"defaultReadConcern": {"level": "snapshot"}}, {}):
        with pytest.raises(OperationFailure) as e:
            c.admin.command("setDefaultRWConcern", **bad)
        assert e.value.code == 2, bad
    c.admin.command("setDefaultRWConcern", defaultWriteConcern={"w": 1, "j": True}, defaultReadConcern={"level": "available"})
    c.close()
    server.kill()
    server = restartable()
    c = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    got = c.admin.command("getDefaultRWConcern")
    assert got["defaultWriteConcern"] == {"w": 1, "j": True}
    assert got["defaultReadConcern"] == {"level": "available"}
    assert (got["defaultWriteConcernSource"], got["defaultReadConcernSource"]) == ("global", "global")
    c.close()
