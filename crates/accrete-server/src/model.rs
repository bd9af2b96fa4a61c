//! One model held by the server: its live parameters (behind a mutex held only for the
//! CPU work of an update, never across `.await`), the head version and its manifest
//! (behind a second mutex that serialises commits, rollbacks and imports), and the paths
//! that turn live state into versions and versions back into live state.
//!
//! Lock order: `head` before `live`. Pushes take only `live`.
use crate::error::{Result, ServiceError};
use crate::sync::SyncState;
use accrete_core::layout::{layout, TensorSpec};
use accrete_core::optim::LeBytes;
use accrete_core::params::{check_dense, check_rows, chunks_of};
use accrete_core::{ConsistencyMode, ModelSpec, Params};
use accrete_store::{now_unix_ms, ChunkBatch, Manifest, ModelRecord, Store, VersionRecord, WorkerProgress};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    RolledBack,
    Tagged,
    Imported,
    Scored,
    Deleted,
}

/// A change to a model's history, broadcast to `WatchVersions` subscribers.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub model: String,
    pub version: VersionRecord,
}

/// One gradient of a push: a dense range (`keys` empty) or sparse rows.
#[derive(Debug, Clone, Copy)]
pub struct Grad<'a> {
    pub tensor: &'a str,
    pub offset: u64,
    pub keys: &'a [u64],
    pub values: &'a [u8],
}

/// What a push says about its origin.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushMeta<'a> {
    pub worker_id: &'a str,
    pub shard: &'a str,
    pub offset: u64,
    pub clock: u64,
    pub rows: u64,
    pub loss_sum: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub epoch: u64,
    pub head: u64,
    pub updates: u64,
    /// The commit policy asks for a commit now.
    pub commit_due: bool,
}

struct Live {
    params: Params,
    epoch: u64,
    head: u64,
    updates: u64,
    since_commit: u64,
    workers: BTreeMap<String, WorkerProgress>,
    last_commit: Instant,
    /// Policy snapshots taken at exact update counts, waiting to be written in order.
    pending: std::collections::VecDeque<Snapshot>,
}

/// The content of a future version, copied out of the live state at one instant.
struct Snapshot {
    chunks: ChunkBatch,
    updates: u64,
    since_parent: u64,
    epoch: u64,
    workers: Vec<WorkerProgress>,
    steps: u64,
    reason: String,
}

/// Policy snapshots allowed to wait for the writer; beyond that, commits coalesce.
const MAX_PENDING: usize = 8;

impl Live {
    /// Copies the changed chunks (one buffer) and the counters, and clears the marks.
    fn snapshot(&mut self, reason: &str) -> Snapshot {
        let p = &self.params;
        let bytes = (0..p.tensors.len()).flat_map(|t| p.dirty_chunks(t).map(move |c| p.chunk_bytes(t, c))).sum();
        let mut chunks = ChunkBatch::with_capacity(bytes);
        for t in 0..p.tensors.len() {
            for c in p.dirty_chunks(t) {
                chunks.push(t as u32, c as u32, |out| p.encode_chunk(t, c, out));
            }
        }
        let snap = Snapshot {
            chunks,
            updates: self.updates,
            since_parent: self.since_commit,
            epoch: self.epoch,
            workers: self.workers.values().cloned().collect(),
            steps: self.params.steps,
            reason: reason.to_string(),
        };
        self.params.clear_dirty();
        self.since_commit = 0;
        self.last_commit = Instant::now();
        snap
    }

    /// Replaces the parameters with a version's content (rollback, import).
    fn reset(&mut self, mut params: Params, epoch: u64, head: u64) {
        params.clear_dirty();
        self.params = params;
        self.epoch = epoch;
        self.head = head;
        self.since_commit = 0;
        self.last_commit = Instant::now();
    }
}

struct Head {
    record: VersionRecord,
    manifest: Manifest,
}

pub struct ModelHandle {
    pub record: ModelRecord,
    pub layout: Vec<TensorSpec>,
    store: Store,
    events: broadcast::Sender<Event>,
    head: Mutex<Head>,
    live: Mutex<Live>,
    commit_pending: AtomicBool,
    sync: Mutex<SyncState>,
    sync_changed: tokio::sync::Notify,
    pushes: std::sync::atomic::AtomicU64,
    values: std::sync::atomic::AtomicU64,
    commits: std::sync::atomic::AtomicU64,
    commit_nanos: std::sync::atomic::AtomicU64,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub pushes: u64,
    pub values: u64,
    pub commits: u64,
    pub commit_seconds: f64,
}

/// How long a worker stays in the barrier without a heartbeat, pull or push.
/// Workers whose progress a model records (every version carries them).
const MAX_WORKERS: usize = 4096;
const MAX_NAME_BYTES: usize = 256;
const MAX_SHARD_BYTES: usize = 4096;
const MAX_ROWS_PER_PUSH: u64 = 1 << 40;
/// BSP rounds a push may be ahead of the last applied one.
const MAX_ROUNDS_AHEAD: u64 = 16;

/// How long a silent worker stays in its model's barrier, unless the server is told otherwise.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (updates are per value), so
    // poisoning is not a reason to stop serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A snapshot of a model's counters for `ModelInfo`.
#[derive(Debug, Clone)]
pub struct Status {
    pub head: u64,
    pub epoch: u64,
    pub updates: u64,
    pub since_commit: u64,
}

impl ModelHandle {
    /// Creates a new model: initial parameters committed as version 1.
    pub fn create(
        store: Store,
        events: broadcast::Sender<Event>,
        lease: std::time::Duration,
        spec: ModelSpec,
    ) -> Result<ModelHandle> {
        spec.validate()?;
        let record = ModelRecord { id: store.new_model_id()?, spec, created_unix_ms: now_unix_ms() };
        let params = Params::init(&record.spec);
        let version = VersionRecord {
            version: 1,
            created_unix_ms: now_unix_ms(),
            reason: "create".into(),
            lineage_epoch: 1,
            ..Default::default()
        };
        let written = write_all_chunks(&store, record.id, 1, &params)?;
        let manifest = Manifest::full(&params, 1);
        let version = VersionRecord { chunks_written: written, ..version };
        store.write_version(record.id, &version, &manifest, &ChunkBatch::default())?;
        store.put_model(&record)?;
        let handle = ModelHandle::assemble(store, events, lease, record, version.clone(), manifest, params);
        handle.emit(EventKind::Created, version);
        Ok(handle)
    }

    /// Loads a model's head version from the store (server start).
    pub fn load(
        store: Store,
        events: broadcast::Sender<Event>,
        lease: std::time::Duration,
        record: ModelRecord,
    ) -> Result<ModelHandle> {
        let name = record.spec.name.clone();
        let head = store
            .versions(record.id)?
            .pop()
            .ok_or_else(|| ServiceError::Internal(format!("model {name:?} has no versions")))?;
        let manifest = store.manifest(record.id, head.version, &name)?.ok_or_else(|| {
            ServiceError::Internal(format!("model {name:?}: manifest of version {} is missing", head.version))
        })?;
        let mut params = Params::zeros(&record.spec);
        store.load_params(record.id, &name, &manifest, &mut params)?;
        params.steps = head.steps;
        Ok(ModelHandle::assemble(store, events, lease, record, head, manifest, params))
    }

    fn assemble(
        store: Store,
        events: broadcast::Sender<Event>,
        lease: std::time::Duration,
        record: ModelRecord,
        head: VersionRecord,
        manifest: Manifest,
        mut params: Params,
    ) -> ModelHandle {
        params.clear_dirty();
        let live = Live {
            params,
            epoch: head.lineage_epoch,
            head: head.version,
            updates: head.updates,
            since_commit: 0,
            workers: head.workers.iter().map(|w| (w.worker_id.clone(), w.clone())).collect(),
            last_commit: Instant::now(),
            pending: Default::default(),
        };
        let sync = SyncState::new(record.spec.consistency, record.spec.staleness, lease);
        ModelHandle {
            layout: layout(&record.spec),
            record,
            store,
            events,
            head: Mutex::new(Head { record: head, manifest }),
            live: Mutex::new(live),
            commit_pending: AtomicBool::new(false),
            sync: Mutex::new(sync),
            sync_changed: tokio::sync::Notify::new(),
            pushes: Default::default(),
            values: Default::default(),
            commits: Default::default(),
            commit_nanos: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.record.spec.name
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.record.spec
    }

    pub fn counters(&self) -> Counters {
        Counters {
            pushes: self.pushes.load(Ordering::Relaxed),
            values: self.values.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            commit_seconds: self.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    pub fn status(&self) -> Status {
        let l = lock(&self.live);
        Status { head: l.head, epoch: l.epoch, updates: l.updates, since_commit: l.since_commit }
    }

    fn emit(&self, kind: EventKind, version: VersionRecord) {
        // No subscribers is fine.
        let _ = self.events.send(Event { kind, model: self.name().to_string(), version });
    }

    fn update_err(&self, source: accrete_core::params::UpdateError) -> ServiceError {
        ServiceError::Update { model: self.name().to_string(), source }
    }

    /// Checks one gradient against the layout (shape, keys, finite values); returns its
    /// tensor index.
    fn check(&self, g: &Grad<'_>) -> Result<usize> {
        if !g.values.len().is_multiple_of(4) {
            let message = format!(
                "model {:?}: tensor {:?}: values have {} bytes, not a multiple of 4 (little-endian f32)",
                self.name(),
                g.tensor,
                g.values.len()
            );
            return Err(ServiceError::Invalid(message));
        }
        let v = LeBytes(g.values);
        let checked = if g.keys.is_empty() {
            check_dense(&self.layout, g.tensor, g.offset, &v)
        } else {
            check_rows(&self.layout, g.tensor, g.keys, &v)
        };
        checked.map_err(|e| self.update_err(e))
    }

    /// Validates every gradient of a push against the layout (before any lock), then
    /// applies them all under the live lock: a refused push changes nothing. Under BSP
    /// the gradients join their clock's round instead, applied once every live worker's
    /// are in.
    pub fn push(&self, epoch: u64, grads: &[Grad<'_>], meta: &PushMeta<'_>) -> Result<Ack> {
        self.check_meta(meta)?;
        let mut tensors = [0usize; 8];
        for (i, g) in grads.iter().enumerate() {
            let t = self.check(g)?;
            if let Some(slot) = tensors.get_mut(i) {
                *slot = t;
            }
        }
        self.pushes.fetch_add(1, Ordering::Relaxed);
        self.values.fetch_add(grads.iter().map(|g| g.values.len() as u64 / 4).sum(), Ordering::Relaxed);
        let tensor_of = |i: usize, g: &Grad<'_>| {
            tensors
                .get(i)
                .copied()
                .unwrap_or_else(|| self.layout.iter().position(|t| t.name == g.tensor).unwrap_or_default())
        };
        if self.spec().consistency == ConsistencyMode::Bsp && !meta.worker_id.is_empty() {
            return self.push_to_round(epoch, grads, meta, tensor_of);
        }
        let mut live = lock(&self.live);
        self.check_epoch(&live, epoch)?;
        self.check_room(&live, meta)?;
        live.params.begin_update();
        for (i, g) in grads.iter().enumerate() {
            let t = tensor_of(i, g);
            if g.keys.is_empty() {
                live.params.apply_dense_le(t, g.offset as usize, g.values);
            } else {
                live.params.apply_rows_le(t, g.keys, g.values);
            }
        }
        live.updates += 1;
        live.since_commit += 1;
        let ack = self.finish_push(&mut live, meta);
        drop(live);
        if !meta.worker_id.is_empty() && self.spec().consistency == ConsistencyMode::Ssp {
            lock(&self.sync).touch(meta.worker_id, Some(meta.clock));
            self.sync_changed.notify_waiters();
        }
        Ok(ack)
    }

    /// A push's metadata: what the version records keep of it must be storable.
    fn check_meta(&self, m: &PushMeta<'_>) -> Result<()> {
        let bad = |what: String| {
            ServiceError::Invalid(format!("model {:?}: push from worker {:?}: {what}", self.name(), m.worker_id))
        };
        if !(m.loss_sum.is_finite() && m.loss_sum >= 0.0) {
            return Err(bad(format!("loss_sum {} is not a finite, non-negative number", m.loss_sum)));
        }
        if m.worker_id.len() > MAX_NAME_BYTES || m.shard.len() > MAX_SHARD_BYTES {
            return Err(bad(format!(
                "worker_id ({} bytes) or shard ({} bytes) is longer than {MAX_NAME_BYTES} / {MAX_SHARD_BYTES} bytes",
                m.worker_id.len(),
                m.shard.len()
            )));
        }
        if m.rows > MAX_ROWS_PER_PUSH {
            return Err(bad(format!("rows {} is more than {MAX_ROWS_PER_PUSH} in one push", m.rows)));
        }
        Ok(())
    }

    /// Refuses a push from a new worker id once the model records [`MAX_WORKERS`] workers'
    /// progress (each version carries them all).
    fn check_room(&self, live: &Live, m: &PushMeta<'_>) -> Result<()> {
        if !m.worker_id.is_empty() && live.workers.len() >= MAX_WORKERS && !live.workers.contains_key(m.worker_id) {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: push from worker {:?}: the model already records the progress of {MAX_WORKERS} workers; \
                 reuse worker ids (e.g. the shard's name)",
                self.name(),
                m.worker_id
            )));
        }
        Ok(())
    }

    fn check_epoch(&self, live: &Live, epoch: u64) -> Result<()> {
        if epoch != 0 && epoch != live.epoch {
            return Err(ServiceError::StaleLineage {
                model: self.name().to_string(),
                pushed: epoch,
                current: live.epoch,
            });
        }
        Ok(())
    }

    fn finish_push(&self, live: &mut Live, meta: &PushMeta<'_>) -> Ack {
        if !meta.worker_id.is_empty() {
            record_progress(&mut live.workers, meta);
        }
        Ack { epoch: live.epoch, head: live.head, updates: live.updates, commit_due: self.snapshot_if_due(live) }
    }

    /// The update-count policy: at every N-th update, snapshot the live state (written
    /// by a background commit). True when a commit should run.
    fn snapshot_if_due(&self, live: &mut Live) -> bool {
        let every = self.record.spec.commit.every_updates;
        if every == 0 || live.since_commit < every {
            return !live.pending.is_empty();
        }
        if live.pending.len() < MAX_PENDING {
            let snap = live.snapshot("policy");
            live.pending.push_back(snap);
        }
        true
    }

    /// BSP: adds a checked push to the round of its clock, then applies complete rounds.
    fn push_to_round(
        &self,
        epoch: u64,
        grads: &[Grad<'_>],
        meta: &PushMeta<'_>,
        tensor_of: impl Fn(usize, &Grad<'_>) -> usize,
    ) -> Result<Ack> {
        let mut sync = lock(&self.sync);
        if !sync.is_member(meta.worker_id) {
            // Its round has gone on without it: it must join again and take the current clock.
            return Err(ServiceError::NotInBarrier {
                model: self.name().to_string(),
                worker: meta.worker_id.to_string(),
            });
        }
        let stale = {
            let live = lock(&self.live);
            self.check_room(&live, meta)?;
            self.check_epoch(&live, epoch).err()
        };
        // A worker pushes clock c after pulling at c-1, which BSP allows once round c-1 is
        // applied: clocks from an old round, or far ahead, are not a worker's.
        if meta.clock <= sync.applied || meta.clock > sync.applied + MAX_ROUNDS_AHEAD {
            let msg = format!(
                "model {:?}: worker {:?} pushed clock {}, but BSP is at round {} (a push belongs to rounds {}..={})",
                self.name(),
                meta.worker_id,
                meta.clock,
                sync.applied,
                sync.applied + 1,
                sync.applied + MAX_ROUNDS_AHEAD
            );
            return Err(ServiceError::Invalid(msg));
        }
        let round = sync.rounds.entry(meta.clock).or_default();
        if round.from.iter().any(|w| w == meta.worker_id) {
            let msg =
                format!("model {:?}: worker {:?} already pushed clock {}", self.name(), meta.worker_id, meta.clock);
            return Err(ServiceError::Invalid(msg));
        }
        if let Some(refused) = stale {
            // Computed on the lineage before a rollback or import: refused, but the worker's
            // clock moves on with it, so it counts in its round as an empty contribution —
            // the other workers are not left waiting for a gradient that will not come.
            round.from.push(meta.worker_id.to_string());
            sync.touch(meta.worker_id, Some(meta.clock));
            self.apply_complete_rounds(&mut sync);
            drop(sync);
            self.sync_changed.notify_waiters();
            return Err(refused);
        }
        for (i, g) in grads.iter().enumerate() {
            let t = tensor_of(i, g);
            let spec = &self.layout[t];
            let values = LeBytes(g.values).iter();
            if spec.stats {
                round.add_stats(t, spec.cols as usize, &values.collect::<Vec<_>>());
            } else if g.keys.is_empty() {
                round.add_dense(t, spec.len() as usize, g.offset as usize, values);
            } else {
                round.add_rows(t, spec.cols as usize, g.keys, values);
            }
        }
        round.from.push(meta.worker_id.to_string());
        sync.touch(meta.worker_id, Some(meta.clock));
        let ack = {
            let mut live = lock(&self.live);
            self.finish_push(&mut live, meta)
        };
        let ack = self.apply_complete_rounds(&mut sync).unwrap_or(ack);
        drop(sync);
        self.sync_changed.notify_waiters();
        Ok(ack)
    }

    /// BSP: applies every round that all live workers have contributed to, as one update
    /// each. Returns the ack state after the last one applied.
    fn apply_complete_rounds(&self, sync: &mut SyncState) -> Option<Ack> {
        let mut ack = None;
        while let Some(c) = sync.complete_round() {
            let Some(round) = sync.rounds.remove(&c) else { break };
            let mut live = lock(&self.live);
            live.params.begin_update();
            for (t, d) in &round.dense {
                if d.lo < d.hi {
                    live.params.apply_dense(*t, d.lo, &d.values[d.lo..d.hi]);
                }
            }
            for (t, r) in &round.rows {
                live.params.apply_rows(*t, &r.keys, &r.values);
            }
            for (t, st) in &round.stats {
                live.params.merge_stats(*t, st);
            }
            live.updates += 1;
            live.since_commit += 1;
            sync.applied = c;
            let commit_due = self.snapshot_if_due(&mut live);
            ack = Some(Ack { epoch: live.epoch, head: live.head, updates: live.updates, commit_due });
        }
        ack
    }

    /// Joins a worker to the barrier; returns (lease, epoch, clock, recorded progress, live).
    pub fn join(&self, worker: &str) -> (std::time::Duration, u64, u64, Option<WorkerProgress>, usize) {
        let progress = lock(&self.live).workers.get(worker).cloned();
        let epoch = lock(&self.live).epoch;
        let mut sync = lock(&self.sync);
        let known = progress.as_ref().map_or(0, |p| p.clock);
        let clock = if sync.mode == ConsistencyMode::Bsp { sync.applied } else { known };
        sync.leave(worker);
        let clock = sync.touch(worker, Some(clock));
        let (lease, live) = (sync.lease, sync.live());
        drop(sync);
        self.sync_changed.notify_waiters();
        (lease, epoch, clock, progress, live)
    }

    /// Renews a worker's lease; `false` if it is not (or no longer) a member.
    pub fn heartbeat(&self, worker: &str) -> (bool, std::time::Duration, usize) {
        let mut sync = lock(&self.sync);
        let member = sync.is_member(worker);
        if member {
            sync.touch(worker, None);
        }
        (member, sync.lease, sync.live())
    }

    pub fn leave(&self, worker: &str) -> usize {
        let mut sync = lock(&self.sync);
        if sync.leave(worker) {
            tracing::info!(model = %self.name(), worker, "worker left");
        }
        self.apply_complete_rounds(&mut sync);
        let live = sync.live();
        drop(sync);
        self.sync_changed.notify_waiters();
        live
    }

    /// Drops workers whose lease expired (and applies rounds they were holding up).
    pub fn expire_leases(&self) {
        let mut sync = lock(&self.sync);
        let gone = sync.expire();
        if gone.is_empty() {
            return;
        }
        for w in &gone {
            tracing::warn!(model = %self.name(), worker = %w, "lease expired; the worker left the barrier");
        }
        self.apply_complete_rounds(&mut sync);
        drop(sync);
        self.sync_changed.notify_waiters();
    }

    /// Waits until a worker that has pushed `clock` batches may pull (SSP/BSP); a no-op
    /// under ASP or for callers that are not joined workers.
    pub async fn wait_to_pull(&self, worker: &str, clock: u64) {
        if worker.is_empty() || self.spec().consistency == ConsistencyMode::Asp {
            return;
        }
        loop {
            let notified = self.sync_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut sync = lock(&self.sync);
                if sync.is_member(worker) {
                    sync.touch(worker, None);
                }
                if sync.may_pull(clock) {
                    return;
                }
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), notified).await;
        }
    }

    /// True when the time-based commit policy asks for a commit.
    pub fn commit_due_by_time(&self) -> bool {
        let secs = self.record.spec.commit.every_secs;
        let l = lock(&self.live);
        secs > 0.0 && l.since_commit > 0 && l.last_commit.elapsed().as_secs_f64() >= secs
    }

    /// True when the update-count commit policy asks for a commit.
    pub fn commit_due_by_updates(&self) -> bool {
        !lock(&self.live).pending.is_empty()
    }

    /// Marks a policy commit as scheduled; false when one is already pending.
    pub fn try_schedule_commit(&self) -> bool {
        !self.commit_pending.swap(true, Ordering::AcqRel)
    }

    pub fn commit_finished(&self) {
        self.commit_pending.store(false, Ordering::Release);
    }

    /// Reads live weights (or their EMA) through `f`, under the live lock.
    pub fn with_live<R>(&self, f: impl FnOnce(&Params, u64, u64, u64) -> R) -> R {
        let l = lock(&self.live);
        f(&l.params, l.head, l.epoch, l.updates)
    }

    /// Commits: first the policy snapshots already taken (in order), then the live state
    /// if anything changed since. Blocking (sled writes and a flush): call from a blocking
    /// thread. Returns the newest version and whether any was made.
    pub fn commit(&self, reason: &str) -> Result<(VersionRecord, bool)> {
        let mut head = lock(&self.head);
        let mut created = self.write_pending(&mut head)?;
        let snap = {
            let mut live = lock(&self.live);
            (live.since_commit > 0).then(|| live.snapshot(reason))
        };
        if let Some(snap) = snap {
            self.write_snapshot(&mut head, snap)?;
            created = true;
        }
        Ok((head.record.clone(), created))
    }

    /// Writes the policy snapshots taken by pushes; true if any.
    pub fn commit_pending(&self) -> Result<bool> {
        let mut head = lock(&self.head);
        self.write_pending(&mut head)
    }

    fn write_pending(&self, head: &mut Head) -> Result<bool> {
        let mut any = false;
        loop {
            // (the live lock is released before the write)
            let Some(snap) = lock(&self.live).pending.pop_front() else { break };
            self.write_snapshot(head, snap)?;
            any = true;
        }
        Ok(any)
    }

    /// Makes a snapshot the next version: its chunks point at the new version in a copy of
    /// the head's manifest; written and flushed before it is announced.
    fn write_snapshot(&self, head: &mut Head, snap: Snapshot) -> Result<()> {
        let started = Instant::now();
        let version = head.record.version + 1;
        let mut manifest = head.manifest.clone();
        for (t, c, _) in &snap.chunks.chunks {
            manifest.tensors[*t as usize][*c as usize] = version;
        }
        let rec = VersionRecord {
            version,
            parent: Some(head.record.version),
            created_unix_ms: now_unix_ms(),
            updates: snap.updates,
            updates_since_parent: snap.since_parent,
            reason: snap.reason,
            lineage_epoch: snap.epoch,
            workers: snap.workers,
            chunks_written: snap.chunks.len() as u64,
            steps: snap.steps,
            ..Default::default()
        };
        if let Err(e) = self.store.write_version(self.record.id, &rec, &manifest, &snap.chunks) {
            // The live values of those chunks go into the next commit instead.
            let mut live = lock(&self.live);
            snap.chunks.chunks.iter().for_each(|(t, c, _)| live.params.mark_dirty(*t as usize, *c as usize));
            live.since_commit += rec.updates_since_parent;
            return Err(e.into());
        }
        lock(&self.live).head = rec.version;
        *head = Head { record: rec.clone(), manifest };
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.retain(head)?;
        self.emit(EventKind::Created, rec);
        Ok(())
    }

    /// Makes a new head version holding `to`'s content, reloads the live state from it and
    /// starts a new lineage epoch. Writes a manifest and a record, no parameters.
    pub fn rollback(&self, to: u64, why: &str) -> Result<VersionRecord> {
        let mut head = lock(&self.head);
        self.write_pending(&mut head)?;
        let target = self.version(to)?;
        let manifest = self.manifest_of(to)?;
        let params = self.load_content(&manifest, target.steps)?;
        let mut live = lock(&self.live);
        let reason = if why.is_empty() { format!("rollback to {to}") } else { format!("rollback to {to}: {why}") };
        let rec = VersionRecord {
            version: head.record.version + 1,
            parent: Some(head.record.version),
            created_unix_ms: now_unix_ms(),
            updates: live.updates,
            reason,
            lineage_epoch: live.epoch + 1,
            content_of: if target.content_of != 0 { target.content_of } else { to },
            // Offsets say how much of each shard was consumed; rolling the parameters back
            // does not un-read the data, so workers keep their positions.
            workers: live.workers.values().cloned().collect(),
            steps: target.steps,
            ..Default::default()
        };
        self.store.write_version(self.record.id, &rec, &manifest, &ChunkBatch::default())?;
        live.reset(params, rec.lineage_epoch, rec.version);
        drop(live);
        *head = Head { record: rec.clone(), manifest };
        self.retain(&head)?;
        self.emit(EventKind::RolledBack, rec.clone());
        Ok(rec)
    }

    /// Replaces the parameters with imported ones as a new version and a new lineage epoch.
    pub fn import(&self, params: Params, source: &str) -> Result<VersionRecord> {
        let mut head = lock(&self.head);
        self.write_pending(&mut head)?;
        let version = head.record.version + 1;
        let written = write_all_chunks(&self.store, self.record.id, version, &params)?;
        let manifest = Manifest::full(&params, version);
        let mut live = lock(&self.live);
        let rec = VersionRecord {
            version,
            parent: Some(head.record.version),
            created_unix_ms: now_unix_ms(),
            updates: live.updates,
            reason: if source.is_empty() { "import".into() } else { format!("import from {source}") },
            lineage_epoch: live.epoch + 1,
            workers: live.workers.values().cloned().collect(),
            chunks_written: written,
            steps: params.steps,
            ..Default::default()
        };
        self.store.write_version(self.record.id, &rec, &manifest, &ChunkBatch::default())?;
        live.reset(params, rec.lineage_epoch, version);
        drop(live);
        *head = Head { record: rec.clone(), manifest };
        self.retain(&head)?;
        self.emit(EventKind::Imported, rec.clone());
        Ok(rec)
    }

    /// Zeroed parameters in this model's layout (for imports to fill).
    pub fn empty_params(&self) -> Params {
        Params::zeros(&self.record.spec)
    }

    pub fn versions(&self) -> Result<Vec<VersionRecord>> {
        Ok(self.store.versions(self.record.id)?)
    }

    /// One retained version's record, or NOT_FOUND naming it.
    pub fn version(&self, v: u64) -> Result<VersionRecord> {
        let all = self.versions()?;
        match all.iter().find(|r| r.version == v) {
            Some(r) => Ok(r.clone()),
            None => Err(ServiceError::VersionNotFound {
                model: self.name().to_string(),
                version: v,
                retained: summarize(&all),
            }),
        }
    }

    /// The head version (from the live state: the `head` lock can be held by a long
    /// import or commit, and this is called from async handlers).
    pub fn head_version(&self) -> u64 {
        lock(&self.live).head
    }

    fn manifest_of(&self, v: u64) -> Result<Manifest> {
        self.store.manifest(self.record.id, v, self.name())?.ok_or_else(|| ServiceError::VersionNotFound {
            model: self.name().to_string(),
            version: v,
            retained: String::new(),
        })
    }

    fn load_content(&self, manifest: &Manifest, steps: u64) -> Result<Params> {
        let mut params = Params::zeros(&self.record.spec);
        self.store.load_params(self.record.id, self.name(), manifest, &mut params)?;
        params.steps = steps;
        Ok(params)
    }

    /// The exact parameters of a retained version, loaded from the store.
    pub fn load_version(&self, v: u64) -> Result<(VersionRecord, Params)> {
        let rec = self.version(v)?;
        let params = self.load_content(&self.manifest_of(v)?, rec.steps)?;
        Ok((rec, params))
    }

    /// Adds a label to a version; labels are unique within a model. Tagged versions are
    /// never dropped by retention.
    pub fn tag(&self, v: u64, label: &str) -> Result<VersionRecord> {
        if label.is_empty() || label.len() > 64 || label.chars().any(char::is_whitespace) {
            return Err(ServiceError::Invalid(format!("tag label {label:?} must be 1-64 characters without spaces")));
        }
        let _head = lock(&self.head);
        if let Some(other) = self.versions()?.iter().find(|r| r.tags.iter().any(|t| t == label)) {
            if other.version == v {
                return Ok(other.clone());
            }
            return Err(ServiceError::TagExists {
                model: self.name().to_string(),
                label: label.into(),
                version: other.version,
            });
        }
        let mut rec = self.version(v)?;
        rec.tags.push(label.to_string());
        self.store.update_version(self.record.id, &rec)?;
        self.emit(EventKind::Tagged, rec.clone());
        Ok(rec)
    }

    /// Stores evaluator metrics with a version (merged with earlier ones).
    pub fn report_metrics(&self, v: u64, metrics: &BTreeMap<String, f64>) -> Result<VersionRecord> {
        if let Some((k, x)) = metrics.iter().find(|(k, x)| k.is_empty() || !x.is_finite()) {
            return Err(ServiceError::Invalid(format!("metric {k:?} = {x} is not a finite number with a name")));
        }
        // Names go into /metrics labels and the dashboard as they are.
        let name_ok = |k: &str| k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if let Some(k) = metrics.keys().find(|k| !name_ok(k)) {
            return Err(ServiceError::Invalid(format!(
                "metric name {k:?}: use at most 64 letters, digits and _ . : -"
            )));
        }
        let _head = lock(&self.head);
        let mut rec = self.version(v)?;
        rec.metrics.extend(metrics.iter().map(|(k, x)| (k.clone(), *x)));
        self.store.update_version(self.record.id, &rec)?;
        self.emit(EventKind::Scored, rec.clone());
        Ok(rec)
    }

    /// Applies `--keep-last`: drops the oldest untagged versions beyond the newest K (the
    /// head is always kept), and the chunks only they referenced.
    fn retain(&self, head: &Head) -> Result<()> {
        let keep_last = self.record.spec.commit.keep_last as usize;
        if keep_last == 0 {
            return Ok(());
        }
        let all = self.versions()?;
        if all.len() <= keep_last {
            return Ok(());
        }
        let cut = all.len() - keep_last;
        let (drop, keep): (Vec<_>, Vec<_>) = all
            .iter()
            .enumerate()
            .partition(|(i, r)| *i < cut && r.tags.is_empty() && r.version != head.record.version);
        let drop: Vec<u64> = drop.iter().map(|(_, r)| r.version).collect();
        let keep: Vec<u64> = keep.iter().map(|(_, r)| r.version).collect();
        let freed = self.store.drop_versions(self.record.id, self.name(), &drop, &keep)?;
        tracing::debug!(model = %self.name(), dropped = drop.len(), freed, "retention");
        Ok(())
    }

    pub fn delete(&self) -> Result<u64> {
        let head = lock(&self.head);
        let n = self.store.delete_model(&self.record)?;
        self.emit(EventKind::Deleted, head.record.clone());
        Ok(n)
    }
}

fn record_progress(workers: &mut BTreeMap<String, WorkerProgress>, m: &PushMeta<'_>) {
    if !workers.contains_key(m.worker_id) {
        workers.insert(
            m.worker_id.to_string(),
            WorkerProgress { worker_id: m.worker_id.to_string(), ..Default::default() },
        );
    }
    if let Some(w) = workers.get_mut(m.worker_id) {
        if w.shard != m.shard {
            w.shard = m.shard.to_string();
        }
        w.offset = m.offset;
        w.clock = m.clock;
        w.rows = w.rows.saturating_add(m.rows);
        w.pushes = w.pushes.saturating_add(1);
        // finite in JSON records, whatever the number of pushes
        w.loss_sum = (w.loss_sum + m.loss_sum).min(f64::MAX);
    }
}

/// Writes every chunk of `params` under `version`, a batch at a time so a large model
/// never needs a second copy in memory. Returns the number of chunks.
fn write_all_chunks(store: &Store, id: u64, version: u64, params: &Params) -> Result<u64> {
    const BATCH: usize = 64;
    let mut batch = ChunkBatch::default();
    let mut n = 0;
    for (t, ts) in params.tensors.iter().enumerate() {
        for c in 0..chunks_of(ts.w.len()) {
            batch.push(t as u32, c as u32, |out| params.encode_chunk(t, c, out));
            if batch.len() == BATCH {
                store.write_chunks(id, version, &batch)?;
                n += batch.len() as u64;
                batch.clear();
            }
        }
    }
    store.write_chunks(id, version, &batch)?;
    Ok(n + batch.len() as u64)
}

fn summarize(all: &[VersionRecord]) -> String {
    match (all.first(), all.last()) {
        (Some(a), Some(b)) if all.len() > 1 => format!("{} versions, {}..={}", all.len(), a.version, b.version),
        (Some(a), _) => format!("only {}", a.version),
        _ => "none".into(),
    }
}
