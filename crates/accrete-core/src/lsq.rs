//! The `rls` optimizer: a linear regression over dense inputs that is, after every push,
//! the (ridge) least-squares fit of every row the model has learned. Recursive least
//! squares (the Kalman filter of a fixed linear model; river's `BayesianLinearRegression`
//! with a flat noise model) is invariant to any linear change of the inputs, so the
//! correlated and heavy-tailed inputs that slow a per-coordinate rule (whose steps follow
//! each input's own scale) cost it nothing, and it has no rate at all.
//!
//! What the model keeps, besides `w` and `b`, is the `cov` tensor: the count, the means and
//! the co-moments of the raw inputs and the label, `(f + 3) × (f + 1)` floats for `f`
//! inputs (row 0: the count, then zeros; row 1: the means of `x₁…x_f, y`; rows 2…: their
//! co-moment matrix Σ(v − v̄)(v − v̄)ᵀ). Workers push their batch's co-moments, and the
//! server merges them with Chan et al.'s pairwise formulas in f64 ([`merge`]): exact,
//! whatever the order or the concurrency of the pushes, and coordinate-free, so the
//! standardisation moving under it changes nothing.
//!
//! The server owns the fit: after every update it solves `w`, `b` from the merged `cov`,
//! in the coordinates of the merged `norm` ([`fit`], `O(f³)`, in the update's undo log),
//! so concurrent pushes, BSP rounds and a standardisation that moved cannot make the
//! weights disagree with the statistics. A worker pushes only statistics. Its batch
//! ([`Rls`]) starts from the same fit of the pulled statistics, in the batch's
//! standardised coordinates `z̃ = (z, 1)` with a prior `λI` of [`RIDGE`] rows, and scores
//! each row before folding it in by the Sherman–Morrison update of `P = A⁻¹`
//! (progressive validation, row by row).
//!
//! Weights or gradients pushed to an `rls` model are refused: it has only statistics to
//! learn from.

/// The prior's weight, in rows of standardised inputs: `λ` on the diagonal of `A`. A
/// thousandth of a row makes `A` invertible before the rows span every direction (and
/// gives an input never seen, or constant, weight 0), and moves a fit of real data by
/// nothing measurable, even along a direction in which the inputs barely vary.
pub const RIDGE: f64 = 1e-3;

/// The most dense inputs an `rls` model takes: `P` is (f + 1)² and each row costs
/// O(f²); past this the per-coordinate `normalized` optimizer is the one to use.
pub const MAX_FEATURES: u32 = 256;

/// Rows of the `cov` tensor of `f` inputs (its columns are `f + 1`).
pub fn rows(f: u32) -> u64 {
    f as u64 + 3
}

/// Whether value `k` of a `cov` tensor with `cols` columns is a count or a sum of squares
/// (which cannot be negative).
pub fn non_negative(cols: usize, k: usize) -> bool {
    k == 0 || (k >= 2 * cols && (k - 2 * cols).is_multiple_of(cols + 1))
}

/// Adds rows of raw inputs `x` (row-major, `f` per row) and labels `y` to co-moments `out`
/// (a `cov` tensor's values; zeros for none), in f64 by Welford's updates per row.
pub fn add_rows(out: &mut [f32], x: &[f32], y: &[f32], f: usize) {
    add_rows_from(out, x, y, f, None);
}

/// [`add_rows`] of rows standardised with `norm` (a `norm` tensor's values), taken back
/// to their raw values: the co-moments do not depend on the standardisation.
pub fn add_standardised_rows(out: &mut [f32], z: &[f32], y: &[f32], f: usize, norm: &[f32]) {
    if norm.len() == 3 * f {
        add_rows_from(out, z, y, f, Some(standardisation(norm, f)));
    }
}

fn add_rows_from(out: &mut [f32], x: &[f32], y: &[f32], f: usize, unstandardise: Option<(Vec<f64>, Vec<f64>)>) {
    let m = f + 1;
    if out.len() != (m + 2) * m || f == 0 {
        return;
    }
    let mut batch = vec![0f64; out.len()];
    let mut v = vec![0f64; m];
    for (row, label) in x.chunks_exact(f).zip(y) {
        v.iter_mut().zip(row.iter().chain(std::iter::once(label))).for_each(|(v, x)| *v = f64::from(*x));
        if let Some((mu, sd)) = &unstandardise {
            v.iter_mut().zip(mu.iter().zip(sd)).for_each(|(v, (mu, sd))| *v = *v * sd + mu);
        }
        let n = batch[0] + 1.0;
        batch[0] = n;
        // δ before the mean moves, δ' after: M += δ·δ'ᵀ (Welford, symmetric in expectation)
        let (means, co) = batch[m..].split_at_mut(m);
        let delta: Vec<f64> = v.iter().zip(means.iter()).map(|(v, mu)| v - mu).collect();
        means.iter_mut().zip(&delta).for_each(|(mu, d)| *mu += d / n);
        for i in 0..m {
            let after = v[i] - means[i];
            for j in 0..m {
                co[i * m + j] += after * delta[j];
            }
        }
    }
    let batch: Vec<f32> = batch.iter().map(|v| *v as f32).collect();
    merge(out, &batch);
}

/// Merges co-moments `b` into `a` (both `cov` values of the same shape) with Chan et
/// al.'s parallel formulas, in f64: the result is the co-moments of both sets of rows.
pub fn merge(a: &mut [f32], b: &[f32]) {
    let Some(m) = cols_of(a.len()) else { return };
    if b.len() != a.len() {
        return;
    }
    let (na, nb) = (f64::from(a[0]), f64::from(b[0]));
    let n = na + nb;
    if nb <= 0.0 || n <= 0.0 {
        return;
    }
    let delta: Vec<f64> = (0..m).map(|i| f64::from(b[m + i]) - f64::from(a[m + i])).collect();
    let w = na * nb / n;
    for i in 0..m {
        for j in 0..m {
            let k = 2 * m + i * m + j;
            a[k] = (f64::from(a[k]) + f64::from(b[k]) + delta[i] * delta[j] * w) as f32;
        }
    }
    for (i, d) in delta.iter().enumerate() {
        a[m + i] = (f64::from(a[m + i]) + d * nb / n) as f32;
    }
    a[0] = n as f32;
}

/// The columns (`f + 1`) of a `cov` tensor of `len` floats, if that is one's length.
fn cols_of(len: usize) -> Option<usize> {
    let m = ((len as f64).sqrt() as usize).saturating_sub(1);
    (m..m + 2).find(|m| *m >= 2 && (m + 2) * m == len)
}

/// One worker's recursive least squares over a batch, in the batch's standardised
/// coordinates; buffers reused batch after batch.
#[derive(Debug, Default)]
pub struct Rls {
    /// Inputs plus one (the bias).
    m: usize,
    /// `P = A⁻¹`, row-major m × m.
    p: Vec<f64>,
    /// The fit: weights of `z`, then the bias.
    w: Vec<f64>,
    pz: Vec<f64>,
    z: Vec<f64>,
}

impl Rls {
    /// Starts from the fit of the rows behind `cov` (a `cov` tensor's values, `f` inputs)
    /// in the coordinates of `norm` (a `norm` tensor: count, mean, M2 per input).
    pub fn start(&mut self, cov: &[f32], norm: &[f32], f: usize) -> Result<(), String> {
        let m = f + 1;
        if cov.len() != (m + 2) * m || norm.len() != 3 * f {
            return Err(format!(
                "rls: the pull brought {} statistics and {} input moments for {f} inputs (want {} and {})",
                cov.len(),
                norm.len(),
                (m + 2) * m,
                3 * f
            ));
        }
        self.m = m;
        let (a, c) = system(cov, norm, f);
        self.p = invert_spd(&a, m).ok_or("rls: the statistics' matrix is not positive definite")?;
        self.w = (0..m).map(|i| (0..m).map(|j| self.p[i * m + j] * c[j]).sum()).collect();
        self.pz.resize(m, 0.0);
        self.z.resize(m, 0.0);
        Ok(())
    }

    /// Scores standardised row `z` (f inputs), then folds it in with label `y`; returns
    /// the score.
    pub fn row(&mut self, z: &[f32], y: f32) -> f32 {
        let m = self.m;
        self.z.iter_mut().zip(z.iter().map(|v| f64::from(*v)).chain(std::iter::once(1.0))).for_each(|(d, s)| *d = s);
        let score: f64 = self.w.iter().zip(&self.z).map(|(w, z)| w * z).sum();
        // Sherman–Morrison: k = Pz / (1 + zᵀPz); w += k·(y − score); P −= k·(Pz)ᵀ
        for i in 0..m {
            self.pz[i] = (0..m).map(|j| self.p[i * m + j] * self.z[j]).sum();
        }
        let denom = 1.0 + self.z.iter().zip(&self.pz).map(|(z, p)| z * p).sum::<f64>();
        let err = f64::from(y) - score;
        for i in 0..m {
            let k = self.pz[i] / denom;
            self.w[i] += k * err;
            for j in 0..m {
                self.p[i * m + j] -= k * self.pz[j];
            }
        }
        score as f32
    }

    /// The fit's weights (of the standardised inputs) and bias.
    pub fn fit(&self) -> (impl Iterator<Item = f32> + '_, f32) {
        let f = self.m.saturating_sub(1);
        (self.w[..f].iter().map(|w| *w as f32), self.w.get(f).copied().unwrap_or(0.0) as f32)
    }
}

/// `A = λI + Σz̃z̃ᵀ` and `c = Σz̃·y` over the rows behind `cov`, in the coordinates of
/// `norm` (both of the model's shapes, checked by the caller), from their count n, means
/// v̄ and co-moments C: with u = x − μ, Σuuᵀ = C + n·(x̄ − μ)(x̄ − μ)ᵀ, and so on.
fn system(cov: &[f32], norm: &[f32], f: usize) -> (Vec<f64>, Vec<f64>) {
    let m = f + 1;
    let (mu, sd) = standardisation(norm, f);
    let n = f64::from(cov[0]).max(0.0);
    let mean = |i: usize| f64::from(cov[m + i]);
    let co = |i: usize, j: usize| f64::from(cov[2 * m + i * m + j]);
    let shift: Vec<f64> = (0..f).map(|i| mean(i) - mu[i]).collect();
    let ybar = mean(f);
    let mut a = vec![0f64; m * m];
    let mut c = vec![0f64; m];
    for i in 0..f {
        for j in 0..f {
            a[i * m + j] = (co(i, j) + n * shift[i] * shift[j]) / (sd[i] * sd[j]);
        }
        a[i * m + f] = n * shift[i] / sd[i];
        a[f * m + i] = a[i * m + f];
        c[i] = (co(i, f) + n * shift[i] * ybar) / sd[i];
    }
    a[f * m + f] = n;
    c[f] = n * ybar;
    (0..m).for_each(|i| a[i * m + i] += RIDGE);
    (a, c)
}

/// The fit of the rows behind `cov` (`f` inputs) in the coordinates of `norm`: the
/// weights of the standardised inputs, then the bias; `None` if the shapes are not a
/// model's of `f` inputs or the statistics are not a positive definite system.
pub fn fit(cov: &[f32], norm: &[f32], f: usize) -> Option<Vec<f32>> {
    let m = f + 1;
    if cov.len() != (m + 2) * m || norm.len() != 3 * f {
        return None;
    }
    let (a, c) = system(cov, norm, f);
    let p = invert_spd(&a, m)?;
    Some((0..m).map(|i| (0..m).map(|j| p[i * m + j] * c[j]).sum::<f64>() as f32).collect())
}

/// Each input's mean and standard deviation in a `norm` tensor, as
/// [`crate::glm::standardize`] takes them ([`crate::glm::mean_sd`]).
fn standardisation(norm: &[f32], f: usize) -> (Vec<f64>, Vec<f64>) {
    (0..f)
        .map(|j| {
            let (mean, sd) = crate::glm::mean_sd(norm, f, j);
            (f64::from(mean), f64::from(sd))
        })
        .unzip()
}

/// The inverse of a symmetric positive definite m × m matrix, by Cholesky.
fn invert_spd(a: &[f64], m: usize) -> Option<Vec<f64>> {
    // A = LLᵀ
    let mut l = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let s: f64 = a[i * m + j] - (0..j).map(|k| l[i * m + k] * l[j * m + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * m + i] = s.sqrt();
            } else {
                l[i * m + j] = s / l[j * m + j];
            }
        }
    }
    // L⁻¹ (lower triangular), then A⁻¹ = L⁻ᵀL⁻¹
    let mut li = vec![0f64; m * m];
    for i in 0..m {
        li[i * m + i] = 1.0 / l[i * m + i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i * m + k] * li[k * m + j]).sum();
            li[i * m + j] = -s / l[i * m + i];
        }
    }
    let mut inv = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let s: f64 = (i..m).map(|k| li[k * m + i] * li[k * m + j]).sum();
            inv[i * m + j] = s;
            inv[j * m + i] = s;
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glm;

    /// 300 rows of 3 correlated, differently scaled inputs and a noisy linear label.
    fn data() -> (Vec<f32>, Vec<f32>) {
        let mut rng = crate::rng::SplitMix64::new(7);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let a = rng.next_f64() * 2.0 - 1.0;
            let b = a * 0.9 + (rng.next_f64() - 0.5) * 0.2;
            let c = 1000.0 + (rng.next_f64() - 0.5) * 50.0;
            x.extend([a as f32, (b * 100.0) as f32, c as f32]);
            y.push((3.0 * a - 0.02 * b * 100.0 + 0.01 * c + (rng.next_f64() - 0.5) * 0.1) as f32);
        }
        (x, y)
    }

    /// Ridge least squares solved directly (normal equations in f64), in the coordinates
    /// of `norm`, for comparison.
    fn direct(x: &[f32], y: &[f32], norm: &[f32], f: usize) -> Vec<f64> {
        let (mu, sd) = standardisation(norm, f);
        let m = f + 1;
        let mut a = vec![0f64; m * m];
        let mut c = vec![0f64; m];
        for (row, y) in x.chunks_exact(f).zip(y) {
            let z: Vec<f64> = (0..f).map(|j| (f64::from(row[j]) - mu[j]) / sd[j]).chain([1.0]).collect();
            for i in 0..m {
                c[i] += z[i] * f64::from(*y);
                for j in 0..m {
                    a[i * m + j] += z[i] * z[j];
                }
            }
        }
        (0..m).for_each(|i| a[i * m + i] += RIDGE);
        let p = invert_spd(&a, m).unwrap();
        (0..m).map(|i| (0..m).map(|j| p[i * m + j] * c[j]).sum()).collect()
    }

    fn norm_of(x: &[f32], f: usize) -> Vec<f32> {
        let mut s = Vec::new();
        glm::batch_stats(x, f, &mut s);
        s
    }

    #[test]
    fn merged_co_moments_equal_those_of_all_rows_in_any_split() {
        let (x, y) = data();
        let f = 3;
        let len = (rows(3) * 4) as usize;
        let mut whole = vec![0f32; len];
        add_rows(&mut whole, &x, &y, f);
        for cut in [1, 17, 150, 299] {
            let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
            add_rows(&mut a, &x[..cut * f], &y[..cut], f);
            add_rows(&mut b, &x[cut * f..], &y[cut..], f);
            merge(&mut a, &b);
            for (k, (got, want)) in a.iter().zip(&whole).enumerate() {
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "cut {cut}, value {k}: {got} vs {want}");
            }
        }
        assert_eq!(whole[0], 300.0);
        assert!((0..len).filter(|k| non_negative(4, *k)).all(|k| whole[k] >= 0.0));
        assert_eq!((0..len).filter(|k| non_negative(4, *k)).count(), 5, "the count and 4 sums of squares");
    }

    #[test]
    fn row_by_row_ends_at_the_least_squares_fit_of_the_pulled_rows_and_the_batch() {
        let (x, y) = data();
        let f = 3;
        let norm = norm_of(&x, f);
        let (mu, sd) = standardisation(&norm, f);
        let len = (rows(3) * 4) as usize;
        // the first 200 rows pulled as statistics, the last 100 trained row by row
        let mut cov = vec![0f32; len];
        add_rows(&mut cov, &x[..600], &y[..200], f);
        let mut rls = Rls::default();
        rls.start(&cov, &norm, f).unwrap();
        let mut last_err = 0.0;
        for (row, y) in x[600..].chunks_exact(f).zip(&y[200..]) {
            let z: Vec<f32> = (0..f).map(|j| ((f64::from(row[j]) - mu[j]) / sd[j]) as f32).collect();
            last_err = (rls.row(&z, *y) - y).abs();
        }
        assert!(last_err < 0.2, "a fitted model scores within the noise: {last_err}");
        let want = direct(&x, &y, &norm, f);
        let (w, b) = rls.fit();
        for (got, want) in w.chain([b]).zip(&want) {
            assert!((f64::from(got) - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
        }
    }

    #[test]
    fn a_start_needs_statistics_of_the_models_shape() {
        let mut rls = Rls::default();
        let err = rls.start(&[0.0; 5], &[0.0; 9], 3).unwrap_err();
        assert!(err.contains("for 3 inputs"), "{err}");
        // no rows yet: the prior alone, a fit of zeros
        rls.start(&[0f32; 24], &[0.0; 9], 3).unwrap();
        let (w, b) = rls.fit();
        assert!(w.chain([b]).all(|v| v == 0.0));
    }
}
