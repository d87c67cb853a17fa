//! Resume tokens: where in the log a change event sits, as the opaque `{_data: "<hex>"}` that
//! drivers keep and send back in `resumeAfter` / `startAfter`.
//!
//! ```text
//! _data = uppercase hex of
//!         "MG" | version u8 (1) | kind u8 | commit ts u64 BE | event index u32 BE
//!         | fragment u32 BE | crc32c u32 BE
//! kind  = 0 an event, 1 a high-water mark (no event: "everything up to ts was seen"),
//!         2 an invalidate event
//! ```
//!
//! The event index is the event's place in its transaction's record (see `event.rs`), the
//! same for every stream whatever its scope or filter, so a token from one stream resumes
//! another. The fragment is 0 for a whole event, `k` for the k-th fragment of an event split by
//! `$changeStreamSplitLargeEvent`. Fields are big-endian so tokens sort as their positions do, as mongod's do. The
//! CRC tells a damaged or foreign token (mongod's start with `82`) from ours: such a token is
//! refused with mongod's error rather than resumed from a wrong place.

use bson::RawDocumentBuf;
use bson::raw::{CStr, RawBsonRef, cstr};
#[cfg(test)]
use bson::{Document, doc};
use mangrove_query::RawWriter;
use mangrove_storage::Timestamp;

use crate::error::{CommandError, CommandResult, code};

const MAGIC: &[u8; 2] = b"MG";
const VERSION: u8 = 1;
const LEN: usize = 2 + 1 + 1 + 8 + 4 + 4 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Event,
    HighWaterMark,
    Invalidate,
}

/// A position in the stream of change events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeToken {
    pub kind: TokenKind,
    pub ts: Timestamp,
    pub index: u32,
    /// 0: the whole event; k ≥ 1: its k-th fragment.
    pub fragment: u32,
}

impl ResumeToken {
    pub fn event(ts: Timestamp, index: u32) -> ResumeToken {
        ResumeToken {
            kind: TokenKind::Event,
            ts,
            index,
            fragment: 0,
        }
    }

    pub fn high_water_mark(ts: Timestamp) -> ResumeToken {
        ResumeToken {
            kind: TokenKind::HighWaterMark,
            ts,
            index: 0,
            fragment: 0,
        }
    }

    /// The token as raw BSON, built without a `Document`: every batch carries one.
    pub fn to_raw(self) -> RawDocumentBuf {
        let mut w = RawWriter::with_capacity(LEN * 2 + 16);
        self.write_data(&mut w);
        w.finish()
    }

    #[cfg(test)]
    pub fn to_document(self) -> Document {
        doc! { "_data": String::from_utf8_lossy(&self.hex_digits()).into_owned() }
    }

    /// The token as the `_id` (or any `key`) of a document being written: no allocation.
    pub fn write(self, w: &mut RawWriter, key: &CStr) {
        w.begin(key);
        self.write_data(w);
        w.end();
    }

    fn write_data(self, w: &mut RawWriter) {
        let hex = self.hex_digits();
        // Hex digits are ASCII.
        w.str(
            cstr!("_data"),
            std::str::from_utf8(&hex).unwrap_or_default(),
        );
    }

    fn hex_digits(self) -> [u8; LEN * 2] {
        let mut bytes = [0u8; LEN];
        bytes[..2].copy_from_slice(MAGIC);
        bytes[2] = VERSION;
        bytes[3] = match self.kind {
            TokenKind::Event => 0,
            TokenKind::HighWaterMark => 1,
            TokenKind::Invalidate => 2,
        };
        bytes[4..12].copy_from_slice(&self.ts.0.to_be_bytes());
        bytes[12..16].copy_from_slice(&self.index.to_be_bytes());
        bytes[16..20].copy_from_slice(&self.fragment.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[..20]);
        bytes[20..].copy_from_slice(&crc.to_be_bytes());
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut hex = [0u8; LEN * 2];
        for (i, b) in bytes.iter().enumerate() {
            hex[2 * i] = DIGITS[usize::from(b >> 4)];
            hex[2 * i + 1] = DIGITS[usize::from(b & 0xF)];
        }
        hex
    }

    /// Reads a token a client sent back (`field` names the option, for the message).
    pub fn parse(value: RawBsonRef<'_>, field: &str) -> CommandResult<ResumeToken> {
        let RawBsonRef::Document(d) = value else {
            return Err(CommandError::type_mismatch(format!(
                "BSON field '$changeStream.{field}' is the wrong type, expected type 'object'"
            )));
        };
        let data = match d.get("_data") {
            Ok(Some(RawBsonRef::String(s))) => s,
            _ => {
                return Err(CommandError::failed_to_parse(format!(
                    "Bad resume token: _data of missing or of wrong type in '{field}'. Expected a string: pass back the _id of a change event or the postBatchResumeToken unchanged"
                )));
            }
        };
        decode(data).ok_or_else(|| {
            CommandError::new(
                code::INVALID_RESUME_TOKEN,
                format!(
                    "'{field}' is not a resume token of this server (damaged, or from another server): resume from a token this server issued, or use startAtOperationTime"
                ),
            )
        })
    }
}

fn decode(hex: &str) -> Option<ResumeToken> {
    if hex.len() != LEN * 2 || !hex.is_ascii() {
        return None;
    }
    let bytes: Vec<u8> = (0..LEN)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
        .collect::<Option<_>>()?;
    let (body, crc) = bytes.split_at(LEN - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc || &body[0..2] != MAGIC || body[2] != VERSION {
        return None;
    }
    let kind = match body[3] {
        0 => TokenKind::Event,
        1 => TokenKind::HighWaterMark,
        2 => TokenKind::Invalidate,
        _ => return None,
    };
    Some(ResumeToken {
        kind,
        ts: Timestamp(u64::from_be_bytes(body[4..12].try_into().ok()?)),
        index: u32::from_be_bytes(body[12..16].try_into().ok()?),
        fragment: u32::from_be_bytes(body[16..20].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::RawDocumentBuf;

    fn round_trip(t: ResumeToken) -> CommandResult<ResumeToken> {
        let d = RawDocumentBuf::try_from(&t.to_document()).unwrap();
        ResumeToken::parse(RawBsonRef::Document(&d), "resumeAfter")
    }

    #[test]
    fn tokens_round_trip_and_sort_as_positions() {
        let a = ResumeToken::event(Timestamp(5 << 32 | 7), 3);
        let b = ResumeToken::event(Timestamp(5 << 32 | 7), 4);
        let c = ResumeToken::high_water_mark(Timestamp(6 << 32));
        for t in [a, b, c] {
            assert_eq!(round_trip(t).unwrap(), t);
        }
        let hex = |t: ResumeToken| t.to_document().get_str("_data").unwrap().to_string();
        // The kind byte comes first, so only tokens of one kind sort by position.
        assert!(hex(a) < hex(b));
    }

    #[test]
    fn damaged_and_foreign_tokens_are_refused() {
        let good = ResumeToken::event(Timestamp(9), 1).to_document();
        let mut hex = good.get_str("_data").unwrap().to_string();
        // Flip one digit of the timestamp.
        let flipped = if &hex[10..11] == "0" { "1" } else { "0" };
        hex.replace_range(10..11, flipped);
        let foreign = "8263F5A0E4000000012B022C0100296E5A1004";
        for data in [hex.as_str(), foreign, "", "zz"] {
            let d = RawDocumentBuf::try_from(&doc! {"_data": data}).unwrap();
            let e = ResumeToken::parse(RawBsonRef::Document(&d), "resumeAfter").unwrap_err();
            assert_eq!(e.code, code::INVALID_RESUME_TOKEN, "{data}");
        }
        let d = RawDocumentBuf::try_from(&doc! {"_data": 5}).unwrap();
        let e = ResumeToken::parse(RawBsonRef::Document(&d), "resumeAfter").unwrap_err();
        assert_eq!(e.code, code::FAILED_TO_PARSE);
    }
}
