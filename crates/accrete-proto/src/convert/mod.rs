//! Conversions between the wire types and the core types, written once. Wire-to-core
//! conversions that can fail (an unknown enum value, bytes that are not whole floats)
//! are `TryFrom` with a [`ConvertError`] naming the field.
//!
//! - this file: the error and the enums (model, optimizer and version kinds, consistency,
//!   event kinds);
//! - `model.rs`: model specs and model info;
//! - `version.rs`: versions, worker progress and version events;
//! - `data.rs`: pushes, pulls, joins, predictions and feature rows;
//! - `cluster.rs`: the messages of a global commit.
mod cluster;
mod data;
pub use data::batch_pull;
mod model;
#[cfg(test)]
mod tests;
mod version;

use crate::v1 as pb;
use accrete_core::{ConsistencyMode, EventKind, ModelKind, OptimizerKind, VersionKind};

/// A wire message that has no core meaning: names the field and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

pub(crate) fn bad(message: String) -> ConvertError {
    ConvertError(message)
}

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
            OptimizerKind::Normalized => pb::OptimizerKind::Normalized,
            OptimizerKind::Rls => pb::OptimizerKind::Rls,
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
        Ok(pb::OptimizerKind::Normalized) => Ok(OptimizerKind::Normalized),
        Ok(pb::OptimizerKind::Rls) => Ok(OptimizerKind::Rls),
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

/// A consistency mode from its wire value; unspecified means ASP, unknown is an error.
pub fn consistency_mode(v: i32) -> Result<ConsistencyMode, ConvertError> {
    match pb::ConsistencyMode::try_from(v) {
        Ok(pb::ConsistencyMode::Bsp) => Ok(ConsistencyMode::Bsp),
        Ok(pb::ConsistencyMode::Ssp) => Ok(ConsistencyMode::Ssp),
        Ok(pb::ConsistencyMode::Asp | pb::ConsistencyMode::Unspecified) => Ok(ConsistencyMode::Asp),
        Err(_) => Err(bad(format!("spec.consistency.mode {v} is unknown (asp, bsp or ssp)"))),
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

/// A version kind from its wire value; `None` when unspecified (an older server's).
pub fn version_kind(v: i32) -> Option<VersionKind> {
    match pb::VersionKind::try_from(v) {
        Ok(pb::VersionKind::Created) => Some(VersionKind::Created),
        Ok(pb::VersionKind::Policy) => Some(VersionKind::Policy),
        Ok(pb::VersionKind::Manual) => Some(VersionKind::Manual),
        Ok(pb::VersionKind::Rollback) => Some(VersionKind::Rollback),
        Ok(pb::VersionKind::Import) => Some(VersionKind::Import),
        _ => None,
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
pub(crate) struct EventKindOf(pub(crate) EventKind);
