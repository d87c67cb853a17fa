use crate::common::{filter, filter_err, matches, raw};
use bson::{Bson, Decimal128, Document, doc, oid::ObjectId};
use mangrove_query::QueryError;

/// The top-level schema against a whole document.
fn top(schema: Document, d: Document) -> bool {
    matches(doc! {"$jsonSchema": schema}, d)
}

/// A schema for field `v`, applied to `{v: value}`.
fn val(schema: Document, value: impl Into<Bson>) -> bool {
    top(doc! {"properties": {"v": schema}}, doc! {"v": value.into()})
}

fn err(schema: Document) -> QueryError {
    filter_err(doc! {"$jsonSchema": schema})
}

fn assert_err(schema: Document, code: i32, needle: &str) {
    let e = err(schema.clone());
    assert_eq!(e.code, code, "schema {schema}: {e:?}");
    assert!(
        e.message.contains(needle),
        "schema {schema}: message {:?} lacks {needle:?}",
        e.message
    );
}

fn dec(s: &str) -> Bson {
    Bson::Decimal128(s.parse::<Decimal128>().expect("decimal literal"))
}

#[test]
fn empty_schema_matches_everything() {
    assert!(top(doc! {}, doc! {}));
    assert!(top(doc! {}, doc! {"a": [1, {"b": 2}]}));
}

#[test]
fn bson_type_single_and_list() {
    assert!(val(doc! {"bsonType": "int"}, 5));
    assert!(!val(doc! {"bsonType": "int"}, 5_i64));
    assert!(!val(doc! {"bsonType": "int"}, 5.0));
    assert!(val(doc! {"bsonType": "long"}, 5_i64));
    assert!(val(doc! {"bsonType": "double"}, 5.5));
    assert!(val(doc! {"bsonType": "decimal"}, dec("1.5")));
    assert!(val(doc! {"bsonType": "string"}, "x"));
    assert!(val(doc! {"bsonType": "objectId"}, ObjectId::new()));
    assert!(val(doc! {"bsonType": "bool"}, true));
    assert!(val(doc! {"bsonType": "null"}, Bson::Null));
    assert!(val(doc! {"bsonType": "array"}, vec![Bson::Int32(1)]));
    assert!(val(doc! {"bsonType": "object"}, doc! {"x": 1}));
    assert!(val(
        doc! {"bsonType": "date"},
        bson::DateTime::from_millis(0)
    ));
    assert!(val(doc! {"bsonType": "minKey"}, Bson::MinKey));
    assert!(val(doc! {"bsonType": "maxKey"}, Bson::MaxKey));
    assert!(val(doc! {"bsonType": "undefined"}, Bson::Undefined));
    assert!(val(
        doc! {"bsonType": "javascript"},
        Bson::JavaScriptCode("1".into())
    ));
    assert!(val(doc! {"bsonType": "symbol"}, Bson::Symbol("s".into())));
    assert!(!val(doc! {"bsonType": "string"}, Bson::Symbol("s".into())));
    for n in [Bson::Int32(1), Bson::Int64(1), Bson::Double(1.5), dec("2")] {
        assert!(val(doc! {"bsonType": "number"}, n.clone()), "{n}");
        assert!(val(doc! {"type": "number"}, n.clone()), "{n}");
    }
    assert!(!val(doc! {"bsonType": "number"}, "1"));
    assert!(val(doc! {"bsonType": ["string", "null"]}, Bson::Null));
    assert!(val(doc! {"bsonType": ["string", "null"]}, "s"));
    assert!(!val(doc! {"bsonType": ["string", "null"]}, 1));
    // An array value is not of its elements' type: no implicit traversal.
    assert!(!val(doc! {"bsonType": "int"}, vec![Bson::Int32(1)]));
}

#[test]
fn json_type_names() {
    assert!(val(doc! {"type": "string"}, "x"));
    assert!(!val(doc! {"type": "string"}, 1));
    assert!(val(doc! {"type": "boolean"}, false));
    assert!(!val(doc! {"type": "boolean"}, 0));
    assert!(val(doc! {"type": "null"}, Bson::Null));
    assert!(val(doc! {"type": "array"}, Vec::<Bson>::new()));
    assert!(val(doc! {"type": "object"}, doc! {}));
    assert!(val(doc! {"type": ["object", "array"]}, doc! {}));
    assert!(!val(doc! {"type": ["object", "array"]}, 3));
    // Type applies only to present fields; presence is `required`'s business.
    assert!(top(doc! {"properties": {"v": {"type": "string"}}}, doc! {}));
}

#[test]
fn top_level_type_is_object() {
    assert!(top(doc! {"type": "object"}, doc! {"a": 1}));
    assert!(top(doc! {"bsonType": "object"}, doc! {"a": 1}));
    assert!(!top(doc! {"type": "array"}, doc! {"a": 1}));
    assert!(!top(doc! {"bsonType": ["string", "int"]}, doc! {"a": 1}));
}

#[test]
fn required_demands_presence() {
    let s = doc! {"required": ["a", "b"]};
    assert!(top(s.clone(), doc! {"a": 1, "b": Bson::Null}));
    assert!(!top(s.clone(), doc! {"a": 1}));
    assert!(!top(s, doc! {}));
    // Nested required only constrains objects.
    let nested = doc! {"properties": {"o": {"required": ["x"]}}};
    assert!(top(nested.clone(), doc! {"o": {"x": 1}}));
    assert!(!top(nested.clone(), doc! {"o": {"y": 1}}));
    assert!(top(nested.clone(), doc! {"o": 5}));
    assert!(top(nested, doc! {"o": [{"y": 1}]}));
}

#[test]
fn nested_properties() {
    let s = doc! {
        "required": ["name", "address"],
        "properties": {
            "name": {"bsonType": "string", "minLength": 2},
            "address": {
                "bsonType": "object",
                "required": ["city"],
                "properties": {
                    "city": {"bsonType": "string"},
                    "zip": {"bsonType": "string", "pattern": "^[0-9]{5}$"},
                },
            },
        },
    };
    assert!(top(
        s.clone(),
        doc! {"name": "Al", "address": {"city": "Oslo", "zip": "12345"}}
    ));
    assert!(top(
        s.clone(),
        doc! {"name": "Al", "address": {"city": "Oslo"}}
    ));
    assert!(!top(
        s.clone(),
        doc! {"name": "Al", "address": {"city": "Oslo", "zip": "1234"}}
    ));
    assert!(!top(
        s.clone(),
        doc! {"name": "Al", "address": {"zip": "12345"}}
    ));
    assert!(!top(
        s.clone(),
        doc! {"name": "A", "address": {"city": "Oslo"}}
    ));
    assert!(!top(s.clone(), doc! {"name": "Al", "address": "Oslo"}));
    assert!(!top(s, doc! {"name": "Al"}));
}

#[test]
fn numeric_bounds_across_types() {
    let s = doc! {"minimum": 5, "maximum": 10};
    for ok in [Bson::Int32(5), Bson::Int64(10), Bson::Double(7.5), dec("6")] {
        assert!(val(s.clone(), ok.clone()), "{ok}");
    }
    for bad in [
        Bson::Int32(4),
        Bson::Int64(11),
        Bson::Double(10.5),
        dec("4.9"),
    ] {
        assert!(!val(s.clone(), bad.clone()), "{bad}");
    }
    // Bounds only constrain numbers.
    assert!(val(s.clone(), "abc"));
    assert!(val(s.clone(), Bson::Null));
    assert!(val(s, vec![Bson::Int32(1)]));
    // NaN lies outside every range.
    assert!(!val(doc! {"minimum": 0}, f64::NAN));
    assert!(!val(doc! {"maximum": 0}, f64::NAN));
}

#[test]
fn exclusive_bounds() {
    let s = doc! {"minimum": 5, "exclusiveMinimum": true, "maximum": 10, "exclusiveMaximum": true};
    assert!(!val(s.clone(), 5));
    assert!(val(s.clone(), 5.000001));
    assert!(!val(s.clone(), 10_i64));
    assert!(val(s, 9));
    let inclusive = doc! {"minimum": 5, "exclusiveMinimum": false};
    assert!(val(inclusive, 5));
    assert!(val(doc! {"minimum": 2.5}, 3));
    assert!(!val(doc! {"maximum": 2.5}, 3));
}

#[test]
fn multiple_of_is_decimal() {
    assert!(val(doc! {"multipleOf": 3}, 9));
    assert!(!val(doc! {"multipleOf": 3}, 10));
    assert!(val(doc! {"multipleOf": 3}, 9.0));
    assert!(val(doc! {"multipleOf": 3}, -9_i64));
    assert!(val(doc! {"multipleOf": 3}, 0));
    // Binary floating point would say 0.3 % 0.1 != 0; mongod works in decimal.
    assert!(val(doc! {"multipleOf": 0.1}, 0.3));
    assert!(val(doc! {"multipleOf": 0.01}, 19.99));
    assert!(!val(doc! {"multipleOf": 0.1}, 0.35));
    assert!(val(doc! {"multipleOf": 2.5}, 10));
    assert!(!val(doc! {"multipleOf": 2.5}, 11));
    assert!(val(doc! {"multipleOf": 1e-300}, 1e300));
    // i64::MAX is 7 * 1317624576693539401: exact integer arithmetic, no rounding through f64.
    assert!(val(doc! {"multipleOf": 7}, i64::MAX));
    assert!(!val(doc! {"multipleOf": 7}, i64::MAX - 1));
    assert!(!val(doc! {"multipleOf": 1}, f64::INFINITY));
    assert!(!val(doc! {"multipleOf": 1}, f64::NAN));
    assert!(val(doc! {"multipleOf": 3}, "not a number"));
}

#[test]
fn string_lengths_count_code_points() {
    assert!(val(doc! {"minLength": 3}, "abc"));
    assert!(!val(doc! {"minLength": 3}, "ab"));
    assert!(val(doc! {"maxLength": 2}, "ab"));
    assert!(!val(doc! {"maxLength": 2}, "abc"));
    // Three code points, nine bytes.
    assert!(val(doc! {"maxLength": 3}, "日本語"));
    assert!(!val(doc! {"minLength": 4}, "日本語"));
    assert!(val(doc! {"maxLength": 1.0}, "é"));
    // Only strings are measured.
    assert!(val(doc! {"minLength": 3}, 1));
    assert!(val(doc! {"maxLength": 0}, vec![Bson::Int32(1)]));
}

#[test]
fn pattern_searches_strings_only() {
    assert!(val(doc! {"pattern": "b+"}, "abbbc"));
    assert!(!val(doc! {"pattern": "^b"}, "abc"));
    assert!(!val(doc! {"pattern": "B"}, "abc"));
    assert!(val(doc! {"pattern": "^b"}, 5));
    assert!(val(doc! {"pattern": "^b"}, Bson::Null));
}

#[test]
fn items_schema_and_tuple() {
    let s = doc! {"items": {"bsonType": "int", "minimum": 0}};
    assert!(val(s.clone(), vec![Bson::Int32(1), Bson::Int32(2)]));
    assert!(val(s.clone(), Vec::<Bson>::new()));
    assert!(!val(
        s.clone(),
        vec![Bson::Int32(1), Bson::String("x".into())]
    ));
    assert!(!val(s.clone(), vec![Bson::Int32(-1)]));
    assert!(val(s, "not an array"));

    let tuple = doc! {"items": [{"bsonType": "string"}, {"bsonType": "int"}]};
    assert!(val(tuple.clone(), vec![Bson::from("a"), Bson::Int32(1)]));
    assert!(val(tuple.clone(), vec![Bson::from("a")]));
    assert!(val(
        tuple.clone(),
        vec![Bson::from("a"), Bson::Int32(1), Bson::Boolean(true)]
    ));
    assert!(!val(tuple.clone(), vec![Bson::Int32(1), Bson::from("a")]));

    let closed = doc! {"items": [{"bsonType": "string"}], "additionalItems": false};
    assert!(val(closed.clone(), vec![Bson::from("a")]));
    assert!(!val(closed, vec![Bson::from("a"), Bson::from("b")]));
    let typed = doc! {"items": [{"bsonType": "string"}], "additionalItems": {"bsonType": "int"}};
    assert!(val(
        typed.clone(),
        vec![Bson::from("a"), Bson::Int32(1), Bson::Int32(2)]
    ));
    assert!(!val(
        typed,
        vec![Bson::from("a"), Bson::Int32(1), Bson::from("b")]
    ));
    // Without a positional `items` list, additionalItems is inert.
    assert!(val(
        doc! {"additionalItems": false},
        vec![Bson::Int32(1), Bson::Int32(2)]
    ));
    assert!(val(
        doc! {"items": {}, "additionalItems": false},
        vec![Bson::Int32(1)]
    ));
}

#[test]
fn nested_items_of_objects() {
    let s = doc! {"properties": {"tags": {
        "bsonType": "array",
        "items": {"bsonType": "object", "required": ["k"], "properties": {"k": {"bsonType": "string"}}},
    }}};
    assert!(top(
        s.clone(),
        doc! {"tags": [{"k": "a"}, {"k": "b", "x": 1}]}
    ));
    assert!(!top(s.clone(), doc! {"tags": [{"k": "a"}, {"x": 1}]}));
    assert!(!top(s.clone(), doc! {"tags": [{"k": 1}]}));
    assert!(!top(s, doc! {"tags": {"k": "a"}}));
}

#[test]
fn item_counts_and_uniqueness() {
    assert!(val(
        doc! {"minItems": 2},
        vec![Bson::Int32(1), Bson::Int32(2)]
    ));
    assert!(!val(doc! {"minItems": 2}, vec![Bson::Int32(1)]));
    assert!(val(doc! {"maxItems": 1}, vec![Bson::Int32(1)]));
    assert!(!val(
        doc! {"maxItems": 1},
        vec![Bson::Int32(1), Bson::Int32(2)]
    ));
    assert!(val(doc! {"minItems": 5}, "short"));

    let u = doc! {"uniqueItems": true};
    assert!(val(
        u.clone(),
        vec![Bson::Int32(1), Bson::Int32(2), Bson::from("1")]
    ));
    assert!(!val(
        u.clone(),
        vec![Bson::Int32(1), Bson::Int32(2), Bson::Int32(1)]
    ));
    // Equality is by value across numeric types...
    assert!(!val(u.clone(), vec![Bson::Int32(1), Bson::Double(1.0)]));
    // ...and ignores field order in embedded documents.
    assert!(!val(
        u.clone(),
        vec![
            Bson::from(doc! {"a": 1, "b": 2}),
            Bson::from(doc! {"b": 2, "a": 1})
        ]
    ));
    assert!(val(
        u.clone(),
        vec![Bson::from(doc! {"a": 1}), Bson::from(doc! {"a": 2})]
    ));
    assert!(val(u.clone(), Vec::<Bson>::new()));
    assert!(val(u, 5));
    assert!(val(
        doc! {"uniqueItems": false},
        vec![Bson::Int32(1), Bson::Int32(1)]
    ));
}

#[test]
fn property_counts() {
    assert!(top(doc! {"minProperties": 2}, doc! {"_id": 1, "a": 1}));
    assert!(!top(doc! {"minProperties": 2}, doc! {"_id": 1}));
    assert!(top(doc! {"maxProperties": 1}, doc! {"_id": 1}));
    assert!(!top(doc! {"maxProperties": 1}, doc! {"_id": 1, "a": 1}));
    assert!(val(doc! {"maxProperties": 1}, doc! {"x": 1}));
    assert!(!val(doc! {"maxProperties": 1}, doc! {"x": 1, "y": 2}));
    assert!(val(doc! {"maxProperties": 0}, "not an object"));
}

#[test]
fn additional_and_pattern_properties() {
    let closed = doc! {"properties": {"_id": {}, "a": {}}, "additionalProperties": false};
    assert!(top(closed.clone(), doc! {"_id": 1, "a": 2}));
    assert!(top(closed.clone(), doc! {"_id": 1}));
    assert!(!top(closed.clone(), doc! {"_id": 1, "b": 2}));
    // The classic pitfall: at top level `_id` is a property like any other.
    assert!(!top(
        doc! {"properties": {"a": {}}, "additionalProperties": false},
        doc! {"_id": 1, "a": 2}
    ));

    let typed = doc! {"properties": {"_id": {}}, "additionalProperties": {"bsonType": "int"}};
    assert!(top(typed.clone(), doc! {"_id": "x", "a": 1, "b": 2}));
    assert!(!top(typed, doc! {"_id": "x", "a": 1, "b": "2"}));

    let patterned = doc! {
        "properties": {"_id": {}},
        "patternProperties": {"^s_": {"bsonType": "string"}, "^n_": {"bsonType": "number"}},
        "additionalProperties": false,
    };
    assert!(top(
        patterned.clone(),
        doc! {"_id": 1, "s_a": "x", "n_b": 2.5}
    ));
    assert!(!top(patterned.clone(), doc! {"_id": 1, "s_a": 1}));
    assert!(!top(patterned.clone(), doc! {"_id": 1, "other": 1}));
    // Patterns search (unanchored) and also apply to names listed in `properties`.
    let overlap =
        doc! {"properties": {"xid": {}}, "patternProperties": {"id": {"bsonType": "int"}}};
    assert!(top(overlap.clone(), doc! {"xid": 1, "idx": 2}));
    assert!(!top(overlap.clone(), doc! {"xid": "1"}));
    assert!(!top(overlap, doc! {"idx": "2"}));
    // Nested and inert on non-objects.
    assert!(val(doc! {"additionalProperties": false}, 5));
    assert!(!val(doc! {"additionalProperties": false}, doc! {"x": 1}));
    assert!(val(doc! {"additionalProperties": false}, doc! {}));
}

#[test]
fn enum_values() {
    let s = doc! {"enum": ["red", "green", 3, Bson::Null, {"a": 1, "b": 2}, [1, 2]]};
    assert!(val(s.clone(), "red"));
    assert!(!val(s.clone(), "blue"));
    assert!(val(s.clone(), 3.0));
    assert!(val(s.clone(), 3_i64));
    assert!(val(s.clone(), Bson::Null));
    assert!(val(s.clone(), doc! {"b": 2, "a": 1}));
    assert!(!val(s.clone(), doc! {"a": 1}));
    assert!(val(s.clone(), vec![Bson::Int32(1), Bson::Int32(2)]));
    // Arrays compare whole, not element-wise.
    assert!(!val(s.clone(), vec![Bson::from("red")]));
    assert!(!val(s, vec![Bson::Int32(2), Bson::Int32(1)]));
    // At top level only documents can match, and field order does not matter.
    let root = doc! {"enum": [{"_id": 1, "a": 1}, 5]};
    assert!(top(root.clone(), doc! {"a": 1, "_id": 1}));
    assert!(!top(root, doc! {"_id": 1, "a": 2}));
}

#[test]
fn dependencies() {
    let props = doc! {"dependencies": {"card": ["billing", "cvv"]}};
    assert!(top(props.clone(), doc! {"card": 1, "billing": 2, "cvv": 3}));
    assert!(!top(props.clone(), doc! {"card": 1, "billing": 2}));
    assert!(top(props.clone(), doc! {"billing": 2}));
    assert!(top(props, doc! {}));
    let schema = doc! {"dependencies": {"card": {"required": ["billing"], "properties": {"billing": {"bsonType": "string"}}}}};
    assert!(top(schema.clone(), doc! {"card": 1, "billing": "x"}));
    assert!(!top(schema.clone(), doc! {"card": 1, "billing": 2}));
    assert!(!top(schema.clone(), doc! {"card": 1}));
    assert!(top(schema, doc! {"billing": 2}));
    assert!(val(doc! {"dependencies": {"a": ["b"]}}, 1));
    assert!(!val(doc! {"dependencies": {"a": ["b"]}}, doc! {"a": 1}));
}

#[test]
fn combinators() {
    let all = doc! {"allOf": [{"minimum": 0}, {"maximum": 10}]};
    assert!(val(all.clone(), 5));
    assert!(!val(all.clone(), 11));
    assert!(!val(all, -1));

    let any = doc! {"anyOf": [{"bsonType": "string"}, {"bsonType": "int", "minimum": 100}]};
    assert!(val(any.clone(), "x"));
    assert!(val(any.clone(), 150));
    assert!(!val(any.clone(), 50));
    assert!(!val(any, true));

    let one = doc! {"oneOf": [{"minimum": 5}, {"maximum": 10}]};
    assert!(val(one.clone(), 2));
    assert!(val(one.clone(), 12));
    assert!(!val(one.clone(), 7));
    // A string satisfies both (bounds ignore strings): more than one is a failure.
    assert!(!val(one, "s"));

    let not = doc! {"not": {"bsonType": "string"}};
    assert!(val(not.clone(), 1));
    assert!(!val(not.clone(), "s"));
    // `not` of an always-true schema rejects everything, missing fields aside.
    assert!(!top(doc! {"not": {}}, doc! {"a": 1}));
    assert!(top(doc! {"properties": {"v": {"not": {}}}}, doc! {"a": 1}));

    let top_level = doc! {"anyOf": [{"required": ["a"]}, {"required": ["b"]}]};
    assert!(top(top_level.clone(), doc! {"b": 1}));
    assert!(!top(top_level, doc! {"c": 1}));
}

#[test]
fn title_and_description_are_ignored() {
    let s = doc! {"title": "t", "description": "d", "properties": {"a": {"description": "x", "bsonType": "int"}}};
    assert!(top(s.clone(), doc! {"a": 1}));
    assert!(!top(s, doc! {"a": "1"}));
}

#[test]
fn composes_with_other_operators() {
    let s = doc! {"required": ["a"]};
    assert!(matches(
        doc! {"$jsonSchema": s.clone(), "b": 2},
        doc! {"a": 1, "b": 2}
    ));
    assert!(!matches(
        doc! {"$jsonSchema": s.clone(), "b": 2},
        doc! {"a": 1, "b": 3}
    ));
    assert!(matches(
        doc! {"$or": [{"$jsonSchema": s.clone()}, {"b": 2}]},
        doc! {"b": 2}
    ));
    assert!(!matches(
        doc! {"$nor": [{"$jsonSchema": s.clone()}]},
        doc! {"a": 1}
    ));
    assert!(matches(
        doc! {"$and": [{"$jsonSchema": s.clone()}, {"$jsonSchema": {"required": ["b"]}}]},
        doc! {"a": 1, "b": 1}
    ));
    // Inside $elemMatch the schema sees each array element.
    assert!(matches(
        doc! {"arr": {"$elemMatch": {"$jsonSchema": s.clone()}}},
        doc! {"arr": [{"b": 1}, {"a": 1}]}
    ));
    assert!(!matches(
        doc! {"arr": {"$elemMatch": {"$jsonSchema": s}}},
        doc! {"arr": [{"b": 1}]}
    ));
}

#[test]
fn matching_is_against_the_raw_document() {
    let f = filter(doc! {"$jsonSchema": {"properties": {"a": {"bsonType": "int"}}}});
    assert!(f.matches(&raw(&doc! {"a": 1})));
    assert_eq!(f.matches_checked(&raw(&doc! {"a": "x"})), Ok(false));
}

#[test]
fn keyword_errors() {
    assert_eq!(filter_err(doc! {"$jsonSchema": 1}).code, 14);
    assert_eq!(filter_err(doc! {"$jsonSchema": [{}]}).code, 14);
    assert_err(doc! {"$ref": "#/x"}, 9, "'$ref' is not currently supported");
    assert_err(
        doc! {"format": "email"},
        9,
        "'format' is not currently supported",
    );
    assert_err(doc! {"default": 1}, 9, "not currently supported");
    assert_err(doc! {"definitions": {}}, 9, "not currently supported");
    assert_err(doc! {"$schema": "x"}, 9, "not currently supported");
    assert_err(doc! {"foo": 1}, 9, "Unknown $jsonSchema keyword: foo");
    assert_err(doc! {"exclusiveminimum": true}, 9, "Unknown"); // keywords are case-sensitive
    assert_err(
        doc! {"properties": {"a": {"nope": 1}}},
        9,
        "Unknown $jsonSchema keyword: nope",
    );
    assert_err(doc! {"items": [{"bogus": true}]}, 9, "bogus");
    assert_err(doc! {"not": {"$ref": "x"}}, 9, "$ref");
}

#[test]
fn type_errors() {
    assert_err(
        doc! {"type": "integer"},
        9,
        "'integer' is not currently supported",
    );
    assert_err(doc! {"type": ["string", "integer"]}, 9, "integer");
    assert_err(doc! {"bsonType": "integer"}, 9, "integer");
    assert_err(doc! {"type": "int"}, 2, "Unknown type name alias: int");
    assert_err(
        doc! {"bsonType": "boolean"},
        2,
        "Unknown type name alias: boolean",
    );
    assert_err(doc! {"bsonType": "missing"}, 2, "$exists");
    assert_err(doc! {"type": 1}, 14, "must be either a string or an array");
    assert_err(doc! {"bsonType": [1]}, 14, "array elements must be strings");
    assert_err(doc! {"type": []}, 9, "must name at least one type");
    assert_err(doc! {"bsonType": ["int", "int"]}, 9, "duplicate value: int");
    assert_err(
        doc! {"type": "object", "bsonType": "object"},
        9,
        "Cannot specify both",
    );
    assert_err(doc! {"title": 1}, 14, "'title' must be of type string");
    assert_err(doc! {"description": false}, 14, "must be of type string");
}

#[test]
fn argument_errors() {
    assert_err(doc! {"minimum": "a"}, 14, "'minimum' must be a number");
    assert_err(
        doc! {"maximum": Bson::Null},
        14,
        "'maximum' must be a number",
    );
    assert_err(
        doc! {"minimum": 1, "exclusiveMinimum": 1},
        14,
        "'exclusiveMinimum' must be a boolean",
    );
    assert_err(
        doc! {"exclusiveMaximum": true},
        9,
        "'maximum' must be a present if exclusiveMaximum is present",
    );
    assert_err(doc! {"multipleOf": "2"}, 14, "must be a number");
    assert_err(doc! {"multipleOf": 0}, 9, "must have a positive value");
    assert_err(doc! {"multipleOf": -2.5}, 9, "must have a positive value");
    assert_err(
        doc! {"minLength": "3"},
        9,
        "Expected a number in: minLength",
    );
    assert_err(doc! {"maxLength": 1.5}, 9, "Expected an integer");
    assert_err(
        doc! {"minItems": -1},
        9,
        "Expected a positive number in: minItems: -1",
    );
    assert_err(doc! {"maxProperties": f64::NAN}, 9, "NaN");
    assert_err(doc! {"minProperties": 1e300}, 9, "64-bit integer");
    assert_err(doc! {"pattern": 1}, 14, "'pattern' must be a string");
    let bad_regex = err(doc! {"pattern": "("});
    assert_eq!(bad_regex.code, 51091, "{bad_regex:?}");
    assert_err(
        doc! {"uniqueItems": 1},
        14,
        "'uniqueItems' must be a boolean",
    );
    assert_err(doc! {"items": 1}, 14, "must be an array or an object");
    assert_err(
        doc! {"items": [1]},
        14,
        "each element of the array is an object",
    );
    assert_err(
        doc! {"additionalItems": 1},
        14,
        "either an object or a boolean",
    );
    assert_err(doc! {"required": "a"}, 14, "'required' must be an array");
    assert_err(doc! {"required": [1]}, 14, "array of strings");
    assert_err(doc! {"required": []}, 9, "cannot be an empty array");
    assert_err(doc! {"required": ["a", "a"]}, 9, "duplicate values");
    assert_err(doc! {"properties": 1}, 14, "'properties' must be an object");
    assert_err(
        doc! {"properties": {"a": 1}},
        14,
        "Nested schema for $jsonSchema property 'a' must be an object",
    );
    assert_err(doc! {"patternProperties": []}, 14, "must be an object");
    assert_err(
        doc! {"patternProperties": {"^a": true}},
        14,
        "has property '^a' which is not an object",
    );
    assert_err(doc! {"additionalProperties": 1}, 14, "object or a boolean");
    assert_err(
        doc! {"dependencies": 1},
        14,
        "'dependencies' must be an object",
    );
    assert_err(
        doc! {"dependencies": {"a": 1}},
        14,
        "either an object or an array",
    );
    assert_err(
        doc! {"dependencies": {"a": []}},
        9,
        "cannot be an empty array",
    );
    assert_err(
        doc! {"dependencies": {"a": [1]}},
        14,
        "can only contain strings",
    );
    assert_err(
        doc! {"dependencies": {"a": ["b", "b"]}},
        9,
        "duplicate element: b",
    );
    assert_err(doc! {"allOf": {}}, 14, "'allOf' must be an array");
    assert_err(doc! {"anyOf": []}, 2, "'anyOf' must be a non-empty array");
    assert_err(doc! {"oneOf": [1]}, 14, "array of objects");
    assert_err(doc! {"not": []}, 14, "'not' must be an object");
    assert_err(doc! {"enum": 1}, 14, "'enum' must be an array");
    assert_err(doc! {"enum": []}, 9, "cannot be an empty array");
    assert_err(
        doc! {"enum": [1, 1.0]},
        9,
        "cannot contain duplicate values",
    );
    assert_err(
        doc! {"enum": [{"a": 1, "b": 1}, {"b": 1, "a": 1}]},
        9,
        "duplicate",
    );
}

#[test]
fn errors_beyond_the_first_keyword_are_found() {
    // The error sits deep inside an otherwise valid schema.
    assert_err(
        doc! {"properties": {"a": {"items": {"properties": {"b": {"anyOf": [{"minimum": "x"}]}}}}}},
        14,
        "'minimum' must be a number",
    );
}

#[test]
fn duplicate_keywords_are_refused() {
    // `doc!` would collapse the duplicate, so the bytes are assembled by hand.
    let mut schema = bson::RawDocumentBuf::new();
    schema.append(bson::cstr!("bsonType"), "int");
    schema.append(bson::cstr!("bsonType"), "long");
    let mut f = bson::RawDocumentBuf::new();
    f.append(bson::cstr!("$jsonSchema"), schema);
    let e = mangrove_query::Filter::parse(&f).expect_err("duplicate keyword");
    assert_eq!(e.code, 9, "{e:?}");
    assert!(
        e.message
            .contains("Duplicate $jsonSchema keyword: bsonType"),
        "{e:?}"
    );
}

#[test]
fn field_position_is_not_an_operator() {
    let e = filter_err(doc! {"a": {"$jsonSchema": {}}});
    assert_eq!(e.code, 2, "{e:?}");
    assert!(e.message.contains("unknown operator"), "{e:?}");
}

#[test]
fn deep_schemas_are_refused_not_overflowed() {
    let mut schema = doc! {"bsonType": "object"};
    for _ in 0..150 {
        schema = doc! {"properties": {"a": schema}};
    }
    let e = err(schema);
    assert_eq!(e.code, 2, "{e:?}");
    assert!(e.message.contains("depth"), "{e:?}");

    let mut ok = doc! {"bsonType": "int"};
    let mut d = Bson::Int32(1);
    for _ in 0..40 {
        ok = doc! {"properties": {"a": ok}};
        d = Bson::from(doc! {"a": d});
    }
    let Bson::Document(d) = d else { unreachable!() };
    assert!(top(ok.clone(), d.clone()));
    let mut wrong = Bson::from("x");
    for _ in 0..40 {
        wrong = Bson::from(doc! {"a": wrong});
    }
    let Bson::Document(wrong) = wrong else {
        unreachable!()
    };
    assert!(!top(ok, wrong));
}
