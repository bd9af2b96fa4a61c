//! The commit policy's decisions, for the engine: the update-count snapshots taken at
//! exact counts, when a commit is due (a waiting snapshot, the time policy, a retry after a
//! failed write), the snapshots themselves, and what a failed write gives back to the live
//! state. The runtime writes what these hand out.
use super::{Engine, Snapshot, MAX_PENDING, RETRY_AFTER};
use accrete_core::params::{apply_to_whole, merge_deltas};
use accrete_core::VersionKind;
use accrete_store::ChunkBatch;
use std::collections::BTreeMap;
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
        let mut waiting = std::mem::take(&mut self.pending).into_iter();
        let mut merged = waiting.next()?;
        for newer in waiting.by_ref() {
            match coalesce(&merged.chunks, &newer.chunks) {
                Ok(chunks) => {
                    let since_parent = merged.since_parent + newer.since_parent;
                    let mut tally = std::mem::take(&mut merged.tally);
                    tally.merge(&newer.tally);
                    merged = Snapshot { chunks, since_parent, tally, ..newer };
                }
                Err(e) => {
                    // Our own blobs always merge; should one not, the live state holds
                    // every change they do (newer or equal): commit it whole instead.
                    tracing::error!("coalescing waiting snapshots: {e}; committing the live chunks whole");
                    self.fold(&merged);
                    self.fold(&newer);
                    waiting.for_each(|s| self.fold(&s));
                    let (kind, reason, request) = (newer.kind, newer.reason, newer.request);
                    let snap = self.take_snapshot(kind, &reason, self.last_commit);
                    return Some(Snapshot { request, ..snap });
                }
            }
        }
        Some(merged)
    }

    /// Folds the waiting snapshots back into the live state, for a commit of it that
    /// holds them all.
    pub fn fold_pending(&mut self) {
        for s in std::mem::take(&mut self.pending) {
            self.fold(&s);
        }
    }

    /// Gives a snapshot's chunks and updates back to the live state: its chunks are dirty
    /// again (their live values are newer or equal), its updates uncommitted, its rows'
    /// progressive tally not yet in a version.
    fn fold(&mut self, s: &Snapshot) {
        for e in &s.chunks.chunks {
            self.params.mark_dirty(e.t as usize, e.c as usize);
        }
        self.since_commit += s.since_parent;
        self.tally.merge(&s.tally);
    }

    /// How many update-count snapshots wait.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The time policy's snapshot, or a failed write's retry, if one is due at `now`.
    /// None while update-count snapshots wait: each holds what changed since the one
    /// before, so they are written first.
    pub fn policy_snapshot(&mut self, now: Instant) -> Option<Snapshot> {
        let due = self.pending.is_empty() && (self.time_due(now) || self.retry_due(now));
        due.then(|| self.take_snapshot(VersionKind::Policy, "policy", now))
    }

    /// Writing a version failed at `now` (its snapshot went back with [`Engine::unwritten`]).
    pub fn write_failed(&mut self, now: Instant, cause: String) {
        self.failed = Some((now, cause));
    }

    /// A snapshot for a commit of `kind`: the waiting update-count snapshots and the live
    /// changes since them, as one; `None` when nothing changed since the last one.
    pub fn snapshot(&mut self, kind: VersionKind, reason: &str, now: Instant) -> Option<Snapshot> {
        self.snapshot_all(kind, reason, now, false)
    }

    /// [`Engine::snapshot`] even when nothing changed (a global version every partition
    /// must have).
    pub fn forced_snapshot(&mut self, kind: VersionKind, reason: &str, now: Instant) -> Snapshot {
        match self.snapshot_all(kind, reason, now, true) {
            Some(s) => s,
            None => self.take_snapshot(kind, reason, now),
        }
    }

    fn snapshot_all(&mut self, kind: VersionKind, reason: &str, now: Instant, forced: bool) -> Option<Snapshot> {
        let waiting = self.coalesce_pending();
        let live =
            (forced || self.since_commit > 0 || waiting.is_some()).then(|| self.take_snapshot(kind, reason, now));
        let (Some(w), Some(l)) = (waiting, live.as_ref()) else { return live };
        match coalesce(&w.chunks, &l.chunks) {
            Ok(chunks) => live.map(|l| {
                let mut tally = w.tally.clone();
                tally.merge(&l.tally);
                Snapshot { chunks, since_parent: w.since_parent + l.since_parent, tally, ..l }
            }),
            Err(e) => {
                // (as in coalesce_pending: the live state holds every change)
                tracing::error!("coalescing a commit's snapshots: {e}; committing the live chunks whole");
                self.fold(&w);
                if let Some(l) = live {
                    self.fold(&l);
                }
                Some(self.take_snapshot(kind, reason, now))
            }
        }
    }

    /// Copies the changed chunks (one buffer) and the counters, and clears the marks. A
    /// chunk whose changed floats fit in at most half its size goes as a delta layer of
    /// just those floats ([`accrete_core::Params::commit_form`]); dense and mostly-changed
    /// chunks go whole.
    fn take_snapshot(&mut self, kind: VersionKind, reason: &str, now: Instant) -> Snapshot {
        let chunks = super::encode::encode_changed(&self.params);
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
            tally: std::mem::take(&mut self.tally),
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
    pub fn unwritten(&mut self, snap: &Snapshot) {
        self.fold(snap);
        self.fold_pending();
    }

    /// The stored size of every chunk, per tensor.
    pub fn chunk_sizes(&self) -> Vec<Vec<u64>> {
        let p = &self.params;
        (0..p.tensors.len()).map(|t| (0..p.tensors[t].chunks()).map(|c| p.chunk_bytes(t, c) as u64).collect()).collect()
    }

    /// Appends chunk `c` of tensor `t`'s initial content (version 1's), stored form.
    pub fn encode_init_chunk(&self, t: usize, c: usize, out: &mut Vec<u8>) {
        self.params.encode_init_chunk(t, c, out)
    }

    /// A snapshot was written as version `v` at `now`: the live state descends from it.
    pub fn committed(&mut self, v: u64, now: Instant) {
        self.head = v;
        self.failed = None;
        self.last_written = now;
    }
}

/// Two consecutive snapshots' blobs as one: per chunk the newer whole chunk, or the newer
/// delta applied over the older whole chunk, or the two deltas merged.
fn coalesce(older: &ChunkBatch, newer: &ChunkBatch) -> Result<ChunkBatch, String> {
    let mut by_chunk: BTreeMap<(u32, u32), (Option<usize>, Option<usize>)> = BTreeMap::new();
    older.chunks.iter().enumerate().for_each(|(i, e)| by_chunk.entry((e.t, e.c)).or_default().0 = Some(i));
    newer.chunks.iter().enumerate().for_each(|(i, e)| by_chunk.entry((e.t, e.c)).or_default().1 = Some(i));
    let mut out = ChunkBatch::with_capacity(older.data.len() + newer.data.len());
    for ((t, c), pair) in by_chunk {
        let (o, n) = (pair.0.map(|i| &older.chunks[i]), pair.1.map(|i| &newer.chunks[i]));
        let (ob, nb) = (o.map(|e| &older.data[e.range.clone()]), n.map(|e| &newer.data[e.range.clone()]));
        let mut failed = None;
        match (o, n, ob, nb) {
            (Some(o), Some(n), Some(ob), Some(nb)) if n.delta => {
                out.push_blob(t, c, o.delta, |buf| {
                    let start = buf.len();
                    let r = if o.delta {
                        merge_deltas(ob, nb, buf)
                    } else {
                        buf.extend_from_slice(ob);
                        apply_to_whole(&mut buf[start..], nb)
                    };
                    failed = r.err();
                });
            }
            (_, Some(n), _, Some(nb)) => out.push_blob(t, c, n.delta, |buf| buf.extend_from_slice(nb)),
            (Some(o), _, Some(ob), _) => out.push_blob(t, c, o.delta, |buf| buf.extend_from_slice(ob)),
            _ => {}
        }
        if let Some(e) = failed {
            return Err(format!("tensor {t} chunk {c}: {e}"));
        }
    }
    Ok(out)
}
