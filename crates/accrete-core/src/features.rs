//! Feature hashing and the batch a worker trains on.
//!
//! Hashed features: the bytes `column=value` (a cross of columns a and b:
//! `a=va^b=vb`) go through MurmurHash3 (x86, 32-bit, seed 0), and the hash modulo 2^bits is
//! the row of the hashed table. A batch keeps its rows in flat, reused vectors: nothing is
//! allocated per row once the buffers have grown.

/// MurmurHash3 x86 32-bit.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    Murmur3::new(seed).write(data).finish()
}

/// MurmurHash3 x86 32-bit over bytes given in pieces: the hash of a common prefix (a
/// column's `name=`) is worked out once and each value continues from it, with the same
/// result as hashing the joined bytes.
#[derive(Debug, Clone, Copy)]
pub struct Murmur3 {
    h: u32,
    /// Bytes not yet making up a whole 4-byte block, little-endian, and how many.
    pending: u32,
    npending: u32,
    len: u32,
}

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

impl Murmur3 {
    pub const fn new(seed: u32) -> Self {
        Murmur3 { h: seed, pending: 0, npending: 0, len: 0 }
    }

    #[inline(always)]
    fn block(h: u32, k: u32) -> u32 {
        let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
    }

    /// Continues the hash with `data`.
    #[inline]
    pub fn write(mut self, mut data: &[u8]) -> Self {
        self.len = self.len.wrapping_add(data.len() as u32);
        while self.npending > 0 && !data.is_empty() {
            self.pending |= (data[0] as u32) << (8 * self.npending);
            self.npending += 1;
            data = &data[1..];
            if self.npending == 4 {
                self.h = Self::block(self.h, self.pending);
                (self.pending, self.npending) = (0, 0);
            }
        }
        let mut blocks = data.chunks_exact(4);
        for b in &mut blocks {
            self.h = Self::block(self.h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        for b in blocks.remainder() {
            self.pending |= (*b as u32) << (8 * self.npending);
            self.npending += 1;
        }
        self
    }

    #[inline]
    pub fn finish(self) -> u32 {
        let mut h = self.h;
        if self.npending > 0 {
            h ^= self.pending.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        }
        h ^= self.len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// Rows of features and labels. Dense values are row-major `rows × features`; hashed
/// features of row r are `idx[row_ptr[r]..row_ptr[r+1]]` with values `val[..]`.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub features: usize,
    pub labels: Vec<f32>,
    pub dense: Vec<f32>,
    pub row_ptr: Vec<usize>,
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
    /// After [`Batch::compact`]: the distinct hashed rows (in order of first occurrence) and each occurrence's
    /// position in that list.
    pub uniq: Vec<u32>,
    pub local: Vec<u32>,
    /// Open-addressing table of [`Batch::compact`]: `key << 32 | position`, or EMPTY.
    table: Vec<u64>,
}

const EMPTY: u64 = u64::MAX;

impl Batch {
    pub fn new(features: usize) -> Self {
        Batch { features, row_ptr: vec![0], ..Default::default() }
    }

    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn clear(&mut self) {
        self.labels.clear();
        self.dense.clear();
        self.row_ptr.clear();
        self.row_ptr.push(0);
        self.idx.clear();
        self.val.clear();
        self.uniq.clear();
        self.local.clear();
    }

    /// Ends a row whose dense values and hashed features were appended.
    pub fn finish_row(&mut self, label: f32) {
        self.labels.push(label);
        self.row_ptr.push(self.idx.len());
    }

    /// Drops the row being built (a bad row): its dense values and hashed features.
    pub fn abandon_row(&mut self) {
        self.dense.truncate(self.labels.len() * self.features);
        let start = self.row_ptr.last().copied().unwrap_or(0);
        self.idx.truncate(start);
        self.val.truncate(start);
    }

    /// Keeps only the last `n` rows (a sliding window over a growing file).
    pub fn keep_last(&mut self, n: usize) {
        let rows = self.rows();
        if rows <= n {
            return;
        }
        let k = rows - n;
        let cut = self.row_ptr[k];
        self.labels.drain(..k);
        self.dense.drain(..k * self.features);
        self.idx.drain(..cut);
        self.val.drain(..cut);
        self.row_ptr.drain(..k);
        self.row_ptr.iter_mut().for_each(|p| *p -= cut);
    }

    /// Fills `uniq` (the distinct hashed rows, in order of first occurrence) and `local`
    /// (each occurrence's position in `uniq`), with a reused open-addressing table: linear
    /// in the occurrences, no allocation once the buffers have grown.
    pub fn compact(&mut self) {
        self.uniq.clear();
        self.local.clear();
        let cap = (2 * self.idx.len()).next_power_of_two().max(16);
        if self.table.len() < cap {
            self.table = vec![EMPTY; cap];
        }
        // A table grown by a big batch keeps its memory; a small batch uses (and resets)
        // only the part it needs.
        let table = &mut self.table[..cap];
        let shift = 64 - cap.trailing_zeros();
        let mask = cap - 1;
        for &k in &self.idx {
            // Fibonacci hashing spreads sequential keys (LIBSVM feature numbers) too.
            let mut slot = ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize;
            let pos = loop {
                let e = table[slot];
                if e == EMPTY {
                    let pos = self.uniq.len() as u32;
                    table[slot] = (k as u64) << 32 | pos as u64;
                    self.uniq.push(k);
                    break pos;
                }
                if (e >> 32) as u32 == k {
                    break e as u32;
                }
                slot = (slot + 1) & mask;
            };
            self.local.push(pos);
        }
        table.fill(EMPTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_values() {
        // Reference values of MurmurHash3_x86_32 (e.g. from the smhasher test suite).
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514E_28B7);
        assert_eq!(murmur3_32(b"test", 0), 0xba6b_d213);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(murmur3_32(b"The quick brown fox jumps over the lazy dog", 0), 0x2e4f_f723);
    }

    #[test]
    fn murmur3_in_pieces_equals_murmur3_of_the_whole() {
        let data = b"origin=JFK^dest=LAX and some more bytes";
        for n in 0..=data.len() {
            for m in n..=data.len() {
                let h = Murmur3::new(7).write(&data[..n]).write(&data[n..m]).write(&data[m..]).finish();
                assert_eq!(h, murmur3_32(data, 7), "split at {n}, {m}");
            }
        }
    }

    #[test]
    fn keep_last_drops_the_oldest_rows() {
        let mut b = Batch::new(1);
        for r in 0..4u32 {
            b.dense.push(r as f32);
            for i in 0..r {
                b.idx.push(i);
                b.val.push(r as f32);
            }
            b.finish_row(r as f32);
        }
        b.keep_last(2);
        assert_eq!((b.labels.clone(), b.dense.clone()), (vec![2.0, 3.0], vec![2.0, 3.0]));
        assert_eq!((b.row_ptr.clone(), b.idx.clone()), (vec![0, 2, 5], vec![0, 1, 0, 1, 2]));
    }

    #[test]
    fn compact_maps_occurrences_to_distinct_rows() {
        let mut b = Batch::new(0);
        for (i, v) in [(9u32, 1.0), (3, 1.0), (9, 2.0)] {
            b.idx.push(i);
            b.val.push(v);
        }
        b.finish_row(1.0);
        b.compact();
        assert_eq!(b.uniq, vec![9, 3]);
        assert_eq!(b.local, vec![0, 1, 0]);
    }

    #[test]
    fn compact_is_exact_on_many_colliding_keys() {
        // Keys that share their low bits, sequential keys and repeats, over several batches
        // of different sizes (the table is reused and resized).
        let mut b = Batch::new(0);
        for n in [1usize, 7, 300, 5000, 40] {
            b.clear();
            for i in 0..n {
                for k in [(i as u32 % 97) << 20, i as u32, (i as u32 * 7919) % 1000] {
                    b.idx.push(k);
                    b.val.push(1.0);
                }
                b.finish_row(0.0);
            }
            b.compact();
            let mut want: Vec<u32> = b.idx.clone();
            want.sort_unstable();
            want.dedup();
            let mut got = b.uniq.clone();
            got.sort_unstable();
            assert_eq!(got, want, "batch of {n} rows");
            assert_eq!(got.len(), b.uniq.len(), "uniq has no repeats");
            assert!(b.idx.iter().zip(&b.local).all(|(k, l)| b.uniq[*l as usize] == *k));
        }
    }
}
