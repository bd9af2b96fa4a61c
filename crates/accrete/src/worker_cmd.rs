//! `accrete worker`, `accrete split` and `accrete model predict`: the data-facing commands.
use crate::conn::ServerConn;
use accrete_core::features::Batch;
use accrete_core::view::ModelView;
use accrete_ingest::{columns_for, ColumnSpec, Format, LabelSpec, OnBadRow, RowSource, Target};
use accrete_worker::WorkerConfig;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Csv,
    Libsvm,
}

/// How rows become features (shared by the worker, predict and the evaluator).
#[derive(Args, Clone)]
pub struct DataArgs {
    /// Data format (default: from the file name, `.libsvm`/`.svm` or CSV).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Label column, optionally binarised: `y`, `arr_delay>15`, `class=3`.
    #[arg(long)]
    pub label: Option<String>,
    /// Numeric columns (dense features); with --categorical, only named columns are used.
    #[arg(long, value_delimiter = ',')]
    pub numeric: Vec<String>,
    /// Categorical columns, hashed as `column=value`.
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
    /// Hashed crosses of two columns, `a:b,c:d` (like Vowpal Wabbit's -q).
    #[arg(long, value_delimiter = ',')]
    pub cross: Vec<String>,
}

impl DataArgs {
    pub fn columns(&self) -> Result<ColumnSpec> {
        let label = match &self.label {
            Some(l) => Some(l.parse::<LabelSpec>().map_err(|e| anyhow::anyhow!("--label: {e}"))?),
            None => None,
        };
        let cross = self
            .cross
            .iter()
            .map(|c| {
                c.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("--cross {c:?}: expected a:b"))
            })
            .collect::<Result<_>>()?;
        Ok(ColumnSpec { label, numeric: self.numeric.clone(), categorical: self.categorical.clone(), cross })
    }

    pub fn format(&self) -> Option<Format> {
        self.format.map(|f| match f {
            FormatArg::Csv => Format::Csv,
            FormatArg::Libsvm => Format::Libsvm,
        })
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Model to train.
    #[arg(long, env = "ACCRETE_MODEL")]
    model: String,
    /// Shard: a file (plain or .gz) or a directory of part files read in name order.
    #[arg(long, env = "ACCRETE_SHARD")]
    shard: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Rows per mini-batch (one pull and one push each) [default: 1000 for a model trained
    /// row by row (linear, logistic, softmax), 100 for one trained by batch gradients
    /// (FM, MLP, or --updates batch): there a batch is one optimizer step].
    #[arg(long)]
    batch: Option<usize>,
    /// How a batch trains: `rows` — row by row on the pulled copy, by the model's own
    /// optimizer, pushing what changed (linear, logistic, softmax); `batch` — one gradient
    /// summed over the rows, applied by the server (FM and MLP always train so).
    #[arg(long, value_enum, default_value = "rows")]
    updates: UpdatesArg,
    /// Passes over the shard (ignored with --follow, which reads on as rows arrive).
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Write each row's label and its prediction before training on it (progressive
    /// validation), tab-separated, to this file (several classes: each class's
    /// probability, comma-separated).
    #[arg(long)]
    progressive_out: Option<PathBuf>,
    /// With a directory --shard: train on its N-th file in name order (e.g. a Kubernetes
    /// Indexed Job's completion index over the files `accrete split` wrote).
    #[arg(long, env = "ACCRETE_SHARD_INDEX")]
    shard_index: Option<usize>,
    /// Keep reading rows appended to the shard (and new part files) until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Worker id recorded with versions (default: the shard's file name).
    #[arg(long, env = "ACCRETE_WORKER_ID")]
    worker_id: Option<String>,
    /// What to do with a bad row: skip it (counted, first ones logged) or stop.
    #[arg(long, value_enum, default_value = "skip")]
    on_bad_row: BadRowArg,
    /// Print the closing summary as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerConn,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum UpdatesArg {
    Rows,
    Batch,
}

#[derive(Clone, Copy, ValueEnum)]
enum BadRowArg {
    Skip,
    Fail,
}

pub async fn worker(mut a: WorkerArgs) -> Result<()> {
    if let Some(i) = a.shard_index {
        let parts = accrete_ingest::source::parts_of(&a.shard).with_context(|| a.shard.display().to_string())?;
        if !a.shard.is_dir() {
            bail!("--shard-index needs a directory --shard, got {}", a.shard.display());
        }
        a.shard = parts
            .get(i)
            .cloned()
            .with_context(|| format!("--shard-index {i}: {} holds only {} files", a.shard.display(), parts.len()))?;
    }
    let worker_id = a.worker_id.clone().unwrap_or_else(|| {
        a.shard.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "worker".into())
    });
    let config = WorkerConfig {
        model: a.model.clone(),
        shard: a.shard.clone(),
        format: a.data.format(),
        columns: a.data.columns()?,
        batch: a.batch.unwrap_or(0),
        per_row: a.updates == UpdatesArg::Rows,
        epochs: a.epochs,
        follow: a.follow,
        worker_id: worker_id.clone(),
        progressive_out: a.progressive_out.clone(),
        heartbeat_server: Some(a.server.server.clone()),
        on_bad_row: match a.on_bad_row {
            BadRowArg::Skip => OnBadRow::Skip,
            BadRowArg::Fail => OnBadRow::Fail,
        },
    };
    let client = a.server.connect().await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let progress = std::sync::Arc::new(accrete_worker::Progress::default());
    let display = tokio::spawn(show_progress(progress.clone(), worker_id.clone()));
    let r = accrete_worker::run(config, client, shutdown, progress).await;
    display.abort();
    let r = r?;
    let per_row = if r.rows > 0 { r.loss_sum / r.rows as f64 } else { f64::NAN };
    if a.json {
        let j = serde_json::json!({
            "model": a.model, "worker": worker_id, "rows": r.rows, "seconds": r.seconds, "pushes": r.pushes,
            "progressive_loss": if per_row.is_finite() { serde_json::json!(per_row) } else { serde_json::Value::Null },
            "bad_rows": r.bad_rows, "unlabelled_rows": r.unlabelled_rows, "committed_version": r.committed_version,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "worker {worker_id}: {} rows in {:.2} s ({:.0} rows/s), {} pushes, progressive loss {per_row:.4}, {} bad rows skipped, {} rows without a label; committed in version {}",
        r.rows,
        r.seconds,
        r.rows as f64 / r.seconds.max(1e-9),
        r.pushes,
        r.bad_rows,
        r.unlabelled_rows,
        r.committed_version
    );
    Ok(())
}

/// A progress bar on a terminal; a log line every 10 s otherwise.
async fn show_progress(p: std::sync::Arc<accrete_worker::Progress>, worker: String) {
    use std::io::IsTerminal;
    let started = std::time::Instant::now();
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        loop {
            let rows = p.rows();
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{worker}: {rows} rows, {rate:.0} rows/s, recent loss {:.4}", p.recent_loss()));
            bar.tick();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    } else {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let rows = p.rows();
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(worker = %worker, rows, rows_per_s = rate as u64, recent_loss = p.recent_loss(), "progress");
        }
    }
}

#[derive(Args)]
pub struct SplitArgs {
    /// Data file (plain or .gz); a CSV header is kept in every shard.
    #[arg(long)]
    input: PathBuf,
    /// How many shards to deal the rows into.
    #[arg(long)]
    shards: usize,
    /// Output directory (created); shards are part-00000.<ext>, …
    #[arg(long)]
    out: PathBuf,
    /// Data format (default: from the file name, `.libsvm`/`.svm` or CSV): a CSV header
    /// goes to every shard.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// How rows go to shards: `contiguous` — each shard is one stretch of the input, in
    /// order (a file in time order gives each worker a stretch of time: every row it
    /// scores comes right after the rows it learned, as in one stream); `round-robin` —
    /// row i to shard i mod N, so each shard spans the whole input.
    #[arg(long, value_enum, default_value_t = Deal::Contiguous)]
    deal: Deal,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// How `split` deals rows to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deal {
    Contiguous,
    RoundRobin,
}

/// The data rows of a file (a CSV header not counted), for a contiguous split.
fn count_rows(input: &std::path::Path, csv: bool) -> Result<usize> {
    let mut reader =
        accrete_ingest::source::ShardReader::open(input).with_context(|| format!("{}", input.display()))?;
    let (mut line, mut n) = (Vec::new(), 0usize);
    while reader.next_line(&mut line).with_context(|| format!("{}", input.display()))? {
        n += usize::from(!(csv && reader.pos.line == 1));
    }
    Ok(n)
}

/// Deals rows into N shards: contiguous stretches (the default) or round-robin.
pub fn split(a: SplitArgs) -> Result<()> {
    if a.shards == 0 {
        bail!("--shards must be at least 1");
    }
    let csv = match a.format {
        Some(FormatArg::Csv) => true,
        Some(FormatArg::Libsvm) => false,
        None => Format::guess(&a.input) == Format::Csv,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let name = a.input.file_name().map(|n| n.to_string_lossy().trim_end_matches(".gz").to_string()).unwrap_or_default();
    let ext = std::path::Path::new(&name)
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_else(|| "txt".into());
    let mut outs = (0..a.shards)
        .map(|i| {
            let p = a.out.join(format!("part-{i:05}.{ext}"));
            std::fs::File::create(&p)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .with_context(|| format!("{}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    // contiguous: shard i holds rows [i·total/N, (i+1)·total/N)
    let total = match a.deal {
        Deal::Contiguous => count_rows(&a.input, csv)?,
        Deal::RoundRobin => 0,
    };
    let shard_of = |n: usize| match a.deal {
        Deal::Contiguous => ((n as u128 * a.shards as u128) / total.max(1) as u128) as usize,
        Deal::RoundRobin => n % a.shards,
    };
    let mut reader =
        accrete_ingest::source::ShardReader::open(&a.input).with_context(|| format!("{}", a.input.display()))?;
    let mut line = Vec::new();
    let mut n = 0usize;
    while reader.next_line(&mut line).with_context(|| format!("{}", a.input.display()))? {
        line.push(b'\n');
        if csv && reader.pos.line == 1 {
            for o in &mut outs {
                o.write_all(&line)?;
            }
            continue;
        }
        outs[shard_of(n).min(a.shards - 1)].write_all(&line)?;
        n += 1;
    }
    for o in &mut outs {
        o.flush()?;
    }
    if a.json {
        println!("{}", serde_json::json!({"input": a.input, "rows": n, "shards": a.shards, "out": a.out}));
    } else {
        println!("split {n} rows of {} into {} shards in {}", a.input.display(), a.shards, a.out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    /// The model to predict with.
    name: String,
    /// Rows to score (CSV or LIBSVM; the label column may be absent).
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Score with this version instead of the live parameters.
    #[arg(long)]
    version: Option<u64>,
}

/// Prints one prediction per input row: a probability (binary), a class (multi-class) or
/// a value (regression).
pub async fn predict(a: PredictArgs, server: &ServerConn) -> Result<()> {
    let mut c = server.connect().await?;
    let info = c.model_info(&a.name).await?;
    let target = Target::of(&ModelView::of(&info.spec));
    // The model's recorded columns, unless named (and then they must be the same).
    let named = a.data.columns()?;
    let cols = columns_for(&a.input, a.data.format(), &named, info.signature.as_ref(), target, (&a.name, false))?;
    let mut rows = RowSource::open(&a.input, cols.format, &cols.spec, target, OnBadRow::Fail, false)?;
    let mut batch = Batch::new(target.features);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    loop {
        batch.clear();
        if rows.fill(&mut batch, 10_000)? == 0 {
            break;
        }
        let r = c.predict(&a.name, a.version, &batch).await?;
        let k = r.outputs.max(1) as usize;
        for row in r.values.chunks_exact(k) {
            if k == 1 {
                writeln!(out, "{}", row[0])?;
            } else {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                writeln!(out, "{best}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Lines of a file (for tests of the CLI).
#[allow(dead_code)]
pub fn count_lines(p: &std::path::Path) -> Result<usize> {
    Ok(std::io::BufReader::new(std::fs::File::open(p)?).lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_into(deal: Deal, dir: &std::path::Path) -> Vec<String> {
        let input = dir.join("in.csv");
        std::fs::write(&input, "t,y\n0,a\n1,b\n2,c\n3,d\n4,e\n5,f\n6,g\n").unwrap();
        let out = dir.join(format!("{deal:?}"));
        split(SplitArgs { input, shards: 3, out: out.clone(), format: None, deal, json: false }).unwrap();
        (0..3).map(|i| std::fs::read_to_string(out.join(format!("part-{i:05}.csv"))).unwrap()).collect()
    }

    #[test]
    fn split_deals_contiguous_stretches_in_order_or_round_robin_with_the_header_in_each() {
        let dir = tempfile::tempdir().unwrap();
        let parts = split_into(Deal::Contiguous, dir.path());
        assert_eq!(parts, ["t,y\n0,a\n1,b\n2,c\n", "t,y\n3,d\n4,e\n", "t,y\n5,f\n6,g\n"]);
        let parts = split_into(Deal::RoundRobin, dir.path());
        assert_eq!(parts, ["t,y\n0,a\n3,d\n6,g\n", "t,y\n1,b\n4,e\n", "t,y\n2,c\n5,f\n"]);
    }
}
