//! Versions, worker progress and version events, both ways.
use super::{bad, version_kind, ConvertError, EventKindOf};
use crate::v1 as pb;
use accrete_core::progressive::Figures;
use accrete_core::{VersionEvent, VersionKind, VersionRecord, WorkerProgress};

impl From<&WorkerProgress> for pb::WorkerProgress {
    fn from(w: &WorkerProgress) -> Self {
        pb::WorkerProgress {
            worker_id: w.worker_id.clone(),
            incarnation: w.incarnation,
            seq: w.seq,
            shard: w.shard.clone(),
            offset: w.offset,
            pass: w.pass,
            clock: w.clock,
            rows: w.rows,
            pushes: w.pushes,
            loss_sum: w.loss_sum,
        }
    }
}

impl From<pb::WorkerProgress> for WorkerProgress {
    fn from(w: pb::WorkerProgress) -> Self {
        WorkerProgress {
            worker_id: w.worker_id,
            incarnation: w.incarnation,
            seq: w.seq,
            shard: w.shard,
            offset: w.offset,
            pass: w.pass,
            clock: w.clock,
            rows: w.rows,
            pushes: w.pushes,
            loss_sum: w.loss_sum,
        }
    }
}

/// A version of the model named by the first element.
impl From<(&str, &VersionRecord)> for pb::VersionInfo {
    fn from((model, v): (&str, &VersionRecord)) -> Self {
        pb::VersionInfo {
            model: model.to_string(),
            version: v.version,
            kind: pb::VersionKind::from(v.kind) as i32,
            parent: v.parent,
            created_unix_ms: v.created_unix_ms,
            updates: v.updates,
            updates_since_parent: v.updates_since_parent,
            reason: v.reason.clone(),
            lineage_epoch: v.lineage_epoch,
            content_of: v.content_of,
            tags: v.tags.clone(),
            workers: v.workers.iter().map(Into::into).collect(),
            metrics: v.metrics.iter().map(|(k, x)| (k.clone(), *x)).collect(),
            chunks_written: v.chunks_written,
            bytes_written: v.bytes_written,
            progressive: v.progressive.map(|f| pb::Progressive {
                rows: f.rows,
                loss: f.loss,
                accuracy: f.accuracy,
                auc: f.auc,
            }),
        }
    }
}

/// The record of a version (its model's name is the caller's; the optimizer's step count
/// and the request id that made it do not travel: they read 0 and empty). The reason is
/// read only for a version without a kind.
impl From<pb::VersionInfo> for VersionRecord {
    fn from(v: pb::VersionInfo) -> Self {
        VersionRecord {
            version: v.version,
            // an older server sends no kind: its reason tells
            kind: version_kind(v.kind).unwrap_or_else(|| VersionKind::of_legacy_reason(&v.reason)),
            parent: v.parent,
            created_unix_ms: v.created_unix_ms,
            updates: v.updates,
            updates_since_parent: v.updates_since_parent,
            reason: v.reason,
            lineage_epoch: v.lineage_epoch,
            content_of: v.content_of,
            tags: v.tags,
            workers: v.workers.into_iter().map(Into::into).collect(),
            metrics: v.metrics.into_iter().collect(),
            chunks_written: v.chunks_written,
            bytes_written: v.bytes_written,
            steps: 0,
            request: String::new(),
            progressive: v.progressive.map(|f| Figures {
                rows: f.rows,
                loss: f.loss,
                accuracy: f.accuracy,
                auc: f.auc,
            }),
        }
    }
}

impl From<&VersionEvent> for pb::VersionEvent {
    fn from(e: &VersionEvent) -> Self {
        pb::VersionEvent {
            kind: pb::VersionEventKind::from(e.kind) as i32,
            version: Some((e.model.as_str(), &e.version).into()),
        }
    }
}

impl TryFrom<pb::VersionEvent> for VersionEvent {
    type Error = ConvertError;
    fn try_from(e: pb::VersionEvent) -> Result<Self, ConvertError> {
        let kind = EventKindOf::try_from(e.kind)?.0;
        let v = e.version.ok_or_else(|| bad("version event without a version".into()))?;
        Ok(VersionEvent { kind, model: v.model.clone(), version: v.into() })
    }
}
