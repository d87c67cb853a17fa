//! The collections a pipeline's joins read (`$lookup`, `$graphLookup`, `$unionWith`): the query
//! crate's `ForeignSource`, answered from the view the pipeline's input reads.
//!
//! Invariants:
//! - Every read goes through the same `ReadView` as the input, so a join sees exactly the
//!   snapshot, or the transaction with its own writes, that the input does.
//! - A view a join names is computed whole when the command starts ([`ForeignViews`], as a
//!   view read is bounded); a collection is read only when a stage asks, and a whole read stops
//!   at the byte bound it is given, so nothing here holds more than the stage allows.
//! - This module knows the access layer (plans, walks), not the commands.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use bson::{RawDocument, RawDocumentBuf, rawdoc};
use mangrove_query::{Chunk, Filter, ForeignRead, ForeignSource, QueryError};
use mangrove_storage::{CollectionInfo, DocKey, ReadView};

use crate::access::{Access, Examined, Hint, choose_access, for_each_match, walk_natural};
use crate::error::CommandError;

/// Documents read between interruption checks.
const DEADLINE_EVERY: usize = 256;

/// Views a pipeline's joins name, computed whole when the command starts.
#[derive(Default)]
pub(crate) struct ForeignViews(pub HashMap<String, Arc<Vec<RawDocumentBuf>>>);

/// The joins' collections, read through `view`.
pub(crate) struct Foreign<'a> {
    pub view: &'a dyn ReadView,
    /// The collection a join names, in the pipeline's database (a transaction also sees
    /// collections created after its snapshot).
    pub resolve: &'a dyn Fn(&str) -> Option<CollectionInfo>,
    pub views: &'a ForeignViews,
}

/// The query crate's error for a failed read: same code and message.
fn query_error(e: CommandError) -> QueryError {
    let name = mangrove_query::error_codes::static_code_name(e.code);
    QueryError::new(e.code, name, e.message)
}

impl Foreign<'_> {
    /// Hands `visit` each document of `coll` that `filter` matches, along `access`; what the
    /// walk examined.
    fn walk(
        &self,
        coll: &CollectionInfo,
        access: &Access,
        filter: &Filter,
        visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
    ) -> Result<ForeignRead, QueryError> {
        let mut failed = None;
        let mut each = |_: &_, d: &mangrove_storage::StoredDoc| match visit(d) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        };
        let mut examined = Examined::default();
        let walked = for_each_match(self.view, coll, access, filter, &mut examined, &mut each);
        match failed {
            Some(e) => return Err(e),
            None => walked.map_err(query_error)?,
        }
        let index = match access {
            Access::IdPoint(_) | Access::IdRange { .. } => Some("_id_".to_string()),
            Access::Index { index, .. } | Access::Near { index, .. } => {
                Some(index.key.name.clone())
            }
            Access::Collection | Access::CollectionBackward => None,
        };
        Ok(ForeignRead {
            keys: examined.keys,
            docs: examined.docs,
            index,
        })
    }

    /// How the planner answers `filter` over `coll` (the command's own plan stays its input's).
    fn plan(
        &self,
        coll: &CollectionInfo,
        raw: &RawDocument,
    ) -> Result<(Filter, Access), QueryError> {
        let filter = Filter::parse(raw)?;
        let access =
            choose_access(self.view, coll, &filter, raw, &Hint::None, None).map_err(query_error)?;
        Ok((filter, access))
    }
}

impl ForeignSource for Foreign<'_> {
    fn whole(
        &self,
        name: &str,
        max_bytes: usize,
    ) -> Result<Option<Arc<Vec<RawDocumentBuf>>>, QueryError> {
        if let Some(docs) = self.views.0.get(name) {
            return Ok(Some(docs.clone()));
        }
        // A chunk stops at the first document that reaches its bound, so one of `max_bytes + 1`
        // that has more to read holds more than `max_bytes`.
        let (docs, more) = self.next_chunk(name, None, max_bytes.saturating_add(1))?;
        Ok(more.is_none().then(|| Arc::new(docs)))
    }

    fn each_match(
        &self,
        name: &str,
        filter: &RawDocument,
        visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
    ) -> Result<ForeignRead, QueryError> {
        if let Some(docs) = self.views.0.get(name) {
            return mangrove_query::each_match_in(docs, filter, visit);
        }
        let Some(coll) = (self.resolve)(name) else {
            return Ok(ForeignRead::default());
        };
        let (parsed, access) = self.plan(&coll, filter)?;
        self.walk(&coll, &access, &parsed, visit)
    }

    /// Asks the planner itself, for a string and a number (a collated index answers the one
    /// only under the same collation): an index it would not use is no index here.
    fn indexed(&self, name: &str, path: &str) -> bool {
        if self.views.0.contains_key(name) {
            return false;
        }
        let Some(coll) = (self.resolve)(name) else {
            return false;
        };
        let Ok(field) = <&bson::raw::CStr>::try_from(path) else {
            return false;
        };
        let probe = |value: bson::RawBson| {
            let mut values = bson::raw::RawArrayBuf::new();
            values.push(value);
            let mut query = RawDocumentBuf::new();
            query.append(field, rawdoc! { "$in": values });
            query
        };
        let probes = [probe("".into()), probe(0.into())];
        probes.iter().all(|probe| {
            matches!(
                self.plan(&coll, probe),
                Ok((
                    _,
                    Access::IdPoint(_) | Access::IdRange { .. } | Access::Index { .. }
                ))
            )
        })
    }

    /// A view's documents come all at once (computed whole); a collection's in `$natural`
    /// order, resuming after the last position handed out, so a collection past any memory
    /// limit streams through.
    fn next_chunk(
        &self,
        name: &str,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Chunk, QueryError> {
        if let Some(docs) = self.views.0.get(name) {
            let docs = if after.is_none() {
                docs.as_ref().clone()
            } else {
                Vec::new()
            };
            return Ok((docs, None));
        }
        let Some(coll) = (self.resolve)(name) else {
            return Ok((Vec::new(), None));
        };
        let after = after.map(|a| DocKey(a.to_vec()));
        let (mut docs, mut bytes, mut last) = (Vec::new(), 0usize, None);
        let (mut full, mut failed) = (false, None);
        let mut visit = |position: &DocKey, _: &DocKey, d: &mangrove_storage::StoredDoc| {
            // A chunk is read under the engine's lock, as an input chunk is: bounded, and
            // interruptible as any scan (`maxTimeMS`, `killOp`).
            if docs.len() % DEADLINE_EVERY == 0
                && let Err(e) = crate::access::check_deadline()
            {
                failed = Some(e);
                return ControlFlow::Break(());
            }
            bytes += d.as_bytes().len();
            docs.push((**d).clone());
            last = Some(position.0.clone());
            full = bytes >= max_bytes;
            if full {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        walk_natural(self.view, &coll, after.as_ref(), false, &mut visit)
            .map_err(|e| query_error(e.into()))?;
        if let Some(e) = failed {
            return Err(query_error(e));
        }
        Ok((docs, if full { last } else { None }))
    }
}
