//! Encoders for replies (server side) and requests (client side, for tests).
//!
//! Encoders trust their caller: they do not apply [`crate::Limits`], so the server must keep
//! reply documents within the sizes it advertised in the handshake.

use bson::RawDocument;

use crate::compression::{self, Compressor};
use crate::header::{HEADER_LEN, Header};
use crate::message::{DocumentSequence, OpQuery};
use crate::{msg_flags, opcode};

/// Encodes an OP_MSG: the body as the kind-0 section, then each sequence as a kind-1 section.
/// Appends a CRC-32C when `flags` has CHECKSUM_PRESENT, and wraps the result in OP_COMPRESSED
/// when `compressor` is Some (the checksum then covers the uncompressed message, which is what
/// the receiver verifies after decompressing).
pub fn encode_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &RawDocument,
    sequences: &[DocumentSequence],
    compressor: Option<Compressor>,
) -> Vec<u8> {
    // Only a capacity hint, but summed with saturation so absurd inputs cannot overflow.
    let sequences_len = sequences.iter().fold(0usize, |acc, s| {
        let docs = s
            .documents
            .iter()
            .fold(0usize, |acc, d| acc.saturating_add(d.as_bytes().len()));
        acc.saturating_add(6)
            .saturating_add(s.identifier.len())
            .saturating_add(docs)
    });
    let mut frame = open_frame(
        body.as_bytes()
            .len()
            .saturating_add(sequences_len)
            .saturating_add(9),
    );
    frame.extend_from_slice(&flags.to_le_bytes());
    frame.push(0);
    frame.extend_from_slice(body.as_bytes());
    for sequence in sequences {
        frame.push(1);
        let size_at = frame.len();
        frame.extend_from_slice(&[0; 4]);
        push_cstr(&mut frame, &sequence.identifier);
        for doc in &sequence.documents {
            frame.extend_from_slice(doc.as_bytes());
        }
        let size = wire_len(frame.len().saturating_sub(size_at));
        if let Some(slot) = frame.get_mut(size_at..size_at.saturating_add(4)) {
            slot.copy_from_slice(&size.to_le_bytes());
        }
    }
    let checksum = flags & msg_flags::CHECKSUM_PRESENT != 0;
    let header = Header {
        message_length: wire_len(frame.len().saturating_add(if checksum { 4 } else { 0 })),
        request_id,
        response_to,
        op_code: opcode::OP_MSG,
    };
    if checksum {
        // The checksum covers the header too.
        frame[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let crc = crc32c::crc32c(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
    }
    seal(header, frame, compressor)
}

/// The frame of an OP_MSG reply of one body section, without the body: the bytes before it
/// (header, flags, section kind) and after it (the CRC-32C, when asked for). A busy change
/// stream's replies are tens of kilobytes, and their events are shared with other streams';
/// the connection writes frame and body vectored from where they are, where [`encode_msg`]
/// copies the body into a frame.
pub struct MsgFrame {
    pub head: [u8; HEADER_LEN + 5],
    pub checksum: Option<[u8; 4]>,
}

impl MsgFrame {
    /// Frames the body whose bytes are `body`, in order, as [`encode_msg`] would without
    /// sequences or compression.
    pub fn new(request_id: i32, response_to: i32, flags: u32, body: &[&[u8]]) -> MsgFrame {
        let checksummed = flags & msg_flags::CHECKSUM_PRESENT != 0;
        let body_len = body
            .iter()
            .fold(0usize, |n, part| n.saturating_add(part.len()));
        let len = (HEADER_LEN + 5)
            .saturating_add(body_len)
            .saturating_add(if checksummed { 4 } else { 0 });
        let header = Header {
            message_length: wire_len(len),
            request_id,
            response_to,
            op_code: opcode::OP_MSG,
        };
        let mut head = [0u8; HEADER_LEN + 5];
        head[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        head[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&flags.to_le_bytes());
        // Section kind 0: the body.
        head[HEADER_LEN + 4] = 0;
        let checksum = checksummed.then(|| {
            let crc = body.iter().fold(crc32c::crc32c(&head), |crc, part| {
                crc32c::crc32c_append(crc, part)
            });
            crc.to_le_bytes()
        });
        MsgFrame { head, checksum }
    }

    /// The checksum's bytes (none when not asked for).
    pub fn trailer(&self) -> &[u8] {
        self.checksum.as_ref().map_or(&[][..], |c| &c[..])
    }
}

/// Encodes an OP_REPLY carrying one document, as the answer to a legacy OP_QUERY command.
pub fn encode_reply(
    request_id: i32,
    response_to: i32,
    response_flags: i32,
    doc: &RawDocument,
    compressor: Option<Compressor>,
) -> Vec<u8> {
    // A command's reply is a single document and never opens a legacy cursor.
    let cursor_id: i64 = 0;
    let starting_from: i32 = 0;
    let number_returned: i32 = 1;
    let mut frame = open_frame(doc.as_bytes().len().saturating_add(20));
    frame.extend_from_slice(&response_flags.to_le_bytes());
    frame.extend_from_slice(&cursor_id.to_le_bytes());
    frame.extend_from_slice(&starting_from.to_le_bytes());
    frame.extend_from_slice(&number_returned.to_le_bytes());
    frame.extend_from_slice(doc.as_bytes());
    let header = Header {
        message_length: wire_len(frame.len()),
        request_id,
        response_to,
        op_code: opcode::OP_REPLY,
    };
    seal(header, frame, compressor)
}

/// Encodes an OP_QUERY, as a client would for the legacy handshake.
pub fn encode_query(request_id: i32, q: &OpQuery, compressor: Option<Compressor>) -> Vec<u8> {
    let selector = q.return_fields_selector.as_ref();
    let mut frame = open_frame(
        q.full_collection_name
            .len()
            .saturating_add(q.query.as_bytes().len())
            .saturating_add(selector.map_or(0, |s| s.as_bytes().len()))
            .saturating_add(13),
    );
    frame.extend_from_slice(&q.flags.to_le_bytes());
    push_cstr(&mut frame, &q.full_collection_name);
    frame.extend_from_slice(&q.number_to_skip.to_le_bytes());
    frame.extend_from_slice(&q.number_to_return.to_le_bytes());
    frame.extend_from_slice(q.query.as_bytes());
    if let Some(selector) = selector {
        frame.extend_from_slice(selector.as_bytes());
    }
    let header = Header {
        message_length: wire_len(frame.len()),
        request_id,
        response_to: 0,
        op_code: opcode::OP_QUERY,
    };
    seal(header, frame, compressor)
}

/// A frame with room for its header, which [`seal`] fills in: the payload is written in place,
/// so that it is copied once (a reply can be a change stream's batch of many kilobytes), not
/// into a payload and then again into the frame.
fn open_frame(payload_capacity: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN.saturating_add(payload_capacity));
    frame.extend_from_slice(&[0; HEADER_LEN]);
    frame
}

/// Writes `header` into the room [`open_frame`] left, and emits the frame, or its OP_COMPRESSED
/// form when a compressor is given and succeeds; falling back to the plain message is always
/// acceptable to the peer.
fn seal(header: Header, mut frame: Vec<u8>, compressor: Option<Compressor>) -> Vec<u8> {
    debug_assert!(
        frame.len() >= HEADER_LEN,
        "a frame starts with room for its header"
    );
    let payload = frame.get(HEADER_LEN..).unwrap_or_default();
    if let Some(compressed) = compressor.and_then(|c| compressed_frame(header, payload, c)) {
        return compressed;
    }
    frame[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    frame
}

fn compressed_frame(header: Header, payload: &[u8], compressor: Compressor) -> Option<Vec<u8>> {
    let uncompressed_size = i32::try_from(payload.len()).ok()?;
    let compressed = compression::compress(compressor, payload)?;
    let total = HEADER_LEN.checked_add(9)?.checked_add(compressed.len())?;
    let outer = Header {
        message_length: i32::try_from(total).ok()?,
        request_id: header.request_id,
        response_to: header.response_to,
        op_code: opcode::OP_COMPRESSED,
    };
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&outer.to_bytes());
    frame.extend_from_slice(&header.op_code.to_le_bytes());
    frame.extend_from_slice(&uncompressed_size.to_le_bytes());
    frame.push(compressor.id());
    frame.extend_from_slice(&compressed);
    Some(frame)
}

/// A cstring cannot carry a NUL, so the text is cut at the first one rather than producing a
/// frame whose later fields would be misread.
fn push_cstr(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.extend_from_slice(bytes.get(..end).unwrap_or_default());
    out.push(0);
}

/// Lengths on the wire are i32. Anything larger cannot be a valid message anyway; saturating
/// yields a frame every receiver rejects instead of one that silently wraps.
fn wire_len(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}
