//! A quality chart of a model's versions, as data: the scored points, the lines of their
//! lineage, the head, the best version, rollbacks with their targets, the baseline, and
//! axis limits with ticks. The dashboard draws it as SVG and `accrete model plot` with
//! plotters, so both show the same thing.
//!
//! A version's line comes from its lineage predecessor: its parent, or, for a rollback,
//! the version whose content it holds. A rollback therefore starts a new branch at its
//! target instead of joining the abandoned head, and an import starts with no line.
use crate::scoring::{best_by, higher_is_better, DIVERGED};
use crate::{VersionKind, VersionRecord};
use std::collections::HashMap;

/// The metrics stored as `baseline_<metric>`: the score of always predicting the
/// holdout's base rate (mean, class frequencies), the floor a model must beat.
pub const BASELINE_PREFIX: &str = "baseline_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XAxis {
    #[default]
    Version,
    /// Seconds since the Unix epoch of each version's creation.
    Time,
}

impl XAxis {
    pub fn as_str(self) -> &'static str {
        match self {
            XAxis::Version => "version",
            XAxis::Time => "time",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub version: u64,
    pub x: f64,
    pub y: f64,
}

/// A line from a scored version to the next scored one of its lineage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub from: Point,
    pub to: Point,
    /// The line a rollback draws from its target.
    pub rollback: bool,
}

/// A rollback: the version it made, where, and the version whose content it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollback {
    pub version: u64,
    pub x: f64,
    pub to: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub ticks: Vec<(f64, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub metric: String,
    pub x_axis: XAxis,
    pub points: Vec<Point>,
    pub segments: Vec<Segment>,
    pub rollbacks: Vec<Rollback>,
    /// The head version's point, when it is scored.
    pub head: Option<Point>,
    pub best: Option<Point>,
    /// `(x, value)` of the baseline at each scored version that has one.
    pub baseline: Vec<(f64, f64)>,
    pub x: Axis,
    pub y: Axis,
}

/// The metrics any version holds, in the order of [`crate::scoring::METRICS`] (baselines
/// and the divergence mark left out).
pub fn metrics_of(versions: &[VersionRecord]) -> Vec<String> {
    crate::scoring::METRICS
        .iter()
        .filter(|m| versions.iter().any(|v| v.metrics.contains_key(**m)))
        .map(|m| m.to_string())
        .collect()
}

/// The lineage predecessor of a version: the version its content continues from.
fn predecessor(v: &VersionRecord) -> Option<u64> {
    match v.kind {
        VersionKind::Rollback if v.content_of != 0 => Some(v.content_of),
        VersionKind::Import | VersionKind::Created => None,
        _ => v.parent,
    }
}

impl Chart {
    /// The chart of `metric` over `versions` (in any order); `None` when no version has it.
    pub fn of(versions: &[VersionRecord], metric: &str, x_axis: XAxis) -> Option<Chart> {
        let x_of = |v: &VersionRecord| match x_axis {
            XAxis::Version => v.version as f64,
            XAxis::Time => v.created_unix_ms as f64 / 1000.0,
        };
        let by_version: HashMap<u64, &VersionRecord> = versions.iter().map(|v| (v.version, v)).collect();
        let own = |v: &VersionRecord| {
            v.metrics.get(metric).filter(|y| y.is_finite() && !v.metrics.contains_key(DIVERGED)).copied()
        };
        // A rollback holds exactly its target's parameters: unscored, it shows the target's
        // score (the evaluator may not have seen it yet).
        let scored = |v: &VersionRecord| {
            own(v).or_else(|| match v.kind {
                VersionKind::Rollback => by_version.get(&v.content_of).and_then(|t| own(t)),
                _ => None,
            })
        };
        let mut sorted: Vec<&VersionRecord> = versions.iter().collect();
        sorted.sort_by_key(|v| v.version);
        let points: Vec<Point> =
            sorted.iter().filter_map(|v| scored(v).map(|y| Point { version: v.version, x: x_of(v), y })).collect();
        if points.is_empty() {
            return None;
        }
        let point_of: HashMap<u64, Point> = points.iter().map(|p| (p.version, *p)).collect();
        let mut segments = Vec::new();
        for p in &points {
            let v = by_version[&p.version];
            let rollback = v.kind == VersionKind::Rollback;
            // walk back to the nearest scored ancestor (versions dropped by retention end it)
            let mut at = predecessor(v);
            let mut hops = 0;
            while let Some(a) = at {
                if let Some(from) = point_of.get(&a) {
                    segments.push(Segment { from: *from, to: *p, rollback });
                    break;
                }
                hops += 1;
                at = by_version.get(&a).filter(|_| hops < versions.len()).and_then(|r| predecessor(r));
            }
        }
        let rollbacks: Vec<Rollback> = sorted
            .iter()
            .filter(|v| v.kind == VersionKind::Rollback)
            .map(|v| Rollback { version: v.version, x: x_of(v), to: v.content_of })
            .collect();
        let head = sorted.last().and_then(|v| point_of.get(&v.version).copied());
        let best = best_by(metric, points.iter().map(|p| (p.version, &by_version[&p.version].metrics)))
            .and_then(|(v, _)| point_of.get(&v).copied());
        let base_key = format!("{BASELINE_PREFIX}{metric}");
        let baseline: Vec<(f64, f64)> = match metric {
            // any constant predictor ranks nothing: AUC 0.5 whatever the holdout
            "auc" => points.iter().map(|p| (p.x, 0.5)).collect(),
            _ => points
                .iter()
                .filter_map(|p| by_version[&p.version].metrics.get(&base_key).map(|b| (p.x, *b)))
                .filter(|(_, b)| b.is_finite())
                .collect(),
        };
        let xs = points.iter().map(|p| p.x).chain(rollbacks.iter().map(|r| r.x));
        let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let x = match x_axis {
            XAxis::Version => version_axis(x0, x1),
            XAxis::Time => time_axis(x0, x1),
        };
        let ys = points.iter().map(|p| p.y).chain(baseline.iter().map(|b| b.1));
        let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let y = value_axis(metric, y0, y1);
        Some(Chart { metric: metric.to_string(), x_axis, points, segments, rollbacks, head, best, baseline, x, y })
    }

    /// Whether a smaller value is better for this chart's metric (its legend says so).
    pub fn lower_is_better(&self) -> bool {
        !higher_is_better(&self.metric)
    }
}

/// A step of 1, 2, 2.5 or 5 times a power of ten, near `span / target`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|n| *n >= f).unwrap_or(10.0);
    nice * mag
}

fn ticks(min: f64, max: f64, step: f64, label: impl Fn(f64) -> String) -> Vec<(f64, String)> {
    let mut t = (min / step).ceil() * step;
    let mut out = Vec::new();
    while t <= max + step * 1e-9 && out.len() < 50 {
        out.push((t, label(t)));
        t += step;
    }
    out
}

/// Whole versions, with room for a point's mark at either end.
fn version_axis(x0: f64, x1: f64) -> Axis {
    let step = nice_step((x1 - x0).max(1.0), 8.0).max(1.0).round();
    let (min, max) = (x0 - 0.5, x1 + 0.5);
    Axis { min, max, ticks: ticks(min, max, step, |t| format!("{t:.0}")) }
}

/// Wall-clock time (UTC), ticks on round seconds, minutes, hours or days (dates).
fn time_axis(t0: f64, t1: f64) -> Axis {
    const DAY: f64 = 86_400.0;
    let span = (t1 - t0).max(1.0);
    let steps = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0];
    let days = [1.0, 2.0, 7.0, 14.0, 28.0, 91.0, 182.0, 364.0].map(|d| d * DAY);
    let step = steps.into_iter().chain(days).find(|s| span / s <= 8.0).unwrap_or(span / 8.0);
    let pad = span * 0.03 + 0.5;
    let (min, max) = (t0 - pad, t1 + pad);
    let label = move |t: f64| {
        let s = (t as i64).rem_euclid(86_400);
        if step >= DAY {
            let (_, month, day) = civil((t as i64).div_euclid(86_400));
            format!("{month:02}-{day:02}")
        } else if step < 60.0 {
            format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
        } else {
            format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
        }
    };
    Axis { min, max, ticks: ticks(min, max, step, label) }
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's algorithm).
pub fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (month <= 2) as i64, month, day)
}

/// The data's range, padded, within what the metric can be (AUC and accuracy in [0, 1],
/// losses and errors from 0, R² up to 1).
fn value_axis(metric: &str, y0: f64, y1: f64) -> Axis {
    let pad = ((y1 - y0) * 0.08).max(0.005);
    let (mut min, mut max) = (y0 - pad, y1 + pad);
    let (lo, hi) = match metric {
        "auc" | "accuracy" => (0.0, 1.0),
        "r2" => (f64::NEG_INFINITY, 1.0),
        _ => (0.0, f64::INFINITY),
    };
    // within the metric's range, unless a reported value lies outside it
    (min, max) = (min.max(lo.min(y0)), max.min(hi.max(y1)));
    let step = nice_step(max - min, 5.0);
    let decimals = (-step.log10().floor()).max(0.0) as usize
        + usize::from((step / 10f64.powf(step.log10().floor()) - 2.5).abs() < 1e-9);
    Axis { min, max, ticks: ticks(min, max, step, |t| format!("{t:.decimals$}")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn v(version: u64, kind: VersionKind, parent: Option<u64>, content_of: u64, auc: Option<f64>) -> VersionRecord {
        let mut metrics = BTreeMap::new();
        if let Some(a) = auc {
            metrics.insert("auc".to_string(), a);
            metrics.insert("logloss".to_string(), 1.0 - a);
            metrics.insert("baseline_logloss".to_string(), 0.55);
        }
        VersionRecord {
            parent,
            content_of,
            metrics,
            created_unix_ms: 1_000_000 + version as i64 * 1000,
            ..VersionRecord::new(version, kind)
        }
    }

    fn history() -> Vec<VersionRecord> {
        vec![
            v(1, VersionKind::Created, None, 0, None),
            v(2, VersionKind::Policy, Some(1), 0, Some(0.70)),
            v(3, VersionKind::Policy, Some(2), 0, Some(0.74)),
            v(4, VersionKind::Policy, Some(3), 0, Some(0.60)),
            v(5, VersionKind::Rollback, Some(4), 3, None),
            v(6, VersionKind::Policy, Some(5), 0, Some(0.75)),
        ]
    }

    #[test]
    fn a_rollback_starts_a_branch_at_its_target() {
        let c = Chart::of(&history(), "auc", XAxis::Version).unwrap();
        let lines: Vec<(u64, u64, bool)> =
            c.segments.iter().map(|s| (s.from.version, s.to.version, s.rollback)).collect();
        // 4 -> 5 (the abandoned head to the rollback) is not drawn; 3 -> 5 is, as a rollback
        assert_eq!(lines, vec![(2, 3, false), (3, 4, false), (3, 5, true), (5, 6, false)]);
        assert_eq!(c.rollbacks, vec![Rollback { version: 5, x: 5.0, to: 3 }]);
        assert_eq!((c.head.unwrap().version, c.best.unwrap().version), (6, 6));
        assert!(c.baseline.iter().all(|b| b.1 == 0.5));
    }

    #[test]
    fn axes_stay_within_what_the_metric_can_be() {
        let mut h = history();
        h[5].metrics.insert("auc".into(), 1.0);
        let c = Chart::of(&h, "auc", XAxis::Version).unwrap();
        assert_eq!(c.y.max, 1.0);
        assert!(c.y.ticks.iter().all(|(t, _)| *t <= 1.0 && *t >= c.y.min));
        // whole versions only, no repeated labels
        let labels: Vec<&str> = c.x.ticks.iter().map(|t| t.1.as_str()).collect();
        let mut dedup = labels.clone();
        dedup.dedup();
        assert_eq!(labels, dedup);
        assert!(c.x.ticks.iter().all(|(t, _)| t.fract() == 0.0));
        let ll = Chart::of(&h, "logloss", XAxis::Time).unwrap();
        assert!(ll.y.min >= 0.0 && ll.lower_is_better());
        assert_eq!(ll.baseline.len(), 4);
        assert_eq!(ll.x_axis, XAxis::Time);
        assert!(ll.x.ticks.len() >= 2, "{:?}", ll.x.ticks);
    }

    #[test]
    fn long_histories_get_dates_and_odd_values_stay_in_view() {
        let mut h = history();
        for (i, v) in h.iter_mut().enumerate() {
            v.created_unix_ms = 1_764_633_600_000 + i as i64 * 5 * 86_400_000; // 2025-12-02, every 5 days
        }
        let c = Chart::of(&h, "auc", XAxis::Time).unwrap();
        assert!(c.x.ticks.iter().all(|(_, l)| l.len() == 5 && l.as_bytes()[2] == b'-'), "{:?}", c.x.ticks);
        assert!(c.x.ticks.len() >= 2 && c.x.ticks.len() <= 9, "{:?}", c.x.ticks);
        assert_eq!(civil(20_424), (2025, 12, 2));
        // an "accuracy" reported as a percentage: the axis still holds it
        h[5].metrics.insert("accuracy".into(), 75.0);
        h[4].metrics.insert("accuracy".into(), 0.7);
        let c = Chart::of(&h, "accuracy", XAxis::Version).unwrap();
        assert!(c.y.min < 0.7 && c.y.max >= 75.0 && !c.y.ticks.is_empty(), "{:?}", c.y);
    }

    #[test]
    fn no_chart_without_the_metric() {
        assert!(Chart::of(&history(), "rmse", XAxis::Version).is_none());
        assert_eq!(metrics_of(&history()), vec!["auc", "logloss"]);
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(1.0, 5.0), 0.2);
        assert_eq!(nice_step(0.03, 5.0), 0.01);
        assert_eq!(nice_step(23.0, 8.0), 5.0);
    }
}
