//! `accrete quickstart`: the whole system on the flights data shipped inside the binary.
//! A server (with its dashboard), two workers following shards that grow month by month
//! as the 2013 New York flights "arrive" in time order, an evaluator scoring every version
//! on a window of recent held-out rows, a poisoned shard that the quality gate rolls
//! back on its own ([`crate::poison`]), the quality plots, and a summary.
//!
//! The story it tells is the project's claim: the model that keeps learning beside the
//! same model frozen after January, both scored on each month's held-out rows before the
//! month is learned ([`crate::compare`]), in numbers and on a plot. The model is made
//! with the defaults (no optimizer, rate or consistency chosen).
//!
//! `run` reads as the steps a newcomer watches: start the server, create the model, start
//! the workers and the evaluator, replay the months, finish training, the poisoned shard,
//! plot and summarise.
use crate::compare::{self, MonthScore};
use crate::eval_cmd;
use crate::poison;
use accrete_client::Client;
use accrete_core::scoring;
use accrete_core::VersionRecord;
use accrete_core::{CommitPolicy, EventKind, ModelKind, ModelSpec, OptimizerKind, OptimizerSpec, VersionKind};
use accrete_ingest::{ColumnSpec, OnBadRow};
use accrete_worker::{Progress, WorkerConfig, WorkerError};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MODEL: &str = "flights";
const WORKERS: usize = 2;

/// A row with its position in its month.
type Numbered<'a> = (usize, &'a String);

#[derive(Args)]
pub struct QuickstartArgs {
    /// Where the server keeps its data (created; the quickstart's model is replaced).
    #[arg(long, default_value = "accrete-quickstart")]
    data_dir: PathBuf,
    /// Pause between months of arriving data.
    #[arg(long, default_value_t = 250)]
    month_ms: u64,
}

fn columns() -> Result<ColumnSpec> {
    Ok(ColumnSpec {
        label: Some("arr_delay>15".parse().map_err(anyhow::Error::msg)?),
        numeric: vec![],
        categorical: "carrier,origin,dest,month,day,hour,tailnum,flight".split(',').map(String::from).collect(),
        cross: vec![("carrier".into(), "hour".into()), ("origin".into(), "dest".into())],
    })
}

/// The labelled flights rows in time order, grouped by month.
fn months() -> Result<(String, Vec<Vec<String>>)> {
    let crate::datasets::Rows { header, rows } = crate::datasets::flights()?;
    let month = header.split(',').position(|c| c == "month").context("no month column")?;
    let mut by_month: Vec<Vec<String>> = vec![Vec::new(); 12];
    for line in rows {
        let m: usize = line.split(',').nth(month).and_then(|m| m.parse().ok()).unwrap_or(1);
        by_month[m.clamp(1, 12) - 1].push(line);
    }
    Ok((header, by_month))
}

fn append(path: &Path, lines: &[&String]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).with_context(|| path.display().to_string())?;
    let mut buf = String::with_capacity(lines.len() * 120);
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes())?;
    Ok(())
}

/// A stop signal: `stop(&rx)` resolves once `true` is sent.
pub(crate) fn stop(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The server, running in this process with its dashboard.
struct Server {
    url: String,
    dashboard: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Result<(), accrete_server::ServerError>>,
}

async fn start_server(dir: &Path) -> Result<Server> {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", grpc.local_addr()?);
    let dashboard = format!("http://{}/", http.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = accrete_server::ServerConfig::new(dir.join("server"));
    let task = tokio::spawn(accrete_server::serve(config, grpc, Some(http), async {
        let _ = stopped.await;
    }));
    Ok(Server { url, dashboard, stop, task })
}

/// The quickstart's model, replacing one left by an earlier run.
async fn create_model(c: &mut Client) -> Result<()> {
    if c.model_info(MODEL).await.is_ok() {
        c.delete_model(MODEL).await?;
    }
    let mut spec = ModelSpec::new(MODEL, ModelKind::Logistic);
    spec.hash_bits = 20;
    // the defaults, as `accrete model create` makes them
    spec.optimizer = OptimizerSpec::new(OptimizerKind::default_for(ModelKind::Logistic, 0, spec.hash_bits), 0.0);
    spec.commit = CommitPolicy { every_updates: 25, every_secs: 0.0, keep_last: 0 };
    c.create_model(&spec, None).await?;
    println!("model {MODEL}: logistic regression over hashed carrier, origin, dest, month, day, hour, tailnum, flight, carrier×hour, origin×dest; the defaults (normalized updates row by row, asp); a version every 25 pushes\n");
    Ok(())
}

/// Files that grow as the months arrive: the workers' shards and a holdout.
struct Stream {
    shards: Vec<PathBuf>,
    holdout: PathBuf,
    header: String,
}

fn prepare_stream(dir: &Path, header: &str) -> Result<Stream> {
    std::fs::create_dir_all(dir)?;
    let shards: Vec<PathBuf> = (0..WORKERS).map(|i| dir.join(format!("shard-{i}.csv"))).collect();
    let holdout = dir.join("holdout.csv");
    for p in shards.iter().chain(std::iter::once(&holdout)) {
        std::fs::write(p, format!("{header}\n"))?;
    }
    Ok(Stream { shards, holdout, header: header.to_string() })
}

/// Workers following their shards until `stop_rx` says so.
async fn start_workers(
    url: &str,
    stream: &Stream,
    stop_rx: &watch::Receiver<bool>,
) -> Result<(Vec<Arc<Progress>>, Vec<JoinHandle<Result<accrete_worker::Report, WorkerError>>>)> {
    let progress: Vec<Arc<Progress>> = (0..WORKERS).map(|_| Default::default()).collect();
    let mut workers = Vec::new();
    for (i, shard) in stream.shards.iter().enumerate() {
        let config = WorkerConfig {
            model: MODEL.into(),
            shard: shard.clone(),
            format: None,
            columns: columns()?,
            batch: 500,
            per_row: true,
            epochs: 1,
            follow: true,
            worker_id: format!("worker-{i}"),
            on_bad_row: OnBadRow::Skip,
            progressive_out: None,
            heartbeat_server: None,
        };
        workers.push(tokio::spawn(accrete_worker::run(
            config,
            connect(url).await?,
            stop(stop_rx),
            progress[i].clone(),
        )));
    }
    Ok((progress, workers))
}

/// The evaluator, following the holdout and scoring on its 5,000 most recent rows.
async fn start_evaluator(
    url: &str,
    holdout: &Path,
    stop_rx: &watch::Receiver<bool>,
) -> Result<JoinHandle<Result<accrete_evaluator::Report, accrete_evaluator::EvalError>>> {
    let config = accrete_evaluator::EvaluatorConfig {
        holdout_follow: true,
        window: 5000,
        ..accrete_evaluator::EvaluatorConfig::new(MODEL, holdout, columns()?)
    };
    Ok(tokio::spawn(accrete_evaluator::run(config, connect(url).await?, stop(stop_rx))))
}

/// Appends each month's rows (every fifth to the holdout, the rest dealt to the shards),
/// pausing between months. Once January is learned, its version is tagged as the frozen
/// model; from February on, before a month's rows arrive, the model learned so far and
/// the frozen one are scored on that month's held-out rows. Returns the rows dealt for
/// training and the months' scores.
async fn replay_months(
    c: &mut Client,
    months: &[Vec<String>],
    stream: &Stream,
    pause: Duration,
    progress: &[Arc<Progress>],
) -> Result<(u64, Vec<MonthScore>)> {
    println!(
        "{:<8} {:>10} {:>8}   AUC on the month's held-out rows before it is learned: learning continuously / frozen after January",
        "month", "rows", "trained"
    );
    let (mut train_rows, mut frozen, mut scores) = (0u64, None, Vec::new());
    let next_month = stream.holdout.with_file_name("next-month.csv");
    for (m, rows) in months.iter().enumerate() {
        let (held, train): (Vec<Numbered<'_>>, Vec<Numbered<'_>>) =
            rows.iter().enumerate().partition(|(i, _)| i % 5 == 4);
        let held: Vec<&String> = held.iter().map(|(_, l)| *l).collect();
        let mut line = String::new();
        if let Some(frozen) = frozen {
            // the model as it is when the month arrives, and the frozen one
            trained_all(progress, train_rows).await;
            let (live, _) = c.commit(MODEL, "before the next month").await?;
            std::fs::write(&next_month, format!("{}\n", stream.header))?;
            append(&next_month, &held)?;
            let s = compare::score_month(c, MODEL, &columns()?, &next_month, m + 1, (live.version, frozen)).await?;
            line = format!("{:.4} / {:.4}  ({:+.4})", s.live.0, s.frozen.0, s.live.0 - s.frozen.0);
            scores.push(s);
        }
        append(&stream.holdout, &held)?;
        for (w, shard) in stream.shards.iter().enumerate() {
            let part: Vec<&String> = train.iter().filter(|(i, _)| i % WORKERS == w).map(|(_, l)| *l).collect();
            append(shard, &part)?;
        }
        train_rows += train.len() as u64;
        if m == 0 {
            trained_all(progress, train_rows).await;
            let (v, _) = c.commit(MODEL, "January learned: the frozen model").await?;
            c.tag(MODEL, v.version, "frozen-after-january").await?;
            frozen = Some(v.version);
            line = format!("version {} tagged frozen-after-january", v.version);
        }
        tokio::time::sleep(pause).await;
        let trained: u64 = progress.iter().map(|p| p.rows()).sum();
        println!("{:<8} {:>10} {:>8}   {line}", format!("2013-{:02}", m + 1), rows.len(), trained);
    }
    Ok((train_rows, scores))
}

/// Waits until the workers have trained `rows` rows.
async fn trained_all(progress: &[Arc<Progress>], rows: u64) {
    while progress.iter().map(|p| p.rows()).sum::<u64>() < rows {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The best scored version by AUC.
fn best_by_auc(versions: &[VersionRecord]) -> Option<VersionRecord> {
    let (best, _) = scoring::best_by("auc", versions.iter().map(|v| (v.version, &v.metrics)))?;
    versions.iter().find(|v| v.version == best).cloned()
}

/// The incident: December learned again with every label flipped, its versions made
/// before a gated evaluator reaches them.
async fn incident(
    c: &mut Client,
    url: &str,
    dir: &Path,
    months: &[Vec<String>],
    header: &str,
    holdout: &Path,
) -> Result<poison::Incident> {
    println!("\nan incident: a third worker is fed December's rows again, with every label flipped (a poisoned shard)");
    let december: Vec<&String> = months[11].iter().enumerate().filter(|(i, _)| i % 5 != 4).map(|(_, l)| l).collect();
    let shard = dir.join("poisoned-december.csv");
    poison::flip_labels(header, &december, &shard)?;
    let found = poison::run(url, c, MODEL, &columns()?, holdout, &shard).await?;
    let poisoned: Vec<String> = found.poisoned.iter().map(u64::to_string).collect();
    match found.rollbacks.last() {
        Some(rb) => println!(
            "the gate stopped it: the poisoned versions ({}) are kept in the history, scored, and the head (version {}) holds version {}'s parameters",
            poisoned.join(", "),
            rb.head,
            rb.to
        ),
        None => println!("the gate did not roll the poisoned versions back"),
    }
    Ok(found)
}

fn summary(
    started: Instant,
    dir: &Path,
    holdout: &Path,
    trained: u64,
    versions: &[VersionRecord],
    best: Option<&VersionRecord>,
    (png, frozen_png, scores, incident): (&Path, &Path, &[MonthScore], &poison::Incident),
) {
    let count = |k: VersionKind| versions.iter().filter(|v| v.kind == k).count();
    println!("\n== summary ({:.0} s)", started.elapsed().as_secs_f64());
    println!("rows trained     {trained} by {WORKERS} workers, in time order");
    println!(
        "versions         {} (1 created, {} by the commit policy, {} by commits: January's frozen model, one as each month arrived, workers that finished; {} rollbacks)",
        versions.len(),
        count(VersionKind::Policy),
        count(VersionKind::Manual),
        count(VersionKind::Rollback)
    );
    if let Some(b) = best {
        let m: Vec<String> = ["auc", "logloss", "accuracy"]
            .iter()
            .filter_map(|k| b.metrics.get(*k).map(|x| format!("{k} {x:.4}")))
            .collect();
        println!("best version     {} ({}; on the held-out rows of its time)", b.version, m.join(", "));
    }
    let (live, frozen) = compare::mean_auc(scores);
    println!(
        "continuous       mean AUC {live:.4} over February to December, on each month's held-out rows before it is learned"
    );
    println!(
        "frozen           mean AUC {frozen:.4} for the same model frozen after January (tagged frozen-after-january): learning on is worth {:+.4}",
        live - frozen
    );
    match incident.rollbacks.first() {
        Some(rb) => println!(
            "quality gate     rolled back {} time(s): poisoned version {} failed, version {}'s parameters restored",
            incident.rollbacks.len(),
            rb.after,
            rb.to
        ),
        None => println!("quality gate     rolled nothing back"),
    }
    println!("quality plot     {}", png.display());
    println!("story plot       {} (continuous against frozen)", frozen_png.display());
    println!("data dir         {}", dir.display());
    println!("\nthe server stopped with the quickstart; to look at the model it left behind:");
    println!("  accrete server --data-dir {} --http 127.0.0.1:8080 &", dir.join("server").display());
    println!("  # dashboard: http://127.0.0.1:8080/");
    println!("  accrete model versions {MODEL}");
    println!("  accrete model show {MODEL}");
    println!("  accrete model predict {MODEL} --input {} --label 'arr_delay>15' \\", holdout.display());
    println!("      --categorical carrier,origin,dest,month,day,hour,tailnum,flight --cross carrier:hour,origin:dest");
}

pub async fn run(a: QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    let dir = std::path::absolute(&a.data_dir)?;
    println!("accrete quickstart: 2013 New York flights, predicting arrival delays over 15 minutes");
    println!("data dir {}", dir.display());
    let server = start_server(&dir).await?;
    let mut c = connect(&server.url).await?;
    println!("server on {}; dashboard {}", server.url, server.dashboard);
    create_model(&mut c).await?;

    println!("loading the flights and sorting them by time…");
    let (header, months) = months()?;
    let stream = prepare_stream(&dir.join("stream"), &header)?;
    let (stop_workers, workers_rx) = watch::channel(false);
    let (stop_evaluator, evaluator_rx) = watch::channel(false);
    let (progress, workers) = start_workers(&server.url, &stream, &workers_rx).await?;
    let evaluator = start_evaluator(&server.url, &stream.holdout, &evaluator_rx).await?;
    let table = tokio::spawn(print_scores(connect(&server.url).await?));
    let pause = Duration::from_millis(a.month_ms);
    let (train_rows, scores) = replay_months(&mut c, &months, &stream, pause, &progress).await?;

    // every row trained, the workers stop, a last commit, the evaluator catches up
    println!("\nfinishing: the workers train the last rows, a last commit, the evaluator scores it…");
    trained_all(&progress, train_rows).await;
    let _ = stop_workers.send(true);
    for w in workers {
        w.await??;
    }
    let (last, _) = c.commit(MODEL, "end of stream").await?;
    wait_scored(&mut c).await?;
    let _ = stop_evaluator.send(true);
    evaluator.await??;
    table.abort();

    println!("the stream ended at version {}", last.version);
    let found = incident(&mut c, &server.url, &dir, &months, &header, &stream.holdout).await?;
    let best = best_by_auc(&c.versions(MODEL).await?);
    let png = dir.join("quality.png");
    eval_cmd::plot_to(&mut c, MODEL, None, &png).await?;
    println!("wrote {}", png.display());
    let frozen_png = dir.join("continuous-vs-frozen.png");
    compare::plot(&scores, &frozen_png)?;
    println!("wrote {}", frozen_png.display());
    let versions = c.versions(MODEL).await?;
    let trained: u64 = progress.iter().map(|p| p.rows()).sum();
    summary(started, &dir, &stream.holdout, trained, &versions, best.as_ref(), (&png, &frozen_png, &scores, &found));
    let _ = server.stop.send(());
    server.task.await??;
    Ok(())
}

async fn connect(url: &str) -> Result<Client> {
    Ok(Client::connect(url).await?)
}

/// Waits until every trained version has an AUC (the evaluator runs alongside; version 1,
/// made before any holdout row arrived, has none), at most 10 s, saying so if it gives up.
async fn wait_scored(c: &mut Client) -> Result<()> {
    for _ in 0..200 {
        let versions = c.versions(MODEL).await?;
        if versions.iter().filter(|v| v.updates > 0).all(|v| v.metrics.contains_key("auc")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("(the evaluator has not scored every version after 10 s; going on)");
    Ok(())
}

/// Prints each version as it is scored.
async fn print_scores(mut c: Client) -> Result<()> {
    let mut events = c.watch(Some(MODEL), None).await?;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if ev.kind == EventKind::Scored {
            let v = ev.version;
            println!(
                "         version {:>3} after {:>4} pushes: auc {:.4}  logloss {:.4}",
                v.version,
                v.updates,
                v.metrics.get("auc").copied().unwrap_or(f64::NAN),
                v.metrics.get("logloss").copied().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
