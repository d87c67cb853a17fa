//! Set operators over arrays (`$setUnion`, `$setIntersection`, `$setDifference`,
//! `$setEquals`, `$setIsSubset`) and `$allElementsTrue`/`$anyElementTrue`. Elements are equal
//! when BSON comparison says so; results keep first occurrences in input order.

use bson::Bson;

use super::array::{contains, dedup};
use super::ops::Op;
use super::{Val, loc, nullish, tname, truthy};
use crate::error::QueryError;

/// Applies a set operator to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    match op {
        Op::AllElementsTrue | Op::AnyElementTrue => all_or_any(op, &vals[0]),
        _ => set_op(op, vals),
    }
}

fn all_or_any(op: Op, v: &Val) -> Result<Val, QueryError> {
    let all = op == Op::AllElementsTrue;
    match v {
        Some(Bson::Array(items)) => {
            let t = |b: &Bson| truthy(&Some(b.clone()));
            Ok(Some(Bson::Boolean(if all {
                items.iter().all(t)
            } else {
                items.iter().any(t)
            })))
        }
        other => Err(loc(
            if all { 17040 } else { 17041 },
            format!(
                "{}'s argument must be an array, but is {}",
                op.name(),
                tname(other)
            ),
        )),
    }
}

fn set_op(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    let code = match op {
        Op::SetUnion => 17043,
        Op::SetIntersection => 17047,
        Op::SetDifference => 17048,
        Op::SetEquals => 17044,
        Op::SetIsSubset => 17046,
        _ => 17043,
    };
    if matches!(op, Op::SetUnion | Op::SetIntersection | Op::SetDifference)
        && vals.iter().any(nullish)
    {
        return Ok(Some(Bson::Null));
    }
    let mut sets = Vec::with_capacity(vals.len());
    for (i, v) in vals.iter().enumerate() {
        match v {
            Some(Bson::Array(a)) => sets.push(a.clone()),
            other => {
                return Err(loc(
                    if op == Op::SetIsSubset && i == 1 {
                        17042
                    } else {
                        code
                    },
                    format!(
                        "All operands of {} must be arrays. One argument is of type: {}",
                        op.name(),
                        tname(other)
                    ),
                ));
            }
        }
    }
    Ok(Some(match op {
        Op::SetUnion => Bson::Array(dedup(sets.into_iter().flatten().collect())),
        Op::SetIntersection => {
            let mut iter = sets.into_iter();
            let first = dedup(iter.next().unwrap_or_default());
            let rest: Vec<Vec<Bson>> = iter.collect();
            Bson::Array(
                first
                    .into_iter()
                    .filter(|v| rest.iter().all(|s| contains(s, v)))
                    .collect(),
            )
        }
        Op::SetDifference => {
            let b = sets.get(1).cloned().unwrap_or_default();
            Bson::Array(
                dedup(sets.into_iter().next().unwrap_or_default())
                    .into_iter()
                    .filter(|v| !contains(&b, v))
                    .collect(),
            )
        }
        Op::SetIsSubset => {
            let b = sets.get(1).cloned().unwrap_or_default();
            Bson::Boolean(sets[0].iter().all(|v| contains(&b, v)))
        }
        _ => {
            let first = &sets[0];
            Bson::Boolean(sets.iter().all(|s| {
                s.iter().all(|v| contains(first, v)) && first.iter().all(|v| contains(s, v))
            }))
        }
    }))
}
