//! The stored forms of a chunk: whole (its weights, then each slot's values of the same
//! range, little-endian f32), or a delta layer holding only the floats that changed
//! (their offsets in the chunk, then each vector's values at them), which a reader applies
//! over the chunk's earlier content. Deltas merge (the newer value of a float wins), so
//! layers can be folded without reading the chunk.
//!
//! Delta layout: `b'D'`, vectors (1 + slots) u8, two zero bytes, n u32; n u16 offsets,
//! strictly ascending; then per vector n f32. All little-endian. A blob of any other length
//! is refused, so a torn or foreign blob never reads as a short delta.
use super::{Params, TensorState, UpdateError, CHUNK_FLOATS};
use crate::params::dirty::CHUNK_WORDS;

const HEADER: usize = 8;

/// Bytes of a delta of `n` floats of a chunk whose stored form has `vecs` vectors.
pub fn delta_len(n: usize, vecs: usize) -> usize {
    HEADER + n * (2 + 4 * vecs)
}

/// A checked delta blob.
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    pub vecs: usize,
    pub n: usize,
    offsets: &'a [u8],
    values: &'a [u8],
}

impl<'a> Delta<'a> {
    /// Checks a delta blob's header, length and offsets (each below `chunk_floats`).
    pub fn parse(b: &'a [u8], chunk_floats: usize) -> Result<Delta<'a>, String> {
        if b.len() < HEADER || b[0] != b'D' || b[2] != 0 || b[3] != 0 {
            return Err(format!("not a delta layer ({} bytes)", b.len()));
        }
        let (vecs, n) = (b[1] as usize, u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize);
        if vecs == 0 || n > CHUNK_FLOATS || b.len() != delta_len(n, vecs) {
            return Err(format!("delta layer of {} bytes does not hold {n} floats of {vecs} vectors", b.len()));
        }
        let d = Delta { vecs, n, offsets: &b[HEADER..HEADER + 2 * n], values: &b[HEADER + 2 * n..] };
        let mut prev = None;
        for o in d.offsets() {
            if o >= chunk_floats || prev.is_some_and(|p| p >= o) {
                return Err(format!("delta layer offset {o} is out of order or outside the chunk's {chunk_floats}"));
            }
            prev = Some(o);
        }
        Ok(d)
    }

    pub fn offsets(&self) -> impl Iterator<Item = usize> + 'a {
        self.offsets.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    /// The little-endian bytes of vector `v`'s value at the `i`-th offset.
    fn value(&self, v: usize, i: usize) -> [u8; 4] {
        let at = 4 * (v * self.n + i);
        [self.values[at], self.values[at + 1], self.values[at + 2], self.values[at + 3]]
    }
}

/// Applies a delta to a whole chunk's stored form (`vecs` vectors of equal length).
pub fn apply_to_whole(whole: &mut [u8], delta: &[u8]) -> Result<(), String> {
    let d = Delta::parse(delta, CHUNK_FLOATS)?;
    if !whole.len().is_multiple_of(4 * d.vecs) {
        return Err(format!("a delta of {} vectors over a chunk of {} bytes", d.vecs, whole.len()));
    }
    let len = whole.len() / (4 * d.vecs);
    for (i, o) in d.offsets().enumerate() {
        if o >= len {
            return Err(format!("delta layer offset {o} is outside the chunk's {len} floats"));
        }
        for v in 0..d.vecs {
            let at = 4 * (v * len + o);
            whole[at..at + 4].copy_from_slice(&d.value(v, i));
        }
    }
    Ok(())
}

/// The delta of `older` then `newer`: every float either holds, `newer`'s value where
/// both do. Appended to `out`.
pub fn merge(older: &[u8], newer: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let (a, b) = (Delta::parse(older, CHUNK_FLOATS)?, Delta::parse(newer, CHUNK_FLOATS)?);
    if a.vecs != b.vecs {
        return Err(format!("merging deltas of {} and {} vectors", a.vecs, b.vecs));
    }
    // (offset, from newer?, index): both lists are ascending
    let mut picks = Vec::with_capacity(a.n + b.n);
    let (mut ia, mut ib) = (a.offsets().enumerate().peekable(), b.offsets().enumerate().peekable());
    loop {
        let pick = match (ia.peek().copied(), ib.peek().copied()) {
            (None, None) => break,
            (Some((i, o)), None) => (o, false, i),
            (None, Some((i, o))) => (o, true, i),
            (Some((i, oa)), Some((_, ob))) if oa < ob => (oa, false, i),
            (Some((_, oa)), Some((j, ob))) => {
                if oa == ob {
                    ia.next();
                }
                (ob, true, j)
            }
        };
        if pick.1 {
            ib.next();
        } else {
            ia.next();
        }
        picks.push(pick);
    }
    let n = picks.len();
    out.reserve(delta_len(n, a.vecs));
    out.extend_from_slice(&[b'D', a.vecs as u8, 0, 0]);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (o, _, _) in &picks {
        out.extend_from_slice(&(*o as u16).to_le_bytes());
    }
    for v in 0..a.vecs {
        for (_, newer, i) in &picks {
            out.extend_from_slice(&if *newer { b.value(v, *i) } else { a.value(v, *i) });
        }
    }
    Ok(())
}

fn vectors(ts: &TensorState) -> impl Iterator<Item = &Vec<f32>> {
    std::iter::once(&ts.w).chain(ts.slots.iter())
}

impl Params {
    /// Appends the stored form of chunk `c` of tensor `t` (weights, then each slot).
    pub fn encode_chunk(&self, t: usize, c: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.chunk_bytes(t, c), 0);
        self.encode_chunk_into(t, c, &mut out[start..]);
    }

    /// Writes the stored form of chunk `c` of tensor `t` into `out`, which is
    /// [`Params::chunk_bytes`] long.
    pub fn encode_chunk_into(&self, t: usize, c: usize, out: &mut [u8]) {
        let ts = &self.tensors[t];
        let r = ts.chunk_range(c);
        for (v, out) in vectors(ts).zip(out.chunks_exact_mut(r.len() * 4)) {
            for (x, b) in v[r.clone()].iter().zip(out.chunks_exact_mut(4)) {
                b.copy_from_slice(&x.to_le_bytes());
            }
        }
    }

    /// Loads chunk `c` of tensor `t` from its stored form; refuses a blob of the wrong size.
    pub fn decode_chunk(&mut self, t: usize, c: usize, blob: &[u8]) -> Result<(), UpdateError> {
        let ts = &mut self.tensors[t];
        let r = ts.chunk_range(c);
        let want = r.len() * 4 * (1 + ts.slots.len());
        if blob.len() != want {
            let message = format!("stored chunk {c} has {} bytes, expected {want}", blob.len());
            return Err(UpdateError::Shape { tensor: ts.spec.name.to_string(), message });
        }
        let mut parts = blob.chunks_exact(r.len() * 4);
        for v in std::iter::once(&mut ts.w).chain(ts.slots.iter_mut()) {
            let part = parts.next().unwrap_or_default();
            for (x, b) in v[r.clone()].iter_mut().zip(part.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }

    /// Bytes of the delta of chunk `c` of tensor `t` holding the floats set in `bits`.
    pub fn delta_bytes(&self, t: usize, bits: &[u64]) -> usize {
        let n = bits.iter().map(|w| w.count_ones() as usize).sum();
        delta_len(n, 1 + self.tensors[t].slots.len())
    }

    /// Appends the delta of chunk `c` of tensor `t` holding the floats set in `bits` (one
    /// bit per float of the chunk, as [`super::Change::Rows`] gives them).
    pub fn encode_delta(&self, t: usize, c: usize, bits: &[u64], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.delta_bytes(t, bits), 0);
        self.encode_delta_into(t, c, bits, &mut out[start..]);
    }

    /// Writes that delta into `out`, which is [`Params::delta_bytes`] long.
    pub fn encode_delta_into(&self, t: usize, c: usize, bits: &[u64], out: &mut [u8]) {
        let ts = &self.tensors[t];
        let base = c * CHUNK_FLOATS;
        let n: usize = bits.iter().map(|w| w.count_ones() as usize).sum();
        let vecs = 1 + ts.slots.len();
        let (head, body) = out.split_at_mut(HEADER.min(out.len()));
        head[..4].copy_from_slice(&[b'D', vecs as u8, 0, 0]);
        head[4..].copy_from_slice(&(n as u32).to_le_bytes());
        if n == 0 {
            return;
        }
        let (offsets, values) = body.split_at_mut(2 * n);
        // The offsets first (a sequential pass over the bits), then each vector gathered at
        // them in a tight loop: the reads are scattered (a commit of random rows misses
        // the cache at every one) and independent, so the processor overlaps many of them.
        let mut slots = offsets.chunks_exact_mut(2);
        for (word, w) in bits.iter().take(CHUNK_WORDS).enumerate() {
            let mut w = *w;
            while w != 0 {
                let o = (64 * word) as u16 + w.trailing_zeros() as u16;
                w &= w - 1;
                if let Some(s) = slots.next() {
                    s.copy_from_slice(&o.to_le_bytes());
                }
            }
        }
        let chunk_end = (base + CHUNK_FLOATS).min(ts.w.len());
        for (v, out) in vectors(ts).zip(values.chunks_exact_mut(4 * n)) {
            let v = &v[base..chunk_end];
            for (o, out) in offsets.chunks_exact(2).zip(out.chunks_exact_mut(4)) {
                let o = u16::from_le_bytes([o[0], o[1]]) as usize;
                out.copy_from_slice(&v[o].to_le_bytes());
            }
        }
    }

    /// Applies a delta layer to chunk `c` of tensor `t`; refuses one that does not fit it
    /// (and then changes nothing).
    pub fn apply_delta(&mut self, t: usize, c: usize, blob: &[u8]) -> Result<(), UpdateError> {
        let ts = &mut self.tensors[t];
        let r = ts.chunk_range(c);
        let shape = |message: String| UpdateError::Shape { tensor: ts.spec.name.to_string(), message };
        let d = Delta::parse(blob, r.len()).map_err(|e| shape(format!("chunk {c}: {e}")))?;
        if d.vecs != 1 + ts.slots.len() {
            return Err(shape(format!(
                "chunk {c}: a delta of {} vectors, the model has {}",
                d.vecs,
                1 + ts.slots.len()
            )));
        }
        for (v, vec) in std::iter::once(&mut ts.w).chain(ts.slots.iter_mut()).enumerate() {
            for (i, o) in d.offsets().enumerate() {
                vec[r.start + o] = f32::from_le_bytes(d.value(v, i));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Change;
    use crate::spec::{ModelKind, ModelSpec, OptimizerKind, OptimizerSpec};

    fn spec() -> ModelSpec {
        let mut s = ModelSpec::new("m", ModelKind::Logistic);
        s.hash_bits = 16;
        s.optimizer = OptimizerSpec::new(OptimizerKind::Adagrad, 0.1);
        s.init.seed = 3;
        s.ema_decay = 0.9;
        s
    }

    /// Updates rows `keys` of tensor `h` and returns the chunk-1 change's bitmap.
    fn touch(p: &mut Params, keys: &[u64]) {
        let h = p.tensor_index("h").unwrap();
        p.begin_update();
        let g: Vec<f32> = keys.iter().map(|k| (*k as f32 * 0.1).sin()).collect();
        p.apply_rows(h, keys, &g);
        p.finish_update().unwrap();
    }

    #[test]
    fn init_chunks_read_back_version_one_bit_for_bit() {
        for kind in [ModelKind::Logistic, ModelKind::Fm, ModelKind::Mlp] {
            let s = ModelSpec { features: 4, hash_bits: 15, ema_decay: 0.5, ..ModelSpec::new("m", kind) };
            let init = Params::init(&s);
            let mut q = Params::zeros(&s);
            q.tensors.iter_mut().for_each(|t| t.w.fill(1.0));
            for t in 0..q.tensors.len() {
                for c in 0..q.tensors[t].chunks() {
                    q.init_chunk(t, c);
                }
            }
            assert_eq!(q.content_bits(), init.content_bits(), "{kind:?}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for t in 0..init.tensors.len() {
                for c in 0..init.tensors[t].chunks() {
                    init.encode_chunk(t, c, &mut a);
                    q.encode_init_chunk(t, c, &mut b);
                }
            }
            assert_eq!(a, b, "{kind:?}: the stored form of the init spec");
            assert!((0..init.tensors.len()).all(|t| init.dirty_chunks(t).next().is_none()), "init is not dirty");
        }
    }

    #[test]
    fn a_delta_carries_exactly_the_touched_floats() {
        let mut p = Params::init(&spec());
        let h = p.tensor_index("h").unwrap();
        let before = p.clone();
        let keys = [CHUNK_FLOATS as u64 + 3, CHUNK_FLOATS as u64 + 900, 2 * CHUNK_FLOATS as u64 - 1];
        touch(&mut p, &keys);
        let Some(Change::Rows(bits)) = p.change(h, 1) else { panic!("{:?}", p.change(h, 1)) };
        let mut blob = Vec::new();
        p.encode_delta(h, 1, bits, &mut blob);
        assert_eq!(blob.len(), p.delta_bytes(h, bits));
        assert_eq!(blob.len(), delta_len(3, 1 + p.tensors[h].slots.len()));
        let mut q = before.clone();
        q.apply_delta(h, 1, &blob).unwrap();
        assert_eq!(q.content_bits(), p.content_bits(), "old content + delta = new content");
        // the same over the whole chunk's stored form
        let (mut whole, mut want) = (Vec::new(), Vec::new());
        before.encode_chunk(h, 1, &mut whole);
        apply_to_whole(&mut whole, &blob).unwrap();
        p.encode_chunk(h, 1, &mut want);
        assert_eq!(whole, want);
        // torn, foreign or misplaced blobs are refused and change nothing
        for bad in [&blob[..blob.len() - 1], &blob[1..], &[][..]] {
            assert!(q.apply_delta(h, 1, bad).is_err());
        }
        let mut swapped = blob.clone();
        swapped[8..12].copy_from_slice(&[5, 0, 3, 0]);
        assert!(q.apply_delta(h, 1, &swapped).unwrap_err().to_string().contains("out of order"));
        assert!(q.apply_delta(p.tensor_index("b").unwrap(), 0, &blob).is_err(), "offsets past a short chunk");
        assert_eq!(q.content_bits(), p.content_bits());
        // a delta of no floats is its header, and changes nothing
        let mut empty = Vec::new();
        p.encode_delta(h, 1, &vec![0u64; bits.len()], &mut empty);
        assert_eq!(empty.len(), delta_len(0, 1 + p.tensors[h].slots.len()));
        q.apply_delta(h, 1, &empty).unwrap();
        assert_eq!(q.content_bits(), p.content_bits());
    }

    #[test]
    fn merged_deltas_equal_applying_both_in_order() {
        let mut p = Params::init(&spec());
        let h = p.tensor_index("h").unwrap();
        let base = p.clone();
        let mut layers = Vec::new();
        for keys in [&[1u64, 5, 77, 300][..], &[0, 5, 300, 16000], &[9, 77]] {
            touch(&mut p, keys);
            let Some(Change::Rows(bits)) = p.change(h, 0) else { panic!() };
            let mut blob = Vec::new();
            p.encode_delta(h, 0, bits, &mut blob);
            layers.push(blob);
            p.clear_dirty();
        }
        let (mut ab, mut abc, mut bc, mut a_bc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        merge(&layers[0], &layers[1], &mut ab).unwrap();
        merge(&ab, &layers[2], &mut abc).unwrap();
        merge(&layers[1], &layers[2], &mut bc).unwrap();
        merge(&layers[0], &bc, &mut a_bc).unwrap();
        assert_eq!(abc, a_bc, "merging is associative");
        assert_eq!(Delta::parse(&abc, CHUNK_FLOATS).unwrap().n, 7);
        let mut q = base.clone();
        q.apply_delta(h, 0, &abc).unwrap();
        assert_eq!(q.content_bits(), p.content_bits());
        assert!(merge(&layers[0], &layers[1][..9], &mut Vec::new()).is_err());
    }
}
