//! Worker clocks, leases and the BSP/SSP barriers of one model.
//!
//! A worker's clock is the number of batches it has pushed. Under SSP(s) a worker at clock
//! c may pull once every live worker has pushed at least c − s batches; under BSP once the
//! gradients of clock c from every live worker have been summed and applied as one update.
//! A worker is live while its lease (renewed by joins, heartbeats, pulls and pushes) has
//! not expired; an expired or departed worker leaves the barrier, so the others go on.
//!
//! Pure state: the time is passed in (`now`), so leases are tested with an injected clock.
use accrete_core::optim::Merge;
use accrete_core::push::PushMeta;
use accrete_core::ConsistencyMode;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The summed gradients of one BSP clock.
#[derive(Debug, Default)]
pub struct Round {
    /// Workers whose gradients are in.
    pub from: Vec<String>,
    /// Dense tensors: summed values over the touched range [lo, hi), by tensor and what
    /// is summed.
    pub dense: HashMap<(usize, Sum), DenseSum>,
    /// Sparse tensors: row key → position in `values` (cols floats per row).
    pub rows: HashMap<(usize, Sum), RowSum>,
    /// Statistics tensors: merged batch statistics.
    pub stats: HashMap<usize, Vec<f32>>,
    /// The metadata of the pushes in it: their workers' progress is recorded when the
    /// round is applied, not before, so a version never holds offsets ahead of its content.
    pub progress: Vec<PushMeta>,
}

impl Round {
    /// No worker sent values to this round (it applies as no update).
    pub fn is_empty(&self) -> bool {
        self.dense.values().all(|d| d.lo >= d.hi)
            && self.rows.values().all(|r| r.keys.is_empty())
            && self.stats.is_empty()
    }
}

/// What a round sums for a tensor: gradients (applied by the optimizer), or changes of
/// per-row training to merge into the weights (`Change(None)`, averaged over the pushes
/// that changed each weight) or a slot (by the slot's [`Merge`]). Gradients apply before
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sum {
    Gradient,
    Change(Option<usize>),
}

#[derive(Debug, Default)]
pub struct DenseSum {
    pub values: Vec<f32>,
    pub lo: usize,
    pub hi: usize,
    /// How many pushes changed each value (a [`Merge::Mean`] sum is divided by it).
    pub counts: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct RowSum {
    pub index: HashMap<u64, usize>,
    pub keys: Vec<u64>,
    pub values: Vec<f32>,
    pub counts: Vec<u32>,
}

impl DenseSum {
    /// The sums as merged: means where the merge is [`Merge::Mean`].
    pub fn finish(&mut self) {
        finish(&mut self.values, &self.counts);
    }
}

impl RowSum {
    pub fn finish(&mut self) {
        finish(&mut self.values, &self.counts);
    }
}

/// Divides each sum by its count where counts are kept (a [`Merge::Mean`] sum).
fn finish(values: &mut [f32], counts: &[u32]) {
    values.iter_mut().zip(counts).filter(|(_, n)| **n > 1).for_each(|(v, n)| *v /= *n as f32);
}

impl Round {
    /// Drops the summed gradients, keeping who contributed (a rollback or an import
    /// replaced the content they were computed against).
    pub fn clear_sums(&mut self) {
        self.dense.clear();
        self.rows.clear();
        self.stats.clear();
        // Their rows are not applied: the workers read them again.
        self.progress.clear();
    }

    pub fn add_dense(
        &mut self,
        key: (usize, Sum),
        len: usize,
        offset: usize,
        merge: Merge,
        g: impl Iterator<Item = f32>,
    ) {
        let d = self.dense.entry(key).or_insert_with(|| DenseSum {
            values: vec![0.0; len],
            lo: usize::MAX,
            hi: 0,
            counts: vec![0; if merge == Merge::Mean { len } else { 0 }],
        });
        let mut end = offset;
        for (i, v) in g.enumerate() {
            let Some(slot) = d.values.get_mut(offset + i) else { break };
            merge_into(slot, v, merge);
            if merge == Merge::Mean && v != 0.0 {
                d.counts[offset + i] += 1;
            }
            end += 1;
        }
        d.lo = d.lo.min(offset);
        d.hi = d.hi.max(end);
    }

    pub fn add_rows(
        &mut self,
        key: (usize, Sum),
        cols: usize,
        merge: Merge,
        keys: impl Iterator<Item = u64>,
        mut g: impl Iterator<Item = f32>,
    ) {
        let r = self.rows.entry(key).or_default();
        for k in keys {
            let at = *r.index.entry(k).or_insert_with(|| {
                r.keys.push(k);
                r.values.resize(r.values.len() + cols, 0.0);
                r.values.len() - cols
            });
            if merge == Merge::Mean {
                r.counts.resize(r.values.len(), 0);
            }
            for (i, slot) in r.values[at..at + cols].iter_mut().enumerate() {
                let v = g.next().unwrap_or(0.0);
                merge_into(slot, v, merge);
                if merge == Merge::Mean && v != 0.0 {
                    r.counts[at + i] += 1;
                }
            }
        }
    }

    pub fn add_stats(&mut self, t: usize, spec: &accrete_core::TensorSpec, g: &[f32]) {
        let s = self.stats.entry(t).or_insert_with(|| vec![0.0; spec.len() as usize]);
        spec.merge_stats(s, g);
    }
}

#[inline]
fn merge_into(sum: &mut f32, v: f32, merge: Merge) {
    match merge {
        Merge::Add | Merge::Mean => *sum += v,
        Merge::Max => *sum = sum.max(v),
        // the round's last value (pushes of one round come in no particular order)
        Merge::Replace => *sum = v,
    }
}

#[derive(Debug)]
struct WorkerClock {
    clock: u64,
    seen: Instant,
}

#[derive(Debug)]
pub struct SyncState {
    pub mode: ConsistencyMode,
    pub staleness: u64,
    pub lease: Duration,
    workers: HashMap<String, WorkerClock>,
    /// BSP rounds by clock, waiting for every live worker.
    pub rounds: BTreeMap<u64, Round>,
    /// BSP: the highest clock whose round was applied.
    pub applied: u64,
    /// BSP, during a global commit's hold: no round after this one is applied (every
    /// partition's version must hold the same rounds).
    pub cap: Option<u64>,
}

impl SyncState {
    pub fn new(mode: ConsistencyMode, staleness: u32, lease: Duration) -> Self {
        SyncState {
            mode,
            staleness: staleness as u64,
            lease,
            workers: HashMap::new(),
            rounds: BTreeMap::new(),
            applied: 0,
            cap: None,
        }
    }

    /// Registers or renews a worker at `now`; returns its known clock.
    pub fn touch(&mut self, worker: &str, clock: Option<u64>, now: Instant) -> u64 {
        match self.workers.get_mut(worker) {
            Some(w) => {
                w.seen = now;
                if let Some(c) = clock {
                    w.clock = w.clock.max(c);
                }
                w.clock
            }
            None => {
                let c = clock.unwrap_or(0);
                self.workers.insert(worker.to_string(), WorkerClock { clock: c, seen: now });
                c
            }
        }
    }

    pub fn is_member(&self, worker: &str) -> bool {
        self.workers.contains_key(worker)
    }

    pub fn leave(&mut self, worker: &str) -> bool {
        self.workers.remove(worker).is_some()
    }

    /// Drops workers whose lease expired by `now`; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let lease = self.lease;
        let gone: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.seen) > lease)
            .map(|(k, _)| k.clone())
            .collect();
        for g in &gone {
            self.workers.remove(g);
        }
        gone
    }

    pub fn live(&self) -> usize {
        self.workers.len()
    }

    /// May a worker that has pushed `clock` batches pull now?
    pub fn may_pull(&self, clock: u64) -> bool {
        match self.mode {
            ConsistencyMode::Asp => true,
            ConsistencyMode::Ssp => {
                let slowest = self.workers.values().map(|w| w.clock).min().unwrap_or(clock);
                slowest.saturating_add(self.staleness) >= clock
            }
            ConsistencyMode::Bsp => clock == 0 || self.applied >= clock,
        }
    }

    /// BSP: the lowest pending round once every live worker has contributed to it (and
    /// a hold's cap allows it).
    pub fn complete_round(&self) -> Option<u64> {
        let (&c, round) = self.rounds.iter().next()?;
        if self.cap.is_some_and(|cap| c > cap) {
            return None;
        }
        self.workers.keys().all(|w| round.from.contains(w)).then_some(c)
    }

    /// BSP: the lowest pending round if it is at most `through`, complete or not.
    pub fn round_through(&self, through: u64) -> Option<u64> {
        self.rounds.keys().next().copied().filter(|c| *c <= through)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssp_lets_a_worker_run_ahead_by_the_staleness_bound() {
        let now = Instant::now();
        let mut s = SyncState::new(ConsistencyMode::Ssp, 2, Duration::from_secs(10));
        s.touch("a", Some(0), now);
        s.touch("b", Some(0), now);
        assert!(s.may_pull(2));
        assert!(!s.may_pull(3));
        s.touch("a", Some(3), now);
        s.touch("b", Some(1), now);
        assert!(s.may_pull(3), "the slowest (b at 1) is within 2 of 3");
        s.touch("a", Some(5), now);
        assert!(!s.may_pull(5));
        s.leave("b");
        assert!(s.may_pull(5), "a departed worker does not hold the others back");
    }

    #[test]
    fn expired_leases_leave_the_barrier() {
        let t0 = Instant::now();
        let mut s = SyncState::new(ConsistencyMode::Ssp, 0, Duration::from_secs(5));
        s.touch("a", Some(0), t0);
        s.touch("b", Some(0), t0 + Duration::from_secs(3));
        assert!(s.expire(t0 + Duration::from_secs(5)).is_empty(), "a lease lasts its whole length");
        assert_eq!(s.expire(t0 + Duration::from_millis(5001)), vec!["a".to_string()]);
        assert_eq!(s.live(), 1);
    }

    #[test]
    fn bsp_rounds_complete_when_every_live_worker_is_in() {
        let now = Instant::now();
        let mut s = SyncState::new(ConsistencyMode::Bsp, 0, Duration::from_secs(10));
        s.touch("a", Some(0), now);
        s.touch("b", Some(0), now);
        assert!(s.may_pull(0));
        s.rounds.entry(1).or_default().from.push("a".into());
        assert_eq!(s.complete_round(), None);
        assert!(!s.may_pull(1));
        s.leave("b");
        assert_eq!(s.complete_round(), Some(1), "a departed worker does not hold the round");
    }

    #[test]
    fn rounds_sum_gradients_by_key() {
        let mut r = Round::default();
        let g = Sum::Gradient;
        r.add_rows((0, g), 2, Merge::Add, [5, 7].into_iter(), [1.0, 2.0, 3.0, 4.0].into_iter());
        r.add_rows((0, g), 2, Merge::Add, [7].into_iter(), [10.0, 20.0].into_iter());
        let rows = &r.rows[&(0, g)];
        assert_eq!(rows.keys, vec![5, 7]);
        assert_eq!(rows.values, vec![1.0, 2.0, 13.0, 24.0]);
        r.add_dense((1, g), 4, 1, Merge::Add, [1.0, 1.0].into_iter());
        r.add_dense((1, g), 4, 2, Merge::Add, [1.0, 1.0].into_iter());
        let d = &r.dense[&(1, g)];
        assert_eq!((d.values.clone(), d.lo, d.hi), (vec![0.0, 1.0, 2.0, 1.0], 1, 4));
    }

    #[test]
    fn rounds_add_changes_apart_and_keep_the_largest_running_maximum() {
        let mut r = Round::default();
        let (w, scale) = (Sum::Change(None), Sum::Change(Some(1)));
        r.add_rows((0, w), 1, Merge::Add, [5].into_iter(), [0.25].into_iter());
        r.add_rows((0, w), 1, Merge::Add, [5].into_iter(), [0.5].into_iter());
        r.add_rows((0, scale), 1, Merge::Max, [5].into_iter(), [3.0].into_iter());
        r.add_rows((0, scale), 1, Merge::Max, [5].into_iter(), [2.0].into_iter());
        r.add_rows((0, Sum::Gradient), 1, Merge::Add, [5].into_iter(), [9.0].into_iter());
        assert_eq!(r.rows[&(0, w)].values, vec![0.75]);
        assert_eq!(r.rows[&(0, scale)].values, vec![3.0]);
        assert_eq!(r.rows[&(0, Sum::Gradient)].values, vec![9.0]);
    }
}
