//! `WatchVersions`: the backlog of versions after the one a watcher has seen, then the
//! live event bus, filtered by model, ending when the server stops or the watcher falls
//! too far behind.
use super::BoxStream;
use crate::error::{Result, ServiceError};
use crate::model::ModelHandle;
use accrete_core::{EventKind, VersionEvent};
use accrete_proto::v1 as pb;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

/// Versions to replay before the live events, and the newest replayed per model (its
/// announcement, if it comes after the subscription, is not sent twice).
#[derive(Default)]
pub(super) struct Backlog {
    events: Vec<pb::VersionEvent>,
    replayed: HashMap<String, u64>,
}

/// The versions of `models` newer than `after`, as events. Blocking (store reads).
pub(super) fn backlog(models: &[Arc<ModelHandle>], after: u64) -> Result<Backlog> {
    let mut b = Backlog::default();
    for h in models {
        for v in h.versions()?.into_iter().filter(|v| v.version > after) {
            b.replayed.insert(h.name().to_string(), v.version);
            let kind = EventKind::of_new_version(v.kind);
            b.events.push(pb::VersionEvent::from(&VersionEvent { kind, model: h.name().to_string(), version: v }));
        }
    }
    Ok(b)
}

/// The watch stream: the backlog, then the events of `filter` (empty = every model) from
/// `rx`, forwarded by a task in the caller's span.
pub(super) fn stream(
    rx: broadcast::Receiver<VersionEvent>,
    backlog: Backlog,
    filter: String,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> BoxStream<pb::VersionEvent> {
    let (tx, out) = mpsc::channel(256);
    tokio::spawn(forward(rx, backlog, filter, stopping, tx).instrument(tracing::Span::current()));
    Box::pin(ReceiverStream::new(out))
}

type Sender = mpsc::Sender<Result<pb::VersionEvent, tonic::Status>>;

async fn forward(
    mut rx: broadcast::Receiver<VersionEvent>,
    backlog: Backlog,
    filter: String,
    stopping: impl Future<Output = ()>,
    tx: Sender,
) {
    tokio::pin!(stopping);
    for ev in backlog.events {
        if tx.send(Ok(ev)).await.is_err() {
            return;
        }
    }
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = &mut stopping => {
                let e = ServiceError::Unavailable("server is shutting down; watch again after it restarts".into());
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let ev = match received {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let _ = tx.send(Err(ServiceError::WatchLagged(n).into())).await;
                return;
            }
            Err(_) => return,
        };
        let seen =
            backlog.replayed.get(&ev.model).is_some_and(|v| ev.kind.is_new_version() && ev.version.version <= *v);
        if (!filter.is_empty() && ev.model != filter) || seen {
            continue;
        }
        if tx.send(Ok(pb::VersionEvent::from(&ev))).await.is_err() {
            return;
        }
    }
}
