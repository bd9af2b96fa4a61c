//! Reading, parsing and compacting a shard's batches on a thread of their own, up to
//! [`Reader::AHEAD`] batches ahead of training, so parsing overlaps the pull's round trip
//! and the gradient. Batches go back to the thread for reuse: nothing is allocated per
//! batch once the pool's buffers have grown.
use crate::{WorkerConfig, WorkerError};
use accrete_core::features::Batch;
use accrete_ingest::{parse, RowSource};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the reading thread hands the training loop.
pub(crate) enum Filled {
    /// A batch of `rows` rows (compacted), and the shard offset just after it in pass
    /// `pass` over the shard.
    Batch { batch: Box<Batch>, rows: usize, offset: u64, pass: u64 },
    /// Every epoch is read.
    Done,
}

/// Rows the reading thread skipped so far: bad, and without a label.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    pub(crate) bad: AtomicU64,
    pub(crate) unlabelled: AtomicU64,
}

/// Reads, parses and compacts the shard's batches on a thread of its own, up to
/// [`Reader::AHEAD`] batches ahead of training, so parsing overlaps the pull's round trip
/// and the gradient. Batches go back to it for reuse: nothing is allocated per batch once
/// the pool's buffers have grown.
pub(crate) struct Reader {
    spare: std::sync::mpsc::Sender<Box<Batch>>,
    pub(crate) skipped: Arc<Skipped>,
}

impl Reader {
    const AHEAD: usize = 2;

    pub(crate) fn start(
        config: &WorkerConfig,
        target: parse::Target,
        from: (u64, u64),
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
                let result = read_shard(&config, target, from, &stop, &pool, &tx, &skipped);
                let _ = tx.blocking_send(result.map(|()| Filled::Done));
            }
        });
        if let Err(e) = spawned {
            let _ = tx.try_send(Err(WorkerError::Config(format!("cannot start the reading thread: {e}"))));
        }
        (Reader { spare, skipped }, rx)
    }

    pub(crate) fn recycle(&mut self, batch: Box<Batch>) {
        let _ = self.spare.send(batch);
    }
}

/// The reading thread's loop: every pass over the shard from `from` (a pass and a byte
/// offset in it), batch by batch, until the training loop is gone, `stop` is set, or an
/// error.
fn read_shard(
    config: &WorkerConfig,
    target: parse::Target,
    from: (u64, u64),
    stop: &AtomicBool,
    pool: &std::sync::mpsc::Receiver<Box<Batch>>,
    tx: &mpsc::Sender<Result<Filled, WorkerError>>,
    skipped: &Skipped,
) -> Result<(), WorkerError> {
    let mut held: Option<Box<Batch>> = None;
    for pass in from.0..config.epochs {
        let mut rows = RowSource::open(&config.shard, config.format, &config.columns, target, config.on_bad_row, true)?;
        rows.set_follow(config.follow);
        if pass == from.0 && from.1 > 0 {
            rows.skip_to(from.1)?;
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
            if tx.blocking_send(Ok(Filled::Batch { batch, rows: n, offset, pass })).is_err()
                || stop.load(Ordering::Acquire)
            {
                return Ok(());
            }
        }
        tracing::debug!(pass, "pass read");
    }
    Ok(())
}
