//! A model as the roles that train or score it see it: its dimensions and the tensors a
//! batch needs, and how those are pulled (dense tensors whole, hashed tables by the
//! batch's rows, the shared input statistics) and laid out for [`crate::kinds`].
use crate::kinds::{Dims, Tensors};
use crate::layout::layout;
use crate::pull::Pulled;
use crate::spec::ModelSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    pub spec: ModelSpec,
    pub dims: Dims,
    /// Trained tensors: (name, hashed) in layout order.
    pub tensors: Vec<(String, bool)>,
    /// The model keeps running statistics of its dense inputs (`norm`).
    pub has_norm: bool,
    /// The model keeps the `rls` optimizer's co-moments (`cov`).
    pub has_cov: bool,
}

/// The parameters a batch is trained or scored with: hashed tables compacted to the
/// batch's distinct rows, and the input statistics.
#[derive(Debug, Clone, Default)]
pub struct BatchParams {
    pub tensors: Tensors,
    /// When pulled with slots: each optimizer slot (in the model's order, the EMA left
    /// out) in the shapes of `tensors`.
    pub slots: Vec<Tensors>,
    pub norm: Vec<f32>,
    /// The `rls` optimizer's co-moments (empty for other models).
    pub cov: Vec<f32>,
    pub version: u64,
    pub lineage_epoch: u64,
    /// Updates applied to the live parameters pulled (Adam's step count).
    pub updates: u64,
}

impl ModelView {
    pub fn of(spec: &ModelSpec) -> ModelView {
        let l = layout(spec);
        ModelView {
            spec: spec.clone(),
            dims: Dims::of(spec),
            tensors: l.iter().filter(|t| !t.stats).map(|t| (t.name.to_string(), t.sparse)).collect(),
            has_norm: l.iter().any(|t| t.name == "norm"),
            has_cov: l.iter().any(|t| t.name == "cov"),
        }
    }

    /// What a batch needs, in order: each trained tensor, whole (dense) or by the batch's
    /// rows (hashed: `true`), then the statistics, whole.
    pub fn batch_tensors(&self) -> impl Iterator<Item = (&str, bool)> {
        let norm = self.has_norm.then_some(("norm", false));
        let cov = self.has_cov.then_some(("cov", false));
        self.tensors.iter().map(|(n, hashed)| (n.as_str(), *hashed)).chain(norm).chain(cov)
    }

    /// The optimizer slots a pull with slots brings, in order.
    pub fn slot_names(&self) -> &'static [&'static str] {
        crate::layout::optimizer_slots(self.spec.optimizer.kind)
    }

    /// Lays pulled slices out by tensor name.
    pub fn batch_params(&self, pulled: Pulled) -> BatchParams {
        let mut p = BatchParams {
            version: pulled.version,
            lineage_epoch: pulled.lineage_epoch,
            updates: pulled.updates,
            ..Default::default()
        };
        if !pulled.slots.is_empty() {
            p.slots = self.slot_names().iter().map(|_| Tensors::default()).collect();
        }
        for (name, slot, values) in pulled.slots {
            let i = self.slot_names().iter().position(|s| *s == slot);
            if let Some(dst) = i.and_then(|i| p.slots[i].get_mut(&name)) {
                *dst = values;
            }
        }
        for (name, values) in pulled.tensors {
            match p.tensors.get_mut(&name) {
                Some(slot) => *slot = values,
                None if name == "norm" => p.norm = values,
                None if name == "cov" => p.cov = values,
                None => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelKind;

    #[test]
    fn a_batch_pulls_dense_tensors_whole_and_hashed_rows_by_key() {
        let mut spec = ModelSpec::new("m", ModelKind::Logistic);
        spec.features = 2;
        spec.hash_bits = 4;
        let v = ModelView::of(&spec);
        assert!(v.has_norm);
        let wanted: Vec<(&str, bool)> = v.batch_tensors().collect();
        assert!(wanted.contains(&("h", true)) && wanted.contains(&("w", false)), "{wanted:?}");
        assert_eq!(wanted.last(), Some(&("norm", false)));
        let p = v.batch_params(Pulled {
            tensors: vec![("h".into(), vec![1.0]), ("norm".into(), vec![2.0; 6])],
            ..Default::default()
        });
        assert_eq!((p.tensors.h, p.norm.len()), (vec![1.0], 6));
    }
}
