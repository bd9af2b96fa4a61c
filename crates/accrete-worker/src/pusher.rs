//! Pushing a worker's gradients on one stream without waiting for each ack. A push refused
//! for a stale lineage (the model was rolled back) is dropped and the stream reopened: the
//! next pull brings the new lineage. A refusal because the worker left the BSP barrier
//! asks the caller to join again. Any other refusal ends the worker.
use crate::WorkerError;
use accrete_client::{Client, ClientError, PushStream};
use accrete_core::push::Push;

/// What became of a push handed to [`Pusher::send`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued (or dropped for a stale lineage: the next pull brings the new one).
    Sent,
    /// The stream ended because this worker is no longer in the BSP barrier.
    Rejoin,
}

pub(crate) struct Pusher {
    stream: PushStream,
}

impl Pusher {
    pub(crate) async fn open(client: &mut Client) -> Result<Pusher, WorkerError> {
        Ok(Pusher { stream: client.push_stream().await? })
    }

    pub(crate) async fn send(&mut self, client: &mut Client, push: &Push<'_>) -> Result<Sent, WorkerError> {
        if self.stream.send(push).await.is_ok() {
            return Ok(Sent::Sent);
        }
        let fresh = Pusher::open(client).await?;
        let old = std::mem::replace(self, fresh);
        match old.stream.finish().await {
            Err(ClientError::StaleLineage { message, .. }) => {
                tracing::warn!("{message}; continuing on the new lineage");
                Ok(Sent::Sent)
            }
            Err(ClientError::NotInBarrier(_)) => Ok(Sent::Rejoin),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(Sent::Sent),
        }
    }

    /// Closes the stream; returns the model's update count after the last push applied
    /// (0 when the last one was refused for a stale lineage or a lapsed lease).
    pub(crate) async fn finish(self) -> Result<u64, WorkerError> {
        match self.stream.finish().await {
            Ok(ack) => Ok(ack.updates),
            Err(ClientError::StaleLineage { .. }) => Ok(0),
            Err(ClientError::NotInBarrier(message)) => {
                tracing::warn!("{message}; the last push was not applied");
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }
}
