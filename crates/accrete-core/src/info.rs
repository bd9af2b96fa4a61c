//! A model as a client sees it: its spec, its tensors, and where its history stands.
use crate::layout::{layout, slots};
use crate::partition::Partitioning;
use crate::spec::ModelSpec;

/// One tensor of a model's layout, with the optimizer slots kept beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub rows: u64,
    pub cols: u32,
    /// Addressed by row keys (a hashed table).
    pub sparse: bool,
    pub slots: Vec<String>,
    /// The rows of it that `spec`'s partition holds (all of them in a model of one
    /// partition).
    pub row_begin: u64,
    pub row_end: u64,
}

impl TensorInfo {
    /// The tensors `spec`'s partition holds, with the rows it holds of each.
    pub fn of_spec(spec: &ModelSpec) -> Vec<TensorInfo> {
        let slot_names: Vec<String> = slots(spec).iter().map(|s| s.to_string()).collect();
        let full = layout(spec);
        let held = Partitioning::plan(&full, spec.parts()).rows_of(spec.partition, &full);
        full.iter()
            .zip(held)
            .filter(|(_, (_, n))| *n > 0)
            .map(|(t, (begin, n))| TensorInfo {
                name: t.name.to_string(),
                rows: t.rows,
                cols: t.cols,
                sparse: t.sparse,
                slots: slot_names.clone(),
                row_begin: begin,
                row_end: begin + n,
            })
            .collect()
    }
}

/// One partition of a model: where it lives and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub index: u32,
    /// `host:port` of the server that holds it.
    pub primary: String,
    /// Rows of all its tensors.
    pub rows: u64,
    /// Its weights and optimizer slots, in bytes.
    pub bytes: u64,
}

impl PartitionInfo {
    /// The partitions of the whole model `spec` on `servers` (the cluster's sorted list),
    /// placed by [`crate::partition::servers_of`].
    pub fn of_model(spec: &ModelSpec, servers: &[String]) -> Vec<PartitionInfo> {
        let full = layout(spec);
        let plan = Partitioning::plan(&full, spec.parts());
        let floats_per_weight = 1 + slots(spec).len() as u64;
        let at = crate::partition::servers_of(spec.base_name(), spec.parts(), servers.len());
        (0..spec.parts())
            .map(|part| {
                let held = plan.rows_of(part, &full);
                let rows = held.iter().map(|(_, n)| n).sum();
                let floats: u64 = held.iter().zip(&full).map(|((_, n), t)| n * t.cols as u64).sum();
                PartitionInfo {
                    index: part,
                    primary: servers.get(at[part as usize]).cloned().unwrap_or_default(),
                    rows,
                    bytes: floats * floats_per_weight * 4,
                }
            })
            .collect()
    }
}

/// A model and the state of its history.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub spec: ModelSpec,
    pub tensors: Vec<TensorInfo>,
    /// Floats in the weights.
    pub parameters: u64,
    pub head_version: u64,
    pub lineage_epoch: u64,
    /// Applied pushes, all time.
    pub updates: u64,
    /// Applied pushes since the head version.
    pub uncommitted_updates: u64,
    /// Retained versions.
    pub versions: u64,
    pub created_unix_ms: i64,
    /// The columns its workers read (`None`: no worker has joined and none was given).
    pub signature: Option<crate::InputSignature>,
    /// The server process's instance: another one means a restart lost what was not committed.
    pub server_instance: u64,
    /// Where the model's partitions live (one entry for a model of one partition).
    pub partitions: Vec<PartitionInfo>,
}
