//! A decoded command: its name, database, body and document sequences, with typed accessors that
//! fail the way mongod's IDL parser does.

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
        for item in body.iter() {
            match item {
                Ok((key, value)) => fields.push((key.as_str(), value)),
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
        CommandError::type_mismatch(format!(
            "BSON field '{}.{}' is the wrong type '{}', expected type{} '{}'",
            self.name,
            field,
            type_name(got.element_type()),
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
        match self.get("lsid") {
            None => Ok(None),
            Some(RawBsonRef::Document(d)) => Ok(Some(d)),
            Some(v) => Err(CommandError::type_mismatch(format!(
                "BSON field 'lsid' is the wrong type '{}', expected type 'object'",
                type_name(v.element_type())
            ))),
        }
    }

    /// The transaction number, if the command carries one; always a long, as mongod requires.
    pub fn txn_number(&self) -> CommandResult<Option<i64>> {
        match self.get("txnNumber") {
            None => Ok(None),
            Some(RawBsonRef::Int64(n)) => Ok(Some(n)),
            Some(v) => Err(CommandError::type_mismatch(format!(
                "BSON field 'txnNumber' is the wrong type '{}', expected type 'long'",
                type_name(v.element_type())
            ))),
        }
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
