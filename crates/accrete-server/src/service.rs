//! The gRPC services: `Models` (admin, versions, import/export, watch) and `Parameters`
//! (pull, push, streaming push). Handlers decode, check the message limit, and hand the
//! work to [`ModelHandle`]; blocking store work runs on blocking threads.
use crate::convert::{event_kind, model_info, spec_from_pb, version_to_pb};
use crate::error::{Result, ServiceError};
use crate::model::{EventKind, Grad, ModelHandle, PushMeta};
use crate::registry::Registry;
use accrete_core::Params;
use accrete_proto::v1 as pb;
use accrete_proto::v1::models_server::Models;
use accrete_proto::v1::parameters_server::Parameters;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Floats per chunk message of an export stream (4 MiB).
const EXPORT_CHUNK_FLOATS: usize = 1 << 20;

#[derive(Clone)]
pub struct Service {
    reg: Arc<Registry>,
    limit: usize,
    heavy: Arc<tokio::sync::Semaphore>,
}

/// Whole copies of models the service holds at once (see [`Service::heavy`]).
const HEAVY_AT_ONCE: usize = 2;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServiceError::Internal(format!("task failed: {e}")))?
}

impl Service {
    pub fn new(reg: Arc<Registry>, limit: usize) -> Self {
        Service { reg, limit, heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)) }
    }

    /// A permit for work that makes a whole copy of a model (loading a version for export,
    /// pull or predict; assembling an import): at most [`HEAVY_AT_ONCE`] at a time, the
    /// others wait. (An export's stream keeps its copy after the permit is returned, so a
    /// slow reader cannot hold up the evaluator's version pulls.)
    async fn heavy(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.heavy.clone().acquire_owned().await.map_err(|e| ServiceError::Internal(format!("{e}")))
    }

    fn check_size(&self, what: impl FnOnce() -> String, bytes: usize) -> Result<()> {
        if bytes > self.limit {
            return Err(ServiceError::TooLarge { what: what(), bytes, limit: self.limit });
        }
        Ok(())
    }

    fn info(&self, h: &ModelHandle) -> Result<pb::ModelInfo> {
        Ok(model_info(h, h.versions()?.len() as u64))
    }

    /// Applies one push; schedules a policy commit when it is due.
    fn push_one(&self, req: &pb::PushRequest) -> Result<pb::PushAck> {
        self.check_size(|| format!("push to model {:?}", req.model), req.encoded_len())?;
        let h = self.reg.get(&req.model)?;
        let grads: Vec<Grad<'_>> = req
            .grads
            .iter()
            .map(|c| Grad { tensor: &c.tensor, offset: c.offset, keys: &c.keys, values: &c.values })
            .collect();
        if let Some(c) = req.grads.iter().find(|c| !c.slot.is_empty()) {
            let msg = format!(
                "model {:?}: tensor {:?}: pushes carry gradients of weights, not of slot {:?}",
                req.model, c.tensor, c.slot
            );
            return Err(ServiceError::Invalid(msg));
        }
        let m = req.meta.clone().unwrap_or_default();
        let meta = PushMeta {
            worker_id: &m.worker_id,
            shard: &m.shard,
            offset: m.offset,
            clock: m.clock,
            rows: m.rows,
            loss_sum: m.loss_sum,
        };
        let ack = h.push(req.lineage_epoch, &grads, &meta)?;
        if ack.commit_due && h.try_schedule_commit() {
            spawn_policy_commit(h);
        }
        Ok(pb::PushAck { lineage_epoch: ack.epoch, head_version: ack.head, updates: ack.updates })
    }
}

/// Commits a model in the background for the commit policy.
pub fn spawn_policy_commit(h: Arc<ModelHandle>) {
    tokio::task::spawn_blocking(move || {
        // Snapshots taken while this one wrote are written too.
        loop {
            let done =
                if h.commit_due_by_updates() { h.commit_pending().map(|_| ()) } else { h.commit("policy").map(|_| ()) };
            if let Err(e) = done {
                tracing::error!(model = %h.name(), error = %e, "policy commit failed");
                break;
            }
            if !h.commit_due_by_updates() {
                break;
            }
        }
        h.commit_finished();
    });
}

#[tonic::async_trait]
impl Models for Service {
    async fn create_model(&self, req: Request<pb::CreateModelRequest>) -> Result<Response<pb::ModelInfo>, Status> {
        let spec = req.into_inner().spec.ok_or_else(|| ServiceError::Invalid("spec is required".into()))?;
        let spec = spec_from_pb(spec)?;
        let reg = self.reg.clone();
        let h = blocking(move || reg.create(spec)).await?;
        tracing::info!(model = %h.name(), kind = h.spec().kind.as_str(), "created");
        Ok(Response::new(self.info(&h)?))
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.reg.list().iter().map(|h| self.info(h)).collect::<Result<_>>()?;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn get_model_info(&self, req: Request<pb::ModelRef>) -> Result<Response<pb::ModelInfo>, Status> {
        let h = self.reg.get(&req.get_ref().name)?;
        Ok(Response::new(self.info(&h)?))
    }

    async fn delete_model(&self, req: Request<pb::ModelRef>) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let name = req.into_inner().name;
        let reg = self.reg.clone();
        let n = {
            let name = name.clone();
            blocking(move || reg.delete(&name)).await?
        };
        tracing::info!(model = %name, versions = n, "deleted");
        Ok(Response::new(pb::DeleteModelResponse { name, versions_dropped: n }))
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let reason = if req.reason.is_empty() { "commit".to_string() } else { format!("commit: {}", req.reason) };
        let (rec, created) = {
            let h = h.clone();
            blocking(move || h.commit(&reason)).await?
        };
        Ok(Response::new(pb::CommitResponse { version: Some(version_to_pb(h.name(), &rec)), created }))
    }

    async fn list_versions(&self, req: Request<pb::ModelRef>) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let h = self.reg.get(&req.get_ref().name)?;
        let versions = h.versions()?.iter().map(|v| version_to_pb(h.name(), v)).collect();
        Ok(Response::new(pb::ListVersionsResponse { versions }))
    }

    async fn tag(&self, req: Request<pb::TagRequest>) -> Result<Response<pb::VersionInfo>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let rec = {
            let h = h.clone();
            blocking(move || h.tag(req.version, &req.label)).await?
        };
        Ok(Response::new(version_to_pb(h.name(), &rec)))
    }

    async fn rollback(&self, req: Request<pb::RollbackRequest>) -> Result<Response<pb::VersionInfo>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let rec = {
            let h = h.clone();
            blocking(move || h.rollback(req.to_version, &req.reason)).await?
        };
        tracing::info!(model = %h.name(), version = rec.version, to = req.to_version, epoch = rec.lineage_epoch, "rolled back");
        Ok(Response::new(version_to_pb(h.name(), &rec)))
    }

    async fn report_metrics(
        &self,
        req: Request<pb::ReportMetricsRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let metrics: BTreeMap<String, f64> = req.metrics.into_iter().collect();
        let rec = {
            let h = h.clone();
            blocking(move || h.report_metrics(req.version, &metrics)).await?
        };
        Ok(Response::new(version_to_pb(h.name(), &rec)))
    }

    type ExportStream = BoxStream<pb::ExportMessage>;

    async fn export(&self, req: Request<pb::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let version = req.version.unwrap_or_else(|| h.head_version());
        let (rec, params) = {
            let h = h.clone();
            let _permit = self.heavy().await?;
            blocking(move || h.load_version(version)).await?
        };
        let header = pb::ExportHeader { model: Some(self.info(&h)?), version: Some(version_to_pb(h.name(), &rec)) };
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let first = pb::ExportMessage { item: Some(pb::export_message::Item::Header(header)) };
            if tx.blocking_send(Ok(first)).is_err() {
                return;
            }
            for chunk in export_chunks(&params, req.optimizer_state) {
                if tx
                    .blocking_send(Ok(pb::ExportMessage { item: Some(pb::export_message::Item::Chunk(chunk)) }))
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import(&self, req: Request<Streaming<pb::ImportMessage>>) -> Result<Response<pb::VersionInfo>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.message().await?.and_then(|m| m.item) {
            Some(pb::import_message::Item::Header(h)) => h,
            _ => return Err(ServiceError::Invalid("an import starts with an ImportHeader message".into()).into()),
        };
        let h = self.reg.get(&header.model)?;
        let _permit = self.heavy().await?;
        let mut filler = ImportFiller::new(h.empty_params(), h.name());
        while let Some(msg) = stream.message().await? {
            self.check_size(|| format!("import chunk for model {:?}", header.model), msg.encoded_len())?;
            match msg.item {
                Some(pb::import_message::Item::Chunk(c)) => filler.add(&c)?,
                _ => {
                    return Err(
                        ServiceError::Invalid("only TensorChunk messages may follow the ImportHeader".into()).into()
                    )
                }
            }
        }
        let params = filler.finish()?;
        let rec = {
            let h = h.clone();
            blocking(move || h.import(params, &header.source)).await?
        };
        tracing::info!(model = %h.name(), version = rec.version, "imported");
        Ok(Response::new(version_to_pb(h.name(), &rec)))
    }

    type WatchVersionsStream = BoxStream<pb::VersionEvent>;

    async fn watch_versions(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchVersionsStream>, Status> {
        let req = req.into_inner();
        let mut rx = self.reg.subscribe();
        let models = if req.model.is_empty() { self.reg.list() } else { vec![self.reg.get(&req.model)?] };
        let mut replayed: HashMap<String, u64> = HashMap::new();
        let mut backlog = Vec::new();
        if let Some(after) = req.after_version {
            for h in &models {
                for v in h.versions()?.into_iter().filter(|v| v.version > after) {
                    replayed.insert(h.name().to_string(), v.version);
                    let kind =
                        if v.reason.starts_with("rollback") { EventKind::RolledBack } else { EventKind::Created };
                    backlog.push(pb::VersionEvent {
                        kind: event_kind(kind) as i32,
                        version: Some(version_to_pb(h.name(), &v)),
                    });
                }
            }
        }
        let (tx, out) = mpsc::channel(256);
        let filter = req.model;
        let stopping = self.reg.stopping();
        tokio::spawn(async move {
            tokio::pin!(stopping);
            for ev in backlog {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = &mut stopping => {
                        let _ = tx.send(Err(Status::unavailable("server is shutting down; watch again after it restarts"))).await;
                        return;
                    }
                };
                let ev = match received {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let msg =
                            format!("watch fell behind by {n} events; watch again with after_version to catch up");
                        let _ = tx.send(Err(Status::aborted(msg))).await;
                        return;
                    }
                    Err(_) => return,
                };
                let fresh = matches!(ev.kind, EventKind::Created | EventKind::RolledBack | EventKind::Imported);
                let seen = replayed.get(&ev.model).is_some_and(|v| fresh && ev.version.version <= *v);
                if (!filter.is_empty() && ev.model != filter) || seen {
                    continue;
                }
                let msg = pb::VersionEvent {
                    kind: event_kind(ev.kind) as i32,
                    version: Some(version_to_pb(&ev.model, &ev.version)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// The chunk messages of an export: each tensor's weights, then (if asked) its slots.
fn export_chunks(params: &Params, with_slots: bool) -> impl Iterator<Item = pb::TensorChunk> + '_ {
    params.tensors.iter().flat_map(move |t| {
        let n_slots = if with_slots { t.slots.len() } else { 0 };
        let vecs = std::iter::once(("", &t.w))
            .chain(params.slot_names.iter().zip(&t.slots).take(n_slots).map(|(n, v)| (*n, v)));
        vecs.flat_map(move |(slot, v)| {
            v.chunks(EXPORT_CHUNK_FLOATS).enumerate().map(move |(i, part)| pb::TensorChunk {
                tensor: t.spec.name.to_string(),
                slot: slot.to_string(),
                offset: (i * EXPORT_CHUNK_FLOATS) as u64,
                keys: vec![],
                values: accrete_proto::f32s_to_bytes(part),
            })
        })
    })
}

/// Fills imported parameters chunk by chunk; every weight tensor must be covered in order,
/// slots either wholly or not at all.
struct ImportFiller {
    params: Params,
    model: String,
    filled: HashMap<(usize, Option<usize>), u64>,
}

impl ImportFiller {
    fn new(params: Params, model: &str) -> Self {
        ImportFiller { params, model: model.to_string(), filled: HashMap::new() }
    }

    fn err(&self, tensor: &str, message: String) -> ServiceError {
        ServiceError::Invalid(format!("import into model {:?}: tensor {tensor:?}: {message}", self.model))
    }

    fn add(&mut self, c: &pb::TensorChunk) -> Result<()> {
        let t = self
            .params
            .tensor_index(&c.tensor)
            .ok_or_else(|| self.err(&c.tensor, "not in this model's layout".into()))?;
        let slot = match c.slot.as_str() {
            "" => None,
            s => Some(self.params.slot_names.iter().position(|n| *n == s).ok_or_else(|| {
                self.err(
                    &c.tensor,
                    format!("slot {s:?} is not kept by this model (slots: {:?})", self.params.slot_names),
                )
            })?),
        };
        let values = accrete_proto::bytes_to_f32s(&c.values)
            .ok_or_else(|| self.err(&c.tensor, "values are not whole f32s".into()))?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(self.err(&c.tensor, format!("value {v} is NaN or infinite")));
        }
        let next = self.filled.get(&(t, slot)).copied().unwrap_or(0);
        // Sums of squares and counts cannot be negative: the optimizer would take their
        // square roots, the statistics would divide by them.
        let slot_name = slot.map(|s| self.params.slot_names[s]);
        let spec = &self.params.tensors[t].spec;
        let f = spec.cols as u64;
        let must_be_positive = |k: u64| match slot_name {
            Some("accum") | Some("v") | Some("n") => true,
            None if spec.stats => k < f || k >= 2 * f,
            _ => false,
        };
        if let Some((j, v)) = values.iter().enumerate().find(|(j, v)| **v < 0.0 && must_be_positive(next + *j as u64)) {
            let what = slot_name.map_or("statistics count or M2".to_string(), |s| format!("slot {s:?}"));
            return Err(self.err(&c.tensor, format!("{what}: value {v} at {} is negative", next + j as u64)));
        }
        let ts = &mut self.params.tensors[t];
        let len = ts.w.len() as u64;
        if !c.keys.is_empty() || c.offset != next || next + values.len() as u64 > len {
            let msg = format!(
                "chunk at offset {} with {} floats does not continue at {next} within {len} floats",
                c.offset,
                values.len()
            );
            return Err(self.err(&c.tensor, msg));
        }
        let dst = match slot {
            None => &mut ts.w,
            Some(s) => &mut ts.slots[s],
        };
        dst[next as usize..next as usize + values.len()].copy_from_slice(&values);
        self.filled.insert((t, slot), next + values.len() as u64);
        Ok(())
    }

    fn finish(mut self) -> Result<Params> {
        for (t, ts) in self.params.tensors.iter().enumerate() {
            let len = ts.w.len() as u64;
            let got = self.filled.get(&(t, None)).copied().unwrap_or(0);
            if got != len {
                return Err(self.err(ts.spec.name, format!("the import holds {got} of its {len} weights")));
            }
            for s in 0..ts.slots.len() {
                let got = self.filled.get(&(t, Some(s))).copied().unwrap_or(0);
                if got != 0 && got != len {
                    return Err(
                        self.err(ts.spec.name, format!("slot {:?}: {got} of {len} values", self.params.slot_names[s]))
                    );
                }
            }
        }
        let ema_given = self
            .params
            .slot_names
            .iter()
            .position(|s| *s == "ema")
            .is_some_and(|e| self.filled.contains_key(&(0, Some(e))));
        if !ema_given {
            self.params.reset_ema();
        }
        Ok(self.params)
    }
}

#[tonic::async_trait]
impl Parameters for Service {
    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<pb::PullResponse>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        if req.version.is_none() {
            h.wait_to_pull(&req.worker_id, req.clock).await;
        }
        let resp = match req.version {
            None => h.with_live(|p, head, epoch, updates| pull_from(p, &h, &req, self.limit, head, epoch, updates))?,
            Some(v) => {
                let (rec, params) = {
                    let h = h.clone();
                    let _permit = self.heavy().await?;
                    blocking(move || h.load_version(v)).await?
                };
                pull_from(&params, &h, &req, self.limit, rec.version, rec.lineage_epoch, rec.updates)?
            }
        };
        Ok(Response::new(resp))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let req = req.into_inner();
        if req.worker_id.is_empty() {
            return Err(ServiceError::Invalid("join needs a worker_id".into()).into());
        }
        let h = self.reg.get(&req.model)?;
        let (lease, epoch, clock, progress, live) = h.join(&req.worker_id);
        tracing::info!(model = %h.name(), worker = %req.worker_id, clock, live, "worker joined");
        let (offset, shard) = progress.map(|p| (p.offset, p.shard)).unwrap_or_default();
        Ok(Response::new(pb::JoinResponse {
            lease_ms: lease.as_millis() as u64,
            lineage_epoch: epoch,
            clock,
            offset,
            shard,
            live_workers: live as u32,
        }))
    }

    async fn heartbeat(&self, req: Request<pb::WorkerRef>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let (member, lease, live) = h.heartbeat(&req.worker_id);
        if !member {
            let msg = format!(
                "model {:?}: worker {:?} is not in the barrier (its lease expired); join again",
                h.name(),
                req.worker_id
            );
            return Err(Status::failed_precondition(msg));
        }
        Ok(Response::new(pb::HeartbeatResponse { lease_ms: lease.as_millis() as u64, live_workers: live as u32 }))
    }

    async fn leave(&self, req: Request<pb::WorkerRef>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let h = self.reg.get(&req.model)?;
        let live = h.leave(&req.worker_id);
        Ok(Response::new(pb::HeartbeatResponse { lease_ms: 0, live_workers: live as u32 }))
    }

    async fn predict(&self, req: Request<pb::PredictRequest>) -> Result<Response<pb::PredictResponse>, Status> {
        let req = req.into_inner();
        self.check_size(|| format!("predict request for model {:?}", req.model), req.encoded_len())?;
        let h = self.reg.get(&req.model)?;
        let rows = req.rows.unwrap_or_default();
        let (version, (outputs, values)) = match req.version {
            None => {
                h.with_live(|p, head, _, _| crate::predict::predict(h.spec(), p, &rows, self.limit).map(|r| (head, r)))?
            }
            Some(v) => {
                let (rec, params) = {
                    let h = h.clone();
                    let _permit = self.heavy().await?;
                    blocking(move || h.load_version(v)).await?
                };
                (rec.version, crate::predict::predict(h.spec(), &params, &rows, self.limit)?)
            }
        };
        Ok(Response::new(pb::PredictResponse { version, outputs, values: accrete_proto::f32s_to_bytes(&values) }))
    }

    async fn push(&self, req: Request<pb::PushRequest>) -> Result<Response<pb::PushAck>, Status> {
        Ok(Response::new(self.push_one(req.get_ref())?))
    }

    type PushStreamStream = BoxStream<pb::PushAck>;

    async fn push_stream(
        &self,
        req: Request<Streaming<pb::PushRequest>>,
    ) -> Result<Response<Self::PushStreamStream>, Status> {
        Ok(Response::new(Box::pin(PushAcks { input: req.into_inner(), svc: self.clone(), done: false })))
    }
}

/// The ack stream of `PushStream`: each incoming push is applied when the transport asks
/// for the next ack (no task or channel in between), and the stream ends after the first
/// refusal, which it reports.
struct PushAcks {
    input: Streaming<pb::PushRequest>,
    svc: Service,
    done: bool,
}

impl Stream for PushAcks {
    type Item = Result<pb::PushAck, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let ack = match std::task::ready!(Pin::new(&mut self.input).poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(msg) => msg.and_then(|m| self.svc.push_one(&m).map_err(Status::from)),
        };
        self.done = ack.is_err();
        Poll::Ready(Some(ack))
    }
}

/// Builds a pull response from `p` (live or a loaded version), refusing one over the limit.
fn pull_from(
    p: &Params,
    h: &ModelHandle,
    req: &pb::PullRequest,
    limit: usize,
    version: u64,
    epoch: u64,
    updates: u64,
) -> Result<pb::PullResponse> {
    let invalid =
        |t: &str, m: String| ServiceError::Invalid(format!("pull from model {:?}: tensor {t:?}: {m}", h.name()));
    if req.ema && !p.slot_names.contains(&"ema") {
        return Err(ServiceError::Invalid(format!(
            "model {:?} keeps no EMA of its weights (create it with --ema-decay)",
            h.name()
        )));
    }
    let whole: Vec<pb::PullSlice> = match req.slices.is_empty() {
        true => h.layout.iter().map(|t| pb::PullSlice { tensor: t.name.to_string(), ..Default::default() }).collect(),
        false => Vec::new(),
    };
    let slices = if whole.is_empty() { &req.slices } else { &whole };
    let mut bytes = 0usize;
    let mut plan = Vec::with_capacity(slices.len());
    for s in slices {
        let t = p.tensor_index(&s.tensor).ok_or_else(|| invalid(&s.tensor, "not in this model's layout".into()))?;
        let spec = &p.tensors[t].spec;
        if s.keys.is_empty() {
            let len = if s.len == 0 { spec.len().saturating_sub(s.offset) } else { s.len };
            if s.offset.checked_add(len).is_none_or(|e| e > spec.len()) {
                return Err(invalid(
                    &s.tensor,
                    format!("range {}..+{len} is outside its {} floats", s.offset, spec.len()),
                ));
            }
            bytes += len as usize * 4;
            plan.push((t, s.offset as usize, len as usize));
        } else {
            if let Some(k) = s.keys.iter().find(|k| **k >= spec.rows) {
                return Err(invalid(&s.tensor, format!("key {k} is out of range (rows 0..{})", spec.rows)));
            }
            bytes += s.keys.len() * spec.cols as usize * 4;
            plan.push((t, 0, 0));
        }
    }
    if bytes > limit {
        let what = format!("pull of {} floats from model {:?} (use Export or smaller slices)", bytes / 4, h.name());
        return Err(ServiceError::TooLarge { what, bytes, limit });
    }
    let mut tensors = Vec::with_capacity(slices.len());
    for (s, (t, offset, len)) in slices.iter().zip(plan) {
        let w = p.weights(t, req.ema);
        let mut out = Vec::new();
        if s.keys.is_empty() {
            accrete_proto::put_f32s(&mut out, &w[offset..offset + len]);
        } else {
            let cols = p.tensors[t].spec.cols as usize;
            out.resize(s.keys.len() * cols * 4, 0);
            for (k, dst) in s.keys.iter().zip(out.chunks_exact_mut(cols * 4)) {
                let row = &w[*k as usize * cols..(*k as usize + 1) * cols];
                for (v, d) in row.iter().zip(dst.chunks_exact_mut(4)) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        tensors.push(pb::TensorChunk {
            tensor: s.tensor.clone(),
            slot: if req.ema { "ema".into() } else { String::new() },
            offset: offset as u64,
            keys: vec![], // values follow the order of the request's keys
            values: out.into(),
        });
    }
    Ok(pb::PullResponse { version, lineage_epoch: epoch, updates, tensors })
}
