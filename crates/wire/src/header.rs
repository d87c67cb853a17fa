use crate::error::WireError;

/// Size of the standard message header that starts every frame.
pub const HEADER_LEN: usize = 16;

/// mongod's `maxMessageSizeBytes`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 48_000_000;

/// mongod's `maxBsonObjectSize`.
pub const DEFAULT_MAX_BSON_SIZE: usize = 16 * 1024 * 1024;

/// Extra room a single document may take on the wire beyond `max_bson_size`.
///
/// mongod checks wire documents against `BSONObjMaxInternalSize` (16 MiB + 16 KiB), not the user
/// limit, so that a command wrapping a maximum-size user document (an update statement, a
/// findAndModify replacement) still fits. The user-size limit is enforced by the commands
/// themselves, which can then report it per document the way mongod does.
pub const BSON_INTERNAL_SLACK: usize = 16 * 1024;

/// Deepest nesting accepted below a top-level document.
///
/// Matches mongod's default `maxBSONDepth` of 200 for wire validation (its storage limit of
/// 100 is stricter, but that is for the storage layer to enforce). It also bounds the recursion
/// of our validator, so hostile nesting cannot exhaust the stack.
pub const MAX_BSON_DEPTH: usize = 200;

/// Most kind-1 sections accepted in one OP_MSG.
///
/// Real commands use one or two (`documents`, `updates`, `deletes`, bulkWrite's `ops` and
/// `nsInfo`); the cap stops a frame of millions of empty sequences from costing far more
/// memory than its size.
pub const MAX_DOCUMENT_SEQUENCES: usize = 64;

/// Most documents accepted across all kind-1 sections (or in one OP_REPLY).
///
/// Ten times mongod's `maxWriteBatchSize` (100,000), so no driver comes close; without it a
/// 48 MB frame of 5-byte empty documents would expand to roughly half a gigabyte of small
/// allocations.
pub const MAX_DOCUMENTS_PER_MESSAGE: usize = 1_000_000;

/// The standard header at the start of every frame, fields in wire order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub message_length: i32,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        // Destructuring a fixed-size array cannot fail, unlike slicing.
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *bytes;
        Header {
            message_length: i32::from_le_bytes([a, b, c, d]),
            request_id: i32::from_le_bytes([e, f, g, h]),
            response_to: i32::from_le_bytes([i, j, k, l]),
            op_code: i32::from_le_bytes([m, n, o, p]),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields = [
            self.message_length,
            self.request_id,
            self.response_to,
            self.op_code,
        ];
        for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&field.to_le_bytes());
        }
        out
    }
}

/// Size limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest frame accepted, header included; also caps the size an OP_COMPRESSED frame may
    /// claim to decompress to.
    pub max_message_size: usize,
    /// The user document limit; wire documents may exceed it by [`BSON_INTERNAL_SLACK`].
    pub max_bson_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_bson_size: DEFAULT_MAX_BSON_SIZE,
        }
    }
}

impl Limits {
    /// Largest single document accepted inside a frame.
    pub fn max_document_size(&self) -> usize {
        self.max_bson_size.saturating_add(BSON_INTERNAL_SLACK)
    }
}

/// Called by the server after reading the 16 header bytes and before reading the rest:
/// returns the total frame length (header included), or an error if the declared length is
/// smaller than a header or larger than `limits.max_message_size`. Every error here is fatal:
/// the stream cannot be resynchronised once a length prefix is untrustworthy. A length that is
/// plausible but too short for its opcode still delimits a frame, so it is read and then
/// answered with an error by `decode`, keeping the connection.
pub fn frame_length(header: &Header, limits: &Limits) -> Result<usize, WireError> {
    let minimum = HEADER_LEN;
    let length = usize::try_from(header.message_length).ok();
    match length {
        Some(length) if length > limits.max_message_size => Err(WireError::MessageTooLarge {
            length,
            max: limits.max_message_size,
        }),
        Some(length) if length >= minimum => Ok(length),
        _ => Err(WireError::BadMessageLength {
            length: header.message_length,
            op_code: header.op_code,
            minimum,
        }),
    }
}
