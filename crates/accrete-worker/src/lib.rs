//! accrete workers: read a local data shard, turn rows into batches, pull the parameters
//! a batch touches, compute the loss (before training: progressive validation) and the
//! gradient of a built-in model, and push it, with the worker's shard offset and clock.
//!
//! Entry point: [`run`] with a [`WorkerConfig`], a connected client and a shutdown future.

pub mod parse;
pub mod source;

use accrete_client::Client;
use accrete_core::features::Batch;
use accrete_core::glm;
use accrete_core::kinds::{self, Dims, Tensors};
use accrete_core::ModelKind;
use accrete_proto::v1 as pb;
use parse::{ColumnSpec, CsvParser, RowError, Target};
use source::ShardReader;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Libsvm,
}

impl Format {
    /// From the extension (`.libsvm`, `.svm`, `.svmlight`, also under `.gz`), else CSV.
    pub fn guess(path: &std::path::Path) -> Format {
        let name = path.to_string_lossy().to_lowercase();
        let name = name.trim_end_matches(".gz");
        if name.ends_with(".libsvm") || name.ends_with(".svm") || name.ends_with(".svmlight") {
            Format::Libsvm
        } else {
            Format::Csv
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRow {
    Skip,
    Fail,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub model: String,
    pub shard: PathBuf,
    pub format: Option<Format>,
    pub columns: ColumnSpec,
    pub batch: usize,
    pub epochs: u64,
    pub follow: bool,
    pub worker_id: String,
    pub on_bad_row: OnBadRow,
    /// Write each row's label and prediction made before training on it (progressive
    /// validation) to this file, one `label<TAB>prediction` line per row.
    pub progressive_out: Option<PathBuf>,
    /// The server's URL for a heartbeat connection of its own, on its own thread: the
    /// lease is then renewed even while a long batch (or a resume's skip through the shard)
    /// keeps a single-threaded caller busy. `None`: heartbeats are a task of the caller's
    /// runtime, on the worker's connection.
    pub heartbeat_server: Option<String>,
}

impl WorkerConfig {
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.batch == 0 {
            return Err(WorkerError::Config("--batch must be at least 1".into()));
        }
        if self.epochs == 0 {
            return Err(WorkerError::Config("--epochs must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    BadRow(String),
    #[error("model {model:?}: {message}")]
    Model { model: String, message: String },
    #[error(transparent)]
    Client(#[from] accrete_client::ClientError),
}

impl From<tonic::Status> for WorkerError {
    fn from(s: tonic::Status) -> Self {
        WorkerError::Client(s.into())
    }
}

/// Live counters for a progress display: rows trained and the loss of recent rows.
#[derive(Debug, Default)]
pub struct Progress {
    rows: AtomicU64,
    /// Exponential moving average of the per-row progressive loss, as f64 bits.
    recent_loss: AtomicU64,
}

impl Progress {
    fn record(&self, rows: u64, loss_sum: f64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        let per_row = loss_sum / rows.max(1) as f64;
        let old = f64::from_bits(self.recent_loss.load(Ordering::Relaxed));
        let new = if old == 0.0 { per_row } else { 0.9 * old + 0.1 * per_row };
        self.recent_loss.store(new.to_bits(), Ordering::Relaxed);
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn recent_loss(&self) -> f64 {
        f64::from_bits(self.recent_loss.load(Ordering::Relaxed))
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: u64,
    pub bad_rows: u64,
    pub unlabelled_rows: u64,
    pub pushes: u64,
    pub loss_sum: f64,
    pub seconds: f64,
    pub last_updates: u64,
}

/// The model facts a worker needs.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub dims: Dims,
    pub target: Target,
    /// Trained tensors: (name, hashed) in layout order.
    pub tensors: Vec<(String, bool)>,
    pub has_norm: bool,
}

impl ModelView {
    pub fn from_info(info: &pb::ModelInfo) -> Result<ModelView, String> {
        let spec = info.spec.clone().unwrap_or_default();
        let kind = match pb::ModelKind::try_from(spec.kind) {
            Ok(pb::ModelKind::Linear) => ModelKind::Linear,
            Ok(pb::ModelKind::Logistic) => ModelKind::Logistic,
            Ok(pb::ModelKind::Softmax) => ModelKind::Softmax,
            Ok(pb::ModelKind::Fm) => ModelKind::Fm,
            Ok(pb::ModelKind::Mlp) => ModelKind::Mlp,
            _ => return Err("unknown model kind".into()),
        };
        let outputs = match kind {
            ModelKind::Softmax => spec.classes as usize,
            ModelKind::Mlp if spec.classes >= 2 => spec.classes as usize,
            _ => 1,
        };
        let dims = Dims {
            kind,
            features: spec.features as usize,
            outputs,
            hidden: spec.hidden as usize,
            factors: spec.factors as usize,
        };
        let tensors = info.tensors.iter().filter(|t| t.name != "norm").map(|t| (t.name.clone(), t.sparse)).collect();
        Ok(ModelView {
            dims,
            target: Target {
                features: spec.features as usize,
                hash_bits: spec.hash_bits,
                classes: dims.classes(),
                binary: matches!(kind, ModelKind::Logistic | ModelKind::Fm),
            },
            tensors,
            has_norm: info.tensors.iter().any(|t| t.name == "norm"),
        })
    }
}

/// Turns shard lines into batches with the right parser, counting skipped rows.
pub struct RowSource {
    reader: ShardReader,
    format: Format,
    csv: Option<CsvParser>,
    spec: ColumnSpec,
    target: Target,
    line: Vec<u8>,
    on_bad: OnBadRow,
    require_label: bool,
    pub bad_rows: u64,
    pub unlabelled: u64,
}

impl RowSource {
    pub fn open(
        path: &std::path::Path,
        format: Option<Format>,
        spec: &ColumnSpec,
        target: Target,
        on_bad: OnBadRow,
        require_label: bool,
    ) -> Result<RowSource, WorkerError> {
        let reader = ShardReader::open(path).map_err(|source| WorkerError::Io { path: path.to_path_buf(), source })?;
        let format = format.unwrap_or_else(|| Format::guess(path));
        if format == Format::Csv && spec.label.is_none() && require_label {
            return Err(WorkerError::Config("CSV data needs --label COLUMN (or COLUMN>THRESHOLD)".into()));
        }
        Ok(RowSource {
            reader,
            format,
            csv: None,
            spec: spec.clone(),
            target,
            line: Vec::new(),
            on_bad,
            require_label,
            bad_rows: 0,
            unlabelled: 0,
        })
    }

    pub fn offset(&self) -> u64 {
        self.reader.offset
    }

    /// Following a growing shard: a last row still being written is not read until its
    /// newline arrives.
    pub fn set_follow(&mut self, follow: bool) {
        self.reader.follow = follow;
    }

    pub fn skip_to(&mut self, offset: u64) -> Result<(), WorkerError> {
        let mut buf = Vec::new();
        self.reader
            .skip_to(offset, &mut buf)
            .map_err(|source| WorkerError::Io { path: self.reader.pos.file.clone(), source })?;
        // the header of the part we landed in has been read past: build the parser from it
        if self.format == Format::Csv && self.csv.is_none() {
            let mut probe = ShardReader::open(&self.reader.pos.file)
                .map_err(|source| WorkerError::Io { path: self.reader.pos.file.clone(), source })?;
            probe
                .next_line(&mut self.line)
                .map_err(|source| WorkerError::Io { path: self.reader.pos.file.clone(), source })?;
            self.csv_header()?;
        }
        Ok(())
    }

    pub fn poll_new_parts(&mut self) -> Result<(), WorkerError> {
        self.reader.poll_new_parts().map_err(|source| WorkerError::Io { path: self.reader.pos.file.clone(), source })
    }

    /// Appends up to `n` rows to `batch`; returns how many (0 = no data now).
    pub fn fill(&mut self, batch: &mut Batch, n: usize) -> Result<usize, WorkerError> {
        let start = batch.rows();
        while batch.rows() - start < n {
            let more = self
                .reader
                .next_line(&mut self.line)
                .map_err(|source| WorkerError::Io { path: self.reader.pos.file.clone(), source })?;
            if !more {
                break;
            }
            if self.line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let result = match self.format {
                Format::Csv if self.reader.is_header => {
                    // each part file has its header: a part whose columns differ gets its own parser
                    if self.csv.as_ref().is_none_or(|p| !split_eq(&self.line, &p.header)) {
                        self.csv_header()?;
                    }
                    continue;
                }
                Format::Csv => match self.csv.as_mut() {
                    Some(p) => p.parse(&self.line, batch, self.require_label),
                    None => Err(RowError::Bad("no header".into())),
                },
                Format::Libsvm => parse::parse_libsvm(&self.line, self.target, batch, self.require_label),
            };
            match result {
                Ok(()) => {}
                Err(RowError::NoLabel) => {
                    batch.abandon_row();
                    self.unlabelled += 1;
                }
                Err(RowError::Bad(m)) => {
                    batch.abandon_row();
                    let msg = format!("{}: {m}", self.reader.pos);
                    if self.on_bad == OnBadRow::Fail {
                        return Err(WorkerError::BadRow(msg));
                    }
                    self.bad_rows += 1;
                    if self.bad_rows <= 10 {
                        tracing::warn!("skipped bad row: {msg}");
                    }
                }
            }
        }
        Ok(batch.rows() - start)
    }

    /// Builds the CSV parser from the header line just read, sampling rows to guess kinds.
    fn csv_header(&mut self) -> Result<(), WorkerError> {
        let header = self.line.clone();
        let mut sample = Vec::new();
        if self.spec.numeric.is_empty() && self.spec.categorical.is_empty() {
            let name = |why: &str| {
                WorkerError::Config(format!(
                    "{}: cannot tell numeric from categorical columns ({why}); name them with --numeric / --categorical",
                    self.reader.pos
                ))
            };
            if !std::fs::metadata(&self.reader.pos.file).is_ok_and(|m| m.is_file()) {
                return Err(name("a pipe cannot be sampled"));
            }
            let mut probe = ShardReader::open(&self.reader.pos.file)
                .map_err(|source| WorkerError::Io { path: self.reader.pos.file.clone(), source })?;
            let mut buf = Vec::new();
            let _ = probe.next_line(&mut buf);
            while sample.len() < 1000 && probe.next_line(&mut buf).unwrap_or(false) {
                sample.push(buf.clone());
            }
            if sample.is_empty() {
                return Err(name("the file has no rows yet"));
            }
        }
        let p = CsvParser::new(&header, &self.spec, self.target, &sample)
            .map_err(|m| WorkerError::Config(format!("{}: {m}", self.reader.pos)))?;
        self.csv = Some(p);
        Ok(())
    }
}

/// True when a header line names the same columns as `names`.
fn split_eq(line: &[u8], names: &[String]) -> bool {
    let s = String::from_utf8_lossy(line);
    s.split(',').map(|c| c.trim().trim_matches('"')).eq(names.iter().map(|n| n.as_str()))
}

/// Pulled parameters for one batch (hashed tensors compacted to the batch's rows).
struct Pulled {
    tensors: Tensors,
    norm: Vec<f32>,
    epoch: u64,
}

async fn pull(
    client: &mut Client,
    model: &str,
    view: &ModelView,
    keys: &[u32],
    worker_id: &str,
    clock: u64,
) -> Result<Pulled, WorkerError> {
    let mut slices = Vec::new();
    for (name, hashed) in &view.tensors {
        match hashed {
            false => slices.push(pb::PullSlice { tensor: name.clone(), ..Default::default() }),
            true if !keys.is_empty() => slices.push(pb::PullSlice {
                tensor: name.clone(),
                keys: keys.iter().map(|k| *k as u64).collect(),
                ..Default::default()
            }),
            true => {}
        }
    }
    if view.has_norm {
        slices.push(pb::PullSlice { tensor: "norm".into(), ..Default::default() });
    }
    let req =
        pb::PullRequest { model: model.into(), version: None, slices, ema: false, worker_id: worker_id.into(), clock };
    let r = client.params.pull(req).await?.into_inner();
    let mut p = Pulled { tensors: Tensors::default(), norm: vec![], epoch: r.lineage_epoch };
    for t in r.tensors {
        let v = accrete_proto::bytes_to_f32s(&t.values).unwrap_or_default();
        match p.tensors.get_mut(&t.tensor) {
            Some(slot) => *slot = v,
            None if t.tensor == "norm" => p.norm = v,
            None => {}
        }
    }
    Ok(p)
}

/// Trains on the shard until its epochs are done (or, with `follow`, until `shutdown`).
pub async fn run(
    config: WorkerConfig,
    mut client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    progress: Arc<Progress>,
) -> Result<Report, WorkerError> {
    config.validate()?;
    // Shutdown is checked between batches: the batch in hand is pushed, its ack awaited.
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(tokio::sync::Notify::new());
    let stopper = {
        let (stop, stopped) = (stop.clone(), stopped.clone());
        tokio::spawn(async move {
            shutdown.await;
            stop.store(true, Ordering::Release);
            stopped.notify_one();
        })
    };
    let model_err = |message: String| WorkerError::Model { model: config.model.clone(), message };
    let info = client.models.get_model_info(pb::ModelRef { name: config.model.clone() }).await?.into_inner();
    let view = ModelView::from_info(&info).map_err(model_err)?;
    let started = Instant::now();
    let mut report = Report::default();
    let mut pusher = Pusher::open(&mut client).await?;
    let join = pb::JoinRequest {
        model: config.model.clone(),
        worker_id: config.worker_id.clone(),
        shard: config.shard.to_string_lossy().to_string(),
    };
    let joined = client.params.join(join.clone()).await?.into_inner();
    let heartbeat = Heartbeat::start(&config, &client, joined.lease_ms);
    // A pipe's bytes are new on every run: there is nothing to resume.
    let seekable = std::fs::metadata(&config.shard).is_ok_and(|m| m.is_file() || m.is_dir());
    let resume_at =
        (seekable && joined.shard == config.shard.to_string_lossy() && (config.epochs == 1 || config.follow))
            .then_some(joined.offset)
            .filter(|o| *o > 0);
    if let Some(o) = resume_at {
        tracing::info!(worker = %config.worker_id, offset = o, "resuming from the offset recorded for this worker");
    }
    let features = view.target.features;
    let (mut reader, mut filled) = Reader::start(&config, view.target, resume_at, stop.clone());
    let mut grads = Tensors::default();
    let mut predictions = Vec::new();
    let mut progressive = match &config.progressive_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|source| WorkerError::Io { path: p.clone(), source })?,
        )),
        None => None,
    };
    let mut stats = Vec::new();
    let mut clock = joined.clock;
    let shard_name = config.shard.to_string_lossy().to_string();
    loop {
        let next = tokio::select! {
            next = filled.recv() => next,
            _ = stopped.notified() => break,
        };
        // The reading thread always ends with Done or an error; without either it panicked.
        let next = next.ok_or_else(|| WorkerError::Config("the shard's reading thread stopped unexpectedly".into()))?;
        let (mut batch, n, offset) = match next? {
            Filled::Batch { batch, rows, offset } => (batch, rows, offset),
            Filled::Done => break,
        };
        let p = pull(&mut client, &config.model, &view, &batch.uniq, &config.worker_id, clock).await?;
        if view.has_norm {
            glm::batch_stats(&batch.dense, features, &mut stats);
            // Standardise with the shared statistics and this batch's, as the server
            // will have them once the push lands.
            let mut merged = if p.norm.len() == stats.len() { p.norm.clone() } else { vec![0.0; stats.len()] };
            glm::merge_stats(&mut merged, &stats, features);
            glm::prepare_dense(&mut batch.dense, features, &merged);
        }
        let hashed_rows = batch.uniq.len();
        if let Some(out) = progressive.as_mut() {
            kinds::predict(&view.dims, &p.tensors.views(), &batch, &batch.local, &mut predictions);
            write_progressive(out, &batch.labels, &predictions, view.dims.outputs).map_err(|source| {
                WorkerError::Io { path: config.progressive_out.clone().unwrap_or_default(), source }
            })?;
        }
        let loss = kinds::train(&view.dims, &p.tensors.views(), &batch, &batch.local, hashed_rows, &mut grads);
        clock += 1;
        let mut chunks = Vec::with_capacity(view.tensors.len() + 1);
        for (name, hashed) in &view.tensors {
            let g = grads.get(name);
            if g.is_empty() {
                continue;
            }
            let keys = if *hashed { batch.uniq.iter().map(|k| *k as u64).collect() } else { vec![] };
            chunks.push(pb::TensorChunk {
                tensor: name.clone(),
                keys,
                values: accrete_proto::f32s_to_bytes(g),
                ..Default::default()
            });
        }
        if view.has_norm {
            chunks.push(pb::TensorChunk {
                tensor: "norm".into(),
                values: accrete_proto::f32s_to_bytes(&stats),
                ..Default::default()
            });
        }
        reader.recycle(batch);
        let meta = pb::PushMeta {
            worker_id: config.worker_id.clone(),
            shard: shard_name.clone(),
            offset,
            clock,
            rows: n as u64,
            loss_sum: loss,
        };
        let req =
            pb::PushRequest { model: config.model.clone(), lineage_epoch: p.epoch, grads: chunks, meta: Some(meta) };
        if pusher.send(&mut client, req).await? == Sent::Rejoin {
            // The BSP rounds went on without this worker (its lease expired): join again
            // and take the barrier's clock; the refused batch's gradient is lost.
            clock = client.params.join(join.clone()).await?.into_inner().clock;
            tracing::warn!(worker = %config.worker_id, clock, "left the barrier while away; joined again");
        }
        report.rows += n as u64;
        progress.record(n as u64, loss);
        report.pushes += 1;
        report.loss_sum += loss;
        if stop.load(Ordering::Acquire) {
            break;
        }
    }
    tracing::debug!(rows = report.rows, "shard done");
    report.bad_rows = reader.skipped.bad.load(Ordering::Relaxed);
    report.unlabelled_rows = reader.skipped.unlabelled.load(Ordering::Relaxed);
    drop(filled); // a reader still filling stops at its next batch
    stopper.abort();
    if let Some(mut out) = progressive {
        use std::io::Write;
        out.flush()
            .map_err(|source| WorkerError::Io { path: config.progressive_out.clone().unwrap_or_default(), source })?;
    }
    report.last_updates = pusher.finish().await?;
    drop(heartbeat);
    client.params.leave(pb::WorkerRef { model: config.model.clone(), worker_id: config.worker_id.clone() }).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What the reading thread hands the training loop.
enum Filled {
    /// A batch of `rows` rows (compacted), and the shard offset just after it.
    Batch { batch: Box<Batch>, rows: usize, offset: u64 },
    /// Every epoch is read.
    Done,
}

/// Rows the reading thread skipped so far: bad, and without a label.
#[derive(Debug, Default)]
struct Skipped {
    bad: AtomicU64,
    unlabelled: AtomicU64,
}

/// Reads, parses and compacts the shard's batches on a thread of its own, up to
/// [`Reader::AHEAD`] batches ahead of training, so parsing overlaps the pull's round trip
/// and the gradient. Batches go back to it for reuse: nothing is allocated per batch once
/// the pool's buffers have grown.
struct Reader {
    spare: std::sync::mpsc::Sender<Box<Batch>>,
    skipped: Arc<Skipped>,
}

impl Reader {
    const AHEAD: usize = 2;

    fn start(
        config: &WorkerConfig,
        target: parse::Target,
        resume_at: Option<u64>,
        stop: Arc<AtomicBool>,
    ) -> (Reader, mpsc::Receiver<Result<Filled, WorkerError>>) {
        let (tx, rx) = mpsc::channel(Self::AHEAD);
        let (spare, pool) = std::sync::mpsc::channel();
        // one batch in training, AHEAD queued, one being filled
        for _ in 0..Self::AHEAD + 2 {
            let _ = spare.send(Box::new(Batch::new(target.features)));
        }
        let config = config.clone();
        let skipped = Arc::new(Skipped::default());
        let spawned = std::thread::Builder::new().name("reader".into()).spawn({
            let (tx, skipped) = (tx.clone(), skipped.clone());
            move || {
                let result = read_shard(&config, target, resume_at, &stop, &pool, &tx, &skipped);
                let _ = tx.blocking_send(result.map(|()| Filled::Done));
            }
        });
        if let Err(e) = spawned {
            let _ = tx.try_send(Err(WorkerError::Config(format!("cannot start the reading thread: {e}"))));
        }
        (Reader { spare, skipped }, rx)
    }

    fn recycle(&mut self, batch: Box<Batch>) {
        let _ = self.spare.send(batch);
    }
}

/// The reading thread's loop: every epoch of the shard, batch by batch, until the training
/// loop is gone, `stop` is set, or an error.
fn read_shard(
    config: &WorkerConfig,
    target: parse::Target,
    resume_at: Option<u64>,
    stop: &AtomicBool,
    pool: &std::sync::mpsc::Receiver<Box<Batch>>,
    tx: &mpsc::Sender<Result<Filled, WorkerError>>,
    skipped: &Skipped,
) -> Result<(), WorkerError> {
    let mut held: Option<Box<Batch>> = None;
    for epoch in 0..config.epochs {
        let mut rows = RowSource::open(&config.shard, config.format, &config.columns, target, config.on_bad_row, true)?;
        rows.set_follow(config.follow);
        if let (0, Some(o)) = (epoch, resume_at) {
            rows.skip_to(o)?;
        }
        let (bad0, unlabelled0) = (skipped.bad.load(Ordering::Relaxed), skipped.unlabelled.load(Ordering::Relaxed));
        loop {
            // The training loop is gone when the pool is.
            let Some(mut batch) = held.take().or_else(|| pool.recv().ok()) else { return Ok(()) };
            batch.clear();
            let mut n = rows.fill(&mut batch, config.batch)?;
            while n == 0 && config.follow && !stop.load(Ordering::Acquire) && !tx.is_closed() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                rows.poll_new_parts()?;
                n = rows.fill(&mut batch, config.batch)?;
            }
            skipped.bad.store(bad0 + rows.bad_rows, Ordering::Relaxed);
            skipped.unlabelled.store(unlabelled0 + rows.unlabelled, Ordering::Relaxed);
            if n == 0 {
                held = Some(batch);
                break;
            }
            batch.compact();
            let offset = rows.offset();
            if tx.blocking_send(Ok(Filled::Batch { batch, rows: n, offset })).is_err() || stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        tracing::debug!(epoch, "epoch read");
    }
    Ok(())
}

/// Renews the worker's lease in the background until dropped.
enum Heartbeat {
    Task(tokio::task::JoinHandle<()>),
    /// Dropping the sender ends the thread's loop.
    Thread(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>),
}

impl Heartbeat {
    fn start(config: &WorkerConfig, client: &Client, lease_ms: u64) -> Heartbeat {
        let req = pb::WorkerRef { model: config.model.clone(), worker_id: config.worker_id.clone() };
        let every = std::time::Duration::from_millis((lease_ms / 3).max(100));
        let Some(url) = config.heartbeat_server.clone() else {
            return Heartbeat::Task(tokio::spawn(beat(client.clone(), req, every, None)));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_req = req.clone();
        let thread = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            let req = thread_req;
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(async move {
                    match Client::connect(&url).await {
                        Ok(c) => beat(c, req, every, Some(rx)).await,
                        Err(e) => tracing::warn!("heartbeat connection: {e}"),
                    }
                }),
                Err(e) => tracing::warn!("heartbeat runtime: {e}"),
            }
        });
        if let Err(e) = thread {
            tracing::warn!("cannot start the heartbeat thread ({e}); heartbeats share the worker's runtime");
            return Heartbeat::Task(tokio::spawn(beat(client.clone(), req, every, None)));
        }
        Heartbeat::Thread(tx)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Heartbeat::Task(t) = self {
            t.abort();
        }
    }
}

async fn beat(
    mut client: Client,
    req: pb::WorkerRef,
    every: std::time::Duration,
    mut stop: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    loop {
        match stop.as_mut() {
            Some(rx) => tokio::select! {
                _ = rx => return,
                _ = tokio::time::sleep(every) => {}
            },
            None => tokio::time::sleep(every).await,
        }
        if let Err(e) = client.params.heartbeat(req.clone()).await {
            tracing::warn!(error = %e.message(), "heartbeat refused");
        }
    }
}

/// What became of a push handed to [`Pusher::send`] (refusals other than these end the worker).
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Queued (or dropped for a stale lineage: the next pull brings the new one).
    Sent,
    /// The stream ended because this worker is no longer in the BSP barrier.
    Rejoin,
}

/// Pushes on one stream without waiting for each ack. A push refused for a stale lineage
/// (the model was rolled back) is dropped and the stream reopened: the next pull brings
/// the new lineage. Any other refusal ends the worker.
struct Pusher {
    tx: mpsc::Sender<pb::PushRequest>,
    acks: tokio::task::JoinHandle<Result<u64, tonic::Status>>,
}

impl Pusher {
    async fn open(client: &mut Client) -> Result<Pusher, WorkerError> {
        let (tx, rx) = mpsc::channel::<pb::PushRequest>(4);
        let mut stream = client.params.push_stream(ReceiverStream::new(rx)).await?.into_inner();
        let acks = tokio::spawn(async move {
            let mut last = 0;
            loop {
                match stream.message().await {
                    Ok(Some(a)) => last = a.updates,
                    Ok(None) => return Ok(last),
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(Pusher { tx, acks })
    }

    async fn send(&mut self, client: &mut Client, req: pb::PushRequest) -> Result<Sent, WorkerError> {
        if self.tx.send(req).await.is_ok() {
            return Ok(Sent::Sent);
        }
        let fresh = Pusher::open(client).await?;
        let old = std::mem::replace(self, fresh);
        match old.acks.await {
            Ok(Err(e)) if e.code() == tonic::Code::Aborted => {
                tracing::warn!("{}; continuing on the new lineage", e.message());
                Ok(Sent::Sent)
            }
            Ok(Err(e)) if e.code() == tonic::Code::FailedPrecondition => Ok(Sent::Rejoin),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => Ok(Sent::Sent),
            Err(e) => Err(WorkerError::Config(format!("push stream task failed: {e}"))),
        }
    }

    async fn finish(self) -> Result<u64, WorkerError> {
        drop(self.tx);
        match self.acks.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) if e.code() == tonic::Code::Aborted => Ok(0),
            Ok(Err(e)) if e.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!("{}; the last push was not applied", e.message());
                Ok(0)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(WorkerError::Config(format!("push stream task failed: {e}"))),
        }
    }
}

/// The wire form of a batch's features (raw dense values; labels are not sent).
pub fn feature_rows(batch: &Batch) -> pb::FeatureRows {
    pb::FeatureRows {
        rows: batch.rows() as u32,
        features: batch.features as u32,
        dense: accrete_proto::f32s_to_bytes(&batch.dense),
        row_ptr: batch.row_ptr.iter().map(|p| *p as u32).collect(),
        indices: batch.idx.clone(),
        values: accrete_proto::f32s_to_bytes(&batch.val),
    }
}

fn write_progressive(out: &mut impl std::io::Write, labels: &[f32], p: &[f32], k: usize) -> std::io::Result<()> {
    for (y, row) in labels.iter().zip(p.chunks_exact(k.max(1))) {
        writeln!(out, "{y}\t{}", row[0])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_file_is_read_with_its_own_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("part-0.csv"), "y,c\n1,a\n").unwrap();
        std::fs::write(dir.path().join("part-1.csv"), "c,y\nb,0\n").unwrap();
        let spec =
            ColumnSpec { label: Some("y".parse().unwrap()), categorical: vec!["c".into()], ..Default::default() };
        let target = Target { features: 0, hash_bits: 8, classes: 0, binary: true };
        let mut rows = RowSource::open(dir.path(), None, &spec, target, OnBadRow::Fail, true).unwrap();
        let mut b = Batch::new(0);
        assert_eq!(rows.fill(&mut b, 10).unwrap(), 2);
        assert_eq!(b.labels, vec![1.0, 0.0]);
        let h = |s: &str| accrete_core::features::murmur3_32(s.as_bytes(), 0) & 255;
        assert_eq!(b.idx, vec![h("c=a"), h("c=b")]);
    }

    #[test]
    fn column_kinds_are_not_guessed_from_a_file_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        std::fs::write(&path, "y,c\n").unwrap();
        let spec = ColumnSpec { label: Some("y".parse().unwrap()), ..Default::default() };
        let target = Target { features: 0, hash_bits: 8, classes: 0, binary: true };
        let mut rows = RowSource::open(&path, None, &spec, target, OnBadRow::Fail, true).unwrap();
        let e = rows.fill(&mut Batch::new(0), 10).unwrap_err().to_string();
        assert!(e.contains("s.csv:1") && e.contains("no rows yet") && e.contains("--categorical"), "{e}");
    }
}
