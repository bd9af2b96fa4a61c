//! Model specs and model info, both ways.
use super::{bad, consistency_mode, model_kind, optimizer_kind, ConvertError};
use crate::v1 as pb;
use accrete_core::{
    CommitPolicy, InitSpec, InputSignature, ModelInfo, ModelSpec, OptimizerSpec, PartitionInfo, TensorInfo,
};

impl From<&ModelSpec> for pb::ModelSpec {
    fn from(s: &ModelSpec) -> Self {
        let o = &s.optimizer;
        pb::ModelSpec {
            name: s.name.clone(),
            kind: pb::ModelKind::from(s.kind) as i32,
            features: s.features,
            hash_bits: s.hash_bits,
            classes: s.classes,
            hidden: s.hidden,
            factors: s.factors,
            optimizer: Some(pb::OptimizerSpec {
                kind: pb::OptimizerKind::from(o.kind) as i32,
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
            consistency: Some(pb::Consistency {
                mode: pb::ConsistencyMode::from(s.consistency) as i32,
                staleness: s.staleness,
            }),
            partitions: s.partitions,
            partition: s.partition,
        }
    }
}

/// A spec as sent: hyper-parameters left at zero keep their documented defaults
/// ([`OptimizerSpec::with_defaults`]). Not validated here: the server does that.
impl TryFrom<pb::ModelSpec> for ModelSpec {
    type Error = ConvertError;
    fn try_from(s: pb::ModelSpec) -> Result<Self, ConvertError> {
        let named = |e: ConvertError| bad(format!("model {:?}: {e}", s.name));
        let kind = model_kind(s.kind).map_err(named)?;
        let o = s.optimizer.unwrap_or_default();
        let optimizer = OptimizerSpec {
            kind: optimizer_kind(o.kind).map_err(named)?,
            lr: o.lr,
            momentum: o.momentum,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            l1: o.l1,
            l2: o.l2,
        }
        .with_defaults();
        // no policy given: the default one (a given policy's zeros mean "off")
        let commit = s.commit.map_or(CommitPolicy::DEFAULT, |c| CommitPolicy {
            every_updates: c.every_updates,
            every_secs: c.every_secs,
            keep_last: c.keep_last,
        });
        let cons = s.consistency.unwrap_or_default();
        let consistency = consistency_mode(cons.mode).map_err(named)?;
        Ok(ModelSpec {
            name: s.name,
            kind,
            features: s.features,
            hash_bits: s.hash_bits,
            classes: s.classes,
            hidden: s.hidden,
            factors: s.factors,
            optimizer,
            init: s.init.map(|i| InitSpec { seed: i.seed, scale: i.scale }).unwrap_or_default(),
            ema_decay: s.ema_decay,
            commit,
            consistency,
            staleness: cons.staleness,
            partitions: s.partitions,
            partition: s.partition,
        })
    }
}

// ------------------------------------------------------------------ model info

impl From<&TensorInfo> for pb::TensorInfo {
    fn from(t: &TensorInfo) -> Self {
        pb::TensorInfo {
            name: t.name.clone(),
            rows: t.rows,
            cols: t.cols,
            sparse: t.sparse,
            slots: t.slots.clone(),
            row_begin: t.row_begin,
            row_end: t.row_end,
        }
    }
}

impl From<pb::TensorInfo> for TensorInfo {
    fn from(t: pb::TensorInfo) -> Self {
        TensorInfo {
            name: t.name,
            rows: t.rows,
            cols: t.cols,
            sparse: t.sparse,
            slots: t.slots,
            row_begin: t.row_begin,
            row_end: t.row_end,
        }
    }
}

impl From<&ModelInfo> for pb::ModelInfo {
    fn from(m: &ModelInfo) -> Self {
        pb::ModelInfo {
            spec: Some((&m.spec).into()),
            tensors: m.tensors.iter().map(Into::into).collect(),
            parameters: m.parameters,
            head_version: m.head_version,
            lineage_epoch: m.lineage_epoch,
            updates: m.updates,
            uncommitted_updates: m.uncommitted_updates,
            versions: m.versions,
            created_unix_ms: m.created_unix_ms,
            signature: m.signature.as_ref().map(Into::into),
            server_instance: m.server_instance,
            partitions: m.partitions.iter().map(Into::into).collect(),
        }
    }
}

impl From<&PartitionInfo> for pb::PartitionInfo {
    fn from(p: &PartitionInfo) -> Self {
        pb::PartitionInfo { index: p.index, primary: p.primary.clone(), rows: p.rows, bytes: p.bytes }
    }
}

impl From<pb::PartitionInfo> for PartitionInfo {
    fn from(p: pb::PartitionInfo) -> Self {
        PartitionInfo { index: p.index, primary: p.primary, rows: p.rows, bytes: p.bytes }
    }
}

impl TryFrom<pb::ModelInfo> for ModelInfo {
    type Error = ConvertError;
    fn try_from(m: pb::ModelInfo) -> Result<Self, ConvertError> {
        let spec = m.spec.ok_or_else(|| bad("model info without a spec".into()))?.try_into()?;
        Ok(ModelInfo {
            spec,
            tensors: m.tensors.into_iter().map(Into::into).collect(),
            parameters: m.parameters,
            head_version: m.head_version,
            lineage_epoch: m.lineage_epoch,
            updates: m.updates,
            uncommitted_updates: m.uncommitted_updates,
            versions: m.versions,
            created_unix_ms: m.created_unix_ms,
            signature: m.signature.map(Into::into).filter(|s: &InputSignature| !s.is_empty()),
            server_instance: m.server_instance,
            partitions: m.partitions.into_iter().map(Into::into).collect(),
        })
    }
}

impl From<&InputSignature> for pb::InputSignature {
    fn from(s: &InputSignature) -> Self {
        pb::InputSignature {
            format: s.format.clone(),
            label: s.label.clone(),
            numeric: s.numeric.clone(),
            categorical: s.categorical.clone(),
            cross: s.cross.clone(),
        }
    }
}

impl From<pb::InputSignature> for InputSignature {
    fn from(s: pb::InputSignature) -> Self {
        InputSignature {
            format: s.format,
            label: s.label,
            numeric: s.numeric,
            categorical: s.categorical,
            cross: s.cross,
        }
    }
}
