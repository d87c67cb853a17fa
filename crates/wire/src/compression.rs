use std::borrow::Cow;
use std::io::{Read, Write};

use crate::error::WireError;

/// Compressor id 0: the payload is stored as is. Accepted on input; never produced.
pub(crate) const NOOP_ID: u8 = 0;

/// A wire compressor negotiated in the handshake's `compression` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compressor {
    Snappy,
    Zlib,
    Zstd,
}

impl Compressor {
    /// Parses a handshake name; names are case-sensitive, as in mongod.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "snappy" => Some(Compressor::Snappy),
            "zlib" => Some(Compressor::Zlib),
            "zstd" => Some(Compressor::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }

    /// The compressor for a wire id; None for noop (0) and for unassigned ids.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Compressor::Snappy),
            2 => Some(Compressor::Zlib),
            3 => Some(Compressor::Zstd),
            _ => None,
        }
    }
}

/// Compresses `data`, or returns None if the compressor refuses; the caller then sends the
/// message uncompressed, which the protocol always allows.
pub(crate) fn compress(compressor: Compressor, data: &[u8]) -> Option<Vec<u8>> {
    match compressor {
        Compressor::Snappy => snap::raw::Encoder::new().compress_vec(data).ok(),
        Compressor::Zlib => {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).ok()?;
            encoder.finish().ok()
        }
        // Level 0 selects zstd's default level, as mongod's compressor does.
        Compressor::Zstd => zstd::bulk::compress(data, 0).ok(),
    }
}

/// Decompresses an OP_COMPRESSED payload that claims to expand to exactly `declared` bytes.
///
/// `declared` has already been checked against the message size limit, so every buffer here is
/// bounded by it, and no decoder is allowed to produce more than `declared` bytes: a payload
/// that expands further is rejected as soon as it overshoots rather than after inflating in
/// full.
pub(crate) fn decompress(
    id: u8,
    payload: &[u8],
    declared: usize,
) -> Result<(Option<Compressor>, Cow<'_, [u8]>), WireError> {
    let Some(compressor) = Compressor::from_id(id) else {
        if id == NOOP_ID {
            check_size(declared, payload.len())?;
            return Ok((None, Cow::Borrowed(payload)));
        }
        return Err(WireError::UnknownCompressor { id });
    };
    let failed = |reason: String| WireError::DecompressionFailed {
        compressor: compressor.name(),
        reason,
    };
    let out = match compressor {
        Compressor::Snappy => {
            // Raw snappy states its output length up front, so a lie is caught before
            // allocating anything.
            let claimed = snap::raw::decompress_len(payload).map_err(|e| failed(e.to_string()))?;
            check_size(declared, claimed)?;
            let mut out = vec![0u8; declared];
            let written = snap::raw::Decoder::new()
                .decompress(payload, &mut out)
                .map_err(|e| failed(e.to_string()))?;
            out.truncate(written);
            out
        }
        Compressor::Zlib => {
            let mut out = Vec::with_capacity(declared);
            // One byte past `declared` is enough to tell an overlong payload from an exact one.
            let limit = u64::try_from(declared)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            flate2::read::ZlibDecoder::new(payload)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| failed(e.to_string()))?;
            out
        }
        Compressor::Zstd => {
            // Single-shot decompression writes straight into this buffer and fails once it
            // is full, so the output cannot outgrow `declared`.
            let mut out = Vec::with_capacity(declared);
            let mut decompressor =
                zstd::bulk::Decompressor::new().map_err(|e| failed(e.to_string()))?;
            decompressor
                .decompress_to_buffer(payload, &mut out)
                .map_err(|e| failed(e.to_string()))?;
            out
        }
    };
    check_size(declared, out.len())?;
    Ok((Some(compressor), Cow::Owned(out)))
}

fn check_size(declared: usize, actual: usize) -> Result<(), WireError> {
    if declared == actual {
        Ok(())
    } else {
        Err(WireError::UncompressedSizeMismatch { declared, actual })
    }
}
