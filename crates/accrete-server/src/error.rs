//! The one error type of the service and its mapping to gRPC status codes (the only place
//! that decides which code a failure gets).
use accrete_core::params::UpdateError;
use accrete_core::SpecError;
use accrete_store::StoreError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    #[error("model {model:?} has no version {version} (retained versions: {retained})")]
    VersionNotFound { model: String, version: u64, retained: String },
    #[error("model {0:?} already exists")]
    ModelExists(String),
    #[error("model {model:?}: tag {label:?} is already on version {version}")]
    TagExists { model: String, label: String, version: u64 },
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("model {model:?}: {source}")]
    Update { model: String, source: UpdateError },
    #[error("{0}")]
    Invalid(String),
    #[error("model {model:?}: push computed against lineage epoch {pushed}, but the current epoch is {current} (the model was rolled back or imported); pull and recompute")]
    StaleLineage { model: String, pushed: u64, current: u64 },
    #[error("model {model:?}: worker {worker:?} is not in the BSP barrier (its lease expired, or it never joined); join again")]
    NotInBarrier { model: String, worker: String },
    #[error("{what} is {bytes} bytes, over the server's message limit of {limit} bytes (--max-message-bytes)")]
    TooLarge { what: String, bytes: usize, limit: usize },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::ModelNotFound(_) | ServiceError::VersionNotFound { .. } => Code::NotFound,
            ServiceError::ModelExists(_) | ServiceError::TagExists { .. } => Code::AlreadyExists,
            ServiceError::Spec(_) | ServiceError::Update { .. } | ServiceError::Invalid(_) => Code::InvalidArgument,
            ServiceError::StaleLineage { .. } => Code::Aborted,
            ServiceError::NotInBarrier { .. } => Code::FailedPrecondition,
            ServiceError::TooLarge { .. } => Code::ResourceExhausted,
            ServiceError::Store(_) | ServiceError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        }
        Status::new(code, e.to_string())
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
