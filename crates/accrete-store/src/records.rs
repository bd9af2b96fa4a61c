//! Records kept as JSON: the model's record (its spec) and each version's metadata
//! ([`accrete_core::VersionRecord`]).
use accrete_core::ModelSpec;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: u64,
    pub spec: ModelSpec,
    pub created_unix_ms: i64,
    /// The lineage epoch of its version 1: past every epoch of an earlier model of the
    /// same name (records written before it existed began at 1).
    #[serde(default = "first_epoch")]
    pub first_epoch: u64,
    /// The request id of the call that created it: a retry is answered with the model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request: String,
    /// The columns its workers read, once known (at create, or from the first worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<accrete_core::InputSignature>,
}

fn first_epoch() -> u64 {
    1
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
