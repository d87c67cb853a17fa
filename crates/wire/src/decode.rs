use std::borrow::Cow;

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

use crate::bson_check::{self, BsonProblem};
use crate::compression::{self, Compressor};
use crate::error::WireError;
use crate::header::{
    HEADER_LEN, Header, Limits, MAX_DOCUMENT_SEQUENCES, MAX_DOCUMENTS_PER_MESSAGE, frame_length,
};
use crate::message::{DocumentSequence, Message, OpMsg, OpQuery, OpReply, ReplyMessage, Request};
use crate::{msg_flags, opcode};

/// Decodes one whole frame (header included).
///
/// OP_COMPRESSED is unwrapped first (snappy, zlib, zstd or noop, with the declared
/// uncompressed size held to `limits.max_message_size` and to the actual output). Every BSON
/// document is then validated in full, so nothing downstream meets malformed BSON.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<Message, WireError> {
    let unframed = unframe(frame, limits)?;
    let request = match unframed.op_code {
        opcode::OP_MSG => Request::Msg(parse_msg(&unframed, limits)?),
        opcode::OP_QUERY => Request::Query(parse_query(&unframed.body, limits)?),
        op_code => return Err(unsupported(op_code, &unframed)),
    };
    Ok(Message {
        header: unframed.outer,
        compressor: unframed.compressor,
        request,
    })
}

/// Decodes an OP_REPLY frame, possibly inside OP_COMPRESSED. Servers never receive these; it
/// exists for clients, and for tests acting as one.
pub fn decode_reply(frame: &[u8], limits: &Limits) -> Result<ReplyMessage, WireError> {
    let unframed = unframe(frame, limits)?;
    if unframed.op_code != opcode::OP_REPLY {
        return Err(unsupported(unframed.op_code, &unframed));
    }
    let mut r = Reader::new(&unframed.body);
    let response_flags = r.i32("OP_REPLY is missing its responseFlags")?;
    let cursor_id = r.i64("OP_REPLY is missing its cursorID")?;
    let starting_from = r.i32("OP_REPLY is missing its startingFrom")?;
    let number_returned = r.i32("OP_REPLY is missing its numberReturned")?;
    let expected = usize::try_from(number_returned).map_err(|_| WireError::Malformed {
        reason: "OP_REPLY numberReturned is negative",
    })?;
    let mut documents = Vec::new();
    while !r.is_empty() {
        if documents.len() >= MAX_DOCUMENTS_PER_MESSAGE {
            return Err(WireError::TooManyDocuments {
                max: MAX_DOCUMENTS_PER_MESSAGE,
            });
        }
        let context = || format!("OP_REPLY document {}", documents.len());
        documents.push(read_document(&mut r, limits, context)?);
    }
    if documents.len() != expected {
        return Err(WireError::Malformed {
            reason: "OP_REPLY numberReturned does not match the documents present",
        });
    }
    Ok(ReplyMessage {
        header: unframed.outer,
        compressor: unframed.compressor,
        reply: OpReply {
            response_flags,
            cursor_id,
            starting_from,
            documents,
        },
    })
}

/// The opcode a reply to this frame must answer, looking through OP_COMPRESSED to the
/// original opcode. Meant for shaping an error reply after [`decode`] failed on a
/// well-delimited frame; None if the frame is too short to tell.
pub fn peek_op_code(frame: &[u8]) -> Option<i32> {
    let op_code = le_i32_at(frame, OP_CODE_OFFSET)?;
    if op_code == opcode::OP_COMPRESSED {
        le_i32_at(frame, HEADER_LEN)
    } else {
        Some(op_code)
    }
}

/// The flag bits of an uncompressed OP_MSG frame, even one [`decode`] rejected, so the server
/// can honour moreToCome (no reply) when answering with an error. None for other opcodes and
/// for compressed frames, whose flags cannot be read without decompressing.
pub fn peek_msg_flags(frame: &[u8]) -> Option<u32> {
    if le_i32_at(frame, OP_CODE_OFFSET)? != opcode::OP_MSG {
        return None;
    }
    let bytes = frame.get(HEADER_LEN..)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*bytes))
}

/// Where the opcode sits in the header.
const OP_CODE_OFFSET: usize = 12;

fn le_i32_at(bytes: &[u8], at: usize) -> Option<i32> {
    let bytes = bytes.get(at..)?.first_chunk::<4>()?;
    Some(i32::from_le_bytes(*bytes))
}

fn unsupported(op_code: i32, unframed: &Unframed<'_>) -> WireError {
    if op_code == opcode::OP_COMPRESSED && unframed.outer.op_code == opcode::OP_COMPRESSED {
        WireError::NestedCompression
    } else {
        WireError::UnsupportedOpCode { op_code }
    }
}

/// A frame with its framing checked and any compression removed.
struct Unframed<'a> {
    outer: Header,
    compressor: Option<Compressor>,
    /// The header the message had before compression (the outer one if it was not
    /// compressed): OP_MSG checksums cover it.
    inner: Header,
    op_code: i32,
    body: Cow<'a, [u8]>,
}

fn unframe<'a>(frame: &'a [u8], limits: &Limits) -> Result<Unframed<'a>, WireError> {
    let header_bytes = frame
        .first_chunk::<HEADER_LEN>()
        .ok_or(WireError::Truncated {
            needed: HEADER_LEN,
            got: frame.len(),
        })?;
    let outer = Header::parse(header_bytes);
    let declared = frame_length(&outer, limits)?;
    if declared != frame.len() {
        return Err(WireError::LengthMismatch {
            declared,
            actual: frame.len(),
        });
    }
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    if outer.op_code != opcode::OP_COMPRESSED {
        return Ok(Unframed {
            outer,
            compressor: None,
            inner: outer,
            op_code: outer.op_code,
            body: Cow::Borrowed(body),
        });
    }

    let mut r = Reader::new(body);
    let original = r.i32("OP_COMPRESSED is missing its originalOpcode")?;
    let uncompressed_size = r.i32("OP_COMPRESSED is missing its uncompressedSize")?;
    let compressor_id = r.u8("OP_COMPRESSED is missing its compressorId")?;
    if compressor_id != compression::NOOP_ID && Compressor::from_id(compressor_id).is_none() {
        return Err(WireError::UnknownCompressor { id: compressor_id });
    }
    // The rebuilt message (header plus uncompressed body) must itself fit the message limit,
    // as mongod requires; this is what defuses decompression bombs before any work is done.
    let max = limits.max_message_size.saturating_sub(HEADER_LEN);
    let size = usize::try_from(uncompressed_size)
        .ok()
        .filter(|&size| size <= max)
        .ok_or(WireError::UncompressedSizeTooLarge {
            declared: i64::from(uncompressed_size),
            max,
        })?;
    let (compressor, inner_body) = compression::decompress(compressor_id, r.rest(), size)?;
    let inner = Header {
        // Saturation only matters for bodies within 16 bytes of i32::MAX, which no frame (its
        // length being an i32 too) could have been compressed from.
        message_length: i32::try_from(size.saturating_add(HEADER_LEN)).unwrap_or(i32::MAX),
        request_id: outer.request_id,
        response_to: outer.response_to,
        op_code: original,
    };
    Ok(Unframed {
        outer,
        compressor,
        inner,
        op_code: original,
        body: inner_body,
    })
}

/// The sections an OP_MSG checksum covers, once the CRC-32C trailer matches them.
fn verify_checksum<'a>(
    unframed: &Unframed<'_>,
    flag_bytes: &[u8; 4],
    sections: &'a [u8],
) -> Result<&'a [u8], WireError> {
    let (covered, trailer) = sections
        .split_last_chunk::<4>()
        .ok_or(WireError::Malformed {
            reason: "OP_MSG sets checksumPresent but has no checksum",
        })?;
    let sent = u32::from_le_bytes(*trailer);
    let crc = crc32c::crc32c(&unframed.inner.to_bytes());
    let crc = crc32c::crc32c_append(crc, flag_bytes.as_slice());
    let computed = crc32c::crc32c_append(crc, covered);
    if sent != computed {
        return Err(WireError::ChecksumMismatch { sent, computed });
    }
    Ok(covered)
}

fn parse_msg(unframed: &Unframed<'_>, limits: &Limits) -> Result<OpMsg, WireError> {
    let body: &[u8] = &unframed.body;
    let (flag_bytes, mut sections) = body.split_first_chunk::<4>().ok_or(WireError::Malformed {
        reason: "OP_MSG is missing its flagBits",
    })?;
    let flags = u32::from_le_bytes(*flag_bytes);
    if flags & msg_flags::REQUIRED_MASK & !msg_flags::KNOWN_REQUIRED != 0 {
        return Err(WireError::IllegalFlags { flags });
    }

    // Verified before the sections are parsed so that corruption is reported as such, not as
    // whatever parse error the damaged bytes happen to cause.
    if flags & msg_flags::CHECKSUM_PRESENT != 0 {
        sections = verify_checksum(unframed, flag_bytes, sections)?;
    }

    let mut r = Reader::new(sections);
    let mut body_doc: Option<RawDocumentBuf> = None;
    let mut sequences: Vec<DocumentSequence> = Vec::new();
    let mut total_documents = 0usize;
    while !r.is_empty() {
        match r.u8("OP_MSG section kind")? {
            0 => {
                if body_doc.is_some() {
                    return Err(WireError::MultipleBodies);
                }
                body_doc = Some(read_document(&mut r, limits, || "OP_MSG body".to_owned())?);
            }
            1 => {
                if sequences.len() >= MAX_DOCUMENT_SEQUENCES {
                    return Err(WireError::TooManyDocumentSequences {
                        max: MAX_DOCUMENT_SEQUENCES,
                    });
                }
                let sequence = read_sequence(&mut r, limits, &mut total_documents)?;
                if sequences
                    .iter()
                    .any(|s| s.identifier == sequence.identifier)
                {
                    return Err(WireError::DuplicateSequence {
                        identifier: sequence.identifier,
                    });
                }
                sequences.push(sequence);
            }
            kind => return Err(WireError::UnknownSectionKind { kind }),
        }
    }
    let body = body_doc.ok_or(WireError::MissingBody)?;
    if let Some(conflict) = sequences
        .iter()
        .find(|s| body_has_path(&body, &s.identifier))
    {
        return Err(WireError::SequenceConflictsWithBody {
            identifier: conflict.identifier.clone(),
        });
    }
    Ok(OpMsg {
        flags,
        body,
        sequences,
    })
}

fn read_sequence(
    r: &mut Reader<'_>,
    limits: &Limits,
    total_documents: &mut usize,
) -> Result<DocumentSequence, WireError> {
    let size = r.i32("document sequence is missing its size")?;
    // The size counts its own four bytes; anything smaller cannot even hold the identifier's
    // terminator.
    let content_len = usize::try_from(size)
        .ok()
        .and_then(|size| size.checked_sub(4))
        .filter(|&len| len >= 1)
        .ok_or(WireError::Malformed {
            reason: "document sequence size is too small",
        })?;
    let content = r.take(
        content_len,
        "document sequence runs past the end of the message",
    )?;
    let mut seq = Reader::new(content);
    let identifier = seq.cstr("document sequence identifier is not NUL-terminated")?;
    let identifier = std::str::from_utf8(identifier)
        .map_err(|_| WireError::Malformed {
            reason: "document sequence identifier is not valid UTF-8",
        })?
        .to_owned();
    let mut documents = Vec::new();
    while !seq.is_empty() {
        if *total_documents >= MAX_DOCUMENTS_PER_MESSAGE {
            return Err(WireError::TooManyDocuments {
                max: MAX_DOCUMENTS_PER_MESSAGE,
            });
        }
        *total_documents = total_documents.saturating_add(1);
        let context = || format!("document {} of sequence {identifier:?}", documents.len());
        documents.push(read_document(&mut seq, limits, context)?);
    }
    Ok(DocumentSequence {
        identifier,
        documents,
    })
}

fn parse_query(body: &[u8], limits: &Limits) -> Result<OpQuery, WireError> {
    let mut r = Reader::new(body);
    let flags = r.u32("OP_QUERY is missing its flags")?;
    let name = r.cstr("OP_QUERY fullCollectionName is not NUL-terminated")?;
    let full_collection_name = std::str::from_utf8(name)
        .map_err(|_| WireError::Malformed {
            reason: "OP_QUERY fullCollectionName is not valid UTF-8",
        })?
        .to_owned();
    let number_to_skip = r.i32("OP_QUERY is missing numberToSkip")?;
    let number_to_return = r.i32("OP_QUERY is missing numberToReturn")?;
    let query = read_document(&mut r, limits, || "OP_QUERY query".to_owned())?;
    let return_fields_selector = if r.is_empty() {
        None
    } else {
        Some(read_document(&mut r, limits, || {
            "OP_QUERY returnFieldsSelector".to_owned()
        })?)
    };
    if !r.is_empty() {
        return Err(WireError::Malformed {
            reason: "trailing bytes after OP_QUERY returnFieldsSelector",
        });
    }
    Ok(OpQuery {
        flags,
        full_collection_name,
        number_to_skip,
        number_to_return,
        query,
        return_fields_selector,
    })
}

/// Reads, bounds and fully validates one document. `context` names it in errors and is only
/// evaluated on failure, keeping the success path free of formatting.
fn read_document(
    r: &mut Reader<'_>,
    limits: &Limits,
    context: impl Fn() -> String,
) -> Result<RawDocumentBuf, WireError> {
    let invalid = |reason: &str| WireError::InvalidBson {
        context: context(),
        reason: reason.to_owned(),
    };
    let size = r
        .peek_i32()
        .ok_or_else(|| invalid("document is cut off before its length"))?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&size| size >= 5)
        .ok_or_else(|| invalid("document length is smaller than 5"))?;
    let max = limits.max_document_size();
    if size > max {
        return Err(WireError::DocumentTooLarge {
            context: context(),
            size,
            max,
        });
    }
    let bytes = r
        .take(size, "document runs past the end of its section")
        .map_err(|_| invalid("document runs past the end of its section"))?;
    bson_check::validate(bytes).map_err(|problem| match problem {
        BsonProblem::TooDeep => WireError::BsonTooDeep {
            context: context(),
            max: crate::header::MAX_BSON_DEPTH,
        },
        other => WireError::InvalidBson {
            context: context(),
            reason: other.to_string(),
        },
    })?;
    RawDocumentBuf::from_bytes(bytes.to_vec()).map_err(|e| invalid(&e.to_string()))
}

/// Whether `path` (possibly dotted) names a field of `doc`, which would make a document
/// sequence of that name ambiguous. Only embedded documents are descended into; mongod also
/// walks arrays, but no command puts a sequence identifier under an array.
fn body_has_path(doc: &RawDocument, path: &str) -> bool {
    let mut current = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            Ok(Some(_)) if parts.peek().is_none() => return true,
            Ok(Some(RawBsonRef::Document(inner))) => current = inner,
            _ => return false,
        }
    }
    false
}

/// A bounds-checked reader over a frame body. Every failure names what was being read, since
/// these become client-visible error messages.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], WireError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(WireError::Malformed { reason })?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, reason: &'static str) -> Result<[u8; N], WireError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(WireError::Malformed { reason })?;
        self.buf = tail;
        Ok(*head)
    }

    fn u8(&mut self, reason: &'static str) -> Result<u8, WireError> {
        self.array::<1>(reason).map(|[b]| b)
    }

    fn i32(&mut self, reason: &'static str) -> Result<i32, WireError> {
        self.array(reason).map(i32::from_le_bytes)
    }

    fn u32(&mut self, reason: &'static str) -> Result<u32, WireError> {
        self.array(reason).map(u32::from_le_bytes)
    }

    fn i64(&mut self, reason: &'static str) -> Result<i64, WireError> {
        self.array(reason).map(i64::from_le_bytes)
    }

    fn peek_i32(&self) -> Option<i32> {
        self.buf.first_chunk::<4>().map(|b| i32::from_le_bytes(*b))
    }

    /// The bytes before the next NUL, consuming the NUL too.
    fn cstr(&mut self, reason: &'static str) -> Result<&'a [u8], WireError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Malformed { reason })?;
        let text = self.take(nul, reason)?;
        self.take(1, reason)?;
        Ok(text)
    }
}
