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
/// Pushes of a partitioned model sent to a partition and not yet acknowledged, at most: a
/// partition whose pushes a global commit holds must stop the worker soon, or it goes on
/// computing gradients against parameters that no longer move (HTTP/2's window alone
/// would let hundreds of pushes through).
const SPLIT_WINDOW: usize = 16;

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
        self.pull_batch_with(view, keys, version, worker, false).await
    }

    /// [`Client::pull_batch`], with each tensor's optimizer slots too when `slots` (what
    /// per-row training on the worker's copy needs).
    pub async fn pull_batch_with(
        &mut self,
        view: &ModelView,
        keys: &[u32],
        version: Option<u64>,
        worker: Option<(&str, u64)>,
        slots: bool,
    ) -> Result<BatchParams> {
        if let Some(plan) = crate::split::Plan::of(&view.spec) {
            return self.pull_split(&plan, view, keys, version, worker, slots).await;
        }
        let req = || accrete_proto::convert::batch_pull(view, keys, version, worker, slots);
        let pulled: Pulled = retried!(self, params, pull, req())?.try_into()?;
        Ok(view.batch_params(pulled))
    }

    pub async fn push(&mut self, push: &Push<'_>) -> Result<PushAck> {
        Ok(self.params.push(pb::PushRequest::from(push)).await?.into_inner().into())
    }

    /// Opens a stream of pushes of a model of one partition, applied in order,
    /// acknowledged in the background.
    pub async fn push_stream(&mut self) -> Result<PushStream> {
        self.open_stream().await
    }

    /// Opens a stream of pushes of the model `spec`: for a partitioned model, one stream
    /// to each partition's server, every push split over them.
    pub async fn push_stream_for(&mut self, spec: &accrete_core::ModelSpec) -> Result<PushStream> {
        let Some(plan) = crate::split::Plan::of(spec) else { return self.open_stream().await };
        let (mut txs, mut acks, mut windows) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..plan.parts {
            let (server, mut c) = self.partition_server(&plan.base, p, plan.parts);
            let name = self.server_name(server);
            let window = std::sync::Arc::new(tokio::sync::Semaphore::new(SPLIT_WINDOW));
            let s =
                c.open_stream_with(Some(window.clone())).await.map_err(|e| crate::split::at_partition(e, p, &name))?;
            txs.push(s.tx.into_iter().next().ok_or_else(|| ClientError::Protocol("no stream".into()))?);
            acks.push((p, name, s.acks));
            windows.push(window);
        }
        let acks = tokio::spawn(async move {
            let mut first = None;
            let mut failed = None;
            for (p, name, a) in acks {
                let r = a.await.map_err(|e| ClientError::Protocol(format!("push stream task failed: {e}")))?;
                match r {
                    Ok(ack) if first.is_none() => first = Some(ack),
                    Ok(_) => {}
                    Err(e) if failed.is_none() => failed = Some(crate::split::at_partition(e, p, &name)),
                    Err(_) => {}
                }
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(first.unwrap_or_default()),
            }
        });
        Ok(PushStream { tx: txs, acks, plan: Some(plan), windows })
    }

    async fn open_stream(&mut self) -> Result<PushStream> {
        self.open_stream_with(None).await
    }

    /// A push stream; with a `window`, each ack gives back one permit (and the stream's
    /// end closes it, so a sender waiting for one is told).
    async fn open_stream_with(&mut self, window: Option<std::sync::Arc<tokio::sync::Semaphore>>) -> Result<PushStream> {
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
            let r = loop {
                match acks.message().await {
                    Ok(Some(a)) => {
                        last = a.into();
                        if let Some(w) = &window {
                            w.add_permits(1);
                        }
                    }
                    Ok(None) => break Ok(last),
                    Err(e) => break Err(ClientError::from(e)),
                }
            };
            if let Some(w) = &window {
                w.close();
            }
            r
        });
        Ok(PushStream { tx: vec![tx], acks, plan: None, windows: vec![] })
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
        let req = |model: &str, incarnation, clock| pb::JoinRequest {
            model: model.into(),
            worker_id: worker.into(),
            shard: shard.into(),
            signature: signature.clone(),
            incarnation,
            clock,
        };
        let Some(plan) = self.plan_of(model).await? else {
            return Ok(retried!(self, params, join, req(model, 0, 0))?.into());
        };
        // The home gives the incarnation, every other partition takes it. Each joins the
        // worker at the clock given so far or its own, if further (a BSP partition that
        // applied a round the others have not yet): the furthest is joined everywhere
        // again until every partition gives the same clock.
        let home = self.at_home(model);
        let mut joined: Joined = retried!(home, params, join, req(model, 0, 0))?.into();
        for _ in 0..4 {
            let mut clocks = vec![joined.clock];
            for p in 1..plan.parts {
                let (server, c) = self.partition_server(model, p, plan.parts);
                let name = self.server_name(server);
                let local = plan.local(p);
                let j: Joined = retried!(c, params, join, req(&local, joined.incarnation, joined.clock))
                    .map_err(|e| crate::split::at_partition(e, p, &name))?
                    .into();
                clocks.push(j.clock);
            }
            let furthest = clocks.iter().copied().max().unwrap_or(0);
            if clocks.iter().all(|c| *c == furthest) {
                return Ok(joined);
            }
            joined = retried!(home, params, join, req(model, joined.incarnation, furthest))?.into();
        }
        Err(ClientError::Protocol(format!(
            "worker {worker:?} could not join model {model:?} at the same clock on every partition"
        )))
    }

    /// Renews a worker's lease; returns the lease in milliseconds. On a partitioned model
    /// every partition is reached even when one refuses (the first error is returned).
    pub async fn heartbeat(&mut self, model: &str, worker: &str) -> Result<u64> {
        let Some(plan) = self.plan_of(model).await? else {
            let req = pb::WorkerRef { model: model.into(), worker_id: worker.into() };
            return Ok(self.params.heartbeat(req).await?.into_inner().lease_ms);
        };
        let (mut lease, mut failed) = (u64::MAX, None);
        for p in 0..plan.parts {
            let (server, mut c) = self.partition_server(model, p, plan.parts);
            let req = pb::WorkerRef { model: plan.local(p), worker_id: worker.into() };
            match c.params.heartbeat(req).await {
                Ok(r) => lease = lease.min(r.into_inner().lease_ms),
                Err(e) => {
                    failed.get_or_insert_with(|| crate::split::at_partition(e.into(), p, &self.server_name(server)));
                }
            }
        }
        failed.map_or(Ok(lease), Err)
    }

    /// Leaves a model's barrier (a worker that finished its data); on a partitioned model,
    /// every partition's, even when one refuses (the first error is returned).
    pub async fn leave(&mut self, model: &str, worker: &str) -> Result<()> {
        let Some(plan) = self.plan_of(model).await? else {
            let req = || pb::WorkerRef { model: model.into(), worker_id: worker.into() };
            retried!(self, params, leave, req())?;
            return Ok(());
        };
        let mut failed = None;
        for p in 0..plan.parts {
            let (server, c) = self.partition_server(model, p, plan.parts);
            let req = || pb::WorkerRef { model: plan.local(p), worker_id: worker.into() };
            if let Err(e) = retried!(c, params, leave, req()) {
                failed.get_or_insert_with(|| crate::split::at_partition(e, p, &self.server_name(server)));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Scores a batch's rows (raw dense inputs and hashed features; labels are not sent)
    /// with the live model or a version.
    pub async fn predict(&mut self, model: &str, version: Option<u64>, rows: &Batch) -> Result<Predictions> {
        if let Some(plan) = self.plan_of(model).await? {
            return self.predict_split(&plan, model, version, rows).await;
        }
        let req = || pb::PredictRequest { model: model.into(), version, rows: Some(rows.into()) };
        Ok(retried!(self, params, predict, req())?.try_into()?)
    }

    /// Scores rows of a partitioned model here: the batch's rows pulled from each
    /// partition, the model's math applied as a worker applies it.
    async fn predict_split(
        &mut self,
        plan: &crate::split::Plan,
        model: &str,
        version: Option<u64>,
        rows: &Batch,
    ) -> Result<Predictions> {
        let view = self.model_view(model).await?;
        let mut batch = rows.clone();
        batch.compact();
        let p = self.pull_split(plan, &view, &batch.uniq, version, None, false).await?;
        accrete_core::glm::prepare_dense(&mut batch.dense, batch.features, &p.norm);
        let mut values = Vec::new();
        accrete_core::kinds::predict(&view.dims, &p.tensors.views(), &batch, &batch.local, &mut values);
        Ok(Predictions { version: p.version, outputs: view.dims.outputs as u32, values })
    }
}

/// Pushes applied in order on one stream, without waiting for each ack. The first refusal
/// ends the stream: pushes acknowledged before it were applied, the refused one and those
/// queued behind it were not. [`PushStream::finish`] (or a failed `send`) tells which
/// refusal it was.
pub struct PushStream {
    /// One stream per partition (one for a model of one partition).
    tx: Vec<mpsc::Sender<pb::PushRequest>>,
    acks: tokio::task::JoinHandle<Result<PushAck>>,
    plan: Option<crate::split::Plan>,
    /// Per partition, the pushes it may still be sent before an ack ([`SPLIT_WINDOW`]).
    windows: Vec<std::sync::Arc<tokio::sync::Semaphore>>,
}

/// A push could not be queued: the stream has ended; [`PushStream::finish`] says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnded;

impl PushStream {
    /// Queues a push (waits while [`STREAM_QUEUE`] are in flight).
    pub async fn send(&self, push: &Push<'_>) -> Result<(), StreamEnded> {
        let Some(plan) = &self.plan else {
            return self.tx[0].send(pb::PushRequest::from(push)).await.map_err(|_| StreamEnded);
        };
        let parts = crate::split::push_parts(plan, push);
        for (p, (tx, part)) in self.tx.iter().zip(parts).enumerate() {
            self.windows[p].acquire().await.map_err(|_| StreamEnded)?.forget();
            tx.send(part).await.map_err(|_| StreamEnded)?;
        }
        Ok(())
    }

    /// Closes the stream and waits for the last ack: the ack of the last push applied, or
    /// the refusal that ended the stream.
    pub async fn finish(self) -> Result<PushAck> {
        drop(self.tx);
        self.acks.await.map_err(|e| ClientError::Protocol(format!("push stream task failed: {e}")))?
    }
}
