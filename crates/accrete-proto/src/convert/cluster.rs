//! The cluster's messages, both ways: worker marks, hold reports and cut orders.
use super::{bad, version_kind, ConvertError};
use crate::v1 as pb;
use accrete_core::cluster::{CutOrder, HoldReport, Marks};

fn marks_to_wire(m: &Marks) -> Vec<pb::WorkerMark> {
    m.iter()
        .map(|(w, (incarnation, seq))| pb::WorkerMark { worker_id: w.clone(), incarnation: *incarnation, seq: *seq })
        .collect()
}

fn marks_of_wire(m: Vec<pb::WorkerMark>) -> Marks {
    m.into_iter().map(|w| (w.worker_id, (w.incarnation, w.seq))).collect()
}

impl From<&HoldReport> for pb::HoldReport {
    fn from(r: &HoldReport) -> Self {
        pb::HoldReport {
            applied: marks_to_wire(&r.applied),
            last_version: r.last_version,
            server_instance: r.server_instance,
            updates: r.updates,
            since_commit: r.since_commit,
            lineage_epoch: r.lineage_epoch,
            round: r.round,
        }
    }
}

impl From<pb::HoldReport> for HoldReport {
    fn from(r: pb::HoldReport) -> Self {
        HoldReport {
            applied: marks_of_wire(r.applied),
            last_version: r.last_version,
            server_instance: r.server_instance,
            updates: r.updates,
            since_commit: r.since_commit,
            lineage_epoch: r.lineage_epoch,
            round: r.round,
        }
    }
}

impl From<&CutOrder> for pb::CutRequest {
    fn from(c: &CutOrder) -> Self {
        pb::CutRequest {
            model: c.model.clone(),
            commit: c.commit,
            version: c.version,
            cut: marks_to_wire(&c.cut),
            reason: c.reason.clone(),
            wait_ms: c.wait_ms,
            kind: pb::VersionKind::from(c.kind) as i32,
            round: c.round,
        }
    }
}

impl TryFrom<pb::CutRequest> for CutOrder {
    type Error = ConvertError;
    fn try_from(c: pb::CutRequest) -> Result<Self, ConvertError> {
        Ok(CutOrder {
            kind: version_kind(c.kind).ok_or_else(|| bad(format!("cut order: kind {} is unknown", c.kind)))?,
            model: c.model,
            commit: c.commit,
            version: c.version,
            cut: marks_of_wire(c.cut),
            reason: c.reason,
            wait_ms: c.wait_ms,
            round: c.round,
        })
    }
}
