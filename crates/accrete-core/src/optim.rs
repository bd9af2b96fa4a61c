//! Server-side optimizers. One call updates a contiguous run of parameters with its
//! gradient; the optimizer is matched once per run, never per value, so the inner loops
//! vectorise. Slot meanings: momentum `velocity`; AdaGrad `accum` (sum of g²); Adam `m`,
//! `v`; FTRL-Proximal `z`, `n` (McMahan et al., 2013); normalized `accum`, `scale`,
//! `loggain`, `trace`, `metanorm` (its per-row rule is in [`crate::local`]; a pushed
//! gradient gets AdaGrad's rule on `accum`).
//!
//! A push of changes (per-row training) merges each weight's and slot's change: see
//! [`Merge`].
use crate::spec::{OptimizerKind, OptimizerSpec};

/// How a push of changes (a worker that trained row by row on its copy) merges one
/// vector into the live one:
/// - the weights add the worker's change (under BSP, a round's changes of each weight are
///   averaged over the pushes that changed it: [`Merge::Mean`]);
/// - sums (AdaGrad's and the normalized optimizer's `accum`, its `loggain`, FTRL's `z`,
///   `n`) add the change;
/// - a running maximum (`scale`) keeps the larger value;
/// - decaying values (momentum's `velocity`, Adam's `m` and `v`, the normalized
///   optimizer's `trace`, and its `metanorm`, a maximum that forgets) carry their new
///   value, which replaces the live one: two workers' changes of a decaying value, added,
///   would count the decay of the value they both started from twice (and can flip its
///   sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Add,
    Max,
    Replace,
    /// A BSP round's weight changes: the mean over the pushes that changed each weight (a
    /// push that left it alone does not count). Workers that each tracked a weight to the
    /// same level (a drifting bias, a regression's solution) move it there once, not
    /// once per worker; a weight only one worker's rows touched gets that change whole.
    Mean,
}

/// The merge of a slot by name ([`Merge`]).
pub fn merge_of(slot: &str) -> Merge {
    match slot {
        "scale" => Merge::Max,
        "trace" | "metanorm" | "velocity" | "m" | "v" => Merge::Replace,
        _ => Merge::Add,
    }
}

/// Where a gradient's values come from: f32 slices, or little-endian f32 bytes straight
/// from the wire (decoded in the loop, no copy).
pub trait Grad {
    fn len(&self) -> usize;
    fn at(&self, i: usize) -> f32;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first NaN or infinite value, with its index.
    fn first_non_finite(&self) -> Option<(usize, f32)> {
        (0..self.len()).map(|i| (i, self.at(i))).find(|(_, v)| !v.is_finite())
    }
}

impl Grad for [f32] {
    #[inline]
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    #[inline]
    fn at(&self, i: usize) -> f32 {
        self[i]
    }
}

/// Little-endian f32 bytes; `len` is in floats.
#[derive(Debug, Clone, Copy)]
pub struct LeBytes<'a>(pub &'a [u8]);

impl<'a> LeBytes<'a> {
    pub fn iter(&self) -> impl Iterator<Item = f32> + 'a {
        self.0.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Where a sparse update's row keys come from: a `u64` slice, or fixed-width
/// little-endian `u64` bytes straight from the wire (decoded as they are read, no copy).
pub trait Keys {
    fn len(&self) -> usize;
    fn at(&self, i: usize) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Keys for [u64] {
    #[inline]
    fn len(&self) -> usize {
        <[u64]>::len(self)
    }
    #[inline]
    fn at(&self, i: usize) -> u64 {
        self[i]
    }
}

/// Little-endian u64 keys, 8 bytes each; `len` is in keys (trailing bytes ignored:
/// callers check the length first with [`LeKeys::whole`]).
#[derive(Debug, Clone, Copy)]
pub struct LeKeys<'a>(pub &'a [u8]);

impl<'a> LeKeys<'a> {
    /// True when the bytes hold whole keys.
    pub fn whole(&self) -> bool {
        self.0.len().is_multiple_of(8)
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + Clone + 'a {
        self.0.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }
}

impl Keys for LeKeys<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.0.len() / 8
    }
    #[inline]
    fn at(&self, i: usize) -> u64 {
        let b = &self.0[8 * i..8 * i + 8];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl Grad for LeBytes<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.0.len() / 4
    }
    #[inline]
    fn at(&self, i: usize) -> f32 {
        let b = &self.0[4 * i..4 * i + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn first_non_finite(&self) -> Option<(usize, f32)> {
        // All exponent bits set = NaN or infinity; a branch-free scan first, then the index.
        const EXP: u32 = 0x7f80_0000;
        let bits = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if !self.0.chunks_exact(4).fold(false, |bad, c| bad | (bits(c) & EXP == EXP)) {
            return None;
        }
        self.0.chunks_exact(4).position(|c| bits(c) & EXP == EXP).map(|i| (i, self.at(i)))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Optimizer {
    pub spec: OptimizerSpec,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec) -> Self {
        Optimizer { spec }
    }

    /// Applies `g` to `w` with slots `s0`, `s1` (empty when the optimizer has fewer).
    /// `step` is the 1-based number of this update (Adam's bias correction).
    pub fn apply(&self, w: &mut [f32], s0: &mut [f32], s1: &mut [f32], g: &[f32], step: u64) {
        let n = w.len();
        // Equal lengths, stated up front, let the loops below run without bounds checks.
        let g = &g[..n];
        let r = Rule::new(&self.spec, step);
        match self.spec.kind {
            OptimizerKind::Sgd | OptimizerKind::Rls => (0..n).for_each(|i| r.sgd(&mut w[i], g[i])),
            OptimizerKind::Momentum => {
                let v = &mut s0[..n];
                (0..n).for_each(|i| r.momentum(&mut w[i], &mut v[i], g[i]))
            }
            OptimizerKind::Adagrad | OptimizerKind::Normalized => {
                let a = &mut s0[..n];
                (0..n).for_each(|i| r.adagrad(&mut w[i], &mut a[i], g[i]))
            }
            OptimizerKind::Adam => {
                let (m, v) = (&mut s0[..n], &mut s1[..n]);
                (0..n).for_each(|i| r.adam(&mut w[i], &mut m[i], &mut v[i], g[i]))
            }
            OptimizerKind::Ftrl => {
                let (z, nn) = (&mut s0[..n], &mut s1[..n]);
                (0..n).for_each(|i| r.ftrl(&mut w[i], &mut z[i], &mut nn[i], g[i]))
            }
        }
    }

    /// Applies `g[i]` to the single parameter `keys[i]` of `w` (and of the slots, whole
    /// tensors here): the sparse update of a one-column table, matched once per call.
    /// Keys must be in range (checked before); a repeated key is updated once per
    /// occurrence, in order.
    pub fn apply_keys(&self, w: &mut [f32], s0: &mut [f32], s1: &mut [f32], keys: &[u64], g: &[f32], step: u64) {
        let r = Rule::new(&self.spec, step);
        let it = keys.iter().map(|k| *k as usize).zip(g);
        match self.spec.kind {
            OptimizerKind::Sgd | OptimizerKind::Rls => it.for_each(|(k, g)| r.sgd(&mut w[k], *g)),
            OptimizerKind::Momentum => it.for_each(|(k, g)| r.momentum(&mut w[k], &mut s0[k], *g)),
            OptimizerKind::Adagrad | OptimizerKind::Normalized => {
                it.for_each(|(k, g)| r.adagrad(&mut w[k], &mut s0[k], *g))
            }
            OptimizerKind::Adam => it.for_each(|(k, g)| r.adam(&mut w[k], &mut s0[k], &mut s1[k], *g)),
            OptimizerKind::Ftrl => it.for_each(|(k, g)| r.ftrl(&mut w[k], &mut s0[k], &mut s1[k], *g)),
        }
    }
}

/// The update rule of each optimizer for one parameter, with its constants worked out
/// once per call.
#[derive(Clone, Copy)]
pub struct Rule {
    lr: f32,
    l1: f32,
    l2: f32,
    eps: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    /// Adam's bias corrections 1/(1-beta1^t), 1/(1-beta2^t).
    c1: f32,
    c2: f32,
}

impl Rule {
    /// One parameter's update by gradient `g` under `kind`, its slots `s0`, `s1` (pass
    /// scratch values for slots the optimizer lacks): what per-row training runs per
    /// coordinate (the normalized optimizer's own rule needs the row, see [`crate::local`]).
    #[inline]
    pub fn step(&self, kind: OptimizerKind, w: &mut f32, s0: &mut f32, s1: &mut f32, g: f32) {
        match kind {
            OptimizerKind::Sgd | OptimizerKind::Rls => self.sgd(w, g),
            OptimizerKind::Momentum => self.momentum(w, s0, g),
            OptimizerKind::Adagrad | OptimizerKind::Normalized => self.adagrad(w, s0, g),
            OptimizerKind::Adam => self.adam(w, s0, s1, g),
            OptimizerKind::Ftrl => self.ftrl(w, s0, s1, g),
        }
    }

    pub fn new(o: &OptimizerSpec, step: u64) -> Rule {
        let t = step.min(i32::MAX as u64) as i32;
        Rule {
            lr: o.lr,
            l1: o.l1,
            l2: o.l2,
            eps: o.eps,
            momentum: o.momentum,
            beta1: o.beta1,
            beta2: o.beta2,
            c1: 1.0 / (1.0 - o.beta1.powi(t)),
            c2: 1.0 / (1.0 - o.beta2.powi(t)),
        }
    }

    #[inline(always)]
    fn sgd(&self, w: &mut f32, g: f32) {
        *w -= self.lr * (g + self.l2 * *w);
    }

    #[inline(always)]
    fn momentum(&self, w: &mut f32, v: &mut f32, g: f32) {
        *v = self.momentum * *v + (g + self.l2 * *w);
        *w -= self.lr * *v;
    }

    #[inline(always)]
    fn adagrad(&self, w: &mut f32, a: &mut f32, g: f32) {
        let g = g + self.l2 * *w;
        *a += g * g;
        *w -= self.lr * g / (a.sqrt() + self.eps);
    }

    #[inline(always)]
    fn adam(&self, w: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let g = g + self.l2 * *w;
        *m = self.beta1 * *m + (1.0 - self.beta1) * g;
        *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
        *w -= self.lr * (*m * self.c1) / ((*v * self.c2).sqrt() + self.eps);
    }

    /// FTRL-Proximal: `lr` is alpha, `beta2` is beta.
    #[inline(always)]
    fn ftrl(&self, w: &mut f32, z: &mut f32, n: &mut f32, g: f32) {
        let (alpha, beta) = (self.lr, self.beta2);
        let n_new = *n + g * g;
        let sigma = (n_new.sqrt() - n.sqrt()) / alpha;
        *z += g - sigma * *w;
        *n = n_new;
        *w = if z.abs() <= self.l1 {
            0.0
        } else {
            -(*z - z.signum() * self.l1) / ((beta + n_new.sqrt()) / alpha + self.l2)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: OptimizerKind, f: impl FnOnce(&mut OptimizerSpec), w0: f32, grads: &[f32]) -> (f32, f32, f32) {
        let mut spec = OptimizerSpec::new(kind, 0.1);
        f(&mut spec);
        let opt = Optimizer::new(spec);
        let (mut w, mut s0, mut s1) = ([w0], [0.0f32], [0.0f32]);
        for (k, g) in grads.iter().enumerate() {
            opt.apply(&mut w, &mut s0, &mut s1, &[*g], k as u64 + 1);
        }
        (w[0], s0[0], s1[0])
    }

    fn close(a: f32, b: f64) {
        assert!((a as f64 - b).abs() < 1e-6, "{a} != {b}");
    }

    #[test]
    fn sgd_by_hand() {
        // w = 1 - 0.1*0.5 - 0.1*(-2) = 1.15
        let (w, _, _) = run(OptimizerKind::Sgd, |_| {}, 1.0, &[0.5, -2.0]);
        close(w, 1.15);
        // with l2 = 0.5: g' = 0.5 + 0.5*1 = 1.0 -> w = 0.9
        let (w, _, _) = run(OptimizerKind::Sgd, |s| s.l2 = 0.5, 1.0, &[0.5]);
        close(w, 0.9);
    }

    #[test]
    fn momentum_by_hand() {
        // v1 = 1; w1 = 1 - 0.1 = 0.9; v2 = 0.9*1 + 1 = 1.9; w2 = 0.9 - 0.19 = 0.71
        let (w, v, _) = run(OptimizerKind::Momentum, |_| {}, 1.0, &[1.0, 1.0]);
        close(w, 0.71);
        close(v, 1.9);
    }

    #[test]
    fn adagrad_by_hand() {
        // a1 = 4; w1 = 0 - 0.1*2/(2+1e-6); a2 = 4 + 1 = 5; w2 = w1 - 0.1*1/(sqrt5+1e-6)
        let (w, a, _) = run(OptimizerKind::Adagrad, |_| {}, 0.0, &[2.0, 1.0]);
        let w1 = -0.1 * 2.0 / (2.0 + 1e-6);
        close(w, w1 - 0.1 / (5f64.sqrt() + 1e-6));
        close(a, 5.0);
    }

    #[test]
    fn adam_by_hand() {
        // step 1: m = 0.1*g, v = 0.001*g², mhat = g, vhat = g² -> w -= lr*g/(|g|+eps) = lr*sign(g)
        let (w, m, v) = run(OptimizerKind::Adam, |_| {}, 0.0, &[3.0]);
        close(w, -0.1 * 3.0 / (3.0 + 1e-8));
        close(m, 0.3);
        close(v, 0.009);
        // step 2 with g = 1: m = 0.9*0.3 + 0.1 = 0.37, v = 0.999*0.009 + 0.001 = 0.009991
        let (w2, m2, v2) = run(OptimizerKind::Adam, |_| {}, 0.0, &[3.0, 1.0]);
        close(m2, 0.37);
        close(v2, 0.009991);
        let mhat = 0.37 / (1.0 - 0.9f64.powi(2));
        let vhat = 0.009991 / (1.0 - 0.999f64.powi(2));
        assert!((w2 as f64 - (w as f64 - 0.1 * mhat / (vhat.sqrt() + 1e-8))).abs() < 1e-5);
    }

    #[test]
    fn ftrl_by_hand() {
        // alpha 0.1, beta 1, l1 0.01, l2 0: g = 2 from w = 0:
        // n = 4, sigma = (2 - 0)/0.1 = 20, z = 2 - 20*0 = 2,
        // w = -(2 - 0.01) / ((1 + 2)/0.1) = -1.99/30
        let (w, z, n) = run(OptimizerKind::Ftrl, |s| s.l1 = 0.01, 0.0, &[2.0]);
        close(z, 2.0);
        close(n, 4.0);
        close(w, -1.99 / 30.0);
        // |z| <= l1 -> w = 0
        let (w, _, _) = run(OptimizerKind::Ftrl, |s| s.l1 = 5.0, 0.0, &[2.0]);
        close(w, 0.0);
    }

    #[test]
    fn keyed_updates_match_dense_updates_of_the_same_parameters() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Momentum,
            OptimizerKind::Adagrad,
            OptimizerKind::Adam,
            OptimizerKind::Ftrl,
        ] {
            let mut spec = OptimizerSpec::new(kind, 0.1);
            spec.l2 = 0.01;
            spec.l1 = 0.001;
            let opt = Optimizer::new(spec);
            let w0: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
            let (mut w, mut s0, mut s1) = (w0.clone(), vec![0.5f32; 8], vec![0.25f32; 8]);
            let (mut dw, mut d0, mut d1) = (w0.clone(), vec![0.5f32; 8], vec![0.25f32; 8]);
            let keys = [5u64, 1, 6];
            let g = [0.3f32, -1.5, 2.0];
            opt.apply_keys(&mut w, &mut s0, &mut s1, &keys, &g, 3);
            for (k, gi) in keys.iter().zip(g) {
                let k = *k as usize;
                opt.apply(&mut dw[k..k + 1], &mut d0[k..k + 1], &mut d1[k..k + 1], &[gi], 3);
            }
            assert_eq!((w, s0, s1), (dw, d0, d1), "{kind:?}");
        }
    }

    #[test]
    fn le_bytes_decode_and_find_non_finite_values() {
        let g = [0.5f32, -1.25, 3.0, f32::INFINITY];
        let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
        let le = LeBytes(&bytes);
        assert_eq!((0..4).map(|i| le.at(i)).collect::<Vec<_>>(), g);
        assert_eq!(le.first_non_finite(), Some((3, f32::INFINITY)));
        assert_eq!(LeBytes(&bytes[..12]).first_non_finite(), None);
    }
}
