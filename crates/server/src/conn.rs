//! One client connection: read a frame, decode it, run the command, write the reply.
//!
//! The connection depends on the commands, never the other way: commands see the connection
//! only as its [`Client`] (what the handshake learned), and hand back a [`Reply`] that is
//! decorated and framed here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bson::raw::RawDocument;
use bson::{RawBsonRef, RawDocumentBuf};
use mangrove_wire::{self as wire, Header, Message, Request as WireRequest, msg_flags};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use crate::admission::{self, Close};
use crate::commands::{self, Client};
use crate::error::{CommandError, code};
use crate::legacy::{self, LegacyError};
use crate::reply::{self, Reply, Segmented};
use crate::request::Request;
use crate::tls::Stream;
use crate::{Counters, Shared};

/// Per-connection state: what commands may read or change of it, and the reply ids.
struct ConnState {
    client: Client,
    next_reply_id: i32,
}

pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: i64,
) {
    let span = info_span!("conn", id, %peer);
    async move {
        Counters::bump(&shared.counters.connections_current, 1);
        Counters::bump(&shared.counters.connections_total, 1);
        debug!("connection accepted");
        let outcome = run(&shared, stream, peer, id).await;
        shared
            .counters
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => debug!("connection closed by client"),
            Err(Close::Error(reason)) => warn!(%peer, %reason, "closing connection"),
            Err(Close::Timeout { phase, limit, flag }) => warn!(
                %peer,
                reason = "timeout",
                phase,
                timeout_secs = limit.as_secs_f64(),
                "closing connection: {:.1} s {phase}; raise {flag} if legitimate clients are this slow",
                limit.as_secs_f64()
            ),
        }
    }
    .instrument(span)
    .await
}

/// Returns Ok on a clean close by the client, Err with the reason the server gave up otherwise.
async fn run(shared: &Shared, stream: TcpStream, peer: SocketAddr, id: i64) -> Result<(), Close> {
    // The TLS handshake, if any, is part of the client's first message's time.
    let accepted = tokio::time::timeout(shared.config.handshake_timeout, shared.tls.accept(stream));
    match accepted.await {
        Ok(Ok(Stream::Plain(s))) => serve_stream(shared, s, peer, id, None).await,
        Ok(Ok(Stream::Tls(s))) => {
            let subject = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| crate::auth::x509::subject_dn(cert));
            serve_stream(shared, *s, peer, id, subject).await
        }
        Ok(Err(reason)) => Err(Close::Error(reason)),
        Err(_) => Err(Close::Timeout {
            phase: "without completing the TLS handshake",
            limit: shared.config.handshake_timeout,
            flag: "--handshake-timeout-secs",
        }),
    }
}

/// Serves one connection's messages over its (plaintext or TLS) byte stream.
async fn serve_stream(
    shared: &Shared,
    stream: impl AsyncRead + AsyncWrite + Send + Unpin,
    peer: SocketAddr,
    id: i64,
    x509_subject: Option<String>,
) -> Result<(), Close> {
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(admission::READ_BUFFER, read_half);
    let mut writer = BufWriter::new(write_half);
    let mut client = Client::new(id, peer);
    client.x509_subject = x509_subject;
    let mut conn = ConnState {
        client,
        next_reply_id: 1,
    };
    let mut first = true;
    loop {
        let Some(frame) = admission::read_frame(shared, &mut reader, first).await? else {
            return Ok(());
        };
        first = false;
        // The header's 16 bytes were read too.
        Counters::bump(&shared.counters.bytes_in, frame.bytes.len() as u64 + 16);
        Counters::bump(&shared.counters.requests, 1);
        let Some(bytes) = answer(shared, &mut conn, &frame.header, &frame.bytes).await? else {
            continue;
        };
        Counters::bump(&shared.counters.bytes_out, bytes.len() as u64);
        // A client that stops reading its replies is as stuck as one that stops sending.
        let write = async {
            bytes.write_to(&mut writer).await?;
            writer.flush().await
        };
        match tokio::time::timeout(shared.config.message_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Close::Error(format!("write failed: {e}"))),
            Err(_) => {
                return Err(Close::Timeout {
                    phase: "with a reply the client did not read",
                    limit: shared.config.message_timeout,
                    flag: "--message-timeout-secs",
                });
            }
        }
    }
}

/// A reply document ready to frame: whole, or around bytes shared with other replies.
enum Body {
    Whole(RawDocumentBuf),
    Segmented(Segmented),
}

impl Body {
    /// Its bytes, in order.
    fn parts(&self) -> [&[u8]; 3] {
        match self {
            Body::Whole(doc) => [doc.as_bytes(), &[], &[]],
            Body::Segmented(segmented) => segmented.parts(),
        }
    }

    /// The document in one buffer (a legacy or compressed reply needs one).
    fn into_whole(self) -> RawDocumentBuf {
        match self {
            Body::Whole(doc) => doc,
            Body::Segmented(segmented) => segmented.to_raw(),
        }
    }
}

/// A reply ready to write: a whole frame, or an OP_MSG's frame and body, written vectored
/// without copying the body into the frame (see `wire::MsgFrame`).
enum Outgoing {
    Bytes(Vec<u8>),
    Msg { frame: wire::MsgFrame, body: Body },
}

impl Outgoing {
    fn msg(reply_id: i32, request_id: i32, flags: u32, body: Body) -> Outgoing {
        let frame = wire::MsgFrame::new(reply_id, request_id, flags, &body.parts());
        Outgoing::Msg { frame, body }
    }

    fn len(&self) -> usize {
        match self {
            Outgoing::Bytes(bytes) => bytes.len(),
            Outgoing::Msg { frame, body } => {
                let body: usize = body.parts().iter().map(|p| p.len()).sum();
                frame.head.len() + body + frame.trailer().len()
            }
        }
    }

    async fn write_to<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> std::io::Result<()> {
        let (frame, body) = match self {
            Outgoing::Bytes(bytes) => return writer.write_all(bytes).await,
            Outgoing::Msg { frame, body } => (frame, body),
        };
        let [a, b, c] = body.parts();
        let mut slices = [&frame.head[..], a, b, c, frame.trailer()].map(std::io::IoSlice::new);
        let mut rest = &mut slices[..];
        while rest.iter().any(|s| !s.is_empty()) {
            let n = writer.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }
}

/// Decodes and runs one frame; the reply, if the request wants one.
async fn answer(
    shared: &Shared,
    conn: &mut ConnState,
    header: &Header,
    frame: &[u8],
) -> Result<Option<Outgoing>, String> {
    let e = match wire::decode(frame, &shared.limits) {
        Ok(message) => return handle(shared, conn, message).await,
        Err(e) if e.is_fatal() => return Err(e.to_string()),
        Err(e) => e,
    };
    warn!(error = %e, request_id = header.request_id, "rejecting malformed message");
    let (code, name) = e.code();
    let mut err = CommandError::new(code, e.to_string());
    err.code_name = name.to_string();
    let body = finish(shared, err.to_document());
    // A fire-and-forget request gets no reply, not even an error.
    if wire::peek_msg_flags(frame).is_some_and(|f| f & msg_flags::MORE_TO_COME != 0) {
        return Ok(None);
    }
    // Answer in the request's own opcode, looking inside OP_COMPRESSED.
    let op_code = wire::peek_op_code(frame).unwrap_or(header.op_code);
    let reply_id = conn.reply_id();
    Ok(Some(Outgoing::Bytes(
        if op_code == wire::opcode::OP_QUERY {
            wire::encode_reply(reply_id, header.request_id, legacy::REPLY_OK, &body, None)
        } else if wire::opcode::is_legacy(op_code) {
            // Old clients read only OP_REPLY: answer as a failed legacy query.
            let body = query_failure(shared, &err);
            let flags = legacy::REPLY_QUERY_FAILURE;
            wire::encode_reply(reply_id, header.request_id, flags, &body, None)
        } else {
            wire::encode_msg(reply_id, header.request_id, 0, &body, &[], None)
        },
    )))
}

impl ConnState {
    fn reply_id(&mut self) -> i32 {
        let id = self.next_reply_id;
        self.next_reply_id = self.next_reply_id.wrapping_add(1).max(1);
        id
    }
}

/// Adds what every reply carries and serializes it.
fn finish(shared: &Shared, reply: bson::Document) -> RawDocumentBuf {
    // No command puts `operationTime` or `$clusterTime` in its reply, so they are appended to
    // the raw reply, as to a reply built raw.
    debug_assert!(!reply.contains_key("operationTime") && !reply.contains_key("$clusterTime"));
    let mut raw = RawDocumentBuf::try_from(&reply).unwrap_or_else(|e| {
        // Only possible if a command built an invalid document (a key with a NUL byte).
        let fallback = CommandError::new(1, format!("internal error building reply: {e}"));
        RawDocumentBuf::try_from(&fallback.to_document()).unwrap_or_default()
    });
    reply::decorate_raw(shared, &mut raw);
    raw
}

/// The reply to send, if any; Err closes the connection (only test fail points ask for that).
async fn handle(
    shared: &Shared,
    conn: &mut ConnState,
    message: Message,
) -> Result<Option<Outgoing>, String> {
    let request_id = message.header.request_id;
    let compressor = message.compressor;
    match message.request {
        WireRequest::Query(q) => {
            let (flags, reply) = op_query(shared, conn, &q).await?;
            Ok(Some(Outgoing::Bytes(wire::encode_reply(
                conn.reply_id(),
                request_id,
                flags,
                &reply,
                compressor,
            ))))
        }
        WireRequest::Msg(msg) => {
            let reply = op_msg(shared, conn, &msg.body, &msg.sequences).await?;
            if msg.flags & msg_flags::MORE_TO_COME != 0 {
                return Ok(None);
            }
            let flags = msg.flags & msg_flags::CHECKSUM_PRESENT;
            let reply_id = conn.reply_id();
            Ok(Some(match compressor {
                Some(_) => Outgoing::Bytes(wire::encode_msg(
                    reply_id,
                    request_id,
                    flags,
                    &reply.into_whole(),
                    &[],
                    compressor,
                )),
                None => Outgoing::msg(reply_id, request_id, flags, reply),
            }))
        }
    }
}

/// A legacy OP_QUERY: a command on `<db>.$cmd`, upconverted as mongod 5.0 did and run like an
/// OP_MSG; the OP_REPLY's responseFlags and its one document.
async fn op_query(
    shared: &Shared,
    conn: &mut ConnState,
    q: &wire::OpQuery,
) -> Result<(i32, RawDocumentBuf), String> {
    let upconverted = legacy::upconvert(
        &q.full_collection_name,
        q.flags,
        q.number_to_return,
        &q.query,
    );
    let command = match upconverted {
        Ok(command) => command,
        Err(LegacyError::Command(e)) => {
            return Ok((legacy::REPLY_OK, finish(shared, e.to_document())));
        }
        Err(LegacyError::Query(e)) => {
            return Ok((legacy::REPLY_QUERY_FAILURE, query_failure(shared, &e)));
        }
    };
    // An empty query leaves `$db` first: mongod's "no such command" too.
    let name = first_key(&command.body).unwrap_or_default();
    let mut request = Request::new(name, &command.db, &command.body, &[]);
    request.owner = owner(shared, conn);
    let reply = run_command(shared, conn, &request).await?;
    Ok((legacy::REPLY_OK, reply.into_whole()))
}

/// A failed legacy query as mongod answered it: `$err` and `code` (with the command error's
/// fields too, for clients that read those).
fn query_failure(shared: &Shared, e: &CommandError) -> RawDocumentBuf {
    let mut doc = bson::doc! { "$err": e.message.clone(), "code": e.code };
    doc.extend(e.to_document());
    finish(shared, doc)
}

/// An OP_MSG: any command, in the database its `$db` names.
async fn op_msg(
    shared: &Shared,
    conn: &mut ConnState,
    body: &RawDocument,
    sequences: &[wire::DocumentSequence],
) -> Result<Body, String> {
    let missing_db = || {
        Body::Whole(finish(
            shared,
            CommandError::new(code::MISSING_DB, "OP_MSG requests require a $db argument")
                .to_document(),
        ))
    };
    let Some(name) = first_key(body) else {
        return Ok(missing_db());
    };
    // `$db` usually comes last: read it from the decoded fields, not by another walk of the
    // body.
    let mut request = Request::new(name, "", body, sequences);
    match request.get("$db") {
        Some(RawBsonRef::String(db)) => {
            request.db = db;
            request.owner = owner(shared, conn);
            run_command(shared, conn, &request).await
        }
        _ => Ok(missing_db()),
    }
}

/// The user a request runs as, under `--auth` (its sessions are its own).
fn owner(shared: &Shared, conn: &mut ConnState) -> Option<Arc<str>> {
    if !shared.config.auth {
        return None;
    }
    let user = conn.client.identity.current(shared).ok()??;
    Some(user.owner.clone())
}

async fn run_command(
    shared: &Shared,
    conn: &mut ConnState,
    request: &Request<'_>,
) -> Result<Body, String> {
    Counters::bump(&shared.counters.command, 1);
    let reply = commands::run(shared, &mut conn.client, request).await;
    if request.close_connection.load(Ordering::Relaxed) {
        return Err(format!(
            "a test fail point closes the connection after '{}'",
            request.name
        ));
    }
    Ok(match reply {
        Reply::Doc(doc) => Body::Whole(finish(shared, doc)),
        Reply::Raw(mut raw) => {
            reply::decorate_raw(shared, &mut raw);
            Body::Whole(raw)
        }
        Reply::Segmented(mut segmented) => {
            reply::decorate_segmented(shared, &mut segmented);
            Body::Segmented(segmented)
        }
    })
}

fn first_key(doc: &RawDocument) -> Option<&str> {
    doc.iter().next()?.ok().map(|(k, _)| k.as_str())
}
