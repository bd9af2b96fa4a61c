//! A partitioned model's data plane: a batch's pull and push split per partition and sent
//! straight to each partition's server, and the answers put back in the batch's order.
//!
//! The rule is [`accrete_core::partition::Partitioning`]'s: a split tensor's rows
//! `starts[p]..starts[p + 1]` live on partition p (renumbered from 0 there), every other
//! tensor whole on partition 0. Every push reaches every partition, with the gradient
//! rows that partition holds, or none: a progress mark, so each partition sees every
//! batch's (worker, incarnation, seq) (the cut of a global commit, the SSP clocks).
use crate::{Client, ClientError, Result};
use accrete_core::layout::layout;
use accrete_core::partition::{Partitioning, Placement};
use accrete_core::pull::{PullRequest, Pulled, Slice};
use accrete_core::push::Push;
use accrete_core::spec::local_name;
use accrete_core::view::{BatchParams, ModelView};
use accrete_core::ModelSpec;
use accrete_proto::v1 as pb;

/// Where each tensor of a model lives: the row starts of the split ones.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub base: String,
    pub parts: u32,
    /// (tensor, row starts (P + 1), cols) of every split tensor.
    split: Vec<(String, Vec<u64>, u64)>,
}

impl Plan {
    /// The plan of a model of more than one partition.
    pub fn of(spec: &ModelSpec) -> Option<Plan> {
        if spec.parts() <= 1 {
            return None;
        }
        let whole = spec.whole();
        let l = layout(&whole);
        let plan = Partitioning::plan(&l, whole.parts());
        let split = l
            .iter()
            .zip(plan.tensors)
            .filter_map(|(t, p)| match p {
                Placement::Rows { starts } => Some((t.name.to_string(), starts, t.cols as u64)),
                Placement::Whole { .. } => None,
            })
            .collect();
        Some(Plan { parts: whole.parts(), base: whole.name, split })
    }

    fn split_of(&self, tensor: &str) -> Option<(&[u64], u64)> {
        self.split.iter().find(|(n, _, _)| n == tensor).map(|(_, s, c)| (&s[..], *c))
    }

    pub fn local(&self, part: u32) -> String {
        local_name(&self.base, part)
    }
}

/// The partition of row `row` of a tensor split at `starts`.
fn part_of(starts: &[u64], row: u64) -> usize {
    starts.partition_point(|s| *s <= row).saturating_sub(1).min(starts.len().saturating_sub(2))
}

impl Client {
    /// [`Client::pull_batch`] of a partitioned model: one pull per partition, at once.
    pub(crate) async fn pull_split(
        &self,
        plan: &Plan,
        view: &ModelView,
        keys: &[u32],
        version: Option<u64>,
        worker: Option<(&str, u64)>,
        slots: bool,
    ) -> Result<BatchParams> {
        let (worker_id, clock) = worker.map_or((String::new(), 0), |(w, c)| (w.to_string(), c));
        let mut reqs: Vec<PullRequest> = (0..plan.parts)
            .map(|p| PullRequest {
                model: plan.local(p),
                version,
                worker_id: worker_id.clone(),
                clock,
                slots,
                ..Default::default()
            })
            .collect();
        for (tensor, hashed) in view.batch_tensors() {
            match (plan.split_of(tensor), hashed) {
                (None, false) => reqs[0].slices.push(Slice::Whole(tensor.into())),
                (None, true) if !keys.is_empty() => {
                    let keys = keys.iter().map(|k| *k as u64).collect();
                    reqs[0].slices.push(Slice::Rows { tensor: tensor.into(), keys });
                }
                (None, true) => {}
                (Some(_), false) => reqs.iter_mut().for_each(|r| r.slices.push(Slice::Whole(tensor.into()))),
                (Some((starts, _)), true) => {
                    let mut per: Vec<Vec<u64>> = vec![Vec::new(); plan.parts as usize];
                    for k in keys {
                        let p = part_of(starts, *k as u64);
                        per[p].push(*k as u64 - starts[p]);
                    }
                    for (p, keys) in per.into_iter().enumerate().filter(|(_, k)| !k.is_empty()) {
                        reqs[p].slices.push(Slice::Rows { tensor: tensor.into(), keys });
                    }
                }
            }
        }
        let mut tasks = Vec::new();
        for (p, req) in reqs.into_iter().enumerate() {
            let (server, mut c) = self.partition_server(&plan.base, p as u32, plan.parts);
            let name = self.server_name(server);
            tasks.push(tokio::spawn(async move {
                if req.slices.is_empty() && p > 0 && req.worker_id.is_empty() {
                    return Ok(Pulled::default());
                }
                c.pull(&req).await.map_err(|e| at_partition(e, p as u32, &name))
            }));
        }
        let mut pulled = Vec::with_capacity(tasks.len());
        for t in tasks {
            pulled.push(t.await.map_err(|e| ClientError::Protocol(format!("pull task failed: {e}")))??);
        }
        let first = &pulled[0];
        let mut out = Pulled {
            version: first.version,
            lineage_epoch: first.lineage_epoch,
            updates: first.updates,
            ..Default::default()
        };
        let slot_names: &[&str] = if slots { view.slot_names() } else { &[] };
        for (tensor, hashed) in view.batch_tensors() {
            if hashed && keys.is_empty() && plan.split_of(tensor).is_none() {
                continue;
            }
            let values = gather(plan, keys, &pulled, tensor, hashed, |p| p.get(tensor))?;
            out.tensors.push((tensor.to_string(), values));
            if tensor == "norm" || tensor == "cov" {
                continue;
            }
            for slot in slot_names {
                let values = gather(plan, keys, &pulled, tensor, hashed, |p| p.slot(tensor, slot))?;
                out.slots.push((tensor.to_string(), slot.to_string(), values));
            }
        }
        Ok(view.batch_params(out))
    }
}

/// One vector of `tensor` (its weights or a slot, `of` picks it from a partition's
/// answer) put together from the partitions' answers: a dense tensor's parts in order,
/// a hashed one's rows in the keys' order.
fn gather<'p>(
    plan: &Plan,
    keys: &[u32],
    pulled: &'p [Pulled],
    tensor: &str,
    hashed: bool,
    of: impl Fn(&'p Pulled) -> Option<&'p [f32]>,
) -> Result<Vec<f32>> {
    Ok(match (plan.split_of(tensor), hashed) {
        (None, _) => of(&pulled[0]).map(<[f32]>::to_vec).unwrap_or_default(),
        (Some(_), false) => pulled.iter().flat_map(|p| of(p).unwrap_or_default().iter().copied()).collect(),
        (Some((starts, cols)), true) => {
            let cols = cols as usize;
            let mut values = vec![0f32; keys.len() * cols];
            let mut next = vec![0usize; plan.parts as usize];
            for (i, k) in keys.iter().enumerate() {
                let p = part_of(starts, *k as u64);
                let from = of(&pulled[p]).unwrap_or_default();
                let at = next[p] * cols;
                let Some(row) = from.get(at..at + cols) else {
                    return Err(ClientError::Protocol(format!(
                        "partition {p} of model {:?} answered {} values of {tensor:?} for more keys",
                        plan.base,
                        from.len()
                    )));
                };
                values[i * cols..(i + 1) * cols].copy_from_slice(row);
                next[p] += 1;
            }
            values
        }
    })
}

/// A push's share for every partition, in one pass over its rows: each partition's
/// rows and ranges, renumbered from its first row and encoded straight into its message,
/// and the push's progress either way (a partition without rows gets a mark).
pub(crate) fn push_parts(plan: &Plan, push: &Push<'_>) -> Vec<pb::PushRequest> {
    let n = plan.parts as usize;
    let mut meta = push.meta.as_ref().map(pb::PushMeta::from);
    // Every part of a push with values anywhere counts as one update and one optimizer
    // step on its partition, whatever rows it holds (`PushMeta::update`).
    if push.grads.iter().any(|g| !g.values.is_empty()) {
        meta.get_or_insert_with(Default::default).update = true;
    }
    let mut out: Vec<pb::PushRequest> = (0..n)
        .map(|p| pb::PushRequest {
            model: plan.local(p as u32),
            lineage_epoch: push.lineage_epoch,
            grads: Vec::new(),
            meta: meta.clone(),
        })
        .collect();
    for g in &push.grads {
        match plan.split_of(g.tensor) {
            None => out[0].grads.push(pb::TensorChunk::from(g)),
            Some((starts, cols)) if !g.keys.is_empty() => {
                let cols = cols as usize;
                let guess = g.keys.len() / n + 16;
                let mut keys: Vec<Vec<u8>> = (0..n).map(|_| Vec::with_capacity(guess * 8)).collect();
                let mut values: Vec<Vec<u8>> = (0..n).map(|_| Vec::with_capacity(guess * cols * 4)).collect();
                for (i, k) in g.keys.iter().enumerate() {
                    // a key past the table lands on the last partition, which refuses it by name
                    let p = part_of(starts, *k as u64);
                    keys[p].extend_from_slice(&(*k as u64 - starts[p]).to_le_bytes());
                    for v in g.values.get(i * cols..(i + 1) * cols).unwrap_or_default() {
                        values[p].extend_from_slice(&v.to_le_bytes());
                    }
                }
                for (p, (k, v)) in keys.into_iter().zip(values).enumerate() {
                    if !k.is_empty() {
                        let tensor = g.tensor.to_string();
                        out[p].grads.push(pb::TensorChunk {
                            tensor,
                            slot: g.slot.to_string(),
                            keys: k.into(),
                            values: v.into(),
                            ..Default::default()
                        });
                    }
                }
            }
            Some((starts, cols)) => {
                // a dense range: the part of it inside each partition's rows
                for (p, req) in out.iter_mut().enumerate() {
                    let (lo, hi) = (starts[p] * cols, starts[p + 1] * cols);
                    let (a, b) = (g.offset.max(lo), (g.offset + g.values.len() as u64).min(hi));
                    if a < b {
                        let values = &g.values[(a - g.offset) as usize..(b - g.offset) as usize];
                        req.grads.push(pb::TensorChunk {
                            tensor: g.tensor.to_string(),
                            slot: g.slot.to_string(),
                            offset: a - lo,
                            values: accrete_proto::f32s_to_bytes(values),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    out
}

/// An error of one partition's call, naming the partition and its server when it could
/// not be reached.
pub(crate) fn at_partition(e: ClientError, part: u32, server: &str) -> ClientError {
    match e {
        ClientError::Unavailable(m) => ClientError::Unavailable(format!("partition {part} (server {server}): {m}")),
        ClientError::Connect { url, cause } => {
            ClientError::Unavailable(format!("partition {part} (server {server}): cannot connect to {url}: {cause}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrete_core::push::Gradient;
    use accrete_core::ModelKind;

    fn plan() -> Plan {
        let mut s = ModelSpec::new("fl", ModelKind::Logistic);
        s.hash_bits = 12;
        s.features = 2;
        s.partitions = 2;
        Plan::of(&s).unwrap()
    }

    #[test]
    fn a_push_is_split_by_row_range_and_marks_reach_every_partition() {
        let p = plan();
        assert_eq!(p.split_of("h").map(|(s, c)| (s.to_vec(), c)), Some((vec![0, 2048, 4096], 1)));
        let keys = [5u32, 3000, 2048];
        let values = [1.0f32, 2.0, 3.0];
        let push = Push {
            model: "fl",
            lineage_epoch: 7,
            grads: vec![
                Gradient { tensor: "h", keys: &keys, values: &values, ..Default::default() },
                Gradient { tensor: "b", values: &[0.5], ..Default::default() },
            ],
            meta: None,
        };
        let [p0, p1]: [pb::PushRequest; 2] = push_parts(&p, &push).try_into().unwrap();
        assert_eq!((p0.model.as_str(), p1.model.as_str()), ("fl", "fl#1"));
        assert_eq!(p0.grads.len(), 2, "row 5 of h and the bias stay on partition 0");
        assert_eq!(p0.grads[0].keys, 5u64.to_le_bytes().to_vec());
        let k1: Vec<u64> = p1.grads[0].keys.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(k1, vec![952, 0], "rows renumbered from the partition's first");
        let v1: Vec<f32> = p1.grads[0].values.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(v1, vec![2.0, 3.0]);
        assert!(p1.meta.as_ref().is_some_and(|m| m.update) && p0.meta.as_ref().is_some_and(|m| m.update));
        let only_bias = Push { grads: vec![push.grads[1]], ..push.clone() };
        let mark = push_parts(&p, &only_bias).remove(1);
        assert!(mark.grads.is_empty(), "partition 1 holds none of the rows");
        assert!(mark.meta.is_some_and(|m| m.update), "but counts the update and its optimizer step");
        let empty = Push { model: "fl", lineage_epoch: 7, grads: vec![], meta: None };
        let mark = push_parts(&p, &empty).remove(1);
        assert!(mark.grads.is_empty(), "a mark carries no gradient");
        assert!(!mark.meta.is_some_and(|m| m.update), "a push without values is no update anywhere");
        assert_eq!(part_of(&[0, 2048, 4096], 4095), 1);
        assert_eq!(part_of(&[0, 2048, 4096], 0), 0);
    }
}
