//! `$setWindowFields` past its memory limit under `allowDiskUse`: its input, sorted by
//! partition and `sortBy` through the spilling sort (`stream.rs`), is read back one partition
//! at a time, and each partition's output is answered before the next is read.
//!
//! Invariants:
//! - Partitions come whole and in order: the sort puts equal partition values together, and a
//!   partition ends at the first entry whose partition key differs (kept for the next).
//! - Memory holds one partition and its output, bounded by `Limits::stage_bytes` (a single
//!   partition larger than that fails with 5643011, as the stage does without spilling).

use std::collections::VecDeque;

use bson::{Bson, RawDocument, RawDocumentBuf};

use crate::QueryError;
use crate::limits::Limits;
use crate::window::{Window, part_key, run_partition};

/// The sorted input: each document with its partition value.
pub(crate) type Entries =
    Box<dyn Iterator<Item = Result<(Bson, RawDocumentBuf), QueryError>> + Send>;

pub(crate) struct WindowStream {
    entries: Entries,
    /// The first entry of the next partition, read past the current one.
    ahead: Option<(Bson, RawDocumentBuf)>,
    out: VecDeque<RawDocumentBuf>,
}

impl WindowStream {
    pub(crate) fn new(entries: Entries) -> WindowStream {
        WindowStream {
            entries,
            ahead: None,
            out: VecDeque::new(),
        }
    }

    /// The next output document, computing the next partition when the last one is answered.
    pub(crate) fn next(
        &mut self,
        w: &Window,
        limits: &Limits,
    ) -> Result<Option<RawDocumentBuf>, QueryError> {
        loop {
            if let Some(d) = self.out.pop_front() {
                return Ok(Some(d));
            }
            let Some(part) = self.next_partition(limits)? else {
                return Ok(None);
            };
            let keyed: Vec<(Vec<Bson>, &RawDocument)> = part
                .iter()
                .map(|d| {
                    let keys = w.sort.as_ref().map(|s| s.key_values(d)).unwrap_or_default();
                    (keys, d.as_ref())
                })
                .collect();
            self.out = run_partition(w, &keyed)?.into();
        }
    }

    fn next_partition(
        &mut self,
        limits: &Limits,
    ) -> Result<Option<Vec<RawDocumentBuf>>, QueryError> {
        let first = match self.ahead.take() {
            Some(e) => e,
            None => match self.entries.next().transpose()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        let id = part_key(&first.0);
        let mut bytes = first.1.as_bytes().len();
        let mut part = vec![first.1];
        while let Some((p, d)) = self.entries.next().transpose()? {
            if part_key(&p) != id {
                self.ahead = Some((p, d));
                break;
            }
            bytes += d.as_bytes().len();
            if bytes > limits.stage_bytes {
                return Err(QueryError::location(
                    5643011,
                    format!(
                        "Exceeded memory limit in DocumentSourceSetWindowFields: one partition holds more than {} bytes; spilling keeps one partition in memory at a time, so partition more finely, or $match or $project before $setWindowFields",
                        limits.stage_bytes
                    ),
                ));
            }
            part.push(d);
        }
        Ok(Some(part))
    }
}
