//! The `$changeStream` stage's options and what a stream watches, checked as mongod checks
//! them: unknown fields, wrong types, conflicting resume options and forbidden namespaces are
//! refused before any cursor exists.

use bson::raw::{RawBsonRef, RawDocument};
use mangrove_storage::Timestamp;

use super::token::{ResumeToken, TokenKind};
use crate::error::{CommandError, CommandResult, code};
use crate::request::type_name;

/// What a stream sees: one collection, every collection of a database, or every user
/// collection (`allChangesForCluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Collection { db: String, coll: String },
    Database { db: String },
    Cluster,
}

impl Scope {
    /// Whether writes to `ns` are this stream's. System collections and the internal
    /// databases are never watched implicitly, as in mongod.
    pub fn covers(&self, ns: &str) -> bool {
        let Some((db, coll)) = ns.split_once('.') else {
            return false;
        };
        match self {
            Scope::Collection { db: d, coll: c } => d == db && c == coll,
            Scope::Database { db: d } => d == db && !coll.starts_with("system."),
            Scope::Cluster => {
                !matches!(db, "admin" | "config" | "local") && !coll.starts_with("system.")
            }
        }
    }

    pub fn covers_db(&self, db: &str) -> bool {
        match self {
            Scope::Collection { db: d, .. } | Scope::Database { db: d } => d == db,
            Scope::Cluster => !matches!(db, "admin" | "config" | "local"),
        }
    }
}

/// `fullDocument`: what update events carry as the document after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullDocument {
    /// Only inserts and replaces carry it.
    Default,
    /// The document as this update left it (mongod looks the document up when the event is
    /// read, which can show a later version or nothing; the log has the version itself).
    UpdateLookup,
    /// As `UpdateLookup`, when the collection keeps images (`changeStreamPreAndPostImages`);
    /// else `null` (`WhenAvailable`) or an error (`Required`).
    WhenAvailable,
    Required,
}

/// `fullDocumentBeforeChange`: the document before an update, replace or delete, which the
/// log holds only for collections with `changeStreamPreAndPostImages` enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeChange {
    Off,
    WhenAvailable,
    Required,
}

/// Where the stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// After the newest commit when the stream opens.
    Now,
    /// After the event (or high-water mark) a token names; the event must still be in history.
    ResumeAfter(ResumeToken),
    /// As `ResumeAfter`, but also after an invalidate: the new stream starts past it.
    StartAfter(ResumeToken),
    /// At the first commit at or after this time.
    AtOperationTime(Timestamp),
}

#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub scope: Scope,
    pub full_document: FullDocument,
    pub before_change: BeforeChange,
    pub show_expanded: bool,
    pub start: Start,
}

const FIELDS: &[&str] = &[
    "resumeAfter",
    "startAfter",
    "startAtOperationTime",
    "fullDocument",
    "fullDocumentBeforeChange",
    "allChangesForCluster",
    "showExpandedEvents",
    "showMigrationEvents",
    "showSystemEvents",
    "allowToRunOnConfigDB",
    "allowToRunOnSystemNS",
];

/// Reads `{$changeStream: {...}}` for an aggregate on `db` and `coll` (`None` for
/// `aggregate: 1`).
pub fn parse(stage: RawBsonRef<'_>, db: &str, coll: Option<&str>) -> CommandResult<StreamSpec> {
    let RawBsonRef::Document(opts) = stage else {
        return Err(CommandError::new(
            50808,
            "$changeStream stage expects a document as argument",
        ));
    };
    for elem in opts.iter() {
        let (key, _) = elem.map_err(|e| CommandError::bad_value(e.to_string()))?;
        if !FIELDS.contains(&key.as_str()) {
            return Err(CommandError::new(
                code::UNKNOWN_FIELD,
                format!("BSON field '$changeStream.{key}' is an unknown field."),
            ));
        }
    }
    let cluster = opt_bool(opts, "allChangesForCluster")?.unwrap_or(false);
    Ok(StreamSpec {
        scope: scope(db, coll, cluster)?,
        full_document: full_document(opts)?,
        before_change: before_change(opts)?,
        show_expanded: opt_bool(opts, "showExpandedEvents")?.unwrap_or(false),
        start: start(opts)?,
    })
}

fn scope(db: &str, coll: Option<&str>, cluster: bool) -> CommandResult<Scope> {
    let invalid = |msg: String| CommandError::new(code::INVALID_NAMESPACE, msg);
    if cluster {
        if db != "admin" || coll.is_some() {
            return Err(invalid(
                "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database, and with no collection name".into(),
            ));
        }
        return Ok(Scope::Cluster);
    }
    if matches!(db, "admin" | "config" | "local") {
        return Err(invalid(format!(
            "$changeStream may not be opened on the internal {db} database; watch a user database, or the whole deployment with allChangesForCluster on 'admin'"
        )));
    }
    match coll {
        Some(c) if c.starts_with("system.") => Err(invalid(format!(
            "$changeStream may not be opened on the internal {db}.{c} collection"
        ))),
        Some(c) => Ok(Scope::Collection {
            db: db.to_string(),
            coll: c.to_string(),
        }),
        None => Ok(Scope::Database { db: db.to_string() }),
    }
}

fn full_document(opts: &RawDocument) -> CommandResult<FullDocument> {
    Ok(match opt_str(opts, "fullDocument")? {
        None | Some("default") => FullDocument::Default,
        Some("updateLookup") => FullDocument::UpdateLookup,
        Some("whenAvailable") => FullDocument::WhenAvailable,
        Some("required") => FullDocument::Required,
        Some(other) => return Err(bad_enum("fullDocument", other)),
    })
}

fn before_change(opts: &RawDocument) -> CommandResult<BeforeChange> {
    Ok(match opt_str(opts, "fullDocumentBeforeChange")? {
        None | Some("off") => BeforeChange::Off,
        Some("whenAvailable") => BeforeChange::WhenAvailable,
        Some("required") => BeforeChange::Required,
        Some(other) => return Err(bad_enum("fullDocumentBeforeChange", other)),
    })
}

fn bad_enum(field: &str, value: &str) -> CommandError {
    CommandError::bad_value(format!(
        "Enumeration value '{value}' for field '$changeStream.{field}' is not a valid value."
    ))
}

fn start(opts: &RawDocument) -> CommandResult<Start> {
    let token = |field: &str| -> CommandResult<Option<ResumeToken>> {
        match opts.get(field) {
            Ok(Some(v)) => ResumeToken::parse(v, field).map(Some),
            _ => Ok(None),
        }
    };
    let resume_after = token("resumeAfter")?;
    let start_after = token("startAfter")?;
    let at = match opts.get("startAtOperationTime") {
        Ok(Some(RawBsonRef::Timestamp(ts))) => Some(Timestamp::from_bson(ts)),
        Ok(Some(v)) => {
            return Err(wrong_type(
                "startAtOperationTime",
                v.element_type(),
                "timestamp",
            ));
        }
        _ => None,
    };
    match (resume_after, start_after, at) {
        (Some(_), Some(_), _) => Err(CommandError::new(
            code::BOTH_RESUME_AFTER_AND_START_AFTER,
            "Do not specify both 'resumeAfter' and 'startAfter' in a $changeStream stage",
        )),
        (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => Err(CommandError::new(
            code::MULTIPLE_RESUME_OPTIONS,
            "Only one type of resume option is allowed, but multiple were found.",
        )),
        (Some(t), None, None) if t.kind == TokenKind::Invalidate => Err(CommandError::new(
            code::INVALID_RESUME_TOKEN,
            "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification; use 'startAfter' to start a new stream after it",
        )),
        (Some(t), None, None) => Ok(Start::ResumeAfter(t)),
        (None, Some(t), None) => Ok(Start::StartAfter(t)),
        (None, None, Some(ts)) => Ok(Start::AtOperationTime(ts)),
        (None, None, None) => Ok(Start::Now),
    }
}

fn opt_bool(opts: &RawDocument, field: &str) -> CommandResult<Option<bool>> {
    match opts.get(field) {
        Ok(Some(RawBsonRef::Boolean(b))) => Ok(Some(b)),
        Ok(Some(v)) => Err(wrong_type(field, v.element_type(), "bool")),
        _ => Ok(None),
    }
}

fn opt_str<'a>(opts: &'a RawDocument, field: &str) -> CommandResult<Option<&'a str>> {
    match opts.get(field) {
        Ok(Some(RawBsonRef::String(s))) => Ok(Some(s)),
        Ok(Some(v)) => Err(wrong_type(field, v.element_type(), "string")),
        _ => Ok(None),
    }
}

fn wrong_type(field: &str, got: bson::spec::ElementType, expected: &str) -> CommandError {
    CommandError::type_mismatch(format!(
        "BSON field '$changeStream.{field}' is the wrong type '{}', expected type '{expected}'",
        type_name(got)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{RawDocumentBuf, doc};

    fn parse_doc(d: bson::Document, db: &str, coll: Option<&str>) -> CommandResult<StreamSpec> {
        let raw = RawDocumentBuf::try_from(&d).unwrap();
        parse(RawBsonRef::Document(&raw), db, coll)
    }

    #[test]
    fn options_are_checked_as_mongod_checks_them() {
        let err = |d, db, coll| parse_doc(d, db, coll).unwrap_err().code;
        assert_eq!(err(doc! {"foo": 1}, "d", Some("c")), code::UNKNOWN_FIELD);
        assert_eq!(err(doc! {"fullDocument": 1}, "d", Some("c")), code::TYPE_MISMATCH);
        assert_eq!(err(doc! {"fullDocument": "x"}, "d", Some("c")), code::BAD_VALUE);
        assert_eq!(err(doc! {}, "admin", Some("c")), code::INVALID_NAMESPACE);
        assert_eq!(err(doc! {}, "d", Some("system.views")), code::INVALID_NAMESPACE);
        assert_eq!(
            err(doc! {"allChangesForCluster": true}, "d", None),
            code::INVALID_NAMESPACE
        );
        let token = ResumeToken::event(Timestamp(1), 0).to_document();
        assert_eq!(
            err(
                doc! {"resumeAfter": token.clone(), "startAfter": token.clone()},
                "d",
                None
            ),
            code::BOTH_RESUME_AFTER_AND_START_AFTER
        );
        assert_eq!(
            err(
                doc! {"resumeAfter": token, "startAtOperationTime": bson::Timestamp{time: 1, increment: 1}},
                "d",
                None
            ),
            code::MULTIPLE_RESUME_OPTIONS
        );
        let spec = parse_doc(doc! {"allChangesForCluster": true}, "admin", None).unwrap();
        assert_eq!(spec.scope, Scope::Cluster);
        assert!(spec.scope.covers("a.b") && !spec.scope.covers("local.oplog.rs"));
    }
}
