//! Authentication commands: `saslStart`, `saslContinue` (SCRAM-SHA-1 and SCRAM-SHA-256, with
//! `skipEmptyExchange`), `hello`'s `speculativeAuthenticate` and `saslSupportedMechs`,
//! `logout`, `connectionStatus`.
//!
//! Invariants:
//! - A connection has at most one conversation; a new `saslStart` replaces it.
//! - Every failure of a conversation is AuthenticationFailed with mongod's one message, and
//!   ends the conversation; the reason (unknown user, wrong proof, ...) goes to the log with
//!   the client's address and the user name, never a password or proof.
//! - Failed attempts slow down further attempts from the same address ([`Throttle`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::raw::{RawBsonRef, RawDocument};
use bson::spec::BinarySubtype;
use bson::{Binary, Document, doc};

use crate::Shared;
use crate::auth::scram::{Conversation, Mechanism, ScramError, parse_client_first};
use crate::auth::{Identity, Pending, users};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use std::net::SocketAddr;

use super::Reply;

/// The connection a conversation belongs to: its authentication state and address.
pub(super) struct Peer<'a> {
    pub identity: &'a mut Identity,
    pub addr: SocketAddr,
    /// The verified TLS client certificate's subject, if any.
    pub x509_subject: Option<&'a str>,
}

/// The one conversation id a connection uses (mongod numbers them per connection too).
const CONVERSATION_ID: i32 = 1;

fn payload(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

fn auth_failed() -> CommandError {
    CommandError::new(code::AUTHENTICATION_FAILED, "Authentication failed.")
}

/// The `payload` field: BinData, or a string (some drivers send base64 text).
fn payload_of(d: &RawDocument) -> CommandResult<Vec<u8>> {
    match d.get("payload").ok().flatten() {
        Some(RawBsonRef::Binary(b)) => Ok(b.bytes.to_vec()),
        Some(RawBsonRef::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(_) => Err(CommandError::type_mismatch(
            "BSON field 'payload' is the wrong type, expected binData or string",
        )),
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'payload' is missing but a required field",
        )),
    }
}

fn skip_empty_exchange(d: &RawDocument) -> bool {
    matches!(
        d.get_document("options")
            .ok()
            .and_then(|o| o.get("skipEmptyExchange").ok().flatten()),
        Some(RawBsonRef::Boolean(true))
    )
}

/// `saslStart` on `db` (the user's database): the server's first message.
pub(super) async fn sasl_start(
    shared: &Shared,
    client: Peer<'_>,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    let reply = start(shared, client, req.body, req.db).await?;
    Ok(reply.into())
}

async fn start(
    shared: &Shared,
    mut client: Peer<'_>,
    body: &RawDocument,
    db: &str,
) -> CommandResult<Document> {
    let name = body.get_str("mechanism").map_err(|_| {
        CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'saslStart.mechanism' is missing but a required field",
        )
    })?;
    let Some(mechanism) = Mechanism::from_name(name) else {
        return Err(CommandError::new(
            code::MECHANISM_UNAVAILABLE,
            format!("Received authentication for mechanism {name} which is unknown or not enabled"),
        ));
    };
    let bytes = payload_of(body)?;
    client.identity.pending = None;
    THROTTLE.wait(client.addr.ip()).await;
    let first = match parse_client_first(&bytes) {
        Ok(first) => first,
        Err(e) => return Err(failed(&mut client, db, "?", mechanism, &e)),
    };
    let user = users::find(&shared.engine.snapshot(), db, &first.user)?;
    let Some(credential) = user.as_ref().and_then(|u| u.credential(mechanism)) else {
        let name = first.user.clone();
        return Err(failed(
            &mut client,
            db,
            &name,
            mechanism,
            &ScramError::UnknownUser,
        ));
    };
    let (conversation, server_first) = Conversation::start(mechanism, first, credential);
    client.identity.pending = Some(Pending {
        conversation,
        db: db.to_string(),
        conversation_id: CONVERSATION_ID,
        skip_empty_exchange: skip_empty_exchange(body),
        verified: false,
    });
    Ok(doc! {
        "conversationId": CONVERSATION_ID,
        "done": false,
        "payload": payload(server_first),
        "ok": 1.0,
    })
}

/// Logs a failed attempt, counts it against the address, and gives the client the one error.
fn failed(
    client: &mut Peer<'_>,
    db: &str,
    user: &str,
    m: Mechanism,
    why: &ScramError,
) -> CommandError {
    client.identity.pending = None;
    THROTTLE.failed(client.addr.ip());
    tracing::warn!(
        client = %client.addr,
        user,
        db,
        mechanism = m.name(),
        reason = %why,
        "authentication failed"
    );
    auth_failed()
}

/// `saslContinue`: the client's proof (then, without `skipEmptyExchange`, its empty last
/// message).
pub(super) fn sasl_continue(
    shared: &Shared,
    mut client: Peer<'_>,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    let id = match req.get("conversationId") {
        Some(v) => crate::request::as_i64(v),
        None => None,
    };
    let bytes = payload_of(req.body)?;
    let Some(pending) = client.identity.pending.take() else {
        return Err(CommandError::new(
            code::PROTOCOL_ERROR,
            "No SASL session state found",
        ));
    };
    if id != Some(i64::from(pending.conversation_id)) {
        return Err(CommandError::new(
            code::PROTOCOL_ERROR,
            "sasl: Mismatched conversation id",
        ));
    }
    if pending.verified {
        return Ok(done(Vec::new(), pending.conversation_id).into());
    }
    let m = pending.conversation.mechanism;
    let user_name = pending.conversation.user.clone();
    let server_final = match pending.conversation.finish(&bytes) {
        Ok(v) => v,
        Err(e) => return Err(failed(&mut client, &pending.db, &user_name, m, &e)),
    };
    // The user may have been dropped meanwhile.
    let Some(user) = users::find(&shared.engine.snapshot(), &pending.db, &user_name)? else {
        return Err(failed(
            &mut client,
            &pending.db,
            &user_name,
            m,
            &ScramError::UnknownUser,
        ));
    };
    client.identity.authenticate(shared, &user)?;
    THROTTLE.succeeded(client.addr.ip());
    tracing::info!(client = %client.addr, user = %user_name, db = %pending.db, mechanism = m.name(), "authenticated");
    if pending.skip_empty_exchange {
        return Ok(done(server_final, pending.conversation_id).into());
    }
    let id = pending.conversation_id;
    client.identity.pending = Some(Pending {
        verified: true,
        ..pending
    });
    Ok(
        doc! { "conversationId": id, "done": false, "payload": payload(server_final), "ok": 1.0 }
            .into(),
    )
}

fn done(bytes: Vec<u8>, id: i32) -> Document {
    doc! { "conversationId": id, "done": true, "payload": payload(bytes), "ok": 1.0 }
}

/// `authenticate` with MONGODB-X509 on `$external`: the user the verified client certificate
/// names (a `user` given must be that name).
pub(super) fn authenticate_x509(
    shared: &Shared,
    mut client: Peer<'_>,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    Ok(x509(shared, &mut client, req.body, req.db)?.into())
}

fn x509(
    shared: &Shared,
    client: &mut Peer<'_>,
    body: &RawDocument,
    db: &str,
) -> CommandResult<Document> {
    let mechanism = body.get_str("mechanism").unwrap_or("");
    if mechanism != "MONGODB-X509" {
        return Err(CommandError::new(
            code::MECHANISM_UNAVAILABLE,
            format!("Unsupported mechanism for authenticate: '{mechanism}'; SCRAM uses saslStart"),
        ));
    }
    if db != "$external" {
        return Err(CommandError::new(
            code::PROTOCOL_ERROR,
            "X.509 authentication must always use the $external database.",
        ));
    }
    let Some(subject) = client.x509_subject else {
        return Err(CommandError::new(
            code::AUTHENTICATION_FAILED,
            "No verified subject name available from client",
        ));
    };
    let fail = |why: &str| {
        tracing::warn!(client = %client.addr, user = subject, mechanism, reason = why, "authentication failed");
        auth_failed()
    };
    if let Ok(given) = body.get_str("user")
        && given != subject
    {
        return Err(fail("the user given is not the certificate's subject"));
    }
    let Some(user) = users::find(&shared.engine.snapshot(), "$external", subject)? else {
        return Err(fail("no such user on $external"));
    };
    client.identity.authenticate(shared, &user)?;
    tracing::info!(client = %client.addr, user = subject, mechanism, "authenticated");
    Ok(doc! { "dbname": "$external", "user": subject, "ok": 1.0 })
}

/// `hello`'s `speculativeAuthenticate`: the `saslStart` it carries, answered in the handshake
/// (`None` when it fails: the driver then authenticates the usual way, and sees the error).
pub(super) async fn speculative(
    shared: &Shared,
    client: Peer<'_>,
    req: &Request<'_>,
) -> Option<Document> {
    let RawBsonRef::Document(body) = req.get("speculativeAuthenticate")? else {
        return None;
    };
    let db = body.get_str("db").ok()?.to_string();
    let mut client = client;
    if body.get_str("mechanism").is_ok_and(|m| m == "MONGODB-X509") {
        let mut reply = x509(shared, &mut client, body, &db).ok()?;
        reply.remove("ok");
        return Some(reply);
    }
    let mut reply = start(shared, client, body, &db).await.ok()?;
    reply.remove("ok");
    Some(reply)
}

/// `hello`'s `saslSupportedMechs: "<db>.<user>"`: the user's mechanisms, if the user exists.
pub(super) fn supported_mechs(shared: &Shared, req: &Request<'_>) -> Option<Vec<String>> {
    let RawBsonRef::String(name) = req.get("saslSupportedMechs")? else {
        return None;
    };
    let (db, user) = name.split_once('.')?;
    let user = users::find(&shared.engine.snapshot(), db, user).ok()??;
    Some(user.mechanisms())
}

/// `logout`: the connection is no longer authenticated.
pub(super) fn logout(identity: &mut Identity) -> CommandResult<Reply> {
    identity.logout();
    Ok(doc! { "ok": 1.0 }.into())
}

/// Failed attempts per address, to slow down guessing: after a few, each attempt waits
/// longer (up to [`MAX_DELAY`]); a success or [`FORGET_AFTER`] without failures resets it.
struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const FREE_FAILURES: u32 = 3;
const MAX_DELAY: Duration = Duration::from_secs(5);
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most: beyond, the oldest are forgotten.
const MAX_ADDRESSES: usize = 10_000;

static THROTTLE: std::sync::LazyLock<Throttle> = std::sync::LazyLock::new(|| Throttle {
    failures: Mutex::new(HashMap::new()),
});

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn delay(&self, ip: IpAddr) -> Duration {
        match self.lock().get(&ip) {
            Some(&(n, at)) if n > FREE_FAILURES && at.elapsed() < FORGET_AFTER => {
                let steps = (n - FREE_FAILURES).min(6);
                (Duration::from_millis(100) * 2u32.pow(steps)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    async fn wait(&self, ip: IpAddr) {
        let delay = self.delay(ip);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn failed(&self, ip: IpAddr) {
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}
