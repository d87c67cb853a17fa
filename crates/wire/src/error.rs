/// Everything that can go wrong while framing or unframing a message.
///
/// Each variant knows whether the connection can survive it ([`WireError::is_fatal`]) and which
/// MongoDB error code an error reply should carry ([`WireError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("truncated message: need at least {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },

    #[error("message length {length} is invalid for opcode {op_code}: minimum is {minimum}")]
    BadMessageLength {
        length: i32,
        op_code: i32,
        minimum: usize,
    },

    #[error("message length {length} exceeds the maximum message size of {max} bytes")]
    MessageTooLarge { length: usize, max: usize },

    #[error("frame is {actual} bytes but its header declares {declared}")]
    LengthMismatch { declared: usize, actual: usize },

    #[error("OP_MSG contains illegal flag bits: {flags:#034b}")]
    IllegalFlags { flags: u32 },

    #[error(
        "OP_MSG checksum does not match contents (sent {sent:#010x}, computed {computed:#010x})"
    )]
    ChecksumMismatch { sent: u32, computed: u32 },

    #[error("too many document sequences in OP_MSG (at most {max})")]
    TooManyDocumentSequences { max: usize },

    #[error("{}", unsupported_op_code(*op_code))]
    UnsupportedOpCode { op_code: i32 },

    #[error("OP_COMPRESSED may not wrap another OP_COMPRESSED")]
    NestedCompression,

    #[error("compressor id {id} is not available")]
    UnknownCompressor { id: u8 },

    #[error("OP_COMPRESSED declares an uncompressed size of {declared} bytes; at most {max} fit")]
    UncompressedSizeTooLarge { declared: i64, max: usize },

    #[error("OP_COMPRESSED declares {declared} uncompressed bytes but the payload holds {actual}")]
    UncompressedSizeMismatch { declared: usize, actual: usize },

    #[error("{compressor} decompression failed: {reason}")]
    DecompressionFailed {
        compressor: &'static str,
        reason: String,
    },

    #[error("OP_MSG has multiple body sections")]
    MultipleBodies,

    #[error("OP_MSG has no body section")]
    MissingBody,

    #[error("unknown OP_MSG section kind {kind}")]
    UnknownSectionKind { kind: u8 },

    #[error("duplicate document sequence: {identifier}")]
    DuplicateSequence { identifier: String },

    #[error("field {identifier} appears both in the body and as a document sequence")]
    SequenceConflictsWithBody { identifier: String },

    #[error("too many documents in one message (at most {max})")]
    TooManyDocuments { max: usize },

    #[error("malformed message: {reason}")]
    Malformed { reason: &'static str },

    #[error("invalid BSON in {context}: {reason}")]
    InvalidBson { context: String, reason: String },

    #[error("BSON document in {context} exceeds the maximum nesting depth of {max}")]
    BsonTooDeep { context: String, max: usize },

    #[error("BSON document in {context} is {size} bytes; the maximum is {max}")]
    DocumentTooLarge {
        context: String,
        size: usize,
        max: usize,
    },
}

impl WireError {
    /// true when the byte stream can no longer be trusted (bad length prefix, frame over the
    /// limit) and the server must close the connection; false when the frame was well
    /// delimited and the server can still answer with an error reply.
    ///
    /// Only broken framing is fatal. mongod also closes the connection on illegal OP_MSG flag
    /// bits, checksum mismatches and too many document sequences
    /// (`ConnectionFatalMessageParseError`); Mangrove answers those with an error instead, since
    /// the frame is intact and an error reply tells the client what went wrong, where a closed
    /// socket only looks like a network failure.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WireError::Truncated { .. }
                | WireError::BadMessageLength { .. }
                | WireError::MessageTooLarge { .. }
                | WireError::LengthMismatch { .. }
        )
    }

    /// MongoDB's error code and codeName for the error reply.
    pub fn code(&self) -> (i32, &'static str) {
        match self {
            // mongod's transport layer: "recv(): message msgLen N is invalid. Min 16 Max:
            // 48000000" is ProtocolError. A frame that disagrees with its own header is the
            // same kind of failure.
            WireError::Truncated { .. }
            | WireError::BadMessageLength { .. }
            | WireError::MessageTooLarge { .. }
            | WireError::LengthMismatch { .. } => (17, "ProtocolError"),
            // OpMsg::parse.
            WireError::IllegalFlags { .. } => (223, "IllegalOpMsgFlag"),
            WireError::ChecksumMismatch { .. } => (288, "ChecksumMismatch"),
            WireError::TooManyDocumentSequences { .. } => (233, "TooManyDocumentSequences"),
            WireError::MultipleBodies => (40430, "Location40430"),
            WireError::DuplicateSequence { .. } => (40431, "Location40431"),
            WireError::UnknownSectionKind { .. } => (40432, "Location40432"),
            WireError::SequenceConflictsWithBody { .. } => (40433, "Location40433"),
            WireError::MissingBody => (40587, "Location40587"),
            // MessageCompressorManager::decompressMessage answers an unknown compressor id
            // with InternalError, and an oversized or mismatched uncompressed size, like the
            // compressors' own "invalid or corrupted" failures, with BadValue.
            WireError::UnknownCompressor { .. } => (1, "InternalError"),
            WireError::UncompressedSizeTooLarge { .. }
            | WireError::UncompressedSizeMismatch { .. }
            | WireError::DecompressionFailed { .. } => (2, "BadValue"),
            // mongod has no single code here: it logs unsupported opcodes and drops them, and
            // never sees nested compression because it decompresses once and dispatches. Our
            // choice; the server may prefer to close the connection instead.
            WireError::UnsupportedOpCode { .. } | WireError::NestedCompression => (2, "BadValue"),
            // Our own cap (see MAX_DOCUMENTS_PER_MESSAGE); mongod's nearest equivalent, the
            // write batch size check, uses InvalidLength.
            WireError::TooManyDocuments { .. } => (16, "InvalidLength"),
            // Structural damage outside any BSON document (a section running past the end,
            // a missing cstring terminator, trailing bytes). mongod's buffer reader fails
            // these with a generic error; FailedToParse is our choice.
            WireError::Malformed { .. } => (9, "FailedToParse"),
            // BSON validation.
            WireError::InvalidBson { .. } => (22, "InvalidBSON"),
            WireError::BsonTooDeep { .. } => (15, "Overflow"),
            // "BSONObj size: N (0x..) is invalid. Size must be between 0 and 16793600(16MB)".
            WireError::DocumentTooLarge { .. } => (10334, "BSONObjectTooLarge"),
        }
    }
}

/// Names the opcode and, for the legacy ones, says what to use instead.
fn unsupported_op_code(op_code: i32) -> String {
    match crate::opcode::name(op_code) {
        Some(name) if crate::opcode::is_legacy(op_code) => format!(
            "unsupported opcode {op_code} ({name}): this legacy opcode was removed in MongoDB \
             5.1 and Mangrove does not answer it (only commands sent as OP_QUERY to \
             <db>.$cmd are); use a driver that speaks OP_MSG (MongoDB 3.6 or later drivers)"
        ),
        Some(name) => format!("unsupported opcode {op_code} ({name}) for a request"),
        None => format!("unsupported opcode {op_code}"),
    }
}
