//! Factorization machines (hashed features, binary logloss) and a one-hidden-layer
//! perceptron (dense features, ReLU hidden units; softmax over classes, or a regression
//! output). Like [`crate::glm`], one pass gives the batch's loss before any update and the
//! gradient summed over rows; every gradient is checked against finite differences.
use crate::features::Batch;

/// FM parameters: `h` (rows × 1) linear terms, `v` (rows × k) factors, `b` (1).
#[derive(Debug, Clone, Copy)]
pub struct FmParams<'a> {
    pub k: usize,
    pub h: &'a [f32],
    pub v: &'a [f32],
    pub b: &'a [f32],
}

/// Score of row `r`; fills `s` (length k) with Σ v_if x_i.
fn fm_score(p: &FmParams<'_>, batch: &Batch, sparse: &[u32], r: usize, s: &mut [f32]) -> f32 {
    let k = p.k;
    s.iter_mut().for_each(|x| *x = 0.0);
    let (mut z, mut sq) = (p.b[0], 0.0f32);
    for o in batch.row_ptr[r]..batch.row_ptr[r + 1] {
        let (i, x) = (sparse[o] as usize, batch.val[o]);
        z += p.h[i] * x;
        for (f, vf) in p.v[i * k..(i + 1) * k].iter().enumerate() {
            s[f] += vf * x;
            sq += vf * vf * x * x;
        }
    }
    z + 0.5 * (s.iter().map(|v| v * v).sum::<f32>() - sq)
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

pub fn fm_predict(p: &FmParams<'_>, batch: &Batch, sparse: &[u32], out: &mut Vec<f32>) {
    let mut s = vec![0f32; p.k];
    out.clear();
    out.extend((0..batch.rows()).map(|r| sigmoid(fm_score(p, batch, sparse, r, &mut s))));
}

/// Logloss of the batch and its gradient into `gh`, `gv`, `gb` (compact rows like `p`).
pub fn fm_train(
    p: &FmParams<'_>,
    batch: &Batch,
    sparse: &[u32],
    gh: &mut [f32],
    gv: &mut [f32],
    gb: &mut [f32],
) -> f64 {
    let k = p.k;
    let mut s = vec![0f32; k];
    let mut loss = 0.0;
    for r in 0..batch.rows() {
        let y = batch.labels[r];
        let prob = sigmoid(fm_score(p, batch, sparse, r, &mut s));
        loss += crate::metrics::binary_loss(y, prob);
        let d = prob - y;
        gb[0] += d;
        for o in batch.row_ptr[r]..batch.row_ptr[r + 1] {
            let (i, x) = (sparse[o] as usize, batch.val[o]);
            gh[i] += d * x;
            for f in 0..k {
                gv[i * k + f] += d * x * (s[f] - p.v[i * k + f] * x);
            }
        }
    }
    loss
}

/// MLP parameters: `w1` (features × hidden), `b1`, `w2` (hidden × outputs), `b2`.
#[derive(Debug, Clone, Copy)]
pub struct MlpParams<'a> {
    pub features: usize,
    pub hidden: usize,
    pub outputs: usize,
    pub w1: &'a [f32],
    pub b1: &'a [f32],
    pub w2: &'a [f32],
    pub b2: &'a [f32],
}

/// Hidden activations `a` and outputs `z` (after softmax when classifying) of row `x`.
fn mlp_forward(p: &MlpParams<'_>, x: &[f32], a: &mut [f32], z: &mut [f32]) {
    let (h, k) = (p.hidden, p.outputs);
    a.copy_from_slice(&p.b1[..h]);
    for (j, xj) in x.iter().enumerate() {
        for (au, w) in a.iter_mut().zip(&p.w1[j * h..(j + 1) * h]) {
            *au += xj * w;
        }
    }
    a.iter_mut().for_each(|v| *v = v.max(0.0));
    z.copy_from_slice(&p.b2[..k]);
    for (u, au) in a.iter().enumerate() {
        for (zo, w) in z.iter_mut().zip(&p.w2[u * k..(u + 1) * k]) {
            *zo += au * w;
        }
    }
    if k >= 2 {
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in z.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        z.iter_mut().for_each(|v| *v /= sum);
    }
}

pub fn mlp_predict(p: &MlpParams<'_>, batch: &Batch, out: &mut Vec<f32>) {
    let (mut a, mut z) = (vec![0f32; p.hidden], vec![0f32; p.outputs]);
    out.clear();
    for r in 0..batch.rows() {
        mlp_forward(p, &batch.dense[r * p.features..(r + 1) * p.features], &mut a, &mut z);
        out.extend_from_slice(&z);
    }
}

/// Gradients of an MLP, in the shapes of [`MlpParams`].
#[derive(Debug, Clone, Default)]
pub struct MlpGrads {
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl MlpGrads {
    pub fn reset(&mut self, features: usize, hidden: usize, outputs: usize) {
        for (v, n) in [
            (&mut self.w1, features * hidden),
            (&mut self.b1, hidden),
            (&mut self.w2, hidden * outputs),
            (&mut self.b2, outputs),
        ] {
            v.clear();
            v.resize(n, 0.0);
        }
    }
}

/// Loss of the batch (multi-class logloss, or squared error for one output) and the
/// gradient (of ½ squared error for one output).
pub fn mlp_train(p: &MlpParams<'_>, batch: &Batch, g: &mut MlpGrads) -> f64 {
    let (f, h, k) = (p.features, p.hidden, p.outputs);
    let (mut a, mut z, mut da) = (vec![0f32; h], vec![0f32; k], vec![0f32; h]);
    let mut loss = 0.0;
    for r in 0..batch.rows() {
        let x = &batch.dense[r * f..(r + 1) * f];
        let y = batch.labels[r];
        mlp_forward(p, x, &mut a, &mut z);
        if k >= 2 {
            loss -= (z.get(y as usize).copied().unwrap_or(0.0) as f64).clamp(1e-15, 1.0).ln();
            if let Some(t) = z.get_mut(y as usize) {
                *t -= 1.0;
            }
        } else {
            loss += ((z[0] - y) as f64).powi(2);
            z[0] -= y;
        }
        da.iter_mut().for_each(|v| *v = 0.0);
        for u in 0..h {
            for o in 0..k {
                g.w2[u * k + o] += a[u] * z[o];
                da[u] += p.w2[u * k + o] * z[o];
            }
            da[u] *= f32::from(u8::from(a[u] > 0.0));
        }
        for (gb, d) in g.b2.iter_mut().zip(&z) {
            *gb += d;
        }
        for (gb, d) in g.b1.iter_mut().zip(&da) {
            *gb += d;
        }
        for (j, xj) in x.iter().enumerate() {
            for (gw, d) in g.w1[j * h..(j + 1) * h].iter_mut().zip(&da) {
                *gw += xj * d;
            }
        }
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn numeric(f: impl Fn(&[f32]) -> f64, theta: &[f32], i: usize, scale: f64) -> f64 {
        let eps = 1e-2f32;
        let mut t = theta.to_vec();
        t[i] += eps;
        let up = f(&t);
        t[i] -= 2.0 * eps;
        let down = f(&t);
        scale * (up - down) / (2.0 * eps as f64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn fm_gradients_match_finite_differences(seed in any::<u64>(), rows in 1usize..4, hrows in 1usize..5, k in 1usize..4) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let mut r = || (rng.next_f64() * 2.0 - 1.0) as f32;
            let mut b = Batch::new(0);
            for _ in 0..rows {
                for _ in 0..3 {
                    b.idx.push(((r().abs() * 100.0) as u32) % hrows as u32);
                    b.val.push(r());
                }
                let y = (r() > 0.0) as u8 as f32;
                b.finish_row(y);
            }
            let n = hrows + hrows * k + 1;
            let theta: Vec<f32> = (0..n).map(|_| r() * 0.5).collect();
            let view = |t: &[f32]| (t[..hrows].to_vec(), t[hrows..hrows + hrows * k].to_vec(), t[n - 1..].to_vec());
            let loss = |t: &[f32]| {
                let (h, v, bb) = view(t);
                let (mut gh, mut gv, mut gb) = (vec![0.0; hrows], vec![0.0; hrows * k], vec![0.0]);
                fm_train(&FmParams { k, h: &h, v: &v, b: &bb }, &b, &b.idx, &mut gh, &mut gv, &mut gb)
            };
            let (h, v, bb) = view(&theta);
            let (mut gh, mut gv, mut gb) = (vec![0.0; hrows], vec![0.0; hrows * k], vec![0.0]);
            fm_train(&FmParams { k, h: &h, v: &v, b: &bb }, &b, &b.idx, &mut gh, &mut gv, &mut gb);
            let analytic: Vec<f32> = gh.iter().chain(&gv).chain(&gb).copied().collect();
            for i in 0..n {
                let num = numeric(loss, &theta, i, 1.0);
                prop_assert!((num - analytic[i] as f64).abs() < 2e-2 * (1.0 + num.abs()), "param {i}: numeric {num}, analytic {}", analytic[i]);
            }
        }

        #[test]
        fn mlp_gradients_match_finite_differences(seed in any::<u64>(), rows in 1usize..4, f in 1usize..4, h in 1usize..4, classes in 0usize..4) {
            let k = if classes >= 2 { classes } else { 1 };
            let mut rng = crate::rng::SplitMix64::new(seed);
            let mut r = || (rng.next_f64() * 2.0 - 1.0) as f32;
            let mut b = Batch::new(f);
            for _ in 0..rows {
                for _ in 0..f {
                    b.dense.push(r());
                }
                let y = if k >= 2 { ((r().abs() * k as f32) as usize).min(k - 1) as f32 } else { r() };
                b.finish_row(y);
            }
            let n = f * h + h + h * k + k;
            let theta: Vec<f32> = (0..n).map(|_| r() * 0.5).collect();
            let split = |t: &[f32]| {
                let (w1, rest) = t.split_at(f * h);
                let (b1, rest) = rest.split_at(h);
                let (w2, b2) = rest.split_at(h * k);
                (w1.to_vec(), b1.to_vec(), w2.to_vec(), b2.to_vec())
            };
            let run = |t: &[f32], g: &mut MlpGrads| {
                let (w1, b1, w2, b2) = split(t);
                g.reset(f, h, k);
                mlp_train(&MlpParams { features: f, hidden: h, outputs: k, w1: &w1, b1: &b1, w2: &w2, b2: &b2 }, &b, g)
            };
            // ReLU has a kink at 0: no hidden unit may be near it, or the finite
            // difference straddles it
            let (w1, b1, _, _) = split(&theta);
            let kinked = b.dense.chunks(f).any(|x| {
                (0..h).any(|u| (b1[u] + x.iter().enumerate().map(|(j, xj)| xj * w1[j * h + u]).sum::<f32>()).abs() < 0.03)
            });
            prop_assume!(!kinked);
            let mut g = MlpGrads::default();
            run(&theta, &mut g);
            let analytic: Vec<f32> = g.w1.iter().chain(&g.b1).chain(&g.w2).chain(&g.b2).copied().collect();
            let scale = if k >= 2 { 1.0 } else { 0.5 };
            for i in 0..n {
                let num = numeric(|t| run(t, &mut MlpGrads::default()), &theta, i, scale);
                prop_assert!((num - analytic[i] as f64).abs() < 2e-2 * (1.0 + num.abs()), "param {i}: numeric {num}, analytic {}", analytic[i]);
            }
        }
    }
}
