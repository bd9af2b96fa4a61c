//! Pure model math of accrete and the types every role shares: model specifications and
//! their validation, parameter layouts, server-side optimizers, seeded initialisation, the
//! live parameter state with its dirty-chunk tracking, the model kinds' math and scoring,
//! and the plain types of the API (model info, versions, pushes, pulls). No IO, no async:
//! everything here is tested without sockets.

pub mod chart;
pub mod cluster;
pub mod cut;
pub mod features;
pub mod glm;
pub mod info;
pub mod kinds;
pub mod layout;
pub mod local;
pub mod lsq;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod params;
pub mod partition;
pub mod progressive;
pub mod pull;
pub mod push;
pub mod rng;
pub mod scoring;
pub mod signature;
pub mod spec;
mod undo;
pub mod version;
pub mod view;

pub use info::{ModelInfo, PartitionInfo, TensorInfo};
pub use layout::{layout, TensorSpec};
pub use optim::Optimizer;
pub use params::{Params, TensorState, CHUNK_FLOATS};
pub use signature::InputSignature;
pub use spec::{
    CommitPolicy, ConsistencyMode, InitSpec, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec, SpecError,
};
pub use version::{EventKind, VersionEvent, VersionKind, VersionRecord, WorkerProgress};
