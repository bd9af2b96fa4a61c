//! Per-row training on a worker's own copy of a batch's parameters: each row is scored
//! with the weights every earlier row of the batch left (progressive validation, row by
//! row), then updated by the model's optimizer, slots and all, exactly as one process
//! running the optimizer row after row would. The worker then pushes what changed
//! ([`crate::optim::Merge`]); one pull and one push per batch, as in batch training.
//! (Adam's bias correction counts the model's pushes, as on the server, not rows.)
//!
//! The `normalized` optimizer's rule lives here, since it needs the whole row. Its base
//! is Vowpal Wabbit's adaptive, normalised and invariant update (Karampatziakis & Langford
//! 2011; Ross, Mineiro & Langford 2013). Per coordinate `i` with input `x`:
//! - `scale` holds the largest |x| seen; when a larger one comes, the weight is scaled by
//!   old/new first (so a feature's scale never sets its step);
//! - `accum` adds (d·x)², d the loss's derivative in the score;
//! - the base step is `lr / (√accum · scale)`, times `1 / Σ (x/scale)²` over the row's
//!   inputs (so a row's update moves its score by about `lr`, however many inputs).
//!
//! On top, each coordinate's step has a gain adapted online by the meta-gradient of
//! IDBD/Autostep (Sutton 1992; Mahmood, Sutton, Degris & Pilarski 2012): `trace` follows
//! the coordinate's recent updates, and when the new update agrees with them (the data
//! drifts), `loggain` grows; when it cancels them (noise), it shrinks. `metanorm` keeps
//! Autostep's running scale of that signal, so the adaptation rate needs no tuning; it
//! forgets over 10⁴ of the coordinate's rows (Autostep's forgets at the pace of the
//! coordinate's step, which the AdaGrad base makes vanish), and, a decaying value, a
//! push's replaces the server's.
//! A stationary stream keeps gains near 1 (VW's behaviour); a drifting one raises them
//! where it drifts. For squared loss `accum` sums x² rather than (d·x)², so the steps do
//! not depend on the label's unit (AdaGrad's would shrink as the label grows). A row's
//! total step `h` is taken as infinitely many small steps, in closed form, so the score
//! never passes the label (Vowpal Wabbit's invariant update): squared loss moves it by
//! `-d·(1 - e^-h)`, so a regression model cannot diverge on any input scale; logistic
//! loss solves `s + eˢ = s₀ + e^s₀ + h` (in the label's direction) by Newton's method; a
//! softmax row's total step is capped at 1 (`Σ step·x² ≤ 1`).
//!
//! Two things set the step's size without a learning rate chosen for the data:
//! - a classifier's `accum` starts from a prior of [`PRIOR_ROWS`] rows of the largest
//!   gradient (`scale²` in `accum`'s unit, as |d| ≤ 1), so a coordinate's first rows
//!   cannot move it by the whole row's step (a rare feature learns less from one noisy
//!   row than from many); a regression's `accum` sums x², not gradients, and has none;
//! - a global gain, shared by every coordinate, follows the same meta-gradient summed over
//!   the row's coordinates (the hypergradient of Baydin et al. 2018): where updates keep
//!   agreeing with the recent ones, larger steps would have helped, and it grows; where
//!   they cancel, it shrinks. Summed over a row it adapts within thousands of rows, which
//!   the per-coordinate gains of rare features never see. It is the worker's own state
//!   ([`Scratch`], in memory: a restarted worker starts again from 1), within
//!   [e^-3, e^3].
use crate::features::Batch;
use crate::glm::{self, GlmParams, Link};
use crate::optim::Rule;
use crate::spec::{OptimizerKind, OptimizerSpec};

/// One tensor's weights and optimizer slots (in the optimizer's order), as a worker
/// holds them: hashed rows compacted to the batch's.
#[derive(Debug)]
pub struct Part<'a> {
    pub w: &'a mut [f32],
    pub s: Vec<&'a mut [f32]>,
}

impl Part<'_> {
    /// A part with no values (a tensor the model lacks).
    pub fn none() -> Part<'static> {
        Part { w: &mut [], s: Vec::new() }
    }
}

/// The normalized optimizer's slots, in order.
pub const NORMALIZED_SLOTS: [&str; 5] = ["accum", "scale", "loggain", "trace", "metanorm"];
const ACCUM: usize = 0;
const SCALE: usize = 1;
const LOGGAIN: usize = 2;
const TRACE: usize = 3;
const METANORM: usize = 4;
/// Autostep's meta step size and its normaliser's time constant (the paper's defaults;
/// the normaliser's counts the coordinate's rows, see [`normalized_row`]'s pass 2).
const META_RATE: f32 = 0.05;
const META_TAU: f32 = 1e4;
/// Gains stay within [1/1000, 1000].
const MAX_LOG_GAIN: f32 = 6.907_755;
/// `accum`'s prior, in rows of the largest gradient.
pub const PRIOR_ROWS: f32 = 2.0;
/// The global gain's meta step size, its normaliser's time constant (rows), and its bound.
const GLOBAL_META_RATE: f32 = 0.002;
const GLOBAL_TAU: f32 = 1e4;
const MAX_GLOBAL_LOG_GAIN: f32 = 3.0;

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

/// Buffers reused across rows and batches (nothing is allocated per row), and the
/// normalized optimizer's global gain, which lives across a worker's batches.
#[derive(Debug, Default)]
pub struct Scratch {
    z: Vec<f32>,
    norm: Vec<f32>,
    total: Vec<f32>,
    u: Vec<f32>,
    /// each coordinate's gained step of the row, in pass 2's order, for pass 3
    steps: Vec<f32>,
    global: GlobalGain,
}

/// The global gain of the normalized optimizer's steps (see the module's header).
#[derive(Debug, Default, Clone, Copy)]
struct GlobalGain {
    /// log of the gain
    log: f32,
    /// the running scale of its meta-gradient (Autostep's normaliser)
    norm: f32,
}

impl GlobalGain {
    /// Follows one row's meta-gradient (its coordinates' updates times their traces).
    fn follow(&mut self, meta: f32) {
        if !meta.is_finite() {
            return;
        }
        let m = meta.abs();
        self.norm = m.max(self.norm + (m - self.norm) / GLOBAL_TAU);
        if self.norm > 0.0 {
            let step = (GLOBAL_META_RATE * meta / self.norm).clamp(-1.0, 1.0);
            self.log = (self.log + step).clamp(-MAX_GLOBAL_LOG_GAIN, MAX_GLOBAL_LOG_GAIN);
        }
    }
}

impl Scratch {
    /// The normalized optimizer's global gain so far.
    pub fn global_gain(&self) -> f32 {
        self.global.log.exp()
    }
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
) -> Result<f64, String> {
    check_shapes(opt, p)?;
    let k = p.outputs;
    for v in [&mut s.z, &mut s.norm, &mut s.total, &mut s.u] {
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
        if opt.kind == OptimizerKind::Normalized {
            normalized_row(l, opt.lr, p, batch, sparse, (dense, hashed), r, s);
            continue;
        }
        let d = &s.z[..];
        let (mut t0, mut t1) = (0f32, 0f32);
        inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
            let part = p.part(which);
            let (a, b) = match &mut part.s[..] {
                [a, b, ..] => (&mut a[..], &mut b[..]),
                [a] => (&mut a[..], &mut [][..]),
                [] => (&mut [][..], &mut [][..]),
            };
            for (o, d) in d.iter().enumerate() {
                let i = at + o;
                let s0 = a.get_mut(i).unwrap_or(&mut t0);
                let s1 = b.get_mut(i).unwrap_or(&mut t1);
                rule.step(opt.kind, &mut part.w[i], s0, s1, d * x);
            }
        });
    }
    Ok(loss)
}

/// Every part with weights has the optimizer's slots, each as long as its weights, and
/// the bias has one value per output (what the rules index without checking).
fn check_shapes(opt: &OptimizerSpec, p: &LocalGlm<'_>) -> Result<(), String> {
    let want = crate::layout::optimizer_slots(opt.kind);
    if p.b.w.len() != p.outputs {
        return Err(format!("the bias has {} values for {} outputs", p.b.w.len(), p.outputs));
    }
    for (name, part) in [("w", &p.w), ("h", &p.h), ("b", &p.b)] {
        if part.w.is_empty() {
            continue; // a tensor the model (or this batch) lacks
        }
        if part.s.len() < want.len() || part.s.iter().take(want.len()).any(|s| s.len() != part.w.len()) {
            return Err(format!(
                "tensor {name:?}: the optimizer's slots ({}) are not all there, as long as its {} weights",
                want.join(", "),
                part.w.len()
            ));
        }
    }
    Ok(())
}

/// The normalized optimizer's update of row `r`, whose score derivatives are in `s.z`.
#[allow(clippy::too_many_arguments)]
fn normalized_row(
    l: Link,
    lr: f32,
    p: &mut LocalGlm<'_>,
    batch: &Batch,
    sparse: &[u32],
    (dense, hashed): (bool, bool),
    r: usize,
    s: &mut Scratch,
) {
    let k = p.outputs;
    let d = &s.z[..];
    let identity = l == Link::Identity;
    // the prior is in rows of the largest gradient; a regression's `accum` sums x², which
    // is not one (and a heavy-tailed input's largest x² would hold its steps back)
    let prior = if identity { 0.0 } else { PRIOR_ROWS };
    // pass 1: rescale to a larger input, grow the accumulators, sum the row's norm
    s.norm.iter_mut().chain(s.total.iter_mut()).for_each(|v| *v = 0.0);
    let norm = &mut s.norm;
    inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
        let ax = x.abs();
        if ax == 0.0 {
            return;
        }
        let part = p.part(which);
        for (o, d) in d.iter().enumerate() {
            let i = at + o;
            let scale = part.s[SCALE][i];
            if ax > scale {
                if scale > 0.0 {
                    part.w[i] *= scale / ax;
                }
                part.s[SCALE][i] = ax;
            }
            let xs = x / part.s[SCALE][i];
            norm[o] += xs * xs;
            // squared loss: Σx², so the step is equivariant to the label's unit
            part.s[ACCUM][i] += if identity { x * x } else { (d * x) * (d * x) };
        }
    });
    // pass 2: each coordinate's gain follows the meta-gradient (the update direction, -d·x,
    // times the trace of its recent updates); the row's total step per output
    let mut meta_sum = 0f32;
    let (norm, total, steps) = (&s.norm, &mut s.total, &mut s.steps);
    steps.clear();
    inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
        if x == 0.0 {
            return;
        }
        let part = p.part(which);
        for (o, d) in d.iter().enumerate() {
            let i = at + o;
            let base = base_step(lr, norm[o], part.s[ACCUM][i], part.s[SCALE][i], prior);
            let meta = -d * x * part.s[TRACE][i];
            let gain = part.s[LOGGAIN][i].exp();
            if !meta.is_finite() {
                steps.push(gain * base);
                continue;
            }
            meta_sum += meta;
            // the normaliser forgets over META_TAU of the coordinate's rows. Autostep's
            // forgets at the pace of the coordinate's step (times α·x²), which the AdaGrad
            // base shrinks as 1/√rows and a dense row shares among hundreds of inputs: it
            // kept its first rows' maximum, and a dense model's gains stopped learning
            // (Fashion-MNIST's softmax, one worker, 3 epochs: 0.8301 then, 0.8318 now)
            let v = part.s[METANORM][i];
            let v = meta.abs().max(v + (meta.abs() - v) / META_TAU);
            part.s[METANORM][i] = v;
            let step = if v > 0.0 {
                let g = &mut part.s[LOGGAIN][i];
                *g = (*g + (META_RATE * meta / v).clamp(-1.0, 1.0)).clamp(-MAX_LOG_GAIN, MAX_LOG_GAIN);
                g.exp() * base
            } else {
                gain * base
            };
            steps.push(step);
            total[o] += step * x * x;
        }
    });
    // the global gain follows the row's summed meta-gradient, then scales every step
    s.global.follow(meta_sum);
    let global = s.global.log.exp();
    // the multiplier of each output's steps (global gain included): capped at a total of
    // 1, or the invariant closed form (never past the label)
    for o in 0..k {
        let h = s.total[o] * global;
        s.u[o] = global
            * match l {
                Link::Identity if h > 1e-6 => (1.0 - (-h).exp()) / h,
                Link::Logistic if h > 1e-6 && d[o].abs() > 1e-9 => invariant_logistic(d[o], batch.labels[r] > 0.5, h),
                _ => 1.0 / h.max(1.0),
            };
    }
    // pass 3: the updates, and each coordinate's trace of them
    let (u, steps) = (&s.u, &s.steps);
    let mut next = 0;
    inputs(batch, sparse, dense, hashed, k, r, |which, at, x| {
        if x == 0.0 {
            return;
        }
        let part = p.part(which);
        for (o, d) in d.iter().enumerate() {
            let i = at + o;
            let a = steps.get(next).copied().unwrap_or(0.0) * u[o];
            next += 1;
            let change = -a * d * x;
            part.w[i] += change;
            let t = &mut part.s[TRACE][i];
            *t = *t * (1.0 - a * x * x).max(0.0) + change;
        }
    });
}

/// The multiplier of a logistic row's steps that follows the loss's own curve: the score
/// `s` moves as `ds/dτ = h·(y − σ(s))` for τ from 0 to 1 (infinitely many small steps
/// of total size `h`), which never passes the label, however large `h` (Vowpal Wabbit's
/// invariant update). For y = 1 the solution is `s + eˢ = s₀ + e^s₀ + h` (y = 0: the
/// same in −s), solved by Newton's method from the right of the root; the multiplier is
/// the score's move over the plain step's, `-h·d`. `d = σ(s₀) − y`.
fn invariant_logistic(d: f32, y: bool, h: f32) -> f32 {
    let p = (f64::from(d) + if y { 1.0 } else { 0.0 }).clamp(1e-12, 1.0 - 1e-12);
    // t: the score in the label's direction
    let t0 = if y { (p / (1.0 - p)).ln() } else { ((1.0 - p) / p).ln() };
    let h = f64::from(h);
    let c = t0 + t0.exp() + h;
    // an Euler step overshoots (the slope falls as t grows), and so does ln c (for c > 1,
    // eᵗ = c − t < c at the root): Newton descends from the nearer, never overflowing
    let euler = t0 + h / (1.0 + t0.exp());
    let mut t = if c > 1.0 { euler.min(c.ln()) } else { euler };
    for _ in 0..30 {
        let et = t.exp();
        let next = t - (t + et - c) / (1.0 + et);
        if (next - t).abs() < 1e-9 * (1.0 + t.abs()) {
            t = next;
            break;
        }
        t = next;
    }
    let moved = t - t0; // in the label's direction; the plain step moves it h·|d|
    let plain = h * f64::from(d.abs());
    if moved.is_finite() && plain > 0.0 {
        (moved / plain).clamp(0.0, 1.0) as f32
    } else {
        1.0 / (h as f32).max(1.0)
    }
}

/// The normalized optimizer's step of one coordinate before its gains: `lr / (√(accum +
/// prior·scale²) · scale)` over the row's norm, `prior` in rows of the largest gradient
/// (0 before the coordinate has a gradient).
#[inline]
fn base_step(lr: f32, norm: f32, accum: f32, scale: f32, prior: f32) -> f32 {
    if accum > 0.0 && scale > 0.0 && norm > 0.0 {
        lr / (norm * (accum + prior * scale * scale).sqrt() * scale)
    } else {
        0.0
    }
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
        ws: Vec<Vec<f32>>,
        b: Vec<f32>,
        bs: Vec<Vec<f32>>,
    }

    impl Model {
        fn new(features: usize, outputs: usize) -> Model {
            let z = |n| vec![0f32; n];
            Model {
                w: z(features * outputs),
                ws: (0..5).map(|_| z(features * outputs)).collect(),
                b: z(outputs),
                bs: (0..5).map(|_| z(outputs)).collect(),
            }
        }

        fn train(&mut self, l: Link, opt: &OptimizerSpec, batch: &Batch, preds: &mut Vec<f32>) -> f64 {
            let mut p = LocalGlm {
                outputs: self.b.len(),
                w: Part { w: &mut self.w, s: self.ws.iter_mut().map(|v| &mut v[..]).collect() },
                h: Part::none(),
                b: Part { w: &mut self.b, s: self.bs.iter_mut().map(|v| &mut v[..]).collect() },
            };
            train_rows(l, opt, 1, &mut p, batch, &[], &mut Scratch::default(), Some(preds)).unwrap()
        }
    }

    /// 200 rows of two inputs in [-1, 1] and a linear label.
    fn linear_rows() -> Vec<(Vec<f32>, f32)> {
        (0..200)
            .map(|i| {
                let (a, b) = (((i * 37) % 11) as f32 / 5.0 - 1.0, ((i * 17) % 7) as f32 / 3.0 - 1.0);
                (vec![a, b], 2.0 * a - 0.5 * b + 0.3)
            })
            .collect()
    }

    #[test]
    fn normalized_updates_do_not_depend_on_a_features_scale() {
        // The same rows with feature 1 scaled by 1000: the same predictions, row by row.
        let opt = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        let rows = linear_rows();
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
    fn normalized_regression_does_not_depend_on_the_labels_unit() {
        // The same rows with the label in a unit 1000 times smaller: every prediction is
        // 1000 times larger (AdaGrad's Σ(d·x)² would make the steps 1000 times too small).
        let opt = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        let rows = linear_rows();
        let thousand: Vec<(Vec<f32>, f32)> = rows.iter().map(|(x, y)| (x.clone(), y * 1000.0)).collect();
        let (mut p1, mut p2) = (Vec::new(), Vec::new());
        Model::new(2, 1).train(Link::Identity, &opt, &dense_batch(&rows), &mut p1);
        Model::new(2, 1).train(Link::Identity, &opt, &dense_batch(&thousand), &mut p2);
        for (r, (a, b)) in p1.iter().zip(&p2).enumerate() {
            assert!((a * 1000.0 - b).abs() <= 1e-3 * (1.0 + b.abs()), "row {r}: {a} vs {b}");
        }
    }

    #[test]
    fn the_invariant_logistic_step_follows_the_loss_and_never_passes_the_label() {
        // small steps: the plain step; large ones: the score moves further than a step
        // capped at 1 would, but stays on the label's side of certainty
        assert!((invariant_logistic(-0.5, true, 1e-4) - 1.0).abs() < 1e-3);
        for (d, y) in [(-0.9f32, true), (0.3, false), (-0.01, true)] {
            for h in [0.5f32, 10.0, 1e3, 1e7] {
                let u = invariant_logistic(d, y, h);
                let p0 = f64::from(d) + if y { 1.0 } else { 0.0 };
                let s0 = (p0 / (1.0 - p0)).ln();
                let s1 = s0 - f64::from(u * h * d);
                assert!(u > 0.0 && u <= 1.0 && s1.is_finite(), "d {d} h {h}: u {u}");
                // it solved s + e^s = s0 + e^s0 + h (in the label's direction)
                let (t0, t1) = if y { (s0, s1) } else { (-s0, -s1) };
                let gap = (t1 + t1.exp()) - (t0 + t0.exp() + f64::from(h));
                assert!(gap.abs() < 1e-3 * (1.0 + f64::from(h)), "d {d} h {h}: off by {gap}");
                if h >= 10.0 {
                    assert!(f64::from(u * h * d.abs()) > f64::from(d.abs()), "d {d} h {h}: no further than the cap");
                }
            }
        }
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
    fn the_global_gain_grows_where_larger_steps_help_and_shrinks_on_noise() {
        // One of 500 rare inputs per row (each seen about 16 times, too few for its own
        // gain): a label the input decides (each update agrees with the last ones: larger
        // steps would have helped) against a label independent of it (updates cancel).
        const INPUTS: usize = 500;
        let opt = OptimizerSpec::new(OptimizerKind::Normalized, 0.5);
        let gain = |decided: bool| {
            let mut rng = crate::rng::SplitMix64::new(7);
            let rows: Vec<(Vec<f32>, f32)> = (0..8000)
                .map(|_| {
                    let id = (rng.next_u64() % INPUTS as u64) as usize;
                    let mut x = vec![0f32; INPUTS];
                    x[id] = 1.0;
                    let y = if decided { (id % 2) as f32 } else { (rng.next_u64() >> 63) as f32 };
                    (x, y)
                })
                .collect();
            let mut m = Model::new(INPUTS, 1);
            let mut p = LocalGlm {
                outputs: 1,
                w: Part { w: &mut m.w, s: m.ws.iter_mut().map(|v| &mut v[..]).collect() },
                h: Part::none(),
                b: Part { w: &mut m.b, s: m.bs.iter_mut().map(|v| &mut v[..]).collect() },
            };
            let mut scratch = Scratch::default();
            train_rows(Link::Logistic, &opt, 1, &mut p, &dense_batch(&rows), &[], &mut scratch, None).unwrap();
            scratch.global_gain()
        };
        let (decided, noise) = (gain(true), gain(false));
        assert!(decided > 2.0, "a label the input decides: global gain {decided}");
        assert!(noise < 1.0, "noise: global gain {noise}");
    }

    #[test]
    fn a_dense_coordinates_gain_normaliser_forgets_its_first_rows() {
        // 50 dense inputs and labels of noise: the steps shrink as 1/√rows, and so do the
        // meta-gradients. The normaliser must follow them down, or the gains stop learning
        // (Autostep's, forgetting at the pace of a step shared by 50 inputs, kept all of
        // its first rows' maximum here; it now keeps 0.16).
        const INPUTS: usize = 50;
        let opt = OptimizerSpec::new(OptimizerKind::Normalized, 0.0);
        let mut rng = crate::rng::SplitMix64::new(3);
        let mut rows = |n: usize| -> Vec<(Vec<f32>, f32)> {
            (0..n)
                .map(|_| {
                    let x = (0..INPUTS).map(|_| (rng.next_u64() % 1000) as f32 / 1000.0).collect();
                    (x, (rng.next_u64() >> 63) as f32)
                })
                .collect()
        };
        let mut m = Model::new(INPUTS, 1);
        let mut preds = Vec::new();
        m.train(Link::Logistic, &opt, &dense_batch(&rows(500)), &mut preds);
        let first: f32 = m.ws[METANORM].iter().sum();
        for _ in 0..6 {
            m.train(Link::Logistic, &opt, &dense_batch(&rows(5000)), &mut preds);
        }
        let later: f32 = m.ws[METANORM].iter().sum();
        assert!(first > 0.0 && later < 0.5 * first, "normaliser after 500 rows {first}, after 30500 {later}");
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
