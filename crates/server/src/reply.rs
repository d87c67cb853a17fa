//! A command's reply, and what every reply carries on its way out (`operationTime` and
//! `$clusterTime`, as a replica-set member's replies do). Commands build replies; the
//! connection decorates and sends them.

use bson::{Document, RawDocumentBuf, doc};

use crate::Shared;

pub(crate) enum Reply {
    Doc(Document),
    /// Replies that embed stored documents are built raw, so documents are copied once, into
    /// the reply, and never converted.
    Raw(RawDocumentBuf),
}

impl From<Document> for Reply {
    fn from(d: Document) -> Self {
        Reply::Doc(d)
    }
}

/// `$clusterTime` as a one-node replica set gossips it: unsigned, since there is no auth.
fn cluster_time(shared: &Shared) -> (bson::Timestamp, Document) {
    let ts = shared.engine.last_commit().to_bson();
    let ct = doc! {
        "clusterTime": ts,
        "signature": {
            "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] },
            "keyId": 0i64,
        },
    };
    (ts, ct)
}

/// Adds `operationTime` and `$clusterTime`, which every replica-set reply carries.
pub(crate) fn decorate(shared: &Shared, reply: &mut Document) {
    let (ts, ct) = cluster_time(shared);
    reply.insert("$clusterTime", ct);
    reply.insert("operationTime", ts);
}

pub(crate) fn decorate_raw(shared: &Shared, reply: &mut RawDocumentBuf) {
    let (ts, ct) = cluster_time(shared);
    if let Ok(ct) = RawDocumentBuf::try_from(&ct) {
        reply.append(bson::raw::cstr!("$clusterTime"), ct);
    }
    reply.append(bson::raw::cstr!("operationTime"), ts);
}
