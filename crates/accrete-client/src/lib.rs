//! The typed gRPC client of accrete, shared by workers, the evaluator and the CLI: connect
//! with sensible message limits, and move whole models to and from safetensors files.

pub mod safetensors;

use accrete_proto::v1::models_client::ModelsClient;
use accrete_proto::v1::parameters_client::ParametersClient;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint};

/// The largest message the client sends or accepts (the server refuses pushes over its
/// own limit, 64 MiB by default, with RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Protocol(String),
}

/// The gRPC code as its canonical upper-case name (NOT_FOUND, ABORTED, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Both services over one HTTP/2 connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    pub models: ModelsClient<Channel>,
    pub params: ParametersClient<Channel>,
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(url: &str) -> Result<Client> {
        let err = |source| ClientError::Connect { url: url.to_string(), source };
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(err)?
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect()
            .await
            .map_err(err)?;
        Ok(Client::from_channel(channel))
    }

    pub fn from_channel(channel: Channel) -> Client {
        Client {
            models: ModelsClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            params: ParametersClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }
}
