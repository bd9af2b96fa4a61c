//! `accrete quickstart`: the whole system on the flights data shipped inside the binary.
//! A server (with its dashboard), two workers following shards that grow month by month
//! as the 2013 New York flights "arrive" in time order, an evaluator scoring every version
//! on a window of recent held-out rows, a rollback, the quality plot, and a summary.
use crate::eval_cmd;
use accrete_client::Client;
use accrete_proto::v1 as pb;
use accrete_worker::parse::ColumnSpec;
use anyhow::{Context, Result};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const FLIGHTS: &[u8] = include_bytes!("../data/flights.csv.gz");
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
    let mut lines = std::io::BufReader::new(flate2::read::GzDecoder::new(FLIGHTS)).lines();
    let header = lines.next().context("empty flights data")??;
    let cols: Vec<&str> = header.split(',').collect();
    let (delay, month) = (cols.iter().position(|c| *c == "arr_delay"), cols.iter().position(|c| *c == "month"));
    let (delay, month) = (delay.context("no arr_delay column")?, month.context("no month column")?);
    let mut by_month: Vec<Vec<String>> = vec![Vec::new(); 12];
    for line in lines {
        let line = line?;
        let f: Vec<&str> = line.split(',').collect();
        if f.get(delay).is_none_or(|v| v.is_empty() || *v == "NA") {
            continue;
        }
        let m: usize = f.get(month).and_then(|m| m.parse().ok()).unwrap_or(1);
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

pub async fn run(a: QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    let dir = std::path::absolute(&a.data_dir)?;
    let stream = dir.join("stream");
    std::fs::create_dir_all(&stream)?;
    println!("accrete quickstart: 2013 New York flights, predicting arrival delays over 15 minutes");
    println!("data dir {}", dir.display());

    // server, with its dashboard
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", grpc.local_addr()?);
    let dash = format!("http://{}/", http.local_addr()?);
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = accrete_server::ServerConfig::new(dir.join("server"));
    let server = tokio::spawn(accrete_server::serve(config, grpc, Some(http), async {
        let _ = stopped.await;
    }));
    let mut c = connect(&url).await?;
    println!("server on {url}; dashboard {dash}");
    if c.models.get_model_info(pb::ModelRef { name: MODEL.into() }).await.is_ok() {
        c.models.delete_model(pb::ModelRef { name: MODEL.into() }).await?;
    }
    let spec = pb::ModelSpec {
        name: MODEL.into(),
        kind: pb::ModelKind::Logistic as i32,
        hash_bits: 20,
        optimizer: Some(pb::OptimizerSpec { kind: pb::OptimizerKind::Adagrad as i32, lr: 0.1, ..Default::default() }),
        commit: Some(pb::CommitPolicy { every_updates: 25, every_secs: 0.0, keep_last: 0 }),
        ..Default::default()
    };
    c.models.create_model(pb::CreateModelRequest { spec: Some(spec) }).await?;
    println!("model {MODEL}: logistic regression over hashed carrier, origin, dest, month, day, hour, tailnum, flight, carrier×hour, origin×dest; AdaGrad; a version every 25 pushes\n");

    // data files that grow: two training shards and a holdout (every fifth row)
    let (header, months) = months()?;
    let shards: Vec<PathBuf> = (0..WORKERS).map(|i| stream.join(format!("shard-{i}.csv"))).collect();
    let holdout = stream.join("holdout.csv");
    for p in shards.iter().chain(std::iter::once(&holdout)) {
        std::fs::write(p, format!("{header}\n"))?;
    }

    // workers follow their shards; the evaluator follows the holdout, window of 5,000 rows
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (stop_eval_tx, stop_eval_rx) = tokio::sync::watch::channel(false);
    let stop = |rx: &tokio::sync::watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let progress: Vec<Arc<accrete_worker::Progress>> = (0..WORKERS).map(|_| Default::default()).collect();
    let mut workers = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let config = accrete_worker::WorkerConfig {
            model: MODEL.into(),
            shard: shard.clone(),
            format: None,
            columns: columns()?,
            batch: 500,
            epochs: 1,
            follow: true,
            worker_id: format!("worker-{i}"),
            on_bad_row: accrete_worker::OnBadRow::Skip,
            progressive_out: None,
            heartbeat_server: None,
        };
        workers.push(tokio::spawn(accrete_worker::run(
            config,
            connect(&url).await?,
            stop(&stop_rx),
            progress[i].clone(),
        )));
    }
    let ev_config = accrete_evaluator::EvaluatorConfig {
        model: MODEL.into(),
        holdout: holdout.clone(),
        format: None,
        columns: columns()?,
        once: false,
        gate: None,
        dry_run: false,
        gate_window: 10,
        holdout_follow: true,
        window: 5000,
    };
    let evaluator = tokio::spawn(accrete_evaluator::run(ev_config, connect(&url).await?, stop(&stop_eval_rx)));
    let table = tokio::spawn(print_scores(connect(&url).await?));

    println!(
        "{:<8} {:>10} {:>8}   versions are scored on the 5,000 most recent held-out rows as they arrive",
        "month", "rows", "trained"
    );
    let mut train_rows = 0u64;
    for (m, rows) in months.iter().enumerate() {
        let (held, train): (Vec<Numbered<'_>>, Vec<Numbered<'_>>) =
            rows.iter().enumerate().partition(|(i, _)| i % 5 == 4);
        append(&holdout, &held.iter().map(|(_, l)| *l).collect::<Vec<_>>())?;
        for (w, shard) in shards.iter().enumerate() {
            let part: Vec<&String> = train.iter().filter(|(i, _)| i % WORKERS == w).map(|(_, l)| *l).collect();
            append(shard, &part)?;
        }
        train_rows += train.len() as u64;
        tokio::time::sleep(Duration::from_millis(a.month_ms)).await;
        let trained: u64 = progress.iter().map(|p| p.rows()).sum();
        println!("{:<8} {:>10} {:>8}   (month {} arrived)", format!("2013-{:02}", m + 1), rows.len(), trained, m + 1);
    }
    while progress.iter().map(|p| p.rows()).sum::<u64>() < train_rows {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    for w in workers {
        w.await??;
    }
    let last =
        c.models.commit(pb::CommitRequest { model: MODEL.into(), reason: "end of stream".into() }).await?.into_inner();
    // let the evaluator score the last versions before it stops
    wait_scored(&mut c).await?;
    let _ = stop_eval_tx.send(true);
    evaluator.await??;
    table.abort();

    // a rollback, as an operator would do after a bad stretch
    let versions = c.models.list_versions(pb::ModelRef { name: MODEL.into() }).await?.into_inner().versions;
    let best = versions
        .iter()
        .filter(|v| v.metrics.contains_key("auc"))
        .max_by(|a, b| a.metrics["auc"].total_cmp(&b.metrics["auc"]))
        .cloned();
    let head = last.version.map_or(0, |v| v.version);
    println!();
    if let Some(b) = &best {
        let rb = c
            .models
            .rollback(pb::RollbackRequest {
                model: MODEL.into(),
                to_version: b.version,
                reason: "quickstart demo".into(),
            })
            .await?
            .into_inner();
        println!(
            "rollback: version {} now holds version {}'s parameters (parent {head}, lineage epoch {}); versions 1..{head} are kept, and pushes computed before the rollback are refused",
            rb.version, b.version, rb.lineage_epoch
        );
    }
    let png = dir.join("quality.png");
    eval_cmd::plot_to(&mut c, MODEL, None, &png).await?;
    let versions = c.models.list_versions(pb::ModelRef { name: MODEL.into() }).await?.into_inner().versions;
    let trained: u64 = progress.iter().map(|p| p.rows()).sum();

    println!("\n== summary ({:.0} s)", started.elapsed().as_secs_f64());
    println!("rows trained     {trained} by {WORKERS} workers, in time order");
    println!(
        "versions         {} (1 created, {} by the commit policy, 1 at the end of the stream, {} rollback)",
        versions.len(),
        versions.iter().filter(|v| v.reason == "policy").count(),
        versions.iter().filter(|v| v.reason.starts_with("rollback")).count()
    );
    if let Some(b) = &best {
        let m: Vec<String> = ["auc", "logloss", "accuracy"]
            .iter()
            .filter_map(|k| b.metrics.get(*k).map(|x| format!("{k} {x:.4}")))
            .collect();
        println!("best version     {} ({}; on the held-out rows of its time)", b.version, m.join(", "));
    }
    println!("quality plot     {}", png.display());
    println!("data dir         {}", dir.display());
    println!("\nto query the model it left behind:");
    println!("  accrete server --data-dir {} &", dir.join("server").display());
    println!("  accrete model versions {MODEL}");
    println!("  accrete model show {MODEL}");
    println!("  accrete model predict {MODEL} --input {} --label 'arr_delay>15' \\", holdout.display());
    println!("      --categorical carrier,origin,dest,month,day,hour,tailnum,flight --cross carrier:hour,origin:dest");
    let _ = stop_server.send(());
    server.await??;
    Ok(())
}

async fn connect(url: &str) -> Result<Client> {
    Ok(Client::connect(url).await?)
}

/// Waits until every version has an AUC (the evaluator runs alongside).
async fn wait_scored(c: &mut Client) -> Result<()> {
    for _ in 0..200 {
        let vs = c.models.list_versions(pb::ModelRef { name: MODEL.into() }).await?.into_inner().versions;
        if vs.iter().all(|v| v.metrics.contains_key("auc")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Prints each version as it is scored.
async fn print_scores(mut c: Client) -> Result<()> {
    let mut s =
        c.models.watch_versions(pb::WatchRequest { model: MODEL.into(), after_version: None }).await?.into_inner();
    while let Some(ev) = s.next().await {
        let ev = ev?;
        if ev.kind == pb::VersionEventKind::Scored as i32 {
            if let Some(v) = ev.version {
                println!(
                    "         version {:>3} after {:>4} pushes: auc {:.4}  logloss {:.4}",
                    v.version,
                    v.updates,
                    v.metrics.get("auc").copied().unwrap_or(f64::NAN),
                    v.metrics.get("logloss").copied().unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}
