//! Server-side optimizers. One call updates a contiguous run of parameters with its
//! gradient; the optimizer is matched once per run, never per value, so the inner loops
//! vectorise. Slot meanings: momentum `velocity`; AdaGrad `accum` (sum of g²); Adam `m`,
//! `v`; FTRL-Proximal `z`, `n` (McMahan et al., 2013).
use crate::spec::{OptimizerKind, OptimizerSpec};

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
        let o = &self.spec;
        let n = w.len();
        // Equal lengths, stated up front, let the loops below run without bounds checks.
        let g = &g[..n];
        let l2 = o.l2;
        match o.kind {
            OptimizerKind::Sgd => {
                for i in 0..n {
                    let gi = g[i] + l2 * w[i];
                    w[i] -= o.lr * gi;
                }
            }
            OptimizerKind::Momentum => {
                let v = &mut s0[..n];
                for i in 0..n {
                    let gi = g[i] + l2 * w[i];
                    v[i] = o.momentum * v[i] + gi;
                    w[i] -= o.lr * v[i];
                }
            }
            OptimizerKind::Adagrad => {
                let a = &mut s0[..n];
                for i in 0..n {
                    let gi = g[i] + l2 * w[i];
                    a[i] += gi * gi;
                    w[i] -= o.lr * gi / (a[i].sqrt() + o.eps);
                }
            }
            OptimizerKind::Adam => {
                let t = step.min(i32::MAX as u64) as i32;
                let c1 = 1.0 / (1.0 - o.beta1.powi(t));
                let c2 = 1.0 / (1.0 - o.beta2.powi(t));
                let (m, v) = (&mut s0[..n], &mut s1[..n]);
                for i in 0..n {
                    let gi = g[i] + l2 * w[i];
                    m[i] = o.beta1 * m[i] + (1.0 - o.beta1) * gi;
                    v[i] = o.beta2 * v[i] + (1.0 - o.beta2) * gi * gi;
                    w[i] -= o.lr * (m[i] * c1) / ((v[i] * c2).sqrt() + o.eps);
                }
            }
            OptimizerKind::Ftrl => {
                let (z, nn) = (&mut s0[..n], &mut s1[..n]);
                let (alpha, beta, l1) = (o.lr, o.beta2, o.l1);
                for i in 0..n {
                    let gi = g[i];
                    let n_new = nn[i] + gi * gi;
                    let sigma = (n_new.sqrt() - nn[i].sqrt()) / alpha;
                    z[i] += gi - sigma * w[i];
                    nn[i] = n_new;
                    w[i] = if z[i].abs() <= l1 {
                        0.0
                    } else {
                        -(z[i] - z[i].signum() * l1) / ((beta + n_new.sqrt()) / alpha + l2)
                    };
                }
            }
        }
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
    fn le_bytes_decode_and_find_non_finite_values() {
        let g = [0.5f32, -1.25, 3.0, f32::INFINITY];
        let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
        let le = LeBytes(&bytes);
        assert_eq!((0..4).map(|i| le.at(i)).collect::<Vec<_>>(), g);
        assert_eq!(le.first_non_finite(), Some((3, f32::INFINITY)));
        assert_eq!(LeBytes(&bytes[..12]).first_non_finite(), None);
    }
}
