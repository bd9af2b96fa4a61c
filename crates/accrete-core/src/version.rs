//! A version's metadata as every role sees it: what made it (its [`VersionKind`]), its
//! parent and lineage epoch, each worker's progress at that point, and the evaluator's
//! metrics. The store keeps it as JSON; the wire carries it as `VersionInfo`.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What made a version. Carried on the wire and in `versions --json` as `"kind"`; the
/// free-text `reason` says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    /// The initial parameters of a new model (version 1).
    Created,
    /// Made by the model's commit policy (every N updates, every T seconds).
    Policy,
    /// Made by an explicit `Commit` call.
    Manual,
    /// A new head holding an earlier version's content, under a new lineage epoch.
    Rollback,
    /// Parameters imported from a file, under a new lineage epoch.
    Import,
}

impl VersionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Created => "created",
            VersionKind::Policy => "policy",
            VersionKind::Manual => "manual",
            VersionKind::Rollback => "rollback",
            VersionKind::Import => "import",
        }
    }

    /// Rollbacks and imports replace the live parameters and start a new lineage epoch.
    pub fn replaces_content(self) -> bool {
        matches!(self, VersionKind::Rollback | VersionKind::Import)
    }

    /// The kind of a record written (or sent, by an older server) before versions had one,
    /// told by its reason: the only place a reason is read.
    pub fn of_legacy_reason(reason: &str) -> VersionKind {
        match reason {
            "create" => VersionKind::Created,
            "policy" => VersionKind::Policy,
            r if r.starts_with("rollback") => VersionKind::Rollback,
            r if r.starts_with("import") => VersionKind::Import,
            _ => VersionKind::Manual,
        }
    }
}

/// How far one worker got, as recorded with a version.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerProgress {
    pub worker_id: String,
    /// The worker's incarnation whose pushes this progress includes (0 = unknown).
    pub incarnation: u64,
    /// The sequence number of the worker's last applied push (in that incarnation).
    pub seq: u64,
    pub shard: String,
    pub offset: u64,
    /// The pass over the shard (epoch, from 0) `offset` is in.
    pub pass: u64,
    pub clock: u64,
    pub rows: u64,
    pub pushes: u64,
    pub loss_sum: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredVersionRecord")]
pub struct VersionRecord {
    pub version: u64,
    pub kind: VersionKind,
    pub parent: Option<u64>,
    pub created_unix_ms: i64,
    /// Applied pushes, all time, at this version.
    pub updates: u64,
    pub updates_since_parent: u64,
    pub reason: String,
    pub lineage_epoch: u64,
    /// For a rollback: the version whose content this one holds (0 = its own).
    pub content_of: u64,
    pub tags: Vec<String>,
    pub workers: Vec<WorkerProgress>,
    pub metrics: BTreeMap<String, f64>,
    /// Chunks the commit wrote whole or as delta layers.
    pub chunks_written: u64,
    /// Bytes the commit wrote: its chunks and layers, and its manifest.
    pub bytes_written: u64,
    /// The optimizer's step count in this content (Adam's bias correction).
    pub steps: u64,
    /// The request id of the call that made this version (create, commit, rollback,
    /// import; empty for the policy's): a retry of that call is answered with it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request: String,
    /// Progressive validation of the rows this version took in (since its parent), from
    /// every worker: each row scored before it was learned. `None`: no rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progressive: Option<crate::progressive::Figures>,
}

impl VersionRecord {
    /// A record of `kind` with everything else empty.
    pub fn new(version: u64, kind: VersionKind) -> Self {
        VersionRecord {
            version,
            kind,
            parent: None,
            created_unix_ms: 0,
            updates: 0,
            updates_since_parent: 0,
            reason: String::new(),
            lineage_epoch: 0,
            content_of: 0,
            tags: Vec::new(),
            workers: Vec::new(),
            metrics: BTreeMap::new(),
            chunks_written: 0,
            bytes_written: 0,
            steps: 0,
            request: String::new(),
            progressive: None,
        }
    }
}

/// A manual version numbered 0 with everything empty.
impl Default for VersionRecord {
    fn default() -> Self {
        VersionRecord::new(0, VersionKind::Manual)
    }
}

/// The stored form, which may predate `kind`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StoredVersionRecord {
    version: u64,
    kind: Option<VersionKind>,
    parent: Option<u64>,
    created_unix_ms: i64,
    updates: u64,
    updates_since_parent: u64,
    reason: String,
    lineage_epoch: u64,
    content_of: u64,
    tags: Vec<String>,
    workers: Vec<WorkerProgress>,
    metrics: BTreeMap<String, f64>,
    chunks_written: u64,
    bytes_written: u64,
    steps: u64,
    request: String,
    progressive: Option<crate::progressive::Figures>,
}

impl From<StoredVersionRecord> for VersionRecord {
    fn from(s: StoredVersionRecord) -> Self {
        VersionRecord {
            kind: s.kind.unwrap_or_else(|| VersionKind::of_legacy_reason(&s.reason)),
            version: s.version,
            parent: s.parent,
            created_unix_ms: s.created_unix_ms,
            updates: s.updates,
            updates_since_parent: s.updates_since_parent,
            reason: s.reason,
            lineage_epoch: s.lineage_epoch,
            content_of: s.content_of,
            tags: s.tags,
            workers: s.workers,
            metrics: s.metrics,
            chunks_written: s.chunks_written,
            bytes_written: s.bytes_written,
            steps: s.steps,
            request: s.request,
            progressive: s.progressive,
        }
    }
}

/// What happened to a model's history, as `WatchVersions` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    RolledBack,
    Tagged,
    Imported,
    Scored,
    Deleted,
}

impl EventKind {
    /// The event that announces a new version of `kind`.
    pub fn of_new_version(kind: VersionKind) -> EventKind {
        match kind {
            VersionKind::Rollback => EventKind::RolledBack,
            VersionKind::Import => EventKind::Imported,
            _ => EventKind::Created,
        }
    }

    /// A new version (not a change to an existing one's record).
    pub fn is_new_version(self) -> bool {
        matches!(self, EventKind::Created | EventKind::RolledBack | EventKind::Imported)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::RolledBack => "rolled_back",
            EventKind::Tagged => "tagged",
            EventKind::Imported => "imported",
            EventKind::Scored => "scored",
            EventKind::Deleted => "model_deleted",
        }
    }
}

/// A change to a model's history.
#[derive(Debug, Clone)]
pub struct VersionEvent {
    pub kind: EventKind,
    pub model: String,
    pub version: VersionRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_kinds_get_theirs_from_the_reason() {
        let old = |reason: &str| {
            let json = format!(r#"{{"version":3,"parent":2,"reason":"{reason}","lineage_epoch":1}}"#);
            serde_json::from_str::<VersionRecord>(&json).unwrap().kind
        };
        assert_eq!(old("create"), VersionKind::Created);
        assert_eq!(old("policy"), VersionKind::Policy);
        assert_eq!(old("commit: nightly"), VersionKind::Manual);
        assert_eq!(old("rollback to 2: quality gate"), VersionKind::Rollback);
        assert_eq!(old("import from w.safetensors"), VersionKind::Import);
    }

    #[test]
    fn a_stored_kind_wins_over_the_reason() {
        let mut r = VersionRecord::new(4, VersionKind::Manual);
        r.reason = "rollback drill".into();
        let back: VersionRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
