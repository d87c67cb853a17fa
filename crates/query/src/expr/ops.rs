//! The aggregation operators: ONE table gives each its name and how its arguments are parsed,
//! and a macro turns it into the [`Op`] enum, its name table and the name lookup.
//!
//! Invariant: an operator name is looked up once, when the expression is parsed; evaluation
//! dispatches on [`Op`] and never compares strings.

/// No upper bound on the argument count.
pub(crate) const ANY: usize = usize::MAX;

/// How an operator's argument is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// A positional list (or one bare argument) evaluated eagerly, between `min` and `max`
    /// long; a wrong count is refused with 16020.
    Args(usize, usize),
    /// Parsed by its own rule: named arguments, lazily evaluated operands or a constant.
    Own,
}

/// Which module evaluates an operator that reaches [`super::Expr::Op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// Parsed into its own `Expr` node (comparisons, booleans, `$let`…): never applied.
    Node,
    Arith,
    Str,
    Array,
    Set,
    Conv,
    Object,
    Date,
}

const fn args(min: usize, max: usize) -> Form {
    Form::Args(min, max)
}

const OWN: Form = Form::Own;

macro_rules! operators {
    ($( $variant:ident = $name:literal, $form:expr, $family:ident; )*) => {
        /// An aggregation expression operator.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Op {
            $( $variant, )*
        }

        impl Op {
            /// The operator's name as written, with its `$`.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $( Op::$variant => $name, )*
                }
            }

            /// How its argument is parsed.
            pub(crate) fn form(self) -> Form {
                match self {
                    $( Op::$variant => $form, )*
                }
            }

            /// Which family's module evaluates it.
            pub(crate) fn family(self) -> Family {
                match self {
                    $( Op::$variant => Family::$family, )*
                }
            }

            /// The operator called `name`, if there is one.
            pub(crate) fn from_name(name: &str) -> Option<Op> {
                match name {
                    $( $name => Some(Op::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

operators! {
    // Comparison, boolean and conditional: their own `Expr` nodes.
    Eq = "$eq", OWN, Node;
    Ne = "$ne", OWN, Node;
    Gt = "$gt", OWN, Node;
    Gte = "$gte", OWN, Node;
    Lt = "$lt", OWN, Node;
    Lte = "$lte", OWN, Node;
    Cmp = "$cmp", OWN, Node;
    And = "$and", OWN, Node;
    Or = "$or", OWN, Node;
    Not = "$not", OWN, Node;
    Cond = "$cond", OWN, Node;
    IfNull = "$ifNull", OWN, Node;
    Switch = "$switch", OWN, Node;
    // Constants and variables.
    Rand = "$rand", OWN, Node;
    Literal = "$literal", OWN, Node;
    Let = "$let", OWN, Node;
    Map = "$map", OWN, Node;
    Filter = "$filter", OWN, Node;
    Reduce = "$reduce", OWN, Node;
    Convert = "$convert", OWN, Node;
    // Server-side JavaScript (`js.rs`); `$_internalJsEmit` is mapReduce's map step.
    Function = "$function", OWN, Node;
    InternalJsEmit = "$_internalJsEmit", OWN, Node;
    // Arithmetic.
    Add = "$add", args(0, ANY), Arith;
    Subtract = "$subtract", args(2, 2), Arith;
    Multiply = "$multiply", args(0, ANY), Arith;
    Divide = "$divide", args(2, 2), Arith;
    Mod = "$mod", args(2, 2), Arith;
    Abs = "$abs", args(1, 1), Arith;
    Ceil = "$ceil", args(1, 1), Arith;
    Floor = "$floor", args(1, 1), Arith;
    Round = "$round", args(1, 2), Arith;
    Trunc = "$trunc", args(1, 2), Arith;
    Pow = "$pow", args(2, 2), Arith;
    Sqrt = "$sqrt", args(1, 1), Arith;
    Exp = "$exp", args(1, 1), Arith;
    Ln = "$ln", args(1, 1), Arith;
    Log = "$log", args(2, 2), Arith;
    Log10 = "$log10", args(1, 1), Arith;
    Sum = "$sum", args(0, ANY), Arith;
    Avg = "$avg", args(0, ANY), Arith;
    Min = "$min", args(0, ANY), Arith;
    Max = "$max", args(0, ANY), Arith;
    StdDevPop = "$stdDevPop", args(0, ANY), Arith;
    StdDevSamp = "$stdDevSamp", args(0, ANY), Arith;
    // Strings.
    Concat = "$concat", args(0, ANY), Str;
    Substr = "$substr", args(3, 3), Str;
    SubstrBytes = "$substrBytes", args(3, 3), Str;
    SubstrCP = "$substrCP", args(3, 3), Str;
    ToUpper = "$toUpper", args(1, 1), Str;
    ToLower = "$toLower", args(1, 1), Str;
    StrLenCP = "$strLenCP", args(1, 1), Str;
    StrLenBytes = "$strLenBytes", args(1, 1), Str;
    Split = "$split", args(2, 2), Str;
    IndexOfCP = "$indexOfCP", args(2, 4), Str;
    IndexOfBytes = "$indexOfBytes", args(2, 4), Str;
    Strcasecmp = "$strcasecmp", args(2, 2), Str;
    Trim = "$trim", OWN, Str;
    Ltrim = "$ltrim", OWN, Str;
    Rtrim = "$rtrim", OWN, Str;
    ReplaceOne = "$replaceOne", OWN, Str;
    ReplaceAll = "$replaceAll", OWN, Str;
    RegexMatch = "$regexMatch", OWN, Str;
    RegexFind = "$regexFind", OWN, Str;
    RegexFindAll = "$regexFindAll", OWN, Str;
    // Arrays.
    Size = "$size", args(1, 1), Array;
    ArrayElemAt = "$arrayElemAt", args(2, 2), Array;
    First = "$first", args(1, 1), Array;
    Last = "$last", args(1, 1), Array;
    In = "$in", args(2, 2), Array;
    ConcatArrays = "$concatArrays", args(0, ANY), Array;
    Slice = "$slice", args(2, 3), Array;
    ReverseArray = "$reverseArray", args(1, 1), Array;
    IsArray = "$isArray", args(1, 1), Array;
    Range = "$range", args(2, 3), Array;
    IndexOfArray = "$indexOfArray", args(2, 4), Array;
    FirstN = "$firstN", OWN, Array;
    LastN = "$lastN", OWN, Array;
    MinN = "$minN", OWN, Array;
    MaxN = "$maxN", OWN, Array;
    Median = "$median", OWN, Array;
    Percentile = "$percentile", OWN, Array;
    // Sets.
    SetUnion = "$setUnion", args(0, ANY), Set;
    SetIntersection = "$setIntersection", args(0, ANY), Set;
    SetDifference = "$setDifference", args(2, 2), Set;
    SetEquals = "$setEquals", args(2, ANY), Set;
    SetIsSubset = "$setIsSubset", args(2, 2), Set;
    AllElementsTrue = "$allElementsTrue", args(1, 1), Set;
    AnyElementTrue = "$anyElementTrue", args(1, 1), Set;
    // Types and conversions.
    Type = "$type", args(1, 1), Conv;
    IsNumber = "$isNumber", args(1, 1), Conv;
    ToString = "$toString", args(1, 1), Conv;
    ToInt = "$toInt", args(1, 1), Conv;
    ToLong = "$toLong", args(1, 1), Conv;
    ToDouble = "$toDouble", args(1, 1), Conv;
    ToDecimal = "$toDecimal", args(1, 1), Conv;
    ToBool = "$toBool", args(1, 1), Conv;
    ToObjectId = "$toObjectId", args(1, 1), Conv;
    ToDate = "$toDate", args(1, 1), Conv;
    // Objects.
    MergeObjects = "$mergeObjects", args(0, ANY), Object;
    ObjectToArray = "$objectToArray", args(1, 1), Object;
    ArrayToObject = "$arrayToObject", args(1, 1), Object;
    GetField = "$getField", OWN, Object;
    SetField = "$setField", OWN, Object;
    // Dates.
    DateAdd = "$dateAdd", OWN, Date;
    DateSubtract = "$dateSubtract", OWN, Date;
    DateDiff = "$dateDiff", OWN, Date;
    DateTrunc = "$dateTrunc", OWN, Date;
    DateFromParts = "$dateFromParts", OWN, Date;
    DateToParts = "$dateToParts", OWN, Date;
    DateFromString = "$dateFromString", OWN, Date;
    DateToString = "$dateToString", OWN, Date;
    Year = "$year", OWN, Date;
    Month = "$month", OWN, Date;
    DayOfMonth = "$dayOfMonth", OWN, Date;
    Hour = "$hour", OWN, Date;
    Minute = "$minute", OWN, Date;
    Second = "$second", OWN, Date;
    Millisecond = "$millisecond", OWN, Date;
    DayOfWeek = "$dayOfWeek", OWN, Date;
    DayOfYear = "$dayOfYear", OWN, Date;
    Week = "$week", OWN, Date;
    IsoWeek = "$isoWeek", OWN, Date;
    IsoWeekYear = "$isoWeekYear", OWN, Date;
    IsoDayOfWeek = "$isoDayOfWeek", OWN, Date;
}

impl Op {
    /// `$year` … `$isoDayOfWeek`: one date (and optionally a time zone) to one number.
    pub(crate) fn is_date_part(self) -> bool {
        matches!(
            self,
            Op::Year
                | Op::Month
                | Op::DayOfMonth
                | Op::Hour
                | Op::Minute
                | Op::Second
                | Op::Millisecond
                | Op::DayOfWeek
                | Op::DayOfYear
                | Op::Week
                | Op::IsoWeek
                | Op::IsoWeekYear
                | Op::IsoDayOfWeek
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["$add", "$dateToString", "$isoDayOfWeek", "$eq", "$setField"] {
            let op = Op::from_name(name).expect(name);
            assert_eq!(op.name(), name);
        }
        assert_eq!(Op::from_name("$nope"), None);
        assert_eq!(Op::Round.form(), Form::Args(1, 2));
    }
}
