//! Pushes of changes: a worker that trained row by row on its own copy sends, per vector
//! (the weights, each optimizer slot), what its rows changed, and the server merges them
//! into the live parameters ([`crate::optim::Merge`]): weights and sums add the change,
//! running maxima keep the larger value, decaying averages take the new value. The EMA,
//! if kept, follows the new weights as after any update.
use super::{decode_block, ema_range, Params, BLOCK};
use crate::optim::{merge_of, LeKeys, Merge};

impl Params {
    /// The vector a change names: `None` = the weights, `Some(i)` = slot `i`.
    /// `share`: the part of a weight change to add (concurrent changes are averaged).
    fn merge_values(&mut self, t: usize, slot: Option<usize>, start: usize, v: &[f32], share: f32) {
        let (decay, ema) = (self.ema_decay, self.ema_slot());
        let ts = &mut self.tensors[t];
        self.undo.save(t, ts, start, v.len());
        let end = start + v.len();
        match slot {
            None => {
                ts.w[start..end].iter_mut().zip(v).for_each(|(w, d)| *w += share * d);
                if let Some(e) = ema {
                    ema_range(ts, e, start, end, decay);
                }
            }
            Some(s) => {
                let dst = &mut ts.slots[s][start..end];
                match merge_of(self.slot_names[s]) {
                    Merge::Add | Merge::Mean => dst.iter_mut().zip(v).for_each(|(x, d)| *x += d),
                    Merge::Max => dst.iter_mut().zip(v).for_each(|(x, d)| *x = x.max(*d)),
                    Merge::Replace => dst.copy_from_slice(v),
                }
            }
        }
        self.undo.check(t, ts, start, v.len());
    }

    /// Merges a checked dense change from little-endian f32 bytes (a block at a time); of
    /// a weight change, `share` is added.
    pub fn merge_dense_le(&mut self, t: usize, slot: Option<usize>, offset: usize, bytes: &[u8], share: f32) {
        let mut buf = [0f32; BLOCK];
        for (i, block) in bytes.chunks(BLOCK * 4).enumerate() {
            let n = decode_block(block, &mut buf);
            self.merge_values(t, slot, offset + i * BLOCK, &buf[..n], share);
        }
    }

    /// Merges a checked change of rows by key: row `keys[i]` gets the i-th `cols` floats.
    pub fn merge_rows_le(&mut self, t: usize, slot: Option<usize>, keys: LeKeys<'_>, bytes: &[u8], share: f32) {
        let cols = self.tensors[t].spec.cols as usize;
        for (k, row) in keys.iter().zip(bytes.chunks(cols * 4)) {
            self.merge_dense_le(t, slot, k as usize * cols, row, share);
        }
    }

    /// [`Params::merge_dense_le`] from floats (a BSP round's sum).
    pub fn merge_dense(&mut self, t: usize, slot: Option<usize>, offset: usize, v: &[f32]) {
        self.merge_values(t, slot, offset, v, 1.0);
    }

    /// [`Params::merge_rows_le`] from keys and floats (a BSP round's sum).
    pub fn merge_rows(&mut self, t: usize, slot: Option<usize>, keys: &[u64], v: &[f32]) {
        let cols = self.tensors[t].spec.cols as usize;
        for (k, row) in keys.iter().zip(v.chunks(cols)) {
            self.merge_values(t, slot, *k as usize * cols, row, 1.0);
        }
    }
}
