//! Records kept as JSON: the model's record (its spec) and each version's metadata.
use accrete_core::ModelSpec;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: u64,
    pub spec: ModelSpec,
    pub created_unix_ms: i64,
}

/// How far one worker got, as recorded with a version.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerProgress {
    pub worker_id: String,
    pub shard: String,
    pub offset: u64,
    pub clock: u64,
    pub rows: u64,
    pub pushes: u64,
    pub loss_sum: f64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub parent: Option<u64>,
    pub created_unix_ms: i64,
    /// Applied pushes, all time, at this version (also the optimizer's step count).
    pub updates: u64,
    pub updates_since_parent: u64,
    pub reason: String,
    pub lineage_epoch: u64,
    /// For a rollback: the version whose content this one holds (0 = its own).
    pub content_of: u64,
    pub tags: Vec<String>,
    pub workers: Vec<WorkerProgress>,
    pub metrics: BTreeMap<String, f64>,
    pub chunks_written: u64,
    /// The optimizer's step count in this content (Adam's bias correction).
    pub steps: u64,
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8], what: &str) -> crate::Result<T> {
    serde_json::from_slice(b)
        .map_err(|e| crate::StoreError::Corrupt { model: "?".into(), message: format!("{what}: {e}") })
}
