//! `accrete model …`: the admin client over gRPC.
use crate::output::{self, table};
use accrete_client::{safetensors, Client};
use accrete_proto::v1 as pb;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use tokio_stream::StreamExt;

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    cmd: ModelCmd,
    #[command(flatten)]
    conn: Conn,
}

/// How to reach the server and how to print.
#[derive(Args, Clone)]
pub struct Conn {
    /// Server URL.
    #[arg(long, global = true, env = "ACCRETE_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Create a model; its initial parameters become version 1.
    Create(CreateArgs),
    /// List models.
    List,
    /// Show one model: layout, optimizer, policy, head version.
    Show { name: String },
    /// Delete a model and all its versions.
    Delete { name: String },
    /// Commit the live parameters as a new version (no-op when nothing changed).
    Commit {
        name: String,
        /// Why, recorded with the version.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List retained versions with parents, reasons and metrics.
    Versions { name: String },
    /// Tag a version; tagged versions are never dropped by retention.
    Tag { name: String, version: u64, label: String },
    /// Make a new head version with an earlier version's content (history is kept).
    Rollback {
        name: String,
        #[arg(long)]
        to: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Write a version's parameters to a safetensors file.
    Export {
        name: String,
        /// Version to export (default: the head).
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        out: PathBuf,
        /// Also write optimizer slots as `{tensor}.{slot}`.
        #[arg(long)]
        optimizer_state: bool,
    },
    /// Load parameters from a safetensors file as a new version (warm start).
    Import {
        name: String,
        #[arg(long)]
        from: PathBuf,
    },
    /// Draw a metric over versions (PNG or SVG), marking rollbacks.
    Plot(crate::eval_cmd::PlotArgs),
    /// Print one prediction per row of a data file.
    Predict(crate::worker_cmd::PredictArgs),
    /// Stream version events as they happen.
    Watch {
        /// Model to watch (default: every model).
        name: Option<String>,
        /// First replay retained versions newer than this.
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Linear,
    Logistic,
    Softmax,
    Fm,
    Mlp,
}

#[derive(Clone, Copy, ValueEnum)]
enum Opt {
    Sgd,
    Momentum,
    Adagrad,
    Adam,
    Ftrl,
}

#[derive(Args)]
struct CreateArgs {
    name: String,
    #[arg(long, value_enum)]
    kind: Kind,
    /// Dense input features.
    #[arg(long, default_value_t = 0)]
    features: u32,
    /// Hashed sparse table of 2^bits rows.
    #[arg(long, default_value_t = 0)]
    hash_bits: u32,
    /// Classes (softmax, multi-class mlp).
    #[arg(long, default_value_t = 0)]
    classes: u32,
    /// Hidden units (mlp).
    #[arg(long, default_value_t = 0)]
    hidden: u32,
    /// Latent factors (fm).
    #[arg(long, default_value_t = 0)]
    factors: u32,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: Opt,
    /// Learning rate (FTRL: alpha). Default 0.01 (FTRL 0.1).
    #[arg(long, default_value_t = 0.0)]
    lr: f32,
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    beta1: f32,
    /// Adam beta2; FTRL beta.
    #[arg(long, default_value_t = 0.0)]
    beta2: f32,
    #[arg(long, default_value_t = 0.0)]
    eps: f32,
    #[arg(long, default_value_t = 0.0)]
    l1: f32,
    #[arg(long, default_value_t = 0.0)]
    l2: f32,
    /// Seeded N(0, scale²) initial weights (0 = zeros).
    #[arg(long, default_value_t = 0)]
    init_seed: u64,
    #[arg(long, default_value_t = 0.01)]
    init_scale: f32,
    /// Keep an exponential moving average of the weights with this decay.
    #[arg(long, default_value_t = 0.0)]
    ema_decay: f32,
    /// Commit after this many applied pushes.
    #[arg(long, default_value_t = 0)]
    commit_every_updates: u64,
    /// Commit when this many seconds passed with updates.
    #[arg(long, default_value_t = 0.0)]
    commit_every_secs: f64,
    /// Keep the newest K versions (plus tagged ones); 0 keeps all.
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    /// asp, bsp, or ssp:S (bounded staleness S).
    #[arg(long, default_value = "asp")]
    consistency: String,
}

fn parse_consistency(s: &str) -> Result<pb::Consistency> {
    let (mode, staleness) = match s.split_once(':') {
        None if s == "asp" => (pb::ConsistencyMode::Asp, 0),
        None if s == "bsp" => (pb::ConsistencyMode::Bsp, 0),
        Some(("ssp", n)) => (
            pb::ConsistencyMode::Ssp,
            n.parse().with_context(|| format!("--consistency {s}: staleness {n:?} is not a number"))?,
        ),
        _ => bail!("--consistency {s:?}: expected asp, bsp or ssp:S"),
    };
    Ok(pb::Consistency { mode: mode as i32, staleness })
}

fn spec(a: &CreateArgs) -> Result<pb::ModelSpec> {
    let kind = match a.kind {
        Kind::Linear => pb::ModelKind::Linear,
        Kind::Logistic => pb::ModelKind::Logistic,
        Kind::Softmax => pb::ModelKind::Softmax,
        Kind::Fm => pb::ModelKind::Fm,
        Kind::Mlp => pb::ModelKind::Mlp,
    };
    let optimizer = match a.optimizer {
        Opt::Sgd => pb::OptimizerKind::Sgd,
        Opt::Momentum => pb::OptimizerKind::Momentum,
        Opt::Adagrad => pb::OptimizerKind::Adagrad,
        Opt::Adam => pb::OptimizerKind::Adam,
        Opt::Ftrl => pb::OptimizerKind::Ftrl,
    };
    Ok(pb::ModelSpec {
        name: a.name.clone(),
        kind: kind as i32,
        features: a.features,
        hash_bits: a.hash_bits,
        classes: a.classes,
        hidden: a.hidden,
        factors: a.factors,
        optimizer: Some(pb::OptimizerSpec {
            kind: optimizer as i32,
            lr: a.lr,
            momentum: a.momentum,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            l1: a.l1,
            l2: a.l2,
        }),
        init: Some(pb::InitSpec { seed: a.init_seed, scale: a.init_scale }),
        ema_decay: a.ema_decay,
        commit: Some(pb::CommitPolicy {
            every_updates: a.commit_every_updates,
            every_secs: a.commit_every_secs,
            keep_last: a.keep_last,
        }),
        consistency: Some(parse_consistency(&a.consistency)?),
    })
}

pub async fn run(a: ModelArgs) -> Result<()> {
    let conn = a.conn;
    let cmd = match a.cmd {
        ModelCmd::Predict(p) => return crate::worker_cmd::predict(p, &conn.server).await,
        ModelCmd::Plot(p) => return crate::eval_cmd::plot(p, &conn.server).await,
        other => other,
    };
    let mut c = Client::connect(&conn.server).await?;
    match cmd {
        ModelCmd::Predict(_) | ModelCmd::Plot(_) => {}
        ModelCmd::Create(args) => {
            let info = c
                .models
                .create_model(pb::CreateModelRequest { spec: Some(spec(&args)?) })
                .await
                .map_err(err)?
                .into_inner();
            print_model(&info, conn.json);
        }
        ModelCmd::List => {
            let models = c.models.list_models(pb::ListModelsRequest {}).await.map_err(err)?.into_inner().models;
            if conn.json {
                println!("{}", serde_json::Value::Array(models.iter().map(output::model_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = models
                    .iter()
                    .map(|m| {
                        let s = m.spec.clone().unwrap_or_default();
                        let o = s.optimizer.unwrap_or_default();
                        vec![
                            s.name,
                            output::kind_name(s.kind),
                            m.parameters.to_string(),
                            output::optimizer_name(o.kind),
                            m.head_version.to_string(),
                            m.versions.to_string(),
                            m.uncommitted_updates.to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "KIND", "PARAMETERS", "OPTIMIZER", "HEAD", "VERSIONS", "UNCOMMITTED"], &rows);
            }
        }
        ModelCmd::Show { name } => {
            let info = c.models.get_model_info(pb::ModelRef { name: name.clone() }).await.map_err(err)?.into_inner();
            let versions = c.models.list_versions(pb::ModelRef { name }).await.map_err(err)?.into_inner().versions;
            let best = best_version(&info, &versions);
            if conn.json {
                let mut j = output::model_json(&info);
                j["best"] = best.map_or(
                    serde_json::Value::Null,
                    |(v, m, x)| serde_json::json!({"version": v, "metric": m, "value": x}),
                );
                println!("{j}");
            } else {
                print_model(&info, false);
                match best {
                    Some((v, m, x)) => println!("best version {v}: {m} {x:.4}"),
                    None => println!("no version scored yet (run accrete evaluator)"),
                }
            }
        }
        ModelCmd::Delete { name } => {
            let r = c.models.delete_model(pb::ModelRef { name }).await.map_err(err)?.into_inner();
            if conn.json {
                println!("{}", serde_json::json!({"name": r.name, "versions_dropped": r.versions_dropped}));
            } else {
                println!("deleted model {} ({} versions)", r.name, r.versions_dropped);
            }
        }
        ModelCmd::Commit { name, reason } => {
            let r = c.models.commit(pb::CommitRequest { model: name.clone(), reason }).await.map_err(err)?.into_inner();
            let v = r.version.unwrap_or_default();
            if conn.json {
                let mut j = output::version_json(&v);
                j["created"] = serde_json::json!(r.created);
                println!("{j}");
            } else if r.created {
                println!("committed {name} version {} ({} chunks written)", v.version, v.chunks_written);
            } else {
                println!("nothing to commit: {name} is at version {}", v.version);
            }
        }
        ModelCmd::Versions { name } => {
            let vs = c.models.list_versions(pb::ModelRef { name }).await.map_err(err)?.into_inner().versions;
            print_versions(&vs, conn.json);
        }
        ModelCmd::Tag { name, version, label } => {
            let v = c.models.tag(pb::TagRequest { model: name, version, label }).await.map_err(err)?.into_inner();
            print_version(&v, conn.json, "tagged");
        }
        ModelCmd::Rollback { name, to, reason } => {
            let v = c
                .models
                .rollback(pb::RollbackRequest { model: name, to_version: to, reason })
                .await
                .map_err(err)?
                .into_inner();
            print_version(&v, conn.json, "rolled back: new head");
        }
        ModelCmd::Export { name, version, out, optimizer_state } => {
            let v = safetensors::export(&mut c, &name, version, optimizer_state, &out).await?;
            if conn.json {
                println!("{}", serde_json::json!({"model": name, "version": v.version, "out": out}));
            } else {
                println!("exported {name} version {} to {} (safetensors)", v.version, out.display());
            }
        }
        ModelCmd::Import { name, from } => {
            let v = safetensors::import(&mut c, &name, &from).await?;
            print_version(&v, conn.json, "imported: new head");
        }
        ModelCmd::Watch { name, after } => {
            let req = pb::WatchRequest { model: name.unwrap_or_default(), after_version: after };
            let mut s = c.models.watch_versions(req).await.map_err(err)?.into_inner();
            while let Some(ev) = s.next().await {
                let ev = ev.map_err(err)?;
                let v = ev.version.unwrap_or_default();
                let kind = pb::VersionEventKind::try_from(ev.kind)
                    .map(|k| k.as_str_name().trim_start_matches("VERSION_EVENT_KIND_").to_lowercase())
                    .unwrap_or_default();
                if conn.json {
                    let mut j = output::version_json(&v);
                    j["event"] = serde_json::json!(kind);
                    println!("{j}");
                } else {
                    println!("{kind} {} version {} ({})", v.model, v.version, v.reason);
                }
            }
        }
    }
    Ok(())
}

/// The best retained version by the model's primary metric: (version, metric, value).
fn best_version(info: &pb::ModelInfo, versions: &[pb::VersionInfo]) -> Option<(u64, &'static str, f64)> {
    let view = accrete_worker::ModelView::from_info(info).ok()?;
    let metric = accrete_evaluator::primary_metric(&view.dims);
    let hib = accrete_evaluator::higher_is_better(metric);
    versions
        .iter()
        .filter_map(|v| v.metrics.get(metric).map(|x| (v.version, *x)))
        .filter(|(_, x)| x.is_finite())
        .max_by(|a, b| if hib { a.1.total_cmp(&b.1) } else { b.1.total_cmp(&a.1) })
        .map(|(v, x)| (v, metric, x))
}

/// A status as `CODE: message`, the server's words.
fn err(s: tonic::Status) -> anyhow::Error {
    accrete_client::ClientError::from(s).into()
}

fn print_model(m: &pb::ModelInfo, json: bool) {
    if json {
        println!("{}", output::model_json(m));
        return;
    }
    let j = output::model_json(m);
    let s = m.spec.clone().unwrap_or_default();
    println!("model {}  kind {}  parameters {}", s.name, j["kind"].as_str().unwrap_or(""), m.parameters);
    println!("optimizer {}  consistency {}", j["optimizer"], j["consistency"].as_str().unwrap_or(""));
    println!(
        "head version {}  lineage epoch {}  updates {} ({} uncommitted)  versions {}",
        m.head_version, m.lineage_epoch, m.updates, m.uncommitted_updates, m.versions
    );
    let rows: Vec<Vec<String>> = m
        .tensors
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.rows.to_string(),
                t.cols.to_string(),
                if t.sparse { "hashed" } else { "dense" }.into(),
                t.slots.join(","),
            ]
        })
        .collect();
    table(&["TENSOR", "ROWS", "COLS", "LAYOUT", "SLOTS"], &rows);
}

fn print_version(v: &pb::VersionInfo, json: bool, what: &str) {
    if json {
        println!("{}", output::version_json(v));
    } else {
        println!(
            "{what} {} version {} (parent {}, epoch {}): {}",
            v.model,
            v.version,
            v.parent.map_or("-".into(), |p| p.to_string()),
            v.lineage_epoch,
            v.reason
        );
    }
}

fn print_versions(vs: &[pb::VersionInfo], json: bool) {
    if json {
        println!("{}", serde_json::Value::Array(vs.iter().map(output::version_json).collect()));
        return;
    }
    let rows: Vec<Vec<String>> = vs
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                v.parent.map_or("-".into(), |p| p.to_string()),
                output::time(v.created_unix_ms),
                v.updates.to_string(),
                v.lineage_epoch.to_string(),
                v.reason.clone(),
                v.tags.join(","),
                output::metrics_cell(&v.metrics),
            ]
        })
        .collect();
    table(&["VERSION", "PARENT", "CREATED (UTC)", "UPDATES", "EPOCH", "REASON", "TAGS", "METRICS"], &rows);
}
