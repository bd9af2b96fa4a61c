//! Pushes of changes: a worker that trained row by row on its own copy sends, per vector
//! (the weights, each optimizer slot), what its rows changed, and the server merges them
//! into the live parameters ([`crate::optim::Merge`]): weights and sums add the change,
//! running maxima keep the larger value, decaying averages take the new value. The EMA,
//! if kept, follows the new weights as after any update.
//!
//! A weight change is shared with concurrent pushes ([`Share`]): where another push
//! changed the weight the same way since this one's pull, the change is scaled by the
//! push's share (1 / the workers concurrent with it); a weight nobody else changed
//! meanwhile (a rare hashed feature, say), or whose last change went the other way,
//! takes its change whole.
//!
//! Each merge writes one vector, so the undo log saves and checks that vector alone
//! (saving the weights and every slot per vector cost six times the copies).
use super::{decode_block, ema_range, Params, BLOCK};
use crate::optim::{merge_of, LeKeys, Merge};

/// How a push of changes shares its weight changes with the pushes concurrent with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// The model's update count at the push's pull.
    pub base: u64,
    /// The update this push makes.
    pub at: u64,
    /// The part of a change kept where another push changed the weight after `base`.
    pub share: f32,
}

impl Share {
    /// The part of change `d` a weight takes, given its `mark` ([`marks_of`]), which
    /// this push's change then becomes. Two workers' changes of a weight in the same
    /// direction are two estimates of one move (both tracking a level, say): added,
    /// they would overshoot, so this one takes its share. Changes in opposite directions
    /// are noise about the weight's level, which the sequential optimizer would add (and
    /// mostly cancel): this one is added whole. (Sharing both ways cost flights' random
    /// split 0.0002 of AUC and half its spread across runs: see ARCHITECTURE.md.)
    #[inline]
    fn of(&self, d: f32, mark: &mut u64) -> f32 {
        if d == 0.0 {
            return d; // moved nothing: the mark stays
        }
        let (at, last) = (*mark >> 2, *mark & 3);
        let opposed = (last == UP && d < 0.0) || (last == DOWN && d > 0.0);
        let part = if at > self.base && !opposed { self.share * d } else { d };
        *mark = self.at << 2 | direction(part);
        part
    }
}

/// A mark's direction of the last change (0: no change yet, or not a number).
const UP: u64 = 1;
const DOWN: u64 = 2;

fn direction(d: f32) -> u64 {
    if d > 0.0 {
        UP
    } else if d < 0.0 {
        DOWN
    } else {
        0
    }
}

/// Each weight of tensor `t` (of `len` weights)'s mark, grown on first use: the update
/// that last changed it, shifted left by two bits, and the direction of that change.
fn marks_of(changed_at: &mut Vec<Vec<u64>>, n_tensors: usize, t: usize, len: usize) -> &mut [u64] {
    if changed_at.len() != n_tensors {
        changed_at.resize_with(n_tensors, Vec::new);
    }
    let marks = &mut changed_at[t];
    if marks.len() < len {
        marks.resize(len, 0);
    }
    marks
}

impl Params {
    /// The vector a change names: `None` = the weights, `Some(i)` = slot `i`. A weight
    /// change with a [`Share`] is shared; without one (a BSP round's mean) it adds whole.
    fn merge_values(&mut self, t: usize, slot: Option<usize>, start: usize, v: &[f32], share: Option<Share>) {
        let (decay, ema, n_tensors) = (self.ema_decay, self.ema_slot(), self.tensors.len());
        let ts = &mut self.tensors[t];
        self.undo.save_vector(t, ts, slot, start, v.len());
        let end = start + v.len();
        match slot {
            None => {
                let len = ts.w.len();
                let w = &mut ts.w[start..end];
                match share {
                    None => w.iter_mut().zip(v).for_each(|(w, d)| *w += d),
                    Some(s) => {
                        let marks = marks_of(&mut self.changed_at, n_tensors, t, len);
                        for ((w, d), at) in w.iter_mut().zip(v).zip(&mut marks[start..end]) {
                            *w += s.of(*d, at);
                        }
                    }
                }
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
        self.undo.check_vector(t, ts, slot, start, v.len());
    }

    /// Merges a checked dense change from little-endian f32 bytes (a block at a time); a
    /// weight change is shared by `share` ([`Share`]).
    pub fn merge_dense_le(&mut self, t: usize, slot: Option<usize>, offset: usize, bytes: &[u8], share: Option<Share>) {
        self.merge_le_with(&mut [0f32; BLOCK], t, slot, offset, bytes, share);
    }

    /// [`Params::merge_dense_le`] decoding through `buf` (one buffer for a push's rows:
    /// zeroing a block per row cost more than the merge).
    fn merge_le_with(
        &mut self,
        buf: &mut [f32; BLOCK],
        t: usize,
        slot: Option<usize>,
        offset: usize,
        bytes: &[u8],
        share: Option<Share>,
    ) {
        for (i, block) in bytes.chunks(BLOCK * 4).enumerate() {
            let n = decode_block(block, buf);
            self.merge_values(t, slot, offset + i * BLOCK, &buf[..n], share);
        }
    }

    /// Merges a checked change of rows by key: row `keys[i]` gets the i-th `cols` floats.
    pub fn merge_rows_le(
        &mut self,
        t: usize,
        slot: Option<usize>,
        keys: LeKeys<'_>,
        bytes: &[u8],
        share: Option<Share>,
    ) {
        let cols = self.tensors[t].spec.cols as usize;
        if cols == 1 && self.ema_slot().is_none() {
            return self.merge_keys_le(t, slot, keys, bytes, share);
        }
        let mut buf = [0f32; BLOCK];
        for (k, row) in keys.iter().zip(bytes.chunks(cols * 4)) {
            self.merge_le_with(&mut buf, t, slot, k as usize * cols, row, share);
        }
    }

    /// [`Params::merge_rows_le`] of a one-column table without an EMA, a vector at a
    /// time: one undo entry and tight loops over the keys, whose scattered loads overlap
    /// (a call per key left each key's cache misses one after another: 43% of the
    /// server's time on time-sorted flights went to the undo log's per-key copies).
    fn merge_keys_le(&mut self, t: usize, slot: Option<usize>, keys: LeKeys<'_>, bytes: &[u8], share: Option<Share>) {
        let n_tensors = self.tensors.len();
        let ts = &mut self.tensors[t];
        self.undo.save_vector_keys(t, ts, slot, keys.iter());
        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let it = keys.iter().map(|k| k as usize).zip(values);
        match slot {
            None => {
                let w = &mut ts.w;
                match share {
                    None => it.for_each(|(k, d)| w[k] += d),
                    Some(s) => {
                        let marks = marks_of(&mut self.changed_at, n_tensors, t, w.len());
                        it.for_each(|(k, d)| w[k] += s.of(d, &mut marks[k]));
                    }
                }
            }
            Some(s) => {
                let dst = &mut ts.slots[s];
                match merge_of(self.slot_names[s]) {
                    Merge::Add | Merge::Mean => it.for_each(|(k, d)| dst[k] += d),
                    Merge::Max => it.for_each(|(k, d)| dst[k] = dst[k].max(d)),
                    Merge::Replace => it.for_each(|(k, d)| dst[k] = d),
                }
            }
        }
        self.undo.check_vector_keys(t, ts, slot, keys.iter());
    }

    /// [`Params::merge_dense_le`] from floats (a BSP round's sum).
    pub fn merge_dense(&mut self, t: usize, slot: Option<usize>, offset: usize, v: &[f32]) {
        self.merge_values(t, slot, offset, v, None);
    }

    /// [`Params::merge_rows_le`] from keys and floats (a BSP round's sum).
    pub fn merge_rows(&mut self, t: usize, slot: Option<usize>, keys: &[u64], v: &[f32]) {
        let cols = self.tensors[t].spec.cols as usize;
        for (k, row) in keys.iter().zip(v.chunks(cols)) {
            self.merge_values(t, slot, *k as usize * cols, row, None);
        }
    }
}
