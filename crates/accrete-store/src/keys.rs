//! How blobs are keyed in sled: versions, tensors and chunks big-endian, so a tree's keys
//! sort by version. The index (a pack's entry in `p.{id}`) names a blob by [`blob_key`]; formats 1 and 2
//! stored the blobs themselves in pieces (`c.{id}`, `d.{id}`), read only to migrate.
use crate::Ref;

pub(crate) fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Format 2's keys, with which tests write format-2 data dirs. The key prefix of a
/// chunk's pieces (tree `c`).
#[cfg(test)]
pub(crate) fn chunk_key(wver: u64, t: u32, c: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&wver.to_be_bytes());
    k[8..12].copy_from_slice(&t.to_be_bytes());
    k[12..].copy_from_slice(&c.to_be_bytes());
    k
}

#[cfg(test)]
pub(crate) fn piece_key(wver: u64, t: u32, c: u32, piece: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&chunk_key(wver, t, c));
    k[16..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// The key prefix of a delta layer's pieces (in `d.{id}`).
#[cfg(test)]
pub(crate) fn layer_key(hi: u64, t: u32, c: u32, lo: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&chunk_key(hi, t, c));
    k[16..].copy_from_slice(&lo.to_be_bytes());
    k
}

#[cfg(test)]
pub(crate) fn layer_piece_key(hi: u64, t: u32, c: u32, lo: u64, piece: u32) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..24].copy_from_slice(&layer_key(hi, t, c, lo));
    k[24..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// A blob's key in the index: a base (version, 0, tensor, chunk); a layer (hi, 1, tensor,
/// chunk, lo). Both start with the newest version they hold.
pub(crate) fn blob_key(r: &Ref) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    match *r {
        Ref::Base { t, c, v } => {
            k.extend_from_slice(&v.to_be_bytes());
            k.push(0);
            k.extend_from_slice(&t.to_be_bytes());
            k.extend_from_slice(&c.to_be_bytes());
        }
        Ref::Delta { t, c, hi, lo } => {
            k.extend_from_slice(&hi.to_be_bytes());
            k.push(1);
            k.extend_from_slice(&t.to_be_bytes());
            k.extend_from_slice(&c.to_be_bytes());
            k.extend_from_slice(&lo.to_be_bytes());
        }
    }
    k
}

/// The blob an index key names.
pub(crate) fn ref_of_blob_key(k: &[u8]) -> Option<Ref> {
    let (v, t, c) = (u64_key(k.get(..8)?), u32_key(k.get(9..13)?), u32_key(k.get(13..17)?));
    match (k.get(8)?, k.len()) {
        (0, 17) => Some(Ref::Base { t, c, v }),
        (1, 25) => Some(Ref::Delta { t, c, hi: v, lo: u64_key(&k[17..25]) }),
        _ => None,
    }
}

/// The blob a format-2 piece's key (in tree `c` or `d`) belongs to.
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
