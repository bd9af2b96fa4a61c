//! One partition's side of a global commit (a model split over servers): a *hold* makes
//! new pushes wait and reports, per worker, the last batch applied; the *cut* (per
//! worker, the furthest any partition got) lets the pushes up to it through, and once
//! they are applied the live state becomes the global version's number here, and the
//! hold ends. Pushes beyond the cut wait the whole time, so for every worker every
//! partition's version holds the same batches.
//!
//! The gate is checked under the engine lock, so a push is either applied before the
//! hold's report or waits: the report never misses one. A hold nobody ends (its
//! coordinator died) is dropped after [`HOLD_LIMIT`].
use super::{lock, ModelHandle};
use crate::error::{Result, ServiceError};
use accrete_core::cluster::{CutOrder, HoldReport, Marks};
use accrete_core::push::PushMeta;
use accrete_core::VersionRecord;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The longest a hold may last without its commit ending it.
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);
/// How often a waiting push or cut looks again without a wake-up.
const RECHECK: Duration = Duration::from_millis(20);

/// A partition's hold for one global commit.
#[derive(Debug)]
pub struct Hold {
    commit: u64,
    /// Known after the second phase: pushes up to it may go on.
    cut: Option<Marks>,
    since: Instant,
}

impl Hold {
    /// May this push be applied during the hold?
    fn admits(&self, meta: &PushMeta) -> bool {
        let Some(cut) = &self.cut else { return false };
        cut.get(meta.worker_id.as_str()).is_some_and(|c| (meta.incarnation, meta.seq) <= *c)
    }
}

/// Pushes held, and how long holds lasted (for `/metrics`).
#[derive(Debug, Default)]
pub struct HoldMeters {
    pub holds: std::sync::atomic::AtomicU64,
    pub held_pushes: std::sync::atomic::AtomicU64,
    pub hold_nanos: std::sync::atomic::AtomicU64,
}

impl ModelHandle {
    /// Under the engine lock: must this push wait for a hold to end? (Counts it.)
    pub(super) fn must_wait(&self, meta: &PushMeta) -> bool {
        let gate = lock(&self.gate);
        let wait = gate.as_ref().is_some_and(|h| !h.admits(meta));
        if wait {
            self.hold_meters.held_pushes.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// The gate's generation: it moves whenever a hold begins, learns its cut or ends,
    /// and while a cut is awaited, at every push.
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

    /// The first phase: hold new pushes and report what was applied.
    pub fn hold(&self, commit: u64) -> Result<HoldReport> {
        let engine = lock(&self.engine);
        let mut gate = lock(&self.gate);
        if let Some(h) = gate.as_ref() {
            if h.commit > commit {
                return Err(ServiceError::Unavailable(format!(
                    "model {:?} is held for a newer commit ({} > {commit})",
                    self.name(),
                    h.commit
                )));
            }
        }
        *gate = Some(Hold { commit, cut: None, since: Instant::now() });
        self.hold_meters.holds.fetch_add(1, Ordering::Relaxed);
        let applied = engine.progress().into_iter().map(|w| (w.worker_id, (w.incarnation, w.seq))).collect();
        let st = engine.status();
        drop(gate);
        drop(engine);
        self.gate_moved();
        Ok(HoldReport {
            applied,
            last_version: st.head,
            server_instance: self.instance,
            updates: st.updates,
            since_commit: st.since_commit,
        })
    }

    /// Ends the hold of `commit` (if it is still this one's): held pushes go on.
    pub fn release(&self, commit: u64) {
        let ended = {
            let mut gate = lock(&self.gate);
            match gate.as_ref() {
                Some(h) if h.commit <= commit => gate.take(),
                _ => None,
            }
        };
        if let Some(h) = ended {
            self.hold_meters.hold_nanos.fetch_add(h.since.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.gate_moved();
        }
    }

    /// Drops a hold older than [`HOLD_LIMIT`] (its coordinator is gone).
    pub fn expire_hold(&self, now: Instant) {
        let stale =
            lock(&self.gate).as_ref().filter(|h| now.saturating_duration_since(h.since) > HOLD_LIMIT).map(|h| h.commit);
        if let Some(commit) = stale {
            tracing::warn!(model = %self.name(), commit, "a commit's hold outlived its limit; released");
            self.release(commit);
        }
    }

    /// Has every worker of `cut` had its batches up to the cut applied here?
    fn reached(&self, cut: &Marks) -> bool {
        let engine = lock(&self.engine);
        let applied: Marks = engine.progress().into_iter().map(|w| (w.worker_id, (w.incarnation, w.seq))).collect();
        cut.iter().all(|(w, m)| applied.get(w).is_some_and(|a| a >= m))
    }

    /// The second phase: let the pushes up to the cut through, wait until they are
    /// applied, write the live state as `order.version`, and end the hold.
    pub async fn commit_cut(self: &std::sync::Arc<Self>, order: CutOrder) -> Result<VersionRecord> {
        {
            let mut gate = lock(&self.gate);
            match gate.as_mut() {
                Some(h) if h.commit == order.commit => h.cut = Some(order.cut.clone()),
                _ => {
                    return Err(ServiceError::Unavailable(format!(
                        "model {:?}: commit {} is not held here (it ended, or this server restarted)",
                        self.name(),
                        order.commit
                    )))
                }
            }
        }
        self.gate_moved();
        let deadline = Instant::now() + Duration::from_millis(order.wait_ms);
        loop {
            let seen = self.gate_generation();
            if self.reached(&order.cut) {
                break;
            }
            if Instant::now() > deadline {
                self.release(order.commit);
                return Err(ServiceError::Unavailable(format!(
                    "model {:?}: the pushes up to commit {}'s cut did not arrive within {} ms",
                    self.name(),
                    order.commit,
                    order.wait_ms
                )));
            }
            self.gate_wait(seen).await;
        }
        let h = self.clone();
        let (commit, version, kind, reason) = (order.commit, order.version, order.kind, order.reason);
        let written = tokio::task::spawn_blocking(move || h.commit_at(version, kind, &reason))
            .await
            .map_err(|e| ServiceError::Internal(format!("commit task failed: {e}")));
        self.release(commit);
        written?
    }
}
