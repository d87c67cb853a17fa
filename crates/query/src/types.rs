//! The ONE table of BSON types: each type's number (as `$type` and `$convert` take it) and
//! its name (as `$type`, `bsonType` and mongod's messages spell it). Filters, `$jsonSchema`,
//! updates, expressions and the server's request checks all read it. A leaf module.

use bson::spec::ElementType;
use bson::{Bson, RawBsonRef};

/// (element type, `$type` number, name). MinKey's number is -1 and MaxKey's 127.
const TYPES: [(ElementType, i32, &str); 21] = [
    (ElementType::Double, 1, "double"),
    (ElementType::String, 2, "string"),
    (ElementType::EmbeddedDocument, 3, "object"),
    (ElementType::Array, 4, "array"),
    (ElementType::Binary, 5, "binData"),
    (ElementType::Undefined, 6, "undefined"),
    (ElementType::ObjectId, 7, "objectId"),
    (ElementType::Boolean, 8, "bool"),
    (ElementType::DateTime, 9, "date"),
    (ElementType::Null, 10, "null"),
    (ElementType::RegularExpression, 11, "regex"),
    (ElementType::DbPointer, 12, "dbPointer"),
    (ElementType::JavaScriptCode, 13, "javascript"),
    (ElementType::Symbol, 14, "symbol"),
    (
        ElementType::JavaScriptCodeWithScope,
        15,
        "javascriptWithScope",
    ),
    (ElementType::Int32, 16, "int"),
    (ElementType::Timestamp, 17, "timestamp"),
    (ElementType::Int64, 18, "long"),
    (ElementType::Decimal128, 19, "decimal"),
    (ElementType::MinKey, -1, "minKey"),
    (ElementType::MaxKey, 127, "maxKey"),
];

fn row(t: ElementType) -> (ElementType, i32, &'static str) {
    TYPES
        .iter()
        .find(|(e, _, _)| *e == t)
        .copied()
        .unwrap_or((t, 0, "unknown"))
}

/// The name of a BSON element type, as mongod prints it.
pub fn element_type_name(t: ElementType) -> &'static str {
    row(t).2
}

/// The type name of a value, as mongod prints it in messages and `$type` returns it.
pub(crate) fn type_name(v: &Bson) -> &'static str {
    element_type_name(v.element_type())
}

/// [`type_name`] of a raw value.
pub(crate) fn raw_type_name(v: RawBsonRef<'_>) -> &'static str {
    element_type_name(v.element_type())
}

/// The BSON type number of a value, as `$type` uses it.
pub(crate) fn type_code(v: RawBsonRef<'_>) -> i32 {
    row(v.element_type()).1
}

/// The type number a name (`"int"`, `"objectId"`…) stands for.
pub(crate) fn code_of_name(name: &str) -> Option<i32> {
    TYPES
        .iter()
        .find(|(_, _, n)| *n == name)
        .map(|(_, c, _)| *c)
}

/// The name of a type number.
pub(crate) fn name_of_code(code: i32) -> Option<&'static str> {
    TYPES
        .iter()
        .find(|(_, c, _)| *c == code)
        .map(|(_, _, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_agree() {
        assert_eq!(type_name(&Bson::Int32(1)), "int");
        assert_eq!(type_code(RawBsonRef::MinKey), -1);
        assert_eq!(type_code(RawBsonRef::MaxKey), 127);
        assert_eq!(code_of_name("decimal"), Some(19));
        assert_eq!(code_of_name("number"), None);
    }
}
