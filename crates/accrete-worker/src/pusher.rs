//! Pushing a worker's gradients on one stream without waiting for each ack (the worker
//! drains it when its next pull must see them: per-row training, dense inputs). A push
//! refused for a stale lineage (the model was rolled back) or because the worker left the
//! BSP barrier ends the stream, and with it the pushes queued behind it: none of them was
//! applied, so the caller joins again and reads their rows again from the offset the
//! server recorded. A stream that broke with its connection (the server restarted) ends
//! the same way: which of its pushes were applied, the server's offsets tell. Any other
//! refusal ends the worker.
use crate::WorkerError;
use accrete_client::{Client, ClientError, PushStream};
use accrete_core::push::Push;
use accrete_core::ModelSpec;

/// What became of the pushes handed to the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued, or (at [`Pusher::drain`]) all applied; the model's update count after the
    /// last, when known.
    Accepted(Option<u64>),
    /// Refused (a stale lineage, or not in the barrier): this push and those queued
    /// behind it were not applied.
    Refused(String),
    /// The connection broke: the pushes not yet acknowledged may or may not have been
    /// applied (or may have been lost with a server's uncommitted state).
    Lost(String),
}

pub(crate) struct Pusher {
    stream: PushStream,
    /// The model's spec: a partitioned model's pushes are split over its partitions.
    spec: ModelSpec,
}

impl Pusher {
    pub(crate) async fn open(client: &mut Client, spec: &ModelSpec) -> Result<Pusher, WorkerError> {
        Ok(Pusher { stream: client.push_stream_for(spec).await?, spec: spec.clone() })
    }

    pub(crate) async fn send(&mut self, client: &mut Client, push: &Push<'_>) -> Result<Sent, WorkerError> {
        if self.stream.send(push).await.is_ok() {
            return Ok(Sent::Accepted(None));
        }
        self.drain(client).await
    }

    /// Sends `push`; with `wait`, also drains the stream, so that the worker's next pull
    /// sees it applied (per-row training, and dense inputs, whose weights every batch
    /// moves: a gradient taken before the last push lands counts its direction twice).
    pub(crate) async fn send_then(
        &mut self,
        client: &mut Client,
        push: &Push<'_>,
        wait: bool,
    ) -> Result<Sent, WorkerError> {
        match self.send(client, push).await? {
            Sent::Accepted(_) if wait => self.drain(client).await,
            other => Ok(other),
        }
    }

    /// Ends the stream (a fresh one takes its place) and says whether every push on it
    /// was applied.
    pub(crate) async fn drain(&mut self, client: &mut Client) -> Result<Sent, WorkerError> {
        let fresh = Pusher::open(client, &self.spec).await?;
        let old = std::mem::replace(self, fresh);
        match old.stream.finish().await {
            Ok(ack) => Ok(Sent::Accepted(Some(ack.updates))),
            Err(ClientError::StaleLineage { message, .. }) | Err(ClientError::NotInBarrier(message)) => {
                Ok(Sent::Refused(message))
            }
            Err(e) if e.is_unreachable() => Ok(Sent::Lost(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}
