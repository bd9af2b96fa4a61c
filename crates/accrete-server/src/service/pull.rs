//! Pull answers: the requested slices (whole tensors, dense ranges, rows by key) of the
//! live parameters or of a loaded version, as little-endian bytes — with each slice's
//! optimizer slots when asked — refused when the answer would be over the message limit
//! (checked before anything is copied).
use super::check_keys;
use crate::engine::Content;
use crate::error::{Result, ServiceError};
use accrete_core::optim::{Keys, LeKeys};
use accrete_core::Params;
use accrete_proto::v1 as pb;

/// Where a slice's values come from: (tensor, offset, len) of a dense range; rows by key
/// have offset and len 0.
type Plan = Vec<(usize, usize, usize)>;

/// The answer to `req` from `from` (the live state or a loaded version of `model`).
pub(super) fn answer(from: Content<'_>, model: &str, req: &pb::PullRequest, limit: usize) -> Result<pb::PullResponse> {
    let p = from.params;
    if req.ema && !p.slot_names.contains(&"ema") {
        return Err(ServiceError::Invalid(format!(
            "model {model:?} keeps no EMA of its weights (create it with --ema-decay)"
        )));
    }
    let whole: Vec<pb::PullSlice> = match req.slices.is_empty() {
        true => {
            p.tensors.iter().map(|t| pb::PullSlice { tensor: t.spec.name.to_string(), ..Default::default() }).collect()
        }
        false => Vec::new(),
    };
    let slices = if whole.is_empty() { &req.slices } else { &whole };
    let (plan, bytes) = plan(p, model, slices)?;
    // (the optimizer's slots: every slot but the EMA)
    let slots: Vec<(usize, &str)> = match req.slots {
        true => p.slot_names.iter().copied().enumerate().filter(|(_, n)| *n != "ema").collect(),
        false => Vec::new(),
    };
    let bytes = bytes.saturating_mul(1 + slots.len());
    if bytes > limit {
        let what = format!("pull of {} floats from model {model:?} (use Export or smaller slices)", bytes / 4);
        return Err(ServiceError::TooLarge { what, bytes, limit });
    }
    let mut tensors = Vec::with_capacity(slices.len() * (1 + slots.len()));
    for (s, (t, offset, len)) in slices.iter().zip(plan) {
        let label = if req.ema { "ema" } else { "" };
        tensors.push(copy(p.weights(t, req.ema), p.tensors[t].spec.cols as usize, label, s, offset, len));
        for (i, name) in &slots {
            tensors.push(copy(&p.tensors[t].slots[*i], p.tensors[t].spec.cols as usize, name, s, offset, len));
        }
    }
    Ok(pb::PullResponse { version: from.version, lineage_epoch: from.epoch, updates: from.updates, tensors })
}

/// Checks every slice against the layout; returns where each one's values are and the
/// answer's size in bytes.
fn plan(p: &Params, model: &str, slices: &[pb::PullSlice]) -> Result<(Plan, usize)> {
    let invalid = |t: &str, m: String| ServiceError::Invalid(format!("pull from model {model:?}: tensor {t:?}: {m}"));
    let mut bytes = 0usize;
    let mut plan = Vec::with_capacity(slices.len());
    for s in slices {
        let t = p.tensor_index(&s.tensor).ok_or_else(|| invalid(&s.tensor, "not in this model's layout".into()))?;
        let spec = &p.tensors[t].spec;
        check_keys(&s.keys, &s.varint_keys).map_err(|m| invalid(&s.tensor, m))?;
        let keys = LeKeys(&s.keys);
        if keys.is_empty() {
            let len = if s.len == 0 { spec.len().saturating_sub(s.offset) } else { s.len };
            if s.offset.checked_add(len).is_none_or(|e| e > spec.len()) {
                let message = format!("range {}..+{len} is outside its {} floats", s.offset, spec.len());
                return Err(invalid(&s.tensor, message));
            }
            bytes += len as usize * 4;
            plan.push((t, s.offset as usize, len as usize));
        } else {
            if let Some(k) = keys.iter().find(|k| *k >= spec.rows) {
                return Err(invalid(&s.tensor, format!("key {k} is out of range (rows 0..{})", spec.rows)));
            }
            bytes += keys.len() * spec.cols as usize * 4;
            plan.push((t, 0, 0));
        }
    }
    Ok((plan, bytes))
}

/// One slice's values of `w` (the weights, their EMA, or a slot: `label`), as the answer
/// carries them.
fn copy(w: &[f32], cols: usize, label: &str, s: &pb::PullSlice, offset: usize, len: usize) -> pb::TensorChunk {
    let mut out = Vec::new();
    let keys = LeKeys(&s.keys);
    if keys.is_empty() {
        accrete_proto::put_f32s(&mut out, &w[offset..offset + len]);
    } else {
        out.resize(keys.len() * cols * 4, 0);
        for (k, dst) in keys.iter().zip(out.chunks_exact_mut(cols * 4)) {
            let row = &w[k as usize * cols..(k as usize + 1) * cols];
            for (v, d) in row.iter().zip(dst.chunks_exact_mut(4)) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    pb::TensorChunk {
        tensor: s.tensor.clone(),
        slot: label.to_string(),
        offset: offset as u64,
        values: out.into(), // in the order of the request's keys (not sent back)
        ..Default::default()
    }
}
