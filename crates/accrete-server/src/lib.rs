//! The accrete parameter server: holds models, applies pushed gradients with their
//! server-side optimizers, commits immutable versions to sled, rolls back, imports and
//! exports, and streams version events.
//!
//! Entry point: [`run`] takes a bound listener and a shutdown future, in the manner of
//! mini-redis, so tests bind `127.0.0.1:0` and hand the listener in.
//!
//! A push reads top to bottom: `service::params` (decode) → [`model::ModelHandle::push`]
//! (the runtime) → [`engine::Engine::push`] (pure) → the optimizer in `accrete_core::Params`.
//! Versions are written by the runtime (`model::versions`), on blocking threads, and the
//! commit policy runs in one task per server (`policy`).

pub mod cluster;
pub mod convert;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod http;
pub mod model;
pub mod policy;
pub mod predict;
pub mod rate;
pub mod registry;
pub mod service;
pub mod sync;

use accrete_proto::v1::cluster_server::ClusterServer;
use accrete_proto::v1::models_server::ModelsServer;
use accrete_proto::v1::parameters_server::ParametersServer;
use accrete_store::Store;
use registry::Registry;
use service::Service;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// How long in-flight calls may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the server needs to start. Built by the binary from flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// The largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// How long a worker that sends nothing (no heartbeat, pull or push) stays in its
    /// model's SSP/BSP barrier.
    pub lease: std::time::Duration,
    /// `--peers`: every server of the cluster, this one included (`None`: a server of
    /// its own).
    pub peers: Option<String>,
    /// `--advertise`: this server's address as the peers list names it (default: the
    /// listen address).
    pub advertise: Option<String>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            max_message_bytes: 64 << 20,
            cache_bytes: 16 << 20,
            lease: model::DEFAULT_LEASE,
            peers: None,
            advertise: None,
        }
    }

    pub fn validate(&self) -> Result<(), ServerError> {
        if self.max_message_bytes < 1024 {
            return Err(ServerError::Config(format!("max message bytes {} is below 1024", self.max_message_bytes)));
        }
        if self.lease < std::time::Duration::from_millis(100) {
            return Err(ServerError::Config(format!("worker lease {:?} is below 100 ms", self.lease)));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] accrete_store::StoreError),
    #[error("cannot load models: {0}")]
    Load(#[from] error::ServiceError),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` resolves: then stops accepting, lets in-flight calls finish,
/// commits what each model applied since its last version, and flushes the store.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve(config, listener, None, shutdown).await
}

/// [`run`], plus the dashboard and `/metrics` on `http_listener` when given.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_then(config, listener, http_listener, shutdown, || {}).await
}

/// [`serve`], calling `ready` once the data dir is open and the services are about to
/// answer: the moment to say "listening" (a refused or slow open never looks started).
pub async fn serve_then(
    config: ServerConfig,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<(), ServerError> {
    config.validate()?;
    let cluster = match &config.peers {
        Some(peers) => {
            let me = match &config.advertise {
                Some(a) => a.clone(),
                None => {
                    listener.local_addr().map_err(|e| ServerError::Config(format!("listen address: {e}")))?.to_string()
                }
            };
            let map = accrete_core::cluster::ClusterMap::from_peers(peers, &me).map_err(ServerError::Config)?;
            tracing::info!(servers = %map.servers.join(","), me = map.me, "cluster");
            Some(Arc::new(cluster::Cluster::new(map).map_err(ServerError::Config)?))
        }
        None => None,
    };
    let (dir, cache, lease) = (config.data_dir.clone(), config.cache_bytes, config.lease);
    let reg = tokio::task::spawn_blocking(move || -> Result<Registry, ServerError> {
        Ok(Registry::open_in(Store::open(&dir, cache)?, lease, cluster)?)
    })
    .await
    .map_err(|e| ServerError::Config(format!("startup task failed: {e}")))??;
    let reg = Arc::new(reg);
    if let Some(c) = reg.cluster() {
        tokio::spawn(c.clone().recover_at_start(reg.clone()));
    }
    let policy = tokio::spawn(policy::run(reg.clone()));
    let http_task = http_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "dashboard and /metrics");
        let stopping = reg.stopping();
        let app = http::router(reg.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stopping).await {
                tracing::error!(error = %e, "http server failed");
            }
        })
    });
    let limit = config.max_message_bytes;
    // The transport admits up to 4x the limit so the handlers can refuse oversize messages
    // with RESOURCE_EXHAUSTED and a message naming the limit.
    let transport_limit = limit.saturating_mul(4);
    let svc = Service::new(reg.clone(), limit);
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ModelsServer<Service>>().await;
    health.set_serving::<ParametersServer<Service>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(accrete_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err = |e: tonic_reflection::server::Error| ServerError::Config(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;
    tracing::info!(addr = ?listener.local_addr().ok(), dir = %config.data_dir.display(), "serving");
    ready();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown_reg = reg.clone();
    let signal = async move {
        shutdown.await;
        if let Some(c) = shutdown_reg.cluster() {
            c.commit_before_stop(&shutdown_reg).await;
        }
        // Long-lived streams (watchers) end now; unary calls and pushes in flight finish.
        shutdown_reg.begin_shutdown();
        let _ = stopping_tx.send(());
    };
    let serve = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(move |res| error::transport_response(res, limit)))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ModelsServer::new(svc.clone())
                .max_decoding_message_size(transport_limit)
                .max_encoding_message_size(transport_limit),
        )
        .add_service(
            ClusterServer::new(svc.clone())
                .max_decoding_message_size(transport_limit)
                .max_encoding_message_size(transport_limit),
        )
        .add_service(
            ParametersServer::new(svc)
                .max_decoding_message_size(transport_limit)
                .max_encoding_message_size(transport_limit),
        )
        .serve_with_incoming_shutdown(incoming(listener), signal);
    // A client that keeps a call open past the grace period does not keep the server up.
    let grace = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!(secs = SHUTDOWN_GRACE.as_secs(), "calls still open after the grace period; stopping anyway");
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = serve => r,
        _ = grace => Ok(()),
    };
    policy.abort();
    if let Some(t) = http_task {
        reg.begin_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let last = reg.clone();
    tokio::task::spawn_blocking(move || last.commit_at_stop())
        .await
        .map_err(|e| ServerError::Config(format!("commit task: {e}")))?;
    let store = reg.store().clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| ServerError::Config(format!("flush task: {e}")))??;
    tracing::info!("stopped");
    Ok(result?)
}

/// Accepted connections with Nagle's algorithm off: tonic's `tcp_nodelay` applies only to
/// listeners it binds itself, and with Nagle on, every small response (an ack, a pull)
/// waits for the peer's delayed ACK, about 40 ms.
fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let stream = conn?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
