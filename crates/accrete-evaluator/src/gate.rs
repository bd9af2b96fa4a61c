//! The quality gate's decisions, apart from any IO: which versions it judges, when a
//! version fails, and which version, if any, it restores in its place.
//!
//! The rules (issue 15, after a poisoned shard made the gate roll back 13 times and end
//! on poisoned content):
//! - A version **fails** when, on any gate's metric, it is worse than the best of the
//!   recent judged versions before it (the newest `--gate-window`, by version, whatever
//!   order they were judged in) by more than that gate's margin (`--gate auc:0.01 --gate
//!   accuracy:0.02`: several metrics, each with its margin).
//! - The gate **never restores a version worse than the one it replaces**: when a version
//!   fails, the model's head (which may be newer: the evaluator can be behind) is judged
//!   too. A head that passes is kept. Otherwise the target is the newest recent version
//!   that passes every gate itself and is no worse than the head on any gate's metric
//!   and better on one; without one, nothing is restored.
//! - **A lineage it rolled back is skipped**: the versions after the target and before
//!   the rollback are scored (their metrics are stored) but never judged, never compared
//!   with and never restored, so the window of recent versions cannot slide onto them.
//!   Rollbacks made before the evaluator started count too (each records its content's
//!   version).
use accrete_core::scoring::higher_is_better;

/// `--gate METRIC:MARGIN`: a version fails when its metric is worse than the best recent
/// one's by more than the margin.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub metric: String,
    pub margin: f64,
}

impl std::str::FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> Result<Gate, String> {
        let (m, v) = s.split_once(':').ok_or_else(|| format!("--gate {s:?}: expected METRIC:MARGIN, e.g. auc:0.01"))?;
        let margin: f64 = v.parse().map_err(|_| format!("--gate {s:?}: margin {v:?} is not a number"))?;
        if !(margin >= 0.0 && margin.is_finite()) {
            return Err(format!("--gate {s:?}: margin must be >= 0"));
        }
        Ok(Gate { metric: m.to_string(), margin })
    }
}

/// A scored version as the gate sees it: its value of each gate's metric, in the gates'
/// order (a diverged version has the worst value of each).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub version: u64,
    pub values: Vec<f64>,
}

/// Why a version fails: the first gate it fails, against the best recent version.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub gate: usize,
    pub value: f64,
    pub best: f64,
    pub best_version: u64,
}

/// The gate's memory: the gates, the recent judged versions, and the rolled-back ranges.
#[derive(Debug, Clone)]
pub struct Judge {
    pub gates: Vec<Gate>,
    window: usize,
    /// Judged versions that stay candidates, in version order (a backlog is judged after
    /// newer versions were remembered: the created version, first scored when the holdout
    /// has rows, is still the oldest).
    history: Vec<Judged>,
    /// `(to, rollback)`: the versions strictly between were rolled back.
    abandoned: Vec<(u64, u64)>,
}

impl Judge {
    pub fn new(gates: Vec<Gate>, window: usize) -> Judge {
        Judge { gates, window: window.max(1), history: Vec::new(), abandoned: Vec::new() }
    }

    /// How much `a` is worse than `b` on gate `g` (negative: better).
    fn worse(&self, g: usize, a: f64, b: f64) -> f64 {
        match higher_is_better(&self.gates[g].metric) {
            true => b - a,
            false => a - b,
        }
    }

    /// The version belongs to a lineage a rollback abandoned.
    pub fn abandoned(&self, version: u64) -> bool {
        self.abandoned.iter().any(|(to, rb)| *to < version && version < *rb)
    }

    /// Keeps a judged version as a candidate (unless its lineage was rolled back), in its
    /// place by version.
    pub fn remember(&mut self, j: Judged) {
        if !self.abandoned(j.version) && !self.history.iter().any(|h| h.version == j.version) {
            let at = self.history.partition_point(|h| h.version < j.version);
            self.history.insert(at, j);
        }
    }

    /// The recent candidates of a version: the newest `window` remembered before it (a
    /// backlog's old version is not compared with the versions made after it).
    fn recent(&self, before: u64) -> impl Iterator<Item = &Judged> {
        let end = self.history.partition_point(|h| h.version < before);
        self.history[end.saturating_sub(self.window)..end].iter()
    }

    /// Whether `j` fails: worse than the best recent version by more than a margin, on
    /// the first gate where it is.
    pub fn verdict(&self, j: &Judged) -> Option<Failure> {
        (0..self.gates.len()).find_map(|g| {
            let best = self
                .recent(j.version)
                .filter(|h| h.values[g].is_finite())
                .min_by(|a, b| self.worse(g, a.values[g], b.values[g]).total_cmp(&0.0))?;
            let (value, b) = (j.values[g], best.values[g]);
            let worse = if value.is_nan() { f64::INFINITY } else { self.worse(g, value, b) };
            (worse > self.gates[g].margin).then_some(Failure { gate: g, value, best: b, best_version: best.version })
        })
    }

    /// The version to restore in place of `head` (judged, and failing): the newest recent
    /// one that passes every gate itself and is no worse than the head on any gate's
    /// metric and better on one. `None`: nothing recent beats the head.
    pub fn target(&self, head: &Judged) -> Option<&Judged> {
        let beats = |c: &Judged| {
            let not_worse = (0..self.gates.len()).all(|g| self.worse(g, c.values[g], head.values[g]) <= 0.0);
            let better = (0..self.gates.len()).any(|g| self.worse(g, c.values[g], head.values[g]) < 0.0);
            not_worse && better
        };
        let recent: Vec<&Judged> = self.recent(head.version).collect();
        recent.into_iter().rev().find(|c| c.version < head.version && beats(c) && self.verdict(c).is_none())
    }

    /// Records a rollback to `to` that made version `rollback`: the versions between are
    /// abandoned, and forgotten as candidates.
    pub fn rolled_back(&mut self, to: u64, rollback: u64) {
        self.abandoned.push((to, rollback));
        self.history.retain(|h| !(to < h.version && h.version < rollback));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(version: u64, values: &[f64]) -> Judged {
        Judged { version, values: values.to_vec() }
    }

    fn judge(gates: &[&str], hist: &[Judged]) -> Judge {
        let mut g = Judge::new(gates.iter().map(|s| s.parse().unwrap()).collect(), 10);
        hist.iter().for_each(|h| g.remember(h.clone()));
        g
    }

    #[test]
    fn a_version_fails_when_worse_than_the_best_recent_by_more_than_a_margin() {
        let g = judge(&["auc:0.01"], &[j(1, &[0.60]), j(2, &[0.70]), j(3, &[0.695])]);
        assert_eq!(g.verdict(&j(4, &[0.695])), None);
        assert_eq!(g.verdict(&j(4, &[0.68])).map(|f| f.best_version), Some(2));
        assert!(g.verdict(&j(4, &[f64::NEG_INFINITY])).is_some(), "diverged: the worst");
        let g = judge(&["logloss:0.02"], &[j(1, &[0.50]), j(2, &[0.55])]);
        assert_eq!(g.verdict(&j(3, &[0.515])), None);
        assert_eq!(g.verdict(&j(3, &[0.53])).map(|f| (f.gate, f.best_version)), Some((0, 1)));
        assert!(
            "auc".parse::<Gate>().is_err() && "auc:x".parse::<Gate>().is_err() && "auc:-1".parse::<Gate>().is_err()
        );
    }

    #[test]
    fn several_metrics_each_with_its_margin() {
        // AUC holds while accuracy falls: gating on AUC alone lets it through
        let g = judge(&["auc:0.01", "accuracy:0.02"], &[j(1, &[0.70, 0.80]), j(2, &[0.71, 0.81])]);
        assert_eq!(g.verdict(&j(3, &[0.705, 0.80])), None);
        let f = g.verdict(&j(3, &[0.705, 0.52])).unwrap();
        assert_eq!((f.gate, f.best, f.best_version), (1, 0.81, 2));
    }

    #[test]
    fn it_never_restores_a_version_worse_than_the_head_it_replaces() {
        let g =
            judge(&["auc:0.01", "accuracy:0.02"], &[j(1, &[0.70, 0.80]), j(2, &[0.72, 0.795]), j(3, &[0.715, 0.81])]);
        // the newest that beats the head everywhere
        assert_eq!(g.target(&j(4, &[0.60, 0.60])).map(|t| t.version), Some(3));
        // no recent version has this head's AUC: each would be worse on it
        assert_eq!(g.target(&j(4, &[0.73, 0.60])), None);
        assert_eq!(g.target(&j(4, &[0.60, 0.815])), None, "every recent version is less accurate");
        // a candidate that fails the gate itself is not restored
        let g = judge(&["auc:0.01"], &[j(1, &[0.80]), j(2, &[0.60])]);
        assert_eq!(g.target(&j(3, &[0.50])).map(|t| t.version), Some(1));
    }

    #[test]
    fn a_rolled_back_lineage_is_never_judged_compared_or_restored() {
        let mut g = judge(&["accuracy:0.02"], &[j(1, &[0.80]), j(2, &[0.81])]);
        // poisoned versions 3..=7 were made before the evaluator reached them
        let first = j(3, &[0.50]);
        assert!(g.verdict(&first).is_some());
        assert_eq!(g.target(&first).map(|t| t.version), Some(2));
        g.rolled_back(2, 8);
        for v in 3..8 {
            assert!(g.abandoned(v), "{v}");
            g.remember(j(v, &[0.26]));
        }
        assert!(!g.abandoned(2) && !g.abandoned(8));
        assert_eq!(
            g.recent(u64::MAX).map(|h| h.version).collect::<Vec<_>>(),
            [1, 2],
            "the poisoned ones are not candidates"
        );
        // a window of 2 still holds the good versions, not poisoned ones
        let mut small = Judge::new(g.gates.clone(), 2);
        [j(1, &[0.80]), j(2, &[0.81])].into_iter().for_each(|h| small.remember(h));
        small.rolled_back(2, 8);
        (3..8).for_each(|v| small.remember(j(v, &[0.26])));
        small.remember(j(8, &[0.81]));
        assert_eq!(small.target(&j(9, &[0.3])).map(|t| t.version), Some(8));
    }

    /// The quickstart's incident: its evaluator found version 1 (the created model, never
    /// scored while the holdout was empty) unscored and judged it, against version 25,
    /// after remembering 25. It was held (the head passed), and remembered last: with a
    /// window of 1 the poisoned version 26 was then compared with the untrained model, and
    /// version 1 restored (3 quickstarts in 10).
    #[test]
    fn the_recent_versions_are_the_newest_whatever_order_they_were_judged_in() {
        let mut g = Judge::new(vec!["auc:0.02".parse().unwrap()], 1);
        g.remember(j(25, &[0.645]));
        g.remember(j(1, &[0.50]));
        assert_eq!(g.recent(u64::MAX).map(|h| h.version).collect::<Vec<_>>(), [25]);
        // and version 1 itself is judged against what came before it: nothing
        assert_eq!(g.verdict(&j(1, &[0.50])), None);
        let poisoned = j(26, &[0.478]);
        assert_eq!(g.verdict(&poisoned).map(|f| f.best_version), Some(25));
        assert_eq!(g.target(&poisoned).map(|t| t.version), Some(25));
    }
}
