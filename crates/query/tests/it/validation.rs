//! Collection validators: what they refuse, and the `errInfo` of a failure in mongod 5.0+'s
//! shape.

use crate::common::raw;
use bson::{Bson, Document, doc};
use mangrove_query::Validator;

fn validator(spec: Document) -> Validator {
    Validator::parse(&raw(&spec)).expect("validator parses")
}

/// The `errInfo` of `d` against `spec` (it must fail).
fn info(spec: Document, d: Document) -> Document {
    validator(spec.clone())
        .error_info(&raw(&d))
        .unwrap_or_else(|| panic!("{d} should fail {spec}"))
}

fn details(spec: Document, d: Document) -> Document {
    info(spec, d)
        .get_document("details")
        .expect("details")
        .clone()
}

#[test]
fn a_satisfying_document_has_no_error() {
    let v = validator(doc! { "a": { "$gt": 5 } });
    assert!(v.matches(&raw(&doc! { "_id": 1, "a": 6 })));
    assert_eq!(v.error_info(&raw(&doc! { "_id": 1, "a": 6 })), None);
}

#[test]
fn refused_operators() {
    for (spec, needle) in [
        (doc! { "$where": "true" }, "$where is not allowed"),
        (doc! { "$text": { "$search": "x" } }, "$text is not allowed"),
        (
            doc! { "$and": [{ "$where": "1" }] },
            "$where is not allowed",
        ),
        (
            doc! { "loc": { "$near": [0, 0] } },
            "$near, and $nearSphere",
        ),
        (
            doc! { "loc": { "$nearSphere": [0, 0] } },
            "$near, and $nearSphere",
        ),
    ] {
        let e = Validator::parse(&raw(&spec)).expect_err("refused");
        assert_eq!(e.code, 2, "{spec}");
        assert!(e.message.contains(needle), "{spec}: {}", e.message);
    }
    // $expr is allowed; an unknown operator is the parse error.
    assert!(Validator::parse(&raw(&doc! { "$expr": { "$gt": ["$a", 1] } })).is_ok());
    let e = Validator::parse(&raw(&doc! { "a": { "$bogus": 1 } })).expect_err("unknown");
    assert!(
        e.message.contains("unknown operator: $bogus"),
        "{}",
        e.message
    );
}

#[test]
fn single_comparison_reports_its_operator() {
    let i = info(doc! { "a": { "$gt": 5 } }, doc! { "_id": 7, "a": 3 });
    assert_eq!(
        i,
        doc! {
            "failingDocumentId": 7,
            "details": {
                "operatorName": "$gt",
                "specifiedAs": { "a": { "$gt": 5 } },
                "reason": "comparison failed",
                "consideredValue": 3,
            },
        }
    );
}

#[test]
fn implicit_equality_and_missing_field() {
    let d = details(doc! { "status": "A" }, doc! { "_id": 1 });
    assert_eq!(
        d,
        doc! {
            "operatorName": "$eq",
            "specifiedAs": { "status": "A" },
            "reason": "field was missing",
        }
    );
}

#[test]
fn several_clauses_are_an_and_of_the_failing_ones() {
    let d = details(
        doc! { "a": { "$gte": 1, "$lt": 10 }, "b": { "$type": "string" } },
        doc! { "_id": 1, "a": 20, "b": 5 },
    );
    assert_eq!(d.get_str("operatorName").ok(), Some("$and"));
    let clauses = d.get_array("clausesNotSatisfied").expect("clauses");
    assert_eq!(clauses.len(), 2, "{d}");
    assert_eq!(
        clauses[0],
        Bson::Document(doc! {
            "index": 1,
            "details": {
                "operatorName": "$lt",
                "specifiedAs": { "a": { "$lt": 10 } },
                "reason": "comparison failed",
                "consideredValue": 20,
            },
        })
    );
    assert_eq!(
        clauses[1],
        Bson::Document(doc! {
            "index": 2,
            "details": {
                "operatorName": "$type",
                "specifiedAs": { "b": { "$type": "string" } },
                "reason": "type did not match",
                "consideredValue": 5,
                "consideredType": "int",
            },
        })
    );
}

#[test]
fn arrays_are_considered_element_by_element() {
    let d = details(doc! { "a": { "$gt": 5 } }, doc! { "_id": 1, "a": [1, 2] });
    assert_eq!(
        d.get_array("consideredValues").expect("values"),
        &vec![Bson::Int32(1), Bson::Int32(2)]
    );
}

#[test]
fn operator_of_the_wrong_type() {
    let d = details(
        doc! { "tags": { "$size": 2 } },
        doc! { "_id": 1, "tags": "x" },
    );
    assert_eq!(d.get_str("reason").ok(), Some("type did not match"));
    assert_eq!(d.get_str("expectedType").ok(), Some("array"));
    assert_eq!(d.get_str("consideredType").ok(), Some("string"));
}

#[test]
fn or_lists_every_clause_and_nor_the_matching_ones() {
    let d = details(
        doc! { "$or": [{ "a": 1 }, { "b": { "$exists": true } }] },
        doc! { "_id": 1, "a": 2 },
    );
    assert_eq!(d.get_str("operatorName").ok(), Some("$or"));
    let clauses = d.get_array("clausesNotSatisfied").expect("clauses");
    assert_eq!(clauses.len(), 2);
    let second = clauses[1].as_document().expect("doc");
    assert_eq!(
        second.get_document("details").expect("details"),
        &doc! {
            "operatorName": "$exists",
            "specifiedAs": { "b": { "$exists": true } },
            "reason": "path does not exist",
        }
    );

    let d = details(
        doc! { "$nor": [{ "a": 1 }, { "a": 2 }] },
        doc! { "_id": 1, "a": 2 },
    );
    let clauses = d.get_array("clausesNotSatisfied").expect("clauses");
    assert_eq!(clauses.len(), 1);
    let only = clauses[0].as_document().expect("doc");
    assert_eq!(only.get_i32("index").ok(), Some(1));
    assert_eq!(
        only.get_document("details")
            .and_then(|d| d.get_str("reason"))
            .ok(),
        Some("comparison succeeded")
    );
}

#[test]
fn expr_reports_its_result() {
    let d = details(
        doc! { "$expr": { "$gt": ["$a", "$b"] } },
        doc! { "_id": 1, "a": 1, "b": 2 },
    );
    assert_eq!(
        d,
        doc! {
            "operatorName": "$expr",
            "specifiedAs": { "$expr": { "$gt": ["$a", "$b"] } },
            "reason": "expression did not match",
            "expressionResult": false,
        }
    );
}

fn students() -> Document {
    doc! { "$jsonSchema": {
        "bsonType": "object",
        "required": ["name", "year", "major"],
        "properties": {
            "name": { "bsonType": "string", "description": "must be a string" },
            "gpa": { "bsonType": ["double"], "description": "must be a double if the field exists" },
            "year": { "bsonType": "int", "minimum": 2017 },
        },
    } }
}

#[test]
fn json_schema_required_and_property_types() {
    let d = details(
        students(),
        doc! { "_id": 1, "name": "Alice", "year": 2016, "gpa": 3 },
    );
    assert_eq!(d.get_str("operatorName").ok(), Some("$jsonSchema"));
    let rules = d.get_array("schemaRulesNotSatisfied").expect("rules");
    assert_eq!(rules.len(), 2, "{d}");
    assert_eq!(
        rules[0],
        Bson::Document(doc! {
            "operatorName": "required",
            "specifiedAs": { "required": ["name", "year", "major"] },
            "missingProperties": ["major"],
        })
    );
    let properties = rules[1].as_document().expect("doc");
    assert_eq!(properties.get_str("operatorName").ok(), Some("properties"));
    let failing = properties
        .get_array("propertiesNotSatisfied")
        .expect("properties");
    assert_eq!(failing.len(), 2, "{properties}");
    assert_eq!(
        failing[0],
        Bson::Document(doc! {
            "propertyName": "gpa",
            "description": "must be a double if the field exists",
            "details": [{
                "operatorName": "bsonType",
                "specifiedAs": { "bsonType": ["double"] },
                "reason": "type did not match",
                "consideredValue": 3,
                "consideredType": "int",
            }],
        })
    );
    assert_eq!(
        failing[1],
        Bson::Document(doc! {
            "propertyName": "year",
            "details": [{
                "operatorName": "minimum",
                "specifiedAs": { "minimum": 2017 },
                "reason": "comparison failed",
                "consideredValue": 2016,
            }],
        })
    );
}

#[test]
fn json_schema_nested_objects_and_additional_properties() {
    let spec = doc! { "$jsonSchema": {
        "properties": {
            "address": { "bsonType": "object", "properties": { "zip": { "bsonType": "string" } } },
        },
        "additionalProperties": false,
    } };
    let d = details(
        spec,
        doc! { "_id": 1, "address": { "zip": 12345 }, "extra": true },
    );
    let rules = d.get_array("schemaRulesNotSatisfied").expect("rules");
    assert_eq!(rules.len(), 2, "{d}");
    let nested = rules[0].as_document().expect("doc");
    let address = nested.get_array("propertiesNotSatisfied").expect("props")[0]
        .as_document()
        .expect("doc");
    let inner = address.get_array("details").expect("details")[0]
        .as_document()
        .expect("doc");
    assert_eq!(inner.get_str("operatorName").ok(), Some("properties"));
    let zip = inner.get_array("propertiesNotSatisfied").expect("zip")[0]
        .as_document()
        .expect("doc");
    assert_eq!(zip.get_str("propertyName").ok(), Some("zip"));
    assert_eq!(
        rules[1],
        Bson::Document(doc! {
            "operatorName": "additionalProperties",
            "specifiedAs": { "additionalProperties": false },
            "additionalProperties": ["_id", "extra"],
        })
    );
}

#[test]
fn json_schema_enum_and_lengths() {
    let spec = doc! { "$jsonSchema": { "properties": {
        "size": { "enum": ["S", "M", "L"] },
        "code": { "minLength": 3 },
    } } };
    let d = details(spec, doc! { "_id": 1, "size": "XL", "code": "ab" });
    let props = d.get_array("schemaRulesNotSatisfied").expect("rules")[0]
        .as_document()
        .expect("doc")
        .get_array("propertiesNotSatisfied")
        .expect("props")
        .clone();
    let reasons: Vec<&str> = props
        .iter()
        .map(|p| {
            p.as_document()
                .expect("doc")
                .get_array("details")
                .expect("details")[0]
                .as_document()
                .expect("doc")
                .get_str("reason")
                .expect("reason")
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "value was not found in enum",
            "specified string length was not satisfied"
        ]
    );
}

#[test]
fn a_document_without_id_has_no_failing_id() {
    let i = info(doc! { "a": 1 }, doc! { "a": 2 });
    assert!(!i.contains_key("failingDocumentId"), "{i}");
}
