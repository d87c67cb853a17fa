//! The replica-set surface of the one-member set Mangrove is: `replSetGetStatus`,
//! `replSetGetConfig` (also served as `local.system.replset`), `replSetInitiate`,
//! `replSetStepDown`, and the cluster-wide read and write concern defaults
//! (`getDefaultRWConcern`, `setDefaultRWConcern`).
//!
//! Invariants:
//! - Every answer describes the same set `hello` does: one member, `shared.advertised`, always
//!   PRIMARY, term 1, config version 1 — so drivers' and tools' views never disagree.
//! - The set's `replicaSetId` is derived from the set name, so it is stable across restarts
//!   without any state of its own.
//! - The read and write concern defaults live in `config.settings` under
//!   `ReadWriteConcernDefaults` (where mongod keeps them), written through the log like any
//!   document: they survive restarts and are part of backups. Mangrove reports them; a write
//!   without a write concern is still acknowledged only once durable, whatever the default.

use bson::oid::ObjectId;
use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Document, doc};
use mangrove_storage::{ReadView, Txn};

use crate::Shared;
use crate::access::key_of;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::write_path::{WriteOptions, retry_conflicts};

/// Where the defaults are stored, as in mongod.
const SETTINGS_NS: &str = "config.settings";
const DEFAULTS_ID: &str = "ReadWriteConcernDefaults";

/// The one member's replica-set configuration, as `replSetGetConfig` and
/// `local.system.replset` show it.
pub(crate) fn config_document(shared: &Shared) -> Document {
    doc! {
        "_id": &shared.config.replset,
        "version": 1,
        "term": 1,
        "members": [{
            "_id": 0,
            "host": shared.advertised.as_str(),
            "arbiterOnly": false,
            "buildIndexes": true,
            "hidden": false,
            "priority": 1.0,
            "tags": {},
            "secondaryDelaySecs": 0i64,
            "votes": 1,
        }],
        "protocolVersion": 1i64,
        "writeConcernMajorityJournalDefault": true,
        "settings": {
            "chainingAllowed": true,
            "heartbeatIntervalMillis": 2000,
            "heartbeatTimeoutSecs": 10,
            "electionTimeoutMillis": 10000,
            "catchUpTimeoutMillis": -1,
            "catchUpTakeoverDelayMillis": 30000,
            "getLastErrorModes": {},
            "getLastErrorDefaults": { "w": 1, "wtimeout": 0 },
            "replicaSetId": replica_set_id(&shared.config.replset),
        },
    }
}

/// A stable id for the set: the first 12 bytes of the CRC-32C of its name, repeated.
fn replica_set_id(name: &str) -> ObjectId {
    let crc = crc32c::crc32c(name.as_bytes()).to_be_bytes();
    let mut bytes = [0u8; 12];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = crc[i % 4];
    }
    ObjectId::from_bytes(bytes)
}

pub(super) fn get_config(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["commitmentStatus", "includeNewlyAdded"])?;
    Ok(doc! { "config": config_document(shared), "ok": 1.0 }.into())
}

/// An optime and the wall-clock date of its seconds.
fn optime(shared: &Shared) -> (Document, DateTime) {
    let ts = shared.engine.last_commit().to_bson();
    let date = DateTime::from_millis(i64::from(ts.time) * 1000);
    (doc! { "ts": ts, "t": 1i64 }, date)
}

pub(super) fn get_status(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["initialSync"])?;
    let (op, op_date) = optime(shared);
    let now = DateTime::now();
    let uptime = shared.started.elapsed().as_secs() as i64;
    let started = DateTime::from_millis(now.timestamp_millis() - uptime * 1000);
    let member = doc! {
        "_id": 0,
        "name": shared.advertised.as_str(),
        "health": 1.0,
        "state": 1,
        "stateStr": "PRIMARY",
        "uptime": uptime,
        "optime": op.clone(),
        "optimeDate": op_date,
        "optimeDurable": op.clone(),
        "optimeDurableDate": op_date,
        "lastAppliedWallTime": op_date,
        "lastDurableWallTime": op_date,
        // mongod reports heartbeats only for the other members; a one-member set has none, so
        // this is the member's own status time.
        "lastHeartbeat": now,
        "syncSourceHost": "",
        "syncSourceId": -1,
        "infoMessage": "",
        "electionTime": bson::Timestamp { time: (started.timestamp_millis() / 1000) as u32, increment: 1 },
        "electionDate": started,
        "configVersion": 1,
        "configTerm": 1i64,
        "self": true,
        "lastHeartbeatMessage": "",
    };
    let optimes = doc! {
        "lastCommittedOpTime": op.clone(),
        "lastCommittedWallTime": op_date,
        "readConcernMajorityOpTime": op.clone(),
        "appliedOpTime": op.clone(),
        "durableOpTime": op,
        "lastAppliedWallTime": op_date,
        "lastDurableWallTime": op_date,
    };
    Ok(doc! {
        "set": &shared.config.replset,
        "date": now,
        "myState": 1,
        "term": 1i64,
        "syncSourceHost": "",
        "syncSourceId": -1,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": 1,
        "writeMajorityCount": 1,
        "votingMembersCount": 1,
        "writableVotingMembersCount": 1,
        "optimes": optimes,
        "members": [member],
        "ok": 1.0,
    }
    .into())
}

/// The set exists from the first start: initiating it again is what mongod refuses (23).
pub(super) fn initiate(_shared: &Shared, _req: &Request<'_>) -> CommandResult<Reply> {
    Err(CommandError::new(
        code::ALREADY_INITIALIZED,
        "already initialized: Mangrove is a one-member replica set from its first start",
    ))
}

/// No member can take over from the only one; mongod answers a one-member set's step-down so.
pub(super) fn step_down(_shared: &Shared, _req: &Request<'_>) -> CommandResult<Reply> {
    Err(CommandError::new(
        code::EXCEEDED_TIME_LIMIT,
        "No electable secondaries caught up: Mangrove is a one-member replica set and stays primary; stop the server to take it out of service",
    ))
}

pub(super) fn get_default_rw_concern(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["inMemory"])?;
    let stored = stored_defaults(&shared.engine.snapshot())?;
    Ok(defaults_reply(stored.as_ref()).into())
}

/// `getDefaultRWConcern`'s reply: the stored defaults, or mongod 7.0's implicit ones
/// (`w: "majority"` and read concern `local`).
fn defaults_reply(stored: Option<&Document>) -> Document {
    let field = |name: &str| stored.and_then(|d| d.get_document(name).ok()).cloned();
    let (write, write_source) = match field("defaultWriteConcern") {
        Some(wc) => (wc, "global"),
        None => (doc! { "w": "majority", "wtimeout": 0 }, "implicit"),
    };
    let (read, read_source) = match field("defaultReadConcern") {
        Some(rc) => (rc, "global"),
        None => (doc! { "level": "local" }, "implicit"),
    };
    let mut reply = doc! {
        "defaultReadConcern": read,
        "defaultWriteConcern": write,
    };
    if let Some(d) = stored {
        for f in ["updateOpTime", "updateWallClockTime"] {
            if let Some(v) = d.get(f) {
                reply.insert(f, v.clone());
            }
        }
    }
    reply.insert("defaultReadConcernSource", read_source);
    reply.insert("defaultWriteConcernSource", write_source);
    reply.insert("localUpdateWallClockTime", DateTime::now());
    reply.insert("ok", 1.0);
    reply
}

fn stored_defaults(view: &dyn ReadView) -> CommandResult<Option<Document>> {
    let Some(coll) = view.collection(SETTINGS_NS) else {
        return Ok(None);
    };
    let key = key_of(RawBsonRef::String(DEFAULTS_ID));
    match view.get(&coll, &key)? {
        Some(raw) => Ok(Some(
            Document::try_from(raw.as_ref()).map_err(CommandError::internal)?,
        )),
        None => Ok(None),
    }
}

pub(super) async fn set_default_rw_concern(
    shared: &Shared,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    req.check_fields(&["defaultReadConcern", "defaultWriteConcern"])?;
    let read = req
        .opt_doc("defaultReadConcern")?
        .map(check_read_concern)
        .transpose()?;
    let write = req
        .opt_doc("defaultWriteConcern")?
        .map(check_write_concern)
        .transpose()?;
    if read.is_none() && write.is_none() {
        return Err(CommandError::bad_value(
            "At least one of the \"defaultReadConcern\" or \"defaultWriteConcern\" fields must be present",
        ));
    }
    let opts = WriteOptions::from_request(req)?;
    let stored = retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let mut doc = stored_defaults(txn)?.unwrap_or_else(|| doc! { "_id": DEFAULTS_ID });
        if let Some(rc) = &read {
            doc.insert("defaultReadConcern", rc.clone());
        }
        if let Some(wc) = &write {
            doc.insert("defaultWriteConcern", wc.clone());
        }
        doc.insert("updateOpTime", shared.engine.last_commit().to_bson());
        doc.insert("updateWallClockTime", DateTime::now());
        crate::auth::users::put(txn, SETTINGS_NS, &doc)?;
        Ok(doc)
    })
    .await?;
    Ok(opts.finish_reply(defaults_reply(Some(&stored))).into())
}

/// A default read concern: `local` or `available` (mongod refuses the others as defaults).
fn check_read_concern(rc: &bson::RawDocument) -> CommandResult<Document> {
    let rc = Document::try_from(rc).map_err(CommandError::internal)?;
    for (k, v) in &rc {
        match (k.as_str(), v) {
            ("level", Bson::String(l)) if matches!(l.as_str(), "local" | "available") => {}
            ("level", Bson::String(l)) => {
                return Err(CommandError::bad_value(format!(
                    "level: '{l}' is not allowed as a default read concern; use 'local' or 'available'"
                )));
            }
            _ => {
                return Err(CommandError::bad_value(format!(
                    "'{k}' is not allowed in a default read concern; give only 'level'"
                )));
            }
        }
    }
    Ok(rc)
}

/// A default write concern: `w` (a number of at most 1, "majority", no tag sets on a
/// one-member set), `j` and `wtimeout`; `w: 0` is refused as by mongod.
fn check_write_concern(wc: &bson::RawDocument) -> CommandResult<Document> {
    let wc = Document::try_from(wc).map_err(CommandError::internal)?;
    if wc.is_empty() {
        return Err(CommandError::bad_value(
            "the default write concern must not be empty; give w, j or wtimeout",
        ));
    }
    for (k, v) in &wc {
        let ok = match (k.as_str(), v) {
            ("w", Bson::String(s)) => s == "majority",
            ("w", Bson::Int32(1)) | ("w", Bson::Int64(1)) => true,
            ("w", Bson::Double(d)) => *d == 1.0,
            ("j", Bson::Boolean(_)) => true,
            ("wtimeout", Bson::Int32(n)) => *n >= 0,
            ("wtimeout", Bson::Int64(n)) => *n >= 0,
            ("wtimeout", Bson::Double(d)) => *d >= 0.0,
            _ => false,
        };
        if !ok {
            return Err(CommandError::new(
                code::BAD_VALUE,
                format!(
                    "'{k}: {v}' is not allowed in the default write concern of a one-member replica set; use w: 1 or \"majority\", j: true/false, wtimeout >= 0"
                ),
            ));
        }
    }
    Ok(wc)
}
