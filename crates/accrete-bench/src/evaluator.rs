//! `accrete bench evaluator`: versions scored per second.
use crate::server::{create, spawn_server, spec};
use accrete_client::Client;
use accrete_proto::v1 as pb;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Trains a 2^20-row logistic model on flights rows with a commit every few pushes, then
/// times `accrete evaluator --once` logic over the versions on a 50,000-row holdout.
pub(crate) async fn evaluator_bench(versions: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let flights = crate::flights();
    let (train, holdout) = (tmp.path().join("train.csv"), tmp.path().join("holdout.csv"));
    {
        let mut r = accrete_ingest::source::ShardReader::open(&flights)?;
        let (mut tr, mut ho) = (std::fs::File::create(&train)?, std::fs::File::create(&holdout)?);
        use std::io::Write;
        let mut line = Vec::new();
        let mut n = 0usize;
        while r.next_line(&mut line)? {
            line.push(b'\n');
            if n == 0 {
                tr.write_all(&line)?;
                ho.write_all(&line)?;
            } else if n <= 50_000 {
                ho.write_all(&line)?;
            } else {
                tr.write_all(&line)?;
            }
            n += 1;
        }
    }
    let (_p, url, mut c) = spawn_server(&tmp.path().join("data")).await?;
    let mut s = spec("ev", 0, pb::OptimizerKind::Adagrad, 0);
    s.kind = pb::ModelKind::Logistic as i32;
    s.hash_bits = 20;
    if let Some(o) = s.optimizer.as_mut() {
        o.lr = 0.1;
    }
    // ~277k training rows in batches of 1000: a commit every 277/versions pushes
    s.commit = Some(pb::CommitPolicy { every_updates: (277 / versions.max(1)).max(1), ..Default::default() });
    create(&mut c, s).await?;
    let columns = accrete_ingest::ColumnSpec {
        label: Some("arr_delay>15".parse().map_err(anyhow::Error::msg)?),
        numeric: vec![],
        categorical: "carrier,origin,dest,month,day,hour,tailnum,flight".split(',').map(String::from).collect(),
        cross: vec![("carrier".into(), "hour".into()), ("origin".into(), "dest".into())],
    };
    let wc = accrete_worker::WorkerConfig {
        model: "ev".into(),
        shard: train,
        format: None,
        columns: columns.clone(),
        batch: 1000,
        per_row: true,
        epochs: 1,
        follow: false,
        worker_id: "bench".into(),
        on_bad_row: accrete_ingest::OnBadRow::Skip,
        progressive_out: None,
        heartbeat_server: None,
    };
    accrete_worker::run(wc, Client::connect(&url).await?, std::future::pending(), Default::default()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ec = accrete_evaluator::EvaluatorConfig {
        once: true,
        ..accrete_evaluator::EvaluatorConfig::new("ev", &holdout, columns)
    };
    // loading the holdout is part of a start, not of scoring: time a run with nothing
    // to score first, then the real one
    let t = Instant::now();
    let r = accrete_evaluator::run(ec, Client::connect(&url).await?, std::future::pending()).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "evaluator: {} versions of a 2^20-row logistic model scored on a 50,000-row holdout in {secs:.2} s (holdout parsing included): {:.1} versions/s (goal: keep up with a commit per second)",
        r.scored.len(),
        r.scored.len() as f64 / secs
    );
    Ok(())
}
