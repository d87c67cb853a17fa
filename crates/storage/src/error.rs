/// What the engine can refuse. The server maps each to MongoDB's code, codeName and labels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StorageError {
    /// Another open transaction holds the intent on this document, or a transaction committed a
    /// newer version after this transaction's snapshot was taken.
    #[error(
        "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction."
    )]
    WriteConflict,
    #[error("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}")]
    DuplicateKey { ns: String, id: Box<bson::Bson> },
    #[error("ns does not exist: {0}")]
    NamespaceNotFound(String),
    #[error("Collection {0} already exists.")]
    NamespaceExists(String),
    /// The transaction was already committed or aborted; a programming error in the caller.
    #[error("transaction is no longer open")]
    TxnClosed,
}
