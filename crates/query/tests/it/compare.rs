use crate::common;
use std::cmp::Ordering;

use bson::{
    Binary, Bson, Decimal128, Document, RawBson, Timestamp, doc, oid::ObjectId, spec::BinarySubtype,
};
use mangrove_query::{compare_values, encode_key};

fn rb(v: Bson) -> RawBson {
    RawBson::try_from(v).unwrap()
}

fn cmp(a: Bson, b: Bson) -> Ordering {
    let (a, b) = (rb(a), rb(b));
    let o = compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref());
    let (mut ka, mut kb) = (Vec::new(), Vec::new());
    encode_key(a.as_raw_bson_ref(), &mut ka);
    encode_key(b.as_raw_bson_ref(), &mut kb);
    assert_eq!(ka.cmp(&kb), o, "key order disagrees for {a:?} vs {b:?}");
    o
}

#[test]
fn type_order() {
    let ascending = vec![
        Bson::MinKey,
        Bson::Undefined,
        Bson::Null,
        Bson::Double(f64::NAN),
        Bson::Double(f64::NEG_INFINITY),
        Bson::Int64(i64::MIN),
        Bson::Int32(-1),
        Bson::Double(-0.5),
        Bson::Int32(0),
        Bson::Double(0.5),
        Bson::Int64(1 << 60),
        Bson::Double(f64::INFINITY),
        Bson::String(String::new()),
        Bson::Symbol("a".into()),
        Bson::String("b".into()),
        Bson::Document(doc! {}),
        Bson::Document(doc! {"a": 1}),
        Bson::Array(vec![]),
        Bson::Array(vec![Bson::Int32(1)]),
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![9],
        }),
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![0, 0],
        }),
        Bson::ObjectId(ObjectId::from_bytes([0; 12])),
        Bson::ObjectId(ObjectId::from_bytes([1; 12])),
        Bson::Boolean(false),
        Bson::Boolean(true),
        Bson::DateTime(bson::DateTime::from_millis(-5)),
        Bson::DateTime(bson::DateTime::from_millis(5)),
        Bson::Timestamp(Timestamp {
            time: 1,
            increment: 5,
        }),
        Bson::Timestamp(Timestamp {
            time: 2,
            increment: 0,
        }),
        Bson::RegularExpression(common::re("a", "")),
        Bson::RegularExpression(common::re("a", "i")),
        Bson::JavaScriptCode("x".into()),
        Bson::MaxKey,
    ];
    for (i, a) in ascending.iter().enumerate() {
        for (j, b) in ascending.iter().enumerate() {
            assert_eq!(cmp(a.clone(), b.clone()), i.cmp(&j), "{a} vs {b}");
        }
    }
}

#[test]
fn numbers_compare_by_value() {
    assert_eq!(cmp(Bson::Int32(1), Bson::Int64(1)), Ordering::Equal);
    assert_eq!(cmp(Bson::Int32(1), Bson::Double(1.0)), Ordering::Equal);
    assert_eq!(cmp(Bson::Double(-0.0), Bson::Int32(0)), Ordering::Equal);
    assert_eq!(
        cmp(Bson::Double(f64::NAN), Bson::Double(-f64::NAN)),
        Ordering::Equal
    );
    let big = (1_i64 << 53) + 1;
    assert_eq!(
        cmp(Bson::Int64(big), Bson::Double((1_i64 << 53) as f64)),
        Ordering::Greater
    );
    assert_eq!(
        cmp(
            Bson::Int64(i64::MAX),
            Bson::Double(9.223_372_036_854_776e18)
        ),
        Ordering::Less
    );
    assert_eq!(
        cmp(
            Bson::Int64(i64::MIN),
            Bson::Double(-9.223_372_036_854_776e18)
        ),
        Ordering::Equal
    );
    assert_eq!(cmp(Bson::Double(5e-324), Bson::Int32(0)), Ordering::Greater);
    assert_eq!(cmp(Bson::Double(1.5), Bson::Int32(1)), Ordering::Greater);
    let dec: Decimal128 = "1.5".parse().unwrap();
    assert_eq!(
        cmp(Bson::Decimal128(dec), Bson::Double(1.5)),
        Ordering::Equal
    );
    let dec: Decimal128 = "-1E+400".parse().unwrap();
    assert_eq!(
        cmp(Bson::Decimal128(dec), Bson::Double(f64::MIN)),
        Ordering::Less
    );
    let nan: Decimal128 = "NaN".parse().unwrap();
    assert_eq!(
        cmp(Bson::Decimal128(nan), Bson::Double(f64::NAN)),
        Ordering::Equal
    );
}

#[test]
fn equal_values_encode_identically() {
    let enc = |v: Bson| {
        let mut out = Vec::new();
        encode_key(rb(v).as_raw_bson_ref(), &mut out);
        out
    };
    assert_eq!(enc(Bson::Int32(7)), enc(Bson::Int64(7)));
    assert_eq!(enc(Bson::Int32(7)), enc(Bson::Double(7.0)));
    assert_eq!(enc(Bson::Double(0.0)), enc(Bson::Double(-0.0)));
    assert_eq!(enc(Bson::String("x".into())), enc(Bson::Symbol("x".into())));
    assert_eq!(
        enc(Bson::Document(doc! {"a": 1, "b": [2_i64]})),
        enc(Bson::Document(doc! {"a": 1.0, "b": [2.0]}))
    );
}

#[test]
fn documents_and_arrays() {
    let d = |x: Document| Bson::Document(x);
    // Type rank of the value comes before the field name.
    assert_eq!(cmp(d(doc! {"b": 1}), d(doc! {"a": "x"})), Ordering::Less);
    assert_eq!(cmp(d(doc! {"a": 1}), d(doc! {"b": 1})), Ordering::Less);
    assert_eq!(
        cmp(d(doc! {"a": 1}), d(doc! {"a": 1, "b": 0})),
        Ordering::Less
    );
    assert_eq!(
        cmp(d(doc! {"a": 2}), d(doc! {"a": 1, "b": 0})),
        Ordering::Greater
    );
    let a = |x: Vec<Bson>| Bson::Array(x);
    assert_eq!(
        cmp(a(vec![1.into(), 2.into()]), a(vec![1.into(), 3.into()])),
        Ordering::Less
    );
    assert_eq!(
        cmp(a(vec![1.into()]), a(vec![1.into(), Bson::MinKey])),
        Ordering::Less
    );
    assert_eq!(
        cmp(Bson::String("ab".into()), Bson::String("ab\0".into())),
        Ordering::Less
    );
    assert_eq!(
        cmp(Bson::String("ab\0".into()), Bson::String("ab\u{1}".into())),
        Ordering::Less
    );
    assert_eq!(
        cmp(d(doc! {"a\u{1}": 1}), d(doc! {"a": 1, "b": 1})),
        Ordering::Greater
    );
}

#[test]
fn deep_nesting_does_not_overflow() {
    let mut v = Bson::Int32(1);
    for _ in 0..300 {
        v = Bson::Document(doc! {"a": v});
    }
    assert_eq!(cmp(v.clone(), v), Ordering::Equal);
}
