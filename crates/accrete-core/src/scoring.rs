//! Scoring a model's predictions: which metric ranks a model's versions, whether bigger
//! is better, and the metrics of predictions against labels. Used by the evaluator, the
//! CLI (the best version) and the quickstart.
use crate::kinds::Dims;
use crate::{metrics, ModelKind};
use std::collections::BTreeMap;

/// Set in a version's scores when its predictions are not finite numbers (the weights
/// diverged): its other metrics are meaningless and a quality gate takes it as the worst.
pub const DIVERGED: &str = "diverged";

/// The metrics [`score`] can give, by the names they are stored under.
pub const METRICS: [&str; 6] = ["auc", "accuracy", "logloss", "rmse", "mae", "r2"];

/// Whether bigger is better for a metric.
pub fn higher_is_better(metric: &str) -> bool {
    matches!(metric, "auc" | "accuracy" | "r2")
}

/// The metric that ranks versions of a model of these dimensions.
pub fn primary_metric(d: &Dims) -> &'static str {
    match (d.kind, d.outputs) {
        (ModelKind::Linear, _) | (ModelKind::Mlp, 1) => "rmse",
        (_, k) if k >= 2 => "accuracy",
        _ => "auc",
    }
}

/// The metrics [`score`] gives a model of these dimensions.
pub fn metrics_of(d: &Dims) -> &'static [&'static str] {
    match primary_metric(d) {
        "rmse" => &["rmse", "mae", "r2"],
        "accuracy" => &["accuracy", "logloss"],
        _ => &["auc", "accuracy", "logloss"],
    }
}

/// Metrics of predictions `p` (outputs per row as the model gives them) against `y`.
pub fn score(d: &Dims, y: &[f32], p: &[f32]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let k = d.outputs.max(1);
    match primary_metric(d) {
        "rmse" => {
            m.insert("rmse".into(), metrics::rmse(y, p));
            m.insert("mae".into(), metrics::mae(y, p));
            m.insert("r2".into(), metrics::r2(y, p));
        }
        "accuracy" => {
            let (mut ll, mut hits) = (0.0, 0usize);
            for (row, label) in p.chunks_exact(k).zip(y) {
                ll -= (row.get(*label as usize).copied().unwrap_or(0.0) as f64).clamp(1e-15, 1.0).ln();
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                hits += (best == *label as usize) as usize;
            }
            m.insert("logloss".into(), ll / y.len().max(1) as f64);
            m.insert("accuracy".into(), hits as f64 / y.len().max(1) as f64);
        }
        _ => {
            m.insert("logloss".into(), metrics::logloss(y, p));
            m.insert("auc".into(), metrics::auc(y, p));
            m.insert("accuracy".into(), metrics::accuracy(y, p));
        }
    }
    if p.iter().any(|x| !x.is_finite()) {
        m.insert(DIVERGED.into(), 1.0);
    }
    m
}

/// The metrics of the constant predictor of `y`'s base rate (the mean for regression, the
/// class frequencies otherwise), under the names `baseline_<metric>`: what a version must
/// beat to have learnt anything from the inputs. AUC's is 0.5 and is not stored.
pub fn baseline(d: &Dims, y: &[f32]) -> BTreeMap<String, f64> {
    let k = d.outputs.max(1);
    let constant: Vec<f32> = match primary_metric(d) {
        "accuracy" => {
            let mut freq = vec![0f32; k];
            for label in y {
                if let Some(f) = freq.get_mut(*label as usize) {
                    *f += 1.0;
                }
            }
            freq.iter_mut().for_each(|f| *f /= y.len().max(1) as f32);
            freq.iter().copied().cycle().take(k * y.len()).collect()
        }
        _ => {
            let mean = (y.iter().map(|v| *v as f64).sum::<f64>() / y.len().max(1) as f64) as f32;
            vec![mean; y.len()]
        }
    };
    score(d, y, &constant)
        .into_iter()
        .filter(|(m, _)| m != "auc" && m != "r2" && m != DIVERGED)
        .map(|(m, x)| (format!("{}{m}", crate::chart::BASELINE_PREFIX), x))
        .collect()
}

/// The best of `(version, metrics)` by `metric` (finite values only).
pub fn best_by<'a>(
    metric: &str,
    versions: impl IntoIterator<Item = (u64, &'a BTreeMap<String, f64>)>,
) -> Option<(u64, f64)> {
    let hib = higher_is_better(metric);
    versions
        .into_iter()
        .filter_map(|(v, m)| m.get(metric).map(|x| (v, *x)))
        .filter(|(_, x)| x.is_finite())
        .max_by(|a, b| if hib { a.1.total_cmp(&b.1) } else { b.1.total_cmp(&a.1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(kind: ModelKind, outputs: usize) -> Dims {
        Dims { kind, features: 0, outputs, hidden: 0, factors: 0 }
    }

    #[test]
    fn the_primary_metric_follows_the_kind() {
        assert_eq!(primary_metric(&dims(ModelKind::Linear, 1)), "rmse");
        assert_eq!(primary_metric(&dims(ModelKind::Logistic, 1)), "auc");
        assert_eq!(primary_metric(&dims(ModelKind::Softmax, 3)), "accuracy");
        assert_eq!(primary_metric(&dims(ModelKind::Mlp, 1)), "rmse");
    }

    #[test]
    fn diverged_predictions_are_marked() {
        let m = score(&dims(ModelKind::Logistic, 1), &[0.0, 1.0], &[0.2, f32::NAN]);
        assert_eq!(m.get(DIVERGED), Some(&1.0));
        let m = score(&dims(ModelKind::Logistic, 1), &[0.0, 1.0], &[0.2, 0.9]);
        assert_eq!((m.get(DIVERGED), m.get("auc")), (None, Some(&1.0)));
    }

    #[test]
    fn the_baseline_predicts_the_base_rate() {
        let b = baseline(&dims(ModelKind::Logistic, 1), &[0.0, 0.0, 0.0, 1.0]);
        // p = 0.25: logloss is the entropy of the base rate, accuracy that of "always 0"
        let entropy = -(0.25f64.ln() * 0.25 + 0.75f64.ln() * 0.75);
        assert!((b["baseline_logloss"] - entropy).abs() < 1e-6, "{b:?}");
        assert_eq!(b["baseline_accuracy"], 0.75);
        assert!(!b.contains_key("baseline_auc"));
        let b = baseline(&dims(ModelKind::Linear, 1), &[1.0, 3.0]);
        assert_eq!(b["baseline_rmse"], 1.0);
        let b = baseline(&dims(ModelKind::Softmax, 3), &[0.0, 1.0, 1.0, 2.0]);
        assert_eq!(b["baseline_accuracy"], 0.5);
    }

    #[test]
    fn the_best_version_depends_on_the_direction_of_the_metric() {
        let m = |k: &str, x: f64| BTreeMap::from([(k.to_string(), x)]);
        let (a, b) = (m("auc", 0.7), m("auc", 0.8));
        assert_eq!(best_by("auc", [(1, &a), (2, &b)]), Some((2, 0.8)));
        let (a, b) = (m("rmse", 0.7), m("rmse", 0.8));
        assert_eq!(best_by("rmse", [(1, &a), (2, &b)]), Some((1, 0.7)));
    }
}
