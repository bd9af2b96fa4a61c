//! The accrete evaluator: watches a model's versions, pulls the exact parameters of each
//! new version, scores them on a holdout set, reports the metrics to the server (which
//! stores them with the version), and optionally rolls a regressing model back through
//! the normal rollback path (the quality gate).
//!
//! Entry point: [`run`] with an [`EvaluatorConfig`], a connected client and a shutdown
//! future.

use accrete_client::{Client, ClientError};
use accrete_core::features::Batch;
use accrete_core::glm;
use accrete_core::kinds;
use accrete_core::scoring::{self, higher_is_better, primary_metric, DIVERGED};
use accrete_core::view::ModelView;
use accrete_core::{VersionKind, VersionRecord};
use accrete_ingest::{ColumnSpec, Format, IngestError, OnBadRow, RowSource, Target};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `--gate METRIC:MARGIN`: roll back when a version is worse than the best recent one by
/// more than the margin.
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

#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    pub model: String,
    pub holdout: PathBuf,
    pub format: Option<Format>,
    pub columns: ColumnSpec,
    /// Score every version without metrics, then exit.
    pub once: bool,
    pub gate: Option<Gate>,
    pub dry_run: bool,
    /// How many recent scored versions the gate compares with.
    pub gate_window: usize,
    /// Re-read rows appended to the holdout before each scoring.
    pub holdout_follow: bool,
    /// Score on the most recent N labelled rows only (0 = all).
    pub window: usize,
    /// Score every retained version again, replacing its stored metrics (after a holdout
    /// or scoring change); the gate judges only versions made after that pass.
    pub rescore: bool,
    /// Told of every score and rollback as it happens (the CLI prints them).
    pub progress: Progress,
}

/// What the evaluator did, as it does it.
#[derive(Debug, Clone)]
pub enum Event {
    Scored {
        version: u64,
        metrics: BTreeMap<String, f64>,
        rescored: bool,
    },
    /// The gate rolled the model back after `after` to `to`'s content, as version `head`.
    RolledBack {
        after: u64,
        to: u64,
        head: u64,
        why: String,
    },
    /// `--dry-run`: what the gate would have done.
    WouldRollBack {
        after: u64,
        to: u64,
        why: String,
    },
}

type OnEvent = std::sync::Arc<dyn Fn(&Event) + Send + Sync>;

/// A callback for [`Event`]s; the default ignores them.
#[derive(Clone, Default)]
pub struct Progress(Option<OnEvent>);

impl Progress {
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> Progress {
        Progress(Some(std::sync::Arc::new(f)))
    }

    fn tell(&self, e: Event) {
        if let Some(f) = &self.0 {
            f(&e);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(callback)" } else { "Progress(none)" })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] IngestError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Config(String),
    #[error("the holdout has no labelled rows yet")]
    EmptyHoldout,
}

/// The holdout: raw rows (parsed once, or followed as the file grows and cut to a
/// window), and a working copy whose dense inputs are standardised per version.
pub struct Holdout {
    raw: Batch,
    pub batch: Batch,
    source: Option<RowSource>,
    window: usize,
}

impl Holdout {
    pub fn load(config: &EvaluatorConfig, view: &ModelView) -> Result<Holdout, EvalError> {
        let target = Target::of(view);
        let mut rows = RowSource::open(&config.holdout, config.format, &config.columns, target, OnBadRow::Skip, true)?;
        rows.set_follow(config.holdout_follow);
        let mut h = Holdout {
            raw: Batch::new(target.features),
            batch: Batch::new(target.features),
            source: Some(rows),
            window: config.window,
        };
        h.refresh()?;
        if !config.holdout_follow {
            h.source = None;
        }
        if h.raw.is_empty() && !config.holdout_follow {
            return Err(EvalError::Config(format!("{}: no labelled rows to score with", config.holdout.display())));
        }
        Ok(h)
    }

    /// Reads rows appended since the last call and keeps the window.
    pub fn refresh(&mut self) -> Result<(), EvalError> {
        if let Some(src) = self.source.as_mut() {
            while src.fill(&mut self.raw, 1 << 20)? > 0 {}
            if self.window > 0 {
                self.raw.keep_last(self.window);
            }
            self.raw.compact();
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.raw.rows()
    }
}

/// Pulls the exact parameters of `version` that the holdout touches and scores them.
pub async fn score_version(
    client: &mut Client,
    view: &ModelView,
    h: &mut Holdout,
    version: u64,
) -> Result<BTreeMap<String, f64>, EvalError> {
    h.refresh()?;
    if h.raw.is_empty() {
        return Err(EvalError::EmptyHoldout);
    }
    let p = client.pull_batch(view, &h.raw.uniq, Some(version), None).await?;
    h.batch.clone_from(&h.raw);
    glm::prepare_dense(&mut h.batch.dense, h.batch.features, &p.norm);
    let mut out = Vec::new();
    kinds::predict(&view.dims, &p.tensors.views(), &h.batch, &h.batch.local, &mut out);
    let mut m = scoring::score(&view.dims, &h.batch.labels, &out);
    m.extend(scoring::baseline(&view.dims, &h.batch.labels));
    Ok(m)
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scored: Vec<(u64, BTreeMap<String, f64>)>,
    pub rollbacks: Vec<(u64, u64, String)>,
}

/// The value the gate compares for a version: its `metric`, or the worst possible one when
/// the version diverged.
fn gate_value(metric: &str, diverged: bool, value: Option<&f64>) -> Option<f64> {
    match diverged {
        true if higher_is_better(metric) => Some(f64::NEG_INFINITY),
        true => Some(f64::INFINITY),
        false => value.copied(),
    }
}

/// What the gate decides about a freshly scored version.
pub fn gate_decision(gate: &Gate, scored: &[(u64, f64)], version: u64, value: f64) -> Option<(u64, f64)> {
    let hib = higher_is_better(&gate.metric);
    let best = scored.iter().filter(|(v, x)| *v != version && x.is_finite()).max_by(|a, b| {
        if hib {
            a.1.total_cmp(&b.1)
        } else {
            b.1.total_cmp(&a.1)
        }
    })?;
    let worse = if hib { best.1 - value } else { value - best.1 };
    (worse > gate.margin).then_some(*best)
}

/// Scores versions: with `once`, every retained version without the primary metric; else
/// also every new version until `shutdown`, catching up first on versions made while the
/// evaluator was down.
pub async fn run(
    config: EvaluatorConfig,
    mut client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Report, EvalError> {
    let info = client.model_info(&config.model).await?;
    let view = ModelView::of(&info.spec);
    // Scored as it was trained: the model's recorded columns, unless named (and then
    // they must be the same, or the stored metrics would be of other inputs).
    let target = accrete_ingest::Target::of(&view);
    let named = (config.model.as_str(), true);
    let cols = accrete_ingest::columns_for(
        &config.holdout,
        config.format,
        &config.columns,
        info.signature.as_ref(),
        target,
        named,
    )?;
    let config = EvaluatorConfig { format: cols.format, columns: cols.spec, ..config };
    let primary = primary_metric(&view.dims);
    if let Some(g) = &config.gate {
        if !scoring::METRICS.contains(&g.metric.as_str()) {
            return Err(EvalError::Config(format!(
                "--gate metric {:?} is not one of auc, accuracy, logloss, rmse, mae, r2",
                g.metric
            )));
        }
    }
    let mut holdout = Holdout::load(&config, &view)?;
    tracing::info!(model = %config.model, rows = holdout.rows(), primary, "holdout loaded");
    let mut report = Report::default();
    let mut history: Vec<(u64, f64)> = Vec::new();
    let versions = client.versions(&config.model).await?;
    let gate_metric = config.gate.as_ref().map_or(primary.to_string(), |g| g.metric.clone());
    if !config.rescore {
        for v in &versions {
            if let Some(x) = gate_value(&gate_metric, v.metrics.contains_key(DIVERGED), v.metrics.get(&gate_metric)) {
                history.push((v.version, x));
            }
        }
    }
    // A diverged version has no primary metric stored, but it is scored.
    let todo: Vec<VersionRecord> = versions
        .into_iter()
        .filter(|v| config.rescore || (!v.metrics.contains_key(primary) && !v.metrics.contains_key(DIVERGED)))
        .collect();
    let pass = Pass { config: &config, gate_metric: &gate_metric, judge: !config.rescore };
    for v in todo {
        pass.evaluate(&mut client, &view, &mut holdout, &v, &mut history, &mut report).await?;
    }
    let pass = Pass { judge: true, ..pass };
    if config.once {
        return Ok(report);
    }
    let after = history.iter().map(|(v, _)| *v).chain(report.scored.iter().map(|(v, _)| *v)).max().unwrap_or(0);
    let mut events = client.watch(Some(&config.model), Some(after)).await?;
    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            _ = &mut shutdown => break,
            ev = events.next() => ev,
        };
        let Some(ev) = ev else { break };
        let ev = ev?;
        if ev.kind.is_new_version() {
            let v = ev.version;
            pass.evaluate(&mut client, &view, &mut holdout, &v, &mut history, &mut report).await?;
        }
    }
    Ok(report)
}

/// One pass over versions: the settings, the metric the gate compares, and whether the
/// gate judges the versions of this pass (not while rescoring old ones).
#[derive(Clone, Copy)]
struct Pass<'a> {
    config: &'a EvaluatorConfig,
    gate_metric: &'a str,
    judge: bool,
}

impl Pass<'_> {
    async fn evaluate(
        &self,
        client: &mut Client,
        view: &ModelView,
        holdout: &mut Holdout,
        v: &VersionRecord,
        history: &mut Vec<(u64, f64)>,
        report: &mut Report,
    ) -> Result<(), EvalError> {
        let config = self.config;
        let m = match score_version(client, view, holdout, v.version).await {
            Ok(m) => m,
            // dropped by retention between listing and scoring
            Err(EvalError::Client(ClientError::NotFound(_))) => return Ok(()),
            Err(EvalError::EmptyHoldout) => {
                tracing::warn!(model = %config.model, version = v.version, "not scored: the holdout has no labelled rows yet");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let diverged = m.contains_key(DIVERGED);
        let (finite, not): (BTreeMap<String, f64>, BTreeMap<String, f64>) =
            m.clone().into_iter().partition(|(_, x)| x.is_finite());
        if !not.is_empty() {
            let names: Vec<&str> = not.keys().map(|k| k.as_str()).collect();
            let why = if diverged { "its predictions are not finite" } else { "e.g. a holdout with one class" };
            tracing::warn!(model = %config.model, version = v.version, "{} not finite ({why}); not stored", names.join(", "));
        }
        // a rescore puts its scores in place of the old ones (a stale divergence mark or
        // a metric not finite this time must not stay)
        client.report_metrics(&config.model, v.version, &finite, config.rescore && !self.judge).await?;
        tracing::debug!(model = %config.model, version = v.version, ?m, "scored");
        config.progress.tell(Event::Scored {
            version: v.version,
            metrics: m.clone(),
            rescored: config.rescore && !self.judge,
        });
        report.scored.push((v.version, m.clone()));
        let value = gate_value(self.gate_metric, diverged, m.get(self.gate_metric)).unwrap_or(f64::NAN);
        let is_rollback = v.kind == VersionKind::Rollback;
        if let (Some(gate), false, true) = (&config.gate, is_rollback, self.judge) {
            let window: Vec<(u64, f64)> = history.iter().rev().take(config.gate_window).copied().collect();
            if let Some((best_v, best)) = gate_decision(gate, &window, v.version, value) {
                let why = format!(
                    "quality gate: {} {value:.4} of version {} is worse than the best recent {best:.4} (version {best_v}) by more than {}",
                    gate.metric, v.version, gate.margin
                );
                if config.dry_run {
                    tracing::debug!(model = %config.model, "dry run, would roll back to {best_v}: {why}");
                    config.progress.tell(Event::WouldRollBack { after: v.version, to: best_v, why });
                } else {
                    let rb = client.rollback(&config.model, best_v, &why).await?;
                    tracing::debug!(model = %config.model, to = best_v, new_head = rb.version, "{why}");
                    config.progress.tell(Event::RolledBack {
                        after: v.version,
                        to: best_v,
                        head: rb.version,
                        why: why.clone(),
                    });
                    report.rollbacks.push((v.version, best_v, why));
                }
            }
        }
        history.push((v.version, value));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_compares_with_the_best_recent_version() {
        let g: Gate = "auc:0.01".parse().unwrap();
        let hist = [(1, 0.60), (2, 0.70), (3, 0.695)];
        assert_eq!(gate_decision(&g, &hist, 4, 0.695), None);
        assert_eq!(gate_decision(&g, &hist, 4, 0.68), Some((2, 0.70)));
        // a diverged version scores as the worst possible
        assert_eq!(gate_decision(&g, &hist, 4, f64::NEG_INFINITY), Some((2, 0.70)));
        let g: Gate = "logloss:0.02".parse().unwrap();
        let hist = [(1, 0.50), (2, 0.55)];
        assert_eq!(gate_decision(&g, &hist, 3, 0.515), None);
        assert_eq!(gate_decision(&g, &hist, 3, 0.53), Some((1, 0.50)));
        assert!("auc".parse::<Gate>().is_err());
        assert!("auc:x".parse::<Gate>().is_err());
    }
}
