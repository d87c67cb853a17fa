use bson::RawDocumentBuf;

use crate::compression::Compressor;
use crate::header::Header;
use crate::msg_flags;
use crate::opcode;

/// One decoded request frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The outer header as received (for OP_COMPRESSED, the compressed frame's header).
    pub header: Header,
    /// Some when the request arrived in OP_COMPRESSED with a real compressor; the reply must
    /// use the same one. The noop compressor (id 0) yields None, since replying "compressed"
    /// with noop would only add overhead.
    pub compressor: Option<Compressor>,
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Msg(OpMsg),
    Query(OpQuery),
}

impl Request {
    /// The opcode the reply must mirror: OP_MSG answers OP_MSG, OP_REPLY answers OP_QUERY.
    pub fn op_code(&self) -> i32 {
        match self {
            Request::Msg(_) => opcode::OP_MSG,
            Request::Query(_) => opcode::OP_QUERY,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpMsg {
    pub flags: u32,
    pub body: RawDocumentBuf,
    pub sequences: Vec<DocumentSequence>,
}

impl OpMsg {
    /// The client expects no reply to this request.
    pub fn more_to_come(&self) -> bool {
        self.flags & msg_flags::MORE_TO_COME != 0
    }

    /// The client accepts a stream of replies flagged moreToCome.
    pub fn exhaust_allowed(&self) -> bool {
        self.flags & msg_flags::EXHAUST_ALLOWED != 0
    }

    pub fn sequence(&self, identifier: &str) -> Option<&DocumentSequence> {
        self.sequences.iter().find(|s| s.identifier == identifier)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DocumentSequence {
    pub identifier: String,
    pub documents: Vec<RawDocumentBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpQuery {
    pub flags: u32,
    pub full_collection_name: String,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    pub query: RawDocumentBuf,
    pub return_fields_selector: Option<RawDocumentBuf>,
}

/// The body of an OP_REPLY; only clients (and tests acting as one) decode these.
#[derive(Clone, Debug, PartialEq)]
pub struct OpReply {
    pub response_flags: i32,
    pub cursor_id: i64,
    pub starting_from: i32,
    pub documents: Vec<RawDocumentBuf>,
}

/// One decoded OP_REPLY frame, see [`crate::decode_reply`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyMessage {
    pub header: Header,
    pub compressor: Option<Compressor>,
    pub reply: OpReply,
}
