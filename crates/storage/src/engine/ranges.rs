//! Key ranges and overlays, for every read: a range of keys narrowed past a resume point,
//! a transaction's own writes within a range, and the merge of an authoritative overlay over
//! an ordered scan (memory over the base store, or a transaction's writes over its snapshot).
//!
//! Invariants: overlay and scan come in the same key order (ascending, or descending when
//! `reverse`); an overlay entry hides the scanned one under its key.
//!
//! Lock order: no locks of its own; the scans it merges hold `Inner::state` (read) while they
//! visit (see the engine's lock order, `engine.rs`).

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use mangrove_bson::KeyInterval;

use super::{CollId, DocKey, StoredDoc};
use crate::StorageError;

/// Merges an authoritative `overlay` (keys in order, each with its document or `None` where it
/// hides one) over the documents `drive` delivers in key order, visiting what is visible until
/// `visit` breaks. Both a snapshot (memory over the base store) and a transaction (its own
/// writes over its snapshot) read this way.
pub(super) fn merge_overlay<'a>(
    overlay: impl Iterator<Item = (&'a DocKey, Option<&'a StoredDoc>)>,
    drive: impl FnOnce(
        &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>,
    reverse: bool,
    visit: &mut impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> Result<(), StorageError> {
    let mut overlay = overlay.peekable();
    let mut stopped = false;
    // Both sides come in the same order, ascending or (reverse) descending.
    let before = |own: &DocKey, key: &DocKey| if reverse { own > key } else { own < key };
    drive(&mut |key, doc| {
        while let Some((own_key, own_doc)) = overlay.next_if(|(k, _)| before(k, key)) {
            if let Some(d) = own_doc
                && visit(own_key, d).is_break()
            {
                stopped = true;
                return ControlFlow::Break(());
            }
        }
        let flow = match overlay.next_if(|(k, _)| *k == key) {
            Some((own_key, Some(own_doc))) => visit(own_key, own_doc),
            Some((_, None)) => ControlFlow::Continue(()),
            None => visit(key, doc),
        };
        stopped = flow.is_break();
        flow
    })?;
    if !stopped {
        for (key, doc) in overlay {
            if let Some(d) = doc
                && visit(key, d).is_break()
            {
                break;
            }
        }
    }
    Ok(())
}

/// An interval narrowed to the keys past `resume` (above it, or below it when `reverse`), as
/// owned bounds over keys.
pub(super) fn index_range(
    interval: &KeyInterval,
    resume: Option<&DocKey>,
    reverse: bool,
) -> (Bound<DocKey>, Bound<DocKey>) {
    let own = |b: &Bound<Vec<u8>>| match b {
        Bound::Included(k) => Bound::Included(DocKey(k.clone())),
        Bound::Excluded(k) => Bound::Excluded(DocKey(k.clone())),
        Bound::Unbounded => Bound::Unbounded,
    };
    let (mut lower, mut upper) = (own(&interval.0), own(&interval.1));
    if let Some(resume) = resume {
        if reverse {
            // A backward walk resumes below the last key it returned.
            let within = match &upper {
                Bound::Included(u) | Bound::Excluded(u) => resume <= u,
                Bound::Unbounded => true,
            };
            if within {
                upper = Bound::Excluded(resume.clone());
            }
        } else {
            let within = match &lower {
                Bound::Included(l) | Bound::Excluded(l) => resume >= l,
                Bound::Unbounded => true,
            };
            if within {
                lower = Bound::Excluded(resume.clone());
            }
        }
    }
    (lower, upper)
}

/// A transaction's own writes to one keyspace within the bounds, ascending or (reverse)
/// descending: the overlay its reads merge over the snapshot.
pub(super) fn own_range<'a, V>(
    writes: &'a BTreeMap<(CollId, DocKey), V>,
    id: CollId,
    lower: &Bound<DocKey>,
    upper: &Bound<DocKey>,
    reverse: bool,
) -> Box<dyn Iterator<Item = (&'a DocKey, &'a V)> + 'a> {
    let within = |b: &Bound<DocKey>| match b {
        Bound::Included(k) => Bound::Included((id, k.clone())),
        Bound::Excluded(k) => Bound::Excluded((id, k.clone())),
        Bound::Unbounded => Bound::Unbounded,
    };
    let lower = match lower {
        Bound::Unbounded => Bound::Included((id, DocKey(Vec::new()))),
        b => within(b),
    };
    let upper = match upper {
        Bound::Unbounded => Bound::Excluded((id + 1, DocKey(Vec::new()))),
        b => within(b),
    };
    let range = writes.range((lower, upper)).map(|((_, key), v)| (key, v));
    if reverse {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

pub(super) fn empty_range(lower: Bound<&DocKey>, upper: Bound<&DocKey>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
            l >= u
        }
        _ => false,
    }
}

pub(super) fn as_ref_bound(b: &Bound<DocKey>) -> Bound<&DocKey> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}
