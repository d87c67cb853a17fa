use std::cmp::Ordering;

use bson::{Bson, Document, RawBson, RawDocumentBuf};
use mangrove_query::{Filter, Projection, SortSpec, Update, compare_values, encode_key};
use proptest::prelude::*;

fn scalar() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        (-3i64..3).prop_map(Bson::Int64),
        (-3i32..3).prop_map(Bson::Int32),
        any::<f64>().prop_map(Bson::Double),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(9_007_199_254_740_992.0),
            Just(-9.223_372_036_854_776e18),
            Just(1.5),
            Just(-2.0)
        ]
        .prop_map(Bson::Double),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just((1 << 53) + 1)].prop_map(Bson::Int64),
        "[a-c\u{0}\u{1}]{0,4}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        Just(Bson::MinKey),
        Just(Bson::MaxKey),
        any::<i64>().prop_map(|m| Bson::DateTime(bson::DateTime::from_millis(m))),
    ]
}

fn value() -> impl Strategy<Value = Bson> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            prop::collection::vec(("[ab]{1,2}", inner), 0..4)
                .prop_map(|fields| { Bson::Document(fields.into_iter().collect::<Document>()) }),
        ]
    })
}

fn raw(v: &Bson) -> RawBson {
    RawBson::try_from(v.clone()).expect("generated values convert")
}

fn key(v: &RawBson) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(v.as_raw_bson_ref(), &mut out);
    out
}

/// Filters built from operators (valid and invalid) over paths that exist in generated docs.
fn filter_value(depth: u32) -> BoxedStrategy<Bson> {
    let ops = prop_oneof![
        Just("$eq"),
        Just("$ne"),
        Just("$gt"),
        Just("$gte"),
        Just("$lt"),
        Just("$lte"),
        Just("$in"),
        Just("$nin"),
        Just("$exists"),
        Just("$not"),
        Just("$size"),
        Just("$all"),
        Just("$elemMatch"),
        Just("$mod"),
        Just("$type"),
        Just("$regex"),
        Just("$options"),
        Just("$bitsAllSet"),
        Just("$bitsAnyClear"),
        Just("$foo"),
        Just("$and"),
    ];
    let leaf = prop_oneof![
        value(),
        (ops, value()).prop_map(|(op, v)| Bson::Document(bson::doc! {op: v})),
        Just(Bson::Document(bson::doc! {"$regex": "a+", "$options": "i"})),
        Just(Bson::Document(bson::doc! {"$type": "number"})),
        Just(Bson::Document(bson::doc! {"$mod": [3, 1]})),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        leaf,
        filter_doc(depth - 1).prop_map(|d| Bson::Document(bson::doc! {"$elemMatch": d})),
        filter_doc(depth - 1).prop_map(|d| Bson::Document(bson::doc! {"$not": d})),
    ]
    .boxed()
}

fn filter_doc(depth: u32) -> BoxedStrategy<Document> {
    let path = prop_oneof![
        Just("a"),
        Just("b"),
        Just("a.b"),
        Just("a.0"),
        Just("b.a.1"),
        Just("$or"),
        Just("$and"),
        Just("$nor"),
        Just("$comment"),
        Just("$bogus"),
    ];
    let field = (path, filter_value(depth));
    prop::collection::vec(field, 0..4)
        .prop_flat_map(move |fields| {
            let nested = if depth == 0 {
                Just(Vec::new()).boxed()
            } else {
                prop::collection::vec(filter_doc(depth - 1), 0..3).boxed()
            };
            (Just(fields), nested)
        })
        .prop_map(|(fields, nested)| {
            let mut d = Document::new();
            for (k, v) in fields {
                if k.starts_with('$') && !nested.is_empty() && k != "$comment" && k != "$bogus" {
                    let list: Vec<Bson> = nested.iter().cloned().map(Bson::Document).collect();
                    d.insert(k, list);
                } else {
                    d.insert(k, v);
                }
            }
            d
        })
        .boxed()
}

fn doc_value() -> impl Strategy<Value = Document> {
    prop::collection::vec(("[ab]", value()), 0..4)
        .prop_map(|fields| fields.into_iter().collect::<Document>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn key_order_matches_compare(a in value(), b in value()) {
        let (ra, rb) = (raw(&a), raw(&b));
        let o = compare_values(ra.as_raw_bson_ref(), rb.as_raw_bson_ref());
        prop_assert_eq!(key(&ra).cmp(&key(&rb)), o);
        prop_assert_eq!(compare_values(rb.as_raw_bson_ref(), ra.as_raw_bson_ref()), o.reverse());
        if o == Ordering::Equal {
            prop_assert_eq!(key(&ra), key(&rb));
        }
    }

    #[test]
    fn compare_is_transitive(a in value(), b in value(), c in value()) {
        let (ra, rb, rc) = (raw(&a), raw(&b), raw(&c));
        let ab = compare_values(ra.as_raw_bson_ref(), rb.as_raw_bson_ref());
        let bc = compare_values(rb.as_raw_bson_ref(), rc.as_raw_bson_ref());
        if ab == bc && ab != Ordering::Equal {
            prop_assert_eq!(compare_values(ra.as_raw_bson_ref(), rc.as_raw_bson_ref()), ab);
        }
    }

    #[test]
    fn filters_never_panic(f in filter_doc(2), d in doc_value()) {
        let rf = RawDocumentBuf::try_from(&f).unwrap();
        let rd = RawDocumentBuf::try_from(&d).unwrap();
        if let Ok(filter) = Filter::parse(&rf) {
            let _ = filter.matches(&rd);
            let _ = filter.id_equality();
            let _ = filter.equality_seed();
            let _ = filter.positional_index(&rd);
        }
        // The same shapes as sort, projection and update specs.
        if let Ok(s) = SortSpec::parse(&rf) {
            let _ = s.compare(&rd, &rd);
        }
        if let Ok(p) = Projection::parse(&rf) {
            let _ = p.apply(&rd);
        }
    }

    #[test]
    fn equality_filter_matches_its_value(v in value()) {
        let d = bson::doc! {"a": v.clone()};
        let f = bson::doc! {"a": {"$eq": v}};
        let filter = Filter::parse(&RawDocumentBuf::try_from(&f).unwrap()).unwrap();
        prop_assert!(filter.matches(&RawDocumentBuf::try_from(&d).unwrap()));
    }

    #[test]
    fn updates_never_panic(
        op in prop_oneof![
            Just("$set"), Just("$unset"), Just("$inc"), Just("$mul"), Just("$min"), Just("$max"),
            Just("$push"), Just("$addToSet"), Just("$pop"), Just("$pull"), Just("$pullAll"),
            Just("$rename"), Just("$bit"), Just("$currentDate"), Just("$setOnInsert"),
        ],
        path in prop_oneof![Just("a"), Just("a.b"), Just("a.0"), Just("a.$[]"), Just("b.1.a"), Just("_id")],
        arg in prop_oneof![value(), Just(Bson::String("c".into())), Just(Bson::Int32(-1))],
        d in doc_value(),
    ) {
        let u = bson::doc! {op: {path: arg}};
        if let Ok(update) = Update::parse(&Bson::Document(u)) {
            let _ = update.apply(&d, false);
            let _ = update.apply(&d, true);
        }
    }
}
