//! The data plane's messages: pushes, pulls, joins, predictions and feature rows.
use super::{bad, ConvertError};
use crate::v1 as pb;
use accrete_core::features::Batch;
use accrete_core::pull::{Joined, Predictions, PullRequest, Pulled, Slice};
use accrete_core::push::{Gradient, Push, PushAck, PushMeta};
use accrete_core::view::ModelView;

impl From<&PushMeta> for pb::PushMeta {
    fn from(m: &PushMeta) -> Self {
        pb::PushMeta {
            worker_id: m.worker_id.clone(),
            incarnation: m.incarnation,
            seq: m.seq,
            shard: m.shard.clone(),
            offset: m.offset,
            pass: m.pass,
            clock: m.clock,
            rows: m.rows,
            loss_sum: m.loss_sum,
            update: m.update,
            changes: m.changes,
            base_updates: m.base_updates,
            hits: m.hits,
            hist: m.hist.clone(),
        }
    }
}

impl From<pb::PushMeta> for PushMeta {
    fn from(m: pb::PushMeta) -> Self {
        PushMeta {
            worker_id: m.worker_id,
            incarnation: m.incarnation,
            seq: m.seq,
            shard: m.shard,
            offset: m.offset,
            pass: m.pass,
            clock: m.clock,
            rows: m.rows,
            loss_sum: m.loss_sum,
            update: m.update,
            changes: m.changes,
            base_updates: m.base_updates,
            hits: m.hits,
            hist: m.hist,
        }
    }
}

/// Keys and values encoded straight from the caller's buffers.
impl From<&Gradient<'_>> for pb::TensorChunk {
    fn from(g: &Gradient<'_>) -> Self {
        pb::TensorChunk {
            tensor: g.tensor.to_string(),
            slot: g.slot.to_string(),
            offset: g.offset,
            keys: u32_keys_to_bytes(g.keys),
            values: crate::f32s_to_bytes(g.values),
            ..Default::default()
        }
    }
}

impl From<&Push<'_>> for pb::PushRequest {
    fn from(p: &Push<'_>) -> Self {
        pb::PushRequest {
            model: p.model.to_string(),
            lineage_epoch: p.lineage_epoch,
            grads: p.grads.iter().map(Into::into).collect(),
            meta: p.meta.as_ref().map(Into::into),
        }
    }
}

impl From<pb::PushAck> for PushAck {
    fn from(a: pb::PushAck) -> Self {
        PushAck { lineage_epoch: a.lineage_epoch, head_version: a.head_version, updates: a.updates }
    }
}

impl From<PushAck> for pb::PushAck {
    fn from(a: PushAck) -> Self {
        pb::PushAck { lineage_epoch: a.lineage_epoch, head_version: a.head_version, updates: a.updates }
    }
}

// ------------------------------------------------------------------ pulls, joins, predictions

impl From<&Slice> for pb::PullSlice {
    fn from(s: &Slice) -> Self {
        match s {
            Slice::Whole(t) => pb::PullSlice { tensor: t.clone(), ..Default::default() },
            Slice::Range { tensor, offset, len } => {
                pb::PullSlice { tensor: tensor.clone(), offset: *offset, len: *len, ..Default::default() }
            }
            Slice::Rows { tensor, keys } => {
                pb::PullSlice { tensor: tensor.clone(), keys: crate::keys_to_bytes(keys), ..Default::default() }
            }
        }
    }
}

/// Row keys of a batch (u32 hashed rows) as the wire's little-endian u64 bytes.
fn u32_keys_to_bytes(keys: &[u32]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(keys.len() * 8);
    crate::put_keys(&mut out, keys.iter().map(|k| *k as u64));
    out.into()
}

/// The pull of a batch's parameters ([`ModelView::batch_tensors`]): dense tensors whole,
/// hashed tables at the batch's distinct rows `keys` (none when it has no hashed rows),
/// of the live model (`version: None`) or a version. A joined worker names itself and its
/// clock, so SSP/BSP can hold the pull at the barrier.
pub fn batch_pull(
    view: &ModelView,
    keys: &[u32],
    version: Option<u64>,
    worker: Option<(&str, u64)>,
    slots: bool,
) -> pb::PullRequest {
    let encoded = u32_keys_to_bytes(keys);
    let slices = view
        .batch_tensors()
        .filter(|(_, hashed)| !hashed || !keys.is_empty())
        .map(|(tensor, hashed)| pb::PullSlice {
            tensor: tensor.to_string(),
            keys: if hashed { encoded.clone() } else { Default::default() },
            ..Default::default()
        })
        .collect();
    let (worker_id, clock) = worker.unwrap_or_default();
    pb::PullRequest {
        model: view.spec.name.clone(),
        version,
        slices,
        ema: false,
        worker_id: worker_id.to_string(),
        clock,
        slots,
    }
}

impl From<&PullRequest> for pb::PullRequest {
    fn from(r: &PullRequest) -> Self {
        pb::PullRequest {
            model: r.model.clone(),
            version: r.version,
            slices: r.slices.iter().map(Into::into).collect(),
            ema: r.ema,
            worker_id: r.worker_id.clone(),
            clock: r.clock,
            slots: r.slots,
        }
    }
}

impl TryFrom<pb::PullResponse> for Pulled {
    type Error = ConvertError;
    fn try_from(r: pb::PullResponse) -> Result<Self, ConvertError> {
        let (mut tensors, mut slots) = (Vec::new(), Vec::new());
        for t in r.tensors {
            let v = crate::bytes_to_f32s(&t.values)
                .ok_or_else(|| bad(format!("pulled tensor {:?}: values are not whole f32s", t.tensor)))?;
            // the EMA, when asked for, is served in the weights' place
            match t.slot.as_str() {
                "" | "ema" => tensors.push((t.tensor, v)),
                _ => slots.push((t.tensor, t.slot, v)),
            }
        }
        Ok(Pulled { version: r.version, lineage_epoch: r.lineage_epoch, updates: r.updates, tensors, slots })
    }
}

impl From<pb::JoinResponse> for Joined {
    fn from(j: pb::JoinResponse) -> Self {
        Joined {
            lease_ms: j.lease_ms,
            lineage_epoch: j.lineage_epoch,
            clock: j.clock,
            offset: j.offset,
            pass: j.pass,
            shard: j.shard,
            live_workers: j.live_workers,
            incarnation: j.incarnation,
            server_instance: j.server_instance,
        }
    }
}

impl From<&Joined> for pb::JoinResponse {
    fn from(j: &Joined) -> Self {
        pb::JoinResponse {
            lease_ms: j.lease_ms,
            lineage_epoch: j.lineage_epoch,
            clock: j.clock,
            offset: j.offset,
            pass: j.pass,
            shard: j.shard.clone(),
            live_workers: j.live_workers,
            incarnation: j.incarnation,
            server_instance: j.server_instance,
        }
    }
}

impl From<&Predictions> for pb::PredictResponse {
    fn from(p: &Predictions) -> Self {
        pb::PredictResponse { version: p.version, outputs: p.outputs, values: crate::f32s_to_bytes(&p.values) }
    }
}

impl TryFrom<pb::PredictResponse> for Predictions {
    type Error = ConvertError;
    fn try_from(r: pb::PredictResponse) -> Result<Self, ConvertError> {
        let values = crate::bytes_to_f32s(&r.values).ok_or_else(|| bad("predictions are not whole f32s".into()))?;
        Ok(Predictions { version: r.version, outputs: r.outputs, values })
    }
}

/// The wire form of a batch's features (raw dense values; labels are not sent).
impl From<&Batch> for pb::FeatureRows {
    fn from(b: &Batch) -> Self {
        pb::FeatureRows {
            rows: b.rows() as u32,
            features: b.features as u32,
            dense: crate::f32s_to_bytes(&b.dense),
            row_ptr: b.row_ptr.iter().map(|p| *p as u32).collect(),
            indices: b.idx.clone(),
            values: crate::f32s_to_bytes(&b.val),
        }
    }
}

/// Feature rows as a batch (labels unknown: NaN), with their structure checked: whole
/// floats, `rows × features` dense values, `rows + 1` non-decreasing row offsets ending at
/// the number of indices, one value per index. Model checks (feature count, index range)
/// are the caller's.
impl TryFrom<&pb::FeatureRows> for Batch {
    type Error = ConvertError;
    fn try_from(rows: &pb::FeatureRows) -> Result<Self, ConvertError> {
        let (n, f) = (rows.rows as usize, rows.features as usize);
        let dense = crate::bytes_to_f32s(&rows.dense).ok_or_else(|| bad("dense values are not whole f32s".into()))?;
        if n.checked_mul(f) != Some(dense.len()) {
            return Err(bad(format!("{} dense values for {n} rows of {f} features", dense.len())));
        }
        let vals = crate::bytes_to_f32s(&rows.values).ok_or_else(|| bad("values are not whole f32s".into()))?;
        let ptr_ok = rows.row_ptr.is_empty() && rows.indices.is_empty()
            || rows.row_ptr.len() == n + 1
                && rows.row_ptr.first() == Some(&0)
                && rows.row_ptr.windows(2).all(|w| w[0] <= w[1])
                && rows.row_ptr.last().copied() == Some(rows.indices.len() as u32);
        if !ptr_ok || vals.len() != rows.indices.len() {
            return Err(bad(
                "row_ptr must hold rows + 1 non-decreasing offsets ending at the number of indices, one value each"
                    .into(),
            ));
        }
        let mut b = Batch::new(f);
        b.dense = dense;
        b.idx = rows.indices.clone();
        b.val = vals;
        b.row_ptr =
            if rows.row_ptr.is_empty() { vec![0; n + 1] } else { rows.row_ptr.iter().map(|p| *p as usize).collect() };
        b.labels = vec![f32::NAN; n];
        Ok(b)
    }
}
