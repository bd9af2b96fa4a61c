//! One model held by the server: the runtime around its [`Engine`]. It owns the engine
//! behind a mutex (held only for the CPU work of a push, a pull's copy or a barrier check,
//! never across `.await`), the head version and its manifest behind a second mutex (which
//! serialises commits, rollbacks and imports; `versions.rs`), the store, the event bus, and
//! the wake-ups: pullers waiting at the barrier, and the server's commit-policy task.
//!
//! Lock order: `head` before `engine`, `head` before `records`; `records` never with
//! `engine`. Pushes, pulls and the barrier take only `engine`.
//! The time is read here (`Instant::now()`) and passed to the engine.

mod compact;
mod cut;
mod diff;
mod requests;
#[cfg(test)]
mod store_tests;
mod versions;

pub use compact::Compacted;
pub use cut::HoldMeters;
pub use versions::At;

use crate::engine::{Content, Engine, Grad, Membership, Shape, Status};
use crate::error::{Result, ServiceError};
use accrete_core::layout::TensorSpec;
use accrete_core::pull::Joined;
use accrete_core::push::{PushAck, PushMeta};
use accrete_core::{ConsistencyMode, EventKind, InputSignature, ModelSpec, Params, VersionEvent, VersionKind};
use accrete_store::{now_unix_ms, ChunkBatch, Manifest, ModelRecord, Store, VersionRecord};
use parking_lot::FairMutex;
use requests::Requests;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// How long a silent worker stays in its model's barrier, unless the server is told otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// How often a puller at the barrier looks again without a wake-up.
const BARRIER_RECHECK: Duration = Duration::from_millis(200);

/// What every model of a server shares: the store, the event bus, the commit-policy
/// task's wake-up, and the workers' lease.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub events: broadcast::Sender<VersionEvent>,
    /// Wakes the commit-policy task (`policy.rs`) when a push makes a commit due.
    pub policy: Arc<Notify>,
    pub lease: Duration,
    /// This server process, told apart from the one before a restart (random at start).
    pub instance: u64,
    /// The cluster's servers, sorted (empty: a server of its own).
    pub servers: Arc<[String]>,
}

/// The head version: the newest record and its manifest, and the request ids acted on.
struct Head {
    record: VersionRecord,
    manifest: Manifest,
    requests: Requests,
}

pub struct ModelHandle {
    /// As stored at create or at load (its signature, once recorded, is in `signature`).
    pub record: ModelRecord,
    /// The columns its workers read, once known; held while it is stored.
    signature: Mutex<Option<InputSignature>>,
    shape: Arc<Shape>,
    store: Store,
    events: broadcast::Sender<VersionEvent>,
    /// Fair (first come, first served): a policy committer that writes version after
    /// version under a push flood hands the lock to a waiting tag, rollback or commit
    /// between two versions instead of taking it again at once.
    head: FairMutex<Head>,
    /// Serialises changes to existing version records (tags, metrics) with retention's
    /// drops, without waiting for a version's chunks to be written. Taken after `head`
    /// (retention runs under it), never with `engine`.
    records: Mutex<()>,
    engine: Mutex<Engine>,
    /// Pullers waiting at the SSP/BSP barrier.
    barrier: Notify,
    policy: Arc<Notify>,
    meters: Meters,
    /// Pushes per second and the last push's time, sampled by the policy task.
    rate: Mutex<crate::rate::RateMeter>,
    /// The server process's instance (see [`Context::instance`]).
    pub instance: u64,
    /// The cluster's servers (see [`Context::servers`]).
    pub servers: Arc<[String]>,
    /// A partitioned model's cut state (`cut.rs`; `None`: one partition); taken inside
    /// `engine`.
    gate: Option<Mutex<cut::Gate>>,
    gate_gen: AtomicU64,
    gate_changed: Notify,
    pub hold_meters: HoldMeters,
    /// The stored size of each chunk, per tensor (compaction's measure of a long chain).
    chunk_sizes: Vec<Vec<u64>>,
    /// A chain of this many layers is due for compaction ([`compact::REBASE_LAYERS`];
    /// tests lower it).
    rebase_layers: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Meters {
    pushes: AtomicU64,
    values: AtomicU64,
    commits: AtomicU64,
    commit_nanos: AtomicU64,
    /// Bytes commits wrote, and chunks compaction gave a new base.
    bytes_written: AtomicU64,
    rebased: AtomicU64,
    /// A chunk's chain in the head version is long: a compaction step is due (`compact.rs`).
    compaction: std::sync::atomic::AtomicBool,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub pushes: u64,
    pub values: u64,
    pub commits: u64,
    pub commit_seconds: f64,
    pub bytes_written: u64,
    pub rebased: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (updates are per value), so
    // poisoning is not a reason to stop serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ModelHandle {
    /// Creates a new model: initial parameters committed as version 1, made by `request`.
    /// Blocking.
    pub fn create(
        ctx: &Context,
        spec: ModelSpec,
        request: &str,
        signature: Option<InputSignature>,
    ) -> Result<ModelHandle> {
        spec.validate()?;
        // (before anything is stored: a refused create leaves nothing behind)
        let params = Params::init(&spec);
        if let Some((tensor, index, value)) = params.first_non_finite() {
            let message = format!(
                "{} gives tensor {tensor:?} a non-finite initial weight ({value} at {index}); use a smaller scale",
                spec.init.scale
            );
            return Err(accrete_core::SpecError::field("init.scale", message).into());
        }
        let store = &ctx.store;
        // Past every epoch of a deleted model of this name: its pushes are stale here.
        let first_epoch = store.epoch_floor(&spec.name)? + 1;
        let record = ModelRecord {
            id: store.new_model_id()?,
            spec,
            created_unix_ms: now_unix_ms(),
            first_epoch,
            request: request.to_string(),
            signature,
        };
        let version = VersionRecord {
            created_unix_ms: now_unix_ms(),
            reason: "create".into(),
            lineage_epoch: first_epoch,
            request: request.to_string(),
            ..VersionRecord::new(1, VersionKind::Created)
        };
        // Version 1 is the init spec: nothing but its manifest is written.
        let manifest = Manifest::init(&params);
        let version = VersionRecord { bytes_written: manifest.encoded_len() as u64, ..version };
        store.write_version(record.id, &version, &manifest, &ChunkBatch::default())?;
        store.put_model(&record)?;
        let head = Head { requests: Requests::of(std::slice::from_ref(&version)), record: version.clone(), manifest };
        let handle = ModelHandle::assemble(ctx, record, head, params, vec![]);
        handle.emit(EventKind::Created, version);
        Ok(handle)
    }

    /// Loads a model's head version from the store (server start). Blocking.
    pub fn load(ctx: &Context, record: ModelRecord) -> Result<ModelHandle> {
        let (store, name) = (&ctx.store, record.spec.name.clone());
        let mut records = store.versions(record.id)?;
        let requests = Requests::of(&records);
        let head = records.pop().ok_or_else(|| ServiceError::Internal(format!("model {name:?} has no versions")))?;
        let manifest = store.manifest(record.id, head.version, &name)?.ok_or_else(|| {
            ServiceError::Internal(format!("model {name:?}: manifest of version {} is missing", head.version))
        })?;
        let mut params = Params::zeros(&record.spec);
        store.load_params(record.id, &name, &manifest, &mut params)?;
        params.steps = head.steps;
        let incarnations = store.incarnations(record.id)?;
        Ok(ModelHandle::assemble(ctx, record, Head { record: head, manifest, requests }, params, incarnations))
    }

    fn assemble(
        ctx: &Context,
        record: ModelRecord,
        head: Head,
        params: Params,
        incarnations: Vec<(String, u64)>,
    ) -> ModelHandle {
        let shape = Arc::new(Shape { first_epoch: record.first_epoch, ..Shape::of(&record.spec) });
        let engine = Engine::new(shape.clone(), params, &head.record, incarnations, ctx.lease, Instant::now());
        let chunk_sizes = engine.chunk_sizes();
        let meters = Meters::default();
        let due = compact::long_chains(&head.manifest, &chunk_sizes, compact::REBASE_LAYERS).next().is_some();
        meters.compaction.store(due, Ordering::Release);
        let gate = (record.spec.parts() > 1).then(|| Mutex::new(cut::Gate::restore(&head.record.workers)));
        ModelHandle {
            signature: Mutex::new(record.signature.clone()),
            record,
            shape,
            store: ctx.store.clone(),
            events: ctx.events.clone(),
            head: FairMutex::new(head),
            records: Mutex::new(()),
            engine: Mutex::new(engine),
            barrier: Notify::new(),
            policy: ctx.policy.clone(),
            instance: ctx.instance,
            servers: ctx.servers.clone(),
            meters,
            rate: Mutex::new(Default::default()),
            gate,
            gate_gen: AtomicU64::new(0),
            gate_changed: Notify::new(),
            hold_meters: HoldMeters::default(),
            chunk_sizes,
            rebase_layers: compact::REBASE_LAYERS.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.record.spec.name
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.record.spec
    }

    /// The model's tensors, in their fixed order.
    pub fn layout(&self) -> &[TensorSpec] {
        &self.shape.layout
    }

    pub fn counters(&self) -> Counters {
        let m = &self.meters;
        Counters {
            pushes: m.pushes.load(Ordering::Relaxed),
            values: m.values.load(Ordering::Relaxed),
            commits: m.commits.load(Ordering::Relaxed),
            commit_seconds: m.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            bytes_written: m.bytes_written.load(Ordering::Relaxed),
            rebased: m.rebased.load(Ordering::Relaxed),
        }
    }

    pub fn status(&self) -> Status {
        lock(&self.engine).status()
    }

    /// Samples the push count for the push rate (the policy task's tick).
    pub fn sample_rate(&self, now: Instant, unix_ms: i64) {
        let pushes = self.meters.pushes.load(Ordering::Relaxed);
        lock(&self.rate).sample(now, unix_ms, pushes);
    }

    /// Pushes per second over the last few seconds, and the last push's Unix ms.
    pub fn push_rate(&self) -> (f64, Option<i64>) {
        let r = lock(&self.rate);
        (r.per_sec(), r.last_push_unix_ms())
    }

    /// The head version (from the engine: the `head` lock can be held by a long import or
    /// commit, and this is called from async handlers).
    pub fn head_version(&self) -> u64 {
        lock(&self.engine).status().head
    }

    /// Reads the live parameters (or their EMA) through `f`, under the engine lock.
    pub fn with_live<R>(&self, f: impl FnOnce(Content<'_>) -> R) -> R {
        f(lock(&self.engine).live())
    }

    fn emit(&self, kind: EventKind, version: VersionRecord) {
        // No subscribers is fine.
        let _ = self.events.send(VersionEvent { kind, model: self.name().to_string(), version });
    }

    /// Validates a push against the layout (before any lock), applies it through the
    /// engine, and wakes the commit-policy task when it reached the update-count policy.
    /// A refused push changes nothing. While a global commit holds this partition, a
    /// push beyond its cut is refused with [`ServiceError::Held`], and the caller waits
    /// ([`ModelHandle::gate_wait`]) and pushes again.
    pub fn push(&self, epoch: u64, grads: &[Grad<'_>], meta: &PushMeta) -> Result<PushAck> {
        let push = self.shape.check(grads, meta)?;
        let (pushed, gated) = {
            let mut engine = lock(&self.engine);
            // A push of an older lineage (from before a rollback or recovery) is told so
            // first: the cut's marks were reset by the install, so the gate would call it
            // a gap, which a worker cannot recover from; a stale lineage it can (pull again).
            let admitted = self.gate_admits(meta).map_err(|e| engine.stale_epoch(epoch).unwrap_or(e))?;
            if let cut::Gated::Duplicate = admitted {
                return Ok(engine.current_ack());
            }
            let pushed = engine.push(&push, epoch, Instant::now());
            if pushed.is_ok() {
                self.gate_applied(meta);
            }
            (pushed, self.gate_holding())
        };
        if gated {
            // a cut may be waiting for this one
            self.gate_moved();
        }
        self.meters.pushes.fetch_add(1, Ordering::Relaxed);
        self.meters.values.fetch_add(push.values(), Ordering::Relaxed);
        if push.from_worker() && self.shape.consistency != ConsistencyMode::Asp {
            // A clock moved (even a refused BSP push counts in its round).
            self.barrier.notify_waiters();
        }
        let pushed = pushed?;
        if pushed.commit_due {
            self.policy.notify_one();
        }
        Ok(pushed.ack)
    }

    /// Joins a worker to the barrier with a new incarnation (durable before this returns;
    /// pushes of older ones are refused from now on). Blocking (a store write).
    /// `given` > 0: the incarnation the model's home gave (this is one of its partitions);
    /// `clock`: the least clock to join at (the furthest another partition gave).
    pub fn join(&self, worker: &str, given: u64, clock: u64) -> Result<Joined> {
        lock(&self.engine).check_join(worker)?;
        let incarnation = if given == 0 {
            self.store.bump_incarnation(self.record.id, worker)?
        } else {
            let stored = self.store.raise_incarnation(self.record.id, worker, given)?;
            if stored > given {
                return Err(ServiceError::StaleIncarnation {
                    model: self.name().to_string(),
                    worker: worker.to_string(),
                    pushed: given,
                    current: stored,
                });
            }
            given
        };
        let mut joined = lock(&self.engine).join_at(worker, incarnation, clock, Instant::now());
        joined.server_instance = self.instance;
        self.barrier.notify_waiters();
        Ok(joined)
    }

    /// The columns its workers read, once known.
    pub fn signature(&self) -> Option<InputSignature> {
        lock(&self.signature).clone()
    }

    /// Checks a worker's columns against the model's, recording them if the model has
    /// none yet (durable before this returns). Blocking (a store write).
    pub fn sign(&self, given: &InputSignature) -> Result<()> {
        let mut signature = lock(&self.signature);
        match signature.as_ref() {
            Some(recorded) if recorded.same_inputs(given) => Ok(()),
            Some(recorded) => Err(ServiceError::SignatureMismatch {
                model: self.name().to_string(),
                recorded: recorded.to_string(),
                given: given.to_string(),
            }),
            None => {
                let rec = ModelRecord { signature: Some(given.clone()), ..self.record.clone() };
                if !self.store.update_model(&rec)? {
                    return Err(ServiceError::ModelNotFound(self.name().to_string()));
                }
                tracing::info!(model = %self.name(), signature = %given, "input signature recorded");
                *signature = Some(given.clone());
                Ok(())
            }
        }
    }

    /// Renews a worker's lease (`member` false: it is not, or no longer, in the barrier).
    pub fn heartbeat(&self, worker: &str) -> Membership {
        lock(&self.engine).heartbeat(worker, Instant::now())
    }

    pub fn leave(&self, worker: &str) -> Membership {
        let (left, dropped) = {
            let mut engine = lock(&self.engine);
            (engine.leave(worker, Instant::now()), engine.take_dropped())
        };
        self.log_dropped(dropped);
        if left.member {
            tracing::info!(model = %self.name(), worker, "worker left");
        }
        self.barrier.notify_waiters();
        // A BSP round it was holding up may have been applied and reached the policy.
        self.policy.notify_one();
        left
    }

    /// BSP rounds dropped after a leave or an expiry: no push is there to be told.
    fn log_dropped(&self, dropped: Vec<ServiceError>) {
        for e in dropped {
            tracing::error!(model = %self.name(), "{e}");
        }
    }

    /// Drops workers whose lease expired by `now` (and applies rounds they were holding up).
    pub fn expire_leases(&self, now: Instant) {
        let (gone, dropped) = {
            let mut engine = lock(&self.engine);
            (engine.expire(now), engine.take_dropped())
        };
        self.log_dropped(dropped);
        for w in &gone {
            tracing::warn!(model = %self.name(), worker = %w, "lease expired; the worker left the barrier");
        }
        if !gone.is_empty() {
            self.barrier.notify_waiters();
        }
    }

    /// Waits until a worker that has pushed `clock` batches may pull (SSP/BSP); a no-op
    /// under ASP or for callers that name no worker. A worker that is not in the barrier
    /// (it never joined, its lease lapsed, or the server restarted since it joined) is
    /// told to join again instead of waiting for rounds that no longer count it.
    pub async fn wait_to_pull(&self, worker: &str, clock: u64) -> Result<()> {
        if worker.is_empty() || self.shape.consistency == ConsistencyMode::Asp {
            return Ok(());
        }
        loop {
            let notified = self.barrier.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut engine = lock(&self.engine);
                if !engine.is_member(worker) {
                    return Err(ServiceError::NotInBarrier { model: self.name().into(), worker: worker.into() });
                }
                if engine.may_pull(worker, clock, Instant::now()) {
                    return Ok(());
                }
            }
            let _ = tokio::time::timeout(BARRIER_RECHECK, notified).await;
        }
    }

    /// Is a policy commit due at `now`? (Asked by the commit-policy task.)
    pub fn commit_due(&self, now: Instant) -> bool {
        lock(&self.engine).commit_due(now)
    }
}
