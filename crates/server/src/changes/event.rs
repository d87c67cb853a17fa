//! Change events: what one committed transaction (one log record) shows a stream.
//!
//! Invariants:
//! - An event's index is a function of the record alone (`2 × op position`, `+ 1` for the
//!   invalidate an op causes), so its resume token is the same in every stream.
//! - A record's events come in the order of its ops: the order in which the transaction first
//!   wrote each document (the log keeps one op per document, the transaction's net effect).
//! - A record that implements a command the log annotates (`renameCollection`,
//!   `dropDatabase`, `collMod`, `convertToCapped`) shows that command, not the writes that
//!   carried it out: a rename's copies and drop are one `rename` event, a `convertToCapped`
//!   shows only the documents it removed (and, expanded, a `modify`).
//! - Documents are copied from the record as raw BSON, never parsed.

use bson::raw::{CStr, RawBsonRef, RawDocument, cstr};
use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::RawWriter;
use mangrove_storage::StoredDoc;
use mangrove_storage::txlog::{LogOp, LogRecord};

use super::spec::{BeforeChange, FullDocument, Scope, StreamSpec};
use super::token::{ResumeToken, TokenKind};
use crate::error::{CommandError, CommandResult, code};

/// One change event for a stream. The document is shared: streams that watch the same way
/// share one record's events (`stream.rs`), and a batch sends it without a copy.
#[derive(Clone, Debug)]
pub struct Event {
    pub token: ResumeToken,
    pub doc: StoredDoc,
}

impl Event {
    pub fn invalidates(&self) -> bool {
        self.token.kind == TokenKind::Invalidate
    }
}

/// The command a record implements, if the log annotated one.
enum Annotation<'r> {
    Rename {
        from: &'r str,
        to: String,
        drop_target: bool,
        at: usize,
    },
    DropDatabase,
    /// The documents of the collection were rekeyed and the oldest that no longer fit removed.
    ConvertToCapped,
    Other,
}

fn annotation(record: &LogRecord) -> Option<Annotation<'_>> {
    record.ops.iter().enumerate().find_map(|(at, op)| match op {
        LogOp::Command { ns, o } => Some(match o.keys().next().map(String::as_str) {
            Some("renameCollection") => Annotation::Rename {
                from: ns,
                to: o.get_str("to").unwrap_or_default().to_string(),
                drop_target: o.get_bool("dropTarget").unwrap_or(false),
                at,
            },
            Some("dropDatabase") => Annotation::DropDatabase,
            Some("convertToCapped") => Annotation::ConvertToCapped,
            _ => Annotation::Other,
        }),
        _ => None,
    })
}

/// A collection's UUID by namespace, as of the record being shaped.
pub type Uuids<'a> = &'a std::collections::HashMap<String, bson::Uuid>;

/// The events `record` shows a stream with `spec`, in order.
pub fn record_events(
    record: &LogRecord,
    spec: &StreamSpec,
    uuids: Uuids<'_>,
) -> CommandResult<Vec<Event>> {
    let shaper = Shaper {
        record,
        spec,
        uuids,
        session: session_fields(record),
    };
    let mut out = Vec::new();
    if let Some(Annotation::Rename {
        from,
        to,
        drop_target,
        at,
    }) = annotation(record)
    {
        shaper.rename(at, from, &to, drop_target, &mut out);
        return Ok(out);
    }
    if let Some(Annotation::ConvertToCapped) = annotation(record) {
        shaper.convert_to_capped(&mut out)?;
        return Ok(out);
    }
    for (at, op) in record.ops.iter().enumerate() {
        shaper.op(at, op, &mut out)?;
        if out.last().is_some_and(Event::invalidates) {
            break;
        }
    }
    Ok(out)
}

struct Shaper<'a> {
    record: &'a LogRecord,
    spec: &'a StreamSpec,
    uuids: Uuids<'a>,
    /// A transaction's `lsid` (encoded once for all its events) and `txnNumber`.
    session: Option<(RawDocumentBuf, i64)>,
}

/// The session fields of a multi-document transaction's events; none for other records.
fn session_fields(record: &LogRecord) -> Option<(RawDocumentBuf, i64)> {
    let meta = &record.meta;
    match (meta.in_transaction, &meta.lsid, meta.txn_number) {
        (true, Some(lsid), Some(n)) => Some((raw(lsid), n)),
        _ => None,
    }
}

/// Room for an event's fixed fields (`_id` token, `operationType`, times, `ns`, `documentKey`,
/// `updateDescription`'s keys, session fields) before its documents: an event is written into
/// one allocation instead of growing through a dozen.
const EVENT_HEAD_BYTES: usize = 384;

impl Shaper<'_> {
    fn op(&self, at: usize, op: &LogOp, out: &mut Vec<Event>) -> CommandResult<()> {
        let expanded = self.spec.show_expanded;
        match op {
            LogOp::Insert { ns, doc, .. } if self.spec.scope.covers(ns) => {
                let mut e = self.head_sized(at, "insert", Some(ns), doc.as_bytes().len());
                e.document(cstr!("fullDocument"), doc);
                append_key(&mut e, doc);
                out.push(self.finish(at, e));
            }
            LogOp::Update {
                ns, doc, diff, pre, ..
            } if self.spec.scope.covers(ns) => {
                out.push(self.update(at, ns, doc, diff.as_ref(), pre.as_ref())?);
            }
            LogOp::Delete { ns, id, pre, .. } if self.spec.scope.covers(ns) => {
                let mut e = self.head(at, "delete", Some(ns));
                e.begin(cstr!("documentKey"));
                if let Ok(id) = bson::RawBson::try_from(id.clone()) {
                    e.value(cstr!("_id"), id.as_raw_bson_ref());
                }
                e.end();
                self.before_change(&mut e, pre.as_ref())?;
                out.push(self.finish(at, e));
            }
            LogOp::DropCollection { ns } if self.spec.scope.covers(ns) => {
                out.push(self.finish(at, self.head(at, "drop", Some(ns))));
                if matches!(self.spec.scope, Scope::Collection { .. }) {
                    out.push(self.invalidate(at));
                }
            }
            LogOp::CreateCollection { ns, options } if expanded && self.spec.scope.covers(ns) => {
                out.push(self.create(at, ns, options));
            }
            // A capped collection's own `_id_` index comes with its `create` (mongod shows
            // none).
            LogOp::CreateIndex { spec, .. } if spec.get_str("name").is_ok_and(|n| n == "_id_") => {}
            LogOp::CreateIndex { ns, spec } if expanded && self.spec.scope.covers(ns) => {
                let mut e = self.head(at, "createIndexes", Some(ns));
                e.document(
                    cstr!("operationDescription"),
                    &raw(&doc! {"indexes": [spec.clone()]}),
                );
                out.push(self.finish(at, e));
            }
            LogOp::DropIndex { ns, name } if expanded && self.spec.scope.covers(ns) => {
                let mut e = self.head(at, "dropIndexes", Some(ns));
                e.document(
                    cstr!("operationDescription"),
                    &raw(&doc! {"indexes": [{"name": name.as_str()}]}),
                );
                out.push(self.finish(at, e));
            }
            LogOp::Command { ns, o } => self.command(at, ns, o, out),
            _ => {}
        }
        Ok(())
    }

    fn update(
        &self,
        at: usize,
        ns: &str,
        post: &StoredDoc,
        diff: Option<&StoredDoc>,
        pre: Option<&StoredDoc>,
    ) -> CommandResult<Event> {
        let images = pre.is_some();
        let documents = [Some(post), diff, pre]
            .iter()
            .flatten()
            .map(|d| d.as_bytes().len())
            .sum::<usize>();
        let mut e = self.head_sized(
            at,
            if diff.is_some() { "update" } else { "replace" },
            Some(ns),
            documents,
        );
        let full = match (diff, self.spec.full_document) {
            (None, _) | (_, FullDocument::UpdateLookup) => Some(post),
            (_, FullDocument::Default) => None,
            (_, FullDocument::WhenAvailable | FullDocument::Required) if images => Some(post),
            (_, FullDocument::Required) => {
                return Err(CommandError::new(
                    code::NO_MATCHING_DOCUMENT,
                    format!(
                        "Change stream was configured to require a post-image for all update, delete and replace events, but the post-image was not found for an event on {ns}: enable changeStreamPreAndPostImages on the collection (collMod), or use fullDocument 'whenAvailable'"
                    ),
                ));
            }
            (_, FullDocument::WhenAvailable) => {
                e.null(cstr!("fullDocument"));
                None
            }
        };
        if let Some(full) = full {
            e.document(cstr!("fullDocument"), full);
        }
        append_key(&mut e, post);
        if let Some(diff) = diff {
            self.description(&mut e, diff);
        }
        self.before_change(&mut e, pre)?;
        Ok(self.finish(at, e))
    }

    /// mongod's `updateDescription`: the log's (`diff`), whose `disambiguatedPaths` is there
    /// only when some path needs it; an expanded event always has it, any other never.
    fn description(&self, e: &mut RawWriter, diff: &StoredDoc) {
        let disambiguated = diff
            .iter_elements()
            .any(|el| el.is_ok_and(|el| el.key().as_str() == "disambiguatedPaths"));
        if disambiguated == self.spec.show_expanded {
            // The common case, copied whole.
            e.document(cstr!("updateDescription"), diff);
            return;
        }
        e.begin(cstr!("updateDescription"));
        for key in ["updatedFields", "removedFields", "truncatedArrays"] {
            e.element_of(diff, key);
        }
        if self.spec.show_expanded {
            e.document(cstr!("disambiguatedPaths"), &RawDocumentBuf::new());
        }
        e.end();
    }

    fn before_change(&self, e: &mut RawWriter, pre: Option<&StoredDoc>) -> CommandResult<()> {
        match (self.spec.before_change, pre) {
            (BeforeChange::Off, _) => {}
            (_, Some(pre)) => e.document(cstr!("fullDocumentBeforeChange"), pre),
            (BeforeChange::WhenAvailable, None) => e.null(cstr!("fullDocumentBeforeChange")),
            (BeforeChange::Required, None) => {
                return Err(CommandError::new(
                    code::NO_MATCHING_DOCUMENT,
                    "Change stream was configured to require a pre-image for all update, delete and replace events, but the pre-image was not found: enable changeStreamPreAndPostImages on the collection (collMod), or use fullDocumentBeforeChange 'whenAvailable'",
                ));
            }
        }
        Ok(())
    }

    fn create(&self, at: usize, ns: &str, options: &Document) -> Event {
        let mut e = self.head(at, "create", Some(ns));
        let (kind, description) = if let Ok(view_on) = options.get_str("viewOn") {
            let pipeline = options.get_array("pipeline").cloned().unwrap_or_default();
            ("view", doc! {"viewOn": view_on, "pipeline": pipeline})
        } else {
            let mut d = options.clone();
            d.remove(mangrove_storage::UUID_OPTION);
            let collated = d.remove(crate::access::COLLATED_ID_OPTION).is_some();
            let mut id_index = doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"};
            // mongod's `_id` index carries the collection's default collation.
            if let (true, Ok(collation)) = (collated, d.get_document("collation")) {
                id_index.insert("collation", collation.clone());
            }
            d.insert("idIndex", id_index);
            ("collection", d)
        };
        e.document(cstr!("operationDescription"), &raw(&description));
        e.str(cstr!("nsType"), kind);
        self.finish(at, e)
    }

    fn command(&self, at: usize, ns: &str, o: &Document, out: &mut Vec<Event>) {
        let Some(name) = o.keys().next() else {
            return;
        };
        let db = ns.split_once('.').map_or(ns, |(db, _)| db);
        match name.as_str() {
            "dropDatabase" if self.spec.scope.covers_db(db) => {
                if matches!(self.spec.scope, Scope::Collection { .. }) {
                    return;
                }
                let mut e = self.head(at, "dropDatabase", None);
                e.begin(cstr!("ns"));
                e.str(cstr!("db"), db);
                e.end();
                out.push(self.finish(at, e));
                if matches!(self.spec.scope, Scope::Database { .. }) {
                    out.push(self.invalidate(at));
                }
            }
            "collMod" if self.spec.show_expanded && self.spec.scope.covers(ns) => {
                let mut e = self.head(at, "modify", Some(ns));
                let mut description = o.clone();
                description.remove("collMod");
                e.document(cstr!("operationDescription"), &raw(&description));
                out.push(self.finish(at, e));
            }
            _ => {}
        }
    }

    /// A `convertToCapped`: the documents it removed (deleted and not inserted again under
    /// their new keys), and with expanded events a `modify` of the collection's options. The
    /// rekeying of the others changes nothing a stream can see.
    fn convert_to_capped(&self, out: &mut Vec<Event>) -> CommandResult<()> {
        let id_bytes = |id: Option<bson::RawBson>| {
            let mut d = RawDocumentBuf::new();
            if let Some(id) = id {
                d.append(cstr!("_id"), id);
            }
            d.into_bytes()
        };
        let kept: std::collections::HashSet<Vec<u8>> = self
            .record
            .ops
            .iter()
            .filter_map(|op| match op {
                LogOp::Insert { doc, .. } => Some(id_bytes(
                    doc.get("_id").ok().flatten().map(bson::RawBson::from),
                )),
                _ => None,
            })
            .collect();
        for (at, op) in self.record.ops.iter().enumerate() {
            match op {
                LogOp::Delete { id, .. }
                    if !kept.contains(&id_bytes(bson::RawBson::try_from(id.clone()).ok())) =>
                {
                    self.op(at, op, out)?;
                }
                LogOp::Command { ns, o }
                    if self.spec.show_expanded && self.spec.scope.covers(ns) =>
                {
                    let mut e = self.head(at, "modify", Some(ns));
                    let mut description = o.clone();
                    description.remove("convertToCapped");
                    description.insert("capped", true);
                    e.document(cstr!("operationDescription"), &raw(&description));
                    out.push(self.finish(at, e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn rename(&self, at: usize, from: &str, to: &str, drop_target: bool, out: &mut Vec<Event>) {
        if !self.spec.scope.covers(from) {
            return;
        }
        let mut e = self.head(at, "rename", Some(from));
        write_ns(&mut e, cstr!("to"), to);
        if self.spec.show_expanded {
            e.document(
                cstr!("operationDescription"),
                &raw(&doc! {"to": ns_doc(to), "dropTarget": drop_target}),
            );
        }
        out.push(self.finish(at, e));
        if matches!(self.spec.scope, Scope::Collection { .. }) {
            out.push(self.invalidate(at));
        }
    }

    fn invalidate(&self, at: usize) -> Event {
        let token = ResumeToken {
            kind: TokenKind::Invalidate,
            ts: self.record.ts,
            index: index_of(at) + 1,
            fragment: 0,
        };
        let mut e = RawWriter::with_capacity(EVENT_HEAD_BYTES);
        self.times(&mut e, token, "invalidate");
        Event {
            token,
            doc: StoredDoc::new(e.finish()),
        }
    }

    /// `_id`, `operationType`, `clusterTime` and `wallTime`.
    fn times(&self, e: &mut RawWriter, token: ResumeToken, kind: &str) {
        token.write(e, cstr!("_id"));
        e.str(cstr!("operationType"), kind);
        e.timestamp(cstr!("clusterTime"), self.record.ts.to_bson());
        e.datetime(cstr!("wallTime"), self.record.wall_ms);
    }

    /// `_id`, `operationType`, `clusterTime`, `wallTime` and `ns` (when given).
    fn head(&self, at: usize, kind: &str, ns: Option<&str>) -> RawWriter {
        self.head_sized(at, kind, ns, 0)
    }

    /// [`Shaper::head`] of an event that will also carry `documents` bytes of documents.
    fn head_sized(&self, at: usize, kind: &str, ns: Option<&str>, documents: usize) -> RawWriter {
        let mut e = RawWriter::with_capacity(EVENT_HEAD_BYTES + documents);
        self.times(
            &mut e,
            ResumeToken::event(self.record.ts, index_of(at)),
            kind,
        );
        if let Some(ns) = ns {
            // mongod adds the collection's UUID to expanded events.
            if self.spec.show_expanded
                && let Some(&uuid) = self.uuids.get(ns)
            {
                e.value(
                    cstr!("collectionUUID"),
                    bson::Binary::from(uuid).as_raw_binary(),
                );
            }
            write_ns(&mut e, cstr!("ns"), ns);
        }
        e
    }

    /// Adds a transaction's session fields and wraps the event.
    fn finish(&self, at: usize, mut e: RawWriter) -> Event {
        if let Some((lsid, n)) = &self.session {
            e.document(cstr!("lsid"), lsid);
            e.i64(cstr!("txnNumber"), *n);
        }
        Event {
            token: ResumeToken::event(self.record.ts, index_of(at)),
            doc: StoredDoc::new(e.finish()),
        }
    }
}

fn index_of(at: usize) -> u32 {
    u32::try_from(at * 2).unwrap_or(u32::MAX - 1)
}

/// `{db, coll}` under `key` (every event has one).
fn write_ns(e: &mut RawWriter, key: &CStr, ns: &str) {
    e.begin(key);
    match ns.split_once('.') {
        Some((db, coll)) => {
            e.str(cstr!("db"), db);
            e.str(cstr!("coll"), coll);
        }
        None => e.str(cstr!("db"), ns),
    }
    e.end();
}

fn ns_doc(ns: &str) -> Document {
    match ns.split_once('.') {
        Some((db, coll)) => doc! {"db": db, "coll": coll},
        None => doc! {"db": ns},
    }
}

fn append_key(e: &mut RawWriter, doc: &StoredDoc) {
    e.begin(cstr!("documentKey"));
    e.element_of(doc, "_id");
    e.end();
}

fn raw(d: &Document) -> RawDocumentBuf {
    // A document built here from values that came out of BSON always encodes.
    RawDocumentBuf::try_from(d).unwrap_or_default()
}

/// The largest event a batch may carry: a BSON document's limit.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// `$changeStreamSplitLargeEvent`: an event over [`MAX_EVENT_BYTES`] as fragments of its
/// top-level fields, in order, each with its own resume token and `splitEvent: {fragment, of}`,
/// as mongod splits them. A single field too large for a fragment cannot be split (10334).
pub fn split_event(
    token: ResumeToken,
    event: &RawDocument,
) -> CommandResult<Vec<(ResumeToken, RawDocumentBuf)>> {
    // Room for `_id` and `splitEvent` in every fragment.
    const OVERHEAD: usize = 256;
    let mut groups: Vec<Vec<(&str, RawBsonRef<'_>)>> = vec![Vec::new()];
    let mut size = 0usize;
    for (key, value) in event.iter().flatten() {
        if key.as_str() == "_id" {
            continue;
        }
        let len = field_len(key.as_str(), value);
        if len + OVERHEAD > MAX_EVENT_BYTES {
            return Err(too_large(format!(
                "a change event's field '{key}' alone is {len} bytes, over the {MAX_EVENT_BYTES}-byte limit of a fragment: project it out (e.g. $project or fullDocument 'default')"
            )));
        }
        if size + len + OVERHEAD > MAX_EVENT_BYTES && groups.last().is_some_and(|g| !g.is_empty()) {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(g) = groups.last_mut() {
            g.push((key.as_str(), value));
        }
    }
    let of = groups.len() as u32;
    let mut out = Vec::with_capacity(groups.len());
    for (i, fields) in groups.into_iter().enumerate() {
        let fragment = ResumeToken {
            fragment: i as u32 + 1,
            ..token
        };
        let mut d = RawDocumentBuf::new();
        d.append(cstr!("_id"), fragment.to_raw());
        for (key, value) in fields {
            d.append(key_cstr(key), value);
        }
        d.append(
            cstr!("splitEvent"),
            raw(&doc! {"fragment": fragment.fragment as i32, "of": of as i32}),
        );
        out.push((fragment, d));
    }
    Ok(out)
}

/// A field's encoded size: type byte, key, NUL, value.
fn field_len(key: &str, value: RawBsonRef<'_>) -> usize {
    let mut one = RawDocumentBuf::new();
    one.append(key_cstr(key), value);
    one.as_bytes().len() - 5
}

fn key_cstr(key: &str) -> &bson::raw::CStr {
    // Keys read from a BSON document hold no NUL.
    <&bson::raw::CStr>::try_from(key).unwrap_or(cstr!("_"))
}

/// BSONObjectTooLarge (10334), for an event that cannot be returned whole.
pub fn too_large(message: String) -> CommandError {
    CommandError::new(code::BSON_OBJECT_TOO_LARGE, message)
}

/// Whether a pipeline's output kept the event's `_id` (its resume token) unchanged: mongod
/// refuses to go on otherwise, since the stream could no longer be resumed from it.
pub fn kept_token(output: &RawDocument, event: &Event) -> bool {
    let token = event.doc.get("_id").ok().flatten();
    let kept = output.get("_id").ok().flatten();
    match (token, kept) {
        (Some(RawBsonRef::Document(a)), Some(RawBsonRef::Document(b))) => {
            a.as_bytes() == b.as_bytes()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;
    use mangrove_storage::txlog::CommitMeta;
    use std::sync::Arc;

    /// A transaction's update and insert, shaped for a database stream: mongod 7.0's fields, in
    /// its order, the session fields on each event, and one token per op position.
    #[test]
    fn a_transactions_events_carry_mongods_fields_in_order() {
        let lsid = doc! {"id": bson::Binary {subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16]}};
        let record = LogRecord {
            ts: mangrove_storage::Timestamp(7 << 32 | 3),
            wall_ms: 1_700_000_000_000,
            meta: CommitMeta {
                lsid: Some(lsid.clone()),
                txn_number: Some(42),
                in_transaction: true,
            },
            ops: vec![
                LogOp::Update {
                    ns: "bank.accounts".into(),
                    key: vec![1],
                    doc: Arc::new(rawdoc! {"_id": 1, "balance": 95}),
                    diff: Some(Arc::new(
                        rawdoc! {"updatedFields": {"balance": 95}, "removedFields": [], "truncatedArrays": []},
                    )),
                    pre: None,
                },
                LogOp::Insert {
                    ns: "bank.transfers".into(),
                    key: vec![2],
                    doc: Arc::new(rawdoc! {"_id": 2, "amount": 5}),
                },
            ],
        };
        let stage = RawDocumentBuf::new();
        let spec = super::super::spec::parse(RawBsonRef::Document(&stage), "bank", None).unwrap();
        let events = record_events(&record, &spec, &Default::default()).unwrap();
        assert_eq!(events.len(), 2);
        let fields = |e: &Event| -> Vec<String> {
            e.doc
                .iter()
                .map(|f| f.unwrap().0.as_str().to_string())
                .collect()
        };
        let update = Document::try_from(events[0].doc.as_ref() as &RawDocument).unwrap();
        assert_eq!(
            fields(&events[0]),
            [
                "_id",
                "operationType",
                "clusterTime",
                "wallTime",
                "ns",
                "documentKey",
                "updateDescription",
                "lsid",
                "txnNumber"
            ]
        );
        assert_eq!(update.get_str("operationType").unwrap(), "update");
        assert_eq!(
            update.get_document("ns").unwrap(),
            &doc! {"db": "bank", "coll": "accounts"}
        );
        assert_eq!(
            update.get_document("documentKey").unwrap(),
            &doc! {"_id": 1}
        );
        assert_eq!(
            update.get_document("updateDescription").unwrap(),
            &doc! {"updatedFields": {"balance": 95}, "removedFields": [], "truncatedArrays": []}
        );
        assert_eq!(update.get_document("lsid").unwrap(), &lsid);
        assert_eq!(update.get_i64("txnNumber").unwrap(), 42);
        assert_eq!(
            update.get_timestamp("clusterTime").unwrap(),
            bson::Timestamp {
                time: 7,
                increment: 3
            }
        );
        let insert = Document::try_from(events[1].doc.as_ref() as &RawDocument).unwrap();
        assert_eq!(
            fields(&events[1]),
            [
                "_id",
                "operationType",
                "clusterTime",
                "wallTime",
                "ns",
                "fullDocument",
                "documentKey",
                "lsid",
                "txnNumber"
            ]
        );
        assert_eq!(
            insert.get_document("fullDocument").unwrap(),
            &doc! {"_id": 2, "amount": 5}
        );
        assert_eq!(events[0].token, ResumeToken::event(record.ts, 0));
        assert_eq!(events[1].token, ResumeToken::event(record.ts, 2));
        assert_eq!(
            update.get_document("_id").unwrap(),
            &Document::try_from(ResumeToken::event(record.ts, 0).to_raw()).unwrap()
        );
    }
}
