//! The query memory limits as server parameters: mongod's names, reported by `getParameter`
//! and changed by `setParameter` while the server runs; every aggregation, find sort and view
//! read takes the values in force when it starts.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bson::Document;
use mangrove_query::Limits;

use crate::error::{CommandError, CommandResult};

/// (mongod parameter name, the `Limits` field it sets).
type Field = (&'static str, fn(&mut Limits) -> &mut usize);

const FIELDS: &[Field] = &[
    ("internalQueryMaxBlockingSortMemoryUsageBytes", |l| {
        &mut l.stage_bytes
    }),
    ("internalDocumentSourceGroupMaxMemoryBytes", |l| {
        &mut l.group_bytes
    }),
    ("internalQueryMaxPushBytes", |l| &mut l.push_bytes),
    ("internalQueryMaxAddToSetBytes", |l| &mut l.add_to_set_bytes),
    ("internalQueryMaxRangeBytes", |l| &mut l.range_bytes),
];

/// The current values, one atomic per parameter (in `FIELDS` order).
pub(crate) struct QueryParams {
    values: Vec<AtomicUsize>,
    /// Not a mongod parameter: what one expression evaluation may hold.
    expression_bytes: usize,
}

impl QueryParams {
    pub fn new(mut initial: Limits) -> QueryParams {
        QueryParams {
            values: FIELDS
                .iter()
                .map(|(_, field)| AtomicUsize::new(*field(&mut initial)))
                .collect(),
            expression_bytes: initial.expression_bytes,
        }
    }

    /// The limits in force now.
    pub fn limits(&self) -> Limits {
        let mut limits = Limits {
            expression_bytes: self.expression_bytes,
            ..Limits::default()
        };
        for ((_, field), value) in FIELDS.iter().zip(&self.values) {
            *field(&mut limits) = value.load(Relaxed);
        }
        limits
    }

    /// The blocking-sort limit, which also bounds a `find` sort and a view read.
    pub fn sort_bytes(&self) -> usize {
        self.limits().stage_bytes
    }

    /// Every parameter with its value, for `getParameter`.
    pub fn report(&self, out: &mut Document) {
        for ((name, _), value) in FIELDS.iter().zip(&self.values) {
            out.insert(*name, value.load(Relaxed) as i64);
        }
    }

    /// Sets `name` if it is one of these parameters: `None` if it is not, else its old value.
    pub fn set(&self, name: &str, value: i64) -> Option<CommandResult<i64>> {
        let at = FIELDS.iter().position(|(n, _)| *n == name)?;
        let Some(bytes) = usize::try_from(value).ok().filter(|&b| b > 0) else {
            return Some(Err(CommandError::bad_value(format!(
                "{name} must be a positive number of bytes, got {value}"
            ))));
        };
        Some(Ok(self.values[at].swap(bytes, Relaxed) as i64))
    }

    /// The names, for the error naming what `setParameter` can set.
    pub fn names() -> impl Iterator<Item = &'static str> {
        FIELDS.iter().map(|(n, _)| *n)
    }
}
