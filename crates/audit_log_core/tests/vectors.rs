//! The test vectors of docs/FORMAT.md. If one of these fails, the encoding
//! changed: that needs a new version tag, not a new vector.
use audit_log_core::encoding::encode_event;
use audit_log_core::{event_hash, link_hash, Event, Link, ZERO_HASH};

pub fn vector_event() -> Event {
    Event {
        id: 42,
        tx_id: 777,
        tx_seq: 1,
        tx_first: 42,
        recorded_at: 1_767_225_600_123_456, // 2026-01-01T00:00:00.123456Z
        statement_at: 1_767_225_600_000_000,
        session_user_name: "app".into(),
        current_user_name: "app".into(),
        application_name: Some("psql".into()),
        client_addr: None,
        context: None,
        table_schema: "public".into(),
        table_name: "orders".into(),
        op: "UPDATE".into(),
        old_row: Some(
            serde_json::from_str::<serde_json::Value>(r#"{"id": 1, "amount": 10.50, "note": "é"}"#)
                .unwrap()
                .into(),
        ),
        new_row: Some(
            serde_json::from_str::<serde_json::Value>(r#"{"id": 1, "amount": 11, "note": null}"#)
                .unwrap()
                .into(),
        ),
        prev_hash: ZERO_HASH,
        hash: ZERO_HASH,
    }
}

#[test]
fn event_vector() {
    let e = vector_event();
    let mut buf = Vec::new();
    encode_event(&e, &mut buf);
    assert_eq!(
        hex::encode(&buf),
        "000000000000002a0000000000000309000000000000000100064748462222400006474846204000000000036170700000000361707001000000047073716c0000000000067075626c6963000000066f72646572730000000655504441544501060000000300000006616d6f756e74030000000531302e3530000000026964030000000131000000046e6f74650400000002c3a901060000000300000006616d6f756e7403000000023131000000026964030000000131000000046e6f746500"
    );
    assert_eq!(
        hex::encode(event_hash(&e)),
        "16a3d9bb4cc9a45ec7ca5b23952f545e9dc4b7722744316b97c3c23db4b263cf"
    );
}

#[test]
fn tx_first_is_not_hashed() {
    let e = vector_event();
    let mut moved = e.clone();
    moved.tx_first = 7;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    encode_event(&e, &mut a);
    encode_event(&moved, &mut b);
    assert_eq!(a, b);
    assert_eq!(event_hash(&e), event_hash(&moved));
}

#[test]
fn link_vector() {
    let e = vector_event();
    let mut l = Link {
        chain_id: 3,
        seq: 1,
        tx_id: 777,
        event_count: 1,
        first_event: 42,
        last_event: 42,
        last_event_hash: event_hash(&e),
        committed_at: 1_767_225_600_200_000,
        prev_link_hash: ZERO_HASH,
        link_hash: ZERO_HASH,
    };
    l.link_hash = link_hash(&l);
    assert_eq!(
        hex::encode(l.link_hash),
        "e8998486ca84c21664ee49c6e246310debd7fd1f3ec82a31fad4a0aae5960d57"
    );
}

/// The record of the vector event's transaction, its link hash not set.
fn vector_record() -> audit_log_core::record::Record {
    audit_log_core::record::Record {
        chain_id: 3,
        seq: 1,
        tx_id: 777,
        first_event: 42,
        last_event: 42,
        event_count: 1,
        committed_at: 1_767_225_600_200_000,
        link_hash: ZERO_HASH,
    }
}

#[test]
fn record_vector() {
    use audit_log_core::record::{digest, put_event, verify_records};
    let mut canonical = Vec::new();
    encode_event(&vector_event(), &mut canonical);
    let mut payload = Vec::new();
    put_event(&mut payload, &canonical);
    assert_eq!(hex::encode(&payload[..4]), "000000c0");
    assert_eq!(payload.len(), 4 + 192);
    let mut r = vector_record();
    let d = digest(&r, [], &payload);
    assert_eq!(d.fault, None);
    assert_eq!(
        hex::encode(d.last_hash),
        "16a3d9bb4cc9a45ec7ca5b23952f545e9dc4b7722744316b97c3c23db4b263cf"
    );
    r.link_hash = r.link(ZERO_HASH, d.last_hash).link_hash;
    assert_eq!(
        hex::encode(r.link_hash),
        "e8998486ca84c21664ee49c6e246310debd7fd1f3ec82a31fad4a0aae5960d57"
    );
    let v = verify_records(std::iter::once(Ok::<_, ()>((r, d))), None, &[], &[]).unwrap();
    assert!(v.ok());
}

/// FORMAT.md, "Merkle trees": the vector record's leaf, an events root of
/// three events, and RFC 9162's seven-leaf example.
#[test]
fn merkle_vectors() {
    use audit_log_core::merkle::{leaf_hash, root};
    use audit_log_core::tree::{events_root, record_leaf};
    use sha2::{Digest, Sha256};
    let hex32 = |s: &str| -> [u8; 32] { hex::decode(s).unwrap().try_into().unwrap() };
    let event = hex32("16a3d9bb4cc9a45ec7ca5b23952f545e9dc4b7722744316b97c3c23db4b263cf");
    let link = hex32("e8998486ca84c21664ee49c6e246310debd7fd1f3ec82a31fad4a0aae5960d57");
    let er = events_root(&[event]);
    assert_eq!(
        hex::encode(er),
        "3e84d36c437a7b449498777d98f9fa64ba2ead12c2ec3524aef068f8f09c33cd"
    );
    assert_eq!(
        hex::encode(record_leaf(&link, &er)),
        "aeca0d0ddb038d3041f50b4801106cbc0d6f6d267517d35e1a089568434d0710"
    );
    let three: Vec<[u8; 32]> = (1u8..=3).map(|i| Sha256::digest([i]).into()).collect();
    assert_eq!(
        hex::encode(events_root(&three)),
        "15681b71a5a1895616f06c60725050e8d9cd13a6ebbbd6ff8ca1a936bb504350"
    );
    let d: Vec<[u8; 32]> = (0..7u8).map(|i| leaf_hash(&[i])).collect();
    assert_eq!(
        hex::encode(root(&d)),
        "3560191803028444b232018ac047fdb561c09c23a7a6876c85e08b5e4d48e9f3"
    );
}

/// FORMAT.md, "Packed events": the vector event as a version 2 frame, and
/// its version 2 hash. (Checked against an independent Python encoder.)
#[test]
fn packed_vector() {
    use audit_log_core::encoding::packed::{frame_at, pack, Base};
    use audit_log_core::record::digest;
    let mut canonical = Vec::new();
    encode_event(&vector_event(), &mut canonical);
    let mut frame = Vec::new();
    pack(&canonical, 42, &mut frame).unwrap();
    let (f, _) = frame_at(&frame, 0).unwrap();
    let base = Base {
        first_event: 42,
        tx_id: 777,
    };
    assert_eq!(
        hex::encode(&frame),
        "a2000167000647484622224080890f036170700001047073716c0000067075626c6963066f72646572730655504441544501060306616d6f756e74030531302e3530026964030131046e6f74650402c3a901060306616d6f756e7403023131026964030131046e6f746500"
    );
    let v2 = "258f1633a95a6cbeeecd1d2e77a484acd2b5c7234b7a664f0a99dccb714a5f55";
    assert_eq!(hex::encode(f.hash(&ZERO_HASH, base)), v2);
    let r = vector_record();
    let d = digest(&r, [], &frame);
    assert_eq!(d.fault, None);
    assert_eq!(hex::encode(d.last_hash), v2);
    // 107 bytes for the 196 of its version 1 frame.
    assert_eq!((frame.len(), 4 + canonical.len()), (107, 196));
}
