//! The client's one error type. Refusals come back typed, so callers decide by kind
//! (stale lineage, not in the barrier, …) and never by gRPC code: this file is the only
//! place on the client side that reads a status code.
use std::path::PathBuf;
use tonic::Code;

/// Metadata key the server sets on every refusal: a stable name of what was refused.
pub const REFUSAL_KEY: &str = "accrete-refusal";
/// Metadata key carrying the current lineage epoch with a stale-lineage refusal.
pub const EPOCH_KEY: &str = "accrete-lineage-epoch";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `cause` is the transport's chain of errors in one line, each message once
    /// (`tcp connect error: Connection refused (os error 111)`).
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("{url:?} is not a server URL (e.g. http://127.0.0.1:50051): {cause}")]
    BadUrl { url: String, cause: String },
    /// An unknown model or version.
    #[error("NOT_FOUND: {0}")]
    NotFound(String),
    #[error("ALREADY_EXISTS: {0}")]
    AlreadyExists(String),
    /// A push computed against an older lineage (the model was rolled back or imported):
    /// pull again and go on from `current_epoch`.
    #[error("ABORTED: {message}")]
    StaleLineage { current_epoch: u64, message: String },
    /// The worker is not in the model's BSP barrier (its lease expired): join again.
    #[error("FAILED_PRECONDITION: {0}")]
    NotInBarrier(String),
    /// The push came from an older incarnation of its worker: a newer one has joined.
    #[error("FAILED_PRECONDITION: {0}")]
    StaleIncarnation(String),
    /// The server cannot be reached, the connection broke, or the server is stopping:
    /// worth retrying later (the client does, for calls that are safe to repeat).
    #[error("UNAVAILABLE: {0}")]
    Unavailable(String),
    /// A watch fell too far behind the server's events; watch again from the last version seen.
    #[error("ABORTED: {0}")]
    WatchLagged(String),
    /// The request was refused as invalid (shape, values, spec, size).
    #[error("{code}: {message}")]
    Invalid { code: &'static str, message: String },
    /// Any other failure the server reports (internal errors, cancelled calls).
    #[error("{code}: {message}")]
    Server { code: &'static str, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The server answered with something this client cannot read.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The server could not be reached (or stopped, or the connection broke): the call
    /// may not have been seen at all, or its answer was lost.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unavailable(_) | ClientError::Connect { .. })
    }
}

/// A status made on this side from a transport failure (a reset or closed connection, a
/// refused connect) rather than sent by a server: only those carry a source error.
fn is_transport_failure(s: &tonic::Status) -> bool {
    use std::error::Error;
    s.source().is_some() && matches!(s.code(), Code::Unknown | Code::Cancelled | Code::Internal | Code::Unavailable)
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        if is_transport_failure(&s) {
            return ClientError::Unavailable(transport_message(&s));
        }
        let refusal = s.metadata().get(REFUSAL_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let message = s.message().to_string();
        match (s.code(), refusal) {
            (Code::NotFound, _) => ClientError::NotFound(message),
            (Code::AlreadyExists, _) => ClientError::AlreadyExists(message),
            (Code::Aborted, "stale-lineage" | "") => {
                let current_epoch =
                    s.metadata().get(EPOCH_KEY).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
                ClientError::StaleLineage { current_epoch, message }
            }
            (Code::Aborted, "watch-lagged") => ClientError::WatchLagged(message),
            (Code::FailedPrecondition, "stale-incarnation") => ClientError::StaleIncarnation(message),
            (Code::FailedPrecondition, "not-in-barrier" | "") => ClientError::NotInBarrier(message),
            (Code::Unavailable, _) => ClientError::Unavailable(message),
            (c @ (Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange), _) => {
                ClientError::Invalid { code: code_name(c), message }
            }
            (c, _) => ClientError::Server { code: code_name(c), message },
        }
    }
}

/// A transport failure's message with its causes ("transport error: connection reset"
/// says little without them).
fn transport_message(s: &tonic::Status) -> String {
    use std::error::Error;
    causes(s.message().to_string(), s.source())
}

/// An error and its causes in one line, each message once: transport errors nest
/// wrappers that repeat each other ("transport error: transport error: tcp connect error:
/// tcp connect error: …"). The generic "transport error" is dropped when a cause follows.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let first = e.to_string();
    let text = causes(first.clone(), e.source());
    match text.strip_prefix("transport error: ") {
        Some(rest) if first == "transport error" => rest.to_string(),
        _ => text,
    }
}

fn causes(mut out: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out = if out.is_empty() { text } else { format!("{out}: {text}") };
        }
        cause = c.source();
    }
    out
}

impl From<accrete_proto::convert::ConvertError> for ClientError {
    fn from(e: accrete_proto::convert::ConvertError) -> Self {
        ClientError::Protocol(format!("unreadable answer from the server: {e}"))
    }
}

/// The gRPC code as its canonical upper-case name (NOT_FOUND, ABORTED, …).
pub fn code_name(code: Code) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, refusal: &str, epoch: Option<u64>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "why");
        if !refusal.is_empty() {
            s.metadata_mut().insert(REFUSAL_KEY, refusal.parse().unwrap());
        }
        if let Some(e) = epoch {
            s.metadata_mut().insert(EPOCH_KEY, e.to_string().parse().unwrap());
        }
        s
    }

    #[test]
    fn refusals_come_back_typed() {
        let e = ClientError::from(status(Code::Aborted, "stale-lineage", Some(7)));
        assert!(matches!(e, ClientError::StaleLineage { current_epoch: 7, .. }), "{e:?}");
        assert_eq!(e.to_string(), "ABORTED: why");
        let e = ClientError::from(status(Code::FailedPrecondition, "stale-incarnation", None));
        assert!(matches!(e, ClientError::StaleIncarnation(_)), "{e:?}");
        let e = ClientError::from(status(Code::FailedPrecondition, "not-in-barrier", None));
        assert!(matches!(e, ClientError::NotInBarrier(_)), "{e:?}");
        let e = ClientError::from(status(Code::NotFound, "", None));
        assert_eq!(e.to_string(), "NOT_FOUND: why");
        let e = ClientError::from(status(Code::ResourceExhausted, "too-large", None));
        assert!(matches!(e, ClientError::Invalid { code: "RESOURCE_EXHAUSTED", .. }), "{e:?}");
        let e = ClientError::from(status(Code::Internal, "", None));
        assert!(matches!(e, ClientError::Server { code: "INTERNAL", .. }), "{e:?}");
    }
}
