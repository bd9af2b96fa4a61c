//! What never changes for a model ([`Shape`]: name, layout, consistency, commit policy),
//! and the validation of a push against it, done before any lock: a [`Checked`] push is
//! the only kind the engine applies.
use crate::error::{Result, ServiceError};
use accrete_core::layout::{local_layout, slots, TensorSpec};
use accrete_core::optim::{Keys, LeBytes, LeKeys};
use accrete_core::params::{check_dense, check_rows};
use accrete_core::progressive::BINS;
use accrete_core::push::PushMeta;
use accrete_core::{CommitPolicy, ConsistencyMode, ModelSpec};

pub(super) const MAX_NAME_BYTES: usize = 256;
const MAX_SHARD_BYTES: usize = 4096;
const MAX_ROWS_PER_PUSH: u64 = 1 << 40;

/// One gradient of a push: a dense range (`keys` empty) or sparse rows, straight from the
/// request's bytes. In a push of changes (`PushMeta::changes`) it is the change of the
/// weights (`slot` empty) or of an optimizer slot.
#[derive(Debug, Clone, Copy)]
pub struct Grad<'a> {
    pub tensor: &'a str,
    pub slot: &'a str,
    pub offset: u64,
    pub keys: LeKeys<'a>,
    pub values: &'a [u8],
}

/// A model's immutable description, shared by its engine and its runtime.
#[derive(Debug)]
pub struct Shape {
    pub name: String,
    pub layout: Vec<TensorSpec>,
    /// The optimizer's slots (not the EMA): what a push of changes may carry besides weights.
    pub slots: Vec<&'static str>,
    pub consistency: ConsistencyMode,
    pub staleness: u32,
    pub commit: CommitPolicy,
    /// The lineage epoch the model began at; an older one belongs to a deleted model of
    /// the same name.
    pub first_epoch: u64,
    /// The weights are fitted by the server from the pushed statistics (`rls`): a push
    /// carries nothing else.
    pub fitted: bool,
}

/// A push whose gradients and metadata passed [`Shape::check`], with each gradient's
/// tensor index.
#[derive(Debug)]
pub struct Checked<'a> {
    grads: &'a [Grad<'a>],
    tensors: Vec<usize>,
    /// Each change's slot (`None` = the weights); all `None` in a push of gradients.
    slots: Vec<Option<usize>>,
    meta: &'a PushMeta,
}

impl Checked<'_> {
    pub fn meta(&self) -> &PushMeta {
        self.meta
    }

    /// Each gradient with its tensor index.
    pub fn grads(&self) -> impl Iterator<Item = (usize, &Grad<'_>)> {
        self.tensors.iter().copied().zip(self.grads)
    }

    /// Each value chunk with its tensor index and slot (`None` = the weights).
    pub fn chunks(&self) -> impl Iterator<Item = (usize, Option<usize>, &Grad<'_>)> {
        self.tensors.iter().copied().zip(self.slots.iter().copied()).zip(self.grads).map(|((t, s), g)| (t, s, g))
    }

    /// The values are changes to merge (per-row training), not gradients.
    pub fn changes(&self) -> bool {
        self.meta.changes
    }

    /// Floats carried by the gradients.
    pub fn values(&self) -> u64 {
        self.grads.iter().map(|g| g.values.len() as u64 / 4).sum()
    }

    /// A joined worker's push (anonymous pushes are not fenced nor held at a barrier).
    pub fn from_worker(&self) -> bool {
        !self.meta.worker_id.is_empty()
    }
}

impl Shape {
    pub fn of(spec: &ModelSpec) -> Shape {
        Shape {
            name: spec.name.clone(),
            layout: local_layout(spec),
            slots: slots(spec).into_iter().filter(|s| *s != "ema").collect(),
            consistency: spec.consistency,
            staleness: spec.staleness,
            // A partitioned model's commits are global: its home's coordinator runs the
            // policy (`cluster.rs`), never a partition's engine.
            commit: if spec.parts() > 1 { accrete_core::CommitPolicy::default() } else { spec.commit },
            first_epoch: 1,
            fitted: spec.optimizer.kind == accrete_core::OptimizerKind::Rls,
        }
    }

    /// Validates the metadata (what version records keep of it must be storable) and every
    /// gradient (tensor exists, range or keys in bounds, value count, finite values). Any
    /// failure refuses the whole push.
    pub fn check<'a>(&self, grads: &'a [Grad<'a>], meta: &'a PushMeta) -> Result<Checked<'a>> {
        self.check_meta(meta)?;
        let tensors: Vec<usize> = grads.iter().map(|g| self.check_grad(g)).collect::<Result<_>>()?;
        if let Some(g) =
            grads.iter().zip(&tensors).find(|(_, t)| self.fitted && !self.layout[**t].stats).map(|(g, _)| g)
        {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: tensor {:?}: an rls model's weights are the least-squares fit of its statistics; push its `norm` and `cov` statistics, not weights or gradients",
                self.name, g.tensor
            )));
        }
        let slots = grads.iter().zip(&tensors).map(|(g, t)| self.check_slot(g, *t, meta)).collect::<Result<_>>()?;
        Ok(Checked { grads, tensors, slots, meta })
    }

    /// The slot a chunk changes: only a push of changes names one, an optimizer slot of
    /// this model, of a trained tensor.
    fn check_slot(&self, g: &Grad<'_>, t: usize, meta: &PushMeta) -> Result<Option<usize>> {
        if g.slot.is_empty() {
            return Ok(None);
        }
        let bad = |m: String| ServiceError::Invalid(format!("model {:?}: tensor {:?}: {m}", self.name, g.tensor));
        if !meta.changes {
            return Err(bad(format!("a push of gradients carries no slots (got {:?})", g.slot)));
        }
        if self.layout[t].stats {
            return Err(bad(format!("input statistics have no optimizer slot {:?}", g.slot)));
        }
        let Some(i) = self.slots.iter().position(|s| *s == g.slot) else {
            return Err(bad(format!(
                "slot {:?} is not one of this model's optimizer slots ({})",
                g.slot,
                if self.slots.is_empty() { "it has none".to_string() } else { self.slots.join(", ") }
            )));
        };
        // A dense slot's change is the whole tensor (a BSP round replaces or takes the
        // maximum over what it holds, and a gap would read as zeros).
        let spec = &self.layout[t];
        if g.keys.is_empty() && (g.offset != 0 || g.values.len() as u64 / 4 != spec.len()) {
            return Err(bad(format!(
                "a change of slot {:?} carries the whole dense tensor ({} floats), got {} from offset {}",
                g.slot,
                spec.len(),
                g.values.len() / 4,
                g.offset
            )));
        }
        // Sums of squares, second moments and the gains' normaliser (a scale, whose pushed
        // value replaces the server's) never go below zero.
        if matches!(g.slot, "accum" | "n" | "v" | "metanorm") {
            if let Some(v) = LeBytes(g.values).iter().find(|v| *v < 0.0) {
                return Err(bad(format!("slot {:?} cannot take a negative change or value ({v})", g.slot)));
            }
        }
        Ok(Some(i))
    }

    fn check_grad(&self, g: &Grad<'_>) -> Result<usize> {
        if !g.values.len().is_multiple_of(4) {
            let message = format!(
                "model {:?}: tensor {:?}: values have {} bytes, not a multiple of 4 (little-endian f32)",
                self.name,
                g.tensor,
                g.values.len()
            );
            return Err(ServiceError::Invalid(message));
        }
        if !g.keys.whole() {
            let message = format!(
                "model {:?}: tensor {:?}: keys have {} bytes, not a multiple of 8 (little-endian u64)",
                self.name,
                g.tensor,
                g.keys.0.len()
            );
            return Err(ServiceError::Invalid(message));
        }
        let v = LeBytes(g.values);
        let checked = if g.keys.is_empty() {
            check_dense(&self.layout, g.tensor, g.offset, &v)
        } else {
            check_rows(&self.layout, g.tensor, &g.keys, &v)
        };
        checked.map_err(|source| ServiceError::Update { model: self.name.clone(), source })
    }

    fn check_meta(&self, m: &PushMeta) -> Result<()> {
        let bad = |what: String| {
            ServiceError::Invalid(format!("model {:?}: push from worker {:?}: {what}", self.name, m.worker_id))
        };
        if !(m.loss_sum.is_finite() && m.loss_sum >= 0.0) {
            return Err(bad(format!("loss_sum {} is not a finite, non-negative number", m.loss_sum)));
        }
        if m.worker_id.len() > MAX_NAME_BYTES || m.shard.len() > MAX_SHARD_BYTES {
            return Err(bad(format!(
                "worker_id ({} bytes) or shard ({} bytes) is longer than {MAX_NAME_BYTES} / {MAX_SHARD_BYTES} bytes",
                m.worker_id.len(),
                m.shard.len()
            )));
        }
        if m.rows > MAX_ROWS_PER_PUSH {
            return Err(bad(format!("rows {} is more than {MAX_ROWS_PER_PUSH} in one push", m.rows)));
        }
        if m.hits > m.rows {
            return Err(bad(format!("hits {} is more than its rows {}", m.hits, m.rows)));
        }
        let binned: u64 = m.hist.iter().map(|c| u64::from(*c)).sum();
        if !m.hist.is_empty() && (m.hist.len() != 2 * BINS || binned != m.rows) {
            return Err(bad(format!(
                "hist has {} counts summing to {binned}; expected {} summing to its rows {}",
                m.hist.len(),
                2 * BINS,
                m.rows
            )));
        }
        Ok(())
    }
}
