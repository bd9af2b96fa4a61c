//! The live parameters of one model: weights and optimizer slots per tensor, the update
//! logic, and dirty-chunk tracking so a commit writes only the chunks that changed.
//!
//! A chunk is [`CHUNK_FLOATS`] consecutive floats of one tensor; its stored form is the
//! weights of that range followed by each slot's values of the same range, little-endian.
use crate::layout::{local_layout, slots, TensorSpec};
use crate::optim::{Grad, Keys, LeKeys, Optimizer};
use crate::rng::SplitMix64;
use crate::spec::ModelSpec;
use crate::undo::Undo;

mod blob;
mod dirty;
mod merge;
pub use blob::{apply_to_whole, delta_len, merge as merge_deltas, Delta};
pub use dirty::Change;
use dirty::Dirty;
pub use merge::Share;

/// The seed of kinds that need random initial weights when none is given.
pub const DEFAULT_SEED: u64 = 0x5eed;

/// Floats per storage chunk (64 KiB of weights).
pub const CHUNK_FLOATS: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error("tensor {0:?} does not exist in this model")]
    NoTensor(String),
    #[error("tensor {tensor:?}: {message}")]
    Shape { tensor: String, message: String },
    #[error("tensor {tensor:?}: value {index} of the gradient is {value} (NaN or infinite)")]
    NotFinite { tensor: String, index: usize, value: f32 },
    #[error(
        "tensor {tensor:?}: this update would make {what} at index {index} {value}; \
         updates that leave a weight or an optimizer slot NaN or infinite are refused, and nothing changed"
    )]
    Diverges { tensor: String, what: String, index: usize, value: f32 },
}

#[derive(Debug, Clone)]
pub struct TensorState {
    pub spec: TensorSpec,
    pub w: Vec<f32>,
    /// One vector per slot of the model, each as long as `w`.
    pub slots: Vec<Vec<f32>>,
    dirty: Dirty,
}

impl TensorState {
    fn new(spec: TensorSpec, n_slots: usize) -> Self {
        let n = spec.len() as usize;
        let dirty = Dirty::new(n, spec.sparse);
        // Each vector zeroed by the allocator (`vec![vec![0.0; n]; k]` would copy one into
        // the others, making every page of them resident: a model's untouched rows and
        // the slots of tensors no optimizer steps, such as `norm`, would cost memory).
        let slots = (0..n_slots).map(|_| vec![0.0; n]).collect();
        TensorState { spec, w: vec![0.0; n], slots, dirty }
    }

    pub fn chunks(&self) -> usize {
        self.dirty.chunks()
    }

    fn chunk_range(&self, c: usize) -> std::ops::Range<usize> {
        c * CHUNK_FLOATS..((c + 1) * CHUNK_FLOATS).min(self.w.len())
    }
}

/// Number of chunks of a tensor of `n` floats.
pub fn chunks_of(n: usize) -> usize {
    n.div_ceil(CHUNK_FLOATS)
}

/// Where a model's initial weights come from: one seeded stream of normals over its
/// random tensors in layout order, so any chunk is drawn alone ([`Params::init_chunk`]).
#[derive(Debug, Clone, PartialEq)]
pub struct InitPlan {
    seed: u64,
    scale: f64,
    /// Per tensor: where its floats start in the stream (`None`: zeros).
    start: Vec<Option<u64>>,
}

impl InitPlan {
    pub fn of(spec: &ModelSpec, p: &Params) -> InitPlan {
        // Factors and hidden layers cannot learn from zeros: they default to a fixed seed.
        let needs_random = matches!(spec.kind, crate::ModelKind::Fm | crate::ModelKind::Mlp);
        let seed = if spec.init.seed == 0 && needs_random { DEFAULT_SEED } else { spec.init.seed };
        let scale = if spec.init.scale > 0.0 { spec.init.scale } else { 0.01 } as f64;
        let mut next = 0u64;
        let start = p
            .tensors
            .iter()
            .map(|t| {
                let random = seed != 0 && !t.spec.bias && !t.spec.stats && (spec.init.seed != 0 || t.spec.name != "h");
                random.then(|| {
                    next += t.w.len() as u64;
                    next - t.w.len() as u64
                })
            })
            .collect();
        // each partition draws its own numbers (partition 0: the unpartitioned model's)
        InitPlan { seed: seed ^ (spec.partition as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15), scale, start }
    }

    /// Writes tensor `t`'s initial weights from float `from` on into `out` (left as it is
    /// for a tensor that starts at zero).
    fn draw(&self, t: usize, from: usize, out: &mut [f32]) {
        let Some(start) = self.start.get(t).copied().flatten() else { return };
        // a normal takes two numbers of the stream
        let mut rng = SplitMix64::at(self.seed, 2 * (start + from as u64));
        out.iter_mut().for_each(|w| *w = (rng.next_normal() * self.scale) as f32);
    }
}

#[derive(Debug, Clone)]
pub struct Params {
    pub tensors: Vec<TensorState>,
    pub slot_names: Vec<&'static str>,
    opt: Optimizer,
    ema_decay: f32,
    /// Applied updates since the model was created (Adam's step count).
    pub steps: u64,
    /// What the update in progress overwrote (see [`Params::finish_update`]).
    undo: Undo,
    /// Where the initial weights come from (version 1 of a model is stored as this).
    plan: InitPlan,
    /// Per tensor and weight: the update that last merged a change into it and the
    /// change's direction (pushes of changes, `merge.rs`'s `marks_of`; empty until the
    /// first). Not stored: a restart or a rollback starts afresh.
    changed_at: Vec<Vec<u64>>,
}

impl Params {
    /// Zero weights and slots in the layout of `spec`.
    pub fn zeros(spec: &ModelSpec) -> Self {
        let slot_names = slots(spec);
        let tensors = local_layout(spec).into_iter().map(|t| TensorState::new(t, slot_names.len())).collect();
        let mut p = Params {
            tensors,
            slot_names,
            opt: Optimizer::new(spec.optimizer),
            ema_decay: spec.ema_decay,
            steps: 0,
            undo: Undo::default(),
            plan: InitPlan { seed: 0, scale: 0.0, start: Vec::new() },
            changed_at: Vec::new(),
        };
        p.plan = InitPlan::of(spec, &p);
        p
    }

    /// Initial parameters: zeros, or N(0, scale²) from the seed for every non-bias tensor.
    /// The EMA starts equal to the weights. Nothing is dirty: a model's version 1 is its
    /// init spec ([`Params::init_chunk`] reads any chunk of it back).
    pub fn init(spec: &ModelSpec) -> Self {
        let mut p = Params::zeros(spec);
        if p.plan.start.iter().any(Option::is_some) {
            for t in 0..p.tensors.len() {
                for c in 0..p.tensors[t].chunks() {
                    p.fill_init(t, c);
                }
            }
            p.reset_ema();
        }
        p
    }

    /// Writes chunk `c` of tensor `t`'s initial weights, as [`Params::init`] draws them,
    /// without drawing the chunks before it.
    fn fill_init(&mut self, t: usize, c: usize) {
        let range = self.tensors[t].chunk_range(c);
        let plan = &self.plan;
        plan.draw(t, range.start, &mut self.tensors[t].w[range]);
    }

    /// Appends the stored form of chunk `c` of tensor `t`'s initial content (what
    /// [`Params::init_chunk`] sets), whatever the live values are.
    pub fn encode_init_chunk(&self, t: usize, c: usize, out: &mut Vec<u8>) {
        let ts = &self.tensors[t];
        let range = ts.chunk_range(c);
        let mut w = vec![0f32; range.len()];
        self.plan.draw(t, range.start, &mut w);
        let ema = self.ema_slot();
        out.reserve(range.len() * 4 * (1 + ts.slots.len()));
        for v in 0..=ts.slots.len() {
            // vector 0 is the weights; the EMA slot starts equal to them, others at zero
            let same = v == 0 || ema == Some(v - 1);
            for x in &w {
                out.extend_from_slice(&if same { *x } else { 0.0 }.to_le_bytes());
            }
        }
    }

    /// Sets chunk `c` of tensor `t` to its initial content: the initial weights, zero
    /// slots, the EMA equal to the weights (what version 1 holds).
    pub fn init_chunk(&mut self, t: usize, c: usize) {
        let range = self.tensors[t].chunk_range(c);
        let ts = &mut self.tensors[t];
        ts.w[range.clone()].fill(0.0);
        ts.slots.iter_mut().for_each(|s| s[range.clone()].fill(0.0));
        self.fill_init(t, c);
        if let Some(e) = self.ema_slot() {
            let ts = &mut self.tensors[t];
            let (w, ema) = (&ts.w[range.clone()], &mut ts.slots[e]);
            ema[range].copy_from_slice(w);
        }
    }

    /// Every float's bits, tensor by tensor, weights then slots: what two parameter sets
    /// compare by when they must be bitwise the same.
    pub fn content_bits(&self) -> Vec<u32> {
        self.tensors.iter().flat_map(|t| t.w.iter().chain(t.slots.iter().flatten())).map(|x| x.to_bits()).collect()
    }

    fn ema_slot(&self) -> Option<usize> {
        self.slot_names.iter().position(|s| *s == "ema")
    }

    /// Sets the EMA slot (if any) to the current weights.
    pub fn reset_ema(&mut self) {
        if let Some(e) = self.ema_slot() {
            for t in &mut self.tensors {
                let w = t.w.clone();
                t.slots[e] = w;
            }
        }
    }

    /// The first NaN or infinite weight: (tensor, index, value).
    pub fn first_non_finite(&self) -> Option<(&'static str, usize, f32)> {
        self.tensors.iter().find_map(|t| t.w.iter().position(|w| !w.is_finite()).map(|i| (t.spec.name, i, t.w[i])))
    }

    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.spec.name == name)
    }

    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(|t| t.w.len() as u64).sum()
    }

    /// Counts one applied update (call once per push, before its `apply_*` calls, and
    /// end it with [`Params::finish_update`]).
    pub fn begin_update(&mut self) -> u64 {
        self.undo.clear();
        self.steps += 1;
        self.steps
    }

    /// Ends the update begun by [`Params::begin_update`]. When every weight and slot it
    /// wrote is finite, its chunks are marked dirty and it stands. Otherwise it is undone
    /// — every value it wrote gets its old value back, the step count too — and the first
    /// non-finite value is named.
    pub fn finish_update(&mut self) -> Result<(), UpdateError> {
        if self.opt.spec.kind == crate::OptimizerKind::Rls && self.undo.bad().is_none() {
            self.refit();
        }
        match self.undo.bad() {
            None => {
                let tensors = &mut self.tensors;
                self.undo.for_each_written(|t, start, end| tensors[t].dirty.mark(start, end));
                self.undo.clear();
                Ok(())
            }
            Some(bad) => {
                self.undo.restore(&mut self.tensors);
                self.steps -= 1;
                let ts = &self.tensors[bad.t];
                let slot = bad.slot.map(|s| self.slot_names[s]);
                let what = match (slot, ts.spec.cols) {
                    (None, 1) => "the weight".to_string(),
                    (None, cols) => {
                        format!("the weight (row {}, column {})", bad.index / cols as usize, bad.index % cols as usize)
                    }
                    (Some(s), _) => format!("its optimizer slot {s:?}"),
                };
                Err(UpdateError::Diverges {
                    tensor: ts.spec.name.to_string(),
                    what,
                    index: bad.index,
                    value: bad.value,
                })
            }
        }
    }

    /// An `rls` model's weights become the least-squares fit of its statistics
    /// ([`crate::lsq::fit`]), written under the update's undo log. A partition without
    /// them, or statistics that make no positive definite system, leave the weights.
    fn refit(&mut self) {
        let find = |name: &str| self.tensors.iter().position(|t| t.spec.name == name);
        let (Some(w), Some(b), Some(norm), Some(cov)) = (find("w"), find("b"), find("norm"), find("cov")) else {
            return;
        };
        let f = self.tensors[w].w.len();
        let Some(fit) = crate::lsq::fit(&self.tensors[cov].w, &self.tensors[norm].w, f) else { return };
        let (decay, ema) = (self.ema_decay, self.ema_slot());
        for (t, values) in [(w, &fit[..f]), (b, &fit[f..])] {
            let ts = &mut self.tensors[t];
            if ts.w.len() != values.len() {
                continue;
            }
            self.undo.save_vector(t, ts, None, 0, values.len());
            ts.w.copy_from_slice(values);
            if let Some(e) = ema {
                ema_range(ts, e, 0, values.len(), decay);
            }
            self.undo.check_vector(t, ts, None, 0, values.len());
        }
    }

    /// Merges a batch's statistics into a stats tensor: `g` holds the batch's, in the
    /// tensor's shape ([`TensorSpec::merge_stats`]), combined with Chan et al.'s parallel
    /// formulas in f64.
    pub fn merge_stats(&mut self, t: usize, g: &[f32]) {
        let ts = &mut self.tensors[t];
        let len = ts.w.len();
        self.undo.save(t, ts, 0, len);
        ts.spec.merge_stats(&mut ts.w, g);
        self.undo.check(t, ts, 0, len);
    }

    /// Applies a checked dense update.
    pub fn apply_dense(&mut self, t: usize, offset: usize, g: &[f32]) {
        let step = self.steps.max(1);
        let (opt, decay, ema) = (self.opt, self.ema_decay, self.ema_slot());
        let ts = &mut self.tensors[t];
        self.undo.save(t, ts, offset, g.len());
        apply_range(&opt, ts, offset, g, step);
        if let Some(e) = ema {
            ema_range(ts, e, offset, offset + g.len(), decay);
        }
        self.undo.check(t, ts, offset, g.len());
    }

    /// Applies a checked sparse update: row `keys[i]` gets `g[i*cols..(i+1)*cols]`.
    pub fn apply_rows(&mut self, t: usize, keys: &[u64], g: &[f32]) {
        let step = self.steps.max(1);
        let (opt, decay, ema) = (self.opt, self.ema_decay, self.ema_slot());
        let ts = &mut self.tensors[t];
        let cols = ts.spec.cols as usize;
        if cols == 1 && ema.is_none() {
            // One float per key (linear and logistic tables): one optimizer match per call.
            self.undo.save_keys(t, ts, keys);
            let (s0, rest) = ts.slots.split_first_mut().map_or((&mut [][..], &mut [][..]), |(a, r)| (&mut a[..], r));
            let s1 = rest.first_mut().map_or(&mut [][..], |b| &mut b[..]);
            opt.apply_keys(&mut ts.w, s0, s1, keys, g, step);
            self.undo.check_keys(t, ts, keys);
            return;
        }
        for (i, k) in keys.iter().enumerate() {
            let start = *k as usize * cols;
            self.undo.save(t, ts, start, cols);
            apply_range(&opt, ts, start, &g[i * cols..(i + 1) * cols], step);
            if let Some(e) = ema {
                ema_range(ts, e, start, start + cols, decay);
            }
            self.undo.check(t, ts, start, cols);
        }
    }

    /// [`Params::apply_dense`] from little-endian f32 bytes, decoded a block at a time
    /// (no buffer the size of the gradient, vectorised loops).
    pub fn apply_dense_le(&mut self, t: usize, offset: usize, bytes: &[u8]) {
        let mut buf = [0f32; BLOCK];
        if self.tensors[t].spec.stats {
            let g: Vec<f32> = crate::optim::LeBytes(bytes).iter().collect();
            return self.merge_stats(t, &g);
        }
        for (i, block) in bytes.chunks(BLOCK * 4).enumerate() {
            let n = decode_block(block, &mut buf);
            self.apply_dense(t, offset + i * BLOCK, &buf[..n]);
        }
    }

    /// [`Params::apply_rows`] from little-endian u64 keys and f32 bytes, a block of rows
    /// at a time (keys and values decoded into stack buffers, nothing allocated).
    pub fn apply_rows_le(&mut self, t: usize, keys: LeKeys<'_>, bytes: &[u8]) {
        let cols = self.tensors[t].spec.cols as usize;
        if cols > BLOCK {
            // Wide rows: each row in blocks, as a dense update of its range.
            for (k, row) in keys.iter().zip(bytes.chunks(cols * 4)) {
                self.apply_dense_le(t, k as usize * cols, row);
            }
            return;
        }
        let per = BLOCK / cols;
        let mut buf = [0f32; BLOCK];
        let mut kbuf = [0u64; BLOCK];
        for (kblock, block) in keys.0.chunks(per * 8).zip(bytes.chunks(per * cols * 4)) {
            let m = LeKeys(kblock).len();
            LeKeys(kblock).iter().zip(kbuf.iter_mut()).for_each(|(k, dst)| *dst = k);
            let n = decode_block(block, &mut buf);
            self.apply_rows(t, &kbuf[..m], &buf[..n]);
        }
    }

    /// Indices of the chunks of tensor `t` changed since the last [`Params::clear_dirty`].
    pub fn dirty_chunks(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        let d = &self.tensors[t].dirty;
        (0..d.chunks()).filter(|c| d.is_dirty(*c))
    }

    /// How chunk `c` of tensor `t` changed since the last [`Params::clear_dirty`].
    pub fn change(&self, t: usize, c: usize) -> Option<Change<'_>> {
        self.tensors[t].dirty.change(c)
    }

    pub fn clear_dirty(&mut self) {
        self.tensors.iter_mut().for_each(|t| t.dirty.clear());
    }

    /// How the next commit writes chunk `c` of tensor `t`, if it changed: as a delta
    /// layer of the changed floats (`Some(true)`) when that is at most half the chunk,
    /// else whole (`Some(false)`).
    pub fn commit_form(&self, t: usize, c: usize) -> Option<bool> {
        match self.change(t, c)? {
            Change::Rows(bits) => Some(2 * self.delta_bytes(t, bits) <= self.chunk_bytes(t, c)),
            Change::Whole => Some(false),
        }
    }

    /// Chunk `c` of tensor `t` is to be written whole by the next commit.
    pub fn mark_dirty(&mut self, t: usize, c: usize) {
        self.tensors[t].dirty.mark_whole(c);
    }

    /// Bytes of the stored form of chunk `c` of tensor `t`.
    pub fn chunk_bytes(&self, t: usize, c: usize) -> usize {
        let ts = &self.tensors[t];
        ts.chunk_range(c).len() * 4 * (1 + ts.slots.len())
    }

    /// The weights (or, with `ema`, their moving average when the model keeps one).
    pub fn weights(&self, t: usize, ema: bool) -> &[f32] {
        match (ema, self.ema_slot()) {
            (true, Some(e)) => &self.tensors[t].slots[e],
            _ => &self.tensors[t].w,
        }
    }
}

/// Index of the tensor named `name` in a layout.
pub fn tensor_index(layout: &[TensorSpec], name: &str) -> Option<usize> {
    layout.iter().position(|t| t.name == name)
}

/// Checks a dense update against a layout of `n` floats at `offset` of `tensor`; returns the tensor index.
pub fn check_dense<G: Grad + ?Sized>(
    layout: &[TensorSpec],
    tensor: &str,
    offset: u64,
    g: &G,
) -> Result<usize, UpdateError> {
    let t = tensor_index(layout, tensor).ok_or_else(|| UpdateError::NoTensor(tensor.to_string()))?;
    let len = layout[t].len();
    let end = offset.checked_add(g.len() as u64);
    if end.is_none_or(|e| e > len) {
        let message = format!("range {offset}..{offset}+{} is outside its {len} floats", g.len());
        return Err(UpdateError::Shape { tensor: tensor.to_string(), message });
    }
    check_finite(tensor, g)?;
    if layout[t].stats {
        let f = layout[t].cols as usize;
        if offset != 0 || g.len() as u64 != len {
            let message = format!("statistics are pushed whole: all {len} floats of its {f} columns");
            return Err(UpdateError::Shape { tensor: tensor.to_string(), message });
        }
        if let Some(k) = (0..len as usize).find(|&k| layout[t].non_negative_stat(k) && g.at(k) < 0.0) {
            let message = format!("value {k}: a count or a sum of squares must not be negative");
            return Err(UpdateError::Shape { tensor: tensor.to_string(), message });
        }
    }
    Ok(t)
}

/// Checks a sparse update of `keys` rows; `g` holds `cols` floats per key.
pub fn check_rows<K: Keys + ?Sized, G: Grad + ?Sized>(
    layout: &[TensorSpec],
    tensor: &str,
    keys: &K,
    g: &G,
) -> Result<usize, UpdateError> {
    let t = tensor_index(layout, tensor).ok_or_else(|| UpdateError::NoTensor(tensor.to_string()))?;
    let spec = &layout[t];
    let shape = |message: String| UpdateError::Shape { tensor: tensor.to_string(), message };
    if spec.stats {
        return Err(shape("statistics are pushed whole (no keys)".into()));
    }
    if keys.len() * spec.cols as usize != g.len() {
        return Err(shape(format!(
            "{} keys of {} floats need {} values, got {}",
            keys.len(),
            spec.cols,
            keys.len() * spec.cols as usize,
            g.len()
        )));
    }
    if let Some(k) = (0..keys.len()).map(|i| keys.at(i)).find(|k| *k >= spec.rows) {
        return Err(shape(format!("key {k} is out of range (rows 0..{})", spec.rows)));
    }
    check_finite(tensor, g)?;
    Ok(t)
}

fn check_finite<G: Grad + ?Sized>(tensor: &str, g: &G) -> Result<(), UpdateError> {
    match g.first_non_finite() {
        Some((index, value)) => Err(UpdateError::NotFinite { tensor: tensor.to_string(), index, value }),
        None => Ok(()),
    }
}

/// Floats decoded at a time from wire bytes: an L1-sized block on the stack.
const BLOCK: usize = 1024;

fn decode_block(bytes: &[u8], buf: &mut [f32; BLOCK]) -> usize {
    let n = bytes.len() / 4;
    for (d, b) in buf[..n].iter_mut().zip(bytes.chunks_exact(4)) {
        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    n
}

fn apply_range(opt: &Optimizer, ts: &mut TensorState, start: usize, g: &[f32], step: u64) {
    let end = start + g.len();
    let w = &mut ts.w[start..end];
    let (s0, rest) = ts.slots.split_first_mut().map_or((&mut [][..], &mut [][..]), |(a, r)| (&mut a[start..end], r));
    let s1 = rest.first_mut().map_or(&mut [][..], |b| &mut b[start..end]);
    opt.apply(w, s0, s1, g, step);
}

fn ema_range(ts: &mut TensorState, e: usize, start: usize, end: usize, decay: f32) {
    let (w, ema) = (&ts.w[start..end], &mut ts.slots[e][start..end]);
    for (m, x) in ema.iter_mut().zip(w) {
        *m = decay * *m + (1.0 - decay) * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::layout;
    use crate::params::merge::Share;
    use crate::spec::{ModelKind, OptimizerKind, OptimizerSpec};

    /// The initial weights as they were drawn before chunks could be drawn alone: one
    /// sequential stream over the random tensors.
    fn sequential_init(spec: &ModelSpec) -> Vec<Vec<f32>> {
        let mut p = Params::zeros(spec);
        let needs_random = matches!(spec.kind, ModelKind::Fm | ModelKind::Mlp);
        let seed = if spec.init.seed == 0 && needs_random { DEFAULT_SEED } else { spec.init.seed };
        if seed != 0 {
            let scale = if spec.init.scale > 0.0 { spec.init.scale } else { 0.01 } as f64;
            let mut rng = SplitMix64::new(seed ^ (spec.partition as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for t in p
                .tensors
                .iter_mut()
                .filter(|t| !t.spec.bias && !t.spec.stats && (spec.init.seed != 0 || t.spec.name != "h"))
            {
                t.w.iter_mut().for_each(|w| *w = (rng.next_normal() * scale) as f32);
            }
        }
        p.tensors.into_iter().map(|t| t.w).collect()
    }

    #[test]
    fn chunks_drawn_alone_are_the_sequential_streams_numbers_bit_for_bit() {
        let mut cases = Vec::new();
        for kind in [ModelKind::Linear, ModelKind::Logistic, ModelKind::Softmax, ModelKind::Fm, ModelKind::Mlp] {
            for seed in [0, 7] {
                let mut s = ModelSpec { hash_bits: 15, ..ModelSpec::new("m", kind) };
                s.init.seed = seed;
                cases.push(s);
            }
        }
        // a partition's own stream, and a scale
        let mut part = ModelSpec { hash_bits: 15, partitions: 3, ..ModelSpec::new("m", ModelKind::Fm) };
        part = part.partition_spec(2);
        part.init.scale = 0.3;
        cases.push(part);
        let mut drawn = 0;
        for s in &cases {
            let want = sequential_init(s);
            let got: Vec<Vec<f32>> = Params::init(s).tensors.into_iter().map(|t| t.w).collect();
            let bits = |v: &[Vec<f32>]| {
                v.iter().map(|t| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>()
            };
            assert_eq!(bits(&got), bits(&want), "{:?} seed {}", s.kind, s.init.seed);
            drawn += want.iter().flatten().filter(|x| **x != 0.0).count();
        }
        assert!(drawn > 4 * CHUNK_FLOATS, "the cases draw random tensors over several chunks ({drawn} values)");
    }

    fn spec() -> ModelSpec {
        let mut s = ModelSpec::new("m", ModelKind::Logistic);
        s.features = 3;
        s.hash_bits = 16;
        s.optimizer = OptimizerSpec::new(OptimizerKind::Adam, 0.1);
        s.init.seed = 7;
        s
    }

    #[test]
    fn seeded_init_is_reproducible_and_biases_start_at_zero() {
        let (a, b) = (Params::init(&spec()), Params::init(&spec()));
        assert_eq!(a.tensors[0].w, b.tensors[0].w);
        assert!(a.tensors[0].w.iter().any(|w| *w != 0.0));
        let bias = a.tensor_index("b").unwrap();
        assert!(a.tensors[bias].w.iter().all(|w| *w == 0.0));
        let mut s = spec();
        s.init.seed = 8;
        assert_ne!(Params::init(&s).tensors[0].w, a.tensors[0].w);
    }

    #[test]
    fn chunk_roundtrip_is_bitwise_and_dirty_tracks_rows() {
        let mut p = Params::init(&spec());
        p.clear_dirty();
        let h = p.tensor_index("h").unwrap();
        p.begin_update();
        let keys = [5u64, 40_000];
        check_rows(&layout(&spec()), "h", &keys[..], &[0.5f32, -0.25][..]).unwrap();
        p.apply_rows(h, &keys, &[0.5f32, -0.25][..]);
        assert_eq!(p.dirty_chunks(h).count(), 0, "chunks are marked when the update stands");
        p.finish_update().unwrap();
        assert_eq!(p.dirty_chunks(h).collect::<Vec<_>>(), vec![0, 2]);
        let mut blob = Vec::new();
        p.encode_chunk(h, 2, &mut blob);
        let mut q = Params::zeros(&spec());
        q.decode_chunk(h, 2, &blob).unwrap();
        assert_eq!(q.tensors[h].w[40_000].to_bits(), p.tensors[h].w[40_000].to_bits());
        assert_eq!(q.tensors[h].slots[1][40_000].to_bits(), p.tensors[h].slots[1][40_000].to_bits());
        assert!(q.decode_chunk(h, 2, &blob[1..]).is_err());
    }

    #[test]
    fn byte_paths_match_f32_paths_bitwise() {
        let (mut a, mut b) = (Params::init(&spec()), Params::init(&spec()));
        let h = a.tensor_index("h").unwrap();
        let w = a.tensor_index("w").unwrap();
        let keys: Vec<u64> = (0..3000).map(|i| (i * 7919) % (1 << 16)).collect();
        let g: Vec<f32> = (0..3000).map(|i| (i as f32 * 0.37).sin()).collect();
        let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
        for p in [&mut a, &mut b] {
            p.begin_update();
        }
        a.apply_rows(h, &keys, &g[..]);
        let key_bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        b.apply_rows_le(h, LeKeys(&key_bytes), &bytes);
        a.apply_dense(w, 1, &g[..2]);
        b.apply_dense_le(w, 1, &bytes[..8]);
        for t in [h, w] {
            let bits = |p: &Params| {
                p.tensors[t].w.iter().chain(&p.tensors[t].slots[1]).map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(bits(&a), bits(&b));
        }
        let mut bad = bytes.clone();
        bad[4 * 2999..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(crate::optim::LeBytes(&bad).first_non_finite().map(|x| x.0), Some(2999));
        assert_eq!(crate::optim::LeBytes(&bytes).first_non_finite(), None);
    }

    #[test]
    fn an_update_that_would_leave_a_value_non_finite_is_undone_exactly() {
        let big = 3e38f32;
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Momentum,
            OptimizerKind::Adagrad,
            OptimizerKind::Adam,
            OptimizerKind::Ftrl,
        ] {
            let mut s = spec();
            s.optimizer = OptimizerSpec::new(kind, 1.0);
            s.ema_decay = 0.5;
            let mut p = Params::init(&s);
            let (h, w) = (p.tensor_index("h").unwrap(), p.tensor_index("w").unwrap());
            // One update that stands (a repeated key, a dense range), then nothing dirty.
            p.begin_update();
            p.apply_rows(h, &[3, 9, 3], &[0.5, -1.0, 0.25]);
            p.apply_dense(w, 0, &[0.1, 0.2, 0.3]);
            p.finish_update().unwrap();
            p.clear_dirty();
            let before = p.clone();
            // Finite gradients whose result is not: key 3 twice, after a finite dense range.
            p.begin_update();
            p.apply_dense(w, 1, &[1.0, -2.0]);
            p.apply_rows(h, &[3, 11, 3], &[big, 1.0, big]);
            let e = p.finish_update().unwrap_err();
            assert!(matches!(&e, UpdateError::Diverges { tensor, index: 3, .. } if tensor == "h"), "{kind:?}: {e}");
            assert!(e.to_string().contains("nothing changed"), "{e}");
            for (a, b) in p.tensors.iter().zip(&before.tensors) {
                let bits = |t: &TensorState| {
                    t.w.iter().chain(t.slots.iter().flatten()).map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(bits(a), bits(b), "{kind:?}: tensor {}", a.spec.name);
            }
            assert_eq!(p.steps, before.steps, "{kind:?}");
            assert_eq!(p.dirty_chunks(h).count() + p.dirty_chunks(w).count(), 0, "{kind:?}");
        }
    }

    /// A concurrent push's change of a weight takes its share where another push changed
    /// the weight the same way since its pull, and is added whole where that change went
    /// the other way, or nobody changed the weight (`Share::of`).
    #[test]
    fn a_concurrent_change_is_shared_only_where_it_goes_the_way_of_the_last() {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let keys: Vec<u8> = [1u64, 2, 3].iter().flat_map(|k| k.to_le_bytes()).collect();
        let keys = crate::optim::LeKeys(&keys);
        let mut s = spec();
        s.optimizer = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        s.init.seed = 0;
        let mut p = Params::init(&s);
        let h = p.tensor_index("h").unwrap();
        // update 1, another worker's push from update 0's pull: keys 1 and 2 go up, 3 untouched
        p.begin_update();
        let first = Some(Share { base: 0, at: 1, share: 1.0 });
        p.merge_rows_le(h, None, keys, &le(&[1.0, 1.0, 0.0]), first);
        p.finish_update().unwrap();
        // update 2, a push from the same pull (update 0), concurrent with it: key 1 up
        // again (shared), key 2 down (whole), key 3 only now (whole)
        p.begin_update();
        let second = Some(Share { base: 0, at: 2, share: 0.5 });
        p.merge_rows_le(h, None, keys, &le(&[2.0, -2.0, -2.0]), second);
        p.finish_update().unwrap();
        assert_eq!(&p.tensors[h].w[1..4], &[2.0, -1.0, -2.0]);
        // update 3, pulled after update 2: nothing concurrent, every change whole
        p.begin_update();
        let third = Some(Share { base: 2, at: 3, share: 0.5 });
        p.merge_rows_le(h, None, keys, &le(&[1.0, -1.0, -1.0]), third);
        p.finish_update().unwrap();
        assert_eq!(&p.tensors[h].w[1..4], &[3.0, -2.0, -3.0]);
    }

    /// A push of changes marks its rows dirty once, though each slot writes them again
    /// (the undo log skips an entry of the same keys as the one before); a slot's change
    /// on other keys, or a later push's, marks its own rows.
    #[test]
    fn a_push_of_changes_marks_exactly_the_rows_it_wrote() {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let key_bytes = |k: &[u64]| k.iter().flat_map(|k| k.to_le_bytes()).collect::<Vec<u8>>();
        let rows_of = |p: &Params, h: usize| -> Vec<usize> {
            let Some(Change::Rows(bits)) = p.change(h, 0) else { panic!("chunk 0 not changed by rows") };
            (0..bits.len() * 64).filter(|i| bits[i / 64] >> (i % 64) & 1 == 1).collect()
        };
        let mut s = spec();
        s.optimizer = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        let mut p = Params::init(&s);
        p.clear_dirty();
        let h = p.tensor_index("h").unwrap();
        // `other`: as many keys as the push's, not the same ones
        let (ab, other) = (key_bytes(&[3, 9]), key_bytes(&[4, 11]));
        p.begin_update();
        p.merge_rows_le(h, None, LeKeys(&ab), &le(&[0.5, -0.5]), None);
        for slot in 0..p.tensors[h].slots.len() {
            p.merge_rows_le(h, Some(slot), LeKeys(&ab), &le(&[1.0, 1.0]), None);
        }
        p.merge_rows_le(h, Some(0), LeKeys(&other), &le(&[1.0, 1.0]), None);
        p.finish_update().unwrap();
        assert_eq!(rows_of(&p, h), vec![3, 4, 9, 11]);
        p.begin_update();
        p.merge_rows_le(h, Some(0), LeKeys(&key_bytes(&[7])), &le(&[1.0]), None);
        p.finish_update().unwrap();
        assert_eq!(rows_of(&p, h), vec![3, 4, 7, 9, 11]);
    }

    /// A push of changes to a one-column table merges a vector at a time over its keys
    /// (`merge_keys_le`): the same values as the merge of each key alone (with an EMA,
    /// which takes that path), dirty where written, and undone exactly, a repeated key
    /// included, when a value would not be finite.
    #[test]
    fn a_keyed_merge_equals_the_merge_of_each_key_and_is_undone_exactly() {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let keys: Vec<u8> = [3u64, 9, 3, 40_000].iter().flat_map(|k| k.to_le_bytes()).collect();
        let keys = crate::optim::LeKeys(&keys);
        let mut s = spec();
        s.optimizer = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        s.init.seed = 0;
        let (mut fast, mut each) = (
            Params::init(&s),
            Params::init(&{
                let mut e = s.clone();
                e.ema_decay = 0.5;
                e
            }),
        );
        let h = fast.tensor_index("h").unwrap();
        let share = Some(Share { base: 1, at: 3, share: 0.5 });
        for p in [&mut fast, &mut each] {
            p.begin_update();
            p.merge_rows_le(h, None, keys, &le(&[0.5, -1.0, 0.25, 2.0]), None);
            p.merge_rows_le(h, Some(1), keys, &le(&[2.0, 1.0, 3.0, 0.5]), None); // scale: max
            p.finish_update().unwrap();
            p.begin_update();
            p.merge_rows_le(h, None, keys, &le(&[1.0, 1.0, 1.0, 1.0]), share);
            p.finish_update().unwrap();
        }
        // key 3: 0.5 and 0.25 whole; then 1 whole (nothing changed it since update 1 by a
        // shared push) and, repeated, 1 shared by half (the push itself just changed it)
        assert_eq!(fast.tensors[h].w[3], 0.75 + 1.0 + 0.5);
        assert_eq!((fast.tensors[h].w[40_000], fast.tensors[h].slots[1][3]), (3.0, 3.0));
        assert_eq!(fast.tensors[h].w, each.tensors[h].w);
        assert_eq!(fast.tensors[h].slots[1], each.tensors[h].slots[1]);
        assert_eq!(fast.dirty_chunks(h).count(), each.dirty_chunks(h).count());
        fast.clear_dirty();
        let before = fast.clone();
        fast.begin_update();
        fast.merge_rows_le(h, Some(0), keys, &le(&[1.0, 1.0, 1.0, 1.0]), None);
        fast.merge_rows_le(h, None, keys, &le(&[3e38, 0.0, 3e38, 0.0]), None);
        fast.merge_rows_le(h, None, keys, &le(&[3e38, 0.0, 3e38, 0.0]), None);
        let e = fast.finish_update().unwrap_err();
        assert!(matches!(&e, UpdateError::Diverges { index: 3, .. }), "{e}");
        for (a, b) in fast.tensors.iter().zip(&before.tensors) {
            let bits =
                |t: &TensorState| t.w.iter().chain(t.slots.iter().flatten()).map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "tensor {}", a.spec.name);
        }
        assert_eq!(fast.dirty_chunks(h).count(), 0);
    }

    #[test]
    fn bad_updates_are_refused_by_name() {
        let l = layout(&spec());
        assert!(matches!(check_dense(&l, "nope", 0, &[1.0f32][..]), Err(UpdateError::NoTensor(_))));
        assert!(matches!(check_dense(&l, "w", 2, &[1.0f32, 1.0][..]), Err(UpdateError::Shape { .. })));
        assert!(matches!(
            check_rows(&layout(&spec()), "h", &[1u64 << 16][..], &[1.0f32][..]),
            Err(UpdateError::Shape { .. })
        ));
        assert!(matches!(
            check_rows(&layout(&spec()), "h", &[1u64, 2][..], &[1.0f32][..]),
            Err(UpdateError::Shape { .. })
        ));
        let e = check_dense(&l, "w", 0, &[1.0f32, f32::NAN][..]).unwrap_err();
        assert!(e.to_string().contains("value 1"), "{e}");
    }
}
