//! A model as a client sees it: its spec, its tensors, and where its history stands.
use crate::layout::{layout, slots};
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
    /// The rows this server holds (scale-out); today the whole tensor.
    pub row_begin: u64,
    pub row_end: u64,
}

impl TensorInfo {
    /// The tensors of `spec`'s layout, each held whole.
    pub fn of_spec(spec: &ModelSpec) -> Vec<TensorInfo> {
        let slot_names: Vec<String> = slots(spec).iter().map(|s| s.to_string()).collect();
        layout(spec)
            .iter()
            .map(|t| TensorInfo {
                name: t.name.to_string(),
                rows: t.rows,
                cols: t.cols,
                sparse: t.sparse,
                slots: slot_names.clone(),
                row_begin: 0,
                row_end: t.rows,
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
}
