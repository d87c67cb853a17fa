//! Spilling a `$group`'s or `$bucket`'s groups (`allowDiskUse`): each run holds the groups of
//! the time, ordered by key, with their accumulators' *partial states*; at the end the runs
//! and the groups still in memory are merged by key and the states of equal keys combined.
//!
//! Invariants:
//! - A record is `{k: <order key>, i: <_id>, s: [<state>, ...]}`, one state per accumulator in
//!   the stage's order; it is read back only with the same accumulators.
//! - States of one key are combined in input order: earlier runs first, the groups still in
//!   memory (the latest input) last, so `$first`, `$last`, `$push`, `$mergeObjects`,
//!   `$firstN`/`$lastN` and the ties of `$top`/`$bottom` and `$min`/`$max` come out as
//!   without spilling. Sums and averages of doubles may differ in the last bits (the additions
//!   are grouped differently), as in mongod.
//! - A combined `$push`/`$addToSet` stays within its own limit (146), as when accumulating.
//! - Accumulators whose state cannot be split (`$accumulator`, mapReduce's reduce) are never
//!   spilled: the stage fails with 292 naming the accumulator.
//! - The merge holds one group per run (the heads) and the group being combined, never more.

use std::collections::HashSet;

use bson::raw::RawDocument;
use bson::{Bson, Document, RawDocumentBuf, doc};

use crate::QueryError;
use crate::accumulator::{Acc, AccState, NKind};
use crate::doc_ops::{key_of, raw_err, to_raw};
use crate::expr::{cmp_bson, sum_values};
use crate::limits::{self, Limits};
use crate::memory::mem_size;
use crate::spill::{RunReader, SpillFile, Spilled};
use crate::top_n::Ranked;

/// One group as the merge carries it: order key, `_id`, states.
pub(crate) type Entry = (Vec<u8>, Bson, Vec<AccState>);

/// 292 when an accumulator's state cannot be spilled.
pub(crate) fn check_spillable(
    accs: &[(String, Acc)],
    stage: &str,
    limit: usize,
) -> Result<(), QueryError> {
    for (name, acc) in accs {
        if let Acc::Js(_) = acc {
            return Err(QueryError::new(
                292,
                "QueryExceededMemoryLimitNoDiskUseAllowed",
                format!(
                    "{stage} exceeded the memory limit of {limit} bytes and cannot spill to disk: its accumulator '{name}' ($accumulator or mapReduce's reduce) keeps a JavaScript state that cannot be split; reduce the number of groups (e.g. $match earlier) or raise internalDocumentSourceGroupMaxMemoryBytes"
                ),
            ));
        }
    }
    Ok(())
}

/// The record of one group.
pub(crate) fn encode(
    key: &[u8],
    id: &Bson,
    states: Vec<AccState>,
) -> Result<RawDocumentBuf, QueryError> {
    let states = states.into_iter().map(encode_state).collect::<Vec<_>>();
    let key = bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: key.to_vec(),
    };
    to_raw(&doc! { "k": key, "i": id.clone(), "s": states })
}

fn encode_state(state: AccState) -> Bson {
    match state {
        AccState::Sum(v) => doc! { "sum": v }.into(),
        AccState::Avg { total, n, decimal } => {
            doc! { "t": total, "n": n as i64, "d": decimal }.into()
        }
        AccState::Pick(v) => Bson::Array(v.into_iter().collect()),
        AccState::Array(items, _) | AccState::Set(items, _, _) => Bson::Array(items),
        AccState::Bounded(items, n) => doc! { "v": items, "n": n as i64 }.into(),
        AccState::Merge(d) => d.into(),
        AccState::StdDev(n, mean, m2) => doc! { "n": n as i64, "m": mean, "m2": m2 }.into(),
        AccState::Ranked(r) => {
            let items: Vec<Bson> = r
                .items
                .into_iter()
                .map(|(k, o)| Bson::Array(vec![Bson::Array(k), o]))
                .collect();
            doc! { "v": items, "n": r.n as i64 }.into()
        }
        AccState::Samples(s) => Bson::Array(s.into_iter().map(Bson::Double).collect()),
        AccState::Js(_) => Bson::Null,
    }
}

fn bad_record() -> QueryError {
    QueryError::location(
        301,
        "a spilled group record does not have the expected shape",
    )
}

/// A group read back from a run.
fn decode(accs: &[(String, Acc)], raw: &RawDocument) -> Result<Entry, QueryError> {
    let d = Document::try_from(raw).map_err(raw_err)?;
    let key = match d.get("k") {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        _ => return Err(bad_record()),
    };
    let id = d.get("i").cloned().unwrap_or(Bson::Null);
    let Some(Bson::Array(states)) = d.get("s") else {
        return Err(bad_record());
    };
    if states.len() != accs.len() {
        return Err(bad_record());
    }
    let states = accs
        .iter()
        .zip(states)
        .map(|((_, acc), s)| decode_state(acc, s.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key, id, states))
}

fn int(d: &Document, k: &str) -> Result<i64, QueryError> {
    d.get_i64(k).map_err(|_| bad_record())
}

fn float(d: &Document, k: &str) -> Result<f64, QueryError> {
    d.get_f64(k).map_err(|_| bad_record())
}

fn decode_state(acc: &Acc, s: Bson) -> Result<AccState, QueryError> {
    Ok(match (acc, s) {
        (Acc::Sum(_) | Acc::Count, Bson::Document(d)) => {
            AccState::Sum(d.get("sum").cloned().ok_or_else(bad_record)?)
        }
        (Acc::Avg(_), Bson::Document(d)) => AccState::Avg {
            total: float(&d, "t")?,
            n: int(&d, "n")? as u64,
            decimal: d.get_bool("d").map_err(|_| bad_record())?,
        },
        (Acc::Min(_) | Acc::Max(_) | Acc::First(_) | Acc::Last(_), Bson::Array(v)) => {
            AccState::Pick(v.into_iter().next())
        }
        (Acc::Push(_), Bson::Array(items)) => {
            let bytes = items.iter().map(mem_size).sum::<Result<usize, _>>()?;
            AccState::Array(items, bytes)
        }
        (Acc::AddToSet(_), Bson::Array(items)) => {
            let mut set = AccState::Set(Vec::new(), HashSet::new(), 0);
            merge_set(&mut set, items, usize::MAX)?;
            set
        }
        (Acc::TopN(..), Bson::Document(d)) => match d.get("v") {
            Some(Bson::Array(v)) => AccState::Bounded(v.clone(), int(&d, "n")? as usize),
            _ => return Err(bad_record()),
        },
        (Acc::MergeObjects(_), Bson::Document(d)) => AccState::Merge(d),
        (Acc::StdDev(..), Bson::Document(d)) => {
            AccState::StdDev(int(&d, "n")? as u64, float(&d, "m")?, float(&d, "m2")?)
        }
        (Acc::TopBottom(_), Bson::Document(d)) => AccState::Ranked(decode_ranked(&d)?),
        (Acc::Quantile(_), Bson::Array(v)) => AccState::Samples(
            v.iter()
                .map(|x| x.as_f64().ok_or_else(bad_record))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad_record()),
    })
}

fn decode_ranked(d: &Document) -> Result<Ranked, QueryError> {
    let Some(Bson::Array(v)) = d.get("v") else {
        return Err(bad_record());
    };
    let mut items = Vec::with_capacity(v.len());
    for pair in v {
        match pair {
            Bson::Array(p) if p.len() == 2 => match (&p[0], &p[1]) {
                (Bson::Array(k), o) => items.push((k.clone(), o.clone())),
                _ => return Err(bad_record()),
            },
            _ => return Err(bad_record()),
        }
    }
    Ok(Ranked {
        items,
        n: int(d, "n")? as usize,
    })
}

/// Adds `items` to an `$addToSet` state (those it does not hold yet), within `limit` bytes.
fn merge_set(state: &mut AccState, items: Vec<Bson>, limit: usize) -> Result<(), QueryError> {
    let AccState::Set(have, seen, bytes) = state else {
        return Err(bad_record());
    };
    for v in items {
        let key = match bson::RawBson::try_from(v.clone()) {
            Ok(raw) => key_of(raw.as_raw_bson_ref()),
            Err(_) => continue,
        };
        if seen.contains(&key) {
            continue;
        }
        let size = mem_size(&v)? + key.len() + std::mem::size_of::<Vec<u8>>();
        if bytes.saturating_add(size) > limit {
            return Err(limits::accumulator_exceeded("$addToSet", limit));
        }
        *bytes += size;
        seen.insert(key);
        have.push(v);
    }
    Ok(())
}

/// Combines `later` (from later input) into `into`, as if its documents had followed.
fn merge_state(
    acc: &Acc,
    into: &mut AccState,
    later: AccState,
    limits: &Limits,
) -> Result<(), QueryError> {
    match (acc, into, later) {
        (_, AccState::Sum(a), AccState::Sum(b)) => *a = sum_values(a, &b),
        (
            _,
            AccState::Avg { total, n, decimal },
            AccState::Avg {
                total: t,
                n: m,
                decimal: d,
            },
        ) => {
            *total += t;
            *n += m;
            *decimal |= d;
        }
        (_, AccState::StdDev(n, mean, m2), AccState::StdDev(nb, mb, m2b)) => {
            // Chan et al.'s combination of two Welford states.
            let total = *n + nb;
            if total > 0 {
                let delta = mb - *mean;
                *m2 += m2b + delta * delta * (*n as f64) * (nb as f64) / total as f64;
                *mean += delta * nb as f64 / total as f64;
                *n = total;
            }
        }
        (acc, AccState::Pick(a), AccState::Pick(b)) => merge_pick(acc, a, b),
        (_, AccState::Array(a, bytes), AccState::Array(b, more)) => {
            if bytes.saturating_add(more) > limits.push_bytes {
                return Err(limits::accumulator_exceeded("$push", limits.push_bytes));
            }
            a.extend(b);
            *bytes += more;
        }
        (_, set @ AccState::Set(..), AccState::Set(b, _, _)) => {
            merge_set(set, b, limits.add_to_set_bytes)?
        }
        (Acc::TopN(kind, ..), AccState::Bounded(a, n), AccState::Bounded(b, _)) => {
            merge_bounded(*kind, a, b, *n)
        }
        (_, AccState::Merge(a), AccState::Merge(b)) => a.extend(b),
        (Acc::TopBottom(spec), AccState::Ranked(a), AccState::Ranked(b)) => {
            for (k, o) in b.items {
                a.insert(spec, k, o)?;
            }
        }
        (_, AccState::Samples(a), AccState::Samples(b)) => a.extend(b),
        _ => return Err(bad_record()),
    }
    Ok(())
}

fn merge_pick(acc: &Acc, a: &mut Option<Bson>, b: Option<Bson>) {
    let Some(b) = b else { return };
    let take = match (acc, &*a) {
        (_, None) => true,
        (Acc::Last(_), _) => true,
        (Acc::Min(_), Some(x)) => cmp_bson(&b, x).is_lt(),
        (Acc::Max(_), Some(x)) => cmp_bson(&b, x).is_gt(),
        _ => false,
    };
    if take {
        *a = Some(b);
    }
}

/// `$firstN`/`$lastN`/`$minN`/`$maxN`: the `n` kept of `a` followed by `b`.
fn merge_bounded(kind: NKind, a: &mut Vec<Bson>, b: Vec<Bson>, n: usize) {
    match kind {
        NKind::First => a.extend(b.into_iter().take(n.saturating_sub(a.len()))),
        NKind::Last => {
            a.extend(b);
            let extra = a.len().saturating_sub(n);
            a.drain(..extra);
        }
        NKind::Min | NKind::Max => {
            // Both sorted best-first; a value equal to one of `a` goes after it.
            for v in b {
                let better = |x: &Bson| {
                    let o = cmp_bson(&v, x);
                    if kind == NKind::Min {
                        o.is_lt()
                    } else {
                        o.is_gt()
                    }
                };
                let at = a.iter().position(better).unwrap_or(a.len());
                a.insert(at, v);
            }
            a.truncate(n);
        }
    }
}

/// Where the merge takes its next group from.
enum Source {
    Run(RunReader),
    Memory(std::vec::IntoIter<Entry>),
}

impl Source {
    fn next(&mut self, accs: &[(String, Acc)]) -> Result<Option<Entry>, QueryError> {
        match self {
            Source::Run(r) => match r.next() {
                Some(raw) => decode(accs, &raw?).map(Some),
                None => Ok(None),
            },
            Source::Memory(m) => Ok(m.next()),
        }
    }
}

/// The merge of a grouping stage's runs and its remaining groups, by order key.
pub(crate) struct GroupMerge {
    /// Kept so the file lives (and is deleted) with the merge.
    _file: Box<dyn SpillFile>,
    sources: Vec<Source>,
    heads: Vec<Option<Entry>>,
}

impl GroupMerge {
    /// `rest`: the groups still in memory, ordered by key; they came after every run.
    /// `budget`: the bytes the runs' readers may hold together.
    pub(crate) fn new(
        accs: &[(String, Acc)],
        spilled: Spilled,
        rest: Vec<Entry>,
        budget: usize,
    ) -> Result<GroupMerge, QueryError> {
        let mut sources: Vec<Source> = spilled
            .readers(budget)?
            .into_iter()
            .map(Source::Run)
            .collect();
        sources.push(Source::Memory(rest.into_iter()));
        let mut heads = Vec::with_capacity(sources.len());
        for s in &mut sources {
            heads.push(s.next(accs)?);
        }
        Ok(GroupMerge {
            _file: spilled.file,
            sources,
            heads,
        })
    }

    /// The next group, its states combined across the runs in input order.
    pub(crate) fn next(
        &mut self,
        accs: &[(String, Acc)],
        limits: &Limits,
    ) -> Result<Option<(Bson, Vec<AccState>)>, QueryError> {
        let Some(min) = self.heads.iter().flatten().map(|e| &e.0).min().cloned() else {
            return Ok(None);
        };
        let mut out: Option<(Bson, Vec<AccState>)> = None;
        for i in 0..self.heads.len() {
            if self.heads[i].as_ref().is_none_or(|e| e.0 != min) {
                continue;
            }
            let next = self.sources[i].next(accs)?;
            let Some((_, id, states)) = std::mem::replace(&mut self.heads[i], next) else {
                continue;
            };
            match &mut out {
                None => out = Some((id, states)),
                Some((_, into)) => {
                    for ((_, acc), (a, b)) in accs.iter().zip(into.iter_mut().zip(states)) {
                        merge_state(acc, a, b, limits)?;
                    }
                }
            }
        }
        Ok(out)
    }
}
