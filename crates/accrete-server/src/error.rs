//! The one error type of the service and its mapping to gRPC status codes (the only place
//! that decides which code a failure gets). Every refusal also carries a stable name in the
//! `accrete-refusal` metadata (and a stale lineage the current epoch), so the typed client
//! tells refusals that share a code apart.
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
    #[error("{0}")]
    Convert(#[from] accrete_proto::convert::ConvertError),
    #[error("model {model:?}: push computed against lineage epoch {pushed}, but the current epoch is {current} (the model was rolled back or imported); pull and recompute")]
    StaleLineage { model: String, pushed: u64, current: u64 },
    #[error("model {model:?}: push computed against lineage epoch {pushed} of an earlier model of this name, which was deleted (this model began at epoch {first}); pull and recompute")]
    StaleModel { model: String, pushed: u64, first: u64, current: u64 },
    #[error("model {model:?}: worker {worker:?} is not in the model's barrier (it never joined, it left, or its lease expired); join again")]
    NotInBarrier { model: String, worker: String },
    #[error("model {model:?}: push from incarnation {pushed} of worker {worker:?}, but incarnation {current} has joined since; this process is stale")]
    StaleIncarnation { model: String, worker: String, pushed: u64, current: u64 },
    #[error("model {model:?} reads its data as `{recorded}`, but this worker reads `{given}`; use the model's columns (or create another model for these)")]
    SignatureMismatch { model: String, recorded: String, given: String },
    #[error("{0}")]
    Unavailable(String),
    /// A global commit holds this partition's pushes for a moment: wait and push again
    /// (the push handlers do; never sent to a client).
    #[error("model {0:?}: pushes are held by a global commit")]
    Held(String),
    #[error("watch fell behind by {0} events; watch again with after_version to catch up")]
    WatchLagged(u64),
    #[error("{what} is {bytes} bytes, over the server's message limit of {limit} bytes (--max-message-bytes)")]
    TooLarge { what: String, bytes: usize, limit: usize },
    #[error("model {model:?}: {uncommitted} updates are not committed and its commits fail ({cause}); pushes are refused until a commit succeeds")]
    Uncommittable { model: String, uncommitted: u64, cause: String },
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
            ServiceError::Spec(_)
            | ServiceError::Update { .. }
            | ServiceError::Invalid(_)
            | ServiceError::Convert(_) => Code::InvalidArgument,
            ServiceError::StaleLineage { .. } | ServiceError::StaleModel { .. } | ServiceError::WatchLagged(_) => {
                Code::Aborted
            }
            ServiceError::NotInBarrier { .. }
            | ServiceError::StaleIncarnation { .. }
            | ServiceError::SignatureMismatch { .. } => Code::FailedPrecondition,
            ServiceError::TooLarge { .. } | ServiceError::Uncommittable { .. } => Code::ResourceExhausted,
            ServiceError::Store(e) if e.is_disk_full() => Code::ResourceExhausted,
            ServiceError::Unavailable(_) | ServiceError::Held(_) => Code::Unavailable,
            ServiceError::Store(_) | ServiceError::Internal(_) => Code::Internal,
        }
    }

    /// The stable name of the refusal (metadata `accrete-refusal`).
    pub fn refusal(&self) -> &'static str {
        match self {
            ServiceError::ModelNotFound(_) => "model-not-found",
            ServiceError::VersionNotFound { .. } => "version-not-found",
            ServiceError::ModelExists(_) => "model-exists",
            ServiceError::TagExists { .. } => "tag-exists",
            ServiceError::Spec(_) => "invalid-spec",
            ServiceError::Update { .. } | ServiceError::Invalid(_) | ServiceError::Convert(_) => "invalid",
            ServiceError::StaleLineage { .. } | ServiceError::StaleModel { .. } => "stale-lineage",
            ServiceError::NotInBarrier { .. } => "not-in-barrier",
            ServiceError::StaleIncarnation { .. } => "stale-incarnation",
            ServiceError::SignatureMismatch { .. } => "signature-mismatch",
            ServiceError::TooLarge { .. } => "too-large",
            ServiceError::Uncommittable { .. } => "commits-failing",
            ServiceError::Store(e) if e.is_disk_full() => "disk-full",
            ServiceError::Unavailable(_) | ServiceError::Held(_) => "unavailable",
            ServiceError::WatchLagged(_) => "watch-lagged",
            ServiceError::Store(_) | ServiceError::Internal(_) => "internal",
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        }
        let mut status = Status::new(code, capped(e.to_string()));
        let md = status.metadata_mut();
        md.insert("accrete-refusal", tonic::metadata::MetadataValue::from_static(e.refusal()));
        if let ServiceError::StaleLineage { current, .. } | ServiceError::StaleModel { current, .. } = e {
            md.insert("accrete-lineage-epoch", current.into());
        }
        status
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What tonic's codec says of a message over the transport's limit (4x the server's
/// limit; the handlers refuse anything between with a message naming what was too large).
const TRANSPORT_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// A status from the transport, as the service answers it: a message over the transport's
/// limit is `RESOURCE_EXHAUSTED` naming the server's limit (tonic says `OUT_OF_RANGE`);
/// anything else is passed on.
pub fn from_transport(status: Status, limit: usize) -> Status {
    let found = status.message().strip_prefix(TRANSPORT_TOO_LARGE);
    let bytes = found.and_then(|f| f.split(' ').next()).and_then(|n| n.parse().ok());
    match bytes {
        Some(bytes) if status.code() == Code::OutOfRange => {
            ServiceError::TooLarge { what: "a message".into(), bytes, limit }.into()
        }
        _ => status,
    }
}

/// [`from_transport`] for a status tonic answered before any handler ran (a unary
/// request it could not decode): rewrites the response's status headers.
pub fn transport_response<B>(
    mut res: tonic::codegen::http::Response<B>,
    limit: usize,
) -> tonic::codegen::http::Response<B> {
    let h = res.headers_mut();
    if h.get("grpc-status").is_none_or(|c| c.as_bytes() != b"11") {
        return res;
    }
    let Some(status) = Status::from_header_map(h) else { return res };
    let answer = from_transport(status, limit);
    if answer.code() != Code::OutOfRange {
        h.remove("grpc-message");
        h.remove("grpc-status-details-bin");
        if let Err(e) = answer.add_header(h) {
            tracing::warn!(error = %e, "cannot rewrite a transport status");
        }
    }
    res
}

/// The longest message a status carries. Messages echo input (names, ids, labels), and a
/// status travels in an HTTP/2 header: a 1 MiB name would exceed the peer's header limit
/// and the status, code included, would be lost.
const MAX_MESSAGE_BYTES: usize = 4096;

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary, saying how much was cut.
fn capped(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… ({} more bytes)", total - end));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_capped() {
        let e = ServiceError::ModelNotFound("é".repeat(1 << 20));
        let s = Status::from(e);
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().len() < MAX_MESSAGE_BYTES + 40, "{}", s.message().len());
        assert!(s.message().starts_with("model \"éé") && s.message().ends_with("more bytes)"));
        assert_eq!(capped("short".into()), "short");
    }
}
