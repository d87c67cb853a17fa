//! `schemaRulesNotSatisfied`: why a value fails a `$jsonSchema` (sub)schema, keyword by keyword.
//!
//! Each keyword is judged alone, by compiling a schema of just that keyword (with the keywords
//! it cannot be read without, such as `exclusiveMinimum` for `minimum`) and running it on the
//! value, so the verdicts are those of the real `$jsonSchema` evaluator. Keywords are reported
//! in the order the schema gives them.

use bson::{Bson, Document, RawBsonRef, RawDocumentBuf, doc};

use super::type_name;
use crate::jsonschema::Schema;

/// The rules of `schema` that `value` does not satisfy (empty when it satisfies them all).
pub(super) fn schema_errors(schema: &Document, value: &Bson) -> Vec<Document> {
    let mut errors = Vec::new();
    for (keyword, operand) in schema {
        let Some(alone) = keyword_schema(schema, keyword) else {
            continue;
        };
        if !satisfies(&alone, value) {
            errors.push(keyword_error(schema, keyword, operand, value));
        }
    }
    errors
}

/// A schema of `keyword` alone, or `None` for keywords judged with another one or not at all.
fn keyword_schema(schema: &Document, keyword: &str) -> Option<Document> {
    let companions: &[&str] = match keyword {
        "title" | "description" | "exclusiveMinimum" | "exclusiveMaximum" | "additionalItems"
        | "patternProperties" => return None,
        "minimum" => &["exclusiveMinimum"],
        "maximum" => &["exclusiveMaximum"],
        "items" => &["additionalItems"],
        "additionalProperties" => &["properties", "patternProperties"],
        _ => &[],
    };
    let mut alone = Document::new();
    for name in std::iter::once(&keyword).chain(companions) {
        if let Some(v) = schema.get(*name) {
            alone.insert(*name, v.clone());
        }
    }
    Some(alone)
}

/// Whether `value` satisfies `schema`: `{x: value}` against `{properties: {x: schema}}`, which
/// applies the schema to the value exactly as to any property. A schema that does not compile
/// counts as satisfied (the validator compiled, so only a lone companion keyword can fail).
pub(super) fn satisfies(schema: &Document, value: &Bson) -> bool {
    let wrapper = doc! { "properties": { "x": schema.clone() } };
    let (Ok(schema), Ok(doc)) = (
        RawDocumentBuf::try_from(&wrapper),
        RawDocumentBuf::try_from(&doc! { "x": value.clone() }),
    ) else {
        return true;
    };
    Schema::parse(RawBsonRef::Document(&schema), 0)
        .map(|s| s.matches_document(&doc))
        .unwrap_or(true)
}

/// How one keyword failed, in mongod's words.
fn keyword_error(schema: &Document, keyword: &str, operand: &Bson, value: &Bson) -> Document {
    let mut out = doc! { "operatorName": keyword };
    let specified = |out: &mut Document| {
        out.insert("specifiedAs", doc! { keyword: operand.clone() });
    };
    let leaf = |out: &mut Document, reason: &str| {
        out.insert("specifiedAs", doc! { keyword: operand.clone() });
        out.insert("reason", reason);
        out.insert("consideredValue", value.clone());
    };
    match keyword {
        "bsonType" | "type" => {
            leaf(&mut out, "type did not match");
            out.insert("consideredType", type_name(value));
        }
        "required" => {
            specified(&mut out);
            out.insert("missingProperties", missing(operand, value));
        }
        "properties" => {
            out.insert("propertiesNotSatisfied", properties_errors(operand, value));
        }
        "minimum" | "maximum" => {
            let exclusive = if keyword == "minimum" {
                "exclusiveMinimum"
            } else {
                "exclusiveMaximum"
            };
            let mut spec = doc! { keyword: operand.clone() };
            if let Some(e) = schema.get(exclusive) {
                spec.insert(exclusive, e.clone());
            }
            out.insert("specifiedAs", spec);
            out.insert("reason", "comparison failed");
            out.insert("consideredValue", value.clone());
        }
        "enum" => leaf(&mut out, "value was not found in enum"),
        "minLength" | "maxLength" => leaf(&mut out, "specified string length was not satisfied"),
        "pattern" => leaf(&mut out, "regular expression did not match"),
        "multipleOf" => leaf(
            &mut out,
            "considered value is not a multiple of the specified value",
        ),
        "minItems" | "maxItems" => leaf(&mut out, "array did not match specified length"),
        "uniqueItems" => leaf(&mut out, "found a duplicate item"),
        "minProperties" | "maxProperties" => {
            specified(&mut out);
            out.insert("reason", "specified number of properties was not satisfied");
            if let Bson::Document(d) = value {
                out.insert("numberOfProperties", d.len() as i32);
            }
        }
        "not" => {
            specified(&mut out);
            out.insert("reason", "child expression matched");
        }
        "additionalProperties" => additional_error(schema, operand, value, &mut out),
        "allOf" | "anyOf" | "oneOf" => logical_error(keyword, operand, value, &mut out),
        "items" => items_error(operand, value, &mut out),
        "dependencies" => {
            out.insert("failingDependencies", dependency_errors(operand, value));
        }
        _ => specified(&mut out),
    }
    out
}

/// The names `required` lists that `value` lacks, sorted as mongod reports them.
fn missing(required: &Bson, value: &Bson) -> Vec<String> {
    let (Bson::Array(names), Bson::Document(d)) = (required, value) else {
        return Vec::new();
    };
    let mut out: Vec<String> = names
        .iter()
        .filter_map(Bson::as_str)
        .filter(|n| !d.contains_key(*n))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

/// `propertiesNotSatisfied`: each present property whose subschema fails, with the subschema's
/// `title` and `description` and its own rules not satisfied.
fn properties_errors(properties: &Bson, value: &Bson) -> Vec<Document> {
    let (Bson::Document(properties), Bson::Document(d)) = (properties, value) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, sub) in properties {
        let (Some(v), Bson::Document(sub)) = (d.get(name), sub) else {
            continue;
        };
        let details = schema_errors(sub, v);
        if details.is_empty() {
            continue;
        }
        let mut entry = doc! { "propertyName": name };
        annotations(sub, &mut entry);
        entry.insert("details", details);
        out.push(entry);
    }
    out
}

fn annotations(schema: &Document, out: &mut Document) {
    for key in ["title", "description"] {
        if let Some(v) = schema.get(key) {
            out.insert(key, v.clone());
        }
    }
}

/// `additionalProperties`: `false` lists the additional properties; a schema names the first
/// one that fails it.
fn additional_error(schema: &Document, operand: &Bson, value: &Bson, out: &mut Document) {
    let Bson::Document(d) = value else { return };
    // A property is additional when the named and pattern properties, with empty subschemas,
    // and `additionalProperties: false` refuse it alone.
    let mut names_only = doc! { "additionalProperties": false };
    for key in ["properties", "patternProperties"] {
        if let Some(Bson::Document(p)) = schema.get(key) {
            let empty: Document = p
                .keys()
                .map(|k| (k.clone(), Bson::Document(Document::new())))
                .collect();
            names_only.insert(key, empty);
        }
    }
    let additional: Vec<&String> = d
        .iter()
        .filter(|(k, v)| {
            !satisfies(
                &names_only,
                &Bson::Document(doc! { k.as_str(): (*v).clone() }),
            )
        })
        .map(|(k, _)| k)
        .collect();
    match operand {
        Bson::Document(sub) => {
            let failing = additional.iter().find_map(|k| {
                let details = schema_errors(sub, &d[k.as_str()]);
                (!details.is_empty()).then(|| (k.to_string(), details))
            });
            annotations(sub, out);
            out.insert(
                "reason",
                "at least one additional property did not match the subschema",
            );
            if let Some((name, details)) = failing {
                out.insert("failingProperty", name);
                out.insert("details", details);
            }
        }
        _ => {
            out.insert(
                "specifiedAs",
                doc! { "additionalProperties": operand.clone() },
            );
            out.insert(
                "additionalProperties",
                additional.into_iter().cloned().collect::<Vec<_>>(),
            );
        }
    }
}

/// `allOf`/`anyOf`/`oneOf`: the subschemas not satisfied, by index; for `oneOf` satisfied by
/// more than one, those that are.
fn logical_error(keyword: &str, operand: &Bson, value: &Bson, out: &mut Document) {
    let Bson::Array(schemas) = operand else {
        return;
    };
    let subs: Vec<&Document> = schemas.iter().filter_map(Bson::as_document).collect();
    let matching: Vec<i32> = (0..subs.len())
        .filter(|&i| satisfies(subs[i], value))
        .map(|i| i as i32)
        .collect();
    if keyword == "oneOf" && matching.len() > 1 {
        out.insert("reason", "more than one subschema matched");
        out.insert("matchingSchemaIndexes", matching);
        return;
    }
    let failing: Vec<Document> = subs
        .iter()
        .enumerate()
        .filter(|(i, _)| !matching.contains(&(*i as i32)))
        .map(|(i, s)| {
            let mut entry = doc! { "index": i as i32 };
            annotations(s, &mut entry);
            entry.insert("details", schema_errors(s, value));
            entry
        })
        .collect();
    out.insert("schemasNotSatisfied", failing);
}

/// `items` with one subschema: the first item that fails it.
fn items_error(operand: &Bson, value: &Bson, out: &mut Document) {
    let (Bson::Document(sub), Bson::Array(items)) = (operand, value) else {
        out.insert("specifiedAs", doc! { "items": operand.clone() });
        return;
    };
    out.insert("reason", "At least one item did not match the sub-schema");
    if let Some((index, item)) = items.iter().enumerate().find(|(_, v)| !satisfies(sub, v)) {
        out.insert("itemIndex", index as i32);
        out.insert("details", schema_errors(sub, item));
    }
}

/// `dependencies`: each present property whose dependency fails: the properties it needs that
/// are missing, or why the value fails its schema.
fn dependency_errors(operand: &Bson, value: &Bson) -> Vec<Document> {
    let (Bson::Document(deps), Bson::Document(d)) = (operand, value) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, dep) in deps {
        if !d.contains_key(name) {
            continue;
        }
        let mut entry = doc! { "conditionalProperty": name };
        match dep {
            Bson::Array(_) => {
                let lacking = missing(dep, value);
                if lacking.is_empty() {
                    continue;
                }
                entry.insert("missingProperties", lacking);
            }
            Bson::Document(sub) => {
                let details = schema_errors(sub, value);
                if details.is_empty() {
                    continue;
                }
                entry.insert("details", details);
            }
            _ => continue,
        }
        out.push(entry);
    }
    out
}
