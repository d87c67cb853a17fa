use bson::{RawDocumentBuf, doc};

use crate::bson_check::{BsonProblem, validate};
use crate::*;

fn raw(d: bson::Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(&d).expect("test document encodes")
}

fn limits() -> Limits {
    Limits::default()
}

/// A frame with a correct length prefix around an arbitrary body.
fn frame(op_code: i32, body: &[u8]) -> Vec<u8> {
    let header = Header {
        message_length: i32::try_from(HEADER_LEN + body.len()).unwrap(),
        request_id: 7,
        response_to: 0,
        op_code,
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn kind0(d: &RawDocumentBuf) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(d.as_bytes());
    out
}

fn kind1(identifier: &str, docs: &[&RawDocumentBuf]) -> Vec<u8> {
    let mut content = identifier.as_bytes().to_vec();
    content.push(0);
    for d in docs {
        content.extend_from_slice(d.as_bytes());
    }
    let mut out = vec![1];
    out.extend_from_slice(&i32::try_from(content.len() + 4).unwrap().to_le_bytes());
    out.extend_from_slice(&content);
    out
}

fn msg_frame(flags: u32, sections: &[Vec<u8>]) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    for s in sections {
        body.extend_from_slice(s);
    }
    frame(opcode::OP_MSG, &body)
}

fn compressed(original: i32, declared: i32, id: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = original.to_le_bytes().to_vec();
    body.extend_from_slice(&declared.to_le_bytes());
    body.push(id);
    body.extend_from_slice(payload);
    frame(opcode::OP_COMPRESSED, &body)
}

fn body_after_header(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN..]
}

fn hello() -> RawDocumentBuf {
    raw(doc! { "hello": 1, "$db": "admin" })
}

fn expect_msg(message: Message) -> OpMsg {
    match message.request {
        Request::Msg(m) => m,
        other => panic!("expected OP_MSG, got {other:?}"),
    }
}

fn expect_query(message: Message) -> OpQuery {
    match message.request {
        Request::Query(q) => q,
        other => panic!("expected OP_QUERY, got {other:?}"),
    }
}

const ALL: [Compressor; 3] = [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd];

// ---------------------------------------------------------------------------------------------
// Header and framing

#[test]
fn header_round_trips_through_bytes() {
    let h = Header {
        message_length: 1234,
        request_id: -5,
        response_to: i32::MAX,
        op_code: opcode::OP_MSG,
    };
    assert_eq!(Header::parse(&h.to_bytes()), h);
}

#[test]
fn frame_length_accepts_sane_lengths() {
    let h = Header {
        message_length: 26,
        request_id: 1,
        response_to: 0,
        op_code: opcode::OP_MSG,
    };
    assert_eq!(frame_length(&h, &limits()).unwrap(), 26);
    let unknown = Header {
        message_length: 16,
        op_code: 9999,
        ..h
    };
    assert_eq!(frame_length(&unknown, &limits()).unwrap(), 16);
}

#[test]
fn frame_length_rejects_short_negative_and_oversized_lengths() {
    let base = Header {
        message_length: 0,
        request_id: 1,
        response_to: 0,
        op_code: opcode::OP_MSG,
    };
    for op_code in [
        opcode::OP_MSG,
        opcode::OP_QUERY,
        opcode::OP_COMPRESSED,
        opcode::OP_REPLY,
        42,
    ] {
        // Below a header nothing is delimited: fatal.
        let h = Header {
            message_length: 15,
            op_code,
            ..base
        };
        let err = frame_length(&h, &limits()).unwrap_err();
        assert!(matches!(err, WireError::BadMessageLength { .. }), "{err}");
        assert!(err.is_fatal());
        assert_eq!(err.code(), (17, "ProtocolError"));
        // A header-sized frame is delimited even if its opcode needs more: decode answers it.
        let h = Header {
            message_length: 20,
            op_code,
            ..base
        };
        assert_eq!(frame_length(&h, &limits()).unwrap(), 20);
        let mut frame = h.to_bytes().to_vec();
        frame.extend_from_slice(&[0, 0, 0, 0]);
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(!err.is_fatal(), "{err}");
    }
    let negative = Header {
        message_length: -1,
        ..base
    };
    assert!(matches!(
        frame_length(&negative, &limits()),
        Err(WireError::BadMessageLength { .. })
    ));
    let huge = Header {
        message_length: 48_000_001,
        ..base
    };
    let err = frame_length(&huge, &limits()).unwrap_err();
    assert!(matches!(err, WireError::MessageTooLarge { .. }));
    assert!(err.is_fatal());
    assert_eq!(err.code(), (17, "ProtocolError"));
    let exact = Header {
        message_length: 48_000_000,
        ..base
    };
    assert_eq!(frame_length(&exact, &limits()).unwrap(), 48_000_000);
}

#[test]
fn truncated_header_is_fatal() {
    for len in 0..HEADER_LEN {
        let err = decode(&vec![0u8; len], &limits()).unwrap_err();
        assert!(matches!(err, WireError::Truncated { got, .. } if got == len));
        assert!(err.is_fatal());
    }
}

#[test]
fn length_prefix_that_lies_is_fatal() {
    let good = encode_msg(1, 0, 0, &hello(), &[], None);

    // Header claims fewer bytes than the frame holds.
    let mut shorter = good.clone();
    let claimed = i32::try_from(good.len() - 3).unwrap();
    shorter[..4].copy_from_slice(&claimed.to_le_bytes());
    let err = decode(&shorter, &limits()).unwrap_err();
    assert!(matches!(err, WireError::LengthMismatch { .. }), "{err}");
    assert!(err.is_fatal());

    // Header claims more bytes than the frame holds.
    let mut longer = good.clone();
    let claimed = i32::try_from(good.len() + 3).unwrap();
    longer[..4].copy_from_slice(&claimed.to_le_bytes());
    let err = decode(&longer, &limits()).unwrap_err();
    assert!(matches!(err, WireError::LengthMismatch { .. }), "{err}");
    assert!(err.is_fatal());

    // The frame is cut short of its own header's claim.
    let err = decode(&good[..good.len() - 1], &limits()).unwrap_err();
    assert!(matches!(err, WireError::LengthMismatch { .. }), "{err}");
}

#[test]
fn declared_length_over_limit_is_fatal() {
    let small = Limits {
        max_message_size: 64,
        max_bson_size: 1024,
    };
    let big = raw(doc! { "x": "y".repeat(100) });
    let frame = encode_msg(1, 0, 0, &big, &[], None);
    let err = decode(&frame, &small).unwrap_err();
    assert!(
        matches!(err, WireError::MessageTooLarge { max: 64, .. }),
        "{err}"
    );
    assert!(err.is_fatal());
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn op_msg_round_trip_body_only() {
    let frame = encode_msg(11, 22, 0, &hello(), &[], None);
    let message = decode(&frame, &limits()).unwrap();
    assert_eq!(message.header.request_id, 11);
    assert_eq!(message.header.response_to, 22);
    assert_eq!(message.header.op_code, opcode::OP_MSG);
    assert_eq!(
        usize::try_from(message.header.message_length).unwrap(),
        frame.len()
    );
    assert_eq!(message.compressor, None);
    assert_eq!(message.request.op_code(), opcode::OP_MSG);
    let msg = expect_msg(message);
    assert_eq!(msg.flags, 0);
    assert_eq!(msg.body, hello());
    assert!(msg.sequences.is_empty());
}

#[test]
fn op_msg_round_trip_with_sequences() {
    let body = raw(doc! { "insert": "c", "$db": "test" });
    let docs: Vec<_> = (0..5).map(|i| raw(doc! { "_id": i, "v": "x" })).collect();
    let sequences = vec![
        DocumentSequence {
            identifier: "documents".into(),
            documents: docs.clone(),
        },
        DocumentSequence {
            identifier: "empty".into(),
            documents: vec![],
        },
    ];
    let frame = encode_msg(1, 0, 0, &body, &sequences, None);
    let msg = expect_msg(decode(&frame, &limits()).unwrap());
    assert_eq!(msg.body, body);
    assert_eq!(msg.sequences, sequences);
    assert_eq!(msg.sequence("documents").unwrap().documents, docs);
    assert!(msg.sequence("nope").is_none());
}

#[test]
fn kind1_section_may_precede_the_body() {
    let d = raw(doc! { "a": 1 });
    let frame = msg_frame(0, &[kind1("documents", &[&d, &d]), kind0(&hello())]);
    let msg = expect_msg(decode(&frame, &limits()).unwrap());
    assert_eq!(msg.body, hello());
    assert_eq!(msg.sequences.len(), 1);
    assert_eq!(msg.sequences[0].documents.len(), 2);
}

#[test]
fn op_msg_flags_round_trip() {
    for flags in [
        msg_flags::MORE_TO_COME,
        msg_flags::EXHAUST_ALLOWED,
        msg_flags::MORE_TO_COME | msg_flags::EXHAUST_ALLOWED,
    ] {
        let frame = encode_msg(1, 0, flags, &hello(), &[], None);
        let msg = expect_msg(decode(&frame, &limits()).unwrap());
        assert_eq!(msg.flags, flags);
        assert_eq!(msg.more_to_come(), flags & msg_flags::MORE_TO_COME != 0);
        assert_eq!(
            msg.exhaust_allowed(),
            flags & msg_flags::EXHAUST_ALLOWED != 0
        );
    }
}

#[test]
fn optional_flag_bits_are_accepted() {
    for bit in 16..32 {
        let frame = msg_frame(1 << bit, &[kind0(&hello())]);
        let msg = expect_msg(decode(&frame, &limits()).unwrap());
        assert_eq!(msg.flags, 1 << bit);
    }
}

#[test]
fn unknown_required_flag_bits_are_rejected() {
    for bit in 2..16 {
        let frame = msg_frame(1 << bit, &[kind0(&hello())]);
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(matches!(err, WireError::IllegalFlags { flags } if flags == 1 << bit));
        assert_eq!(err.code(), (223, "IllegalOpMsgFlag"));
        assert!(!err.is_fatal());
        assert_eq!(peek_msg_flags(&frame), Some(1 << bit));
    }
}

#[test]
fn op_query_round_trip() {
    for selector in [None, Some(raw(doc! { "a": 1 }))] {
        let q = OpQuery {
            flags: 4,
            full_collection_name: "admin.$cmd".into(),
            number_to_skip: 0,
            number_to_return: -1,
            query: raw(doc! { "isMaster": 1 }),
            return_fields_selector: selector,
        };
        let frame = encode_query(9, &q, None);
        let message = decode(&frame, &limits()).unwrap();
        assert_eq!(message.header.request_id, 9);
        assert_eq!(message.header.op_code, opcode::OP_QUERY);
        assert_eq!(message.request.op_code(), opcode::OP_QUERY);
        assert_eq!(expect_query(message), q);
    }
}

#[test]
fn op_reply_round_trip() {
    let d = raw(doc! { "ismaster": true, "ok": 1.0 });
    let frame = encode_reply(5, 9, 8, &d, None);
    let reply = decode_reply(&frame, &limits()).unwrap();
    assert_eq!(reply.header.op_code, opcode::OP_REPLY);
    assert_eq!(reply.header.request_id, 5);
    assert_eq!(reply.header.response_to, 9);
    assert_eq!(reply.compressor, None);
    assert_eq!(
        reply.reply,
        OpReply {
            response_flags: 8,
            cursor_id: 0,
            starting_from: 0,
            documents: vec![d],
        }
    );
    // A server never accepts an OP_REPLY as a request.
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::UnsupportedOpCode { op_code: 1 }));
    assert!(!err.is_fatal());
}

#[test]
fn op_reply_with_wrong_count_is_rejected() {
    let d = raw(doc! { "ok": 1 });
    let mut frame = encode_reply(5, 9, 0, &d, None);
    frame[HEADER_LEN + 16..HEADER_LEN + 20].copy_from_slice(&2i32.to_le_bytes());
    assert!(matches!(
        decode_reply(&frame, &limits()),
        Err(WireError::Malformed { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Checksums

#[test]
fn checksum_is_emitted_and_verified() {
    let frame = encode_msg(3, 0, msg_flags::CHECKSUM_PRESENT, &hello(), &[], None);
    let (covered, trailer) = frame.split_at(frame.len() - 4);
    assert_eq!(
        u32::from_le_bytes(trailer.try_into().unwrap()),
        crc32c::crc32c(covered)
    );
    let msg = expect_msg(decode(&frame, &limits()).unwrap());
    assert_eq!(msg.flags, msg_flags::CHECKSUM_PRESENT);
    assert_eq!(msg.body, hello());
}

#[test]
fn checksum_mismatch_is_detected() {
    let frame = encode_msg(3, 0, msg_flags::CHECKSUM_PRESENT, &hello(), &[], None);
    // Corrupt a body byte, the checksum itself, and a header byte the checksum covers.
    for at in [HEADER_LEN + 10, frame.len() - 1, 5] {
        let mut bad = frame.clone();
        bad[at] ^= 0x40;
        let err = decode(&bad, &limits()).unwrap_err();
        assert!(matches!(err, WireError::ChecksumMismatch { .. }), "{err}");
        assert_eq!(err.code(), (288, "ChecksumMismatch"));
        // Answered, not fatal: the frame itself is intact (a deliberate difference from mongod).
        assert!(!err.is_fatal());
    }
}

#[test]
fn checksum_flag_without_room_for_checksum_is_malformed() {
    // Only an inner (decompressed) message can be this short; the outer length check would
    // refuse it as a plain frame.
    let mut inner = msg_flags::CHECKSUM_PRESENT.to_le_bytes().to_vec();
    inner.extend_from_slice(&[0, 0]);
    let frame = compressed(opcode::OP_MSG, 6, 0, &inner);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
}

#[test]
fn checksum_survives_compression() {
    let d = raw(doc! { "_id": 1 });
    let seq = [DocumentSequence {
        identifier: "documents".into(),
        documents: vec![d.clone(), d],
    }];
    for c in ALL {
        let frame = encode_msg(3, 4, msg_flags::CHECKSUM_PRESENT, &hello(), &seq, Some(c));
        assert_eq!(Header::parse(frame[..16].try_into().unwrap()).op_code, 2012);
        let message = decode(&frame, &limits()).unwrap();
        assert_eq!(message.compressor, Some(c));
        let msg = expect_msg(message);
        assert_eq!(msg.body, hello());
        assert_eq!(msg.sequences, seq);
    }
}

// ---------------------------------------------------------------------------------------------
// Compression

#[test]
fn compressor_names_and_ids() {
    for c in ALL {
        assert_eq!(Compressor::from_name(c.name()), Some(c));
        assert_eq!(Compressor::from_id(c.id()), Some(c));
    }
    assert_eq!(Compressor::Snappy.id(), 1);
    assert_eq!(Compressor::Zlib.id(), 2);
    assert_eq!(Compressor::Zstd.id(), 3);
    assert_eq!(Compressor::from_name("noop"), None);
    assert_eq!(Compressor::from_name("Snappy"), None);
    assert_eq!(Compressor::from_id(0), None);
    assert_eq!(Compressor::from_id(4), None);
}

#[test]
fn every_compressor_round_trips_each_opcode() {
    let body = raw(doc! { "insert": "c", "$db": "db", "pad": "z".repeat(5000) });
    let seq = [DocumentSequence {
        identifier: "documents".into(),
        documents: (0..50).map(|i| raw(doc! { "_id": i })).collect(),
    }];
    let q = OpQuery {
        flags: 0,
        full_collection_name: "admin.$cmd".into(),
        number_to_skip: 0,
        number_to_return: 1,
        query: raw(doc! { "isMaster": 1, "pad": "q".repeat(3000) }),
        return_fields_selector: None,
    };
    for c in ALL {
        let plain = encode_msg(1, 2, 0, &body, &seq, None);
        let frame = encode_msg(1, 2, 0, &body, &seq, Some(c));
        assert!(
            frame.len() < plain.len(),
            "{c:?} should shrink a padded body"
        );
        assert_eq!(peek_op_code(&frame), Some(opcode::OP_MSG));
        let message = decode(&frame, &limits()).unwrap();
        assert_eq!(message.header.op_code, opcode::OP_COMPRESSED);
        assert_eq!(message.header.request_id, 1);
        assert_eq!(message.header.response_to, 2);
        assert_eq!(message.compressor, Some(c));
        let msg = expect_msg(message);
        assert_eq!(msg.body, body);
        assert_eq!(msg.sequences, seq);

        let frame = encode_query(8, &q, Some(c));
        let message = decode(&frame, &limits()).unwrap();
        assert_eq!(message.compressor, Some(c));
        assert_eq!(expect_query(message), q);

        let frame = encode_reply(1, 8, 0, &body, Some(c));
        let reply = decode_reply(&frame, &limits()).unwrap();
        assert_eq!(reply.compressor, Some(c));
        assert_eq!(reply.reply.documents, vec![body.clone()]);
    }
}

#[test]
fn noop_compressor_is_accepted_and_reported_as_uncompressed() {
    let plain = encode_msg(1, 0, 0, &hello(), &[], None);
    let inner = body_after_header(&plain);
    let frame = compressed(
        opcode::OP_MSG,
        i32::try_from(inner.len()).unwrap(),
        0,
        inner,
    );
    let message = decode(&frame, &limits()).unwrap();
    assert_eq!(message.header.op_code, opcode::OP_COMPRESSED);
    assert_eq!(message.compressor, None);
    assert_eq!(expect_msg(message).body, hello());

    let wrong = compressed(
        opcode::OP_MSG,
        i32::try_from(inner.len() + 1).unwrap(),
        0,
        inner,
    );
    assert!(matches!(
        decode(&wrong, &limits()),
        Err(WireError::UncompressedSizeMismatch { .. })
    ));
}

#[test]
fn unknown_compressor_id_is_rejected() {
    for id in [4u8, 7, 255] {
        let frame = compressed(opcode::OP_MSG, 26, id, &[0; 10]);
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(matches!(err, WireError::UnknownCompressor { id: got } if got == id));
        assert_eq!(err.code(), (1, "InternalError"));
        assert!(!err.is_fatal());
    }
}

#[test]
fn declared_uncompressed_size_over_limit_is_rejected_before_decompressing() {
    for c in ALL {
        // The payload is garbage: the size check must fire before any decoder looks at it.
        for declared in [48_000_000 - 15, i32::MAX, -1] {
            let frame = compressed(opcode::OP_MSG, declared, c.id(), &[1, 2, 3]);
            let err = decode(&frame, &limits()).unwrap_err();
            assert!(
                matches!(err, WireError::UncompressedSizeTooLarge { .. }),
                "{c:?} {declared}: {err}"
            );
            assert_eq!(err.code(), (2, "BadValue"));
            assert!(!err.is_fatal());
        }
    }
}

#[test]
fn decompression_bomb_is_capped_at_the_declared_size() {
    // 8 MB of zeros compresses to a few KB; claiming a small size must not inflate it all.
    let zeros = vec![0u8; 8_000_000];
    for c in ALL {
        let payload = compression::compress(c, &zeros).unwrap();
        assert!(payload.len() < 500_000);
        let frame = compressed(opcode::OP_MSG, 1000, c.id(), &payload);
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::UncompressedSizeMismatch { .. } | WireError::DecompressionFailed { .. }
            ),
            "{c:?}: {err}"
        );
        assert_eq!(err.code(), (2, "BadValue"));
    }
}

#[test]
fn declared_size_mismatch_is_rejected_for_every_compressor() {
    let plain = encode_msg(1, 0, 0, &hello(), &[], None);
    let inner = body_after_header(&plain);
    let actual = i32::try_from(inner.len()).unwrap();
    for c in ALL {
        let payload = compression::compress(c, inner).unwrap();
        for declared in [actual - 1, actual + 1, actual + 1000] {
            let frame = compressed(opcode::OP_MSG, declared, c.id(), &payload);
            let err = decode(&frame, &limits()).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::UncompressedSizeMismatch { .. }
                        | WireError::DecompressionFailed { .. }
                ),
                "{c:?} declared {declared}: {err}"
            );
            assert!(!err.is_fatal());
        }
        let frame = compressed(opcode::OP_MSG, actual, c.id(), &payload);
        assert_eq!(expect_msg(decode(&frame, &limits()).unwrap()).body, hello());
    }
}

#[test]
fn corrupt_compressed_payload_is_rejected() {
    let plain = encode_msg(1, 0, 0, &hello(), &[], None);
    let inner = body_after_header(&plain);
    let actual = i32::try_from(inner.len()).unwrap();
    for c in ALL {
        let mut payload = compression::compress(c, inner).unwrap();
        payload.truncate(payload.len() / 2);
        let frame = compressed(opcode::OP_MSG, actual, c.id(), &payload);
        let err = decode(&frame, &limits()).unwrap_err();
        assert_eq!(err.code(), (2, "BadValue"), "{c:?}: {err}");
        assert!(!err.is_fatal());
    }
}

#[test]
fn nested_compression_is_rejected() {
    let inner = compressed(opcode::OP_MSG, 26, 0, &[0; 26]);
    let inner_body = body_after_header(&inner);
    let frame = compressed(
        opcode::OP_COMPRESSED,
        i32::try_from(inner_body.len()).unwrap(),
        0,
        inner_body,
    );
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::NestedCompression)
    ));
}

#[test]
fn empty_inner_message_is_rejected() {
    let frame = compressed(opcode::OP_MSG, 0, 0, &[]);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
    let frame = compressed(opcode::OP_QUERY, 0, 0, &[]);
    assert!(decode(&frame, &limits()).is_err());
}

// ---------------------------------------------------------------------------------------------
// OP_MSG structure errors

#[test]
fn bad_section_kind_is_rejected() {
    let mut section = kind0(&hello());
    section[0] = 2;
    let frame = msg_frame(0, &[section]);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::UnknownSectionKind { kind: 2 }));
    assert_eq!(err.code(), (40432, "Location40432"));
    assert!(!err.is_fatal());
}

#[test]
fn two_bodies_are_rejected() {
    let frame = msg_frame(0, &[kind0(&hello()), kind0(&hello())]);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::MultipleBodies));
    assert_eq!(err.code(), (40430, "Location40430"));
}

#[test]
fn missing_body_is_rejected() {
    let d = raw(doc! { "a": 1 });
    let frame = msg_frame(0, &[kind1("documents", &[&d])]);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::MissingBody));
    assert_eq!(err.code(), (40587, "Location40587"));
}

#[test]
fn duplicate_sequence_identifier_is_rejected() {
    let d = raw(doc! { "a": 1 });
    let frame = msg_frame(
        0,
        &[
            kind0(&hello()),
            kind1("documents", &[&d]),
            kind1("documents", &[&d]),
        ],
    );
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(
        matches!(err, WireError::DuplicateSequence { identifier } if identifier == "documents")
    );
}

#[test]
fn sequence_conflicting_with_body_field_is_rejected() {
    let d = raw(doc! { "a": 1 });
    let body = raw(doc! { "insert": "c", "documents": [], "nested": { "deep": 1 } });
    for identifier in ["documents", "nested.deep"] {
        let frame = msg_frame(0, &[kind0(&body), kind1(identifier, &[&d])]);
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(
            matches!(err, WireError::SequenceConflictsWithBody { .. }),
            "{identifier}: {err}"
        );
        assert_eq!(err.code(), (40433, "Location40433"));
    }
    // Prefixes of a path and missing leaves are not conflicts.
    for identifier in ["nested.other", "insert.x", "docs"] {
        let frame = msg_frame(0, &[kind0(&body), kind1(identifier, &[&d])]);
        assert!(decode(&frame, &limits()).is_ok(), "{identifier}");
    }
}

#[test]
fn too_many_sequences_are_rejected() {
    let mut sections = vec![kind0(&hello())];
    for i in 0..=MAX_DOCUMENT_SEQUENCES {
        sections.push(kind1(&format!("s{i}"), &[]));
    }
    let err = decode(&msg_frame(0, &sections), &limits()).unwrap_err();
    assert!(matches!(err, WireError::TooManyDocumentSequences { .. }));
    assert_eq!(err.code(), (233, "TooManyDocumentSequences"));
    sections.pop();
    assert!(decode(&msg_frame(0, &sections), &limits()).is_ok());
}

#[test]
fn sequence_size_errors_are_rejected() {
    let d = raw(doc! { "a": 1 });
    let good = kind1("documents", &[&d]);
    for size in [-1i32, 0, 3, 4, 1000] {
        let mut section = good.clone();
        section[1..5].copy_from_slice(&size.to_le_bytes());
        let frame = msg_frame(0, &[kind0(&hello()), section]);
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(
            matches!(err, WireError::Malformed { .. }),
            "size {size}: {err}"
        );
        assert_eq!(err.code(), (9, "FailedToParse"));
    }
    // A sequence whose last document overruns the section (but not the frame).
    let mut section = good.clone();
    let shorter = i32::try_from(good.len() - 1 - 2).unwrap();
    section[1..5].copy_from_slice(&shorter.to_le_bytes());
    let frame = msg_frame(0, &[section, vec![0, 0], kind0(&hello())]);
    assert!(decode(&frame, &limits()).is_err());
    // No NUL after the identifier.
    let mut section = vec![1];
    section.extend_from_slice(&7i32.to_le_bytes());
    section.extend_from_slice(b"abc");
    let frame = msg_frame(0, &[kind0(&hello()), section]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn body_that_runs_past_the_frame_is_invalid_bson() {
    let mut section = kind0(&hello());
    let too_long = i32::try_from(hello().as_bytes().len() + 10).unwrap();
    section[1..5].copy_from_slice(&too_long.to_le_bytes());
    let err = decode(&msg_frame(0, &[section]), &limits()).unwrap_err();
    assert!(matches!(err, WireError::InvalidBson { .. }), "{err}");
    assert_eq!(err.code(), (22, "InvalidBSON"));
}

#[test]
fn unsupported_opcode_is_not_fatal() {
    // OP_INSERT, long removed.
    let frame = frame(2002, &[0; 20]);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(
        err,
        WireError::UnsupportedOpCode { op_code: 2002 }
    ));
    assert!(!err.is_fatal());
    assert_eq!(peek_op_code(&frame), Some(2002));
    assert_eq!(peek_msg_flags(&frame), None);
}

// ---------------------------------------------------------------------------------------------
// OP_QUERY structure errors

#[test]
fn op_query_structure_errors() {
    let q = OpQuery {
        flags: 0,
        full_collection_name: "admin.$cmd".into(),
        number_to_skip: 0,
        number_to_return: -1,
        query: raw(doc! { "isMaster": 1 }),
        return_fields_selector: None,
    };
    let good = encode_query(1, &q, None);

    let mut trailing = body_after_header(&good).to_vec();
    trailing.extend_from_slice(&[1, 2, 3]);
    assert!(decode(&frame(opcode::OP_QUERY, &trailing), &limits()).is_err());

    // Collection name without a terminator.
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[b'a'; 30]);
    let err = decode(&frame(opcode::OP_QUERY, &body), &limits()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");

    // Collection name that is not UTF-8.
    let mut body = body_after_header(&good).to_vec();
    body[4] = 0xff;
    let err = decode(&frame(opcode::OP_QUERY, &body), &limits()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");

    // Query document damaged.
    let mut body = body_after_header(&good).to_vec();
    let last = body.len() - 1;
    body[last] = 1;
    let err = decode(&frame(opcode::OP_QUERY, &body), &limits()).unwrap_err();
    assert!(matches!(err, WireError::InvalidBson { .. }), "{err}");
}

#[test]
fn encoders_cut_identifiers_at_nul() {
    let seq = [DocumentSequence {
        identifier: "docs\0hidden".into(),
        documents: vec![raw(doc! { "a": 1 })],
    }];
    let frame = encode_msg(1, 0, 0, &hello(), &seq, None);
    let msg = expect_msg(decode(&frame, &limits()).unwrap());
    assert_eq!(msg.sequences[0].identifier, "docs");
}

// ---------------------------------------------------------------------------------------------
// BSON validation

/// Builds a one-element document by hand: the element bytes are taken as given.
fn doc_with_element(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0; 4];
    out.push(tag);
    out.extend_from_slice(b"k\0");
    out.extend_from_slice(value);
    out.push(0);
    let len = i32::try_from(out.len()).unwrap();
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

fn bson_string(s: &[u8]) -> Vec<u8> {
    let mut out = i32::try_from(s.len() + 1).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out.push(0);
    out
}

#[test]
fn validator_accepts_every_element_type() {
    let oid = [7u8; 12];
    let mut dbpointer = bson_string(b"db.coll");
    dbpointer.extend_from_slice(&oid);
    let scope = raw(doc! { "x": 1 });
    let code = bson_string(b"function() {}");
    let mut cws = Vec::new();
    cws.extend_from_slice(
        &i32::try_from(4 + code.len() + scope.as_bytes().len())
            .unwrap()
            .to_le_bytes(),
    );
    cws.extend_from_slice(&code);
    cws.extend_from_slice(scope.as_bytes());
    let mut old_binary = 7i32.to_le_bytes().to_vec();
    old_binary.push(2);
    old_binary.extend_from_slice(&3i32.to_le_bytes());
    old_binary.extend_from_slice(b"abc");
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (0x01, 1.5f64.to_le_bytes().to_vec()),
        (0x02, bson_string("héllo".as_bytes())),
        (0x03, raw(doc! { "a": 1 }).into_bytes()),
        (0x04, raw(doc! { "0": 1, "1": 2 }).into_bytes()),
        (
            0x05,
            [2i32.to_le_bytes().to_vec(), vec![0x80, 1, 2]].concat(),
        ),
        (0x05, old_binary),
        (0x06, vec![]),
        (0x07, oid.to_vec()),
        (0x08, vec![1]),
        (0x09, 0i64.to_le_bytes().to_vec()),
        (0x0A, vec![]),
        (0x0B, b"^a.*\0imx\0".to_vec()),
        (0x0C, dbpointer),
        (0x0D, bson_string(b"x = 1")),
        (0x0E, bson_string(b"sym")),
        (0x0F, cws),
        (0x10, 5i32.to_le_bytes().to_vec()),
        (0x11, 9u64.to_le_bytes().to_vec()),
        (0x12, 9i64.to_le_bytes().to_vec()),
        (0x13, [0u8; 16].to_vec()),
        (0x7F, vec![]),
        (0xFF, vec![]),
    ];
    for (tag, value) in cases {
        let doc = doc_with_element(tag, &value);
        assert_eq!(validate(&doc), Ok(()), "type {tag:#04x}");
        // And the bson crate agrees the bytes are readable.
        let parsed = bson::RawDocument::from_bytes(&doc).unwrap();
        for element in parsed {
            element.unwrap();
        }
    }
}

#[test]
fn validator_rejects_malformed_documents() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("too short", vec![4, 0, 0, 0]),
        ("length too big", vec![6, 0, 0, 0, 0]),
        ("length too small", vec![4, 0, 0, 0, 0]),
        ("not terminated", vec![5, 0, 0, 0, 1]),
        ("unknown type", doc_with_element(0x14, &[])),
        ("unknown type 0x80", doc_with_element(0x80, &[])),
        ("early terminator", {
            let mut d = doc_with_element(0x10, &[1, 0, 0, 0]);
            d[4] = 0;
            d
        }),
        ("bool 2", doc_with_element(0x08, &[2])),
        ("int32 cut", doc_with_element(0x10, &[1, 0, 0])),
        ("string not NUL-terminated", {
            let mut s = bson_string(b"abc");
            let last = s.len() - 1;
            s[last] = b'x';
            doc_with_element(0x02, &s)
        }),
        (
            "string length zero",
            doc_with_element(0x02, &[0, 0, 0, 0, 0]),
        ),
        (
            "string length negative",
            doc_with_element(0x02, &[0xff, 0xff, 0xff, 0xff, 0]),
        ),
        (
            "string too long",
            doc_with_element(0x02, &[100, 0, 0, 0, b'a', 0]),
        ),
        (
            "string not UTF-8",
            doc_with_element(0x02, &bson_string(&[0xC3, 0x28])),
        ),
        ("key not UTF-8", {
            let mut d = doc_with_element(0x0A, &[]);
            d[5] = 0xff;
            d
        }),
        ("embedded doc bad", doc_with_element(0x03, &[5, 0, 0, 0, 1])),
        (
            "embedded doc overruns",
            doc_with_element(0x03, &[50, 0, 0, 0, 0]),
        ),
        (
            "binary negative",
            doc_with_element(0x05, &[0xff, 0xff, 0xff, 0xff, 0]),
        ),
        (
            "binary overruns",
            doc_with_element(0x05, &[9, 0, 0, 0, 0, 1]),
        ),
        ("old binary inconsistent", {
            let mut v = 7i32.to_le_bytes().to_vec();
            v.push(2);
            v.extend_from_slice(&9i32.to_le_bytes());
            v.extend_from_slice(b"abc");
            doc_with_element(0x05, &v)
        }),
        ("old binary too short", {
            let mut v = 2i32.to_le_bytes().to_vec();
            v.push(2);
            v.extend_from_slice(b"ab");
            doc_with_element(0x05, &v)
        }),
        ("regex unterminated", doc_with_element(0x0B, b"abc")),
        (
            "regex options not UTF-8",
            doc_with_element(0x0B, b"a\0\xff\0"),
        ),
        (
            "code with scope too small",
            doc_with_element(0x0F, &[13, 0, 0, 0]),
        ),
        ("code with scope inconsistent", {
            let scope = raw(doc! {});
            let code = bson_string(b"f");
            let mut v = i32::try_from(4 + code.len() + scope.as_bytes().len() + 1)
                .unwrap()
                .to_le_bytes()
                .to_vec();
            v.extend_from_slice(&code);
            v.extend_from_slice(scope.as_bytes());
            v.push(0);
            doc_with_element(0x0F, &v)
        }),
        ("code with scope bad scope", {
            let code = bson_string(b"f");
            let mut v = i32::try_from(4 + code.len() + 5)
                .unwrap()
                .to_le_bytes()
                .to_vec();
            v.extend_from_slice(&code);
            v.extend_from_slice(&[5, 0, 0, 0, 7]);
            doc_with_element(0x0F, &v)
        }),
        ("dbpointer cut", doc_with_element(0x0C, &bson_string(b"ns"))),
    ];
    for (name, doc) in cases {
        assert!(
            matches!(
                validate(&doc),
                Err(BsonProblem::Invalid(_) | BsonProblem::UnknownType(_))
            ),
            "{name} should be rejected"
        );
    }
}

fn nested(levels: usize) -> RawDocumentBuf {
    let mut d = doc! { "leaf": 1 };
    for _ in 0..levels {
        d = doc! { "a": d };
    }
    raw(d)
}

#[test]
fn nesting_depth_is_bounded() {
    assert_eq!(validate(nested(MAX_BSON_DEPTH).as_bytes()), Ok(()));
    assert_eq!(
        validate(nested(MAX_BSON_DEPTH + 1).as_bytes()),
        Err(BsonProblem::TooDeep)
    );
    let frame = encode_msg(1, 0, 0, &nested(MAX_BSON_DEPTH + 1), &[], None);
    let err = decode(&frame, &limits()).unwrap_err();
    assert!(matches!(err, WireError::BsonTooDeep { .. }), "{err}");
    assert_eq!(err.code(), (15, "Overflow"));
    assert!(!err.is_fatal());
}

#[test]
fn hostile_nesting_does_not_overflow_the_stack() {
    // 100k levels of {"":{...}} built by hand: 7 bytes each, far beyond the limit.
    let levels = 100_000usize;
    let mut bytes = Vec::with_capacity(levels * 7 + 5);
    for i in 0..levels {
        let len = i32::try_from((levels - i) * 7 + 5).unwrap();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&[0x03, 0]);
    }
    bytes.extend_from_slice(&5i32.to_le_bytes());
    bytes.push(0);
    bytes.extend(std::iter::repeat_n(0u8, levels));
    assert_eq!(validate(&bytes), Err(BsonProblem::TooDeep));
}

#[test]
fn invalid_bson_is_caught_in_every_position() {
    let bad = doc_with_element(0x08, &[7]);
    let bad = RawDocumentBuf::from_bytes(bad).expect("outer framing is fine");
    let good = hello();

    let in_body = encode_msg(1, 0, 0, &bad, &[], None);
    let seq = [DocumentSequence {
        identifier: "documents".into(),
        documents: vec![good.clone(), bad.clone()],
    }];
    let in_sequence = encode_msg(1, 0, 0, &good, &seq, None);
    let query = |query: RawDocumentBuf, selector: Option<RawDocumentBuf>| {
        encode_query(
            1,
            &OpQuery {
                flags: 0,
                full_collection_name: "a.b".into(),
                number_to_skip: 0,
                number_to_return: 0,
                query,
                return_fields_selector: selector,
            },
            None,
        )
    };
    let in_query = query(bad.clone(), None);
    let in_selector = query(good.clone(), Some(bad.clone()));
    let in_compressed = encode_msg(1, 0, 0, &bad, &[], Some(Compressor::Zstd));
    for (name, frame) in [
        ("body", in_body),
        ("sequence", in_sequence),
        ("query", in_query),
        ("selector", in_selector),
        ("compressed", in_compressed),
    ] {
        let err = decode(&frame, &limits()).unwrap_err();
        assert!(
            matches!(err, WireError::InvalidBson { .. }),
            "{name}: {err}"
        );
        assert_eq!(err.code(), (22, "InvalidBSON"));
        assert!(!err.is_fatal());
    }
    let sequence_err = decode(&encode_msg(1, 0, 0, &good, &seq, None), &limits()).unwrap_err();
    assert!(
        sequence_err.to_string().contains("document 1 of sequence"),
        "{sequence_err}"
    );
}

#[test]
fn documents_over_the_size_limit_are_rejected() {
    let small = Limits {
        max_message_size: 1_000_000,
        max_bson_size: 1000,
    };
    let max = small.max_document_size();
    assert_eq!(max, 1000 + BSON_INTERNAL_SLACK);
    // Sized so the document's total length lands exactly on `max`: 4 (length) + 1 (type)
    // + 2 ("s\0") + 4 (string length) + text + 1 (string NUL) + 1 (document NUL).
    let exactly = raw(doc! { "s": "a".repeat(max - 13) });
    assert_eq!(exactly.as_bytes().len(), max);
    let over = raw(doc! { "s": "a".repeat(max - 12) });

    assert!(decode(&encode_msg(1, 0, 0, &exactly, &[], None), &small).is_ok());

    let err = decode(&encode_msg(1, 0, 0, &over, &[], None), &small).unwrap_err();
    assert!(matches!(err, WireError::DocumentTooLarge { .. }), "{err}");
    assert_eq!(err.code(), (10334, "BSONObjectTooLarge"));
    assert!(!err.is_fatal());

    let seq = [DocumentSequence {
        identifier: "documents".into(),
        documents: vec![over.clone()],
    }];
    let err = decode(&encode_msg(1, 0, 0, &hello(), &seq, None), &small).unwrap_err();
    assert!(matches!(err, WireError::DocumentTooLarge { .. }), "{err}");

    let q = OpQuery {
        flags: 0,
        full_collection_name: "a.b".into(),
        number_to_skip: 0,
        number_to_return: 0,
        query: over,
        return_fields_selector: None,
    };
    let err = decode(&encode_query(1, &q, None), &small).unwrap_err();
    assert!(matches!(err, WireError::DocumentTooLarge { .. }), "{err}");
}

#[test]
fn every_error_has_a_code_and_message() {
    let errors = [
        WireError::Truncated { needed: 16, got: 3 },
        WireError::UnsupportedOpCode { op_code: 2002 },
        WireError::NestedCompression,
        WireError::TooManyDocuments { max: 1 },
        WireError::DecompressionFailed {
            compressor: "zlib",
            reason: "bad".into(),
        },
    ];
    for err in errors {
        let (code, name) = err.code();
        assert!(code > 0 && !name.is_empty());
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_framed_reply_is_byte_for_byte_the_encoded_one_and_decodes() {
    for flags in [0, msg_flags::CHECKSUM_PRESENT] {
        let body = raw(doc! {"ok": 1.0, "cursor": {"nextBatch": [{"a": 1}, {"b": "two"}]}});
        let whole = encode_msg(5, 9, flags, &body, &[], None);
        // The body in three parts, as a reply around a shared batch is written.
        let (first, rest) = body.as_bytes().split_at(9);
        let (middle, last) = rest.split_at(12);
        let framed = MsgFrame::new(5, 9, flags, &[first, middle, last]);
        let joined = [&framed.head[..], first, middle, last, framed.trailer()].concat();
        assert_eq!(joined, whole, "flags {flags}");
        let msg = expect_msg(decode(&joined, &limits()).expect("a framed reply decodes"));
        assert_eq!(msg.body, body);
    }
}
