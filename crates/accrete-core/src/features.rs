//! Feature hashing and the batch a worker trains on.
//!
//! Hashed features: the bytes `column=value` (a cross of columns a and b:
//! `a=va^b=vb`) go through MurmurHash3 (x86, 32-bit, seed 0), and the hash modulo 2^bits is
//! the row of the hashed table. A batch keeps its rows in flat, reused vectors: nothing is
//! allocated per row once the buffers have grown.

/// MurmurHash3 x86 32-bit.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    let mut k = 0u32;
    for (i, b) in tail.iter().enumerate() {
        k |= (*b as u32) << (8 * i);
    }
    if !tail.is_empty() {
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
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
    /// After [`Batch::compact`]: the distinct hashed rows, sorted, and each occurrence's
    /// position in that list.
    pub uniq: Vec<u32>,
    pub local: Vec<u32>,
}

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

    /// Fills `uniq` and `local` (sort + dedup, then a binary search per occurrence).
    pub fn compact(&mut self) {
        self.uniq.clear();
        self.uniq.extend_from_slice(&self.idx);
        self.uniq.sort_unstable();
        self.uniq.dedup();
        self.local.clear();
        let uniq = &self.uniq;
        self.local.extend(self.idx.iter().map(|i| uniq.binary_search(i).unwrap_or_default() as u32));
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
        assert_eq!(b.uniq, vec![3, 9]);
        assert_eq!(b.local, vec![1, 0, 1]);
    }
}
