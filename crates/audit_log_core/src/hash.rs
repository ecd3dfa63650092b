//! Domain-separated SHA-256 over the canonical encodings. A distinct tag per
//! record kind and version means an event hash can never pass as a link hash.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};

use crate::encoding;
use crate::model::{Event, Link};

pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0u8; 32];

pub const EVENT_TAG: &[u8] = b"audit_log:event:v1\0";
/// Events stored packed (`encoding::packed`) hash under their own tag.
pub const EVENT_TAG_V2: &[u8] = b"audit_log:event:v2\0";
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
    sha256_of(&[EVENT_TAG, prev_hash, canonical])
}

/// `SHA-256(EVENT_TAG_V2 || prev_hash || i64 id || u64 tx_id || i64 tx_seq || body)`:
/// the hash of an event stored packed, over the body its frame stores.
pub fn event_hash_v2(prev_hash: &Hash, id: i64, tx_id: u64, tx_seq: i64, body: &[u8]) -> Hash {
    let mut ids = [0u8; 24];
    ids[..8].copy_from_slice(&id.to_be_bytes());
    ids[8..16].copy_from_slice(&tx_id.to_be_bytes());
    ids[16..].copy_from_slice(&tx_seq.to_be_bytes());
    sha256_of(&[EVENT_TAG_V2, prev_hash, &ids, body])
}

/// Blocks of a message short enough to be assembled on the stack.
const SHORT_BLOCKS: usize = 8;

/// SHA-256 of the concatenation of `parts`. A short message (most events,
/// every link) is padded in blocks on the stack and compressed in one call:
/// verification hashes a few hundred bytes per event, and the streaming
/// hasher's buffering and finalization cost a tenth of that.
pub fn sha256_of(parts: &[&[u8]]) -> Hash {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // The message, the 0x80 byte and the 8-byte bit length.
    let blocks = (len + 9).div_ceil(64);
    if blocks > SHORT_BLOCKS {
        let mut h = Sha256::new();
        parts.iter().for_each(|p| h.update(p));
        return h.finalize().into();
    }
    let mut buf = [GenericArray::<u8, sha2::digest::consts::U64>::default(); SHORT_BLOCKS];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (b, o) = (at / 64, at % 64);
            let n = rest.len().min(64 - o);
            buf[b][o..o + n].copy_from_slice(&rest[..n]);
            at += n;
            rest = &rest[n..];
        }
    };
    parts.iter().for_each(|p| put(p));
    put(&[0x80]);
    let last = &mut buf[blocks - 1];
    last[56..].copy_from_slice(&((len as u64) * 8).to_be_bytes());
    let mut state = SHA256_INIT;
    sha2::compress256(&mut state, &buf[..blocks]);
    let mut out = ZERO_HASH;
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_INIT: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// `SHA-256(LINK_TAG || prev_link_hash || canonical(link))`.
pub fn link_hash(link: &Link) -> Hash {
    let h = link_hash_of(
        &link.prev_link_hash,
        [
            i64::from(link.chain_id),
            link.seq,
            link.tx_id as i64,
            link.event_count,
            link.first_event,
            link.last_event,
        ],
        &link.last_event_hash,
        link.committed_at,
    );
    debug_assert_eq!(h, {
        let mut v = Vec::new();
        encoding::encode_link(link, &mut v);
        sha256_of(&[LINK_TAG, &link.prev_link_hash, &v])
    });
    h
}

/// The link hash from its fields: `ids` are chain_id, seq, tx_id,
/// event_count, first_event and last_event, in the order of
/// `canonical(link)`, which is 88 bytes (no allocation).
pub fn link_hash_of(
    prev_link_hash: &Hash,
    ids: [i64; 6],
    last_event_hash: &Hash,
    committed_at: i64,
) -> Hash {
    let mut buf = [0u8; 88];
    for (i, f) in ids.iter().enumerate() {
        buf[i * 8..i * 8 + 8].copy_from_slice(&f.to_be_bytes());
    }
    buf[48..80].copy_from_slice(last_event_hash);
    buf[80..88].copy_from_slice(&committed_at.to_be_bytes());
    sha256_of(&[LINK_TAG, prev_link_hash, &buf])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the block boundaries and past the stack's
    /// blocks, split in every way at a few points: the same as the
    /// streaming hasher.
    #[test]
    fn short_messages_hash_as_sha256() {
        let data: Vec<u8> = (0..700u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let m = &data[..len];
            let want: Hash = Sha256::digest(m).into();
            assert_eq!(sha256_of(&[m]), want, "length {len}");
            for cut in [0, 1, 19, 51, 63, 64, 65, 128] {
                if cut <= len {
                    let (a, b) = m.split_at(cut);
                    assert_eq!(sha256_of(&[a, b]), want, "length {len}, cut {cut}");
                    assert_eq!(sha256_of(&[a, &[], b]), want, "length {len}, cut {cut}");
                }
            }
        }
        // The known answer for "abc" (FIPS 180-2, B.1).
        assert_eq!(
            hex::encode(sha256_of(&[b"ab", b"c"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
