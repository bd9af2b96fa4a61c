//! Conversions between wire types and the core/store types.
use crate::error::{Result, ServiceError};
use crate::model::{EventKind, ModelHandle};
use accrete_core::layout::slots;
use accrete_core::{CommitPolicy, ConsistencyMode, InitSpec, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec};
use accrete_proto::v1 as pb;
use accrete_store::{VersionRecord, WorkerProgress};

pub fn spec_from_pb(s: pb::ModelSpec) -> Result<ModelSpec> {
    let kind = match pb::ModelKind::try_from(s.kind).unwrap_or(pb::ModelKind::Unspecified) {
        pb::ModelKind::Linear => ModelKind::Linear,
        pb::ModelKind::Logistic => ModelKind::Logistic,
        pb::ModelKind::Softmax => ModelKind::Softmax,
        pb::ModelKind::Fm => ModelKind::Fm,
        pb::ModelKind::Mlp => ModelKind::Mlp,
        pb::ModelKind::Unspecified => {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: spec.kind is missing or unknown ({})",
                s.name, s.kind
            )))
        }
    };
    let o = s.optimizer.unwrap_or_default();
    let okind = match pb::OptimizerKind::try_from(o.kind) {
        Ok(pb::OptimizerKind::Sgd | pb::OptimizerKind::Unspecified) => OptimizerKind::Sgd,
        Ok(pb::OptimizerKind::Momentum) => OptimizerKind::Momentum,
        Ok(pb::OptimizerKind::Adagrad) => OptimizerKind::Adagrad,
        Ok(pb::OptimizerKind::Adam) => OptimizerKind::Adam,
        Ok(pb::OptimizerKind::Ftrl) => OptimizerKind::Ftrl,
        Err(_) => {
            return Err(ServiceError::Invalid(format!("model {:?}: spec.optimizer.kind {} is unknown", s.name, o.kind)))
        }
    };
    let optimizer = OptimizerSpec {
        kind: okind,
        lr: o.lr,
        momentum: o.momentum,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        l1: o.l1,
        l2: o.l2,
    }
    .with_defaults();
    let init = s.init.map(|i| InitSpec { seed: i.seed, scale: i.scale }).unwrap_or_default();
    let c = s.commit.unwrap_or_default();
    let cons = s.consistency.unwrap_or_default();
    let consistency = match pb::ConsistencyMode::try_from(cons.mode).unwrap_or(pb::ConsistencyMode::Unspecified) {
        pb::ConsistencyMode::Bsp => ConsistencyMode::Bsp,
        pb::ConsistencyMode::Ssp => ConsistencyMode::Ssp,
        _ => ConsistencyMode::Asp,
    };
    Ok(ModelSpec {
        name: s.name,
        kind,
        features: s.features,
        hash_bits: s.hash_bits,
        classes: s.classes,
        hidden: s.hidden,
        factors: s.factors,
        optimizer,
        init,
        ema_decay: s.ema_decay,
        commit: CommitPolicy { every_updates: c.every_updates, every_secs: c.every_secs, keep_last: c.keep_last },
        consistency,
        staleness: cons.staleness,
    })
}

pub fn spec_to_pb(s: &ModelSpec) -> pb::ModelSpec {
    let kind = match s.kind {
        ModelKind::Linear => pb::ModelKind::Linear,
        ModelKind::Logistic => pb::ModelKind::Logistic,
        ModelKind::Softmax => pb::ModelKind::Softmax,
        ModelKind::Fm => pb::ModelKind::Fm,
        ModelKind::Mlp => pb::ModelKind::Mlp,
    };
    let okind = match s.optimizer.kind {
        OptimizerKind::Sgd => pb::OptimizerKind::Sgd,
        OptimizerKind::Momentum => pb::OptimizerKind::Momentum,
        OptimizerKind::Adagrad => pb::OptimizerKind::Adagrad,
        OptimizerKind::Adam => pb::OptimizerKind::Adam,
        OptimizerKind::Ftrl => pb::OptimizerKind::Ftrl,
    };
    let mode = match s.consistency {
        ConsistencyMode::Asp => pb::ConsistencyMode::Asp,
        ConsistencyMode::Bsp => pb::ConsistencyMode::Bsp,
        ConsistencyMode::Ssp => pb::ConsistencyMode::Ssp,
    };
    let o = &s.optimizer;
    pb::ModelSpec {
        name: s.name.clone(),
        kind: kind as i32,
        features: s.features,
        hash_bits: s.hash_bits,
        classes: s.classes,
        hidden: s.hidden,
        factors: s.factors,
        optimizer: Some(pb::OptimizerSpec {
            kind: okind as i32,
            lr: o.lr,
            momentum: o.momentum,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            l1: o.l1,
            l2: o.l2,
        }),
        init: Some(pb::InitSpec { seed: s.init.seed, scale: s.init.scale }),
        ema_decay: s.ema_decay,
        commit: Some(pb::CommitPolicy {
            every_updates: s.commit.every_updates,
            every_secs: s.commit.every_secs,
            keep_last: s.commit.keep_last,
        }),
        consistency: Some(pb::Consistency { mode: mode as i32, staleness: s.staleness }),
    }
}

pub fn version_to_pb(model: &str, v: &VersionRecord) -> pb::VersionInfo {
    pb::VersionInfo {
        model: model.to_string(),
        version: v.version,
        parent: v.parent,
        created_unix_ms: v.created_unix_ms,
        updates: v.updates,
        updates_since_parent: v.updates_since_parent,
        reason: v.reason.clone(),
        lineage_epoch: v.lineage_epoch,
        content_of: v.content_of,
        tags: v.tags.clone(),
        workers: v.workers.iter().map(worker_to_pb).collect(),
        metrics: v.metrics.iter().map(|(k, x)| (k.clone(), *x)).collect(),
        chunks_written: v.chunks_written,
    }
}

fn worker_to_pb(w: &WorkerProgress) -> pb::WorkerProgress {
    pb::WorkerProgress {
        worker_id: w.worker_id.clone(),
        shard: w.shard.clone(),
        offset: w.offset,
        clock: w.clock,
        rows: w.rows,
        pushes: w.pushes,
        loss_sum: w.loss_sum,
    }
}

pub fn model_info(h: &ModelHandle, versions: u64) -> pb::ModelInfo {
    let st = h.status();
    let slot_names: Vec<String> = slots(h.spec()).iter().map(|s| s.to_string()).collect();
    pb::ModelInfo {
        spec: Some(spec_to_pb(h.spec())),
        tensors: h
            .layout
            .iter()
            .map(|t| pb::TensorInfo {
                name: t.name.to_string(),
                rows: t.rows,
                cols: t.cols,
                sparse: t.sparse,
                slots: slot_names.clone(),
                row_begin: 0,
                row_end: t.rows,
            })
            .collect(),
        parameters: h.layout.iter().map(|t| t.len()).sum(),
        head_version: st.head,
        lineage_epoch: st.epoch,
        updates: st.updates,
        uncommitted_updates: st.since_commit,
        versions,
        created_unix_ms: h.record.created_unix_ms,
    }
}

pub fn event_kind(k: EventKind) -> pb::VersionEventKind {
    match k {
        EventKind::Created => pb::VersionEventKind::Created,
        EventKind::RolledBack => pb::VersionEventKind::RolledBack,
        EventKind::Tagged => pb::VersionEventKind::Tagged,
        EventKind::Imported => pb::VersionEventKind::Imported,
        EventKind::Scored => pb::VersionEventKind::Scored,
        EventKind::Deleted => pb::VersionEventKind::ModelDeleted,
    }
}
