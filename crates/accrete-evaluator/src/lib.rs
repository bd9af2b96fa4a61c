//! The accrete evaluator: watches a model's versions, pulls the exact parameters of each
//! new version, scores them on a holdout set, reports the metrics to the server (which
//! stores them with the version), and optionally rolls a regressing model back through
//! the normal rollback path (the quality gate).
//!
//! Entry point: [`run`] with an [`EvaluatorConfig`], a connected client and a shutdown
//! future. The gate's rules are in [`gate`].

pub mod gate;

pub use gate::{Gate, Judge, Judged};

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

#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    pub model: String,
    pub holdout: PathBuf,
    pub format: Option<Format>,
    pub columns: ColumnSpec,
    /// Score every version without metrics, then exit.
    pub once: bool,
    /// The quality gate: roll back when a version fails any of these (none: no gate).
    pub gates: Vec<Gate>,
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

impl EvaluatorConfig {
    /// Scores `model` on every row of `holdout` as each new version comes, with no gate
    /// (the CLI's defaults); callers change what they need.
    pub fn new(model: &str, holdout: &std::path::Path, columns: ColumnSpec) -> EvaluatorConfig {
        EvaluatorConfig {
            model: model.into(),
            holdout: holdout.to_path_buf(),
            format: None,
            columns,
            once: false,
            gates: Vec::new(),
            dry_run: false,
            gate_window: 10,
            holdout_follow: false,
            window: 0,
            rescore: false,
            progress: Progress::default(),
        }
    }
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
    /// Version `after` failed the gate, and nothing was restored: the head passes, or no
    /// recent version beats it.
    Held {
        after: u64,
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

/// A version as the gate sees it: its value of each gate's metric (the worst possible
/// where it diverged); `None` when a gate's metric is not among its scores.
fn judged(gates: &[Gate], version: u64, m: &BTreeMap<String, f64>) -> Option<Judged> {
    let diverged = m.contains_key(DIVERGED);
    let values = gates.iter().map(|g| match (diverged, higher_is_better(&g.metric)) {
        (true, true) => Some(f64::NEG_INFINITY),
        (true, false) => Some(f64::INFINITY),
        (false, _) => m.get(&g.metric).copied(),
    });
    Some(Judged { version, values: values.collect::<Option<Vec<f64>>>()? })
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
    let kind_metrics = scoring::metrics_of(&view.dims);
    for g in &config.gates {
        if !kind_metrics.contains(&g.metric.as_str()) {
            return Err(EvalError::Config(format!(
                "--gate metric {:?}: model {:?} is scored by {}",
                g.metric,
                config.model,
                kind_metrics.join(", ")
            )));
        }
    }
    let mut holdout = Holdout::load(&config, &view)?;
    tracing::info!(model = %config.model, rows = holdout.rows(), primary, "holdout loaded");
    let mut report = Report::default();
    let mut judge = Judge::new(config.gates.clone(), config.gate_window);
    let versions = client.versions(&config.model).await?;
    // rollbacks made before: their abandoned lineages are skipped
    for v in versions.iter().filter(|v| v.kind == VersionKind::Rollback && v.content_of != 0) {
        judge.rolled_back(v.content_of, v.version);
    }
    if !config.rescore {
        for v in &versions {
            if let Some(j) = judged(&config.gates, v.version, &v.metrics) {
                judge.remember(j);
            }
        }
    }
    let after = versions.iter().map(|v| v.version).max().unwrap_or(0);
    // A diverged version has no primary metric stored, but it is scored.
    let todo: Vec<VersionRecord> = versions
        .into_iter()
        .filter(|v| config.rescore || (!v.metrics.contains_key(primary) && !v.metrics.contains_key(DIVERGED)))
        .collect();
    let pass = Pass { config: &config, judging: !config.rescore };
    for v in todo {
        pass.evaluate(&mut client, &view, &mut holdout, &v, &mut judge, &mut report).await?;
    }
    let pass = Pass { judging: true, ..pass };
    if config.once {
        return Ok(report);
    }
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
            pass.evaluate(&mut client, &view, &mut holdout, &v, &mut judge, &mut report).await?;
        }
    }
    Ok(report)
}

/// One pass over versions: the settings, and whether the gate judges the versions of
/// this pass (not while rescoring old ones).
#[derive(Clone, Copy)]
struct Pass<'a> {
    config: &'a EvaluatorConfig,
    judging: bool,
}

impl Pass<'_> {
    async fn evaluate(
        &self,
        client: &mut Client,
        view: &ModelView,
        holdout: &mut Holdout,
        v: &VersionRecord,
        judge: &mut Judge,
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
        let rescored = config.rescore && !self.judging;
        client.report_metrics(&config.model, v.version, &finite, rescored).await?;
        tracing::debug!(model = %config.model, version = v.version, ?m, "scored");
        config.progress.tell(Event::Scored { version: v.version, metrics: m.clone(), rescored });
        report.scored.push((v.version, m.clone()));
        if config.gates.is_empty() || !self.judging || judge.abandoned(v.version) {
            return Ok(()); // a rolled-back lineage's version is scored, never judged
        }
        let Some(j) = judged(&config.gates, v.version, &m) else { return Ok(()) };
        if v.kind == VersionKind::Rollback {
            judge.remember(j); // restored content: a candidate, not judged
            return Ok(());
        }
        match judge.verdict(&j) {
            None => judge.remember(j),
            Some(f) => self.failed(client, view, holdout, judge, report, j, f).await?,
        }
        Ok(())
    }

    /// A version failed the gate: restore the newest recent version that beats the head,
    /// if the head fails too and one does (`gate.rs`).
    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &self,
        client: &mut Client,
        view: &ModelView,
        holdout: &mut Holdout,
        judge: &mut Judge,
        report: &mut Report,
        j: Judged,
        f: gate::Failure,
    ) -> Result<(), EvalError> {
        let config = self.config;
        let g = &config.gates[f.gate];
        let mut why = format!(
            "quality gate: {} {:.4} of version {} is worse than the best recent {:.4} (version {}) by more than {}",
            g.metric, f.value, j.version, f.best, f.best_version, g.margin
        );
        // the head it would replace: the evaluator may be behind
        let head_version = client.model_info(&config.model).await?.head_version;
        let head = match head_version == j.version {
            true => Some(j.clone()),
            false => match score_version(client, view, holdout, head_version).await {
                Ok(m) => judged(&config.gates, head_version, &m),
                Err(EvalError::Client(ClientError::NotFound(_)) | EvalError::EmptyHoldout) => None,
                Err(e) => return Err(e),
            },
        };
        // the target, or why there is none
        let target = match &head {
            None => Err(format!("head version {head_version} could not be scored")),
            Some(h) if h.version != j.version && judge.verdict(h).is_none() => {
                Err(format!("head version {head_version} passes the gate"))
            }
            Some(h) => {
                judge.target(h).map(|t| t.version).ok_or(format!("no recent version beats head version {head_version}"))
            }
        };
        let to = match target {
            Ok(to) => to,
            Err(held) => {
                let why = format!("{why}; {held}: not rolled back");
                tracing::info!(model = %config.model, "{why}");
                config.progress.tell(Event::Held { after: j.version, why });
                judge.remember(j); // kept: the model goes on from it
                return Ok(());
            }
        };
        if head_version != j.version {
            why = format!("{why}; head version {head_version} fails too");
        }
        if config.dry_run {
            tracing::debug!(model = %config.model, "dry run, would roll back to {to}: {why}");
            config.progress.tell(Event::WouldRollBack { after: j.version, to, why });
            return Ok(());
        }
        let rb = client.rollback(&config.model, to, &why).await?;
        tracing::debug!(model = %config.model, to, new_head = rb.version, "{why}");
        judge.rolled_back(to, rb.version);
        config.progress.tell(Event::RolledBack { after: j.version, to, head: rb.version, why: why.clone() });
        report.rollbacks.push((j.version, to, why));
        Ok(())
    }
}
