//! A segment's header, and reading one record.
//!
//! ```text
//! header v2 = "MGVLOG\0\0" | version u32 LE (2) | header length u32 LE (64)
//!           | first ts u64 (the file's name)
//!           | predecessor: first ts u64 (0: none) | end offset u64 | last record ts u64
//!           | reserved (12 bytes) | crc32c u32 of the 60 bytes before it
//! header v1 = "MGVLOG\0\0" | version u32 LE (1) | reserved u32                 (16 bytes)
//! ```
//!
//! A v2 header names its predecessor and where that segment's valid records ended, so a
//! missing, truncated, renamed or reordered segment is found by comparing each segment with
//! the one before it. v1 segments (written before the chain existed) are still read.

use super::{LogRecord, MAX_RECORD_LEN, PAYLOAD_PREFIX_LEN, RECORD_HEADER_LEN, decode_payload};
use crate::Timestamp;

pub(crate) const MAGIC: &[u8; 8] = b"MGVLOG\0\0";
pub(crate) const VERSION: u32 = 2;
pub(crate) const HEADER_LEN: usize = 64;
const V1_HEADER_LEN: usize = 16;

/// What a segment's header says about the segment before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Predecessor {
    pub first_ts: Timestamp,
    /// Where its valid records ended when it was sealed.
    pub end: u64,
    /// Its last record's timestamp (or, if it had none, the newest before it).
    pub last_ts: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub len: usize,
    /// v2 only: the timestamp the file is named after.
    pub first_ts: Option<Timestamp>,
    /// v2 only: `None` for the first segment a data directory ever had.
    pub prev: Option<Predecessor>,
}

pub(crate) fn encode_header(first_ts: Timestamp, prev: Option<&Predecessor>) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first_ts.0.to_le_bytes());
    if let Some(p) = prev {
        h[24..32].copy_from_slice(&p.first_ts.0.to_le_bytes());
        h[32..40].copy_from_slice(&p.end.to_le_bytes());
        h[40..48].copy_from_slice(&p.last_ts.0.to_le_bytes());
    }
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses the header at the start of a segment's bytes.
pub(crate) fn parse_header(b: &[u8]) -> Result<SegmentHeader, String> {
    if b.len() < V1_HEADER_LEN {
        return Err(format!("segment header incomplete ({} bytes)", b.len()));
    }
    if &b[0..8] != MAGIC {
        return Err("not a Mangrove log segment (bad magic)".into());
    }
    match u32_at(b, 8) {
        1 => Ok(SegmentHeader {
            version: 1,
            len: V1_HEADER_LEN,
            first_ts: None,
            prev: None,
        }),
        VERSION => parse_v2(b),
        other => Err(format!(
            "log format version {other}, this build reads versions 1 and {VERSION}"
        )),
    }
}

fn parse_v2(b: &[u8]) -> Result<SegmentHeader, String> {
    let h = b
        .get(..HEADER_LEN)
        .ok_or_else(|| format!("segment header incomplete ({} bytes)", b.len()))?;
    if crc32c::crc32c(&h[..60]) != u32_at(h, 60) {
        return Err("segment header checksum mismatch".into());
    }
    let prev_first = u64_at(h, 24);
    Ok(SegmentHeader {
        version: VERSION,
        len: HEADER_LEN,
        first_ts: Some(Timestamp(u64_at(h, 16))),
        prev: (prev_first != 0).then(|| Predecessor {
            first_ts: Timestamp(prev_first),
            end: u64_at(h, 32),
            last_ts: Timestamp(u64_at(h, 40)),
        }),
    })
}

/// The record at `offset`: its length in the file and its contents, or why the bytes there
/// are not one whole valid record.
pub(crate) fn parse_record_at(bytes: &[u8], offset: usize) -> Result<(usize, LogRecord), String> {
    let header = bytes
        .get(offset..offset + RECORD_HEADER_LEN)
        .ok_or("incomplete record header")?;
    let len = u32_at(header, 0) as usize;
    let crc = u32_at(header, 4);
    if !(PAYLOAD_PREFIX_LEN..=MAX_RECORD_LEN).contains(&len) {
        return Err(format!("implausible record length {len}"));
    }
    let payload = bytes
        .get(offset + RECORD_HEADER_LEN..offset + RECORD_HEADER_LEN + len)
        .ok_or_else(|| format!("record of {len} bytes runs past the end of the segment"))?;
    debug_assert_eq!(crc, u32_at(header, 4));
    let record = check_record(header, payload)?;
    Ok((RECORD_HEADER_LEN + len, record))
}

/// A record's contents, if its checksum (over the length prefix in `header` and `payload`)
/// matches and its payload decodes. The one check of a record, for whole-file scans and for
/// incremental readers (`reader.rs`) alike.
pub(crate) fn check_record(header: &[u8], payload: &[u8]) -> Result<LogRecord, String> {
    if super::record_crc(&header[0..4], payload) != u32_at(header, 4) {
        return Err("checksum mismatch".into());
    }
    decode_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let prev = Predecessor {
            first_ts: Timestamp(3 << 32),
            end: 77_000,
            last_ts: Timestamp((3 << 32) + 40),
        };
        let mut h = encode_header(Timestamp(4 << 32), Some(&prev));
        let parsed = parse_header(&h).unwrap();
        assert_eq!(parsed.first_ts, Some(Timestamp(4 << 32)));
        assert_eq!(parsed.prev, Some(prev));
        h[30] ^= 1;
        assert!(parse_header(&h).is_err());
        let first = encode_header(Timestamp(9), None);
        assert_eq!(parse_header(&first).unwrap().prev, None);
    }
}
