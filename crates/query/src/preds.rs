//! The predicate vocabulary that filters and `$jsonSchema` share: comparison operators, type
//! selectors and the depth limit, with how one value is tested against each. It sits below
//! both `filter` (whose `Pred` is built from these) and `jsonschema`.

use std::cmp::Ordering;

use bson::RawBsonRef;

use crate::compare::{Num, as_num, compare_values, type_bracket};
use crate::types::{code_of_name, type_code};

/// MongoDB refuses filters nested deeper than this; the limit also bounds our recursion.
pub(crate) const MAX_FILTER_DEPTH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeSel {
    Code(i32),
    Number,
}

/// A `$type` alias (`"int"`, `"number"`…) as a selector.
pub(crate) fn type_alias(name: &str) -> Option<TypeSel> {
    if name == "number" {
        return Some(TypeSel::Number);
    }
    code_of_name(name).map(TypeSel::Code)
}

/// Whether `v` has one of the selected types.
pub(crate) fn type_matches(sels: &[TypeSel], v: RawBsonRef<'_>) -> bool {
    let code = type_code(v);
    sels.iter().any(|s| match s {
        TypeSel::Number => type_bracket(v) == 10,
        TypeSel::Code(c) => *c == code,
    })
}

/// `$gt`…`$lte` in MongoDB's sense: same type bracket only, null bounds meaning null.
pub(crate) fn compare_matches(
    op: CmpOp,
    operand: RawBsonRef<'_>,
    v: Option<RawBsonRef<'_>>,
) -> bool {
    if let RawBsonRef::Null = operand {
        // MongoDB treats null bounds as equality to null (which includes missing fields).
        return matches!(op, CmpOp::Gte | CmpOp::Lte) && matches!(v, None | Some(RawBsonRef::Null));
    }
    let Some(v) = v else { return false };
    let open_bound = matches!(operand, RawBsonRef::MinKey | RawBsonRef::MaxKey);
    if !open_bound && type_bracket(v) != type_bracket(operand) {
        return false;
    }
    // NaN is only ever equal to NaN; it is neither greater nor less than anything.
    let v_nan = as_num(v).is_some_and(Num::is_nan);
    let o_nan = as_num(operand).is_some_and(Num::is_nan);
    if v_nan || o_nan {
        return v_nan && o_nan && matches!(op, CmpOp::Gte | CmpOp::Lte);
    }
    let ord = compare_values(v, operand);
    match op {
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Gte => ord != Ordering::Less,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Lte => ord != Ordering::Greater,
    }
}
