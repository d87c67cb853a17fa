//! MongoDB wire-protocol framing for Mangrove.
//!
//! This crate turns byte frames into typed requests and typed replies back into byte frames.
//! It knows nothing about commands: it only delimits, decompresses, checksums and validates.
//! Everything that reaches the rest of the server has been checked here, so a document handed
//! out by [`decode`] is structurally valid BSON that the `bson` crate can walk without errors.
//!
//! The server reads the 16 header bytes, parses them with [`Header::parse`], asks
//! [`frame_length`] how much to read (this is where oversized or nonsensical length prefixes are
//! refused before any allocation), then hands the whole frame to [`decode`]. Replies are built
//! with [`encode_msg`] (OP_MSG) or [`encode_reply`] (OP_REPLY, for legacy OP_QUERY
//! commands).

mod bson_check;
mod compression;
mod decode;
mod encode;
mod error;
mod header;
mod message;

#[cfg(test)]
mod tests;

pub use compression::Compressor;
pub use decode::{decode, decode_reply, peek_msg_flags, peek_op_code};
pub use encode::{MsgFrame, encode_msg, encode_query, encode_reply};
pub use error::WireError;
pub use header::{
    BSON_INTERNAL_SLACK, DEFAULT_MAX_BSON_SIZE, DEFAULT_MAX_MESSAGE_SIZE, HEADER_LEN, Header,
    Limits, MAX_BSON_DEPTH, MAX_DOCUMENT_SEQUENCES, MAX_DOCUMENTS_PER_MESSAGE, frame_length,
};
pub use message::{DocumentSequence, Message, OpMsg, OpQuery, OpReply, ReplyMessage, Request};

/// Operation codes this crate understands.
pub mod opcode {
    pub const OP_REPLY: i32 = 1;
    pub const OP_QUERY: i32 = 2004;
    pub const OP_COMPRESSED: i32 = 2012;
    pub const OP_MSG: i32 = 2013;

    /// The legacy opcodes mongod 5.0 still answered; only OP_QUERY on `<db>.$cmd` is
    /// answered here, the others are refused.
    pub const OP_UPDATE: i32 = 2001;
    pub const OP_INSERT: i32 = 2002;
    pub const OP_GET_MORE: i32 = 2005;
    pub const OP_DELETE: i32 = 2006;
    pub const OP_KILL_CURSORS: i32 = 2007;

    /// A legacy request opcode, whose clients read replies only as OP_REPLY.
    pub fn is_legacy(op_code: i32) -> bool {
        matches!(
            op_code,
            OP_UPDATE | OP_INSERT | OP_QUERY | OP_GET_MORE | OP_DELETE | OP_KILL_CURSORS
        )
    }

    /// The name of a request opcode, for error messages.
    pub fn name(op_code: i32) -> Option<&'static str> {
        Some(match op_code {
            OP_REPLY => "OP_REPLY",
            OP_UPDATE => "OP_UPDATE",
            OP_INSERT => "OP_INSERT",
            OP_QUERY => "OP_QUERY",
            OP_GET_MORE => "OP_GET_MORE",
            OP_DELETE => "OP_DELETE",
            OP_KILL_CURSORS => "OP_KILL_CURSORS",
            OP_COMPRESSED => "OP_COMPRESSED",
            OP_MSG => "OP_MSG",
            _ => return None,
        })
    }
}

/// OP_MSG flag bits.
pub mod msg_flags {
    pub const CHECKSUM_PRESENT: u32 = 1;
    pub const MORE_TO_COME: u32 = 2;
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;

    /// The low 16 bits are "required": a receiver that does not understand one of them must
    /// refuse the message. The high 16 bits are optional and may be ignored.
    pub const REQUIRED_MASK: u32 = 0xffff;

    /// Required bits this implementation understands.
    pub const KNOWN_REQUIRED: u32 = CHECKSUM_PRESENT | MORE_TO_COME;
}
