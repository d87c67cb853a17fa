//! The accumulators of `$group`, `$bucket` and `$setWindowFields` as parsed (`Acc`) and their
//! running states (`AccState`): the types alone, shared by `group.rs` (which parses and folds
//! them) and `group_spill.rs` (which writes and merges states), so neither imports the other's
//! users.

use std::collections::HashSet;

use bson::{Bson, Document};

use crate::expr::Expr;
use crate::expr::quantile::Quantile;
use crate::js_acc::{JsAcc, JsState};
use crate::top_n::{Ranked, TopBottom};

pub(crate) enum Acc {
    Sum(Expr),
    Avg(Expr),
    Min(Expr),
    Max(Expr),
    First(Expr),
    Last(Expr),
    Push(Expr),
    AddToSet(Expr),
    Count,
    MergeObjects(Expr),
    StdDev(Expr, bool),
    /// `$firstN`, `$lastN`, `$minN`, `$maxN`: (kind, input, n).
    TopN(NKind, Expr, Expr),
    /// `$top`, `$bottom`, `$topN`, `$bottomN`.
    TopBottom(Box<TopBottom>),
    /// `$percentile`, `$median`.
    Quantile(Box<Quantile>),
    /// `$accumulator` and mapReduce's `$_internalJsReduce` (`js_acc.rs`).
    Js(Box<JsAcc>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NKind {
    First,
    Last,
    Min,
    Max,
}

pub(crate) enum AccState {
    Sum(Bson),
    Avg {
        total: f64,
        n: u64,
        decimal: bool,
    },
    Pick(Option<Bson>),
    /// `$push`: the values and the bytes they occupy.
    Array(Vec<Bson>, usize),
    /// `$addToSet`: the values, their order-preserving keys (so membership is a hash probe and
    /// equal numbers of different types count once), and the bytes both occupy.
    Set(Vec<Bson>, HashSet<Vec<u8>>, usize),
    /// The `$firstN`-family's values and `n` (fixed by the group's first document).
    Bounded(Vec<Bson>, usize),
    Merge(Document),
    /// Welford's running (count, mean, sum of squared deviations).
    StdDev(u64, f64, f64),
    Ranked(Ranked),
    /// `$percentile`/`$median`: the numeric inputs.
    Samples(Vec<f64>),
    Js(JsState),
}
