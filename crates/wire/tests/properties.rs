//! Property tests: the decoder never panics, whatever it is fed, and encoding then decoding
//! gives back what went in.

use bson::spec::BinarySubtype;
use bson::{
    Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope, RawBsonRef, RawDocument,
    RawDocumentBuf, Regex, Timestamp, oid::ObjectId,
};
use mangrove_wire::{
    Compressor, DocumentSequence, HEADER_LEN, Limits, OpQuery, Request, decode, decode_reply,
    encode_msg, encode_query, encode_reply, msg_flags, opcode, peek_msg_flags, peek_op_code,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------------------------------------
// Generators

fn arb_leaf() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<f64>().prop_map(Bson::Double),
        ".{0,8}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        Just(Bson::Undefined),
        Just(Bson::MinKey),
        Just(Bson::MaxKey),
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(ObjectId::from_bytes(b))),
        any::<i64>().prop_map(|ms| Bson::DateTime(DateTime::from_millis(ms))),
        (any::<u32>(), any::<u32>())
            .prop_map(|(time, increment)| Bson::Timestamp(Timestamp { time, increment })),
        any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(Decimal128::from_bytes(b))),
        (any::<u8>(), vec(any::<u8>(), 0..12)).prop_map(|(subtype, bytes)| {
            Bson::Binary(Binary {
                subtype: BinarySubtype::from(subtype),
                bytes,
            })
        }),
        ("[a-z.*^$]{0,6}", "[imsux]{0,3}").prop_map(|(pattern, options)| {
            Bson::RegularExpression(Regex {
                pattern: pattern.try_into().expect("no NUL"),
                options: options.try_into().expect("no NUL"),
            })
        }),
        ".{0,8}".prop_map(Bson::JavaScriptCode),
        "[a-z]{0,6}".prop_map(Bson::Symbol),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    // No '_', so generated body fields never collide with the `seq_` sequence identifiers.
    "[a-z$.]{0,6}"
}

fn document_from(pairs: Vec<(String, Bson)>) -> Document {
    pairs.into_iter().collect()
}

fn arb_bson() -> impl Strategy<Value = Bson> {
    arb_leaf().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Bson::Array),
            vec((arb_key(), inner.clone()), 0..5).prop_map(|p| Bson::Document(document_from(p))),
            (".{0,6}", vec((arb_key(), inner), 0..3)).prop_map(|(code, p)| {
                Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                    code,
                    scope: document_from(p),
                })
            }),
        ]
    })
}

fn arb_doc() -> impl Strategy<Value = RawDocumentBuf> {
    vec((arb_key(), arb_bson()), 0..6).prop_map(|pairs| {
        RawDocumentBuf::try_from(&document_from(pairs)).expect("generated documents encode")
    })
}

fn arb_compressor() -> impl Strategy<Value = Option<Compressor>> {
    option::of(prop_oneof![
        Just(Compressor::Snappy),
        Just(Compressor::Zlib),
        Just(Compressor::Zstd),
    ])
}

fn arb_valid_flags() -> impl Strategy<Value = u32> {
    (any::<bool>(), any::<bool>(), any::<u16>()).prop_map(|(checksum, more, optional)| {
        let mut flags = u32::from(optional) << 16;
        if checksum {
            flags |= msg_flags::CHECKSUM_PRESENT;
        }
        if more {
            flags |= msg_flags::MORE_TO_COME;
        }
        flags
    })
}

#[derive(Debug, Clone)]
struct MsgCase {
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: RawDocumentBuf,
    sequences: Vec<DocumentSequence>,
    compressor: Option<Compressor>,
}

impl MsgCase {
    fn encode(&self) -> Vec<u8> {
        encode_msg(
            self.request_id,
            self.response_to,
            self.flags,
            &self.body,
            &self.sequences,
            self.compressor,
        )
    }
}

fn arb_msg() -> impl Strategy<Value = MsgCase> {
    (
        any::<i32>(),
        any::<i32>(),
        arb_valid_flags(),
        arb_doc(),
        btree_map("seq_[a-z]{1,4}", vec(arb_doc(), 0..4), 0..3),
        arb_compressor(),
    )
        .prop_map(
            |(request_id, response_to, flags, body, sequences, compressor)| MsgCase {
                request_id,
                response_to,
                flags,
                body,
                sequences: sequences
                    .into_iter()
                    .map(|(identifier, documents)| DocumentSequence {
                        identifier,
                        documents,
                    })
                    .collect(),
                compressor,
            },
        )
}

fn arb_query() -> impl Strategy<Value = (i32, OpQuery, Option<Compressor>)> {
    (
        any::<i32>(),
        any::<u32>(),
        "[a-z.$]{0,20}",
        any::<i32>(),
        any::<i32>(),
        arb_doc(),
        option::of(arb_doc()),
        arb_compressor(),
    )
        .prop_map(
            |(request_id, flags, name, skip, ret, query, selector, compressor)| {
                let q = OpQuery {
                    flags,
                    full_collection_name: name,
                    number_to_skip: skip,
                    number_to_return: ret,
                    query,
                    return_fields_selector: selector,
                };
                (request_id, q, compressor)
            },
        )
}

/// Any valid frame this crate can produce.
fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => arb_msg().prop_map(|m| m.encode()),
        1 => arb_query().prop_map(|(id, q, c)| encode_query(id, &q, c)),
        1 => (arb_doc(), arb_compressor()).prop_map(|(d, c)| encode_reply(1, 2, 0, &d, c)),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    SetI32(usize, i32),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    // Small lengths are the interesting ones: they land on boundaries of sizes and counts.
    let interesting_i32 = prop_oneof![
        -2i32..=20,
        Just(i32::MIN),
        Just(i32::MAX),
        Just(48_000_000),
        any::<i32>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        2 => (any::<usize>(), interesting_i32).prop_map(|(at, v)| Mutation::SetI32(at, v)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match *mutation {
        Mutation::FlipBit(at, bit) => bytes[at % len] ^= 1 << bit,
        Mutation::SetByte(at, b) => bytes[at % len] = b,
        Mutation::SetI32(at, v) => {
            let at = at % len;
            for (slot, b) in bytes[at..].iter_mut().zip(v.to_le_bytes()) {
                *slot = b;
            }
        }
        Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
        Mutation::Remove(at) => {
            bytes.remove(at % len);
        }
        Mutation::Truncate(at) => bytes.truncate(at % len),
    }
}

/// Rewrites the length prefix to match the frame, so that mutations get past framing and
/// reach the body parsers.
fn fix_length(frame: &mut [u8]) {
    if frame.len() >= 4 {
        let len = i32::try_from(frame.len()).unwrap_or(i32::MAX);
        frame[..4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Wraps a plain frame's body in a noop OP_COMPRESSED, to reach the inner parsers through
/// the decompression path with arbitrary (mutated) inner bytes.
fn noop_wrap(plain: &[u8]) -> Option<Vec<u8>> {
    let header = plain.get(..HEADER_LEN)?;
    let body = plain.get(HEADER_LEN..)?;
    let mut out = header.to_vec();
    out[12..16].copy_from_slice(&opcode::OP_COMPRESSED.to_le_bytes());
    out.extend_from_slice(&header[12..16]);
    out.extend_from_slice(&i32::try_from(body.len()).ok()?.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    fix_length(&mut out);
    Some(out)
}

/// Reads every element of every document with the `bson` crate, descending into everything,
/// and converts it to an owned `Document`: whatever `decode` accepts must be readable.
fn assert_fully_readable(doc: &RawDocument) {
    for element in doc.iter_elements() {
        let element = element.expect("accepted documents iterate");
        match element.value().expect("accepted elements parse") {
            RawBsonRef::Document(inner) => assert_fully_readable(inner),
            RawBsonRef::Array(array) => assert_fully_readable(
                RawDocument::from_bytes(array.as_bytes()).expect("arrays are documents"),
            ),
            RawBsonRef::JavaScriptCodeWithScope(cws) => assert_fully_readable(cws.scope),
            _ => {}
        }
    }
    Document::try_from(doc).expect("accepted documents convert");
}

/// Decodes `frame` every way the crate offers; none of them may panic, and whatever they
/// accept must be fully readable.
fn exercise(frame: &[u8]) {
    let limits = Limits::default();
    let _ = peek_op_code(frame);
    let _ = peek_msg_flags(frame);
    match decode(frame, &limits) {
        Ok(message) => match message.request {
            Request::Msg(msg) => {
                assert_fully_readable(&msg.body);
                for sequence in &msg.sequences {
                    for doc in &sequence.documents {
                        assert_fully_readable(doc);
                    }
                }
            }
            Request::Query(q) => {
                assert_fully_readable(&q.query);
                if let Some(selector) = &q.return_fields_selector {
                    assert_fully_readable(selector);
                }
            }
        },
        Err(err) => {
            let _ = (err.is_fatal(), err.code(), err.to_string());
        }
    }
    if let Ok(reply) = decode_reply(frame, &limits) {
        for doc in &reply.reply.documents {
            assert_fully_readable(doc);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Failures are saved beside this file: the default location needs a lib.rs or main.rs above
/// the test source, which integration tests do not have.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_well_framed_bodies(
        op_code in prop_oneof![
            Just(opcode::OP_MSG),
            Just(opcode::OP_QUERY),
            Just(opcode::OP_COMPRESSED),
            Just(opcode::OP_REPLY),
            any::<i32>(),
        ],
        body in vec(any::<u8>(), 0..300),
    ) {
        let mut frame = vec![0u8; HEADER_LEN];
        frame[12..16].copy_from_slice(&op_code.to_le_bytes());
        frame.extend_from_slice(&body);
        fix_length(&mut frame);
        exercise(&frame);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_compressed_payloads(
        original in prop_oneof![Just(opcode::OP_MSG), Just(opcode::OP_QUERY), any::<i32>()],
        declared in prop_oneof![0i32..400, any::<i32>()],
        id in 0u8..5,
        payload in vec(any::<u8>(), 0..300),
    ) {
        let mut frame = vec![0u8; HEADER_LEN];
        frame[12..16].copy_from_slice(&opcode::OP_COMPRESSED.to_le_bytes());
        frame.extend_from_slice(&original.to_le_bytes());
        frame.extend_from_slice(&declared.to_le_bytes());
        frame.push(id);
        frame.extend_from_slice(&payload);
        fix_length(&mut frame);
        exercise(&frame);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decode_never_panics_on_mutated_valid_frames(
        frame in arb_frame(),
        mutations in vec(arb_mutation(), 1..4),
    ) {
        let mut mutated = frame;
        for m in &mutations {
            apply(&mut mutated, m);
        }
        exercise(&mutated);
        fix_length(&mut mutated);
        exercise(&mutated);
    }

    #[test]
    fn decode_never_panics_on_mutated_inner_messages(
        frame in prop_oneof![
            arb_msg().prop_map(|m| MsgCase { compressor: None, ..m }.encode()),
            arb_query().prop_map(|(id, q, _)| encode_query(id, &q, None)),
        ],
        mutations in vec(arb_mutation(), 1..4),
    ) {
        let mut mutated = frame;
        for m in &mutations {
            apply(&mut mutated, m);
        }
        fix_length(&mut mutated);
        if let Some(wrapped) = noop_wrap(&mutated) {
            exercise(&wrapped);
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn op_msg_round_trips(case in arb_msg()) {
        let frame = case.encode();
        let message = decode(&frame, &Limits::default()).expect("valid frames decode");
        prop_assert_eq!(message.header.request_id, case.request_id);
        prop_assert_eq!(message.header.response_to, case.response_to);
        prop_assert_eq!(message.header.message_length as usize, frame.len());
        prop_assert_eq!(message.compressor, case.compressor);
        match message.request {
            Request::Msg(msg) => {
                prop_assert_eq!(msg.flags, case.flags);
                prop_assert_eq!(msg.body, case.body);
                prop_assert_eq!(msg.sequences, case.sequences);
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn op_query_round_trips((request_id, q, compressor) in arb_query()) {
        let frame = encode_query(request_id, &q, compressor);
        let message = decode(&frame, &Limits::default()).expect("valid frames decode");
        prop_assert_eq!(message.header.request_id, request_id);
        prop_assert_eq!(message.compressor, compressor);
        prop_assert_eq!(message.request, Request::Query(q));
    }

    #[test]
    fn op_reply_round_trips(
        doc in arb_doc(),
        flags in any::<i32>(),
        request_id in any::<i32>(),
        response_to in any::<i32>(),
        compressor in arb_compressor(),
    ) {
        let frame = encode_reply(request_id, response_to, flags, &doc, compressor);
        let reply = decode_reply(&frame, &Limits::default()).expect("valid frames decode");
        prop_assert_eq!(reply.header.request_id, request_id);
        prop_assert_eq!(reply.header.response_to, response_to);
        prop_assert_eq!(reply.compressor, compressor);
        prop_assert_eq!(reply.reply.response_flags, flags);
        prop_assert_eq!(reply.reply.cursor_id, 0);
        prop_assert_eq!(reply.reply.documents, vec![doc]);
    }
}
