//! A command's reply, and what every reply carries on its way out (`operationTime` and
//! `$clusterTime`, as a replica-set member's replies do). Commands build replies; the
//! connection decorates and sends them.

use bson::{Document, RawDocumentBuf, doc};

use std::sync::Arc;

use crate::Shared;

pub(crate) enum Reply {
    Doc(Document),
    /// Replies that embed stored documents are built raw, so documents are copied once, into
    /// the reply, and never converted.
    Raw(RawDocumentBuf),
    /// A raw reply around bytes shared with other replies (see [`Segmented`]).
    Segmented(Segmented),
}

/// A reply document in three parts whose middle is shared, not copied: the events of a batch
/// that every change stream standing at the same place returns (`changes/board.rs`). `head`
/// opens the document down to where `middle` goes and `tail` closes it; the lengths written
/// in `head` count all three parts. Only `tail` grows ([`Segmented::append`]): fields added to
/// the outer document go at its end.
pub(crate) struct Segmented {
    head: Vec<u8>,
    middle: Arc<dyn AsRef<[u8]> + Send + Sync>,
    tail: Vec<u8>,
}

impl Segmented {
    pub fn new(
        head: Vec<u8>,
        middle: Arc<dyn AsRef<[u8]> + Send + Sync>,
        tail: Vec<u8>,
    ) -> Segmented {
        let segmented = Segmented { head, middle, tail };
        debug_assert!(
            RawDocumentBuf::from_bytes(segmented.parts().concat()).is_ok(),
            "the parts make one document"
        );
        segmented
    }

    /// The document's bytes, in order.
    pub fn parts(&self) -> [&[u8]; 3] {
        [&self.head, self.middle.as_ref().as_ref(), &self.tail]
    }

    pub fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }

    /// The whole document in one buffer, for what needs one (a compressed or legacy reply,
    /// the profiler).
    pub fn to_raw(&self) -> RawDocumentBuf {
        RawDocumentBuf::from_bytes(self.parts().concat()).unwrap_or_default()
    }

    /// Appends `fields`' elements to the outer document.
    pub fn append(&mut self, fields: &bson::RawDocument) {
        let elements = &fields.as_bytes()[4..fields.as_bytes().len() - 1];
        debug_assert_eq!(self.tail.last(), Some(&0));
        self.tail.pop();
        self.tail.extend_from_slice(elements);
        self.tail.push(0);
        let len = i32::try_from(self.len()).unwrap_or(i32::MAX);
        self.head[..4].copy_from_slice(&len.to_le_bytes());
    }
}

impl From<Document> for Reply {
    fn from(d: Document) -> Self {
        Reply::Doc(d)
    }
}

/// `$clusterTime` as a one-node replica set gossips it: unsigned, since there is no key to
/// sign with.
fn cluster_time(ts: bson::Timestamp) -> Document {
    doc! {
        "clusterTime": ts,
        "signature": {
            "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] },
            "keyId": 0i64,
        },
    }
}

/// Where `clusterTime`'s value lies in the raw `$clusterTime`: after the document's length, the
/// element's type byte and its NUL-terminated name.
const CLUSTER_TIME_AT: usize = 4 + 1 + "clusterTime".len() + 1;

/// The raw `$clusterTime` for `ts`: a template built once with its timestamp's eight bytes
/// patched, since every reply carries one.
fn cluster_time_raw(ts: bson::Timestamp) -> RawDocumentBuf {
    static TEMPLATE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let zero = bson::Timestamp {
            time: 0,
            increment: 0,
        };
        let raw = RawDocumentBuf::try_from(&cluster_time(zero)).expect("a fixed document");
        raw.into_bytes()
    });
    let mut bytes = TEMPLATE.clone();
    // BSON's timestamp: the increment, then the seconds, each little-endian.
    let value = (u64::from(ts.time) << 32) | u64::from(ts.increment);
    bytes[CLUSTER_TIME_AT..CLUSTER_TIME_AT + 8].copy_from_slice(&value.to_le_bytes());
    let raw = RawDocumentBuf::from_bytes(bytes).expect("the template with a timestamp patched");
    debug_assert_eq!(raw.get_timestamp("clusterTime").ok(), Some(ts));
    raw
}

/// Appends `$clusterTime` and `operationTime`, which every replica-set reply carries.
pub(crate) fn decorate_raw(shared: &Shared, reply: &mut RawDocumentBuf) {
    let ts = shared.engine.last_commit().to_bson();
    reply.append(bson::raw::cstr!("$clusterTime"), cluster_time_raw(ts));
    reply.append(bson::raw::cstr!("operationTime"), ts);
}

/// [`decorate_raw`] for a segmented reply.
pub(crate) fn decorate_segmented(shared: &Shared, reply: &mut Segmented) {
    let mut fields = RawDocumentBuf::new();
    decorate_raw(shared, &mut fields);
    reply.append(&fields);
}

#[cfg(test)]
mod tests {
    use super::{cluster_time, cluster_time_raw};

    #[test]
    fn the_raw_cluster_time_is_the_document_with_its_timestamp() {
        for (time, increment) in [(0, 0), (1, 2), (1_796_526_034, 77), (u32::MAX, u32::MAX)] {
            let ts = bson::Timestamp { time, increment };
            let raw = cluster_time_raw(ts);
            let expected = bson::RawDocumentBuf::try_from(&cluster_time(ts)).unwrap();
            assert_eq!(raw.as_bytes(), expected.as_bytes(), "{ts:?}");
        }
    }
}
