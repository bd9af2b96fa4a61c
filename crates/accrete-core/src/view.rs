//! A model as the roles that train or score it see it: its dimensions and the tensors a
//! batch needs, and how those are pulled (dense tensors whole, hashed tables by the
//! batch's rows, the shared input statistics) and laid out for [`crate::kinds`].
use crate::kinds::{Dims, Tensors};
use crate::layout::layout;
use crate::pull::{Pulled, Slice};
use crate::spec::ModelSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    pub spec: ModelSpec,
    pub dims: Dims,
    /// Trained tensors: (name, hashed) in layout order.
    pub tensors: Vec<(String, bool)>,
    /// The model keeps running statistics of its dense inputs (`norm`).
    pub has_norm: bool,
}

/// The parameters a batch is trained or scored with: hashed tables compacted to the
/// batch's distinct rows, and the input statistics.
#[derive(Debug, Clone, Default)]
pub struct BatchParams {
    pub tensors: Tensors,
    pub norm: Vec<f32>,
    pub version: u64,
    pub lineage_epoch: u64,
}

impl ModelView {
    pub fn of(spec: &ModelSpec) -> ModelView {
        let l = layout(spec);
        ModelView {
            spec: spec.clone(),
            dims: Dims::of(spec),
            tensors: l.iter().filter(|t| !t.stats).map(|t| (t.name.to_string(), t.sparse)).collect(),
            has_norm: l.iter().any(|t| t.stats),
        }
    }

    /// What a batch whose distinct hashed rows are `keys` needs.
    pub fn slices(&self, keys: &[u32]) -> Vec<Slice> {
        let mut slices = Vec::with_capacity(self.tensors.len() + 1);
        for (name, hashed) in &self.tensors {
            match hashed {
                false => slices.push(Slice::Whole(name.clone())),
                true if !keys.is_empty() => {
                    slices.push(Slice::Rows { tensor: name.clone(), keys: keys.iter().map(|k| *k as u64).collect() })
                }
                true => {}
            }
        }
        if self.has_norm {
            slices.push(Slice::Whole("norm".into()));
        }
        slices
    }

    /// Lays pulled slices out by tensor name.
    pub fn batch_params(&self, pulled: Pulled) -> BatchParams {
        let mut p = BatchParams { version: pulled.version, lineage_epoch: pulled.lineage_epoch, ..Default::default() };
        for (name, values) in pulled.tensors {
            match p.tensors.get_mut(&name) {
                Some(slot) => *slot = values,
                None if name == "norm" => p.norm = values,
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
        let names: Vec<(&str, bool)> = v.tensors.iter().map(|(n, h)| (n.as_str(), *h)).collect();
        assert!(names.contains(&("h", true)) && names.contains(&("w", false)), "{names:?}");
        let s = v.slices(&[3, 1]);
        assert!(s.contains(&Slice::Rows { tensor: "h".into(), keys: vec![3, 1] }));
        assert_eq!(s.last(), Some(&Slice::Whole("norm".into())));
        assert!(!v.slices(&[]).iter().any(|s| s.tensor() == "h"));
    }
}
