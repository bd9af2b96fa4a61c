//! Per-row training (the default for linear, logistic and softmax models): the batch's
//! parameters are pulled with their optimizer slots, every row is predicted and then
//! trained on the worker's copy by the model's own optimizer ([`accrete_core::local`]),
//! and the push carries what the rows changed — the weights' and each slot's change, a
//! running maximum's new value — for the server to merge. One pull and one push per
//! batch, as in batch training; FM and MLP models train by batch gradients.
use accrete_core::features::Batch;
use accrete_core::glm::Link;
use accrete_core::kinds::Tensors;
use accrete_core::local::{self, LocalGlm, Part, Scratch};
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
        Push { model: &view.spec.name, lineage_epoch: epoch, grads: out, meta: Some(meta) }
    }
}
