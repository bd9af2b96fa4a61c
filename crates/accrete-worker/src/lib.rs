//! accrete workers: read a local data shard, turn rows into batches, pull the parameters
//! a batch touches, compute the loss (before training: progressive validation) and the
//! gradient of a built-in model, and push it, with the worker's shard offset, clock,
//! incarnation and sequence number.
//!
//! Entry point: [`run`] with a [`WorkerConfig`], a connected client and a shutdown future.
//! Rows come from `accrete-ingest` on a reading thread ([`reader`]); pushes go out on one
//! stream ([`pusher`]); the lease is renewed apart ([`heartbeat`]).

mod heartbeat;
mod progressive;
mod pusher;
mod reader;
mod rows;

use accrete_client::{Client, ClientError};
use accrete_core::features::Batch;
use accrete_core::glm;
use accrete_core::kinds::{self, Tensors};
use accrete_core::push::{Gradient, Push, PushMeta};
use accrete_core::view::{BatchParams, ModelView};
use accrete_ingest::{ColumnSpec, Format, IngestError, OnBadRow, Target};
use heartbeat::Heartbeat;
use pusher::{Pusher, Sent};
use reader::{Filled, Reader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub model: String,
    pub shard: PathBuf,
    pub format: Option<Format>,
    pub columns: ColumnSpec,
    /// Rows per batch (one pull and one push); 0 = the model's default: [`ROWS_BATCH`]
    /// when it trains row by row, [`GRADIENT_BATCH`] when it pushes batch gradients.
    pub batch: usize,
    /// Train row by row on the pulled copy and push the changes (linear, logistic and
    /// softmax models; others train by batch gradients whatever this says).
    pub per_row: bool,
    pub epochs: u64,
    pub follow: bool,
    pub worker_id: String,
    pub on_bad_row: OnBadRow,
    /// Write each row's label and prediction made before training on it (progressive
    /// validation) to this file, one `label<TAB>prediction` line per row (several
    /// classes: each class's probability, comma-separated).
    pub progressive_out: Option<PathBuf>,
    /// The server's URL for a heartbeat connection of its own, on its own thread: the
    /// lease is then renewed even while a long batch (or a resume's skip through the shard)
    /// keeps a single-threaded caller busy. `None`: heartbeats are a task of the caller's
    /// runtime, on the worker's connection.
    pub heartbeat_server: Option<String>,
}

/// The default batch of a model trained row by row: each row is a step of the optimizer
/// anyway, so a batch only sets how often workers exchange changes.
pub const ROWS_BATCH: usize = 1000;
/// The default batch of a model trained by batch gradients (FM, MLP): one optimizer step
/// per batch, so a batch is the step's sample (100 rows: MLP on Fashion-MNIST reaches 0.864
/// in 10 epochs, 0.828 with batches of 1000).
pub const GRADIENT_BATCH: usize = 100;

impl WorkerConfig {
    pub fn validate(&self) -> Result<(), WorkerError> {
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
    #[error(transparent)]
    Data(#[from] IngestError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] accrete_client::ClientError),
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
    /// The committed version that holds this worker's last rows.
    pub committed_version: u64,
}

/// Who this worker is to the server: its id, the incarnation its last join gave it, and
/// the number of its pushes in that incarnation.
struct Identity {
    worker_id: String,
    shard: String,
    incarnation: u64,
    seq: u64,
}

impl Identity {
    /// A join's new incarnation: pushes are numbered from 1 again.
    fn joined(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
        self.seq = 0;
    }

    fn next_meta(&mut self, (pass, offset): (u64, u64), clock: u64, rows: u64, loss_sum: f64) -> PushMeta {
        self.seq += 1;
        PushMeta {
            worker_id: self.worker_id.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            shard: self.shard.clone(),
            offset,
            pass,
            clock,
            rows,
            loss_sum,
            update: false,
            changes: false,
            base_updates: 0,
            hits: 0,
            hist: Vec::new(),
        }
    }
}

/// The push of one trained batch: the touched rows of hashed tables, the whole gradient of
/// dense tensors, and the batch's input statistics, borrowed from the worker's buffers
/// (the client encodes them straight into the request; the buffers are reused).
fn batch_push<'a>(
    view: &'a ModelView,
    epoch: u64,
    batch: &'a Batch,
    grads: &'a Tensors,
    stats: &'a [f32],
    meta: PushMeta,
) -> Push<'a> {
    let mut out = Vec::with_capacity(view.tensors.len() + 1);
    for (name, hashed) in &view.tensors {
        let values = grads.get(name);
        if values.is_empty() {
            continue;
        }
        let keys: &[u32] = if *hashed { &batch.uniq } else { &[] };
        out.push(Gradient { tensor: name, offset: 0, keys, values, slot: "" });
    }
    if view.has_norm {
        out.push(Gradient { tensor: "norm", values: stats, ..Default::default() });
    }
    Push { model: &view.spec.name, lineage_epoch: epoch, grads: out, meta: Some(meta) }
}

/// Standardises a batch's dense inputs with the shared statistics merged with the batch's
/// own (`stats`, computed here), as the server will have them once the push lands; those
/// become `p.norm`, the statistics the batch is trained in.
fn standardise(view: &ModelView, p: &mut BatchParams, batch: &mut Batch, stats: &mut Vec<f32>) {
    let features = view.dims.features;
    glm::batch_stats(&batch.dense, features, stats);
    if p.norm.len() != stats.len() {
        p.norm.clear();
        p.norm.resize(stats.len(), 0.0);
    }
    glm::merge_stats(&mut p.norm, stats, features);
    glm::prepare_dense(&mut batch.dense, features, &p.norm);
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
    let info = client.model_info(&config.model).await?;
    let view = ModelView::of(&info.spec);
    // The columns named, checked against the model's recorded ones, or those.
    let columns = accrete_ingest::columns_for(
        &config.shard,
        config.format,
        &config.columns,
        info.signature.as_ref(),
        Target::of(&view),
        (&config.model, true),
    )?;
    let per_row = config.per_row && rows::supports(&view);
    let batch = match (config.batch, per_row) {
        (0, true) => ROWS_BATCH,
        (0, false) => GRADIENT_BATCH,
        (n, _) => n,
    };
    let config = WorkerConfig { format: columns.format, columns: columns.spec, batch, ..config };
    let signature = Some(&columns.signature);
    let started = Instant::now();
    let mut report = Report::default();
    let mut pusher = Pusher::open(&mut client, &info.spec).await?;
    let shard_name = config.shard.to_string_lossy().to_string();
    let joined = client.join(&config.model, &config.worker_id, &shard_name, signature).await?;
    let mut me = Identity { worker_id: config.worker_id.clone(), shard: shard_name.clone(), incarnation: 0, seq: 0 };
    me.joined(joined.incarnation);
    // The server process that acknowledges this session's pushes.
    let mut instance = joined.server_instance;
    // The lineage this session's offsets belong to: a pull of another one means the model
    // was rolled back or recovered after the join answered (a recovery may have rewound
    // this worker's progress then), so the session ends and the worker joins again.
    let mut session_epoch = joined.lineage_epoch;
    let heartbeat = Heartbeat::start(&config, &client, joined.lease_ms);
    // A pipe's bytes are new on every run: there is nothing to resume or read again.
    let seekable = std::fs::metadata(&config.shard).is_ok_and(|m| m.is_file() || m.is_dir());
    // Where this worker id's applied rows of this shard end (a pass and an offset in it).
    let recorded = |j: &accrete_core::pull::Joined| {
        if seekable && j.shard == shard_name {
            (j.pass, j.offset)
        } else {
            (0, 0)
        }
    };
    let mut from = recorded(&joined);
    let fresh = from == (0, 0);
    if !fresh {
        tracing::info!(worker = %config.worker_id, pass = from.0, offset = from.1, "resuming where this worker's applied rows end");
    }
    let mut grads = Tensors::default();
    let mut trainer = rows::RowTrainer::default();
    let mut predictions = Vec::new();
    let mut progressive = match &config.progressive_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|source| WorkerError::Io { path: p.clone(), source })?,
        )),
        None => None,
    };
    let progressive_err = |source| WorkerError::Io { path: config.progressive_out.clone().unwrap_or_default(), source };
    let mut stats = Vec::new();
    let mut clock = joined.clock;
    // Where the rows of the last push sent end, for the check that a version holds them.
    let mut last_sent = None;
    // One session per reading position: a refused push (a stale lineage after a rollback,
    // or a lapsed lease under BSP) or a broken connection (the server restarted, and lost
    // what it had not committed) ends it, and the next joins again and reads again from
    // where the rows the server holds end, so every row is applied once.
    loop {
        let (mut reader, mut filled) = Reader::start(&config, Target::of(&view), from, stop.clone());
        let (mut refused, mut undrained) = (None, false);
        loop {
            let next = tokio::select! {
                next = filled.recv() => next,
                _ = stopped.notified() => break,
            };
            // The reading thread always ends with Done or an error; without either it panicked.
            let next =
                next.ok_or_else(|| WorkerError::Config("the shard's reading thread stopped unexpectedly".into()))?;
            let (mut batch, n, at) = match next? {
                Filled::Batch { batch, rows, offset, pass } => (batch, rows, (pass, offset)),
                Filled::Done => break,
            };
            let span = tracing::debug_span!("batch", worker = %config.worker_id, clock, rows = n);
            let trained = async {
                let pulled =
                    client.pull_batch_with(&view, &batch.uniq, None, Some((&config.worker_id, clock)), per_row);
                let mut p = match pulled.await {
                    Ok(p) => p,
                    // Not in the barrier (its lease lapsed, or the server restarted): the
                    // session ends before this batch is trained.
                    Err(ClientError::NotInBarrier(why)) => return Ok(Err(why)),
                    Err(e) => return Err(e.into()),
                };
                if session_epoch != 0 && p.lineage_epoch != session_epoch {
                    return Ok(Err(format!(
                        "model {:?}: its lineage changed from epoch {session_epoch} to {} since this worker joined",
                        config.model, p.lineage_epoch
                    )));
                }
                if view.has_norm {
                    standardise(&view, &mut p, &mut batch, &mut stats);
                }
                if per_row {
                    let loss = trainer.train(&view, &mut p, &batch, &mut predictions).map_err(WorkerError::Config)?;
                    if let Some(out) = progressive.as_mut() {
                        progressive::write_lines(out, &batch.labels, &predictions, view.dims.outputs)
                            .map_err(progressive_err)?;
                    }
                    clock += 1;
                    let mut meta = me.next_meta(at, clock, n as u64, loss);
                    (meta.hits, meta.hist) = progressive::tally(&view, &batch.labels, &predictions);
                    let push = trainer.push(&view, p.lineage_epoch, &batch, &stats, meta);
                    // The next pull must see this push (it trains on from these values):
                    // its ack comes first.
                    let sent = pusher.send_then(&mut client, &push, true).await?;
                    return Ok::<_, WorkerError>(Ok((loss, sent)));
                }
                // scored before training: the progressive output and the push's tally
                kinds::predict(&view.dims, &p.tensors.views(), &batch, &batch.local, &mut predictions);
                if let Some(out) = progressive.as_mut() {
                    progressive::write_lines(out, &batch.labels, &predictions, view.dims.outputs)
                        .map_err(progressive_err)?;
                }
                let loss =
                    kinds::train(&view.dims, &p.tensors.views(), &batch, &batch.local, batch.uniq.len(), &mut grads);
                clock += 1;
                let mut meta = me.next_meta(at, clock, n as u64, loss);
                (meta.hits, meta.hist) = progressive::tally(&view, &batch.labels, &predictions);
                let push = batch_push(&view, p.lineage_epoch, &batch, &grads, &stats, meta);
                // Dense inputs' weights move with every batch, so the next pull waits for
                // this push (one worker is then the sequential optimizer); hashed tables
                // alone (FM) keep pushes in flight: consecutive batches touch mostly
                // different rows.
                let sent = pusher.send_then(&mut client, &push, view.has_norm).await?;
                Ok::<_, WorkerError>(Ok((loss, sent)))
            }
            .instrument(span)
            .await?;
            reader.recycle(batch);
            let (loss, sent) = match trained {
                Ok(trained) => trained,
                Err(why) => {
                    // Pushes may still be out on the stream: drained below, before the
                    // new incarnation joins (applied or refused, the offsets will say).
                    refused = Some(Sent::Refused(why));
                    undrained = true;
                    break;
                }
            };
            last_sent = Some(at);
            if let Sent::Accepted(Some(updates)) = sent {
                report.last_updates = updates;
            }
            report.rows += n as u64;
            progress.record(n as u64, loss);
            report.pushes += 1;
            report.loss_sum += loss;
            if let Sent::Refused(_) | Sent::Lost(_) = sent {
                refused = Some(sent);
                break;
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        report.bad_rows += reader.skipped.bad.load(Ordering::Relaxed);
        report.unlabelled_rows += reader.skipped.unlabelled.load(Ordering::Relaxed);
        drop(filled); // a reader still filling stops at its next batch
        if refused.is_none() {
            // The end of the shard, or a stop: every push out must have been applied.
            match pusher.drain(&mut client).await? {
                Sent::Accepted(updates) => {
                    // (an empty stream's ack, after per-row pushes drained one by one, says 0)
                    report.last_updates = updates.filter(|u| *u > 0).unwrap_or(report.last_updates);
                    // Exit 0 means committed; a restart before a version holds the rows
                    // lost them: they are read again (unless stopping).
                    match finish(&mut client, &config, last_sent, (instance, session_epoch)).await? {
                        Some(version) => {
                            report.committed_version = version;
                            break;
                        }
                        None if stop.load(Ordering::Acquire) => {
                            return Err(WorkerError::Config(format!(
                                "stopped, but the server restarted before a version held this worker's last rows; \
                                 a new run of worker {:?} reads them again",
                                config.worker_id
                            )));
                        }
                        None => {
                            refused = Some(Sent::Lost("the server restarted before a version held them".into()));
                        }
                    }
                }
                ended => refused = Some(ended),
            }
        } else if undrained {
            // Whatever becomes of them, the server's offsets after the join account for it.
            let drained = pusher.drain(&mut client).await?;
            tracing::debug!(?drained, "pushes out when the pull was refused");
        }
        let (why, lost) = match refused {
            Some(Sent::Lost(why)) => (format!("the connection to the server broke ({why})"), true),
            Some(Sent::Refused(why)) => (why, false),
            _ => (String::new(), false),
        };
        if stop.load(Ordering::Acquire) {
            // What was refused stays unapplied; the recorded offset says where a new run resumes.
            tracing::warn!(
                worker = %config.worker_id,
                "{why}; stopping: rows the server did not apply were not trained (a new run reads them)"
            );
            report.committed_version =
                finish(&mut client, &config, None, (instance, session_epoch)).await?.unwrap_or_default();
            break;
        }
        let rejoined = client.join(&config.model, &config.worker_id, &shard_name, signature).await?;
        me.joined(rejoined.incarnation);
        instance = rejoined.server_instance;
        session_epoch = rejoined.lineage_epoch;
        clock = rejoined.clock;
        if !seekable {
            return Err(WorkerError::Config(format!(
                "{}: {why}; its rows must be read again from offset {}, but a pipe cannot be read again \
                 (train from a file to ride out rollbacks, lapsed leases and server restarts)",
                shard_name, rejoined.offset
            )));
        }
        from = recorded(&rejoined);
        let whence = if lost {
            "the server's offsets (after a restart: its latest committed version's; later rows are trained again)"
        } else {
            "where the applied rows end"
        };
        tracing::warn!(
            worker = %config.worker_id,
            incarnation = rejoined.incarnation,
            pass = from.0,
            offset = from.1,
            clock,
            "{why}; joined again, and reading again from {whence}"
        );
    }
    tracing::debug!(rows = report.rows, "shard done");
    stopper.abort();
    if let Some(mut out) = progressive {
        use std::io::Write;
        out.flush().map_err(progressive_err)?;
    }
    drop(heartbeat);
    report.seconds = started.elapsed().as_secs_f64();
    // A shard read from its start that gave nothing to train on is a mistake to report
    // (wrong columns, a bad file), not a success; a resumed one may have nothing left.
    if report.rows == 0 && fresh && !stop.load(Ordering::Acquire) {
        return Err(WorkerError::Config(format!(
            "{}: no rows trained ({} bad rows skipped, {} rows without a label; the first bad rows are logged above)",
            shard_name, report.bad_rows, report.unlabelled_rows
        )));
    }
    Ok(report)
}

/// How long a finished worker waits for a committed version to hold its last rows (under
/// BSP its last round is applied once the other workers' pushes of that clock are in).
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Leaves the barrier, then waits until a committed version holds this worker's rows up
/// to `last`: that version, or `None` if the server restarted since the session's instance acknowledged
/// them (what it had not committed is gone, and the rows must be read again).
async fn finish(
    client: &mut Client,
    config: &WorkerConfig,
    last: Option<(u64, u64)>,
    session: (u64, u64),
) -> Result<Option<u64>, WorkerError> {
    match client.leave(&config.model, &config.worker_id).await {
        // Its lease lapsed at the very end (a long last batch), or the server restarted.
        Err(ClientError::NotInBarrier(m)) => tracing::debug!("leave: {m}"),
        left => left?,
    }
    await_committed(client, config, last, session).await
}

/// Exit 0 means committed: asks for a commit (a no-op when nothing changed since the last
/// version) until the committed head holds this worker's progress up to `last` (a pass
/// and an offset), waiting with backoff while it does not (bounded by [`COMMIT_WAIT`]).
/// Returns that version, or `None` when the server is no longer the session's `instance`,
/// or a recovery after the session's lineage `epoch` took the rows back out (either way
/// they are read again).
async fn await_committed(
    client: &mut Client,
    config: &WorkerConfig,
    last: Option<(u64, u64)>,
    (instance, epoch): (u64, u64),
) -> Result<Option<u64>, WorkerError> {
    let reason = format!("worker {} finished", config.worker_id);
    let deadline = Instant::now() + COMMIT_WAIT;
    let mut wait = std::time::Duration::from_millis(20);
    loop {
        let (head, _) = client.commit(&config.model, &reason).await?;
        let held = head.workers.iter().find(|w| w.worker_id == config.worker_id).map(|w| (w.pass, w.offset));
        if last.is_none_or(|l| held.is_some_and(|h| h >= l)) {
            return Ok(Some(head.version));
        }
        if client.model_info(&config.model).await?.server_instance != instance {
            return Ok(None);
        }
        // (a recovery that began the session's own lineage came before its pushes: they
        // are on their way into a version, not taken out)
        if head.lineage_epoch != epoch && recovered(client, &config.model, head.lineage_epoch).await? {
            // A partition's server restarted (a split model's, not the one that answers
            // here): the model went back to a version without these rows, and this
            // worker's progress with it. They are read again.
            return Ok(None);
        }
        if Instant::now() >= deadline {
            let (pass, offset) = last.unwrap_or_default();
            return Err(WorkerError::Config(format!(
                "model {:?}: no committed version holds worker {:?}'s last rows (pass {pass}, offset {offset}) after {} s; \
                 version {} holds {held:?}",
                config.model,
                config.worker_id,
                COMMIT_WAIT.as_secs(),
                head.version
            )));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(1));
    }
}

/// Did lineage `epoch` of `model` begin with a recovery (the model taken back to its
/// latest global version, the workers' progress rewound: reason `recovery to N: …`)?
async fn recovered(client: &mut Client, model: &str, epoch: u64) -> Result<bool, WorkerError> {
    let versions = client.versions(model).await?;
    let first = versions.iter().find(|v| v.lineage_epoch == epoch);
    Ok(first.is_some_and(|v| v.kind == accrete_core::VersionKind::Rollback && v.reason.starts_with("recovery to ")))
}
