//! `aggregate` with `$changeStream` first (on a collection, on a database with
//! `aggregate: 1`, or on the cluster with `allChangesForCluster`), and the `getMore`s of its
//! cursor, which wait for new commits as mongod's awaitData cursors do.
//!
//! Invariants:
//! - The cursor of a change stream lives until an invalidate is returned, the client kills it,
//!   or it idles past the cursor timeout; its reply always carries `postBatchResumeToken`.
//! - A `getMore` waits at most its `maxTimeMS` (the driver's `maxAwaitTimeMS`; 1 s without
//!   one) and never holds a lock while waiting (the cursor is out of the cursor table).

use std::time::Instant;

use bson::RawDocumentBuf;
use bson::raw::{RawArrayBuf, RawBsonRef};
use mangrove_query::Pipeline;
use mangrove_storage::Txn;

use crate::Shared;
use crate::changes::{Batch, HistoryCursor, spec};
use crate::cursor::{Cursor, Source};
use crate::error::{CommandError, CommandResult, RETRIABLE_CODES, code};
use crate::request::Request;

use super::Reply;
use super::args::cursor_batch_size;
use super::names::validate_db_name;
use super::reply::{DEFAULT_FIRST_BATCH, cursor_reply_with_token};
use crate::reply::Segmented;

/// Stages allowed after `$changeStream`: the ones that look at one event at a time.
const ALLOWED_STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
];

/// Codes after which drivers may resume a change stream (mongod labels them
/// ResumableChangeStreamError): the retriable ones and the routing ones.
const RESUMABLE_CODES: [i32; 5] = [63, 133, 150, 234, 13388];

/// Whether the request's pipeline is a change stream: `$changeStream` first. Anywhere else it
/// is refused (40602).
pub(super) fn is_change_stream(req: &Request<'_>) -> CommandResult<bool> {
    let Some(stages) = req.opt_array("pipeline")? else {
        return Ok(false);
    };
    let mut first = true;
    let mut found = false;
    for stage in stages.into_iter().flatten() {
        let named = matches!(stage, RawBsonRef::Document(d) if d.get("$changeStream").ok().flatten().is_some());
        if named && !first {
            return Err(CommandError::new(
                code::CHANGE_STREAM_NOT_FIRST,
                "$changeStream is only valid as the first stage in a pipeline.",
            ));
        }
        found |= named;
        first = false;
    }
    Ok(found)
}

/// The pipeline's `$changeStream` (which must come first) and the stages after it.
fn stream_pipeline(
    req: &Request<'_>,
    coll: Option<&str>,
) -> CommandResult<(spec::StreamSpec, RawArrayBuf)> {
    let mut rest = RawArrayBuf::new();
    let mut stream_spec = None;
    for stage in req.opt_array("pipeline")?.into_iter().flatten() {
        let stage = stage.map_err(|e| CommandError::bad_value(e.to_string()))?;
        match (stream_spec.is_none(), stage) {
            (true, RawBsonRef::Document(d)) => {
                let value = d.get("$changeStream").ok().flatten().ok_or_else(|| {
                    CommandError::new(code::CHANGE_STREAM_NOT_FIRST, "$changeStream must be first")
                })?;
                stream_spec = Some(spec::parse(value, req.db, coll)?);
            }
            (_, stage) => rest.push(stage),
        }
    }
    match stream_spec {
        Some(spec) => Ok((spec, rest)),
        None => Err(CommandError::new(
            code::CHANGE_STREAM_NOT_FIRST,
            "$changeStream is only valid as the first stage in a pipeline.",
        )),
    }
}

/// Opens a change stream and answers with its first batch (what is already durable past the
/// start; it does not wait).
pub(super) async fn open(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
) -> CommandResult<Reply> {
    req.check_fields(&[
        "pipeline",
        "cursor",
        "maxTimeMS",
        "collation",
        "readConcern",
        "allowDiskUse",
    ])?;
    if txn.is_some() || req.session.has_autocommit() {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            "$changeStream cannot run in a multi-document transaction; open it outside the transaction",
        ));
    }
    validate_db_name(req.db)?;
    check_read_concern(req)?;
    let coll = match req.command_value() {
        Some(RawBsonRef::String(c)) => Some(c),
        _ => None,
    };
    let (stream_spec, rest) = stream_pipeline(req, coll)?;
    let (rest, split) = split_stage(rest)?;
    let stages = following_stages(&rest)?;
    let batch_size = cursor_batch_size(req)?.unwrap_or(DEFAULT_FIRST_BATCH);
    let board = shared.change_batches.clone();
    let mut stream =
        HistoryCursor::change_stream(&shared.engine, board, stream_spec, stages, split).await?;
    stream.count_as_open(shared.metrics.watching());
    let batch = stream.next_batch(&shared.engine, batch_size, None).await?;
    shared.metrics.change_events_sent(&batch);
    let ns = match coll {
        Some(c) => req.ns(c),
        None => format!("{}.$cmd.aggregate", req.db),
    };
    let ended = batch.ended;
    let id = if ended {
        0
    } else {
        shared.cursors.insert(Cursor {
            ns: ns.clone(),
            source: Source::History(Box::new(stream)),
            projection: None,
            remaining: None,
            last_used: Instant::now(),
            txn: None,
            time_left: None,
        })?
    };
    Ok(batch_reply(&ns, id, "firstBatch", &batch))
}

/// A change stream reads majority-committed (here: durable) history; other levels are refused,
/// as mongod refuses them.
fn check_read_concern(req: &Request<'_>) -> CommandResult<()> {
    let level = match req.opt_doc("readConcern")? {
        Some(rc) => match rc.get("level").ok().flatten() {
            Some(RawBsonRef::String(level)) => Some(level),
            _ => None,
        },
        None => None,
    };
    match level {
        None | Some("majority") => Ok(()),
        Some(level) => Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!(
                "$changeStream is only supported with readConcern level 'majority' (or none), not '{level}': it shows only durable commits"
            ),
        )),
    }
}

/// Takes `$changeStreamSplitLargeEvent` off the end of the stages; it may only be last and
/// takes no options, as in mongod.
fn split_stage(rest: RawArrayBuf) -> CommandResult<(RawArrayBuf, bool)> {
    let stages: Vec<_> = rest.into_iter().flatten().collect();
    let is_split = |s: &RawBsonRef<'_>| matches!(s, RawBsonRef::Document(d) if d.get("$changeStreamSplitLargeEvent").ok().flatten().is_some());
    let Some(at) = stages.iter().position(is_split) else {
        return Ok((rest, false));
    };
    if at + 1 != stages.len() {
        return Err(CommandError::new(
            7182802,
            "$changeStreamSplitLargeEvent must be the last stage in the pipeline",
        ));
    }
    if let RawBsonRef::Document(d) = stages[at]
        && !matches!(d.get("$changeStreamSplitLargeEvent").ok().flatten(), Some(RawBsonRef::Document(o)) if o.is_empty())
    {
        return Err(CommandError::bad_value(
            "$changeStreamSplitLargeEvent takes an empty document: {$changeStreamSplitLargeEvent: {}}",
        ));
    }
    let mut kept = RawArrayBuf::new();
    for stage in &stages[..at] {
        kept.push(*stage);
    }
    Ok((kept, true))
}

/// The stages after `$changeStream`, parsed by the query crate (which refuses unknown stages
/// with 40324) and limited to those that look at one event at a time.
fn following_stages(rest: &RawArrayBuf) -> CommandResult<Option<Pipeline>> {
    if rest.is_empty() {
        return Ok(None);
    }
    let pipeline = Pipeline::parse(rest)?;
    for stage in rest.into_iter().flatten() {
        if let RawBsonRef::Document(d) = stage
            && let Some(Ok((name, _))) = d.iter().next()
            && !ALLOWED_STAGES.contains(&name.as_str())
        {
            return Err(CommandError::new(
                code::ILLEGAL_OPERATION,
                format!(
                    "{name} is not permitted in a $changeStream pipeline; only {} are",
                    ALLOWED_STAGES.join(", ")
                ),
            ));
        }
    }
    Ok(Some(pipeline))
}

/// A `getMore` on a change stream's cursor (already taken from the cursor table): waits for
/// events until `maxTimeMS`, then answers, keeping the cursor unless the stream ended or failed.
pub(super) async fn get_more(
    shared: &Shared,
    req: &Request<'_>,
    id: i64,
    mut cursor: Cursor,
    batch_size: Option<u64>,
) -> CommandResult<Reply> {
    let wait = super::args::await_time(req)?;
    let Source::History(stream) = &mut cursor.source else {
        return Err(CommandError::new(
            code::INTERNAL_ERROR,
            "not a history cursor",
        ));
    };
    let until = stream.awaits().then(|| Instant::now() + wait);
    let mut want = batch_size.unwrap_or(u64::MAX);
    if let Some(remaining) = cursor.remaining {
        want = want.min(remaining);
    }
    // A failed getMore kills the cursor, as in mongod: the driver resumes with a new one. So
    // does killCursors meanwhile (ending the wait; the stream's state no longer matters), and
    // killOp of this getMore.
    let killed = shared.cursors.kill_signal(id);
    let counted = stream.is_counted();
    let next = tokio::select! {
        next = stream.next_batch(&shared.engine, want, until) => next,
        _ = crate::cursor::until_killed(killed.as_deref()) => Err(crate::cursor::killed_error(id)),
        _ = crate::op_stats::until_killed() => Err(crate::access::interrupted()),
    };
    let mut batch = match next {
        Ok(batch) => batch,
        Err(e) => {
            shared.cursors.give_up(id);
            return Err(e);
        }
    };
    if counted {
        shared.metrics.change_events_sent(&batch);
    }
    if let Some(remaining) = &mut cursor.remaining {
        *remaining -= batch.count() as u64;
        batch.ended |= *remaining == 0;
    }
    let ns = cursor.ns.clone();
    let reply_id = if batch.ended {
        shared.cursors.give_up(id);
        0
    } else {
        cursor.last_used = Instant::now();
        shared.cursors.put_back(id, cursor);
        id
    };
    Ok(batch_reply(&ns, reply_id, "nextBatch", &batch))
}

/// Labels an error a change stream's `getMore` failed with, as mongod does, so drivers know
/// whether to resume.
pub(super) fn label_error(e: &mut CommandError) {
    if RETRIABLE_CODES.contains(&e.code)
        || RESUMABLE_CODES.contains(&e.code)
        || e.code == code::CURSOR_NOT_FOUND
    {
        e.labels.push("ResumableChangeStreamError");
    }
}

/// `{cursor: {firstBatch|nextBatch, postBatchResumeToken, id, ns}, ok: 1}`, written straight
/// into one buffer: a busy stream answers many `getMore`s, and the general builder copies each
/// event three times (into the array, the cursor, the reply) and formats every array index.
pub(super) fn reply(ns: &str, id: i64, field: &str, batch: &Batch) -> RawDocumentBuf {
    let (out, _) = write_reply(ns, id, field, batch, true);
    // Well-formed by construction; the general builder is the fallback should that ever fail
    // (a namespace with a NUL cannot reach here: names are validated).
    RawDocumentBuf::from_bytes(out).unwrap_or_else(|_| {
        let token = Some(batch.post_batch_token.to_raw());
        cursor_reply_with_token(ns, id, field, &batch.documents(), token)
    })
}

/// [`reply`], as a [`Reply`]: a batch shared with other streams stays where it is, and the
/// reply is written around it (`Reply::Segmented`), so ten streams sending one batch do not
/// copy it ten times.
pub(super) fn batch_reply(ns: &str, id: i64, field: &str, batch: &Batch) -> Reply {
    let Some(shared) = &batch.shared else {
        return Reply::Raw(reply(ns, id, field, batch));
    };
    let (mut head, split) = write_reply(ns, id, field, batch, false);
    let tail = head.split_off(split);
    Reply::Segmented(Segmented::new(head, shared.clone(), tail))
}

/// The reply's bytes, with the batch's elements in place, or (a shared batch, not
/// `in_place`) without them but with every length counting them; and where they go.
fn write_reply(ns: &str, id: i64, field: &str, batch: &Batch, in_place: bool) -> (Vec<u8>, usize) {
    let missing = match (&batch.shared, in_place) {
        (Some(shared), false) => shared.elements.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(batch.elements_len() + ns.len() + 256);
    let reply = open_doc(&mut out);
    let cursor = open_element(&mut out, 0x03, "cursor");
    let array = open_element(&mut out, 0x04, field);
    if missing == 0 {
        batch.write_elements(&mut out);
    }
    let split = out.len();
    close_doc(&mut out, array, missing);
    out.push(0x03);
    out.extend_from_slice(b"postBatchResumeToken\0");
    out.extend_from_slice(batch.post_batch_token.to_raw().as_bytes());
    out.push(0x12);
    out.extend_from_slice(b"id\0");
    out.extend_from_slice(&id.to_le_bytes());
    out.push(0x02);
    out.extend_from_slice(b"ns\0");
    out.extend_from_slice(&(ns.len() as i32 + 1).to_le_bytes());
    out.extend_from_slice(ns.as_bytes());
    out.push(0);
    close_doc(&mut out, cursor, missing);
    out.push(0x01);
    out.extend_from_slice(b"ok\0");
    out.extend_from_slice(&1.0f64.to_le_bytes());
    close_doc(&mut out, reply, missing);
    (out, split)
}

/// Starts a document: its length is filled in by [`close_doc`] at the returned offset.
fn open_doc(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

/// Starts an embedded document or array element named `key`.
fn open_element(out: &mut Vec<u8>, kind: u8, key: &str) -> usize {
    out.push(kind);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    open_doc(out)
}

/// Ends the document started at `at`, whose length also counts `missing` bytes written
/// elsewhere (a shared batch's elements).
fn close_doc(out: &mut Vec<u8>, at: usize, missing: usize) {
    out.push(0);
    let len = (out.len() - at + missing) as i32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchDoc;
    use crate::changes::board::{ShapeKey, SharedBatch};
    use crate::changes::token::ResumeToken;
    use bson::{cstr, rawdoc};
    use mangrove_storage::Timestamp;

    fn any_spec() -> spec::StreamSpec {
        spec::parse(RawBsonRef::Document(&rawdoc! {}), "db", Some("c")).expect("parses")
    }

    #[test]
    fn hand_built_reply_matches_the_general_builder() {
        for n in [0usize, 1, 12] {
            let docs = (0..n)
                .map(|i| BatchDoc::Owned(rawdoc! {"i": i as i64, "s": "x".repeat(i)}))
                .collect();
            let batch = Batch {
                docs,
                shared: None,
                taken: false,
                post_batch_token: ResumeToken::high_water_mark(Timestamp(7 << 32 | 3)),
                ended: false,
            };
            let mut elements = Vec::new();
            batch.write_elements(&mut elements);
            let shared = Batch {
                docs: Vec::new(),
                shared: Some(std::sync::Arc::new(SharedBatch {
                    key: ShapeKey::of(&any_spec()).expect("not expanded"),
                    after: Timestamp(1),
                    end: Timestamp(2),
                    count: n,
                    last_token: None,
                    elements,
                })),
                taken: true,
                post_batch_token: batch.post_batch_token,
                ended: false,
            };
            assert_eq!(shared.documents().len(), n, "a shared batch's documents");
            for field in ["firstBatch", "nextBatch"] {
                let token = Some(batch.post_batch_token.to_raw());
                let general = cursor_reply_with_token("db.c", 42, field, &batch.docs, token);
                let fast = reply("db.c", 42, field, &batch);
                assert_eq!(fast.as_bytes(), general.as_bytes(), "{n} docs, {field}");
                let from_shared = reply("db.c", 42, field, &shared);
                assert_eq!(
                    from_shared.as_bytes(),
                    general.as_bytes(),
                    "shared, {n} docs"
                );
                // Around the shared elements, not copying them, and still one document once
                // the connection appends its fields.
                let Reply::Segmented(mut segmented) = batch_reply("db.c", 42, field, &shared)
                else {
                    panic!("a shared batch's reply is segmented");
                };
                assert_eq!(segmented.to_raw().as_bytes(), general.as_bytes());
                let fields = rawdoc! {"operationTime": bson::Timestamp {time: 1, increment: 2}};
                segmented.append(&fields);
                let mut expected = general.clone();
                expected.append(
                    cstr!("operationTime"),
                    bson::Timestamp {
                        time: 1,
                        increment: 2,
                    },
                );
                assert_eq!(segmented.to_raw().as_bytes(), expected.as_bytes());
                assert!(matches!(
                    batch_reply("db.c", 42, field, &batch),
                    Reply::Raw(_)
                ));
            }
        }
    }
}
