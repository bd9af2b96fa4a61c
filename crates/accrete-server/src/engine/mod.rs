//! The pure engine of one model, in the manner of openraft's engine/runtime split: the live
//! parameters, the lineage epoch, the head version the live state descends from, the
//! update counters, the workers' progress and incarnations, the BSP/SSP barrier
//! ([`SyncState`]), push application, and the commit policy's *decisions* (when a version
//! is due, and the snapshots that become versions).
//!
//! No IO, no locks, no async and no clock: the runtime (`model/mod.rs`, `model/versions.rs`) holds
//! an engine behind a mutex, passes the time in (`now`), and writes the snapshots the
//! engine hands out. So every rule here is tested alone with an injected clock (`tests.rs`).
//!
//! A push reads: [`Shape::check`] (before any lock) → [`Engine::push`] (epoch and
//! incarnation checks, then the optimizer via [`Params`], or the BSP round of its clock) →
//! the update-count policy's snapshot, if this push reached it.

mod check;
mod commits;
mod concurrent;
mod encode;
mod rounds;
#[cfg(test)]
mod tests;

pub use check::{Checked, Grad, Shape};

use crate::error::{Result, ServiceError};
use crate::sync::SyncState;
use accrete_core::optim::Keys;
use accrete_core::params::Share;
use accrete_core::progressive::Tally;
use accrete_core::pull::Joined;
use accrete_core::push::{PushAck, PushMeta};
use accrete_core::{ConsistencyMode, Params, VersionKind, VersionRecord, WorkerProgress};
use accrete_store::ChunkBatch;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Workers whose progress a model records (every version carries them).
const MAX_WORKERS: usize = 4096;
/// The longest worker id (pushes are held to the same bound, in `check.rs`).
const MAX_NAME_BYTES: usize = check::MAX_NAME_BYTES;
/// BSP rounds a push may be ahead of the last applied one.
const MAX_ROUNDS_AHEAD: u64 = 16;
/// The furthest a BSP barrier jumps to a clock given by a join (far from overflowing).
const MAX_CLOCK: u64 = 1 << 48;
/// Policy snapshots allowed to wait for the writer; beyond that, commits coalesce.
const MAX_PENDING: usize = 8;
/// How long the policy waits after a failed write before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The content of a future version, copied out of the live state at one instant.
#[derive(Debug)]
pub struct Snapshot {
    /// The chunks changed since the last snapshot (weights and slots of each).
    pub chunks: ChunkBatch,
    pub updates: u64,
    pub since_parent: u64,
    pub epoch: u64,
    pub workers: Vec<WorkerProgress>,
    pub steps: u64,
    pub kind: VersionKind,
    pub reason: String,
    /// The request id of the commit that asked for it (empty: the policy's).
    pub request: String,
    /// Progressive validation of the rows applied since the last snapshot.
    pub tally: Tally,
}

/// What an accepted push returns.
#[derive(Debug, Clone, Copy)]
pub struct Pushed {
    pub ack: PushAck,
    /// This push reached the update-count policy: a snapshot waits to be written.
    pub commit_due: bool,
}

/// A model's counters, for `ModelInfo`, the dashboard and `/metrics`.
#[derive(Debug, Clone)]
pub struct Status {
    pub head: u64,
    pub epoch: u64,
    pub updates: u64,
    pub since_commit: u64,
    /// Workers holding a lease in the model's barrier now.
    pub workers: usize,
    /// BSP: the last round applied.
    pub round: u64,
}

/// A worker's standing in the barrier after a heartbeat or a leave.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    /// It was a member (a heartbeat renewed it; a leave removed it).
    pub member: bool,
    pub lease: Duration,
    /// Members now.
    pub live: usize,
}

/// Parameters with what a pull reports of them: the version they are (for the live state,
/// the head it descends from), their lineage epoch and the updates applied to them.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub params: &'a Params,
    pub version: u64,
    pub epoch: u64,
    pub updates: u64,
}

#[derive(Debug)]
pub struct Engine {
    shape: Arc<Shape>,
    params: Params,
    /// Grows at each rollback or import; pushes of an older one are refused.
    epoch: u64,
    /// The version the live state descends from.
    head: u64,
    /// Applied updates, all time.
    updates: u64,
    since_commit: u64,
    workers: BTreeMap<String, WorkerProgress>,
    /// Each worker's latest incarnation (from joins, durable in the store).
    incarnations: HashMap<String, u64>,
    last_commit: Instant,
    /// Policy snapshots taken at exact update counts, waiting to be written in order.
    pending: VecDeque<Snapshot>,
    sync: SyncState,
    /// BSP rounds dropped outside a push, not yet logged ([`Engine::take_dropped`]).
    dropped: Vec<ServiceError>,
    /// When the last write of a version failed, and why; `None` once one succeeds.
    failed: Option<(Instant, String)>,
    /// When a version was last written.
    last_written: Instant,
    /// The latest pushes of changes, to average concurrent ones (ASP, SSP).
    concurrent: concurrent::Concurrent,
    /// Progressive validation of the rows applied since the last snapshot.
    tally: Tally,
}

impl Engine {
    /// An engine whose live state is `head`'s content (`params`), at `now`.
    pub fn new(
        shape: Arc<Shape>,
        mut params: Params,
        head: &VersionRecord,
        incarnations: Vec<(String, u64)>,
        lease: Duration,
        now: Instant,
    ) -> Engine {
        params.clear_dirty();
        Engine {
            sync: SyncState::new(shape.consistency, shape.staleness, lease),
            shape,
            params,
            epoch: head.lineage_epoch,
            head: head.version,
            updates: head.updates,
            since_commit: 0,
            workers: head.workers.iter().map(|w| (w.worker_id.clone(), w.clone())).collect(),
            incarnations: incarnations.into_iter().collect(),
            last_commit: now,
            pending: VecDeque::new(),
            dropped: Vec::new(),
            failed: None,
            last_written: now,
            concurrent: Default::default(),
            tally: Tally::default(),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn live(&self) -> Content<'_> {
        Content { params: &self.params, version: self.head, epoch: self.epoch, updates: self.updates }
    }

    pub fn status(&self) -> Status {
        Status {
            head: self.head,
            epoch: self.epoch,
            updates: self.updates,
            since_commit: self.since_commit,
            workers: self.sync.live(),
            round: self.sync.applied,
        }
    }

    /// Every worker's progress, as a version records it.
    pub fn progress(&self) -> Vec<WorkerProgress> {
        self.workers.values().cloned().collect()
    }

    fn name(&self) -> String {
        self.shape.name.clone()
    }

    /// Takes the workers' progress back to `workers` (a recovery's version's).
    pub fn rewind(&mut self, workers: &[WorkerProgress]) {
        self.workers = workers.iter().map(|w| (w.worker_id.clone(), w.clone())).collect();
    }

    /// The ack of a push acknowledged without being applied again (a retry).
    pub fn current_ack(&self) -> PushAck {
        self.ack()
    }

    fn ack(&self) -> PushAck {
        PushAck { lineage_epoch: self.epoch, head_version: self.head, updates: self.updates }
    }

    /// Applies a checked push at `now`: a refused push changes nothing, and a push whose
    /// result would not be finite is refused. A push without values (progress only) is
    /// not an update: it moves no counter and makes no version, unless it is a part of a
    /// push that carries values elsewhere (`PushMeta::update`). Under BSP a worker's
    /// gradients join their clock's round instead, applied once every live worker's are in.
    pub fn push(&mut self, push: &Checked<'_>, epoch: u64, now: Instant) -> Result<Pushed> {
        if self.shape.consistency == ConsistencyMode::Bsp && push.from_worker() {
            return self.push_to_round(push, epoch, now);
        }
        let meta = push.meta();
        self.check_incarnation(meta)?;
        self.check_epoch(epoch)?;
        self.check_room(meta)?;
        self.check_committable(now)?;
        // A part of an update that carries no values here still counts (`PushMeta::update`).
        let update = push.values() > 0 || meta.update;
        if update {
            // a weight's change is averaged with the concurrent pushes' (`concurrent.rs`)
            let share = (push.changes() && meta.base_updates > 0).then(|| Share {
                base: meta.base_updates,
                at: self.updates + 1,
                share: self.concurrent.share(meta.base_updates, &meta.worker_id),
            });
            self.params.begin_update();
            for (t, slot, g) in push.chunks() {
                // statistics merge either way; a change is merged, a gradient applied
                let stats = self.shape.layout[t].stats;
                match (g.keys.is_empty(), push.changes() && !stats) {
                    (true, false) => self.params.apply_dense_le(t, g.offset as usize, g.values),
                    (false, false) => self.params.apply_rows_le(t, g.keys, g.values),
                    (true, true) => self.params.merge_dense_le(t, slot, g.offset as usize, g.values, share),
                    (false, true) => self.params.merge_rows_le(t, slot, g.keys, g.values, share),
                }
            }
            self.params.finish_update().map_err(|source| ServiceError::Update { model: self.name(), source })?;
            self.updates += 1;
            self.since_commit += 1;
            if push.changes() && push.values() > 0 {
                self.concurrent.record(self.updates, &meta.worker_id);
            }
        }
        let pushed = self.finish_push(meta, now);
        if push.from_worker() && self.shape.consistency == ConsistencyMode::Ssp {
            self.sync.touch(&meta.worker_id, Some(meta.clock), now);
        }
        Ok(pushed)
    }

    /// Refuses a push from an older incarnation of its worker (a newer one has joined).
    fn check_incarnation(&self, m: &PushMeta) -> Result<()> {
        let current = self.incarnations.get(&m.worker_id).copied().unwrap_or(0);
        if m.incarnation != 0 && m.incarnation < current {
            return Err(ServiceError::StaleIncarnation {
                model: self.name(),
                worker: m.worker_id.clone(),
                pushed: m.incarnation,
                current,
            });
        }
        Ok(())
    }

    /// The refusal of a push computed on another lineage, if it is one.
    pub fn stale_epoch(&self, epoch: u64) -> Option<ServiceError> {
        self.check_epoch(epoch).err()
    }

    /// Refuses a push computed on another lineage (0 = don't check).
    fn check_epoch(&self, epoch: u64) -> Result<()> {
        if epoch != 0 && epoch < self.shape.first_epoch {
            let first = self.shape.first_epoch;
            return Err(ServiceError::StaleModel { model: self.name(), pushed: epoch, first, current: self.epoch });
        }
        if epoch != 0 && epoch != self.epoch {
            return Err(ServiceError::StaleLineage { model: self.name(), pushed: epoch, current: self.epoch });
        }
        Ok(())
    }

    /// Refuses a push from a new worker id once the model records [`MAX_WORKERS`] workers'
    /// progress (each version carries them all).
    fn check_room(&self, m: &PushMeta) -> Result<()> {
        if !m.worker_id.is_empty() && self.workers.len() >= MAX_WORKERS && !self.workers.contains_key(&m.worker_id) {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: push from worker {:?}: the model already records the progress of {MAX_WORKERS} workers; \
                 reuse worker ids (e.g. the shard's name)",
                self.shape.name, m.worker_id
            )));
        }
        Ok(())
    }

    /// While versions cannot be written, refuses pushes past the commit policy's bound —
    /// updates the policy would have committed by now (`every_updates` since the last
    /// version, or `every_secs` since it) — rather than acknowledge updates that a crash
    /// would lose beyond what the policy promises. Without a policy there is no bound.
    fn check_committable(&self, now: Instant) -> Result<()> {
        let Some((_, cause)) = &self.failed else { return Ok(()) };
        let c = self.shape.commit;
        let uncommitted = self.since_commit + self.pending.iter().map(|s| s.since_parent).sum::<u64>();
        let by_count = c.every_updates > 0 && uncommitted >= c.every_updates;
        let by_time =
            c.every_secs > 0.0 && now.saturating_duration_since(self.last_written).as_secs_f64() >= c.every_secs;
        if by_count || by_time {
            return Err(ServiceError::Uncommittable { model: self.name(), uncommitted, cause: cause.clone() });
        }
        Ok(())
    }

    fn finish_push(&mut self, meta: &PushMeta, now: Instant) -> Pushed {
        if !meta.worker_id.is_empty() {
            record_progress(&mut self.workers, meta);
        }
        self.tally.add_push(meta);
        let commit_due = self.snapshot_if_due(now);
        Pushed { ack: self.ack(), commit_due }
    }

    /// May `worker` join? Its id must fit in the records, and a new id needs room: the
    /// model keeps every id's incarnation and progress. Asked before the store hands out
    /// an incarnation, so a refused join writes nothing.
    pub fn check_join(&self, worker: &str) -> Result<()> {
        let bad = |m: String| ServiceError::Invalid(format!("model {:?}: join of worker {worker:?}: {m}", self.name()));
        if worker.is_empty() || worker.len() > MAX_NAME_BYTES {
            return Err(bad(format!("a worker id has 1 to {MAX_NAME_BYTES} bytes, this one {}", worker.len())));
        }
        let known = self.incarnations.contains_key(worker) || self.workers.contains_key(worker);
        if !known && self.incarnations.len().max(self.workers.len()) >= MAX_WORKERS {
            return Err(bad(format!(
                "the model already knows {MAX_WORKERS} worker ids; reuse worker ids (e.g. the shard's name)"
            )));
        }
        Ok(())
    }

    /// Joins a worker with its new `incarnation` (pushes of older ones are refused from
    /// now on); under BSP it takes the barrier's clock.
    pub fn join(&mut self, worker: &str, incarnation: u64, now: Instant) -> Joined {
        self.join_at(worker, incarnation, 0, now)
    }

    /// [`Engine::join`] at a clock of at least `clock` (a partitioned model's: the same
    /// clock on every partition, the furthest any of them would give).
    pub fn join_at(&mut self, worker: &str, incarnation: u64, clock: u64, now: Instant) -> Joined {
        // Two joins of one id may reach here in either order: the newer incarnation wins.
        let current = self.incarnations.entry(worker.to_string()).or_insert(0);
        *current = (*current).max(incarnation);
        let progress = self.workers.get(worker).cloned();
        let known = progress.as_ref().map_or(0, |p| p.clock);
        // Under BSP: the applied round, or the last open round this worker is already
        // counted in (a refused push counts as an empty contribution, and open rounds
        // outlive a rollback or recovery), so its next push is of the round after.
        let counted = self.sync.rounds.iter().rev().find(|(_, r)| r.from.iter().any(|w| w == worker)).map(|(c, _)| *c);
        let bsp = self.sync.mode == ConsistencyMode::Bsp;
        let clock = clock.min(MAX_CLOCK);
        if bsp && self.sync.rounds.is_empty() && clock > self.sync.applied + MAX_ROUNDS_AHEAD {
            // Further behind the other partitions than any push may run ahead, with no
            // round open: this partition restarted without the rounds it had applied (the
            // model recovers to its latest global version). The rounds it never saw hold
            // nothing here, so its barrier goes straight to the workers' clock.
            self.sync.applied = clock;
        }
        let own = if bsp { self.sync.applied.max(counted.unwrap_or(0)) } else { known };
        // a given clock (another partition's) beyond any this partition has seen: at most
        // the rounds a push may be ahead (it comes from the network)
        let clock = if bsp { own.max(clock.min(self.sync.applied + MAX_ROUNDS_AHEAD)) } else { own.max(clock) };
        if bsp {
            // Joined at a round this partition has not reached (it restarted, or the
            // rounds' pushes are still on their way here): the worker counts in the
            // rounds up to it as an empty contribution, as it does where it was counted,
            // so they complete here too (with the others' values when they arrive).
            for r in own + 1..=clock {
                let round = self.sync.rounds.entry(r).or_default();
                if !round.from.iter().any(|w| w == worker) {
                    round.from.push(worker.to_string());
                }
            }
        }
        self.sync.leave(worker);
        let clock = self.sync.touch(worker, Some(clock), now);
        if bsp && clock > own {
            if let Err(e) = self.apply_complete_rounds(now) {
                self.dropped.push(e);
            }
        }
        let (offset, pass, shard) = progress.map(|p| (p.offset, p.pass, p.shard)).unwrap_or_default();
        Joined {
            lease_ms: self.sync.lease.as_millis() as u64,
            lineage_epoch: self.epoch,
            clock,
            offset,
            pass,
            shard,
            live_workers: self.sync.live() as u32,
            incarnation,
            server_instance: 0, // the runtime's to say
        }
    }

    /// Renews a member's lease.
    pub fn heartbeat(&mut self, worker: &str, now: Instant) -> Membership {
        let member = self.sync.is_member(worker);
        if member {
            self.sync.touch(worker, None, now);
        }
        Membership { member, lease: self.sync.lease, live: self.sync.live() }
    }

    /// Removes a worker from the barrier (and applies rounds it was holding up).
    pub fn leave(&mut self, worker: &str, now: Instant) -> Membership {
        let member = self.sync.leave(worker);
        let dropped = self.apply_complete_rounds(now).err();
        self.dropped.extend(dropped);
        Membership { member, lease: self.sync.lease, live: self.sync.live() }
    }

    /// Drops workers whose lease expired by `now` (and applies rounds they were holding
    /// up); returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone = self.sync.expire(now);
        if !gone.is_empty() {
            let dropped = self.apply_complete_rounds(now).err();
            self.dropped.extend(dropped);
        }
        gone
    }

    /// Is `worker` in the barrier (joined, and its lease not lapsed)?
    pub fn is_member(&self, worker: &str) -> bool {
        self.sync.is_member(worker)
    }

    /// May a worker that has pushed `clock` batches pull at `now`? (Renews its lease.)
    pub fn may_pull(&mut self, worker: &str, clock: u64, now: Instant) -> bool {
        if self.sync.is_member(worker) {
            self.sync.touch(worker, None, now);
        }
        self.sync.may_pull(clock)
    }

    /// Replaces the live parameters with a version's content (rollback, import): version
    /// `head` of lineage `epoch`, at `now`.
    ///
    /// What the old lineage still held is abandoned with it, as its applied rows are:
    /// update-count snapshots taken while the rollback or import was loading (they would
    /// become versions of the old content after the new head), and the gradients summed in
    /// open BSP rounds (they would be applied to the new content). The rounds keep who
    /// contributed, so the barrier's clocks go on.
    pub fn install(&mut self, params: Params, epoch: u64, head: u64, now: Instant) {
        self.params = params;
        self.installed(epoch, head, now);
    }

    /// [`Engine::install`] of a version that differs from the live state only in some
    /// chunks: `chunks` holds their content, whole (every chunk [`Engine::changed_since_head`]
    /// names, and every chunk whose content differs between the head and the version).
    /// `steps`: the version's optimizer step count.
    pub fn install_chunks(
        &mut self,
        chunks: &ChunkBatch,
        steps: u64,
        epoch: u64,
        head: u64,
        now: Instant,
    ) -> Result<()> {
        // (every size checked first: a refused install changes nothing)
        let sizes_ok = chunks.chunks.iter().all(|e| {
            (e.t as usize) < self.params.tensors.len()
                && (e.c as usize) < self.params.tensors[e.t as usize].chunks()
                && e.range.len() == self.params.chunk_bytes(e.t as usize, e.c as usize)
        });
        if !sizes_ok {
            return Err(ServiceError::Internal("installing chunks that do not fit the model's layout".into()));
        }
        for e in &chunks.chunks {
            let blob = &chunks.data[e.range.clone()];
            self.params
                .decode_chunk(e.t as usize, e.c as usize, blob)
                .map_err(|err| ServiceError::Internal(format!("installing chunk {} of tensor {}: {err}", e.c, e.t)))?;
        }
        self.params.steps = steps;
        self.installed(epoch, head, now);
        Ok(())
    }

    /// The chunks whose live content may differ from the head version's: changed since
    /// the last snapshot, or held by a snapshot not written yet.
    pub fn changed_since_head(&self) -> std::collections::BTreeSet<(u32, u32)> {
        let p = &self.params;
        let mut out: std::collections::BTreeSet<(u32, u32)> =
            (0..p.tensors.len()).flat_map(|t| p.dirty_chunks(t).map(move |c| (t as u32, c as u32))).collect();
        out.extend(self.pending.iter().flat_map(|s| s.chunks.chunks.iter().map(|e| (e.t, e.c))));
        out
    }

    fn installed(&mut self, epoch: u64, head: u64, now: Instant) {
        self.pending.clear();
        self.concurrent.clear();
        self.tally = Tally::default(); // the rows went with the content replaced
        self.sync.rounds.values_mut().for_each(|r| r.clear_sums());
        self.params.clear_dirty();
        self.epoch = epoch;
        self.head = head;
        self.since_commit = 0;
        self.last_commit = now;
        self.failed = None;
        self.last_written = now;
    }
}

fn record_progress(workers: &mut BTreeMap<String, WorkerProgress>, m: &PushMeta) {
    // (no key copy per push: the id is cloned only for a new worker)
    if !workers.contains_key(&m.worker_id) {
        workers.insert(m.worker_id.clone(), WorkerProgress { worker_id: m.worker_id.clone(), ..Default::default() });
    }
    let Some(w) = workers.get_mut(&m.worker_id) else { return };
    if m.incarnation != 0 {
        w.incarnation = m.incarnation;
    }
    w.seq = m.seq;
    if w.shard != m.shard {
        w.shard = m.shard.to_string();
    }
    w.offset = m.offset;
    w.pass = m.pass;
    w.clock = m.clock;
    w.rows = w.rows.saturating_add(m.rows);
    w.pushes = w.pushes.saturating_add(1);
    // finite in JSON records, whatever the number of pushes
    w.loss_sum = (w.loss_sum + m.loss_sum).min(f64::MAX);
}
