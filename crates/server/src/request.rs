//! A decoded command: its name, database, body and document sequences, with typed accessors that
//! fail the way mongod's IDL parser does.
//!
//! The session fields (`lsid`, `txnNumber`, `autocommit`, `startTransaction`) are read once, when
//! the request is decoded, into [`SessionArgs`]; everything downstream (labels, the transaction
//! state machine, retryable writes, cursors, the log record's metadata) asks it, never the body.
//! A field of the wrong type is kept as its type, so only a command that needs the field fails,
//! with mongod's message, as when each reader parsed the field itself. (`stmtId` is accepted but
//! not read: Mangrove numbers a write's statements by their index in the batch.)

use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::spec::ElementType;
use mangrove_storage::CommitMeta;
use mangrove_wire::DocumentSequence;

use crate::error::{CommandError, CommandResult, code};

/// Arguments every command accepts (mongod's generic arguments): sessions, concerns, API
/// versioning and driver metadata. They never count as unknown fields.
const GENERIC_ARGS: &[&str] = &[
    "$db",
    "$readPreference",
    "$clusterTime",
    "$audit",
    "$client",
    "$configServerState",
    "$queryOptions",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "readConcern",
    "writeConcern",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "stmtId",
    "comment",
    "clientOperationKey",
    "mayBypassWriteConcern",
    "txnRetryCounter",
    "recoveryToken",
];

pub struct Request<'a> {
    /// The command name exactly as sent (the body's first key).
    pub name: &'a str,
    pub db: &'a str,
    pub body: &'a RawDocument,
    pub sequences: &'a [DocumentSequence],
    /// Set by a test fail point that wants the connection dropped once the command has run
    /// (the client then sees a network error, whatever the command did).
    pub close_connection: std::sync::atomic::AtomicBool,
    /// The body's top-level fields, decoded once: a command reads a dozen of them, and each
    /// lookup in the raw body would re-walk and re-validate every key before it (the top item
    /// of the transfer benchmark's profile).
    fields: Vec<(&'a str, RawBsonRef<'a>)>,
    /// Why decoding the body stopped early, if it did: fields after that point are absent.
    malformed: Option<String>,
    /// The session and transaction fields, parsed once.
    pub session: SessionArgs<'a>,
    /// Under `--auth`, the authenticated user (`user@db`) the request runs as: its sessions are
    /// that user's own (mongod's `uid` in a logical session id).
    pub owner: Option<std::sync::Arc<str>>,
}

/// A session field as the request carries it: absent, of the expected type, or of another type
/// (kept, so the command that needs the field reports it as mongod does).
#[derive(Clone, Copy)]
enum Field<T> {
    Absent,
    Valid(T),
    Wrong(ElementType),
}

impl<T: Copy> Field<T> {
    fn is_present(&self) -> bool {
        !matches!(self, Field::Absent)
    }

    /// The value, or a TypeMismatch naming `field` and the `expected` type.
    fn get(&self, field: &str, expected: &str) -> CommandResult<Option<T>> {
        match *self {
            Field::Absent => Ok(None),
            Field::Valid(v) => Ok(Some(v)),
            Field::Wrong(t) => Err(CommandError::type_mismatch(format!(
                "BSON field '{field}' is the wrong type '{}', expected type '{expected}'",
                type_name(t)
            ))),
        }
    }
}

/// The fields that tie a command to a logical session and a transaction number: `lsid`,
/// `txnNumber`, `autocommit` and `startTransaction`, each the first of its name in the body.
#[derive(Clone, Copy)]
pub struct SessionArgs<'a> {
    lsid: Field<&'a RawDocument>,
    /// Always a long, as mongod requires.
    txn_number: Field<i64>,
    /// Only a boolean (and only `false`) is accepted.
    autocommit: Field<bool>,
    /// `Some(true)` for `startTransaction: true`, `Some(false)` for any other value.
    start_transaction: Option<bool>,
}

/// The transaction fields of one statement of a multi-document transaction.
#[derive(Clone, Copy, Debug)]
pub struct TxnArgs {
    pub txn_number: i64,
    /// `startTransaction: true`: the statement opens transaction `txn_number`.
    pub start: bool,
}

impl<'a> SessionArgs<'a> {
    const NONE: SessionArgs<'static> = SessionArgs {
        lsid: Field::Absent,
        txn_number: Field::Absent,
        autocommit: Field::Absent,
        start_transaction: None,
    };

    /// Takes `key` if it is a session field not seen before.
    fn note(&mut self, key: &str, value: RawBsonRef<'a>) {
        match key {
            "lsid" if !self.lsid.is_present() => {
                self.lsid = match value {
                    RawBsonRef::Document(d) => Field::Valid(d),
                    v => Field::Wrong(v.element_type()),
                }
            }
            "txnNumber" if !self.txn_number.is_present() => {
                self.txn_number = match value {
                    RawBsonRef::Int64(n) => Field::Valid(n),
                    v => Field::Wrong(v.element_type()),
                }
            }
            "autocommit" if !self.autocommit.is_present() => {
                self.autocommit = match value {
                    RawBsonRef::Boolean(b) => Field::Valid(b),
                    v => Field::Wrong(v.element_type()),
                }
            }
            "startTransaction" if self.start_transaction.is_none() => {
                self.start_transaction = Some(matches!(value, RawBsonRef::Boolean(true)));
            }
            _ => {}
        }
    }

    /// The session id, if the command carries one (a wrong type reported as a generic field).
    pub fn lsid(&self) -> CommandResult<Option<&'a RawDocument>> {
        self.lsid.get("lsid", "object")
    }

    /// The transaction number, if sent.
    pub fn txn_number(&self) -> CommandResult<Option<i64>> {
        self.txn_number.get("txnNumber", "long")
    }

    /// `txnNumber` was sent, of whatever type: a retryable write or a transaction's statement.
    pub fn has_txn_number(&self) -> bool {
        self.txn_number.is_present()
    }

    /// `autocommit` was sent, of whatever type (it can only be `false`): a statement of a
    /// multi-document transaction.
    pub fn has_autocommit(&self) -> bool {
        self.autocommit.is_present()
    }

    /// `Some` when the command is a statement of a multi-document transaction (`autocommit:
    /// false`), after checking the fields go together as mongod requires.
    pub fn transaction(&self) -> CommandResult<Option<TxnArgs>> {
        let Some(autocommit) = self.autocommit.get("autocommit", "bool")? else {
            if self.start_transaction.is_some() {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    "'startTransaction' field requires 'autocommit' field to also be specified",
                ));
            }
            return Ok(None);
        };
        if autocommit {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "Specifying autocommit=true is not allowed.",
            ));
        }
        if !self.lsid.is_present() {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "Transaction numbers are only allowed on a session: 'autocommit' requires 'lsid'",
            ));
        }
        let Some(txn_number) = self.txn_number()? else {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "'autocommit' field requires a transaction number to also be specified",
            ));
        };
        let start = match self.start_transaction {
            None => false,
            Some(true) => true,
            Some(false) => {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    "'startTransaction' may only be specified as true",
                ));
            }
        };
        Ok(Some(TxnArgs { txn_number, start }))
    }
}

pub fn type_name(t: ElementType) -> &'static str {
    mangrove_query::element_type_name(t)
}

/// A number as an exact i64, as IDL's `safeInt64` accepts it: int, long, or an integral double.
pub fn as_i64(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int32(i) => Some(i as i64),
        RawBsonRef::Int64(i) => Some(i),
        RawBsonRef::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(d as i64),
        RawBsonRef::Decimal128(d) => d.to_string().parse::<i64>().ok(),
        _ => None,
    }
}

/// Truthiness as mongod's `optionalBool`/`safeBool` reads it: booleans and numbers.
pub fn as_bool(v: RawBsonRef<'_>) -> Option<bool> {
    match v {
        RawBsonRef::Boolean(b) => Some(b),
        RawBsonRef::Int32(i) => Some(i != 0),
        RawBsonRef::Int64(i) => Some(i != 0),
        RawBsonRef::Double(d) => Some(d != 0.0),
        RawBsonRef::Null | RawBsonRef::Undefined => Some(false),
        _ => None,
    }
}

/// Commands with more top-level fields than this are rare; the index just grows past it.
const TYPICAL_FIELDS: usize = 16;

impl<'a> Request<'a> {
    pub fn new(
        name: &'a str,
        db: &'a str,
        body: &'a RawDocument,
        sequences: &'a [DocumentSequence],
    ) -> Request<'a> {
        let mut fields = Vec::with_capacity(TYPICAL_FIELDS);
        let mut malformed = None;
        let mut session = SessionArgs::NONE;
        for item in body.iter() {
            match item {
                Ok((key, value)) => {
                    session.note(key.as_str(), value);
                    fields.push((key.as_str(), value))
                }
                Err(e) => {
                    malformed = Some(e.to_string());
                    break;
                }
            }
        }
        Request {
            name,
            db,
            body,
            sequences,
            close_connection: Default::default(),
            fields,
            malformed,
            session,
            owner: None,
        }
    }

    /// The first field named `key`, as mongod's parser reads a command.
    pub fn get(&self, key: &str) -> Option<RawBsonRef<'a>> {
        self.fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|&(_, value)| value)
    }

    /// The value of the command's own first field.
    pub fn command_value(&self) -> Option<RawBsonRef<'a>> {
        self.get(self.name)
    }

    /// Rejects fields the command does not know, as mongod 7.0's strict IDL commands do.
    pub fn check_fields(&self, allowed: &[&str]) -> CommandResult<()> {
        if let Some(e) = &self.malformed {
            return Err(CommandError::new(22, format!("invalid BSON: {e}")));
        }
        for &(key, _) in &self.fields {
            if key == self.name || allowed.contains(&key) || GENERIC_ARGS.contains(&key) {
                continue;
            }
            return Err(CommandError::new(
                code::UNKNOWN_FIELD,
                format!("BSON field '{}.{}' is an unknown field.", self.name, key),
            ));
        }
        for seq in self.sequences {
            if !allowed.contains(&seq.identifier.as_str()) {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!(
                        "BSON field '{}.{}' is an unknown field.",
                        self.name, seq.identifier
                    ),
                ));
            }
        }
        Ok(())
    }

    fn wrong_type(&self, field: &str, got: RawBsonRef<'_>, expected: &str) -> CommandError {
        self.wrong_type_of(field, got.element_type(), expected)
    }

    fn wrong_type_of(&self, field: &str, got: ElementType, expected: &str) -> CommandError {
        CommandError::type_mismatch(format!(
            "BSON field '{}.{}' is the wrong type '{}', expected type{} '{}'",
            self.name,
            field,
            type_name(got),
            if expected.starts_with('[') { "s" } else { "" },
            expected
        ))
    }

    /// The collection a collection-level command names in its first field.
    pub fn collection(&self) -> CommandResult<&'a str> {
        match self.command_value() {
            Some(RawBsonRef::String(s)) if !s.is_empty() => {
                if s.contains('\0')
                    || s.starts_with('.')
                    || s.contains('$') && !s.starts_with("$cmd")
                {
                    Err(CommandError::new(
                        code::INVALID_NAMESPACE,
                        format!("Invalid namespace specified '{}.{}'", self.db, s),
                    ))
                } else {
                    Ok(s)
                }
            }
            Some(RawBsonRef::String(_)) => Err(CommandError::new(
                code::INVALID_NAMESPACE,
                format!("Invalid namespace specified '{}.'", self.db),
            )),
            Some(other) => Err(CommandError::new(
                code::INVALID_NAMESPACE,
                format!(
                    "collection name has invalid type {}",
                    type_name(other.element_type())
                ),
            )),
            None => Err(CommandError::failed_to_parse("missing collection name")),
        }
    }

    pub fn ns(&self, collection: &str) -> String {
        format!("{}.{}", self.db, collection)
    }

    pub fn opt_i64(&self, field: &str) -> CommandResult<Option<i64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => as_i64(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, v, "[long, int, decimal, double]")),
        }
    }

    pub fn opt_bool(&self, field: &str) -> CommandResult<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => as_bool(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, v, "bool")),
        }
    }

    pub fn opt_doc(&self, field: &str) -> CommandResult<Option<&'a RawDocument>> {
        match self.get(field) {
            None => Ok(None),
            Some(RawBsonRef::Document(d)) => Ok(Some(d)),
            Some(v) => Err(self.wrong_type(field, v, "object")),
        }
    }

    pub fn opt_str(&self, field: &str) -> CommandResult<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(RawBsonRef::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(field, v, "string")),
        }
    }

    pub fn opt_array(&self, field: &str) -> CommandResult<Option<&'a RawArray>> {
        match self.get(field) {
            None => Ok(None),
            Some(RawBsonRef::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(field, v, "array")),
        }
    }

    /// The logical session id, if the command carries one.
    pub fn lsid(&self) -> CommandResult<Option<&'a RawDocument>> {
        self.session.lsid()
    }

    /// The logical session id, a wrong type reported as a field of this command, as a
    /// transaction's statement reports it.
    pub fn statement_lsid(&self) -> CommandResult<Option<&'a RawDocument>> {
        match self.session.lsid {
            Field::Absent => Ok(None),
            Field::Valid(d) => Ok(Some(d)),
            Field::Wrong(t) => Err(self.wrong_type_of("lsid", t, "object")),
        }
    }

    /// The transaction number, if the command carries one; always a long, as mongod requires.
    pub fn txn_number(&self) -> CommandResult<Option<i64>> {
        self.session.txn_number()
    }

    /// Who commits this command's writes, for the transaction log.
    pub fn commit_meta(&self) -> CommandResult<CommitMeta> {
        let lsid = match self.lsid()? {
            Some(d) => Some(
                bson::Document::try_from(d).map_err(|e| CommandError::bad_value(e.to_string()))?,
            ),
            None => None,
        };
        Ok(CommitMeta {
            lsid,
            txn_number: self.txn_number()?,
            in_transaction: false,
        })
    }

    /// A write command's batch (`documents`, `updates`, `deletes`): either an array in the body
    /// or an OP_MSG kind-1 document sequence, never both.
    pub fn batch(&self, field: &str) -> CommandResult<Vec<&'a RawDocument>> {
        let from_seq = self.sequences.iter().find(|s| s.identifier == field);
        match (self.get(field), from_seq) {
            (Some(_), Some(_)) => Err(CommandError::bad_value(format!(
                "Duplicate field '{field}': given in the body and as a document sequence"
            ))),
            (None, Some(seq)) => Ok(seq.documents.iter().map(|d| d.as_ref()).collect()),
            (Some(RawBsonRef::Array(arr)), None) => {
                let mut out = Vec::new();
                for (i, item) in arr.into_iter().enumerate() {
                    match item {
                        Ok(RawBsonRef::Document(d)) => out.push(d),
                        Ok(other) => {
                            return Err(self.wrong_type(&format!("{field}.{i}"), other, "object"));
                        }
                        Err(e) => return Err(CommandError::new(22, format!("invalid BSON: {e}"))),
                    }
                }
                Ok(out)
            }
            (Some(v), None) => Err(self.wrong_type(field, v, "array")),
            (None, None) => Err(CommandError::new(
                code::MISSING_FIELD,
                format!(
                    "BSON field '{}.{}' is missing but a required field",
                    self.name, field
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{RawDocumentBuf, rawdoc};

    fn with<T>(body: RawDocumentBuf, check: impl FnOnce(&Request<'_>) -> T) -> T {
        check(&Request::new("find", "db", &body, &[]))
    }

    fn err<T: std::fmt::Debug>(r: CommandResult<T>) -> (i32, String) {
        let e = r.unwrap_err();
        (e.code, e.message)
    }

    #[test]
    fn session_fields_are_read_once_and_first_wins() {
        let body = rawdoc! {
            "find": "c", "lsid": { "id": 1 }, "txnNumber": 7i64, "txnNumber": "x",
            "autocommit": false, "startTransaction": true,
        };
        with(body, |req| {
            assert_eq!(req.txn_number().unwrap(), Some(7));
            assert!(req.lsid().unwrap().is_some());
            let args = req.session.transaction().unwrap().unwrap();
            assert_eq!((args.txn_number, args.start), (7, true));
        });
    }

    #[test]
    fn wrong_types_fail_only_when_read() {
        let body = rawdoc! { "find": "c", "lsid": "s", "txnNumber": 1i32 };
        with(body, |req| {
            assert!(req.session.has_txn_number());
            assert!(req.session.transaction().unwrap().is_none());
            assert_eq!(
                err(req.lsid()),
                (
                    code::TYPE_MISMATCH,
                    "BSON field 'lsid' is the wrong type 'string', expected type 'object'".into()
                )
            );
            assert_eq!(
                err(req.statement_lsid()),
                (
                    code::TYPE_MISMATCH,
                    "BSON field 'find.lsid' is the wrong type 'string', expected type 'object'"
                        .into()
                )
            );
            assert_eq!(
                err(req.txn_number()),
                (
                    code::TYPE_MISMATCH,
                    "BSON field 'txnNumber' is the wrong type 'int', expected type 'long'".into()
                )
            );
        });
    }

    #[test]
    fn transaction_fields_must_go_together() {
        let cases = [
            (
                rawdoc! { "find": "c", "startTransaction": true },
                "'startTransaction' field requires 'autocommit' field to also be specified",
            ),
            (
                rawdoc! { "find": "c", "autocommit": true, "lsid": {}, "txnNumber": 1i64 },
                "Specifying autocommit=true is not allowed.",
            ),
            (
                rawdoc! { "find": "c", "autocommit": false, "txnNumber": 1i64 },
                "Transaction numbers are only allowed on a session: 'autocommit' requires 'lsid'",
            ),
            (
                rawdoc! { "find": "c", "autocommit": false, "lsid": {} },
                "'autocommit' field requires a transaction number to also be specified",
            ),
            (
                rawdoc! { "find": "c", "autocommit": false, "lsid": {}, "txnNumber": 1i64, "startTransaction": 1 },
                "'startTransaction' may only be specified as true",
            ),
        ];
        for (body, message) in cases {
            with(body, |req| {
                assert_eq!(
                    err(req.session.transaction()),
                    (code::INVALID_OPTIONS, message.to_string())
                );
            });
        }
        with(rawdoc! { "find": "c", "autocommit": 0 }, |req| {
            assert_eq!(
                err(req.session.transaction()),
                (
                    code::TYPE_MISMATCH,
                    "BSON field 'autocommit' is the wrong type 'int', expected type 'bool'".into()
                )
            );
        });
    }
}
