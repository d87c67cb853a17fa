//! `$top`, `$bottom`, `$topN` and `$bottomN`: the first or last `n` outputs of a group in the
//! order of their own `sortBy`, as accumulators of `$group`/`$bucket`/`$bucketAuto` and as
//! window functions of `$setWindowFields`.
//!
//! Invariants:
//! - A [`Ranked`] holds at most `n` (sort key, output) pairs, kept in ascending `sortBy` order,
//!   ties in arrival order; its bytes are what those pairs occupy, kept exact as pairs come
//!   and go, so the owning stage's memory accounting stays true.
//! - On a tie with the worst kept pair, the pair already kept stays (mongod keeps the first
//!   value seen), so results are deterministic for a given input order.

use bson::Bson;
use bson::raw::{RawBsonRef, RawDocument};

use crate::doc_ops::raw_err;
use crate::expr::Expr;
use crate::memory::mem_size;
use crate::{QueryError, SortSpec};

/// One parsed `$top`-family accumulator.
pub(crate) struct TopBottom {
    pub(crate) bottom: bool,
    /// `$top`/`$bottom`: one value rather than an array.
    pub(crate) single: bool,
    pub(crate) n: Expr,
    pub(crate) sort: SortSpec,
    pub(crate) output: Expr,
}

/// Whether `op` names one of this family.
pub(crate) fn is_top_bottom(op: &str) -> bool {
    matches!(op, "$top" | "$bottom" | "$topN" | "$bottomN")
}

/// `{n, sortBy, output}` (no `n` for `$top`/`$bottom`), with mongod's codes.
pub(crate) fn parse(op: &str, arg: RawBsonRef<'_>) -> Result<TopBottom, QueryError> {
    let RawBsonRef::Document(spec) = arg else {
        return Err(QueryError::location(
            5788001,
            format!("specification must be an object; found {arg:?}"),
        ));
    };
    let single = matches!(op, "$top" | "$bottom");
    let (mut n, mut sort, mut output) = (None, None, None);
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("n", v) if !single => n = Some(Expr::parse(v)?),
            ("output", v) => output = Some(Expr::parse(v)?),
            ("sortBy", RawBsonRef::Document(d)) => sort = Some(SortSpec::parse(d)?),
            ("sortBy", _) => {
                return Err(QueryError::type_mismatch(format!(
                    "{op} 'sortBy' must be an object"
                )));
            }
            (other, _) => {
                return Err(QueryError::location(
                    5788002,
                    format!("Unknown argument to {op} '{other}'"),
                ));
            }
        }
    }
    let missing = |code, f: &str| QueryError::location(code, format!("Missing value for '{f}'"));
    let n = match (single, n) {
        (true, _) => Expr::Const(Bson::Int32(1)),
        (false, Some(n)) => n,
        (false, None) => return Err(missing(5788003, "n")),
    };
    let output = output.ok_or_else(|| missing(5788004, "output"))?;
    let sort = sort.ok_or_else(|| missing(5788005, "sortBy"))?;
    Ok(TopBottom {
        bottom: op.starts_with("$bottom"),
        single,
        n,
        sort,
        output,
    })
}

/// mongod's `AccumulatorN::validateN`: a positive integral number.
pub(crate) fn validate_n(v: Option<Bson>) -> Result<usize, QueryError> {
    let shown = v.as_ref().map_or("missing".to_string(), |v| v.to_string());
    let x = match &v {
        Some(Bson::Int32(i)) => f64::from(*i),
        Some(Bson::Int64(i)) => *i as f64,
        Some(Bson::Double(d)) => *d,
        Some(Bson::Decimal128(d)) => crate::compare::decimal_to_f64(*d),
        _ => {
            return Err(QueryError::location(
                5787902,
                format!("Value for 'n' must be of integral type, but found {shown}"),
            ));
        }
    };
    if x.fract() != 0.0 || x.is_nan() {
        return Err(QueryError::location(
            5787903,
            format!("Value for 'n' must be of integral type, but found {shown}"),
        ));
    }
    if x < 1.0 {
        return Err(QueryError::location(
            5787908,
            format!("'n' must be greater than 0, found {x}"),
        ));
    }
    Ok(x.min(1e9) as usize)
}

/// The kept (sort key, output) pairs of one group, ascending by key.
#[derive(Default)]
pub(crate) struct Ranked {
    pub(crate) items: Vec<(Vec<Bson>, Bson)>,
    pub(crate) n: usize,
}

fn pair_size(p: &(Vec<Bson>, Bson)) -> Result<isize, QueryError> {
    let mut size = mem_size(&p.1)?;
    for k in &p.0 {
        size += mem_size(k)?;
    }
    Ok(isize::try_from(size).unwrap_or(isize::MAX))
}

impl Ranked {
    /// Folds one document in; returns how many bytes the kept pairs grew (or shrank).
    pub(crate) fn add(&mut self, spec: &TopBottom, doc: &RawDocument) -> Result<isize, QueryError> {
        let key = spec.sort.key_values(doc);
        let out = spec.output.eval(doc)?.unwrap_or(Bson::Null);
        self.insert(spec, key, out)
    }

    /// Adds one (key, output) pair, dropping the pair that falls out of the first/last `n`.
    pub(crate) fn insert(
        &mut self,
        spec: &TopBottom,
        key: Vec<Bson>,
        out: Bson,
    ) -> Result<isize, QueryError> {
        let cmp = |a: &[Bson], b: &[Bson]| spec.sort.compare_keys(a, b);
        if self.items.len() >= self.n {
            let worst = if spec.bottom {
                self.items.first()
            } else {
                self.items.last()
            };
            let keep_out = match worst {
                None => true,
                Some((w, _)) if spec.bottom => cmp(&key, w).is_le(),
                Some((w, _)) => cmp(&key, w).is_ge(),
            };
            if keep_out {
                return Ok(0);
            }
        }
        let at = self.items.partition_point(|(k, _)| cmp(k, &key).is_le());
        let pair = (key, out);
        let mut delta = pair_size(&pair)?;
        self.items.insert(at, pair);
        if self.items.len() > self.n {
            let dropped = if spec.bottom {
                self.items.remove(0)
            } else {
                self.items.pop().unwrap_or_default()
            };
            delta -= pair_size(&dropped)?;
        }
        Ok(delta)
    }

    /// The outputs: an array, or the one value (null when none) for `$top`/`$bottom`.
    pub(crate) fn finish(self, spec: &TopBottom) -> Bson {
        let mut outs: Vec<Bson> = self.items.into_iter().map(|(_, o)| o).collect();
        if spec.single {
            return outs.pop().unwrap_or(Bson::Null);
        }
        Bson::Array(outs)
    }
}
