//! Parameter layouts: the named tensors of each model kind, and the optimizer slots kept
//! beside them. Tensor order is fixed per kind; the store's manifests rely on it.
use crate::spec::{ModelKind, ModelSpec, OptimizerKind};

/// One tensor of a model: `rows × cols` floats, row-major. Sparse tensors are hashed
/// tables addressed by row key; dense tensors by flat offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    pub rows: u64,
    pub cols: u32,
    pub sparse: bool,
    /// Biases start at zero even with a random initialisation.
    pub bias: bool,
    /// Not trained: running statistics, which pushes merge instead of applying an
    /// optimizer: `norm`, the dense inputs' count, mean and M2 rows; `cov`, the `rls`
    /// optimizer's co-moments of inputs and label ([`crate::lsq`]).
    pub stats: bool,
}

impl TensorSpec {
    pub fn len(&self) -> u64 {
        self.rows * self.cols as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Merges statistics `src` into `dst`, both this stats tensor's values: `norm`'s
    /// moments or `cov`'s co-moments, each by Chan et al.'s parallel formulas.
    pub fn merge_stats(&self, dst: &mut [f32], src: &[f32]) {
        if self.name == "cov" {
            crate::lsq::merge(dst, src);
        } else {
            crate::glm::merge_stats(dst, src, self.cols as usize);
        }
    }

    /// Whether value `k` of this stats tensor is a count or a sum of squares, which
    /// cannot be negative.
    pub fn non_negative_stat(&self, k: usize) -> bool {
        let f = self.cols as usize;
        if self.name == "cov" {
            crate::lsq::non_negative(f, k)
        } else {
            k < f || k >= 2 * f
        }
    }
}

fn dense(name: &'static str, rows: u64, cols: u32) -> TensorSpec {
    TensorSpec { name, rows, cols, sparse: false, bias: false, stats: false }
}

/// Running statistics of `features` dense inputs: rows count, mean, M2 (Welford).
fn norm(features: u32) -> TensorSpec {
    TensorSpec { name: "norm", rows: 3, cols: features, sparse: false, bias: false, stats: true }
}

/// The `rls` optimizer's statistics of `features` dense inputs and the label: count,
/// means and co-moments ([`crate::lsq`]).
fn cov(features: u32) -> TensorSpec {
    let cols = features + 1;
    TensorSpec { name: "cov", rows: crate::lsq::rows(features), cols, sparse: false, bias: false, stats: true }
}

fn bias(name: &'static str, cols: u32) -> TensorSpec {
    TensorSpec { name, rows: 1, cols, sparse: false, bias: true, stats: false }
}

fn hashed(name: &'static str, bits: u32, cols: u32) -> TensorSpec {
    TensorSpec { name, rows: 1u64 << bits, cols, sparse: true, bias: false, stats: false }
}

/// The tensors of a (validated) spec:
/// - linear / logistic / softmax: `w` (features × outputs, dense) if features > 0,
///   `h` (2^bits × outputs, hashed) if hash_bits > 0, `b` (outputs);
/// - fm: `h` (2^bits × 1) linear terms, `v` (2^bits × factors) latent factors, `b`;
/// - mlp: `w1` (features × hidden), `b1`, `w2` (hidden × outputs), `b2`;
/// - and, for kinds with dense inputs, `norm` (3 × features): the inputs' running count,
///   mean and M2, shared through the server so every worker standardises alike;
/// - with the `rls` optimizer, `cov` ((features + 3) × (features + 1)): the co-moments
///   of inputs and label its fit is solved from.
pub fn layout(spec: &ModelSpec) -> Vec<TensorSpec> {
    let out = spec.outputs();
    let mut t = Vec::new();
    match spec.kind {
        ModelKind::Linear | ModelKind::Logistic | ModelKind::Softmax => {
            if spec.features > 0 {
                t.push(dense("w", spec.features as u64, out));
            }
            if spec.hash_bits > 0 {
                t.push(hashed("h", spec.hash_bits, out));
            }
            t.push(bias("b", out));
            if spec.features > 0 {
                t.push(norm(spec.features));
            }
            if spec.optimizer.kind == crate::OptimizerKind::Rls {
                t.push(cov(spec.features));
            }
        }
        ModelKind::Fm => {
            t.push(hashed("h", spec.hash_bits, 1));
            t.push(hashed("v", spec.hash_bits, spec.factors));
            t.push(bias("b", 1));
        }
        ModelKind::Mlp => {
            t.push(dense("w1", spec.features as u64, spec.hidden));
            t.push(bias("b1", spec.hidden));
            t.push(dense("w2", spec.hidden as u64, out));
            t.push(bias("b2", out));
            t.push(norm(spec.features));
        }
    }
    t
}

/// The tensors a server keeps for its partition of a model (`spec.partition` of
/// `spec.partitions`): the rows [`crate::partition::Partitioning`] gives it, renumbered
/// from 0, and no tensor of which it holds no rows. The whole layout for a model in one
/// partition.
pub fn local_layout(spec: &ModelSpec) -> Vec<TensorSpec> {
    let full = layout(spec);
    if spec.parts() == 1 {
        return full;
    }
    let plan = crate::partition::Partitioning::plan(&full, spec.parts());
    let rows = plan.rows_of(spec.partition, &full);
    full.into_iter().zip(rows).filter(|(_, (_, n))| *n > 0).map(|(t, (_, n))| TensorSpec { rows: n, ..t }).collect()
}

/// Optimizer state kept per parameter, in storage order.
pub fn optimizer_slots(kind: OptimizerKind) -> &'static [&'static str] {
    match kind {
        OptimizerKind::Sgd => &[],
        OptimizerKind::Momentum => &["velocity"],
        OptimizerKind::Adagrad => &["accum"],
        OptimizerKind::Adam => &["m", "v"],
        OptimizerKind::Ftrl => &["z", "n"],
        OptimizerKind::Normalized => &crate::local::NORMALIZED_SLOTS,
        OptimizerKind::Rls => &[],
    }
}

/// All slots of a model: the optimizer's, then `ema` when an EMA of weights is kept.
pub fn slots(spec: &ModelSpec) -> Vec<&'static str> {
    let mut s = optimizer_slots(spec.optimizer.kind).to_vec();
    if spec.ema_decay > 0.0 {
        s.push("ema");
    }
    s
}
