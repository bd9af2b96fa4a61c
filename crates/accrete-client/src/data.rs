//! The data plane: pulls, pushes (one at a time or pipelined on a stream), joining a
//! model's barrier, heartbeats, and predictions. Pulls, joins, leaves, predictions and
//! opening a push stream ride out a server's restart ([`crate::retry`]); pushes and
//! heartbeats are not retried (a worker that loses its push stream joins again and reads
//! its rows again from where the server says its applied rows end).
use crate::retry::retried;
use crate::{Client, ClientError, Result};
use accrete_core::features::Batch;
use accrete_core::pull::{Joined, Predictions, PullRequest, Pulled};
use accrete_core::push::{Push, PushAck};
use accrete_core::view::{BatchParams, ModelView};
use accrete_core::InputSignature;
use accrete_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Pushes queued on a stream before `send` waits for the server.
const STREAM_QUEUE: usize = 4;

impl Client {
    pub async fn pull(&mut self, req: &PullRequest) -> Result<Pulled> {
        Ok(retried!(self, params, pull, pb::PullRequest::from(req))?.try_into()?)
    }

    /// The parameters a batch whose distinct hashed rows are `keys` needs, of the live
    /// model (`version: None`) or of a version. A joined worker passes its id and clock so
    /// SSP/BSP can hold it at the barrier.
    pub async fn pull_batch(
        &mut self,
        view: &ModelView,
        keys: &[u32],
        version: Option<u64>,
        worker: Option<(&str, u64)>,
    ) -> Result<BatchParams> {
        let req = || accrete_proto::convert::batch_pull(view, keys, version, worker);
        let pulled: Pulled = retried!(self, params, pull, req())?.try_into()?;
        Ok(view.batch_params(pulled))
    }

    pub async fn push(&mut self, push: &Push<'_>) -> Result<PushAck> {
        Ok(self.params.push(pb::PushRequest::from(push)).await?.into_inner().into())
    }

    /// Opens a stream of pushes applied in order, acknowledged in the background.
    pub async fn push_stream(&mut self) -> Result<PushStream> {
        let c = &*self;
        let (tx, mut acks) = c
            .retry
            .run(|| {
                let mut svc = c.params.clone();
                async move {
                    let (tx, rx) = mpsc::channel::<pb::PushRequest>(STREAM_QUEUE);
                    Ok((tx, svc.push_stream(ReceiverStream::new(rx)).await?.into_inner()))
                }
            })
            .await?;
        let acks = tokio::spawn(async move {
            let mut last = PushAck::default();
            loop {
                match acks.message().await {
                    Ok(Some(a)) => last = a.into(),
                    Ok(None) => return Ok(last),
                    Err(e) => return Err(ClientError::from(e)),
                }
            }
        });
        Ok(PushStream { tx, acks })
    }

    /// Joins a model's barrier as `worker`, reading `shard` with the columns `signature`
    /// (recorded by the model's first worker; another worker's must match); the answer
    /// says where it left off and gives it a new incarnation.
    pub async fn join(
        &mut self,
        model: &str,
        worker: &str,
        shard: &str,
        signature: Option<&InputSignature>,
    ) -> Result<Joined> {
        let signature = signature.map(pb::InputSignature::from);
        let req = || pb::JoinRequest {
            model: model.into(),
            worker_id: worker.into(),
            shard: shard.into(),
            signature: signature.clone(),
        };
        Ok(retried!(self, params, join, req())?.into())
    }

    /// Renews a worker's lease; returns the lease in milliseconds.
    pub async fn heartbeat(&mut self, model: &str, worker: &str) -> Result<u64> {
        let req = pb::WorkerRef { model: model.into(), worker_id: worker.into() };
        Ok(self.params.heartbeat(req).await?.into_inner().lease_ms)
    }

    /// Leaves a model's barrier (a worker that finished its data).
    pub async fn leave(&mut self, model: &str, worker: &str) -> Result<()> {
        let req = || pb::WorkerRef { model: model.into(), worker_id: worker.into() };
        retried!(self, params, leave, req())?;
        Ok(())
    }

    /// Scores a batch's rows (raw dense inputs and hashed features; labels are not sent)
    /// with the live model or a version.
    pub async fn predict(&mut self, model: &str, version: Option<u64>, rows: &Batch) -> Result<Predictions> {
        let req = || pb::PredictRequest { model: model.into(), version, rows: Some(rows.into()) };
        Ok(retried!(self, params, predict, req())?.try_into()?)
    }
}

/// Pushes applied in order on one stream, without waiting for each ack. The first refusal
/// ends the stream: pushes acknowledged before it were applied, the refused one and those
/// queued behind it were not. [`PushStream::finish`] (or a failed `send`) tells which
/// refusal it was.
pub struct PushStream {
    tx: mpsc::Sender<pb::PushRequest>,
    acks: tokio::task::JoinHandle<Result<PushAck>>,
}

/// A push could not be queued: the stream has ended; [`PushStream::finish`] says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnded;

impl PushStream {
    /// Queues a push (waits while [`STREAM_QUEUE`] are in flight).
    pub async fn send(&self, push: &Push<'_>) -> Result<(), StreamEnded> {
        self.tx.send(pb::PushRequest::from(push)).await.map_err(|_| StreamEnded)
    }

    /// Closes the stream and waits for the last ack: the ack of the last push applied, or
    /// the refusal that ended the stream.
    pub async fn finish(self) -> Result<PushAck> {
        drop(self.tx);
        self.acks.await.map_err(|e| ClientError::Protocol(format!("push stream task failed: {e}")))?
    }
}
