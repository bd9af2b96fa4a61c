//! One partition's side of a global commit (a model split over servers), driven by the
//! pure state machine `accrete_core::cut::PartitionCut`: a *hold* makes new pushes wait
//! and reports, per worker, the last batch applied; the *cut* (per worker, the furthest
//! any partition got) lets the pushes up to it through; once this partition's marks are
//! exactly the cut, its live state becomes the global version's number here, still
//! holding; the coordinator's *release* (every partition wrote it: the commit is made)
//! or *abort* ends the hold. A worker's new incarnation starts only from its mark in the
//! last commit made (the state machine's incarnation gate), so a batch a dead worker
//! delivered to only some partitions never makes two partitions' versions differ.
//!
//! The machine is asked under the engine lock, so a push is either applied before a
//! hold's report or waits: the report never misses one. A hold nobody ends (its
//! coordinator died) is aborted after [`HOLD_LIMIT`].
use super::{lock, ModelHandle};
use crate::error::{Result, ServiceError};
use accrete_core::cluster::{CutOrder, HoldReport};
use accrete_core::cut::{Admit, PartitionCut};
use accrete_core::push::PushMeta;
use accrete_core::VersionRecord;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a hold may last without its commit ending it.
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);
/// How often a waiting push or cut looks again without a wake-up.
const RECHECK: Duration = Duration::from_millis(20);

/// A partitioned model's cut state: the machine and when its hold began.
#[derive(Debug, Default)]
pub struct Gate {
    cut: PartitionCut,
    since: Option<Instant>,
}

impl Gate {
    /// A partition loaded from a version (a made commit's): its marks are committed.
    pub fn restore(workers: &[accrete_core::WorkerProgress]) -> Gate {
        let marks = workers.iter().map(|w| (w.worker_id.clone(), (w.incarnation, w.seq))).collect();
        Gate { cut: PartitionCut::restore(marks), since: None }
    }
}

/// Holds, pushes held, and how long holds lasted (for `/metrics`).
#[derive(Debug, Default)]
pub struct HoldMeters {
    pub holds: AtomicU64,
    pub held_pushes: AtomicU64,
    pub hold_nanos: AtomicU64,
}

/// What the gate says about a push, under the engine lock.
pub(super) enum Gated {
    Apply,
    /// Already applied (a retry): acknowledge without applying.
    Duplicate,
}

impl ModelHandle {
    /// Under the engine lock: may this push be applied now? `Held` when it must wait.
    pub(super) fn gate_admits(&self, meta: &PushMeta) -> Result<Gated> {
        let Some(gate) = &self.gate else { return Ok(Gated::Apply) };
        let gate = lock(gate);
        if meta.worker_id.is_empty() || meta.incarnation == 0 {
            // not a joined worker's: no mark to cut at, so never during a hold
            return if gate.cut.holding() { self.held() } else { Ok(Gated::Apply) };
        }
        match gate.cut.admit(&meta.worker_id, (meta.incarnation, meta.seq)) {
            Admit::Apply => Ok(Gated::Apply),
            Admit::Duplicate => Ok(Gated::Duplicate),
            Admit::Wait | Admit::WaitCommit => self.held(),
            Admit::Fenced => Err(ServiceError::StaleIncarnation {
                model: self.name().to_string(),
                worker: meta.worker_id.clone(),
                pushed: meta.incarnation,
                current: gate.cut.applied_marks().get(&meta.worker_id).map_or(0, |m| m.0),
            }),
            Admit::Gap { expected } => Err(ServiceError::Invalid(format!(
                "model {:?}: push {} of incarnation {} of worker {:?} skips batches (expected {} of incarnation {})",
                self.name(),
                meta.seq,
                meta.incarnation,
                meta.worker_id,
                expected.1,
                expected.0
            ))),
        }
    }

    fn held(&self) -> Result<Gated> {
        self.hold_meters.held_pushes.fetch_add(1, Ordering::Relaxed);
        Err(ServiceError::Held(self.name().to_string()))
    }

    /// Under the engine lock: the cut state of a recovered partition (its marks are the
    /// version's, committed).
    pub(super) fn gate_restore(&self, workers: &[accrete_core::WorkerProgress]) {
        if let Some(gate) = &self.gate {
            *lock(gate) = Gate::restore(workers);
        }
        self.gate_moved();
    }

    /// Under the engine lock, after an admitted push was applied.
    pub(super) fn gate_applied(&self, meta: &PushMeta) {
        if let Some(gate) = &self.gate {
            if !meta.worker_id.is_empty() && meta.incarnation != 0 {
                lock(gate).cut.applied(&meta.worker_id, (meta.incarnation, meta.seq));
            }
        }
    }

    /// Is a hold on (a cut may be waiting for the push just applied)?
    pub(super) fn gate_holding(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| lock(g).cut.holding())
    }

    /// The gate's generation: it moves whenever a hold begins, learns its cut or ends,
    /// and, during a hold, at every push.
    pub fn gate_generation(&self) -> u64 {
        self.gate_gen.load(Ordering::Acquire)
    }

    pub(super) fn gate_moved(&self) {
        self.gate_gen.fetch_add(1, Ordering::AcqRel);
        self.gate_changed.notify_waiters();
    }

    /// Waits until the gate moved past `seen` (or a short while: the caller looks again).
    pub async fn gate_wait(&self, seen: u64) {
        let notified = self.gate_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.gate_generation() != seen {
            return;
        }
        let _ = tokio::time::timeout(RECHECK, notified).await;
    }

    fn gate(&self) -> Result<&std::sync::Mutex<Gate>> {
        self.gate.as_ref().ok_or_else(|| ServiceError::Invalid(format!("model {:?} is not partitioned", self.name())))
    }

    /// The first phase: hold new pushes and report what was applied.
    pub fn hold(&self, commit: u64) -> Result<HoldReport> {
        let gate = self.gate()?;
        let mut engine = lock(&self.engine);
        let mut g = lock(gate);
        let Some(applied) = g.cut.hold(commit) else {
            return Err(ServiceError::Unavailable(format!(
                "model {:?}: commit {commit} is stale here (commit {} came after it)",
                self.name(),
                g.cut.commit()
            )));
        };
        if g.since.is_none() {
            g.since = Some(Instant::now());
            self.hold_meters.holds.fetch_add(1, Ordering::Relaxed);
        }
        let progressed = applied != *g.cut.committed_marks();
        engine.hold_rounds();
        let st = engine.status();
        drop(g);
        drop(engine);
        self.gate_moved();
        Ok(HoldReport {
            applied,
            last_version: st.head,
            server_instance: self.instance,
            updates: st.updates,
            since_commit: st.since_commit + progressed as u64,
            lineage_epoch: st.epoch,
            round: st.round,
        })
    }

    /// Ends the hold of `commit`: `made` (every partition wrote the version: its cut is
    /// this partition's committed marks) or aborted (the version is not listed).
    pub fn release(&self, commit: u64, made: bool) {
        let Some(gate) = &self.gate else { return };
        let ended = {
            let mut engine = lock(&self.engine);
            let mut g = lock(gate);
            let was = g.cut.holding();
            if made {
                g.cut.release(commit);
            } else {
                g.cut.abort(commit);
            }
            if !g.cut.holding() {
                engine.release_rounds(Instant::now());
            }
            match (was, g.cut.holding()) {
                (true, false) => g.since.take(),
                _ => None,
            }
        };
        if let Some(since) = ended {
            self.hold_meters.hold_nanos.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.gate_moved();
    }

    /// Aborts a hold older than [`HOLD_LIMIT`] (its coordinator is gone).
    pub fn expire_hold(&self, now: Instant) {
        let Some(gate) = &self.gate else { return };
        let stale = {
            let g = lock(gate);
            g.since.filter(|s| now.saturating_duration_since(*s) > HOLD_LIMIT).map(|_| g.cut.commit())
        };
        if let Some(commit) = stale {
            tracing::warn!(model = %self.name(), commit, "a commit's hold outlived its limit; aborted");
            self.release(commit, false);
        }
    }

    /// The second phase: let the pushes up to the cut through, wait until this
    /// partition's marks are exactly the cut, and write the live state as
    /// `order.version`. The hold stays until [`ModelHandle::release`].
    pub async fn commit_cut(self: &std::sync::Arc<Self>, order: CutOrder) -> Result<VersionRecord> {
        let gate = self.gate()?;
        if !lock(gate).cut.set_cut(order.commit, order.cut.clone()) {
            return Err(ServiceError::Unavailable(format!(
                "model {:?}: commit {} is not held here (it ended, or this server restarted)",
                self.name(),
                order.commit
            )));
        }
        self.gate_moved();
        let deadline = Instant::now() + Duration::from_millis(order.wait_ms);
        loop {
            let seen = self.gate_generation();
            if lock(gate).cut.ready() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Unavailable(format!(
                    "model {:?}: the batches up to commit {}'s cut did not all arrive within {} ms (a worker that \
                     died having sent a batch to only some partitions)",
                    self.name(),
                    order.commit,
                    order.wait_ms
                )));
            }
            self.gate_wait(seen).await;
        }
        // BSP: the same rounds on every partition (see `Engine::rounds_through`)
        if let Err(e) = lock(&self.engine).rounds_through(order.round, Instant::now()) {
            tracing::warn!(model = %self.name(), error = %e, "a round up to the cut was dropped");
        }
        let h = self.clone();
        let (version, kind, reason) = (order.version, order.kind, order.reason);
        tokio::task::spawn_blocking(move || h.commit_at(version, kind, &reason))
            .await
            .map_err(|e| ServiceError::Internal(format!("commit task failed: {e}")))?
    }
}
