//! Which pushes of changes came concurrently, under ASP and SSP. A worker training row by
//! row starts from the weights it pulled and moves them along its rows; another worker,
//! meanwhile, does the same from the same weights. Where both track one level (a drifting
//! bias, say), each change alone reaches it, and adding both overshoots by the whole of
//! one. So a push's weight change is averaged with the concurrent ones, as a BSP round
//! averages its pushes': this module gives its share, 1 / (1 + the number of other
//! workers whose changes were applied since its pull), and `Params` applies it to each
//! weight another push changed the same way since then (`accrete_core::params::Share`;
//! a weight nobody else changed, or whose last change went the other way, takes its
//! change whole: opposite changes are noise the sequential optimizer would add). One
//! worker's pushes are never concurrent with each other (it waits for each ack before
//! its next pull), so one worker alone is merged as it trained: the sequential
//! optimizer's result.
use std::collections::VecDeque;

/// Pushes of changes remembered; a pull older than all of them counts only these.
const REMEMBERED: usize = 64;

/// The latest pushes of changes: the update count each made, and its worker.
#[derive(Debug, Default, Clone)]
pub struct Concurrent {
    recent: VecDeque<(u64, String)>,
}

impl Concurrent {
    /// The share of its weight change a push of changes keeps: 1 / (1 + other workers
    /// whose changes were applied after update `base`). `base` 0 (unknown) keeps all.
    pub fn share(&self, base: u64, worker: &str) -> f32 {
        if base == 0 {
            return 1.0;
        }
        let mut others: Vec<&str> = Vec::new();
        for (_, w) in self.recent.iter().rev().take_while(|(u, _)| *u > base) {
            if w != worker && !others.contains(&w.as_str()) {
                others.push(w);
            }
        }
        1.0 / (1 + others.len()) as f32
    }

    /// Records an applied push of changes that made update `updates`.
    pub fn record(&mut self, updates: u64, worker: &str) {
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back((updates, worker.to_string()));
    }

    /// Forgets every push (a rollback or an import starts the live state afresh).
    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_keeps_one_share_per_concurrent_worker() {
        let mut c = Concurrent::default();
        assert_eq!(c.share(5, "a"), 1.0, "nothing recorded");
        c.record(6, "a");
        assert_eq!(c.share(5, "a"), 1.0, "its own pushes are not concurrent");
        assert_eq!(c.share(0, "b"), 1.0, "an unknown base keeps all");
        c.record(7, "b");
        c.record(8, "b");
        assert_eq!(c.share(5, "a"), 0.5, "b's two pushes since: one other worker");
        assert_eq!(c.share(5, "c"), 1.0 / 3.0, "a and b since update 5");
        assert_eq!(c.share(6, "c"), 0.5, "only b after update 6");
        assert_eq!(c.share(8, "a"), 1.0, "pulled after them all");
        for u in 9..200 {
            c.record(u, "d");
        }
        assert_eq!(c.recent.len(), REMEMBERED);
        assert_eq!(c.share(1, "a"), 0.5, "only what is remembered counts");
        c.clear();
        assert_eq!(c.share(1, "a"), 1.0);
    }
}
