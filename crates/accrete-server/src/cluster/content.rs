//! A partitioned model's content as one whole, at its home: gathering a version's rows
//! from every partition (export), and splitting whole parameters over them (import, as
//! one new version number on every partition under a new lineage epoch).
use super::{blocking, Cluster};
use crate::error::Result;
use crate::model::ModelHandle;
use crate::registry::Registry;
use accrete_core::partition::Partitioning;
use accrete_core::spec::local_name;
use accrete_core::{layout, ModelSpec, Params, TensorSpec, VersionRecord};
use std::sync::Arc;

impl Cluster {
    /// The whole parameters of version `version` of the partitioned model `h` (this is its
    /// home, and `home` its own partition's): every other partition's rows fetched from
    /// its server and put in place. (One whole copy, plus one partition's at a time.)
    pub async fn gather(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        version: u64,
        home: Params,
    ) -> Result<Params> {
        let whole = h.spec().whole();
        let parts = whole.parts();
        let full_layout = layout(&whole);
        let plan = Partitioning::plan(&full_layout, parts);
        let mut full = Params::zeros(&whole_spec(&whole));
        full.steps = home.steps;
        place(&mut full, &home, &plan, &full_layout, 0);
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let ps = whole.partition_spec(p);
            let part = if i == self.map.me {
                let m = reg.get(&ps.name)?;
                blocking(move || m.load_version(version)).await?.1
            } else {
                self.peer(i).export_params(&ps, version).await.map_err(|e| self.named(e, h.name(), p, i))?
            };
            place(&mut full, &part, &plan, &full_layout, p);
        }
        Ok(full)
    }

    /// Imports whole parameters (checked against the whole layout) into the partitioned
    /// model `h`: each partition's rows as one new version number, the others first and
    /// the home last (so the version is listed only once every partition has it), each
    /// under a new lineage epoch. A retry of the same request (non-empty id) is answered
    /// with the version the first made, as on one server.
    pub async fn import(
        &self,
        reg: &Arc<Registry>,
        h: &Arc<ModelHandle>,
        whole_params: Params,
        source: &str,
        request: &str,
    ) -> Result<VersionRecord> {
        let lock = self.commit_lock(h.name());
        let _serial = lock.lock().await;
        if let Some(rec) = h.answer_of(request)? {
            return Ok(rec);
        }
        let whole = h.spec().whole();
        let parts = whole.parts();
        let full_layout = layout(&whole);
        let plan = Partitioning::plan(&full_layout, parts);
        let at = self.next_install(reg, h).await?;
        for p in 1..parts {
            let i = self.partition_server(h.name(), p, parts);
            let ps = whole.partition_spec(p);
            let part = extract(&whole_params, &ps, &plan, &full_layout);
            if i == self.map.me {
                let (m, source) = (reg.get(&ps.name)?, source.to_string());
                blocking(move || m.import_at(part, &source, "", at)).await?;
            } else {
                self.peer(i)
                    .import_params(&local_name(h.name(), p), &part, (at.version, at.epoch), source)
                    .await
                    .map_err(|e| self.named(e, h.name(), p, i))?;
            }
        }
        let part = extract(&whole_params, &whole.partition_spec(0), &plan, &full_layout);
        let (hh, source, request) = (h.clone(), source.to_string(), request.to_string());
        let rec = blocking(move || hh.import_at(part, &source, &request, at)).await?;
        self.retain_all(reg, h).await;
        Ok(rec)
    }
}

/// The spec of a partitioned model's parameters as one whole (one partition).
pub fn whole_spec(whole: &ModelSpec) -> ModelSpec {
    ModelSpec { partitions: 1, partition: 0, ..whole.clone() }
}

/// Copies partition `part`'s tensors (weights and slots) into their rows of `full`.
fn place(full: &mut Params, part_params: &Params, plan: &Partitioning, layout: &[TensorSpec], part: u32) {
    let rows = plan.rows_of(part, layout);
    for t in &part_params.tensors {
        let Some(ft) = full.tensor_index(t.spec.name) else { continue };
        let at = (rows[ft].0 * layout[ft].cols as u64) as usize;
        let dst = &mut full.tensors[ft];
        let n = t.w.len().min(dst.w.len().saturating_sub(at));
        dst.w[at..at + n].copy_from_slice(&t.w[..n]);
        for (d, s) in dst.slots.iter_mut().zip(&t.slots) {
            let n = s.len().min(d.len().saturating_sub(at));
            d[at..at + n].copy_from_slice(&s[..n]);
        }
    }
}

/// Partition `ps.partition`'s rows of whole parameters (weights and slots), in its local
/// layout; the inverse of [`place`].
fn extract(full: &Params, ps: &ModelSpec, plan: &Partitioning, layout: &[TensorSpec]) -> Params {
    let mut part = Params::zeros(ps);
    part.steps = full.steps;
    let rows = plan.rows_of(ps.partition, layout);
    for t in &mut part.tensors {
        let Some(ft) = full.tensor_index(t.spec.name) else { continue };
        let at = (rows[ft].0 * layout[ft].cols as u64) as usize;
        let src = &full.tensors[ft];
        let n = t.w.len().min(src.w.len().saturating_sub(at));
        t.w[..n].copy_from_slice(&src.w[at..at + n]);
        for (d, s) in t.slots.iter_mut().zip(&src.slots) {
            let n = d.len().min(s.len().saturating_sub(at));
            d[..n].copy_from_slice(&s[at..at + n]);
        }
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrete_core::{ModelKind, OptimizerKind, OptimizerSpec};

    #[test]
    fn extract_then_place_gives_the_whole_back() {
        let whole = ModelSpec {
            hash_bits: 5,
            features: 3,
            partitions: 3,
            optimizer: OptimizerSpec::new(OptimizerKind::Adagrad, 0.1),
            ..ModelSpec::new("m", ModelKind::Logistic)
        };
        let l = layout(&whole);
        let plan = Partitioning::plan(&l, 3);
        let mut full = Params::zeros(&whole_spec(&whole));
        for (k, t) in full.tensors.iter_mut().enumerate() {
            for (j, w) in t.w.iter_mut().enumerate() {
                *w = (k * 1000 + j) as f32;
            }
            for s in &mut t.slots {
                for (j, v) in s.iter_mut().enumerate() {
                    *v = (k * 1000 + j) as f32 + 0.5;
                }
            }
        }
        full.steps = 7;
        let mut back = Params::zeros(&whole_spec(&whole));
        for p in 0..3 {
            let part = extract(&full, &whole.partition_spec(p), &plan, &l);
            assert_eq!(part.steps, 7);
            place(&mut back, &part, &plan, &l, p);
        }
        for (a, b) in full.tensors.iter().zip(&back.tensors) {
            assert_eq!(a.w, b.w, "{}", a.spec.name);
            assert_eq!(a.slots, b.slots, "{}", a.spec.name);
        }
    }
}
