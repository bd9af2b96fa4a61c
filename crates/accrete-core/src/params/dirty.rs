//! What changed in a tensor since the last commit: per chunk clean, some rows, or whole,
//! and for sparse (hashed) tensors the changed floats, one bit each, so a commit of a
//! chunk whose rows were only sparsely touched writes just those rows (a delta layer).
//! Marking allocates nothing: the bitmap is allocated once with the tensor (1/32 of its
//! weights' bytes) and cleared chunk by chunk.

use super::CHUNK_FLOATS;

const CLEAN: u8 = 0;
const ROWS: u8 = 1;
const WHOLE: u8 = 2;
/// Bitmap words per chunk.
pub const CHUNK_WORDS: usize = CHUNK_FLOATS / 64;

/// How a chunk changed since the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// Write the chunk whole.
    Whole,
    /// These floats changed (a bitmap over the chunk: bit `i` of word `i / 64`).
    Rows(&'a [u64]),
}

#[derive(Debug, Clone)]
pub(crate) struct Dirty {
    state: Vec<u8>,
    floats: usize,
    /// Empty for dense tensors (whose changes are written as whole chunks).
    bits: Vec<u64>,
}

impl Dirty {
    pub(crate) fn new(floats: usize, sparse: bool) -> Dirty {
        let chunks = floats.div_ceil(CHUNK_FLOATS);
        let bits = if sparse { vec![0u64; chunks * CHUNK_WORDS] } else { Vec::new() };
        Dirty { state: vec![CLEAN; chunks], floats, bits }
    }

    pub(crate) fn chunks(&self) -> usize {
        self.state.len()
    }

    /// Floats `start..end` changed.
    pub(crate) fn mark(&mut self, start: usize, end: usize) {
        if end <= start {
            return;
        }
        for c in start / CHUNK_FLOATS..=(end - 1) / CHUNK_FLOATS {
            let (first, last) = (c * CHUNK_FLOATS, ((c + 1) * CHUNK_FLOATS).min(self.floats));
            let (lo, hi) = (start.max(first), end.min(last));
            if self.bits.is_empty() || (lo == first && hi == last) {
                self.state[c] = WHOLE;
                continue;
            }
            if self.state[c] == WHOLE {
                continue;
            }
            self.state[c] = ROWS;
            for i in lo..hi {
                self.bits[i / 64] |= 1 << (i % 64);
            }
        }
    }

    pub(crate) fn mark_whole(&mut self, c: usize) {
        self.state[c] = WHOLE;
    }

    /// How chunk `c` changed, if it did.
    pub(crate) fn change(&self, c: usize) -> Option<Change<'_>> {
        match self.state[c] {
            CLEAN => None,
            ROWS => Some(Change::Rows(&self.bits[c * CHUNK_WORDS..(c + 1) * CHUNK_WORDS])),
            _ => Some(Change::Whole),
        }
    }

    pub(crate) fn is_dirty(&self, c: usize) -> bool {
        self.state[c] != CLEAN
    }

    /// Everything clean again (the bitmap words of changed chunks only).
    pub(crate) fn clear(&mut self) {
        for (c, s) in self.state.iter_mut().enumerate() {
            if *s != CLEAN && !self.bits.is_empty() {
                self.bits[c * CHUNK_WORDS..(c + 1) * CHUNK_WORDS].fill(0);
            }
            *s = CLEAN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_marks_keep_rows_until_a_chunk_is_covered() {
        let mut d = Dirty::new(3 * CHUNK_FLOATS - 5, true);
        d.mark(3, 4);
        d.mark(CHUNK_FLOATS - 1, CHUNK_FLOATS + 2);
        let Some(Change::Rows(w)) = d.change(0) else { panic!("{:?}", d.change(0)) };
        let ones: Vec<usize> = (0..CHUNK_FLOATS).filter(|i| w[i / 64] >> (i % 64) & 1 == 1).collect();
        assert_eq!(ones, vec![3, CHUNK_FLOATS - 1]);
        let Some(Change::Rows(w)) = d.change(1) else { panic!() };
        assert_eq!(w[0], 0b11);
        assert_eq!(d.change(2), None);
        // the last chunk is short: covering what it has makes it whole
        d.mark(2 * CHUNK_FLOATS, 3 * CHUNK_FLOATS - 5);
        assert_eq!(d.change(2), Some(Change::Whole));
        d.mark(5, 6);
        d.mark_whole(0);
        assert_eq!(d.change(0), Some(Change::Whole));
        d.clear();
        assert!((0..3).all(|c| d.change(c).is_none()));
        assert!(d.bits.iter().all(|w| *w == 0), "clearing clears the bits of whole chunks too");
        d.mark(70, 71);
        let Some(Change::Rows(w)) = d.change(0) else { panic!() };
        assert_eq!((w[1], w.iter().map(|x| x.count_ones()).sum::<u32>()), (1 << 6, 1));
    }

    #[test]
    fn dense_marks_are_whole_chunks() {
        let mut d = Dirty::new(2 * CHUNK_FLOATS, false);
        d.mark(1, 2);
        assert_eq!(d.change(0), Some(Change::Whole));
        assert!(!d.is_dirty(1));
    }
}
