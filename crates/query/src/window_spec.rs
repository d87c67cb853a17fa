//! The shape of a `$setWindowFields` window, shared by the stage (`window.rs`), its functions
//! (`window_fn.rs`) and `$densify` (`densify.rs`): its bounds and time units. It depends on
//! neither, so the three do not import each other in a circle.

use bson::raw::RawBsonRef;

use crate::QueryError;

/// One end of a window: unbounded, the current document, or an offset from it (documents:
/// a count; range: a value added to the current sort value, in `unit`s for dates).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bound {
    Unbounded,
    Current,
    At(f64),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Bounds {
    Documents(Bound, Bound),
    /// `range`, with the unit's length in milliseconds (or months, negative) for dates.
    Range(Bound, Bound, Option<i64>),
}

pub(crate) fn type_of(v: RawBsonRef<'_>) -> &'static str {
    crate::types::raw_type_name(v)
}

/// A time unit: its length in milliseconds, or months as a negative count (calendar units).
pub(crate) fn parse_unit(v: RawBsonRef<'_>) -> Result<i64, QueryError> {
    let RawBsonRef::String(u) = v else {
        return Err(QueryError::failed_to_parse(format!(
            "'unit' must be a string, but found {}",
            type_of(v)
        )));
    };
    Ok(match u {
        "millisecond" => 1,
        "second" => 1000,
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        "week" => 7 * 86_400_000,
        "month" => -1,
        "quarter" => -3,
        "year" => -12,
        other => {
            return Err(QueryError::bad_value(format!(
                "unknown time unit value: {other}"
            )));
        }
    })
}
