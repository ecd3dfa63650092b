//! Domain-separated SHA-256 over the canonical encodings. A distinct tag per
//! record kind and version means an event hash can never pass as a link hash.

use sha2::{Digest, Sha256};

use crate::encoding;
use crate::model::{Event, Link};

pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0u8; 32];

pub const EVENT_TAG: &[u8] = b"audit_log:event:v1\0";
pub const LINK_TAG: &[u8] = b"audit_log:link:v1\0";

/// `SHA-256(EVENT_TAG || prev_hash || canonical(event))`. The event's own
/// `prev_hash` and `hash` fields are not part of `canonical(event)`.
pub fn event_hash(event: &Event) -> Hash {
    let mut buf = Vec::with_capacity(256);
    encoding::encode_event(event, &mut buf);
    event_hash_from_encoding(&event.prev_hash, &buf)
}

/// The same hash when the canonical bytes are already at hand.
pub fn event_hash_from_encoding(prev_hash: &Hash, canonical: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(EVENT_TAG);
    h.update(prev_hash);
    h.update(canonical);
    h.finalize().into()
}

/// `SHA-256(LINK_TAG || prev_link_hash || canonical(link))`.
pub fn link_hash(link: &Link) -> Hash {
    // canonical(link) is 88 bytes: no allocation, once per transaction.
    let mut buf = [0u8; 88];
    let fields = [
        i64::from(link.chain_id),
        link.seq,
        link.tx_id as i64,
        link.event_count,
        link.first_event,
        link.last_event,
    ];
    for (i, f) in fields.iter().enumerate() {
        buf[i * 8..i * 8 + 8].copy_from_slice(&f.to_be_bytes());
    }
    buf[48..80].copy_from_slice(&link.last_event_hash);
    buf[80..88].copy_from_slice(&link.committed_at.to_be_bytes());
    debug_assert_eq!(buf.as_slice(), {
        let mut v = Vec::new();
        encoding::encode_link(link, &mut v);
        v
    });
    let mut h = Sha256::new();
    h.update(LINK_TAG);
    h.update(link.prev_link_hash);
    h.update(buf);
    h.finalize().into()
}
