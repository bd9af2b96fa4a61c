//! The HTTP side of a server (`--http ADDR`): the dashboard page (`dashboard.rs`) and the
//! fragment its script refreshes, a JSON API, and `/metrics` in the Prometheus text
//! format. Handlers that read version records (sled) run them on a blocking thread.
use crate::registry::Registry;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub fn router(reg: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/fragment", get(fragment))
        .route("/api/models", get(models))
        .route("/api/models/{name}/versions", get(versions))
        .route("/metrics", get(metrics))
        .with_state(reg)
}

fn json(v: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Runs a handler's store reads on a blocking thread.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("task failed: {e}")).into_response(),
    }
}

async fn page(State(reg): State<Arc<Registry>>, Query(q): Query<crate::dashboard::Query>) -> Response {
    blocking(move || Html(crate::dashboard::page(&reg, &q, accrete_store::now_unix_ms())).into_response()).await
}

async fn fragment(State(reg): State<Arc<Registry>>, Query(q): Query<crate::dashboard::Query>) -> Response {
    blocking(move || Html(crate::dashboard::body(&reg, &q, accrete_store::now_unix_ms())).into_response()).await
}

async fn models(State(reg): State<Arc<Registry>>) -> Response {
    blocking(move || models_json(&reg)).await
}

fn models_json(reg: &Registry) -> Response {
    let list: Vec<serde_json::Value> = reg
        .list()
        .iter()
        .map(|h| {
            let st = h.status();
            let (rate, last_push) = h.push_rate();
            serde_json::json!({
                "name": h.name(),
                "kind": h.spec().kind.as_str(),
                "parameters": h.layout().iter().map(|t| t.len()).sum::<u64>(),
                "head_version": st.head,
                "lineage_epoch": st.epoch,
                "updates": st.updates,
                "uncommitted_updates": st.since_commit,
                "versions": h.versions().map(|v| v.len()).unwrap_or(0),
                "workers": st.workers,
                "pushes_per_sec": rate,
                "last_push_unix_ms": last_push,
            })
        })
        .collect();
    json(serde_json::Value::Array(list))
}

async fn versions(State(reg): State<Arc<Registry>>, Path(name): Path<String>) -> Response {
    blocking(move || versions_json(&reg, &name)).await
}

fn versions_json(reg: &Registry, name: &str) -> Response {
    let h = match reg.get(name) {
        Ok(h) => h,
        Err(e) => return (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    };
    match h.versions() {
        Ok(vs) => json(serde_json::to_value(vs).unwrap_or_default()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Prometheus text format: counters (pushes, values applied, commits, commit seconds) and
/// gauges (head version, retained versions, the newest scored version's metrics).
async fn metrics(State(reg): State<Arc<Registry>>) -> Response {
    blocking(move || metrics_text(&reg)).await
}

fn metrics_text(reg: &Registry) -> Response {
    let mut out = String::new();
    let families = [
        ("accrete_pushes_total", "counter", "Pushes received."),
        ("accrete_values_applied_total", "counter", "Gradient values applied to parameters."),
        ("accrete_commits_total", "counter", "Versions written by commits."),
        ("accrete_commit_seconds_total", "counter", "Seconds spent writing commits."),
        ("accrete_commit_bytes_total", "counter", "Bytes written by commits (chunks, delta layers, manifests)."),
        ("accrete_compaction_chunks_total", "counter", "Chunks compaction gave a new base."),
        ("accrete_head_version", "gauge", "The newest version."),
        ("accrete_versions", "gauge", "Retained versions."),
        ("accrete_updates_uncommitted", "gauge", "Applied updates not in a version yet."),
        ("accrete_workers", "gauge", "Workers holding a lease in the model's barrier."),
        ("accrete_version_metric", "gauge", "Metrics of the newest scored version."),
        (
            "accrete_progressive",
            "gauge",
            "Progressive validation of the newest version's rows, from all workers (each row scored before it was learned).",
        ),
        ("accrete_cluster_holds_total", "counter", "Global commits that held this partition's pushes."),
        ("accrete_cluster_pushes_held_total", "counter", "Pushes that waited for a global commit's hold."),
        ("accrete_cluster_hold_seconds_total", "counter", "Seconds this partition's pushes were held."),
    ];
    let models = reg.list();
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for h in &models {
            let m = h.name();
            let c = h.counters();
            let st = h.status();
            match name {
                "accrete_pushes_total" => line(&mut out, name, m, c.pushes as f64),
                "accrete_values_applied_total" => line(&mut out, name, m, c.values as f64),
                "accrete_commits_total" => line(&mut out, name, m, c.commits as f64),
                "accrete_commit_seconds_total" => line(&mut out, name, m, c.commit_seconds),
                "accrete_commit_bytes_total" => line(&mut out, name, m, c.bytes_written as f64),
                "accrete_compaction_chunks_total" => line(&mut out, name, m, c.rebased as f64),
                "accrete_head_version" => line(&mut out, name, m, st.head as f64),
                "accrete_versions" => line(&mut out, name, m, h.versions().map(|v| v.len()).unwrap_or(0) as f64),
                "accrete_updates_uncommitted" => line(&mut out, name, m, st.since_commit as f64),
                "accrete_workers" => line(&mut out, name, m, st.workers as f64),
                "accrete_cluster_holds_total" => line(&mut out, name, m, h.hold_meters.holds.load(Relaxed) as f64),
                "accrete_cluster_pushes_held_total" => {
                    line(&mut out, name, m, h.hold_meters.held_pushes.load(Relaxed) as f64)
                }
                "accrete_cluster_hold_seconds_total" => {
                    line(&mut out, name, m, h.hold_meters.hold_nanos.load(Relaxed) as f64 / 1e9)
                }
                "accrete_progressive" => {
                    let vs = h.versions().unwrap_or_default();
                    if let Some((v, f)) = vs.iter().rev().find_map(|v| v.progressive.map(|f| (v.version, f))) {
                        let figures = [
                            ("rows", Some(f.rows as f64)),
                            ("loss", Some(f.loss)),
                            ("accuracy", f.accuracy),
                            ("auc", f.auc),
                        ];
                        for (k, x) in figures.iter().filter_map(|(k, x)| x.map(|x| (k, x))) {
                            let _ = writeln!(out, "{name}{{model=\"{m}\",metric=\"{k}\",version=\"{v}\"}} {x}");
                        }
                    }
                }
                _ => {
                    let vs = h.versions().unwrap_or_default();
                    if let Some(v) = vs.iter().rev().find(|v| !v.metrics.is_empty()) {
                        for (k, x) in &v.metrics {
                            let _ =
                                writeln!(out, "{name}{{model=\"{m}\",metric=\"{k}\",version=\"{}\"}} {x}", v.version);
                        }
                    }
                }
            }
        }
    }
    if let Some(c) = reg.cluster() {
        let (n, sum, p50, p99) = c.holds.summary();
        let _ = writeln!(
            out,
            "# HELP accrete_cluster_commit_seconds Global commits coordinated here, from the first hold to the last release.\n\
             # TYPE accrete_cluster_commit_seconds summary\n\
             accrete_cluster_commit_seconds{{quantile=\"0.5\"}} {p50}\n\
             accrete_cluster_commit_seconds{{quantile=\"0.99\"}} {p99}\n\
             accrete_cluster_commit_seconds_sum {sum}\n\
             accrete_cluster_commit_seconds_count {n}"
        );
        let _ = writeln!(
            out,
            "# HELP accrete_cluster_commits_waiting Global commits waiting for the one running on the same model.\n\
             # TYPE accrete_cluster_commits_waiting gauge\n\
             accrete_cluster_commits_waiting {}",
            c.waiting()
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn line(out: &mut String, name: &str, model: &str, v: f64) {
    let _ = writeln!(out, "{name}{{model=\"{model}\"}} {v}");
}
