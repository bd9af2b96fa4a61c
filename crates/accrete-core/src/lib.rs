//! Pure model math of accrete: model specifications and their validation, parameter
//! layouts, server-side optimizers, seeded initialisation and the live parameter state with
//! its dirty-chunk tracking. No IO, no async: everything here is tested without sockets.

pub mod features;
pub mod glm;
pub mod kinds;
pub mod layout;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod params;
pub mod rng;
pub mod spec;

pub use layout::{layout, TensorSpec};
pub use optim::Optimizer;
pub use params::{Params, TensorState, CHUNK_FLOATS};
pub use spec::{
    CommitPolicy, ConsistencyMode, InitSpec, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec, SpecError,
};
