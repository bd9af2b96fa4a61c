//! Generalised linear models over dense and hashed features: linear regression (identity
//! link, squared loss), logistic regression (logloss) and softmax regression (multi-class
//! logloss). One pass computes the predictions, the loss of the batch before any update
//! (progressive validation) and the gradient, summed over the batch's rows.
use crate::features::Batch;
use crate::spec::ModelKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Identity,
    Logistic,
    Softmax,
}

impl Link {
    pub fn of(kind: ModelKind, outputs: usize) -> Option<Link> {
        match kind {
            ModelKind::Linear => Some(Link::Identity),
            ModelKind::Logistic => Some(Link::Logistic),
            ModelKind::Softmax if outputs >= 2 => Some(Link::Softmax),
            _ => None,
        }
    }
}

/// Views of the parameters one computation needs. `h` is indexed by the `sparse` slice
/// given with the batch (global rows on the server, compacted rows in a worker).
#[derive(Debug, Clone, Copy)]
pub struct GlmParams<'a> {
    pub outputs: usize,
    /// features × outputs (empty without dense features)
    pub w: &'a [f32],
    /// hashed rows × outputs
    pub h: &'a [f32],
    /// outputs
    pub b: &'a [f32],
}

/// Gradients in the shapes of [`GlmParams`] (hashed rows compacted to the batch's).
#[derive(Debug, Clone, Default)]
pub struct GlmGrads {
    pub w: Vec<f32>,
    pub h: Vec<f32>,
    pub b: Vec<f32>,
}

impl GlmGrads {
    /// Zeroes the buffers in the shapes needed (no allocation once grown).
    pub fn reset(&mut self, features: usize, hashed_rows: usize, outputs: usize) {
        for (v, n) in [(&mut self.w, features * outputs), (&mut self.h, hashed_rows * outputs), (&mut self.b, outputs)]
        {
            v.clear();
            v.resize(n, 0.0);
        }
    }
}

/// Scores of row `r` into `z` (length outputs), before the link.
pub(crate) fn scores(p: &GlmParams<'_>, batch: &Batch, sparse: &[u32], r: usize, z: &mut [f32]) {
    let k = p.outputs;
    z.copy_from_slice(&p.b[..k]);
    if !p.w.is_empty() {
        let x = &batch.dense[r * batch.features..(r + 1) * batch.features];
        for (j, xj) in x.iter().enumerate() {
            let wj = &p.w[j * k..(j + 1) * k];
            for (zo, wo) in z.iter_mut().zip(wj) {
                *zo += xj * wo;
            }
        }
    }
    if !p.h.is_empty() {
        for o in batch.row_ptr[r]..batch.row_ptr[r + 1] {
            let (row, v) = (sparse[o] as usize, batch.val[o]);
            for (zo, ho) in z.iter_mut().zip(&p.h[row * k..(row + 1) * k]) {
                *zo += v * ho;
            }
        }
    }
}

/// Applies the link in place: identity, sigmoid, or softmax.
pub(crate) fn link(l: Link, z: &mut [f32]) {
    match l {
        Link::Identity => {}
        Link::Logistic => z[0] = 1.0 / (1.0 + (-z[0]).exp()),
        Link::Softmax => {
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for v in z.iter_mut() {
                *v = (*v - m).exp();
                s += *v;
            }
            z.iter_mut().for_each(|v| *v /= s);
        }
    }
}

/// Loss of one row given its linked outputs.
pub(crate) fn row_loss(l: Link, y: f32, out: &[f32]) -> f64 {
    match l {
        Link::Identity => ((out[0] - y) as f64).powi(2),
        Link::Logistic => crate::metrics::binary_loss(y, out[0]),
        Link::Softmax => -(out.get(y as usize).copied().unwrap_or(0.0) as f64).clamp(1e-15, 1.0).ln(),
    }
}

/// Turns linked outputs into dL/dscore: prediction minus target (one-hot for softmax).
pub(crate) fn minus_target(l: Link, y: f32, z: &mut [f32]) {
    match l {
        Link::Identity | Link::Logistic => z[0] -= y,
        Link::Softmax => {
            if let Some(t) = z.get_mut(y as usize) {
                *t -= 1.0;
            }
        }
    }
}

/// Predictions of every row: `outputs` values per row (value, probability, or class
/// probabilities).
pub fn predict(l: Link, p: &GlmParams<'_>, batch: &Batch, sparse: &[u32], out: &mut Vec<f32>) {
    out.clear();
    out.resize(batch.rows() * p.outputs, 0.0);
    for (r, z) in out.chunks_exact_mut(p.outputs).enumerate() {
        scores(p, batch, sparse, r, z);
        link(l, z);
    }
}

/// Loss of the batch under `p` (summed: squared error for regression, logloss otherwise)
/// and the gradient of the summed loss (½ squared error for regression) into `g`.
pub fn train(l: Link, p: &GlmParams<'_>, batch: &Batch, sparse: &[u32], g: &mut GlmGrads) -> f64 {
    let k = p.outputs;
    let mut z = [0f32; 64];
    let mut big = Vec::new();
    let z: &mut [f32] = if k <= 64 {
        &mut z[..k]
    } else {
        big.resize(k, 0.0);
        &mut big
    };
    let mut loss = 0.0;
    for r in 0..batch.rows() {
        let y = batch.labels[r];
        scores(p, batch, sparse, r, z);
        link(l, z);
        loss += row_loss(l, y, z);
        minus_target(l, y, z);
        for (gb, d) in g.b.iter_mut().zip(z.iter()) {
            *gb += d;
        }
        if !g.w.is_empty() {
            let x = &batch.dense[r * batch.features..(r + 1) * batch.features];
            for (j, xj) in x.iter().enumerate() {
                for (gw, d) in g.w[j * k..(j + 1) * k].iter_mut().zip(z.iter()) {
                    *gw += xj * d;
                }
            }
        }
        if !g.h.is_empty() {
            for o in batch.row_ptr[r]..batch.row_ptr[r + 1] {
                let (row, v) = (sparse[o] as usize, batch.val[o]);
                for (gh, d) in g.h[row * k..(row + 1) * k].iter_mut().zip(z.iter()) {
                    *gh += v * d;
                }
            }
        }
    }
    loss
}

/// Standardises row-major dense values in place with a `norm` tensor (count, mean, M2
/// rows): `(x - mean) / std`, std 1 where there is not enough data.
pub fn standardize(dense: &mut [f32], features: usize, norm: &[f32]) {
    if features == 0 || norm.len() != 3 * features {
        return;
    }
    for row in dense.chunks_exact_mut(features) {
        for (j, x) in row.iter_mut().enumerate() {
            let (mean, sd) = mean_sd(norm, features, j);
            *x = (*x - mean) / sd;
        }
    }
}

/// Input `j`'s mean and standard deviation in a `norm` tensor of `features` inputs, as
/// standardisation takes them: sd 1 where there is not enough data.
#[inline]
pub fn mean_sd(norm: &[f32], features: usize, j: usize) -> (f32, f32) {
    let (n, mean, m2) = (norm[j], norm[features + j], norm[2 * features + j]);
    (mean, if n > 1.0 && m2 > 0.0 { (m2 / n).sqrt() } else { 1.0 })
}

/// Count, mean and M2 per feature of a batch's raw dense values (NaN = missing, not
/// counted), laid out like a `norm` tensor, into `out`.
pub fn batch_stats(dense: &[f32], features: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(3 * features, 0.0);
    if features == 0 {
        return;
    }
    for j in 0..features {
        let col = || dense.iter().skip(j).step_by(features).filter(|x| !x.is_nan()).map(|x| *x as f64);
        let n = col().count() as f64;
        if n == 0.0 {
            continue;
        }
        let mean = col().sum::<f64>() / n;
        out[j] = n as f32;
        out[features + j] = mean as f32;
        out[2 * features + j] = col().map(|x| (x - mean).powi(2)).sum::<f64>() as f32;
    }
}

/// Merges batch statistics `b` into `norm` (both count, mean, M2 rows of `f` features)
/// with Chan et al.'s parallel formulas, in f64.
pub fn merge_stats(norm: &mut [f32], b: &[f32], f: usize) {
    if norm.len() != 3 * f || b.len() != 3 * f {
        return;
    }
    for j in 0..f {
        let (na, ma, m2a) = (norm[j] as f64, norm[f + j] as f64, norm[2 * f + j] as f64);
        let (nb, mb, m2b) = (b[j] as f64, b[f + j] as f64, b[2 * f + j] as f64);
        let n = na + nb;
        if nb <= 0.0 || n <= 0.0 {
            continue;
        }
        let delta = mb - ma;
        norm[j] = n as f32;
        norm[f + j] = (ma + delta * nb / n) as f32;
        norm[2 * f + j] = (m2a + m2b + delta * delta * na * nb / n) as f32;
    }
}

/// Standardises raw dense rows with `norm` and sets missing values (NaN) to 0, the mean.
pub fn prepare_dense(dense: &mut [f32], features: usize, norm: &[f32]) {
    standardize(dense, features, norm);
    dense.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (dense values, hashed (row, value) pairs, label)
    type Row = (Vec<f32>, Vec<(u32, f32)>, f32);

    fn batch(rows: &[Row], features: usize) -> Batch {
        let mut b = Batch::new(features);
        for (d, s, y) in rows {
            b.dense.extend_from_slice(d);
            for (i, v) in s {
                b.idx.push(*i);
                b.val.push(*v);
            }
            b.finish_row(*y);
        }
        b
    }

    fn loss_of(l: Link, p: &GlmParams<'_>, b: &Batch) -> f64 {
        let mut g = GlmGrads::default();
        g.reset(p.w.len() / p.outputs, p.h.len() / p.outputs, p.outputs);
        train(l, p, b, &b.idx, &mut g)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every gradient component matches a central finite difference of the loss
        /// (½ squared error for the identity link).
        #[test]
        fn gradients_match_finite_differences(
            link_i in 0usize..3, features in 0usize..4, hrows in 1usize..5, k in 2usize..4,
            seed in any::<u64>(), rows in 1usize..5,
        ) {
            let l = [Link::Identity, Link::Logistic, Link::Softmax][link_i];
            let outputs = if l == Link::Softmax { k } else { 1 };
            let mut rng = crate::rng::SplitMix64::new(seed);
            let mut r = || (rng.next_f64() * 2.0 - 1.0) as f32;
            let data: Vec<_> = (0..rows).map(|_| {
                let d: Vec<f32> = (0..features).map(|_| r()).collect();
                let s: Vec<(u32, f32)> = (0..2).map(|i| (((r().abs() * 100.0) as u32 + i) % hrows as u32, r())).collect();
                let y = match l { Link::Identity => r(), Link::Logistic => (r() > 0.0) as u8 as f32, Link::Softmax => ((r().abs() * outputs as f32) as usize).min(outputs - 1) as f32 };
                (d, s, y)
            }).collect();
            let b = batch(&data, features);
            let mut theta: Vec<f32> = (0..(features + hrows + 1) * outputs).map(|_| r() * 0.5).collect();
            let split = |t: &[f32]| (t[..features * outputs].to_vec(), t[features * outputs..(features + hrows) * outputs].to_vec(), t[(features + hrows) * outputs..].to_vec());
            let (w, h, bb) = split(&theta);
            let p = GlmParams { outputs, w: &w, h: &h, b: &bb };
            let mut g = GlmGrads::default();
            g.reset(features, hrows, outputs);
            train(l, &p, &b, &b.idx, &mut g);
            let analytic: Vec<f32> = g.w.iter().chain(&g.h).chain(&g.b).copied().collect();
            let scale = if l == Link::Identity { 0.5 } else { 1.0 };
            for i in 0..theta.len() {
                let eps = 1e-2f32;
                let orig = theta[i];
                theta[i] = orig + eps;
                let (w1, h1, b1) = split(&theta);
                let up = loss_of(l, &GlmParams { outputs, w: &w1, h: &h1, b: &b1 }, &b);
                theta[i] = orig - eps;
                let (w2, h2, b2) = split(&theta);
                let down = loss_of(l, &GlmParams { outputs, w: &w2, h: &h2, b: &b2 }, &b);
                theta[i] = orig;
                let numeric = scale * (up - down) / (2.0 * eps as f64);
                prop_assert!((numeric - analytic[i] as f64).abs() < 2e-2 * (1.0 + numeric.abs()), "param {i}: numeric {numeric}, analytic {}", analytic[i]);
            }
        }
    }

    #[test]
    fn standardize_uses_the_running_statistics() {
        let mut stats = Vec::new();
        batch_stats(&[1.0, 2.0, 3.0, 4.0], 1, &mut stats);
        assert_eq!(stats, vec![4.0, 2.5, 5.0]);
        let mut x = vec![2.5, 2.5 + 1.25f32.sqrt()];
        standardize(&mut x, 1, &stats);
        assert!((x[0]).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6, "{x:?}");
    }
}
