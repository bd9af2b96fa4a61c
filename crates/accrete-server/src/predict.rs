//! Server-side scoring of feature rows with a model's parameters (live or a version).
use crate::error::{Result, ServiceError};
use accrete_core::features::Batch;
use accrete_core::glm;
use accrete_core::kinds::{self, Dims, Views};
use accrete_core::{ModelSpec, Params};
use accrete_proto::v1 as pb;

/// Builds a batch from wire rows, checking every count and index against the model.
fn batch_from(spec: &ModelSpec, rows: &pb::FeatureRows) -> Result<Batch> {
    let bad = |m: String| ServiceError::Invalid(format!("predict with model {:?}: {m}", spec.name));
    let f = spec.features as usize;
    if rows.features as usize != f {
        return Err(bad(format!("rows have {} dense features, the model {f}", rows.features)));
    }
    let b = Batch::try_from(rows).map_err(|e| bad(e.to_string()))?;
    let table = if spec.hash_bits > 0 { 1u64 << spec.hash_bits } else { 0 };
    if let Some(i) = b.idx.iter().find(|i| **i as u64 >= table) {
        return Err(bad(format!("hashed index {i} is out of range (table of {table} rows)")));
    }
    if let Some(v) = b.dense.iter().chain(&b.val).find(|v| v.is_infinite()) {
        return Err(bad(format!("value {v} is infinite")));
    }
    Ok(b)
}

fn tensor<'a>(p: &'a Params, name: &str) -> &'a [f32] {
    p.tensor_index(name).map_or(&[][..], |t| &p.tensors[t].w[..])
}

/// Scores `rows` with `p`: returns (outputs per row, values). The response (rows ×
/// outputs floats) must fit in `limit` bytes, checked before anything is allocated.
pub fn predict(spec: &ModelSpec, p: &Params, rows: &pb::FeatureRows, limit: usize) -> Result<(u32, Vec<f32>)> {
    let dims = Dims::of(spec);
    let bytes = rows.rows as u64 * dims.outputs.max(1) as u64 * 4;
    if bytes > limit as u64 {
        let what =
            format!("predictions for {} rows from model {:?} (send fewer rows per request)", rows.rows, spec.name);
        return Err(ServiceError::TooLarge { what, bytes: bytes as usize, limit });
    }
    let mut b = batch_from(spec, rows)?;
    glm::prepare_dense(&mut b.dense, b.features, tensor(p, "norm"));
    let mut out = Vec::new();
    kinds::predict(&dims, &Views::of_params(p), &b, &b.idx, &mut out);
    Ok((dims.outputs as u32, out))
}
