//! `Import`: parameters assembled chunk by chunk from an import stream, checked against the
//! model's layout (every weight tensor covered in order, slots wholly or not at all,
//! finite values, no negative sums of squares or counts) before the runtime installs them.
use crate::error::{Result, ServiceError};
use accrete_core::Params;
use accrete_proto::v1 as pb;
use std::collections::HashMap;

/// Fills imported parameters chunk by chunk; every weight tensor must be covered in order,
/// slots either wholly or not at all.
pub(super) struct ImportFiller {
    params: Params,
    model: String,
    filled: HashMap<(usize, Option<usize>), u64>,
}

impl ImportFiller {
    pub(super) fn new(params: Params, model: &str) -> Self {
        ImportFiller { params, model: model.to_string(), filled: HashMap::new() }
    }

    fn err(&self, tensor: &str, message: String) -> ServiceError {
        ServiceError::Invalid(format!("import into model {:?}: tensor {tensor:?}: {message}", self.model))
    }

    pub(super) fn add(&mut self, c: &pb::TensorChunk) -> Result<()> {
        let t = self
            .params
            .tensor_index(&c.tensor)
            .ok_or_else(|| self.err(&c.tensor, "not in this model's layout".into()))?;
        let slot = match c.slot.as_str() {
            "" => None,
            s => Some(self.params.slot_names.iter().position(|n| *n == s).ok_or_else(|| {
                self.err(
                    &c.tensor,
                    format!("slot {s:?} is not kept by this model (slots: {:?})", self.params.slot_names),
                )
            })?),
        };
        let values = accrete_proto::bytes_to_f32s(&c.values)
            .ok_or_else(|| self.err(&c.tensor, "values are not whole f32s".into()))?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(self.err(&c.tensor, format!("value {v} is NaN or infinite")));
        }
        let next = self.filled.get(&(t, slot)).copied().unwrap_or(0);
        // Sums of squares and counts cannot be negative: the optimizer would take their
        // square roots, the statistics would divide by them.
        let slot_name = slot.map(|s| self.params.slot_names[s]);
        let spec = &self.params.tensors[t].spec;
        let must_be_positive = |k: u64| match slot_name {
            Some("accum") | Some("v") | Some("n") => true,
            None if spec.stats => spec.non_negative_stat(k as usize),
            _ => false,
        };
        if let Some((j, v)) = values.iter().enumerate().find(|(j, v)| **v < 0.0 && must_be_positive(next + *j as u64)) {
            let what = slot_name.map_or("statistics count or M2".to_string(), |s| format!("slot {s:?}"));
            return Err(self.err(&c.tensor, format!("{what}: value {v} at {} is negative", next + j as u64)));
        }
        let ts = &mut self.params.tensors[t];
        let len = ts.w.len() as u64;
        // an import is dense: chunks with keys (either form) are refused
        if !c.keys.is_empty() || !c.varint_keys.is_empty() || c.offset != next || next + values.len() as u64 > len {
            let msg = format!(
                "chunk at offset {} with {} floats does not continue at {next} within {len} floats",
                c.offset,
                values.len()
            );
            return Err(self.err(&c.tensor, msg));
        }
        let dst = match slot {
            None => &mut ts.w,
            Some(s) => &mut ts.slots[s],
        };
        dst[next as usize..next as usize + values.len()].copy_from_slice(&values);
        self.filled.insert((t, slot), next + values.len() as u64);
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Params> {
        for (t, ts) in self.params.tensors.iter().enumerate() {
            let len = ts.w.len() as u64;
            let got = self.filled.get(&(t, None)).copied().unwrap_or(0);
            if got != len {
                return Err(self.err(ts.spec.name, format!("the import holds {got} of its {len} weights")));
            }
            for s in 0..ts.slots.len() {
                let got = self.filled.get(&(t, Some(s))).copied().unwrap_or(0);
                if got != 0 && got != len {
                    return Err(
                        self.err(ts.spec.name, format!("slot {:?}: {got} of {len} values", self.params.slot_names[s]))
                    );
                }
            }
        }
        let ema_given = self
            .params
            .slot_names
            .iter()
            .position(|s| *s == "ema")
            .is_some_and(|e| self.filled.contains_key(&(0, Some(e))));
        if !ema_given {
            self.params.reset_ema();
        }
        Ok(self.params)
    }
}
