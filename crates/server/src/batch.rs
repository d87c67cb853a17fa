//! What a reply batch holds, and how large it may grow: shared by cursors and the pipeline
//! input that feeds them.

use bson::RawDocumentBuf;
use bson::raw::RawDocument;
use mangrove_storage::StoredDoc;

/// A batch never exceeds this many bytes of documents (plus one document, so that a single large
/// document still makes progress), as mongod bounds its replies.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Documents as a batch holds them: stored ones are shared, not copied, until serialized.
pub enum BatchDoc {
    Stored(StoredDoc),
    Owned(RawDocumentBuf),
}

impl BatchDoc {
    pub fn as_raw(&self) -> &RawDocument {
        match self {
            BatchDoc::Stored(d) => d,
            BatchDoc::Owned(d) => d,
        }
    }
}
