//! Per-row training on a worker's own copy of a batch's parameters: each row is scored
//! with the weights every earlier row of the batch left (progressive validation, row by
//! row), then updated by the model's optimizer, slots and all, exactly as one process
//! running the optimizer row after row would. The worker then pushes what changed
//! ([`crate::optim::Merge`]); one pull and one push per batch, as in batch training.
//!
//! The `normalized` optimizer's rule lives here, since it needs the whole row: Vowpal
//! Wabbit's adaptive, normalised and invariant update (Karampatziakis & Langford 2011;
//! Ross, Mineiro & Langford 2013). Per coordinate `i` with input `x`:
//! - `scale` holds the largest |x| seen; when a larger one comes, the weight is scaled by
//!   old/new first (so a feature's scale never sets its step);
//! - `accum` adds (d·x)², d the loss's derivative in the score;
//! - the step is `lr · x / (√accum · scale)`, times `1 / Σ (x/scale)²` over the row's
//!   inputs (so the row's update moves its score by about `lr`, however many inputs);
//! - for squared loss the step is the closed form of infinitely many small ones (never
//!   past the label), so a regression model cannot diverge on any input scale.
use crate::features::Batch;
use crate::glm::{self, GlmParams, Link};
use crate::optim::Rule;
use crate::spec::{OptimizerKind, OptimizerSpec};

/// One tensor's weights and optimizer slots (empty when the optimizer has fewer), as a
/// worker holds them: hashed rows compacted to the batch's.
#[derive(Debug)]
pub struct Part<'a> {
    pub w: &'a mut [f32],
    pub s0: &'a mut [f32],
    pub s1: &'a mut [f32],
}

/// A generalised linear model's parts ([`GlmParams`] with slots).
#[derive(Debug)]
pub struct LocalGlm<'a> {
    pub outputs: usize,
    /// features × outputs (empty without dense features)
    pub w: Part<'a>,
    /// hashed rows × outputs, by the batch's compacted row
    pub h: Part<'a>,
    /// outputs
    pub b: Part<'a>,
}

/// Buffers reused across rows and batches (nothing is allocated per row).
#[derive(Debug, Default)]
pub struct Scratch {
    z: Vec<f32>,
    norm: Vec<f32>,
    ppu: Vec<f32>,
    u: Vec<f32>,
}

#[derive(Clone, Copy)]
enum Which {
    W,
    H,
    B,
}

/// Calls `f(part, first index, x)` for each input of row `r`: the bias (x = 1), each
/// dense feature, each hashed feature; the part's `outputs` floats from the index on
/// belong to it.
#[inline]
fn inputs(
    batch: &Batch,
    sparse: &[u32],
    dense: bool,
    hashed: bool,
    k: usize,
    r: usize,
    mut f: impl FnMut(Which, usize, f32),
) {
    f(Which::B, 0, 1.0);
    if dense {
        let x = &batch.dense[r * batch.features..(r + 1) * batch.features];
        for (j, xj) in x.iter().enumerate() {
            f(Which::W, j * k, *xj);
        }
    }
    if hashed {
        for o in batch.row_ptr[r]..batch.row_ptr[r + 1] {
            f(Which::H, sparse[o] as usize * k, batch.val[o]);
        }
    }
}

impl<'a> LocalGlm<'a> {
    fn part(&mut self, which: Which) -> &mut Part<'a> {
        match which {
            Which::W => &mut self.w,
            Which::H => &mut self.h,
            Which::B => &mut self.b,
        }
    }
}

/// Trains the batch row by row: each row's prediction (before its update) goes to
/// `preds` (`outputs` floats per row), its loss to the sum returned (squared error for
/// regression, logloss otherwise, as [`glm::train`] counts it).
#[allow(clippy::too_many_arguments)]
pub fn train_rows(
    l: Link,
    opt: &OptimizerSpec,
    step: u64,
    p: &mut LocalGlm<'_>,
    batch: &Batch,
    sparse: &[u32],
    s: &mut Scratch,
    mut preds: Option<&mut Vec<f32>>,
) -> f64 {
    let k = p.outputs;
    for v in [&mut s.z, &mut s.norm, &mut s.ppu, &mut s.u] {
        v.clear();
        v.resize(k, 0.0);
    }
    if let Some(out) = preds.as_deref_mut() {
        out.clear();
        out.reserve(batch.rows() * k);
    }
    let rule = Rule::new(opt, step.max(1));
    let (dense, hashed) = (!p.w.w.is_empty(), !p.h.w.is_empty());
    let mut loss = 0.0;
    for r in 0..batch.rows() {
        let y = batch.labels[r];
        let params = GlmParams { outputs: k, w: p.w.w, h: p.h.w, b: p.b.w };
        glm::scores(&params, batch, sparse, r, &mut s.z);
        glm::link(l, &mut s.z);
        if let Some(out) = preds.as_deref_mut() {
            out.extend_from_slice(&s.z);
        }
        loss += glm::row_loss(l, y, &s.z);
        // d: the loss's derivative in each score (prediction minus target)
        glm::minus_target(l, y, &mut s.z);
        let d = &s.z[..];
        if opt.kind != OptimizerKind::Normalized {
            let (mut t0, mut t1) = (0f32, 0f32);
            inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
                let part = p.part(which);
                for (o, d) in d.iter().enumerate() {
                    let i = at + o;
                    let s0 = part.s0.get_mut(i).unwrap_or(&mut t0);
                    let s1 = part.s1.get_mut(i).unwrap_or(&mut t1);
                    rule.step(opt.kind, &mut part.w[i], s0, s1, d * x);
                }
            });
            continue;
        }
        // normalized, pass 1: rescale, grow the accumulators, and sum the row's norm and
        // its prediction change per unit of update
        s.norm.iter_mut().chain(s.ppu.iter_mut()).for_each(|v| *v = 0.0);
        let (norm, ppu) = (&mut s.norm, &mut s.ppu);
        inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
            let ax = x.abs();
            if ax == 0.0 {
                return;
            }
            let part = p.part(which);
            for (o, d) in d.iter().enumerate() {
                let i = at + o;
                let scale = part.s1[i];
                if ax > scale {
                    if scale > 0.0 {
                        part.w[i] *= scale / ax;
                    }
                    part.s1[i] = ax;
                }
                let scale = part.s1[i];
                norm[o] += (x / scale) * (x / scale);
                part.s0[i] += (d * x) * (d * x);
                let g = part.s0[i];
                if g > 0.0 {
                    ppu[o] += x * x / (g.sqrt() * scale);
                }
            }
        });
        // the update per output: lr·(-d), or for squared loss its invariant closed form
        for o in 0..k {
            let m = if norm[o] > 0.0 { 1.0 / norm[o] } else { 0.0 };
            let h = opt.lr * ppu[o] * m;
            s.u[o] = match l {
                Link::Identity if h > 1e-6 => -d[o] * (1.0 - (-h).exp()) / (ppu[o] * m),
                _ => -opt.lr * d[o],
            } * m;
        }
        let u = &s.u;
        inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
            if x == 0.0 {
                return;
            }
            let part = p.part(which);
            for (o, u) in u.iter().enumerate() {
                let i = at + o;
                let (g, scale) = (part.s0[i], part.s1[i]);
                if g > 0.0 && scale > 0.0 {
                    part.w[i] += u * x / (g.sqrt() * scale);
                }
            }
        });
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Batch;

    /// A batch of dense rows (no hashed features).
    fn dense_batch(rows: &[(Vec<f32>, f32)]) -> Batch {
        let mut b = Batch::new(rows[0].0.len());
        for (x, y) in rows {
            b.dense.extend_from_slice(x);
            b.labels.push(*y);
            b.row_ptr.push(0);
        }
        b
    }

    struct Model {
        w: Vec<f32>,
        ws: [Vec<f32>; 2],
        b: Vec<f32>,
        bs: [Vec<f32>; 2],
    }

    impl Model {
        fn new(features: usize, outputs: usize) -> Model {
            let z = |n| vec![0f32; n];
            Model {
                w: z(features * outputs),
                ws: [z(features * outputs), z(features * outputs)],
                b: z(outputs),
                bs: [z(outputs), z(outputs)],
            }
        }

        fn train(&mut self, l: Link, opt: &OptimizerSpec, batch: &Batch, preds: &mut Vec<f32>) -> f64 {
            let [w0, w1] = &mut self.ws;
            let [b0, b1] = &mut self.bs;
            let mut p = LocalGlm {
                outputs: self.b.len(),
                w: Part { w: &mut self.w, s0: w0, s1: w1 },
                h: Part { w: &mut [], s0: &mut [], s1: &mut [] },
                b: Part { w: &mut self.b, s0: b0, s1: b1 },
            };
            train_rows(l, opt, 1, &mut p, batch, &[], &mut Scratch::default(), Some(preds))
        }
    }

    #[test]
    fn normalized_updates_do_not_depend_on_a_features_scale() {
        // The same rows with feature 1 scaled by 1000: the same predictions, row by row.
        let opt = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        let rows: Vec<(Vec<f32>, f32)> = (0..200)
            .map(|i| {
                let (a, b) = (((i * 37) % 11) as f32 / 5.0 - 1.0, ((i * 17) % 7) as f32 / 3.0 - 1.0);
                (vec![a, b], 2.0 * a - 0.5 * b + 0.3)
            })
            .collect();
        let scaled: Vec<(Vec<f32>, f32)> = rows.iter().map(|(x, y)| (vec![x[0], x[1] * 1000.0], *y)).collect();
        let (mut p1, mut p2) = (Vec::new(), Vec::new());
        Model::new(2, 1).train(Link::Identity, &opt, &dense_batch(&rows), &mut p1);
        Model::new(2, 1).train(Link::Identity, &opt, &dense_batch(&scaled), &mut p2);
        for (r, (a, b)) in p1.iter().zip(&p2).enumerate() {
            assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "row {r}: {a} vs {b}");
        }
        // and it learns: the last rows are predicted well
        let err: f32 = p1[150..].iter().zip(&rows[150..]).map(|(p, (_, y))| (p - y).abs()).sum::<f32>() / 50.0;
        assert!(err < 0.1, "mean error of the last 50 rows {err}");
    }

    #[test]
    fn normalized_regression_never_passes_the_label() {
        // One row, repeated: each invariant step moves the prediction towards the label
        // and never past it, whatever the input's size.
        let opt = OptimizerSpec::new(OptimizerKind::Normalized, 10.0);
        for scale in [1e-3f32, 1.0, 1e4] {
            let rows: Vec<(Vec<f32>, f32)> = (0..20).map(|_| (vec![scale], 5.0)).collect();
            let mut preds = Vec::new();
            Model::new(1, 1).train(Link::Identity, &opt, &dense_batch(&rows), &mut preds);
            for w in preds.windows(2) {
                assert!(w[1] >= w[0] - 1e-4 && w[1] <= 5.0 + 1e-3, "scale {scale}: {preds:?}");
            }
        }
    }

    #[test]
    fn per_row_sgd_is_the_sequential_rule() {
        // Two rows of logistic regression with SGD, by hand.
        let opt = OptimizerSpec::new(OptimizerKind::Sgd, 0.5);
        let batch = dense_batch(&[(vec![1.0], 1.0), (vec![2.0], 0.0)]);
        let mut m = Model::new(1, 1);
        let mut preds = Vec::new();
        m.train(Link::Logistic, &opt, &batch, &mut preds);
        // row 1: p = 0.5, d = -0.5: w = 0.25, b = 0.25; row 2: z = 0.75, p = σ(0.75)
        let p2 = 1.0 / (1.0 + (-0.75f32).exp());
        assert!((preds[0] - 0.5).abs() < 1e-6 && (preds[1] - p2).abs() < 1e-6, "{preds:?}");
        assert!((m.w[0] - (0.25 - 0.5 * p2 * 2.0)).abs() < 1e-6 && (m.b[0] - (0.25 - 0.5 * p2)).abs() < 1e-6);
    }
}
