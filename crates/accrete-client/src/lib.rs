//! The typed gRPC client of accrete: the one API that workers, the evaluator, the CLI and
//! the quickstart use to reach a server. Every call takes and returns core types
//! (`accrete_core`), and every failure comes back as a typed [`ClientError`]; protobuf and
//! gRPC codes stay inside this crate. Routing by key range will live here too.
//!
//! - [`Client`]: connect, then model calls ([`admin`]) and the data plane ([`data`]);
//! - [`safetensors`]: whole models to and from files;
//! - [`raw`]: the generated stubs, for wire-contract tests and benchmarks only.

pub mod admin;
pub mod data;
pub mod error;
pub mod raw;
pub mod safetensors;

pub use admin::Watch;
pub use data::PushStream;
pub use error::{code_name, ClientError, Result};

use accrete_proto::v1::models_client::ModelsClient;
use accrete_proto::v1::parameters_client::ParametersClient;
use tonic::transport::{Channel, Endpoint};

/// The largest message the client sends or accepts (the server refuses pushes over its
/// own limit, 64 MiB by default, with RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Both services of one server over one HTTP/2 connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    models: ModelsClient<Channel>,
    params: ParametersClient<Channel>,
}

/// An HTTP/2 channel to `url` with the settings every accrete client uses: Nagle off,
/// large flow-control windows for bulk floats.
pub(crate) async fn channel(url: &str) -> Result<Channel> {
    let err = |source| ClientError::Connect { url: url.to_string(), source };
    Endpoint::from_shared(url.to_string())
        .map_err(err)?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await
        .map_err(err)
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(url: &str) -> Result<Client> {
        let channel = channel(url).await?;
        let raw = raw::RawClient::from_channel(channel);
        Ok(Client { url: url.to_string(), models: raw.models, params: raw.params })
    }

    /// The server's URL, for a second connection of the same caller (a heartbeat thread).
    pub fn url(&self) -> &str {
        &self.url
    }
}
