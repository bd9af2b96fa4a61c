//! The commit policy's decisions, for the engine: the update-count snapshots taken at
//! exact counts, when a commit is due (a waiting snapshot, the time policy, a retry after a
//! failed write), the snapshots themselves, and what a failed write gives back to the live
//! state. The runtime writes what these hand out.
use super::{Engine, Snapshot, MAX_PENDING, RETRY_AFTER};
use accrete_core::VersionKind;
use accrete_store::ChunkBatch;
use std::time::Instant;

impl Engine {
    /// The update-count policy: at every N-th update, snapshot the live state (to be
    /// written by the commit-policy task). True when this update reached it.
    pub(super) fn snapshot_if_due(&mut self, now: Instant) -> bool {
        let every = self.shape.commit.every_updates;
        if every == 0 || self.since_commit < every {
            return false;
        }
        if self.pending.len() < MAX_PENDING {
            let snap = self.take_snapshot(VersionKind::Policy, "policy", now);
            self.pending.push_back(snap);
        }
        true
    }

    /// Is a policy commit due at `now`? Update-count snapshots wait to be written, or
    /// `every_secs` passed since the last commit with updates since.
    /// After a failed write, the policy tries again every [`RETRY_AFTER`].
    pub fn commit_due(&self, now: Instant) -> bool {
        !self.pending.is_empty() || self.time_due(now) || self.retry_due(now)
    }

    fn retry_due(&self, now: Instant) -> bool {
        self.since_commit > 0
            && self.failed.as_ref().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= RETRY_AFTER)
    }

    fn time_due(&self, now: Instant) -> bool {
        let secs = self.shape.commit.every_secs;
        secs > 0.0 && self.since_commit > 0 && now.saturating_duration_since(self.last_commit).as_secs_f64() >= secs
    }

    /// The next update-count snapshot to write, oldest first.
    pub fn next_pending(&mut self) -> Option<Snapshot> {
        self.pending.pop_front()
    }

    /// The waiting update-count snapshots as one (the newest content of every chunk any
    /// of them holds, and the newest counters): what an admin call writes, so it writes
    /// one version however many wait — the same coalescing the policy does when more than
    /// [`MAX_PENDING`] are due.
    pub fn coalesce_pending(&mut self) -> Option<Snapshot> {
        // Newest first: the first content met of a chunk is its newest.
        let mut waiting = self.pending.drain(..).rev();
        let mut newest = waiting.next()?;
        let mut seen: std::collections::HashSet<(u32, u32)> =
            newest.chunks.chunks.iter().map(|(t, c, _)| (*t, *c)).collect();
        for older in waiting {
            for (t, c, range) in &older.chunks.chunks {
                if seen.insert((*t, *c)) {
                    newest.chunks.push(*t, *c, |out| out.extend_from_slice(&older.chunks.data[range.clone()]));
                }
            }
            newest.since_parent += older.since_parent;
        }
        Some(newest)
    }

    /// Folds the waiting snapshots back into the live state, for a commit of it that
    /// holds them all.
    pub fn fold_pending(&mut self) {
        for s in std::mem::take(&mut self.pending) {
            self.fold(&s.chunks, s.since_parent);
        }
    }

    /// Gives a snapshot's chunks and updates back to the live state: its chunks are dirty
    /// again (their live values are newer or equal), its updates uncommitted.
    fn fold(&mut self, chunks: &ChunkBatch, since_parent: u64) {
        for (t, c, _) in &chunks.chunks {
            self.params.mark_dirty(*t as usize, *c as usize);
        }
        self.since_commit += since_parent;
    }

    /// How many update-count snapshots wait.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The time policy's snapshot, or a failed write's retry, if one is due at `now`.
    pub fn policy_snapshot(&mut self, now: Instant) -> Option<Snapshot> {
        (self.time_due(now) || self.retry_due(now)).then(|| self.take_snapshot(VersionKind::Policy, "policy", now))
    }

    /// Writing a version failed at `now` (its snapshot went back with [`Engine::unwritten`]).
    pub fn write_failed(&mut self, now: Instant, cause: String) {
        self.failed = Some((now, cause));
    }

    /// A snapshot of the live state for a commit of `kind`; `None` when nothing changed
    /// since the last one.
    pub fn snapshot(&mut self, kind: VersionKind, reason: &str, now: Instant) -> Option<Snapshot> {
        (self.since_commit > 0).then(|| self.take_snapshot(kind, reason, now))
    }

    /// A snapshot even when nothing changed (a global version every partition must have).
    pub fn forced_snapshot(&mut self, kind: VersionKind, reason: &str, now: Instant) -> Snapshot {
        self.take_snapshot(kind, reason, now)
    }

    /// Copies the changed chunks (one buffer) and the counters, and clears the marks.
    fn take_snapshot(&mut self, kind: VersionKind, reason: &str, now: Instant) -> Snapshot {
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
            workers: self.progress(),
            steps: self.params.steps,
            kind,
            reason: reason.to_string(),
            request: String::new(),
        };
        self.params.clear_dirty();
        self.since_commit = 0;
        self.last_commit = now;
        snap
    }

    /// A snapshot whose write failed: the live values of its chunks, and its updates, go
    /// into the next commit instead. So do those of the snapshots waiting behind it: each
    /// holds only the chunks changed since the one before, so written without it they
    /// would miss its changes.
    pub fn unwritten(&mut self, chunks: &ChunkBatch, since_parent: u64) {
        self.fold(chunks, since_parent);
        self.fold_pending();
    }

    /// A snapshot was written as version `v` at `now`: the live state descends from it.
    pub fn committed(&mut self, v: u64, now: Instant) {
        self.head = v;
        self.failed = None;
        self.last_written = now;
    }
}
