//! The undo log of one update: what each range of weights and slots held before the
//! update wrote it, kept until the update is known to have left every value finite. A
//! refused update is undone exactly — saved entries are restored last first, so a key
//! updated twice gets back its first saved value — which makes a push atomic in this
//! respect too. Each written range is checked right after it is written, while it is in
//! cache. The buffers are kept from one update to the next: nothing is allocated per row
//! or per value.
use crate::params::TensorState;

/// Saved floats kept between updates; a larger log (a dense push over a big model) is
/// given back after its update.
const KEEP_FLOATS: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub(crate) struct Undo {
    saved: Vec<Saved>,
    /// The keys of [`Saved::Keys`] and [`Saved::VectorKeys`] entries, in order.
    keys: Vec<u64>,
    /// Per entry, the old values: a range's weights then each slot's; for keys, every
    /// key's weight, then every key's first slot, and so on.
    values: Vec<f32>,
    /// The first value found non-finite in this update.
    bad: Option<NonFinite>,
}

#[derive(Debug, Clone, Copy)]
enum Saved {
    /// `start..start+len` of tensor `t`.
    Range { t: usize, start: usize, len: usize },
    /// Single floats of tensor `t` at the next `n` keys (one-column tables).
    Keys { t: usize, n: usize },
    /// `start..start+len` of one vector of tensor `t`: the weights (`None`) or a slot (a
    /// merge of changes writes one vector at a time).
    Vector { t: usize, slot: Option<usize>, start: usize, len: usize },
    /// Single floats of one vector of tensor `t` at the next `n` keys (a push of changes
    /// to a one-column table, merged a vector at a time); `marked`: the same keys as the
    /// entry before, which marks them dirty.
    VectorKeys { t: usize, slot: Option<usize>, n: usize, marked: bool },
}

/// The first value an update left NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NonFinite {
    pub t: usize,
    /// `None` for the weight, else the slot's index.
    pub slot: Option<usize>,
    pub index: usize,
    pub value: f32,
}

fn vectors(ts: &TensorState) -> impl Iterator<Item = &Vec<f32>> {
    std::iter::once(&ts.w).chain(&ts.slots)
}

fn vector(ts: &TensorState, slot: Option<usize>) -> &[f32] {
    slot.map_or(&ts.w, |s| &ts.slots[s])
}

fn vector_mut(ts: &mut TensorState, slot: Option<usize>) -> &mut [f32] {
    match slot {
        None => &mut ts.w,
        Some(s) => &mut ts.slots[s],
    }
}

/// The first value of `v` that is not finite: a branch-free scan (it vectorises), then
/// the index only when one is bad.
#[inline]
fn first_non_finite(v: &[f32]) -> Option<usize> {
    if v.iter().fold(true, |ok, x| ok & x.is_finite()) {
        return None;
    }
    v.iter().position(|x| !x.is_finite())
}

fn vectors_mut(ts: &mut TensorState) -> impl Iterator<Item = &mut Vec<f32>> {
    std::iter::once(&mut ts.w).chain(ts.slots.iter_mut())
}

impl Undo {
    /// Saves `start..start+len` of tensor `t` (weights and slots) before it is written.
    #[inline]
    pub fn save(&mut self, t: usize, ts: &TensorState, start: usize, len: usize) {
        self.saved.push(Saved::Range { t, start, len });
        for v in vectors(ts) {
            self.values.extend_from_slice(&v[start..start + len]);
        }
    }

    /// Saves `start..start+len` of one vector of tensor `t` (`None`: the weights) before
    /// it is written.
    #[inline]
    pub fn save_vector(&mut self, t: usize, ts: &TensorState, slot: Option<usize>, start: usize, len: usize) {
        self.saved.push(Saved::Vector { t, slot, start, len });
        self.values.extend_from_slice(&vector(ts, slot)[start..start + len]);
    }

    /// [`Undo::check`] of one vector's range, written by [`Undo::save_vector`]'s update.
    #[inline]
    pub fn check_vector(&mut self, t: usize, ts: &TensorState, slot: Option<usize>, start: usize, len: usize) {
        if self.bad.is_some() {
            return;
        }
        let v = &vector(ts, slot)[start..start + len];
        if let Some(bad) = first_non_finite(v) {
            self.bad = Some(NonFinite { t, slot, index: start + bad, value: v[bad] });
        }
    }

    /// Saves the floats at `keys` of one vector of tensor `t` (`None`: the weights) before
    /// they are written: one entry and a gather for the push, so the loads of scattered
    /// keys overlap.
    pub fn save_vector_keys(
        &mut self,
        t: usize,
        ts: &TensorState,
        slot: Option<usize>,
        keys: impl Iterator<Item = u64>,
    ) {
        let from = self.keys.len();
        self.keys.extend(keys);
        let n = self.keys.len() - from;
        // the slots of a push carry the weights' keys: marked dirty once
        let marked = match self.saved.last() {
            Some(Saved::VectorKeys { t: t0, n: n0, .. }) if *t0 == t && *n0 == n => {
                self.keys[from - n..from] == self.keys[from..]
            }
            _ => false,
        };
        self.saved.push(Saved::VectorKeys { t, slot, n, marked });
        let v = vector(ts, slot);
        self.values.extend(self.keys[from..].iter().map(|k| v[*k as usize]));
    }

    /// [`Undo::check_keys`] of one vector, written by [`Undo::save_vector_keys`]'s update.
    pub fn check_vector_keys(
        &mut self,
        t: usize,
        ts: &TensorState,
        slot: Option<usize>,
        keys: impl Iterator<Item = u64> + Clone,
    ) {
        if self.bad.is_some() {
            return;
        }
        let v = vector(ts, slot);
        if keys.clone().fold(true, |ok, k| ok & v[k as usize].is_finite()) {
            return;
        }
        if let Some(k) = keys.map(|k| k as usize).find(|k| !v[*k].is_finite()) {
            self.bad = Some(NonFinite { t, slot, index: k, value: v[k] });
        }
    }

    /// Saves the floats at `keys` of tensor `t` (weights and slots) before they are written.
    pub fn save_keys(&mut self, t: usize, ts: &TensorState, keys: &[u64]) {
        self.saved.push(Saved::Keys { t, n: keys.len() });
        self.keys.extend_from_slice(keys);
        for v in vectors(ts) {
            self.values.extend(keys.iter().map(|k| v[*k as usize]));
        }
    }

    /// Checks `start..start+len` of tensor `t` right after the update wrote it: every
    /// value's last write is followed by a check of it, so an update that leaves no value
    /// non-finite passes. Remembers the first bad value.
    #[inline]
    pub fn check(&mut self, t: usize, ts: &TensorState, start: usize, len: usize) {
        if self.bad.is_some() {
            return;
        }
        self.bad = vectors(ts).enumerate().find_map(|(s, v)| {
            let v = &v[start..start + len];
            let bad = first_non_finite(v)?;
            Some(NonFinite { t, slot: s.checked_sub(1), index: start + bad, value: v[bad] })
        });
    }

    /// [`Undo::check`] of the floats at `keys`.
    pub fn check_keys(&mut self, t: usize, ts: &TensorState, keys: &[u64]) {
        if self.bad.is_some() {
            return;
        }
        self.bad = vectors(ts).enumerate().find_map(|(s, v)| {
            if keys.iter().fold(true, |ok, k| ok & v[*k as usize].is_finite()) {
                return None;
            }
            let k = *keys.iter().find(|k| !v[**k as usize].is_finite())? as usize;
            Some(NonFinite { t, slot: s.checked_sub(1), index: k, value: v[k] })
        });
    }

    /// The first non-finite value the update left, if any.
    pub fn bad(&self) -> Option<NonFinite> {
        self.bad
    }

    /// Calls `f(t, start, end)` for every range the update wrote.
    pub fn for_each_written(&self, mut f: impl FnMut(usize, usize, usize)) {
        let mut at = 0; // the next entry's first key
        for s in &self.saved {
            match *s {
                Saved::Range { t, start, len } | Saved::Vector { t, start, len, .. } => f(t, start, start + len),
                Saved::VectorKeys { n, marked: true, .. } => at += n,
                Saved::Keys { t, n } | Saved::VectorKeys { t, n, .. } => {
                    self.keys[at..at + n].iter().for_each(|k| f(t, *k as usize, *k as usize + 1));
                    at += n;
                }
            }
        }
    }

    /// Puts back every saved value, last saved first, and empties the log.
    pub fn restore(&mut self, tensors: &mut [TensorState]) {
        let (mut end, mut kend) = (self.values.len(), self.keys.len());
        for s in self.saved.iter().rev() {
            match *s {
                Saved::Vector { t, slot, start, len } => {
                    let v = vector_mut(&mut tensors[t], slot);
                    v[start..start + len].copy_from_slice(&self.values[end - len..end]);
                    end -= len;
                }
                Saved::Range { t, start, len } => {
                    let ts = &mut tensors[t];
                    let size = len * (1 + ts.slots.len());
                    let old = &self.values[end - size..end];
                    for (v, old) in vectors_mut(ts).zip(old.chunks_exact(len)) {
                        v[start..start + len].copy_from_slice(old);
                    }
                    end -= size;
                }
                Saved::VectorKeys { t, slot, n, .. } => {
                    let v = vector_mut(&mut tensors[t], slot);
                    let (old, keys) = (&self.values[end - n..end], &self.keys[kend - n..kend]);
                    // Last key first: a repeated key ends with its first saved value.
                    for (k, x) in keys.iter().zip(old).rev() {
                        v[*k as usize] = *x;
                    }
                    end -= n;
                    kend -= n;
                }
                Saved::Keys { t, n } => {
                    let ts = &mut tensors[t];
                    let size = n * (1 + ts.slots.len());
                    let (old, keys) = (&self.values[end - size..end], &self.keys[kend - n..kend]);
                    for (v, old) in vectors_mut(ts).zip(old.chunks_exact(n)) {
                        // Last key first: a repeated key ends with its first saved value.
                        for (k, x) in keys.iter().zip(old).rev() {
                            v[*k as usize] = *x;
                        }
                    }
                    end -= size;
                    kend -= n;
                }
            }
        }
        self.clear();
    }

    pub fn clear(&mut self) {
        self.bad = None;
        self.saved.clear();
        self.keys.clear();
        self.values.clear();
        if self.values.capacity() > KEEP_FLOATS {
            self.values.shrink_to(KEEP_FLOATS);
            self.keys.shrink_to(KEEP_FLOATS / 4);
            self.saved.shrink_to(KEEP_FLOATS / 16);
        }
    }
}
