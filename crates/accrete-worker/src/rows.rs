//! Per-row training (the default for linear, logistic and softmax models): the batch's
//! parameters are pulled with their optimizer slots, every row is predicted and then
//! trained on the worker's copy by the model's own optimizer ([`accrete_core::local`]),
//! and the push carries what the rows changed — the weights' and each slot's change, a
//! running maximum's new value — for the server to merge. One pull and one push per
//! batch, as in batch training; FM and MLP models train by batch gradients. An `rls`
//! model's rows are scored by recursive least squares ([`accrete_core::lsq`]), and its
//! push carries only the batch's statistics: the server fits the weights.
use accrete_core::features::Batch;
use accrete_core::glm::Link;
use accrete_core::kinds::Tensors;
use accrete_core::local::{self, LocalGlm, Part, Scratch};
use accrete_core::lsq::{self, Rls};
use accrete_core::optim::{merge_of, Merge};
use accrete_core::push::{Gradient, Push, PushMeta};
use accrete_core::view::{BatchParams, ModelView};

/// The GLM tensors per-row training changes.
const GLM: [&str; 3] = ["w", "h", "b"];

/// Buffers of one worker's per-row training, reused batch after batch.
#[derive(Debug, Default)]
pub(crate) struct RowTrainer {
    /// The pulled weights and slots, to take the changes from.
    pulled: Vec<Tensors>,
    /// The changes of the last batch: the weights', then each slot's.
    changes: Vec<Tensors>,
    scratch: Scratch,
    /// The model's update count at the pull the last batch trained on.
    base: u64,
    /// An `rls` model's fit, and the co-moments of its last batch.
    rls: Rls,
    cov: Vec<f32>,
}

/// Per-row training applies to this model (a generalised linear one).
pub(crate) fn supports(view: &ModelView) -> bool {
    Link::of(view.dims.kind, view.dims.outputs).is_some()
}

impl RowTrainer {
    /// Trains the batch row by row on `p` (changed in place), each row's prediction
    /// before its update into `preds`; returns the batch's progressive loss.
    pub(crate) fn train(
        &mut self,
        view: &ModelView,
        p: &mut BatchParams,
        batch: &Batch,
        preds: &mut Vec<f32>,
    ) -> Result<f64, String> {
        if view.spec.optimizer.kind == accrete_core::OptimizerKind::Rls {
            return self.train_rls(view, p, batch, preds).map_err(|e| format!("model {:?}: {e}", view.spec.name));
        }
        let names = view.slot_names();
        if p.slots.len() != names.len() {
            return Err(format!(
                "model {:?}: the pull brought {} optimizer slots, the model has {} ({})",
                view.spec.name,
                p.slots.len(),
                names.len(),
                names.join(", ")
            ));
        }
        for (slot, s) in names.iter().zip(&p.slots) {
            for t in GLM {
                if s.get(t).len() != p.tensors.get(t).len() {
                    return Err(format!(
                        "model {:?}: tensor {t:?}: the pull brought {} values of slot {slot:?} for {} weights",
                        view.spec.name,
                        s.get(t).len(),
                        p.tensors.get(t).len()
                    ));
                }
            }
        }
        let link = Link::of(view.dims.kind, view.dims.outputs).ok_or("not a generalised linear model")?;
        self.pulled.resize_with(1 + names.len(), Tensors::default);
        self.pulled[0].clone_from(&p.tensors);
        for (dst, s) in self.pulled[1..].iter_mut().zip(&p.slots) {
            dst.clone_from(s);
        }
        let (mut ws, mut hs, mut bs) = (Vec::new(), Vec::new(), Vec::new());
        for s in p.slots.iter_mut() {
            let Tensors { w, h, b, .. } = s;
            ws.push(&mut w[..]);
            hs.push(&mut h[..]);
            bs.push(&mut b[..]);
        }
        let mut m = LocalGlm {
            outputs: view.dims.outputs,
            w: Part { w: &mut p.tensors.w, s: ws },
            h: Part { w: &mut p.tensors.h, s: hs },
            b: Part { w: &mut p.tensors.b, s: bs },
        };
        self.base = p.updates;
        let step = p.updates + 1;
        let loss = local::train_rows(
            link,
            &view.spec.optimizer,
            step,
            &mut m,
            batch,
            &batch.local,
            &mut self.scratch,
            Some(preds),
        )
        .map_err(|e| format!("model {:?}: {e}", view.spec.name))?;
        // the changes: new minus pulled (a running maximum or a decaying average: its new value)
        self.changes.resize_with(1 + names.len(), Tensors::default);
        for (v, pulled) in self.pulled.iter().enumerate() {
            let (now, merge) = match v {
                0 => (&p.tensors, Merge::Add),
                _ => (&p.slots[v - 1], merge_of(names[v - 1])),
            };
            for t in GLM {
                let (Some(out), a, b) = (self.changes[v].get_mut(t), now.get(t), pulled.get(t)) else { continue };
                out.clear();
                match merge {
                    Merge::Add | Merge::Mean => out.extend(a.iter().zip(b).map(|(a, b)| a - b)),
                    Merge::Max | Merge::Replace => out.extend_from_slice(a),
                }
            }
        }
        Ok(loss)
    }

    /// An `rls` model's batch: each row scored by the fit of every row before it (in the
    /// coordinates of the batch's standardisation, `p.norm`), then folded in; the push
    /// carries the batch's co-moments, from which the server fits the weights.
    fn train_rls(
        &mut self,
        view: &ModelView,
        p: &BatchParams,
        batch: &Batch,
        preds: &mut Vec<f32>,
    ) -> Result<f64, String> {
        let f = view.dims.features;
        let (w, b) = (&p.tensors.w, &p.tensors.b);
        if w.len() != f || b.len() != 1 || batch.dense.len() != batch.labels.len() * f {
            return Err(format!(
                "rls: {} weights, {} biases and {} inputs for {} rows of {f} features",
                w.len(),
                b.len(),
                batch.dense.len(),
                batch.labels.len()
            ));
        }
        self.rls.start(&p.cov, &p.norm, f)?;
        self.cov.clear();
        self.cov.resize(p.cov.len(), 0.0);
        lsq::add_standardised_rows(&mut self.cov, &batch.dense, &batch.labels, f, &p.norm);
        preds.clear();
        let mut loss = 0.0;
        for (z, y) in batch.dense.chunks_exact(f).zip(&batch.labels) {
            let s = self.rls.row(z, *y);
            preds.push(s);
            loss += f64::from(s - y).powi(2);
        }
        self.base = p.updates;
        self.changes.clear();
        Ok(loss)
    }

    /// The push of the last batch's changes (and its input statistics), borrowing the
    /// trainer's buffers.
    pub(crate) fn push<'a>(
        &'a self,
        view: &'a ModelView,
        epoch: u64,
        batch: &'a Batch,
        stats: &'a [f32],
        mut meta: PushMeta,
    ) -> Push<'a> {
        meta.changes = true;
        meta.base_updates = self.base;
        let names = view.slot_names();
        let mut out = Vec::with_capacity(view.tensors.len() * self.changes.len() + 1);
        for (name, hashed) in &view.tensors {
            let keys: &[u32] = if *hashed { &batch.uniq } else { &[] };
            for (v, c) in self.changes.iter().enumerate() {
                let values = c.get(name);
                if values.is_empty() {
                    continue;
                }
                let slot = if v == 0 { "" } else { names[v - 1] };
                out.push(Gradient { tensor: name, slot, offset: 0, keys, values });
            }
        }
        if view.has_norm {
            out.push(Gradient { tensor: "norm", values: stats, ..Default::default() });
        }
        if view.has_cov {
            out.push(Gradient { tensor: "cov", values: &self.cov, ..Default::default() });
        }
        Push { model: &view.spec.name, lineage_epoch: epoch, grads: out, meta: Some(meta) }
    }
}
