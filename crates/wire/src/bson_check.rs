//! Full structural validation of BSON documents.
//!
//! The `bson` crate's raw types only check the outer length and terminator when constructed
//! and report damage lazily, element by element, wherever the document is later read. We walk
//! every element once here instead, so that anything past the wire layer can rely on the
//! bytes. The rules are at least as strict as the `bson` crate's readers (strings, keys and
//! regexes must be UTF-8, booleans must be 0 or 1, old-style binary must carry a consistent
//! inner length), plus the terminator checks the crate skips for strings.

use std::fmt;

use crate::header::MAX_BSON_DEPTH;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BsonProblem {
    TooDeep,
    Invalid(&'static str),
    UnknownType(u8),
}

impl fmt::Display for BsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BsonProblem::TooDeep => write!(f, "nesting deeper than {MAX_BSON_DEPTH} levels"),
            BsonProblem::Invalid(reason) => f.write_str(reason),
            BsonProblem::UnknownType(tag) => write!(f, "unknown element type {tag:#04x}"),
        }
    }
}

type Check<T = ()> = Result<T, BsonProblem>;

/// Validates `doc`, which must be exactly one document: its length prefix must equal
/// `doc.len()`.
pub(crate) fn validate(doc: &[u8]) -> Check {
    validate_at(doc, 0)
}

fn validate_at(doc: &[u8], depth: usize) -> Check {
    if depth > MAX_BSON_DEPTH {
        return Err(BsonProblem::TooDeep);
    }
    let declared = le_i32(doc).ok_or(BsonProblem::Invalid("document shorter than 5 bytes"))?;
    if usize::try_from(declared).ok() != Some(doc.len()) {
        return Err(BsonProblem::Invalid(
            "document length prefix does not match its size",
        ));
    }
    let elements = match doc.split_last() {
        Some((&0, elements)) if doc.len() >= 5 => elements,
        Some(_) if doc.len() >= 5 => {
            return Err(BsonProblem::Invalid("document is not NUL-terminated"));
        }
        _ => return Err(BsonProblem::Invalid("document shorter than 5 bytes")),
    };
    // The terminator is excluded from `elements`, so a walk that ends exactly at its end has
    // consumed every element and nothing else.
    let mut cur = Cursor {
        buf: elements,
        pos: 4,
    };
    while !cur.at_end() {
        element(&mut cur, depth)?;
    }
    Ok(())
}

/// Element type bytes from the BSON spec.
mod tag {
    pub const END: u8 = 0x00;
    pub const DOUBLE: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const DOCUMENT: u8 = 0x03;
    pub const ARRAY: u8 = 0x04;
    pub const BINARY: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const OBJECT_ID: u8 = 0x07;
    pub const BOOLEAN: u8 = 0x08;
    pub const DATETIME: u8 = 0x09;
    pub const NULL: u8 = 0x0A;
    pub const REGEX: u8 = 0x0B;
    pub const DB_POINTER: u8 = 0x0C;
    pub const JAVASCRIPT: u8 = 0x0D;
    pub const SYMBOL: u8 = 0x0E;
    pub const JAVASCRIPT_WITH_SCOPE: u8 = 0x0F;
    pub const INT32: u8 = 0x10;
    pub const TIMESTAMP: u8 = 0x11;
    pub const INT64: u8 = 0x12;
    pub const DECIMAL128: u8 = 0x13;
    pub const MAX_KEY: u8 = 0x7F;
    pub const MIN_KEY: u8 = 0xFF;
}

/// Binary subtype whose payload repeats its own length.
const BINARY_OLD: u8 = 0x02;

fn element(cur: &mut Cursor<'_>, depth: usize) -> Check {
    let kind = cur.u8()?;
    utf8(cur.cstr()?, "field name is not valid UTF-8")?;
    match kind {
        tag::DOUBLE | tag::DATETIME | tag::TIMESTAMP | tag::INT64 => cur.skip(8),
        tag::INT32 => cur.skip(4),
        tag::OBJECT_ID => cur.skip(12),
        tag::DECIMAL128 => cur.skip(16),
        tag::UNDEFINED | tag::NULL | tag::MAX_KEY | tag::MIN_KEY => Ok(()),
        tag::BOOLEAN => match cur.u8()? {
            0 | 1 => Ok(()),
            _ => Err(BsonProblem::Invalid("boolean is neither 0 nor 1")),
        },
        tag::STRING | tag::JAVASCRIPT | tag::SYMBOL => cur.string(),
        tag::DOCUMENT | tag::ARRAY => validate_at(cur.embedded()?, depth.saturating_add(1)),
        tag::BINARY => cur.binary(),
        tag::REGEX => {
            utf8(cur.cstr()?, "regex pattern is not valid UTF-8")?;
            utf8(cur.cstr()?, "regex options are not valid UTF-8")
        }
        tag::DB_POINTER => {
            cur.string()?;
            cur.skip(12)
        }
        tag::JAVASCRIPT_WITH_SCOPE => code_with_scope(cur, depth),
        // The terminator is not part of the walked range, so an end marker here means the
        // document ends before its length prefix says it does.
        tag::END => Err(BsonProblem::Invalid(
            "end-of-document marker before the end of the document",
        )),
        other => Err(BsonProblem::UnknownType(other)),
    }
}

fn code_with_scope(cur: &mut Cursor<'_>, depth: usize) -> Check {
    // total length (int32) + string (int32 + at least a NUL) + document (at least 5 bytes)
    const MIN: usize = 4 + 5 + 5;
    let total = cur.peek_len()?;
    if total < MIN {
        return Err(BsonProblem::Invalid(
            "code-with-scope shorter than 14 bytes",
        ));
    }
    let whole = cur.take(total)?;
    let mut inner = Cursor { buf: whole, pos: 4 };
    inner.string()?;
    // validate_at insists the scope's own length prefix covers exactly what remains, which
    // also proves the outer total length was consistent.
    validate_at(inner.rest(), depth.saturating_add(1))
}

fn utf8(bytes: &[u8], problem: &'static str) -> Check {
    std::str::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| BsonProblem::Invalid(problem))
}

fn le_i32(bytes: &[u8]) -> Option<i32> {
    let (head, _) = bytes.split_first_chunk::<4>()?;
    Some(i32::from_le_bytes(*head))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn take(&mut self, n: usize) -> Check<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(BsonProblem::Invalid("length overflows"))?;
        let bytes = self.buf.get(self.pos..end).ok_or(BsonProblem::Invalid(
            "element runs past the end of the document",
        ))?;
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Check {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Check<u8> {
        let byte = self.rest().first().copied().ok_or(BsonProblem::Invalid(
            "element runs past the end of the document",
        ))?;
        self.pos = self.pos.saturating_add(1);
        Ok(byte)
    }

    fn i32(&mut self) -> Check<i32> {
        let bytes = self.take(4)?;
        le_i32(bytes).ok_or(BsonProblem::Invalid(
            "element runs past the end of the document",
        ))
    }

    /// A length prefix that counts itself, read without consuming it.
    fn peek_len(&self) -> Check<usize> {
        let len = le_i32(self.rest()).ok_or(BsonProblem::Invalid(
            "element runs past the end of the document",
        ))?;
        usize::try_from(len).map_err(|_| BsonProblem::Invalid("negative length"))
    }

    fn cstr(&mut self) -> Check<&'a [u8]> {
        let rest = self.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(BsonProblem::Invalid("unterminated cstring"))?;
        let (bytes, _) = rest.split_at_checked(nul).unwrap_or((rest, &[]));
        self.pos = self.pos.saturating_add(nul).saturating_add(1);
        Ok(bytes)
    }

    fn string(&mut self) -> Check {
        let len = self.i32()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len >= 1)
            .ok_or(BsonProblem::Invalid("string length must be at least 1"))?;
        match self.take(len)?.split_last() {
            Some((&0, text)) => utf8(text, "string is not valid UTF-8"),
            _ => Err(BsonProblem::Invalid("string is not NUL-terminated")),
        }
    }

    fn embedded(&mut self) -> Check<&'a [u8]> {
        let len = self.peek_len()?;
        self.take(len)
    }

    fn binary(&mut self) -> Check {
        let len = usize::try_from(self.i32()?)
            .map_err(|_| BsonProblem::Invalid("negative binary length"))?;
        let subtype = self.u8()?;
        let data = self.take(len)?;
        if subtype == BINARY_OLD {
            let inner = le_i32(data).and_then(|n| usize::try_from(n).ok());
            if inner.and_then(|n| n.checked_add(4)) != Some(len) {
                return Err(BsonProblem::Invalid(
                    "old binary subtype has an inconsistent inner length",
                ));
            }
        }
        Ok(())
    }
}
