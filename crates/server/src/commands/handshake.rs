//! `hello` and its legacy names: how drivers learn that this server is the writable primary of
//! a one-member replica set, and so allow sessions, retryable writes and transactions.
//!
//! The handshake sees the connection only as a [`Client`]: what it learns about the client and
//! what other commands read of it, not the connection's framing state.

use std::net::SocketAddr;

use bson::raw::RawBsonRef;
use bson::{DateTime, doc, oid::ObjectId};
use mangrove_wire::Compressor;

use crate::Shared;
use crate::error::CommandResult;
use crate::request::{Request, as_bool};

use super::Reply;

/// MongoDB 8.0's wire version (issue 15: `bulkWrite`); drivers enable every feature Mangrove
/// implements at this level.
pub const MAX_WIRE_VERSION: i32 = 25;
pub const MAX_WRITE_BATCH_SIZE: i32 = 100_000;

/// What commands know of the client on a connection: set by the handshake, read by
/// `whatsmyuri` and by fail points that match an application name.
pub(crate) struct Client {
    pub id: i64,
    pub peer: SocketAddr,
    /// Compressors agreed in the handshake, in the client's order of preference.
    pub compressors: Vec<Compressor>,
    /// `client.application.name` from the handshake, which fail points can match on.
    pub app_name: Option<std::sync::Arc<str>>,
    /// Who the connection authenticated as (`--auth`).
    pub identity: crate::auth::Identity,
    /// The subject of the verified TLS client certificate, if the client presented one: the
    /// user MONGODB-X509 authenticates as.
    pub x509_subject: Option<String>,
}

impl Client {
    pub fn new(id: i64, peer: SocketAddr) -> Client {
        Client {
            id,
            peer,
            compressors: Vec::new(),
            app_name: None,
            identity: crate::auth::Identity::default(),
            x509_subject: None,
        }
    }
}

/// What the handshake says of the client: compressors (kept in the client's order, those we
/// support) and the application name fail points can match on.
fn note_client(conn: &mut Client, req: &Request<'_>) {
    if let Some(RawBsonRef::Array(names)) = req.get("compression") {
        conn.compressors = names
            .into_iter()
            .filter_map(|n| match n {
                Ok(RawBsonRef::String(s)) => Compressor::from_name(s),
                _ => None,
            })
            .collect();
        conn.compressors.dedup();
    }
    if let Some(name) = declared_app_name(req) {
        conn.app_name = Some(name.into());
    }
}

/// The application name a handshake's client metadata declares (`client.application.name`).
pub(super) fn declared_app_name<'a>(req: &Request<'a>) -> Option<&'a str> {
    let Some(RawBsonRef::Document(client)) = req.get("client") else {
        return None;
    };
    match client.get("application") {
        Ok(Some(RawBsonRef::Document(app))) => match app.get("name") {
            Ok(Some(RawBsonRef::String(name))) => Some(name),
            _ => None,
        },
        _ => None,
    }
}

pub(super) async fn hello(
    shared: &Shared,
    conn: &mut Client,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    note_client(conn, req);
    let advertised = &shared.advertised;
    let ts = shared.engine.last_commit().to_bson();
    let now = DateTime::now();
    let mut reply = doc! {};
    if req.name == "hello" {
        reply.insert("isWritablePrimary", true);
    } else {
        reply.insert("ismaster", true);
    }
    if req.get("helloOk").and_then(as_bool).unwrap_or(false) {
        reply.insert("helloOk", true);
    }
    reply.extend(doc! {
        "hosts": [advertised.as_str()],
        "setName": &shared.config.replset,
        "setVersion": 1,
        "primary": advertised.as_str(),
        "me": advertised.as_str(),
        "secondary": false,
        // A constant election: there is only ever one primary, so drivers' stale-primary
        // checks (electionId, setVersion) always agree.
        "electionId": ObjectId::from_bytes([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1]),
        "lastWrite": {
            "opTime": { "ts": ts, "t": 1i64 },
            "lastWriteDate": now,
            "majorityOpTime": { "ts": ts, "t": 1i64 },
            "majorityWriteDate": now,
        },
        "maxBsonObjectSize": shared.config.max_bson_size as i32,
        "maxMessageSizeBytes": shared.config.max_message_size as i32,
        "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
        "localTime": now,
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": conn.id,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
    });
    if !conn.compressors.is_empty() {
        let names: Vec<&str> = conn.compressors.iter().map(|c| c.name()).collect();
        reply.insert("compression", names);
    }
    if let Some(mechanisms) = super::sasl::supported_mechs(shared, req) {
        reply.insert("saslSupportedMechs", mechanisms);
    }
    let peer = super::sasl::Peer {
        addr: conn.peer,
        identity: &mut conn.identity,
        x509_subject: conn.x509_subject.as_deref(),
    };
    if let Some(first) = super::sasl::speculative(shared, peer, req).await {
        reply.insert("speculativeAuthenticate", first);
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}
