//! The `Parameters` service: pull (held at the SSP/BSP barrier), push and streaming push,
//! join/heartbeat/leave, predict. A push is decoded here into [`Grad`]s that borrow the
//! request's bytes and a [`PushMeta`], handed to [`ModelHandle::push`], and its ack encoded.
use super::{check_keys, data_span, on_model, pull, rpc_span, BoxStream, Reply, Service};
use crate::engine::{Content, Grad};
use crate::error::{from_transport, Result, ServiceError};
#[cfg(doc)]
use crate::model::ModelHandle;
use accrete_core::optim::LeKeys;
use accrete_core::pull::Predictions;
use accrete_core::push::PushMeta;
use accrete_core::{InputSignature, Params, VersionRecord};
use accrete_proto::v1 as pb;
use accrete_proto::v1::parameters_server::Parameters;
use prost::Message;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

impl Service {
    /// Decodes a push, applies it, encodes the ack. A push held by a global commit
    /// ([`ServiceError::Held`]) is left as it came, to be pushed again.
    fn push_one(&self, req: &mut pb::PushRequest) -> Result<pb::PushAck> {
        if self.reg.is_closed() {
            return Err(ServiceError::Unavailable("the server is stopping: push again once it is back".into()));
        }
        self.check_size(|| format!("push to model {:?}", req.model), req.encoded_len())?;
        let h = self.reg.get(&req.model)?;
        let meta = PushMeta::from(req.meta.take().unwrap_or_default());
        let pushed = decode_grads(req, meta.changes).and_then(|grads| h.push(req.lineage_epoch, &grads, &meta));
        if matches!(pushed, Err(ServiceError::Held(_))) {
            req.meta = Some((&meta).into());
        }
        Ok(pushed?.into())
    }

    /// A wait for the hold on `model` to move (a held push then goes again).
    fn hold_wait(&self, model: &str) -> Result<HoldWait> {
        let h = self.reg.get(model)?;
        let seen = h.gate_generation();
        Ok(Box::pin(async move { h.gate_wait(seen).await }))
    }
}

/// A held push's wait for its partition's hold to move.
type HoldWait = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The gradients (or changes) of a push, borrowing its bytes (no copy of the values).
fn decode_grads(req: &pb::PushRequest, changes: bool) -> Result<Vec<Grad<'_>>> {
    req.grads.iter().map(|c| decode_grad(&req.model, c, changes)).collect()
}

fn decode_grad<'a>(model: &str, c: &'a pb::TensorChunk, changes: bool) -> Result<Grad<'a>> {
    let bad = |m: String| ServiceError::Invalid(format!("model {model:?}: tensor {:?}: {m}", c.tensor));
    if !c.slot.is_empty() && !changes {
        return Err(bad(format!(
            "pushes of gradients carry the weights' only, not slot {:?} (a push of changes may)",
            c.slot
        )));
    }
    check_keys(&c.keys, &c.varint_keys).map_err(bad)?;
    Ok(Grad { tensor: &c.tensor, slot: &c.slot, offset: c.offset, keys: LeKeys(&c.keys), values: &c.values })
}

/// A loaded version's parameters, as a pull reports them.
fn content_of<'a>(rec: &VersionRecord, params: &'a Params) -> Content<'a> {
    Content { params, version: rec.version, epoch: rec.lineage_epoch, updates: rec.updates }
}

#[tonic::async_trait]
impl Parameters for Service {
    async fn pull(&self, req: Request<pb::PullRequest>) -> Reply<pb::PullResponse> {
        let req = req.into_inner();
        let span = data_span("pull", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            let resp = match req.version {
                None => {
                    // a pull held at the barrier ends when the server stops
                    tokio::select! {
                        r = h.wait_to_pull(&req.worker_id, req.clock) => r?,
                        _ = self.reg.stopping() => {
                            return Err(ServiceError::Unavailable("the server is stopping: pull again once it is back".into()).into())
                        }
                    }
                    h.with_live(|live| pull::answer(live, h.name(), &req, self.limit))?
                }
                Some(v) => {
                    let (rec, params) = self.load_version(&h, v).await?;
                    pull::answer(content_of(&rec, &params), h.name(), &req, self.limit)?
                }
            };
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Reply<pb::JoinResponse> {
        let req = req.into_inner();
        let span = rpc_span("join", &req.model);
        async move {
            if req.worker_id.is_empty() {
                return Err(ServiceError::Invalid("join needs a worker_id".into()).into());
            }
            let h = self.reg.get(&req.model)?;
            let (worker, signature, given, clock) =
                (req.worker_id.clone(), req.signature.map(InputSignature::from), req.incarnation, req.clock);
            let joined = on_model(&h, move |h| {
                if let Some(s) = signature.filter(|s| !s.is_empty()) {
                    h.sign(&s)?;
                }
                h.join(&worker, given, clock)
            })
            .await?;
            if let Some(c) = self.coordinator(&h).filter(|_| given == 0 && joined.incarnation > 1) {
                c.want_commit(h.name());
            }
            tracing::info!(
                model = %h.name(),
                worker = %req.worker_id,
                incarnation = joined.incarnation,
                clock = joined.clock,
                live = joined.live_workers,
                "worker joined"
            );
            Ok(Response::new((&joined).into()))
        }
        .instrument(span)
        .await
    }

    async fn heartbeat(&self, req: Request<pb::WorkerRef>) -> Reply<pb::HeartbeatResponse> {
        let req = req.into_inner();
        let span = data_span("heartbeat", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            let m = h.heartbeat(&req.worker_id);
            if !m.member {
                return Err(ServiceError::NotInBarrier { model: h.name().to_string(), worker: req.worker_id }.into());
            }
            Ok(Response::new(pb::HeartbeatResponse {
                lease_ms: m.lease.as_millis() as u64,
                live_workers: m.live as u32,
            }))
        }
        .instrument(span)
        .await
    }

    async fn leave(&self, req: Request<pb::WorkerRef>) -> Reply<pb::HeartbeatResponse> {
        let req = req.into_inner();
        let span = rpc_span("leave", &req.model);
        async move {
            let h = self.reg.get(&req.model)?;
            let m = h.leave(&req.worker_id);
            if !m.member {
                // Never joined, left already, or its lease lapsed: nothing was left.
                return Err(ServiceError::NotInBarrier { model: h.name().to_string(), worker: req.worker_id }.into());
            }
            Ok(Response::new(pb::HeartbeatResponse { lease_ms: 0, live_workers: m.live as u32 }))
        }
        .instrument(span)
        .await
    }

    async fn predict(&self, req: Request<pb::PredictRequest>) -> Reply<pb::PredictResponse> {
        let req = req.into_inner();
        let span = data_span("predict", &req.model);
        async move {
            self.check_size(|| format!("predict request for model {:?}", req.model), req.encoded_len())?;
            let h = self.reg.get(&req.model)?;
            if h.spec().parts() > 1 {
                // Its rows are on several servers: a routing client pulls the rows a batch
                // needs from each and scores them itself (`accrete model predict` does).
                return Err(ServiceError::Invalid(format!(
                    "predict with model {:?}: it is split into {} partitions over servers, so this server \
                     cannot score it alone; use a routing client (accrete model predict, accrete-client, \
                     the Python client), which scores it from the rows it pulls",
                    req.model,
                    h.spec().parts()
                ))
                .into());
            }
            let rows = req.rows.unwrap_or_default();
            let score = |p: &Params| crate::predict::predict(h.spec(), p, &rows, self.limit);
            let (version, (outputs, values)) = match req.version {
                None => h.with_live(|live| score(live.params).map(|r| (live.version, r)))?,
                Some(v) => {
                    let (rec, params) = self.load_version(&h, v).await?;
                    (rec.version, score(&params)?)
                }
            };
            Ok(Response::new((&Predictions { version, outputs, values }).into()))
        }
        .instrument(span)
        .await
    }

    async fn push(&self, req: Request<pb::PushRequest>) -> Reply<pb::PushAck> {
        let req = req.into_inner();
        let span = data_span("push", &req.model);
        let mut req = req;
        loop {
            match span.in_scope(|| self.push_one(&mut req)) {
                Err(ServiceError::Held(_)) => self.hold_wait(&req.model)?.await,
                r => return Ok(Response::new(r?)),
            }
        }
    }

    type PushStreamStream = BoxStream<pb::PushAck>;

    async fn push_stream(&self, req: Request<Streaming<pb::PushRequest>>) -> Reply<Self::PushStreamStream> {
        let span = data_span("push_stream", "");
        Ok(Response::new(Box::pin(PushAcks {
            input: req.into_inner(),
            stopping: Box::pin(self.reg.stopping()),
            svc: self.clone(),
            span,
            named: false,
            done: false,
            held: None,
        })))
    }
}

/// The ack stream of `PushStream`: each incoming push is applied when the transport asks
/// for the next ack (no task or channel in between), in the stream's span (its model is
/// the first push's), and the stream ends after the first refusal, which it reports.
struct PushAcks {
    input: Streaming<pb::PushRequest>,
    /// Resolves when the server begins to stop: the stream then ends (UNAVAILABLE), so a
    /// connected worker does not hold the stop for its grace period, and a push not yet
    /// acknowledged is not applied (the worker sends it again after the restart).
    stopping: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    svc: Service,
    span: tracing::Span,
    /// The span carries the model of the first push.
    named: bool,
    done: bool,
    /// A push held by a global commit, and the wait for the hold to move.
    held: Option<(pb::PushRequest, HoldWait)>,
}

impl Stream for PushAcks {
    type Item = Result<pb::PushAck, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.stopping.as_mut().poll(cx).is_ready() {
            this.done = true;
            let stop = ServiceError::Unavailable("the server is stopping: push again once it is back".into());
            return Poll::Ready(Some(Err(stop.into())));
        }
        let mut m = match this.held.take() {
            Some((m, mut wait)) => {
                if wait.as_mut().poll(cx).is_pending() {
                    this.held = Some((m, wait));
                    return Poll::Pending;
                }
                m
            }
            None => match std::task::ready!(Pin::new(&mut this.input).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(transport)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(from_transport(transport, this.svc.limit))));
                }
                Some(Ok(m)) => m,
            },
        };
        if !this.named {
            this.span.record("model", m.model.as_str());
            this.named = true;
        }
        let ack = match this.span.in_scope(|| this.svc.push_one(&mut m)) {
            Err(ServiceError::Held(_)) => match this.svc.hold_wait(&m.model) {
                Ok(wait) => {
                    this.held = Some((m, wait));
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Err(e) => Err(Status::from(e)),
            },
            r => r.map_err(Status::from),
        };
        this.done = ack.is_err();
        Poll::Ready(Some(ack))
    }
}
