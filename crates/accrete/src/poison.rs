//! The quickstart's incident, issue 15's own: a worker is fed a poisoned shard
//! (December's training rows with every label flipped), and its versions are made before
//! an evaluator reaches them. The evaluator then starts with a quality gate and finds the
//! poisoned versions worse than the last good one on AUC and accuracy, and rolls the
//! model back to it, on its own, once; the poisoned lineage stays in the history, scored,
//! and is never restored.
//!
//! (With the evaluator already watching, the gate rolled back while the worker was still
//! pushing; the worker joined the new lineage and pushed the rest, and a rest of a hundred
//! rows could pass the gate's margins and stay at the head: the story depended on timing.)
use accrete_client::Client;
use accrete_evaluator::{EvaluatorConfig, Event, Gate, Progress};
use accrete_ingest::{ColumnSpec, OnBadRow};
use accrete_worker::WorkerConfig;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One rollback of the gate: the failing version, the version restored, the new head.
#[derive(Debug, Clone)]
pub struct GateRollback {
    pub after: u64,
    pub to: u64,
    pub head: u64,
}

/// What happened: the versions the poisoned rows made, and the gate's rollbacks.
#[derive(Debug)]
pub struct Incident {
    pub poisoned: Vec<u64>,
    pub rollbacks: Vec<GateRollback>,
}

/// Writes `rows` (CSV lines of `header`) with the label flipped: `arr_delay` becomes 0
/// where it was over 15 minutes, and 60 where it was not. Returns how many were written.
pub fn flip_labels(header: &str, rows: &[&String], out: &Path) -> Result<usize> {
    let col = header.split(',').position(|c| c == "arr_delay").context("no arr_delay column")?;
    let mut text = String::with_capacity(rows.len() * 120);
    text.push_str(header);
    text.push('\n');
    let mut n = 0;
    for line in rows {
        let mut fields: Vec<&str> = line.split(',').collect();
        let Some(delay) = fields.get(col).and_then(|v| v.parse::<f64>().ok()) else { continue };
        fields[col] = if delay > 15.0 { "0" } else { "60" };
        text.push_str(&fields.join(","));
        text.push('\n');
        n += 1;
    }
    std::fs::write(out, text).with_context(|| out.display().to_string())?;
    Ok(n)
}

/// Runs the incident against `model`: a worker learning `poisoned`, a commit, then a gated
/// evaluator on the last 5,000 held-out rows, and its verdict (waited for, saying so).
pub async fn run(
    url: &str,
    c: &mut Client,
    model: &str,
    columns: &ColumnSpec,
    holdout: &Path,
    poisoned: &Path,
) -> Result<Incident> {
    let before = c.versions(model).await?.iter().map(|v| v.version).max().unwrap_or(0);
    let rollbacks: Arc<Mutex<Vec<GateRollback>>> = Arc::default();
    let seen = rollbacks.clone();
    let progress = Progress::new(move |e| {
        if let Event::RolledBack { after, to, head, why } = e {
            println!("{why}; rolled back to version {to}'s parameters, as version {head}");
            if let Ok(mut r) = seen.lock() {
                r.push(GateRollback { after: *after, to: *to, head: *head });
            }
        }
    });
    let gates: Vec<Gate> = ["auc:0.02", "accuracy:0.02"]
        .iter()
        .map(|g| g.parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let config = EvaluatorConfig {
        gates,
        // the last version before: scored on these same rows at the end of the stream.
        // Older ones were scored on earlier windows of the growing holdout, and one that
        // scored higher there made the last good version fail "itself", so the gate held
        // the first poisoned version instead of restoring (the quickstart test, 1 run in 8)
        gate_window: 1,
        window: 5000,
        progress,
        ..EvaluatorConfig::new(model, holdout, columns.clone())
    };
    let worker = WorkerConfig {
        model: model.into(),
        shard: poisoned.to_path_buf(),
        format: None,
        columns: columns.clone(),
        batch: 500,
        per_row: true,
        epochs: 1,
        follow: false,
        worker_id: "poisoned".into(),
        on_bad_row: OnBadRow::Skip,
        progressive_out: None,
        heartbeat_server: None,
    };
    let report =
        accrete_worker::run(worker, Client::connect(url).await?, std::future::pending::<()>(), Default::default())
            .await?;
    let (last, _) = c.commit(model, "poisoned shard learned").await?;
    println!(
        "the poisoned worker trained {} rows; version {} holds them; no evaluator was watching",
        report.rows, last.version
    );
    let (stop_evaluator, stop_rx) = watch::channel(false);
    let evaluator =
        tokio::spawn(accrete_evaluator::run(config, Client::connect(url).await?, crate::quickstart::stop(&stop_rx)));
    println!("an evaluator starts, with a gate on auc:0.02,accuracy:0.02: a version worse than the one before it by more than that is rolled back");

    let started = Instant::now();
    let mut said = false;
    loop {
        let versions = c.versions(model).await?;
        let head_restored = versions.last().is_some_and(|v| v.content_of != 0 && v.content_of <= before);
        let all_scored = versions.iter().filter(|v| v.updates > 0).all(|v| v.metrics.contains_key("auc"));
        if head_restored && all_scored {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            println!("(the gate has not rolled the poisoned versions back after 30 s; going on)");
            break;
        }
        if !said && started.elapsed() > Duration::from_secs(1) {
            println!("(the evaluator is still scoring the poisoned versions…)");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_evaluator.send(true);
    evaluator.await??;
    let poisoned = c
        .versions(model)
        .await?
        .iter()
        .filter(|v| v.version > before && v.version <= last.version && v.content_of == 0)
        .map(|v| v.version)
        .collect();
    let rollbacks = rollbacks.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(Incident { poisoned, rollbacks })
}
