//! `accrete model …`: the admin commands, one function each, over the typed client.
use crate::conn::ServerConn;
use crate::output::{self, table};
use accrete_client::{safetensors, Client};
use accrete_core::scoring::{best_by, primary_metric};
use accrete_core::view::ModelView;
use accrete_core::{
    CommitPolicy, ConsistencyMode, InitSpec, ModelInfo, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec,
    VersionRecord,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    #[command(flatten)]
    pub to: ServerConn,
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
    Show {
        /// The model's name.
        name: String,
    },
    /// Delete a model and all its versions.
    Delete {
        /// The model's name.
        name: String,
    },
    /// Commit the live parameters as a new version (no-op when nothing changed).
    Commit {
        /// The model's name.
        name: String,
        /// Why, recorded with the version.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List retained versions with parents, reasons and metrics.
    Versions {
        /// The model's name.
        name: String,
    },
    /// Tag a version; tagged versions are never dropped by retention.
    Tag {
        /// The model's name.
        name: String,
        /// The version to tag.
        version: u64,
        /// The tag (several may be given to one version, one per call).
        label: String,
    },
    /// Make a new head version with an earlier version's content (history is kept).
    Rollback {
        /// The model's name.
        name: String,
        /// The version whose content becomes the new head.
        #[arg(long)]
        to: u64,
        /// Why, recorded with the new version.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Write a version's parameters to a safetensors file.
    Export {
        /// The model's name.
        name: String,
        /// Version to export (default: the head).
        #[arg(long)]
        version: Option<u64>,
        /// The safetensors file to write.
        #[arg(long)]
        out: PathBuf,
        /// Also write optimizer slots as `{tensor}.{slot}`.
        #[arg(long)]
        optimizer_state: bool,
    },
    /// Load parameters from a safetensors file as a new version (warm start).
    Import {
        /// The model's name.
        name: String,
        /// A safetensors file with the model's tensors (as `model export` writes them).
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
    Normalized,
    Rls,
}

#[derive(Args)]
struct CreateArgs {
    /// The new model's name (letters, digits, `_`, `-`, `.`).
    name: String,
    /// What the model computes: linear regression, logistic (binary), softmax
    /// (multi-class), a factorization machine (binary), or a one-hidden-layer MLP.
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
    /// The optimizer [default: `rls` (exact least squares) for a linear model of dense features only,
    /// `normalized` (no rate tuned to the data) for the other linear, logistic and softmax models; adam for fm, mlp].
    #[arg(long, value_enum)]
    optimizer: Option<Opt>,
    /// Learning rate (FTRL: alpha) [default: normalized 0.7, FTRL 0.1, Adam 0.001, others 0.01].
    #[arg(long, value_name = "RATE")]
    lr: Option<f32>,
    /// Momentum: the velocity's decay [default: 0.9].
    #[arg(long)]
    momentum: Option<f32>,
    /// Adam: decay of the first-moment average [default: 0.9].
    #[arg(long)]
    beta1: Option<f32>,
    /// Adam: decay of the second-moment average [default: 0.999]; FTRL: beta [default: 1].
    #[arg(long)]
    beta2: Option<f32>,
    /// Added to the denominator of AdaGrad [default: 1e-6] and Adam [default: 1e-8].
    #[arg(long)]
    eps: Option<f32>,
    /// L1 penalty, FTRL only (it gives exact zeros) [default: 0].
    #[arg(long)]
    l1: Option<f32>,
    /// L2 penalty (weight decay) [default: 0].
    #[arg(long)]
    l2: Option<f32>,
    /// Seeded N(0, scale²) initial weights (0 = zeros).
    #[arg(long, default_value_t = 0)]
    init_seed: u64,
    /// The scale of seeded initial weights.
    #[arg(long, default_value_t = 0.01)]
    init_scale: f32,
    /// Keep an exponential moving average of the weights with this decay (0 = none).
    #[arg(long, default_value_t = 0.0)]
    ema_decay: f32,
    /// Commit a version after this many applied pushes (0 = not by count).
    #[arg(long, default_value_t = CommitPolicy::DEFAULT.every_updates)]
    commit_every_updates: u64,
    /// Commit a version when this many seconds passed with updates (0 = not by time).
    /// Whatever the policy, a finishing worker asks for a commit and a graceful stop
    /// commits what is left.
    #[arg(long, default_value_t = CommitPolicy::DEFAULT.every_secs)]
    commit_every_secs: f64,
    /// Retention: keep the newest K versions, plus tagged ones and the head (0 = keep all).
    #[arg(long, default_value_t = CommitPolicy::DEFAULT.keep_last)]
    keep_last: u32,
    /// The columns the model reads (its input signature), recorded now instead of by its
    /// first worker: --label with --numeric and/or --categorical (and --cross).
    #[command(flatten)]
    columns: crate::worker_cmd::DataArgs,
    /// Succeed without creating when a model of this name exists with the same spec (a
    /// deploy job that may run again); a different spec is still refused, naming what differs.
    #[arg(long)]
    if_absent: bool,
    /// asp, bsp, or ssp:S (bounded staleness S).
    #[arg(long, default_value = "asp")]
    consistency: String,
    /// Split the large tensors (the hashed table) into this many row ranges over the
    /// cluster's servers (default: one per server; 1 on a server started without --peers).
    #[arg(long)]
    partitions: Option<u32>,
}

impl From<Kind> for ModelKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Linear => ModelKind::Linear,
            Kind::Logistic => ModelKind::Logistic,
            Kind::Softmax => ModelKind::Softmax,
            Kind::Fm => ModelKind::Fm,
            Kind::Mlp => ModelKind::Mlp,
        }
    }
}

impl From<Opt> for OptimizerKind {
    fn from(o: Opt) -> Self {
        match o {
            Opt::Sgd => OptimizerKind::Sgd,
            Opt::Momentum => OptimizerKind::Momentum,
            Opt::Adagrad => OptimizerKind::Adagrad,
            Opt::Adam => OptimizerKind::Adam,
            Opt::Ftrl => OptimizerKind::Ftrl,
            Opt::Normalized => OptimizerKind::Normalized,
            Opt::Rls => OptimizerKind::Rls,
        }
    }
}

fn parse_consistency(s: &str) -> Result<(ConsistencyMode, u32)> {
    Ok(match s.split_once(':') {
        None if s == "asp" => (ConsistencyMode::Asp, 0),
        None if s == "bsp" => (ConsistencyMode::Bsp, 0),
        Some(("ssp", n)) => (
            ConsistencyMode::Ssp,
            n.parse().with_context(|| format!("--consistency {s}: staleness {n:?} is not a number"))?,
        ),
        _ => bail!("--consistency {s:?}: expected asp, bsp or ssp:S"),
    })
}

/// The spec as asked for; hyper-parameters left at 0 take the server's defaults.
fn spec(a: &CreateArgs) -> Result<ModelSpec> {
    let (consistency, staleness) = parse_consistency(&a.consistency)?;
    Ok(ModelSpec {
        name: a.name.clone(),
        kind: a.kind.into(),
        features: a.features,
        hash_bits: a.hash_bits,
        classes: a.classes,
        hidden: a.hidden,
        factors: a.factors,
        optimizer: OptimizerSpec {
            kind: a.optimizer.map_or(OptimizerKind::default_for(a.kind.into(), a.features, a.hash_bits), Into::into),
            lr: a.lr.unwrap_or(0.0),
            momentum: a.momentum.unwrap_or(0.0),
            beta1: a.beta1.unwrap_or(0.0),
            beta2: a.beta2.unwrap_or(0.0),
            eps: a.eps.unwrap_or(0.0),
            l1: a.l1.unwrap_or(0.0),
            l2: a.l2.unwrap_or(0.0),
        },
        init: InitSpec { seed: a.init_seed, scale: a.init_scale },
        ema_decay: a.ema_decay,
        commit: CommitPolicy {
            every_updates: a.commit_every_updates,
            every_secs: a.commit_every_secs,
            keep_last: a.keep_last,
        },
        consistency,
        staleness,
        partitions: a.partitions.unwrap_or(0),
        partition: 0,
    })
}

pub async fn run(a: ModelArgs) -> Result<()> {
    let (server, json) = (&a.conn.to, a.conn.json);
    match a.cmd {
        ModelCmd::Predict(p) => crate::worker_cmd::predict(p, server).await,
        ModelCmd::Plot(p) => crate::eval_cmd::plot(p, server, json).await,
        ModelCmd::Create(args) => create(&mut connect(server).await?, &args, json).await,
        ModelCmd::List => list(&mut connect(server).await?, json).await,
        ModelCmd::Show { name } => show(&mut connect(server).await?, &name, json).await,
        ModelCmd::Delete { name } => delete(&mut connect(server).await?, &name, json).await,
        ModelCmd::Commit { name, reason } => commit(&mut connect(server).await?, &name, &reason, json).await,
        ModelCmd::Versions { name } => versions(&mut connect(server).await?, &name, json).await,
        ModelCmd::Tag { name, version, label } => tag(&mut connect(server).await?, &name, version, &label, json).await,
        ModelCmd::Rollback { name, to, reason } => {
            rollback(&mut connect(server).await?, &name, to, &reason, json).await
        }
        ModelCmd::Export { name, version, out, optimizer_state } => {
            export(&mut connect(server).await?, &name, version, &out, optimizer_state, json).await
        }
        ModelCmd::Import { name, from } => import(&mut connect(server).await?, &name, &from, json).await,
        ModelCmd::Watch { name, after } => watch(&mut connect(server).await?, name.as_deref(), after, json).await,
    }
}

async fn connect(server: &ServerConn) -> Result<Client> {
    server.connect().await
}

async fn create(c: &mut Client, a: &CreateArgs, json: bool) -> Result<()> {
    let cols = a.columns.columns()?;
    let signature = if cols.is_empty() {
        None
    } else if cols.label.is_none() || (cols.numeric.is_empty() && cols.categorical.is_empty()) {
        bail!("to record the model's columns at create, give --label and the --numeric and/or --categorical columns (or leave them all to the first worker)");
    } else {
        let format = if a.columns.format() == Some(accrete_ingest::Format::Libsvm) { "libsvm" } else { "csv" };
        Some(accrete_core::InputSignature { format: format.into(), ..cols.signature_as_named() })
    };
    let wanted = spec(a)?;
    let info = match c.create_model(&wanted, signature.as_ref()).await {
        Err(accrete_client::ClientError::AlreadyExists(_)) if a.if_absent => {
            let info = c.model_info(&a.name).await?;
            let differs = spec_differences(&wanted, &info.spec);
            if !differs.is_empty() {
                bail!(
                    "model {:?} exists with a different spec ({}); --if-absent only accepts the same one",
                    a.name,
                    differs.join(", ")
                );
            }
            if !json {
                println!("model {} exists with this spec: nothing created (--if-absent)", a.name);
            }
            info
        }
        r => r?,
    };
    print_model(&info, json);
    Ok(())
}

/// The fields in which an existing model's spec is not the one asked for (hyper-parameters
/// compared with their defaults filled in; the initial weights are not compared).
fn spec_differences(wanted: &ModelSpec, have: &ModelSpec) -> Vec<&'static str> {
    let w = ModelSpec { optimizer: wanted.optimizer.with_defaults(), ..wanted.clone() };
    let checks: [(&'static str, bool); 10] = [
        ("kind", w.kind == have.kind),
        ("features", w.features == have.features),
        ("hash_bits", w.hash_bits == have.hash_bits),
        ("classes", w.classes == have.classes),
        ("hidden", w.hidden == have.hidden),
        ("factors", w.factors == have.factors),
        ("optimizer", w.optimizer == have.optimizer),
        ("ema_decay", w.ema_decay == have.ema_decay),
        ("commit", w.commit == have.commit),
        ("consistency", (w.consistency, w.staleness) == (have.consistency, have.staleness)),
    ];
    checks.into_iter().filter(|(_, same)| !same).map(|(name, _)| name).collect()
}

async fn list(c: &mut Client, json: bool) -> Result<()> {
    let models = c.list_models().await?;
    if json {
        println!("{}", serde_json::Value::Array(models.iter().map(output::model_json).collect()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.spec.name.clone(),
                m.spec.kind.as_str().into(),
                m.parameters.to_string(),
                m.spec.optimizer.kind.as_str().into(),
                m.head_version.to_string(),
                m.versions.to_string(),
                m.uncommitted_updates.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "PARAMETERS", "OPTIMIZER", "HEAD", "VERSIONS", "UNCOMMITTED"], &rows);
    Ok(())
}

async fn show(c: &mut Client, name: &str, json: bool) -> Result<()> {
    let info = c.model_info(name).await?;
    let versions = c.versions(name).await?;
    let best = best_version(&info, &versions);
    if json {
        let mut j = output::model_json(&info);
        j["best"] = best
            .map_or(serde_json::Value::Null, |(v, m, x)| serde_json::json!({"version": v, "metric": m, "value": x}));
        println!("{j}");
    } else {
        print_model(&info, false);
        match best {
            Some((v, m, x)) => println!("best version {v}: {m} {x:.4}"),
            None => println!("no version scored yet (run accrete evaluator)"),
        }
    }
    Ok(())
}

async fn delete(c: &mut Client, name: &str, json: bool) -> Result<()> {
    let n = c.delete_model(name).await?;
    if json {
        println!("{}", serde_json::json!({"name": name, "versions_dropped": n}));
    } else {
        println!("deleted model {name} ({n} versions)");
    }
    Ok(())
}

async fn commit(c: &mut Client, name: &str, reason: &str, json: bool) -> Result<()> {
    let (v, created) = c.commit(name, reason).await?;
    if json {
        let mut j = output::version_json(name, &v);
        j["created"] = serde_json::json!(created);
        println!("{j}");
    } else if created {
        println!(
            "committed {name} version {} ({} chunks, {} bytes written)",
            v.version, v.chunks_written, v.bytes_written
        );
    } else {
        println!("nothing to commit: {name} is at version {}", v.version);
    }
    Ok(())
}

async fn versions(c: &mut Client, name: &str, json: bool) -> Result<()> {
    let vs = c.versions(name).await?;
    output::print_versions(name, &vs, json);
    Ok(())
}

async fn tag(c: &mut Client, name: &str, version: u64, label: &str, json: bool) -> Result<()> {
    let v = c.tag(name, version, label).await?;
    print_version(name, &v, json, "tagged");
    Ok(())
}

async fn rollback(c: &mut Client, name: &str, to: u64, reason: &str, json: bool) -> Result<()> {
    let v = c.rollback(name, to, reason).await?;
    print_version(name, &v, json, "rolled back: new head");
    Ok(())
}

async fn export(
    c: &mut Client,
    name: &str,
    version: Option<u64>,
    out: &std::path::Path,
    optimizer_state: bool,
    json: bool,
) -> Result<()> {
    let v = safetensors::export(c, name, version, optimizer_state, out).await?;
    // A head export holds the newest version, not the live state: say when they differ.
    let behind = match version {
        None => {
            c.model_info(name).await.ok().filter(|m| m.head_version == v.version).map_or(0, |m| m.uncommitted_updates)
        }
        Some(_) => 0,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"model": name, "version": v.version, "out": out, "uncommitted_updates": behind})
        );
    } else {
        println!("exported {name} version {} to {} (safetensors)", v.version, out.display());
    }
    if behind > 0 {
        eprintln!(
            "note: the live state of {name} is {behind} updates past version {}, which is what was exported; \
             `accrete model commit {name}` makes them a version to export",
            v.version
        );
    }
    Ok(())
}

async fn import(c: &mut Client, name: &str, from: &std::path::Path, json: bool) -> Result<()> {
    let v = safetensors::import(c, name, from).await?;
    print_version(name, &v, json, "imported: new head");
    Ok(())
}

async fn watch(c: &mut Client, name: Option<&str>, after: Option<u64>, json: bool) -> Result<()> {
    let mut events = c.watch(name, after).await?;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let (v, kind) = (&ev.version, ev.kind.as_str());
        if json {
            let mut j = output::version_json(&ev.model, v);
            j["event"] = serde_json::json!(kind);
            println!("{j}");
        } else {
            println!("{kind} {} version {} ({})", ev.model, v.version, v.reason);
        }
    }
    Ok(())
}

/// The best retained version by the model's primary metric: (version, metric, value).
fn best_version(info: &ModelInfo, versions: &[VersionRecord]) -> Option<(u64, &'static str, f64)> {
    let metric = primary_metric(&ModelView::of(&info.spec).dims);
    best_by(metric, versions.iter().map(|v| (v.version, &v.metrics))).map(|(v, x)| (v, metric, x))
}

fn print_model(m: &ModelInfo, json: bool) {
    if json {
        println!("{}", output::model_json(m));
        return;
    }
    let s = &m.spec;
    println!("model {}  kind {}  parameters {}", s.name, s.kind.as_str(), m.parameters);
    let c = &s.commit;
    let every = match (c.every_updates, c.every_secs) {
        (0, t) if t <= 0.0 => "on request only".to_string(),
        (0, t) => format!("every {t} s with updates"),
        (n, t) if t <= 0.0 => format!("every {n} updates"),
        (n, t) => format!("every {n} updates or {t} s"),
    };
    let keep = if c.keep_last == 0 { "keep all".to_string() } else { format!("keep the newest {}", c.keep_last) };
    println!("optimizer {}  consistency {}", output::optimizer_line(&s.optimizer), output::consistency_name(s));
    println!("commits {every}, {keep}");
    println!(
        "head version {}  lineage epoch {}  updates {} ({} uncommitted)  versions {}",
        m.head_version, m.lineage_epoch, m.updates, m.uncommitted_updates, m.versions
    );
    match &m.signature {
        Some(s) => println!("columns {s}"),
        None => println!("columns not recorded yet (the first worker records them)"),
    }
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

fn print_version(model: &str, v: &VersionRecord, json: bool, what: &str) {
    if json {
        println!("{}", output::version_json(model, v));
    } else {
        println!(
            "{what} {model} version {} (parent {}, epoch {}): {}",
            v.version,
            v.parent.map_or("-".into(), |p| p.to_string()),
            v.lineage_epoch,
            v.reason
        );
    }
}
