//! Conversions between the wire types and the core types, written once. Wire-to-core
//! conversions that can fail (an unknown enum value, bytes that are not whole floats)
//! are `TryFrom` with a [`ConvertError`] naming the field.
use crate::v1 as pb;
use accrete_core::features::Batch;
use accrete_core::pull::{Joined, Predictions, PullRequest, Pulled, Slice};
use accrete_core::push::{Gradient, Push, PushAck, PushMeta};
use accrete_core::{
    CommitPolicy, ConsistencyMode, EventKind, InitSpec, ModelInfo, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec,
    TensorInfo, VersionEvent, VersionKind, VersionRecord, WorkerProgress,
};

/// A wire message that has no core meaning: names the field and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

fn bad(message: String) -> ConvertError {
    ConvertError(message)
}

// ------------------------------------------------------------------ enums

impl From<ModelKind> for pb::ModelKind {
    fn from(k: ModelKind) -> Self {
        match k {
            ModelKind::Linear => pb::ModelKind::Linear,
            ModelKind::Logistic => pb::ModelKind::Logistic,
            ModelKind::Softmax => pb::ModelKind::Softmax,
            ModelKind::Fm => pb::ModelKind::Fm,
            ModelKind::Mlp => pb::ModelKind::Mlp,
        }
    }
}

/// A model kind from its wire value; unspecified or unknown is an error.
pub fn model_kind(v: i32) -> Result<ModelKind, ConvertError> {
    match pb::ModelKind::try_from(v) {
        Ok(pb::ModelKind::Linear) => Ok(ModelKind::Linear),
        Ok(pb::ModelKind::Logistic) => Ok(ModelKind::Logistic),
        Ok(pb::ModelKind::Softmax) => Ok(ModelKind::Softmax),
        Ok(pb::ModelKind::Fm) => Ok(ModelKind::Fm),
        Ok(pb::ModelKind::Mlp) => Ok(ModelKind::Mlp),
        _ => Err(bad(format!("spec.kind is missing or unknown ({v})"))),
    }
}

impl From<OptimizerKind> for pb::OptimizerKind {
    fn from(k: OptimizerKind) -> Self {
        match k {
            OptimizerKind::Sgd => pb::OptimizerKind::Sgd,
            OptimizerKind::Momentum => pb::OptimizerKind::Momentum,
            OptimizerKind::Adagrad => pb::OptimizerKind::Adagrad,
            OptimizerKind::Adam => pb::OptimizerKind::Adam,
            OptimizerKind::Ftrl => pb::OptimizerKind::Ftrl,
        }
    }
}

/// An optimizer kind from its wire value; unspecified means SGD.
pub fn optimizer_kind(v: i32) -> Result<OptimizerKind, ConvertError> {
    match pb::OptimizerKind::try_from(v) {
        Ok(pb::OptimizerKind::Sgd | pb::OptimizerKind::Unspecified) => Ok(OptimizerKind::Sgd),
        Ok(pb::OptimizerKind::Momentum) => Ok(OptimizerKind::Momentum),
        Ok(pb::OptimizerKind::Adagrad) => Ok(OptimizerKind::Adagrad),
        Ok(pb::OptimizerKind::Adam) => Ok(OptimizerKind::Adam),
        Ok(pb::OptimizerKind::Ftrl) => Ok(OptimizerKind::Ftrl),
        Err(_) => Err(bad(format!("spec.optimizer.kind {v} is unknown"))),
    }
}

impl From<ConsistencyMode> for pb::ConsistencyMode {
    fn from(m: ConsistencyMode) -> Self {
        match m {
            ConsistencyMode::Asp => pb::ConsistencyMode::Asp,
            ConsistencyMode::Bsp => pb::ConsistencyMode::Bsp,
            ConsistencyMode::Ssp => pb::ConsistencyMode::Ssp,
        }
    }
}

/// A consistency mode from its wire value; unspecified or unknown means ASP.
pub fn consistency_mode(v: i32) -> ConsistencyMode {
    match pb::ConsistencyMode::try_from(v) {
        Ok(pb::ConsistencyMode::Bsp) => ConsistencyMode::Bsp,
        Ok(pb::ConsistencyMode::Ssp) => ConsistencyMode::Ssp,
        _ => ConsistencyMode::Asp,
    }
}

impl From<VersionKind> for pb::VersionKind {
    fn from(k: VersionKind) -> Self {
        match k {
            VersionKind::Created => pb::VersionKind::Created,
            VersionKind::Policy => pb::VersionKind::Policy,
            VersionKind::Manual => pb::VersionKind::Manual,
            VersionKind::Rollback => pb::VersionKind::Rollback,
            VersionKind::Import => pb::VersionKind::Import,
        }
    }
}

/// A version kind from its wire value (a server that predates kinds sends none: manual).
pub fn version_kind(v: i32) -> VersionKind {
    match pb::VersionKind::try_from(v) {
        Ok(pb::VersionKind::Created) => VersionKind::Created,
        Ok(pb::VersionKind::Policy) => VersionKind::Policy,
        Ok(pb::VersionKind::Rollback) => VersionKind::Rollback,
        Ok(pb::VersionKind::Import) => VersionKind::Import,
        _ => VersionKind::Manual,
    }
}

impl From<EventKind> for pb::VersionEventKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Created => pb::VersionEventKind::Created,
            EventKind::RolledBack => pb::VersionEventKind::RolledBack,
            EventKind::Tagged => pb::VersionEventKind::Tagged,
            EventKind::Imported => pb::VersionEventKind::Imported,
            EventKind::Scored => pb::VersionEventKind::Scored,
            EventKind::Deleted => pb::VersionEventKind::ModelDeleted,
        }
    }
}

impl TryFrom<i32> for EventKindOf {
    type Error = ConvertError;
    fn try_from(v: i32) -> Result<Self, ConvertError> {
        match pb::VersionEventKind::try_from(v) {
            Ok(pb::VersionEventKind::Created) => Ok(EventKindOf(EventKind::Created)),
            Ok(pb::VersionEventKind::RolledBack) => Ok(EventKindOf(EventKind::RolledBack)),
            Ok(pb::VersionEventKind::Tagged) => Ok(EventKindOf(EventKind::Tagged)),
            Ok(pb::VersionEventKind::Imported) => Ok(EventKindOf(EventKind::Imported)),
            Ok(pb::VersionEventKind::Scored) => Ok(EventKindOf(EventKind::Scored)),
            Ok(pb::VersionEventKind::ModelDeleted) => Ok(EventKindOf(EventKind::Deleted)),
            _ => Err(bad(format!("version event kind {v} is unknown"))),
        }
    }
}

/// An event kind read from the wire (a newtype: `i32` and [`EventKind`] are both foreign).
struct EventKindOf(EventKind);

// ------------------------------------------------------------------ model specs

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
        let c = s.commit.unwrap_or_default();
        let cons = s.consistency.unwrap_or_default();
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
            commit: CommitPolicy { every_updates: c.every_updates, every_secs: c.every_secs, keep_last: c.keep_last },
            consistency: consistency_mode(cons.mode),
            staleness: cons.staleness,
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
        }
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
        })
    }
}

// ------------------------------------------------------------------ versions

impl From<&WorkerProgress> for pb::WorkerProgress {
    fn from(w: &WorkerProgress) -> Self {
        pb::WorkerProgress {
            worker_id: w.worker_id.clone(),
            incarnation: w.incarnation,
            seq: w.seq,
            shard: w.shard.clone(),
            offset: w.offset,
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
        }
    }
}

/// The record of a version (its model's name is the caller's; the optimizer's step count
/// does not travel and reads 0).
impl From<pb::VersionInfo> for VersionRecord {
    fn from(v: pb::VersionInfo) -> Self {
        VersionRecord {
            version: v.version,
            kind: version_kind(v.kind),
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
            steps: 0,
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

// ------------------------------------------------------------------ pushes

impl From<&PushMeta> for pb::PushMeta {
    fn from(m: &PushMeta) -> Self {
        pb::PushMeta {
            worker_id: m.worker_id.clone(),
            incarnation: m.incarnation,
            seq: m.seq,
            shard: m.shard.clone(),
            offset: m.offset,
            clock: m.clock,
            rows: m.rows,
            loss_sum: m.loss_sum,
        }
    }
}

impl From<pb::PushMeta> for PushMeta {
    fn from(m: pb::PushMeta) -> Self {
        PushMeta {
            worker_id: m.worker_id,
            incarnation: m.incarnation,
            seq: m.seq,
            shard: m.shard,
            offset: m.offset,
            clock: m.clock,
            rows: m.rows,
            loss_sum: m.loss_sum,
        }
    }
}

impl From<&Gradient> for pb::TensorChunk {
    fn from(g: &Gradient) -> Self {
        pb::TensorChunk {
            tensor: g.tensor.clone(),
            offset: g.offset,
            keys: crate::keys_to_bytes(&g.keys),
            values: crate::f32s_to_bytes(&g.values),
            ..Default::default()
        }
    }
}

impl From<&Push> for pb::PushRequest {
    fn from(p: &Push) -> Self {
        pb::PushRequest {
            model: p.model.clone(),
            lineage_epoch: p.lineage_epoch,
            grads: p.grads.iter().map(Into::into).collect(),
            meta: p.meta.as_ref().map(Into::into),
        }
    }
}

impl From<pb::PushAck> for PushAck {
    fn from(a: pb::PushAck) -> Self {
        PushAck { lineage_epoch: a.lineage_epoch, head_version: a.head_version, updates: a.updates }
    }
}

impl From<PushAck> for pb::PushAck {
    fn from(a: PushAck) -> Self {
        pb::PushAck { lineage_epoch: a.lineage_epoch, head_version: a.head_version, updates: a.updates }
    }
}

// ------------------------------------------------------------------ pulls, joins, predictions

impl From<&Slice> for pb::PullSlice {
    fn from(s: &Slice) -> Self {
        match s {
            Slice::Whole(t) => pb::PullSlice { tensor: t.clone(), ..Default::default() },
            Slice::Range { tensor, offset, len } => {
                pb::PullSlice { tensor: tensor.clone(), offset: *offset, len: *len, ..Default::default() }
            }
            Slice::Rows { tensor, keys } => {
                pb::PullSlice { tensor: tensor.clone(), keys: crate::keys_to_bytes(keys), ..Default::default() }
            }
        }
    }
}

impl From<&PullRequest> for pb::PullRequest {
    fn from(r: &PullRequest) -> Self {
        pb::PullRequest {
            model: r.model.clone(),
            version: r.version,
            slices: r.slices.iter().map(Into::into).collect(),
            ema: r.ema,
            worker_id: r.worker_id.clone(),
            clock: r.clock,
        }
    }
}

impl TryFrom<pb::PullResponse> for Pulled {
    type Error = ConvertError;
    fn try_from(r: pb::PullResponse) -> Result<Self, ConvertError> {
        let tensors = r
            .tensors
            .into_iter()
            .map(|t| {
                let v = crate::bytes_to_f32s(&t.values)
                    .ok_or_else(|| bad(format!("pulled tensor {:?}: values are not whole f32s", t.tensor)))?;
                Ok((t.tensor, v))
            })
            .collect::<Result<_, ConvertError>>()?;
        Ok(Pulled { version: r.version, lineage_epoch: r.lineage_epoch, updates: r.updates, tensors })
    }
}

impl From<pb::JoinResponse> for Joined {
    fn from(j: pb::JoinResponse) -> Self {
        Joined {
            lease_ms: j.lease_ms,
            lineage_epoch: j.lineage_epoch,
            clock: j.clock,
            offset: j.offset,
            shard: j.shard,
            live_workers: j.live_workers,
            incarnation: j.incarnation,
        }
    }
}

impl From<&Joined> for pb::JoinResponse {
    fn from(j: &Joined) -> Self {
        pb::JoinResponse {
            lease_ms: j.lease_ms,
            lineage_epoch: j.lineage_epoch,
            clock: j.clock,
            offset: j.offset,
            shard: j.shard.clone(),
            live_workers: j.live_workers,
            incarnation: j.incarnation,
        }
    }
}

impl TryFrom<pb::PredictResponse> for Predictions {
    type Error = ConvertError;
    fn try_from(r: pb::PredictResponse) -> Result<Self, ConvertError> {
        let values = crate::bytes_to_f32s(&r.values).ok_or_else(|| bad("predictions are not whole f32s".into()))?;
        Ok(Predictions { version: r.version, outputs: r.outputs, values })
    }
}

/// The wire form of a batch's features (raw dense values; labels are not sent).
impl From<&Batch> for pb::FeatureRows {
    fn from(b: &Batch) -> Self {
        pb::FeatureRows {
            rows: b.rows() as u32,
            features: b.features as u32,
            dense: crate::f32s_to_bytes(&b.dense),
            row_ptr: b.row_ptr.iter().map(|p| *p as u32).collect(),
            indices: b.idx.clone(),
            values: crate::f32s_to_bytes(&b.val),
        }
    }
}

/// Feature rows as a batch (labels unknown: NaN), with their structure checked: whole
/// floats, `rows × features` dense values, `rows + 1` non-decreasing row offsets ending at
/// the number of indices, one value per index. Model checks (feature count, index range)
/// are the caller's.
impl TryFrom<&pb::FeatureRows> for Batch {
    type Error = ConvertError;
    fn try_from(rows: &pb::FeatureRows) -> Result<Self, ConvertError> {
        let (n, f) = (rows.rows as usize, rows.features as usize);
        let dense = crate::bytes_to_f32s(&rows.dense).ok_or_else(|| bad("dense values are not whole f32s".into()))?;
        if n.checked_mul(f) != Some(dense.len()) {
            return Err(bad(format!("{} dense values for {n} rows of {f} features", dense.len())));
        }
        let vals = crate::bytes_to_f32s(&rows.values).ok_or_else(|| bad("values are not whole f32s".into()))?;
        let ptr_ok = rows.row_ptr.is_empty() && rows.indices.is_empty()
            || rows.row_ptr.len() == n + 1
                && rows.row_ptr.first() == Some(&0)
                && rows.row_ptr.windows(2).all(|w| w[0] <= w[1])
                && rows.row_ptr.last().copied() == Some(rows.indices.len() as u32);
        if !ptr_ok || vals.len() != rows.indices.len() {
            return Err(bad(
                "row_ptr must hold rows + 1 non-decreasing offsets ending at the number of indices, one value each"
                    .into(),
            ));
        }
        let mut b = Batch::new(f);
        b.dense = dense;
        b.idx = rows.indices.clone();
        b.val = vals;
        b.row_ptr =
            if rows.row_ptr.is_empty() { vec![0; n + 1] } else { rows.row_ptr.iter().map(|p| *p as usize).collect() };
        b.labels = vec![f32::NAN; n];
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let mut s = ModelSpec::new("m", ModelKind::Softmax);
        s.features = 4;
        s.classes = 3;
        s.optimizer = OptimizerSpec::new(OptimizerKind::Adam, 0.002);
        s.consistency = ConsistencyMode::Ssp;
        s.staleness = 2;
        s.commit.every_updates = 7;
        let back = ModelSpec::try_from(pb::ModelSpec::from(&s)).unwrap();
        assert_eq!(back, s);
        let e = ModelSpec::try_from(pb::ModelSpec { name: "x".into(), ..Default::default() }).unwrap_err();
        assert!(e.0.contains("\"x\"") && e.0.contains("spec.kind"), "{e}");
    }

    #[test]
    fn versions_keep_their_kind_and_progress() {
        let mut v = VersionRecord::new(5, VersionKind::Rollback);
        v.parent = Some(4);
        v.content_of = 2;
        v.workers.push(WorkerProgress { worker_id: "w".into(), incarnation: 3, seq: 9, ..Default::default() });
        v.metrics.insert("auc".into(), 0.7);
        let wire = pb::VersionInfo::from(("m", &v));
        assert_eq!(wire.model, "m");
        assert_eq!(VersionRecord::from(wire), v);
    }

    #[test]
    fn keys_travel_as_fixed_width_bytes() {
        let g = Gradient { tensor: "h".into(), keys: vec![1, 1 << 40, 7], values: vec![0.5; 3], ..Default::default() };
        let c = pb::TensorChunk::from(&g);
        assert_eq!(c.keys.len(), 24);
        assert_eq!(crate::bytes_to_keys(&c.keys), Some(g.keys.clone()));
        assert_eq!(crate::bytes_to_keys(&c.keys[1..]), None);
    }

    #[test]
    fn feature_rows_are_checked_for_structure() {
        let mut b = Batch::new(2);
        b.dense = vec![1.0, 2.0];
        b.idx = vec![3];
        b.val = vec![1.0];
        b.row_ptr = vec![0, 1];
        b.labels = vec![1.0];
        let wire = pb::FeatureRows::from(&b);
        let back = Batch::try_from(&wire).unwrap();
        assert_eq!((back.dense, back.idx, back.row_ptr), (b.dense, b.idx, b.row_ptr));
        let broken = pb::FeatureRows { row_ptr: vec![0, 2], ..wire };
        assert!(Batch::try_from(&broken).is_err());
    }
}
