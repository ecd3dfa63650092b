//! The binary records export, `audit_log.export.v3` (docs/FORMAT.md,
//! "Binary records export"): the records of a records export in frames,
//! between the text header and end lines of every export. Larger payloads
//! are LZ4 blocks. It is read in two steps: the reading thread delimits a
//! frame (`read_frame`, which only needs its lengths), and a worker parses
//! and hashes it (`digest`), as a records export's lines are.

use std::borrow::Cow;
use std::io::{self, BufRead};

use audit_log_core::record::{self, Record};
use audit_log_core::tree::record_leaf;

use crate::format::{digest_record, Digested, StoredRecord};

pub const BINARY_FORMAT: &str = "audit_log.export.v3";

/// A record frame's first byte.
pub const RECORD_FRAME: u8 = b'R';
/// The byte that ends the frames: the end line follows.
pub const END_OF_FRAMES: u8 = b'\n';

/// The bytes of a record frame before its blobs: its kind, the columns, and
/// the number of segments.
const HEAD: usize = 1 + 4 + 8 * 6 + 32 + 4;
/// A blob's method and its two lengths.
const BLOB_HEAD: usize = 1 + 4 + 4;
/// The most bytes a blob may hold or stand for (a `bytea` holds less).
pub const MAX_BLOB: u32 = 1 << 30;
const STORED: u8 = 0;
const LZ4: u8 = 1;
/// Blobs shorter than this are stored as they are: a single-row event
/// compresses little, and every byte of the file is digested anyway.
const COMPRESS_FROM: usize = 512;

/// Append a record's frame to `out`.
pub fn write_record(
    out: &mut Vec<u8>,
    r: &Record,
    segments: &[Vec<u8>],
    payload: &[u8],
) -> Result<(), String> {
    let count = u32::try_from(segments.len())
        .map_err(|_| format!("record {}/{}: too many segments", r.chain_id, r.seq))?;
    write_head(out, r, count);
    for blob in segments.iter().map(Vec::as_slice).chain([payload]) {
        write_blob(out, r, blob)?;
    }
    Ok(())
}

/// The start of a record's frame, up to its blobs: `count` segments, then
/// the payload, each appended by [`write_blob`], make the rest. An exporter
/// writes them one at a time, as it reads them.
pub fn write_head(out: &mut Vec<u8>, r: &Record, count: u32) {
    out.push(RECORD_FRAME);
    out.extend_from_slice(&r.chain_id.to_be_bytes());
    for n in [
        r.seq,
        r.tx_id as i64,
        r.first_event,
        r.last_event,
        r.event_count,
        r.committed_at,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&r.link_hash);
    out.extend_from_slice(&count.to_be_bytes());
}

/// Append one blob of record `r`'s frame.
pub fn write_blob(out: &mut Vec<u8>, r: &Record, blob: &[u8]) -> Result<(), String> {
    put_blob(out, blob).map_err(|m| format!("record {}/{}: {m}", r.chain_id, r.seq))
}

fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&n| n <= MAX_BLOB)
        .ok_or_else(|| format!("a payload of {} bytes is too large", bytes.len()))?;
    if bytes.len() >= COMPRESS_FROM {
        let packed = lz4_flex::block::compress(bytes);
        if packed.len() < bytes.len() {
            out.push(LZ4);
            // Smaller than `len`, so within u32.
            out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&packed);
            return Ok(());
        }
    }
    out.push(STORED);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// What `read_frame` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A record frame, appended to the buffer.
    Record,
    /// The byte that ends the frames, appended to the buffer: the end line
    /// follows.
    End,
    /// The end of the file, where a frame was due.
    Eof,
    /// A frame that cannot be read, and why. Nothing after it can be.
    Damaged(String),
}

/// Read the next frame of `r` onto the end of `buf`. Lengths are checked
/// before anything is read, and bytes are read as they come, never
/// allocated ahead on a length's word.
pub fn read_frame(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Next> {
    let kind = match r.fill_buf()?.first() {
        None => return Ok(Next::Eof),
        Some(&k) => k,
    };
    match kind {
        END_OF_FRAMES => {
            r.consume(1);
            buf.push(END_OF_FRAMES);
            return Ok(Next::End);
        }
        RECORD_FRAME => {}
        other => {
            return Ok(Next::Damaged(format!(
            "a frame starting with byte 0x{other:02x}, neither a record (0x52) nor the end (0x0a)"
        )))
        }
    }
    let start = buf.len();
    if !take(r, buf, HEAD)? {
        return Ok(Next::Damaged("the file ends within a record frame".into()));
    }
    let segments = be_u32(&buf[start + HEAD - 4..]);
    for _ in 0..=u64::from(segments) {
        let at = buf.len();
        if !take(r, buf, BLOB_HEAD)? {
            return Ok(Next::Damaged("the file ends within a record frame".into()));
        }
        let (method, stored, raw) = (buf[at], be_u32(&buf[at + 1..]), be_u32(&buf[at + 5..]));
        if let Err(m) = check_blob(method, stored, raw) {
            return Ok(Next::Damaged(m));
        }
        if !take(r, buf, stored as usize)? {
            return Ok(Next::Damaged("the file ends within a record frame".into()));
        }
    }
    Ok(Next::Record)
}

/// Append `n` bytes of `r` to `buf`: false if the file ends first.
fn take(r: &mut impl BufRead, buf: &mut Vec<u8>, n: usize) -> io::Result<bool> {
    // In steps of at most 64 kB: a length read from the file is not
    // trusted with an allocation until its bytes are there.
    let mut left = n;
    while left > 0 {
        let step = left.min(1 << 16);
        let at = buf.len();
        buf.resize(at + step, 0);
        match r.read_exact(&mut buf[at..]) {
            Ok(()) => left -= step,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                buf.truncate(at);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

/// A blob's method and lengths as the format allows them. An LZ4 block
/// cannot stand for more than 255 times its size: a larger claim is refused
/// before anything is allocated for it.
fn check_blob(method: u8, stored: u32, raw: u32) -> Result<(), String> {
    if stored > MAX_BLOB || raw > MAX_BLOB {
        return Err(format!(
            "a blob of {stored} bytes standing for {raw}: past the limit of {MAX_BLOB}"
        ));
    }
    match method {
        STORED if stored == raw => Ok(()),
        STORED => Err(format!(
            "a stored blob of {stored} bytes that claims to stand for {raw}"
        )),
        LZ4 if u64::from(raw) <= u64::from(stored) * 255 + 16 => Ok(()),
        LZ4 => Err(format!(
            "an LZ4 block of {stored} bytes that claims to stand for {raw}, more than LZ4 can"
        )),
        m => Err(format!(
            "a blob of method {m}, neither stored (0) nor LZ4 (1)"
        )),
    }
}

/// A run of this many 0xFF bytes in an LZ4 block spells a length of more
/// than 2^32 (past any blob's 2^30, so the block is invalid), which the
/// LZ4 decoder would add up in 32 bits and wrap: such a block is refused
/// before it is decoded, as an independent reader refuses it. (A block of
/// a blob under 1 GiB never needs a run this long; the exporter's never
/// has one.)
const FF_RUN_LIMIT: usize = (u32::MAX / 255) as usize;

fn longest_run_of_ff(b: &[u8]) -> usize {
    if b.len() < FF_RUN_LIMIT {
        return 0;
    }
    let (mut best, mut run) = (0, 0);
    for &c in b {
        run = if c == 0xFF { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// A record frame, parsed: its columns, and its blobs (the segments in
/// `part` order, then the payload) as they lie in the frame.
pub struct Frame<'a> {
    pub record: Record,
    blobs: Vec<Blob<'a>>,
}

struct Blob<'a> {
    method: u8,
    raw: usize,
    bytes: &'a [u8],
}

impl Blob<'_> {
    /// The bytes the blob stands for, in `scratch` if they must be decompressed.
    fn decode_into<'s>(&'s self, scratch: &'s mut Vec<u8>) -> Result<&'s [u8], String> {
        if self.method == STORED {
            return Ok(self.bytes);
        }
        scratch.clear();
        // A blob stands for at most 1 GiB (and 255 times its own size): an
        // allocation that fails is reported, not an abort.
        scratch
            .try_reserve_exact(self.raw)
            .map_err(|_| format!("cannot allocate {} bytes to decompress a blob", self.raw))?;
        scratch.resize(self.raw, 0);
        if longest_run_of_ff(self.bytes) >= FF_RUN_LIMIT {
            return Err(
                "an LZ4 block with a length spelled in more bytes than any block of 1 GiB needs"
                    .into(),
            );
        }
        match lz4_flex::block::decompress_into(self.bytes, scratch) {
            Ok(n) if n == self.raw => Ok(scratch.as_slice()),
            Ok(n) => Err(format!(
                "an LZ4 block decompresses to {n} bytes, not the {} it claims",
                self.raw
            )),
            Err(e) => Err(format!("an LZ4 block does not decompress: {e}")),
        }
    }

    fn decoded(&self) -> Result<Cow<'_, [u8]>, String> {
        if self.method == STORED {
            return Ok(Cow::Borrowed(self.bytes));
        }
        let mut out = Vec::new();
        self.decode_into(&mut out)?;
        Ok(Cow::Owned(out))
    }
}

/// Parse a frame that `read_frame` delimited (or any bytes: nothing is
/// assumed of them).
pub fn parse(frame: &[u8]) -> Result<Frame<'_>, String> {
    let cut = || "the frame is cut short".to_string();
    if frame.first() != Some(&RECORD_FRAME) {
        return Err("not a record frame".into());
    }
    let head = frame.get(..HEAD).ok_or_else(cut)?;
    let field = |i: usize| be_i64(&head[5 + 8 * i..]);
    let mut link_hash = [0u8; 32];
    link_hash.copy_from_slice(&head[53..85]);
    let record = Record {
        chain_id: i32::from_be_bytes([head[1], head[2], head[3], head[4]]),
        seq: field(0),
        tx_id: field(1) as u64,
        first_event: field(2),
        last_event: field(3),
        event_count: field(4),
        committed_at: field(5),
        link_hash,
    };
    let segments = be_u32(&head[85..]);
    let mut blobs = Vec::with_capacity(segments.min(1024) as usize + 1);
    let mut at = HEAD;
    for _ in 0..=u64::from(segments) {
        let h = frame.get(at..at + BLOB_HEAD).ok_or_else(cut)?;
        let (method, stored, raw) = (h[0], be_u32(&h[1..]), be_u32(&h[5..]));
        check_blob(method, stored, raw)?;
        at += BLOB_HEAD;
        let bytes = frame.get(at..at + stored as usize).ok_or_else(cut)?;
        at += stored as usize;
        blobs.push(Blob {
            method,
            raw: raw as usize,
            bytes,
        });
    }
    if at != frame.len() {
        return Err("bytes after the frame's last blob".into());
    }
    Ok(Frame { record, blobs })
}

impl Frame<'_> {
    /// The record's events in tx_seq order, decoded one at a time, its
    /// payload first and its segments decompressed as the merge reaches
    /// them (so a transaction is never held whole): `each` gets every
    /// event, or why the next cannot be read (the last call then), and can
    /// stop early. A blob that does not decompress is an error.
    pub fn for_each_event(
        &self,
        mut each: impl FnMut(Result<audit_log_core::Event, String>) -> std::ops::ControlFlow<()>,
    ) -> Result<(), String> {
        let Some((payload, segments)) = self.blobs.split_last() else {
            return Err("a frame without its payload".into());
        };
        let payload = payload.decoded()?;
        let mut events =
            record::DecodedCursor::new(&payload[..], !segments.is_empty(), self.record.base());
        let mut segments = segments.iter();
        loop {
            if events.wants_segment() {
                let next = segments.next().map(Blob::decoded).transpose()?;
                events.give_segment(next.map(Cow::into_owned));
            }
            let Some(e) = events.next_event() else {
                return Ok(());
            };
            if each(e.map_err(|m| m.to_string())).is_break() {
                return Ok(());
            }
        }
    }

    /// The record with its segments and payload decompressed.
    pub fn stored(&self) -> Result<StoredRecord, String> {
        let mut blobs = self
            .blobs
            .iter()
            .map(|b| b.decoded().map(Cow::into_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let payload = blobs.pop().unwrap_or_default();
        Ok(StoredRecord {
            record: self.record.clone(),
            segments: blobs,
            payload,
        })
    }
}

/// A frame's record, the digest of its events and, if `leaf` says so of
/// the record, its Merkle leaf (`format::digest_record`). A payload with no segments is hashed
/// where it lies (or decompressed into `scratch`, which the caller reuses
/// from frame to frame).
pub fn digest(
    frame: &[u8],
    scratch: &mut Vec<u8>,
    leaf: impl Fn(&Record) -> bool,
) -> Result<Digested, String> {
    let f = parse(frame)?;
    match f.blobs.as_slice() {
        [payload] => {
            let bytes = payload.decode_into(scratch)?;
            let (d, l) = digest_record(&f.record, [], bytes, leaf(&f.record));
            Ok((f.record, d, l))
        }
        // The payload first, then the segments decompressed one at a time
        // as the merge reaches them: a transaction is never held whole.
        [segments @ .., payload] => {
            let payload = payload.decoded()?;
            let parts = segments.iter().map(|b| b.decoded().map(Cow::into_owned));
            let r = &f.record;
            let (d, l) = if leaf(r) {
                let (d, root) = record::digest_and_root_streamed(r, parts, &payload)?;
                (d, root.map(|root| record_leaf(&r.link_hash, &root)))
            } else {
                (record::digest_streamed(r, parts, &payload)?, None)
            };
            Ok((f.record, d, l))
        }
        [] => Err("a frame without its payload".into()),
    }
}

/// The record frames of a file whose header line `r` has already read, in
/// order, until the end of the frames, the end of the file or the first
/// damaged frame (which verification reports).
pub fn frames(mut r: impl BufRead) -> impl Iterator<Item = io::Result<Vec<u8>>> {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = Vec::new();
        match read_frame(&mut r, &mut buf) {
            Ok(Next::Record) => Some(Ok(buf)),
            Ok(_) => {
                done = true;
                None
            }
            Err(e) => {
                done = true;
                Some(Err(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64) -> Record {
        Record {
            chain_id: -3,
            seq,
            tx_id: u64::MAX - 1,
            first_event: 40,
            last_event: 42,
            event_count: 3,
            committed_at: -5,
            link_hash: [7; 32],
        }
    }

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Next) {
        let mut r = bytes;
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_frame(&mut r, &mut buf).unwrap() {
                Next::Record => out.push(buf),
                other => return (out, other),
            }
        }
    }

    #[test]
    fn frames_read_back_as_written_compressed_or_not() {
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let cases: Vec<(Vec<Vec<u8>>, Vec<u8>)> = vec![
            (vec![], vec![]),
            (vec![], b"small".to_vec()),
            (vec![big.clone(), noise.clone()], big.clone()),
            (vec![vec![]], noise.clone()),
        ];
        let mut file = Vec::new();
        for (i, (segs, payload)) in cases.iter().enumerate() {
            write_record(&mut file, &record(i as i64 + 1), segs, payload).unwrap();
        }
        file.push(END_OF_FRAMES);
        let (frames, next) = read_all(&file);
        assert_eq!(next, Next::End);
        assert_eq!(frames.len(), cases.len());
        for (i, (f, (segs, payload))) in frames.iter().zip(&cases).enumerate() {
            let s = parse(f).unwrap().stored().unwrap();
            assert_eq!(s.record, record(i as i64 + 1));
            assert_eq!(&s.segments, segs);
            assert_eq!(&s.payload, payload);
        }
        // The repetitive blob was compressed, the noise was not.
        assert!(frames[2].len() < big.len() * 2 + noise.len());
        assert!(frames[3].len() > noise.len());
    }

    #[test]
    fn every_cut_and_every_claimed_length_is_refused_without_a_panic() {
        let big: Vec<u8> = (0..4000u32).map(|i| (i % 11) as u8).collect();
        let mut frame = Vec::new();
        write_record(&mut frame, &record(1), std::slice::from_ref(&big), b"tail").unwrap();
        for cut in 0..frame.len() {
            let (frames, next) = read_all(&frame[..cut]);
            assert!(frames.is_empty());
            if cut == 0 {
                assert_eq!(next, Next::Eof);
            } else {
                assert!(matches!(next, Next::Damaged(_)), "cut at {cut}: {next:?}");
            }
            assert!(parse(&frame[..cut]).is_err());
        }
        // Every byte flipped: read and parsed to an error or to a record,
        // never a panic; a changed LZ4 block either fails or decompresses
        // to exactly the length it claims.
        let mut scratch = Vec::new();
        for at in 0..frame.len() {
            for bit in [0x01u8, 0x80] {
                let mut f = frame.clone();
                f[at] ^= bit;
                let (frames, _) = read_all(&f);
                for g in frames {
                    let _ = digest(&g, &mut scratch, |_| true);
                }
                let _ = digest(&f, &mut scratch, |_| true);
            }
        }
        // A length past the limit, or an LZ4 claim past what LZ4 can do.
        for (method, stored, raw) in [
            (0u8, 5u32, 6u32),
            (1, 4, 4 * 255 + 17),
            (2, 0, 0),
            (0, MAX_BLOB + 1, MAX_BLOB + 1),
            (1, 10, MAX_BLOB + 1),
        ] {
            let mut f = frame[..HEAD].to_vec();
            f[HEAD - 4..].copy_from_slice(&0u32.to_be_bytes());
            f.push(method);
            f.extend_from_slice(&stored.to_be_bytes());
            f.extend_from_slice(&raw.to_be_bytes());
            f.extend_from_slice(&[0; 16]);
            assert!(
                matches!(read_all(&f).1, Next::Damaged(_)),
                "{method} {stored} {raw}"
            );
            assert!(parse(&f).is_err());
        }
    }

    /// An LZ4 length spelled in 2^32 / 255 bytes of 0xFF wraps a 32-bit
    /// sum (and overflows one in a debug build): refused before decoding.
    #[test]
    fn a_length_past_32_bits_in_an_lz4_block_is_refused() {
        let mut block = vec![0xF0u8];
        block.resize(1 + FF_RUN_LIMIT, 0xFF);
        block.extend_from_slice(&[0x00, b'a']);
        let mut frame = Vec::new();
        write_record(&mut frame, &record(1), &[], b"").unwrap();
        frame.truncate(HEAD);
        frame.push(LZ4);
        frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
        frame.extend_from_slice(&1000u32.to_be_bytes());
        frame.extend_from_slice(&block);
        let e = digest(&frame, &mut Vec::new(), |_| false).unwrap_err();
        assert!(e.contains("length spelled"), "{e}");
    }

    /// docs/FORMAT.md, "Binary records export": the two frames of its test
    /// vector, byte for byte, and its LZ4 block decoded.
    #[test]
    fn the_test_vector_of_format_md() {
        let r = Record {
            chain_id: 0,
            seq: 1,
            tx_id: 777,
            first_event: 42,
            last_event: 42,
            event_count: 1,
            committed_at: 1_795_309_200_123_456,
            link_hash: [0xab; 32],
        };
        let head = "52\
                    00000000\
                    0000000000000001\
                    0000000000000309\
                    000000000000002a\
                    000000000000002a\
                    0000000000000001\
                    000660d2ff22a640\
                    abababababababababababababababababababababababababababababababab";
        let mut f = Vec::new();
        write_record(&mut f, &r, &[], b"abc").unwrap();
        assert_eq!(
            hex::encode(&f),
            format!("{head}00000000 00 00000003 00000003 616263").replace(' ', "")
        );
        let mut g = Vec::new();
        write_record(&mut g, &r, &[vec![b'a'; 600]], b"").unwrap();
        let lz4 = "1f610100ffff4060616161616161";
        assert_eq!(
            hex::encode(&g),
            format!("{head}00000001 01 0000000e 00000258 {lz4} 00 00000000 00000000")
                .replace(' ', "")
        );
        let s = parse(&g).unwrap().stored().unwrap();
        assert_eq!(s.segments, vec![vec![b'a'; 600]]);
        assert!(s.payload.is_empty());
    }
}
