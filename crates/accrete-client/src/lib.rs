//! The typed gRPC client of accrete: the one API that workers, the evaluator, the CLI and
//! the quickstart use to reach a server. Every call takes and returns core types
//! (`accrete_core`), and every failure comes back as a typed [`ClientError`]; protobuf and
//! gRPC codes stay inside this crate, and so does routing over a cluster.
//!
//! - [`Client`]: connect, then model calls ([`admin`]) and the data plane ([`data`]);
//! - [`cluster`]: the cluster's map, routing model calls to a model's home, the calls
//!   between servers; `split`: a partitioned model's pulls and pushes, per partition;
//! - [`retry`]: riding out a server's restart (backoff, request ids);
//! - [`safetensors`]: whole models to and from files;
//! - [`raw`]: the generated stubs, for wire-contract tests and benchmarks only.

pub mod admin;
pub mod cluster;
pub mod data;
pub mod error;
pub mod raw;
pub mod retry;
pub mod safetensors;
mod split;

pub use admin::Watch;
pub use cluster::ClusterView;
pub use data::PushStream;
pub use error::{code_name, ClientError, Result};
pub use retry::{request_id, DEFAULT_PATIENCE};

use accrete_proto::v1::cluster_client::ClusterClient;
use accrete_proto::v1::models_client::ModelsClient;
use accrete_proto::v1::parameters_client::ParametersClient;
use tonic::transport::{Channel, Endpoint};

/// The largest message the client sends or accepts (the server refuses pushes over its
/// own limit, 64 MiB by default, with RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Both services of one server over one HTTP/2 connection, and how long to ride out the
/// server's outages ([`retry`]). Cheap to clone; clones share the connection and the
/// outage.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    retry: retry::Retry,
    models: ModelsClient<Channel>,
    params: ParametersClient<Channel>,
    cluster: ClusterClient<Channel>,
    /// The cluster's map and its servers' clients (`None`: a server of its own).
    routes: Option<std::sync::Arc<cluster::Routes>>,
}

/// An endpoint for `url` with the settings every accrete client uses: Nagle off, large
/// flow-control windows for bulk floats.
fn endpoint(url: &str) -> Result<Endpoint> {
    let e = Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientError::BadUrl { url: url.to_string(), cause: error::chain_text(&e) })?;
    // Keepalive pings find a server that vanished without closing its connections (a
    // rescheduled pod, a partition): calls waiting on it fail, and are retried, instead
    // of hanging. The connect timeout bounds each try at a host that does not answer.
    Ok(e.tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// An HTTP/2 channel to `url`, connected once. (A channel that has been connected
/// connects again by itself on its next call after a broken connection.)
pub(crate) async fn channel(url: &str) -> Result<Channel> {
    endpoint(url)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect { url: url.to_string(), cause: error::chain_text(&e) })
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) once: no retries, on connecting
    /// or later. For tests and tools that want the first failure.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_patiently(url, std::time::Duration::ZERO).await
    }

    /// Connects to `url`, riding out an unreachable server for up to `patience` (on
    /// connecting, and later on every call that is safe to repeat).
    pub async fn connect_patiently(url: &str, patience: std::time::Duration) -> Result<Client> {
        let retry = retry::Retry::new(url, patience);
        let channel = retry.run(|| channel(url)).await?;
        let mut c = Client::of(url, retry, channel);
        let view = c.cluster_map().await?;
        if view.servers.len() > 1 {
            c.routes = Some(std::sync::Arc::new(cluster::Routes::new(view)));
        }
        Ok(c)
    }

    /// A client that connects on its first call (and never fails here but for a bad URL):
    /// for a background loop, such as heartbeats, that must outlive an outage.
    pub fn lazy(url: &str) -> Result<Client> {
        let channel = endpoint(url)?.connect_lazy();
        Ok(Client::of(url, retry::Retry::new(url, std::time::Duration::ZERO), channel))
    }

    /// [`Client::lazy`], riding out outages for up to `patience` (a cluster's peers).
    pub fn lazy_patient(url: &str, patience: std::time::Duration) -> Result<Client> {
        let channel = endpoint(url)?.connect_lazy();
        Ok(Client::of(url, retry::Retry::new(url, patience), channel))
    }

    fn of(url: &str, retry: retry::Retry, channel: Channel) -> Client {
        let raw = raw::RawClient::from_channel(channel);
        Client {
            url: url.to_string(),
            retry,
            models: raw.models,
            params: raw.params,
            cluster: raw.cluster,
            routes: None,
        }
    }

    /// The server's URL, for a second connection of the same caller (a heartbeat thread).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long this client rides out an unreachable server.
    pub fn patience(&self) -> std::time::Duration {
        self.retry.patience()
    }
}
