//! The gRPC services over the registry: `Models` (admin, versions, import/export, watch;
//! `models.rs`) and `Parameters` (pull, push, streaming push, join/heartbeat/leave,
//! predict; `params.rs`). A handler decodes the request into core types, calls the model
//! (the runtime in `model`), and encodes the answer; blocking store work runs on blocking
//! threads ([`blocking`]). Every refusal is a [`ServiceError`], turned into a status by the
//! one mapping in `error.rs`. Each call runs in a span `rpc` with its method and model.
mod cluster;
mod export;
mod import;
mod models;
mod params;
mod pull;
mod watch;

use crate::convert::model_info;
use crate::error::{Result, ServiceError};
use crate::model::ModelHandle;
use crate::registry::Registry;
use accrete_core::optim::LeKeys;
use accrete_core::VersionRecord;
use accrete_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Response, Status};

#[derive(Clone)]
pub struct Service {
    reg: Arc<Registry>,
    limit: usize,
    heavy: Arc<tokio::sync::Semaphore>,
}

/// Whole copies of models the service holds at once (see [`Service::heavy`]).
const HEAVY_AT_ONCE: usize = 2;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What a handler answers.
type Reply<T> = Result<Response<T>, Status>;

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServiceError::Internal(format!("task failed: {e}")))?
}

/// The span of one call: its method and model (empty for calls about no one model).
fn rpc_span(method: &'static str, model: &str) -> tracing::Span {
    tracing::info_span!("rpc", method, model = %model)
}

/// [`rpc_span`] for the data plane's calls (pull, push, heartbeat, predict), made many
/// times a second: at debug level, so the default log level does not pay for them.
fn data_span(method: &'static str, model: &str) -> tracing::Span {
    tracing::debug_span!("rpc", method, model = %model)
}

impl Service {
    pub fn new(reg: Arc<Registry>, limit: usize) -> Self {
        Service { reg, limit, heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)) }
    }

    /// A permit for work that makes a whole copy of a model (loading a version for export,
    /// pull or predict; assembling an import): at most [`HEAVY_AT_ONCE`] at a time, the
    /// others wait. (An export's stream keeps its copy after the permit is returned, so a
    /// slow reader cannot hold up the evaluator's version pulls.)
    async fn heavy(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.heavy.clone().acquire_owned().await.map_err(|e| ServiceError::Internal(format!("{e}")))
    }

    /// The cluster, when `h` is a partitioned model's home: its model calls are
    /// coordinated over the partitions (a partition's own calls are not).
    fn coordinator(&self, h: &ModelHandle) -> Option<&Arc<crate::cluster::Cluster>> {
        self.reg.cluster().filter(|_| h.spec().parts() > 1 && h.spec().partition == 0)
    }

    /// Refuses a call that changes a whole model's versions on partition i > 0 alone: its
    /// home coordinates them over every partition.
    fn whole_only(&self, h: &ModelHandle, what: &str) -> Result<()> {
        let s = h.spec();
        if s.partition == 0 {
            return Ok(());
        }
        Err(ServiceError::Invalid(format!(
            "model {:?} is partition {} of model {:?}: a {what} is the whole model's; call it on {:?} (its home \
             coordinates it over every partition)",
            h.name(),
            s.partition,
            s.base_name(),
            s.base_name()
        )))
    }

    fn check_size(&self, what: impl FnOnce() -> String, bytes: usize) -> Result<()> {
        if bytes > self.limit {
            return Err(ServiceError::TooLarge { what: what(), bytes, limit: self.limit });
        }
        Ok(())
    }

    /// Loads a retained version's exact parameters on a blocking thread, under a
    /// [`Service::heavy`] permit.
    async fn load_version(&self, h: &Arc<ModelHandle>, v: u64) -> Result<(VersionRecord, accrete_core::Params)> {
        let _permit = self.heavy().await?;
        on_model(h, move |h| h.load_version(v)).await
    }
}

/// Runs blocking store work `f` on the model `h` (a clone of the handle goes to the
/// blocking thread).
async fn on_model<T: Send + 'static>(
    h: &Arc<ModelHandle>,
    f: impl FnOnce(&ModelHandle) -> Result<T> + Send + 'static,
) -> Result<T> {
    let h = h.clone();
    blocking(move || f(&h)).await
}

/// A model as the wire describes it. Blocking (counts the versions in the store).
fn info_of(h: &ModelHandle) -> Result<pb::ModelInfo> {
    Ok((&model_info(h, h.versions()?.len() as u64)).into())
}

/// A version as the wire carries it.
fn version_info(h: &ModelHandle, v: &VersionRecord) -> pb::VersionInfo {
    (h.name(), v).into()
}

/// Keys must come as fixed-width little-endian u64 bytes; varint keys are an older client's.
fn check_keys(keys: &[u8], varint_keys: &[u64]) -> std::result::Result<(), String> {
    if !varint_keys.is_empty() {
        return Err("keys came as varints (field 4), which this server no longer reads; send them as \
                    little-endian u64 bytes (field keys), as clients of this version do"
            .into());
    }
    if !LeKeys(keys).whole() {
        return Err(format!("keys have {} bytes, not a multiple of 8 (little-endian u64)", keys.len()));
    }
    Ok(())
}
