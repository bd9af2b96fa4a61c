//! The engine's BSP rounds: a push joins the round of its clock; a round is applied as
//! one update once every live worker is in it; during a global commit's hold rounds wait,
//! and the cut applies the rounds it names (the same on every partition).
use super::{record_progress, Checked, Engine, Pushed, MAX_ROUNDS_AHEAD};
use crate::error::{Result, ServiceError};
use crate::sync::Sum;
use accrete_core::optim::{merge_of, Keys, LeBytes, Merge};
use accrete_core::push::PushMeta;
use accrete_core::ConsistencyMode;
use std::time::Instant;

impl Engine {
    /// BSP: adds a checked push to the round of its clock, then applies complete rounds.
    pub(super) fn push_to_round(&mut self, push: &Checked<'_>, epoch: u64, now: Instant) -> Result<Pushed> {
        let meta = push.meta();
        // A stale process is told so before anything else: told to join again, it would
        // take a newer incarnation and fence the live one.
        self.check_incarnation(meta)?;
        if !self.sync.is_member(&meta.worker_id) {
            // Its round has gone on without it: it must join again and take the current clock.
            return Err(ServiceError::NotInBarrier { model: self.name(), worker: meta.worker_id.clone() });
        }
        self.check_room(meta)?;
        self.check_committable(now)?;
        let stale = self.check_epoch(epoch).err();
        self.check_round(meta)?;
        if let Some(refused) = stale {
            // Computed on the lineage before a rollback or import: refused, but the worker's
            // clock moves on with it, so it counts in its round as an empty contribution —
            // the other workers are not left waiting for a gradient that will not come.
            self.enter_round(meta, now);
            let dropped = self.apply_complete_rounds(now).err();
            self.dropped.extend(dropped);
            return Err(refused);
        }
        self.add_to_round(push);
        self.enter_round(meta, now);
        // Its progress is recorded when its round is applied.
        self.sync.rounds.entry(meta.clock).or_default().progress.push(meta.clone());
        let pushed = Pushed { ack: self.ack(), commit_due: false };
        Ok(self.apply_complete_rounds(now)?.unwrap_or(pushed))
    }

    /// A worker pushes clock c after pulling at c-1, which BSP allows once round c-1 is
    /// applied: clocks from an old round, or far ahead, are not a worker's; nor is a clock
    /// it already pushed.
    fn check_round(&self, meta: &PushMeta) -> Result<()> {
        let applied = self.sync.applied;
        if meta.clock <= applied || meta.clock > applied + MAX_ROUNDS_AHEAD {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: worker {:?} pushed clock {}, but BSP is at round {} (a push belongs to rounds {}..={})",
                self.shape.name,
                meta.worker_id,
                meta.clock,
                applied,
                applied + 1,
                applied + MAX_ROUNDS_AHEAD
            )));
        }
        if self.sync.rounds.get(&meta.clock).is_some_and(|r| r.from.contains(&meta.worker_id)) {
            let msg =
                format!("model {:?}: worker {:?} already pushed clock {}", self.shape.name, meta.worker_id, meta.clock);
            return Err(ServiceError::Invalid(msg));
        }
        Ok(())
    }

    /// Sums a push's gradients into the round of its clock; a push of changes sums its
    /// changes apart, per vector ([`Sum`]).
    fn add_to_round(&mut self, push: &Checked<'_>) {
        let round = self.sync.rounds.entry(push.meta().clock).or_default();
        for (t, slot, g) in push.chunks() {
            let spec = &self.shape.layout[t];
            let values = LeBytes(g.values).iter();
            let (sum, merge) = match push.changes() {
                false => (Sum::Gradient, Merge::Add),
                true => (Sum::Change(slot), slot.map_or(Merge::Mean, |s| merge_of(self.shape.slots[s]))),
            };
            if spec.stats {
                round.add_stats(t, spec, &values.collect::<Vec<_>>());
            } else if g.keys.is_empty() {
                round.add_dense((t, sum), spec.len() as usize, g.offset as usize, merge, values);
            } else {
                round.add_rows((t, sum), spec.cols as usize, merge, g.keys.iter(), values);
            }
        }
    }

    /// Counts a worker in the round of its clock and moves its clock on.
    fn enter_round(&mut self, meta: &PushMeta, now: Instant) {
        self.sync.rounds.entry(meta.clock).or_default().from.push(meta.worker_id.clone());
        self.sync.touch(&meta.worker_id, Some(meta.clock), now);
    }

    /// BSP: applies every round that all live workers have contributed to, as one update
    /// each (a round without values is none). Returns the state after the last one
    /// applied. A round whose sum would leave a value non-finite is dropped whole (nothing
    /// of it changes the model) and the next rounds go on; the first such round is the
    /// error.
    pub(super) fn apply_complete_rounds(&mut self, now: Instant) -> Result<Option<Pushed>> {
        self.apply_rounds(now, None)
    }

    /// A global commit's hold (a partitioned BSP model): rounds after the ones applied
    /// now wait, so no round completes here between this partition's report and its cut.
    pub fn hold_rounds(&mut self) {
        self.sync.cap = Some(self.sync.applied);
    }

    /// The cut of a global commit: every round up to `round` (the furthest any partition
    /// had applied when held) is applied, complete here or not — the pushes in it are the
    /// cut's, the same on every partition, and a round some partition applied was
    /// complete among the workers that were members there. Rounds after it wait for the
    /// hold to end ([`Engine::release_rounds`]).
    pub fn rounds_through(&mut self, round: u64, now: Instant) -> Result<()> {
        if self.sync.mode != ConsistencyMode::Bsp || round <= self.sync.applied {
            return Ok(());
        }
        let round = round.min(self.sync.applied + MAX_ROUNDS_AHEAD);
        self.sync.cap = Some(round);
        let r = self.apply_rounds(now, Some(round)).map(|_| ());
        self.sync.applied = self.sync.applied.max(round);
        r
    }

    /// The hold ended: complete rounds apply again.
    pub fn release_rounds(&mut self, now: Instant) {
        if self.sync.cap.take().is_some() {
            let dropped = self.apply_complete_rounds(now).err();
            self.dropped.extend(dropped);
        }
    }

    /// The BSP rounds' sole applier: complete ones (`through` None), or every pending
    /// one up to `through`.
    fn apply_rounds(&mut self, now: Instant, through: Option<u64>) -> Result<Option<Pushed>> {
        let mut pushed = None;
        let mut dropped = None;
        while let Some(c) = through.map_or_else(|| self.sync.complete_round(), |r| self.sync.round_through(r)) {
            let Some(mut round) = self.sync.rounds.remove(&c) else { break };
            // a round's weight changes are means over the pushes that made them
            round.dense.iter_mut().for_each(|(_, d)| d.finish());
            round.rows.iter_mut().for_each(|(_, r)| r.finish());
            self.sync.applied = c;
            // The rows of its pushes are consumed now (applied, or dropped as diverging).
            round.progress.iter().for_each(|m| record_progress(&mut self.workers, m));
            round.progress.iter().for_each(|m| self.tally.add_push(m));
            if round.is_empty() && !round.progress.iter().any(|m| m.update) {
                continue;
            }
            self.params.begin_update();
            // in a fixed order: gradients before changes, tensor by tensor
            let mut dense: Vec<_> = round.dense.iter().collect();
            dense.sort_by_key(|(k, _)| (k.1, k.0));
            for ((t, sum), d) in dense {
                let v = &d.values[d.lo..d.hi.max(d.lo)];
                match sum {
                    _ if v.is_empty() => {}
                    Sum::Gradient => self.params.apply_dense(*t, d.lo, v),
                    Sum::Change(slot) => self.params.merge_dense(*t, *slot, d.lo, v),
                }
            }
            let mut rows: Vec<_> = round.rows.iter().collect();
            rows.sort_by_key(|(k, _)| (k.1, k.0));
            for ((t, sum), r) in rows {
                match sum {
                    Sum::Gradient => self.params.apply_rows(*t, &r.keys, &r.values),
                    Sum::Change(slot) => self.params.merge_rows(*t, *slot, &r.keys, &r.values),
                }
            }
            for (t, st) in &round.stats {
                self.params.merge_stats(*t, st);
            }
            if let Err(source) = self.params.finish_update() {
                let message = format!(
                    "model {:?}: BSP round {c} (workers {:?}) was dropped: {source}",
                    self.shape.name, round.from
                );
                dropped.get_or_insert(ServiceError::Invalid(message));
                continue;
            }
            self.updates += 1;
            self.since_commit += 1;
            let commit_due = self.snapshot_if_due(now);
            pushed = Some(Pushed { ack: self.ack(), commit_due });
        }
        dropped.map_or(Ok(pushed), Err)
    }

    /// BSP rounds dropped by a leave or a lease expiry (their sums would not be finite),
    /// for the runtime to log; a push that completes such a round is told instead.
    pub fn take_dropped(&mut self) -> Vec<ServiceError> {
        std::mem::take(&mut self.dropped)
    }
}
