//! How blobs are keyed in sled: versions, tensors, chunks and pieces big-endian, so a
//! tree's keys sort by version and a blob's pieces share a prefix.
use crate::Ref;

pub(crate) fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// The key prefix of a chunk's pieces.
pub(crate) fn chunk_key(wver: u64, t: u32, c: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&wver.to_be_bytes());
    k[8..12].copy_from_slice(&t.to_be_bytes());
    k[12..].copy_from_slice(&c.to_be_bytes());
    k
}

pub(crate) fn piece_key(wver: u64, t: u32, c: u32, piece: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&chunk_key(wver, t, c));
    k[16..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// The key prefix of a delta layer's pieces (in `d.{id}`).
pub(crate) fn layer_key(hi: u64, t: u32, c: u32, lo: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&chunk_key(hi, t, c));
    k[16..].copy_from_slice(&lo.to_be_bytes());
    k
}

pub(crate) fn layer_piece_key(hi: u64, t: u32, c: u32, lo: u64, piece: u32) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..24].copy_from_slice(&layer_key(hi, t, c, lo));
    k[24..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// The tree (`c` or `d`) and key prefix of a blob's pieces.
pub(crate) fn blob_prefix(r: &Ref) -> (char, Vec<u8>) {
    match *r {
        Ref::Base { t, c, v } => ('c', chunk_key(v, t, c).to_vec()),
        Ref::Delta { t, c, hi, lo } => ('d', layer_key(hi, t, c, lo).to_vec()),
    }
}

/// The blob a piece's key belongs to.
pub(crate) fn ref_of_key(tree: char, k: &[u8]) -> Option<Ref> {
    let (v, t, c) = (u64_key(k.get(..8)?), u32_key(k.get(8..12)?), u32_key(k.get(12..16)?));
    match tree {
        'c' => Some(Ref::Base { t, c, v }),
        _ => Some(Ref::Delta { t, c, hi: v, lo: u64_key(k.get(16..24)?) }),
    }
}

pub(crate) fn u32_key(k: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = 4.min(k.len());
    b[..n].copy_from_slice(&k[..n]);
    u32::from_be_bytes(b)
}

pub(crate) fn u64_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = 8.min(k.len());
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}
