//! The version runtime of a model: commits, rollbacks, imports, retention, tags and
//! metrics — the store IO that turns the engine's snapshots into versions, and versions
//! back into live state. Blocking (sled writes and flushes): callers run it on blocking
//! threads.
//!
//! Everything that makes a version holds the `head` mutex, so commits, rollbacks and
//! imports are serialised; the `engine` mutex is taken after it (lock order: head before
//! engine), briefly, except while a rollback or import writes its record. The `head` lock
//! is fair and held for a bounded amount of work: the policy committer holds it for one
//! version at a time, and every other writer writes the snapshots waiting when it took
//! the lock, no more, so an admin call waits for at most one version's write under a push
//! flood. Waiting snapshots leave the engine only under the `head` lock, in order.
use super::diff::NewContent;
use super::{compact, lock, Head, ModelHandle};
use crate::engine::Snapshot;
use crate::error::{Result, ServiceError};
use accrete_core::kinds::Dims;
use accrete_core::params::chunks_of;
use accrete_core::progressive::binary_and_classes;
use accrete_core::{EventKind, Params, VersionKind};
use accrete_store::manifest::MAX_LAYERS;
use accrete_store::{now_unix_ms, Chain, ChunkBatch, Layer, Manifest, Store, VersionRecord};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A new head that replaces the live content (rollback, import).
struct NewHead {
    kind: VersionKind,
    reason: String,
    request: String,
    content_of: u64,
    chunks_written: u64,
    bytes_written: u64,
    manifest: Manifest,
    content: NewContent,
}

/// Where an install lands: a partitioned model's rollback, recovery or import takes the
/// same version number and lineage epoch on every partition (0: this model's next).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct At {
    pub version: u64,
    pub epoch: u64,
}

impl ModelHandle {
    /// Commits the live state, if anything changed since the last version, as one version
    /// that also holds the policy snapshots still waiting (they are coalesced into it, so
    /// a commit writes one version however many wait). Returns the newest version and
    /// whether one was made. A retry of a commit (the same non-empty `request` id) is
    /// answered with what the first did.
    pub fn commit(&self, kind: VersionKind, reason: &str, request: &str) -> Result<(VersionRecord, bool)> {
        let mut head = self.head.lock();
        if let Some(done) = self.answered(&head, request)? {
            return Ok(done);
        }
        let live = {
            let mut engine = lock(&self.engine);
            engine.snapshot(kind, reason, Instant::now())
        };
        let live = live.map(|snap| Snapshot { request: request.to_string(), ..snap });
        let created = live.is_some();
        self.write_in_order(&mut head, live.into_iter())?;
        if !created {
            let version = head.record.version;
            head.requests.note(request, version, false);
        }
        Ok((head.record.clone(), created))
    }

    /// What an earlier call with this request id did: the version it made (as it is now)
    /// or answered with, and whether it made it.
    /// Recent ids are indexed in memory; a version's id is also stored apart from its
    /// record, so the answer outlives retention and restarts.
    fn answered(&self, head: &Head, request: &str) -> Result<Option<(VersionRecord, bool)>> {
        if request.is_empty() {
            return Ok(None);
        }
        let found = match head.requests.find(request) {
            Some((v, made)) if v == head.record.version => Some((head.record.clone(), made)),
            Some((v, false)) => Some((self.version(v).unwrap_or_else(|_| head.record.clone()), false)),
            _ => self.store.request_answer(self.record.id, request)?.map(|rec| (rec, true)),
        };
        if let Some((rec, _)) = &found {
            tracing::info!(model = %self.name(), request, version = rec.version, "a retried request: answered as before");
        }
        Ok(found)
    }

    /// The commit policy's commit (run by the policy task, at most one per model at a
    /// time): the update-count snapshots in order, then the time policy's if it is due.
    ///
    /// One version per hold of the `head` lock, and only the snapshots waiting when it
    /// started: under a push flood more keep coming, and the task runs it again.
    pub fn policy_commit(&self) -> Result<()> {
        let waiting = lock(&self.engine).pending_len();
        for _ in 0..waiting {
            let mut head = self.head.lock();
            let Some(snap) = lock(&self.engine).next_pending() else { break };
            self.write_snapshot(&mut head, snap, None)?;
        }
        let mut head = self.head.lock();
        let snap = lock(&self.engine).policy_snapshot(Instant::now());
        if let Some(snap) = snap {
            self.write_snapshot(&mut head, snap, None)?;
        }
        Ok(())
    }

    /// A global commit's version on this partition: the live state, changed or not (every
    /// partition has every global version), as version number `version`.
    pub fn commit_at(&self, version: u64, kind: VersionKind, reason: &str) -> Result<VersionRecord> {
        let mut head = self.head.lock();
        if version <= head.record.version {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: global version {version} is not after this partition's version {}",
                self.name(),
                head.record.version
            )));
        }
        let snap = {
            let mut engine = lock(&self.engine);
            engine.forced_snapshot(kind, reason, Instant::now())
        };
        self.write_snapshot(&mut head, snap, Some(version))?;
        Ok(head.record.clone())
    }

    /// Writes the update-count snapshots waiting now (not those taken while it writes),
    /// coalesced into one version.
    fn write_pending(&self, head: &mut Head) -> Result<()> {
        let waiting = lock(&self.engine).coalesce_pending();
        self.write_in_order(head, waiting.into_iter())
    }

    /// Writes snapshots as consecutive versions. If one fails, it and those after it go
    /// back into the live state for the next commit (each holds only what changed since
    /// the one before, so none may be written without the ones before it).
    fn write_in_order(&self, head: &mut Head, mut snaps: impl Iterator<Item = Snapshot>) -> Result<()> {
        while let Some(snap) = snaps.next() {
            if let Err(e) = self.write_snapshot(head, snap, None) {
                let mut engine = lock(&self.engine);
                snaps.for_each(|rest| engine.unwritten(&rest));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes a snapshot the next version: in a copy of the head's manifest, a chunk
    /// written whole is based on the new version, a delta layer goes on top of its
    /// chunk's chain; written and flushed before it is announced.
    fn write_snapshot(&self, head: &mut Head, snap: Snapshot, at: Option<u64>) -> Result<()> {
        let started = Instant::now();
        let version = at.unwrap_or(head.record.version + 1);
        let mut manifest = head.manifest.clone();
        let snap = match self.cap_chains(&manifest, snap) {
            Ok(snap) => snap,
            Err(failed) => {
                let (snap, e) = *failed;
                let mut engine = lock(&self.engine);
                engine.unwritten(&snap);
                engine.write_failed(Instant::now(), e.to_string());
                return Err(e);
            }
        };
        for e in &snap.chunks.chunks {
            let chain = &mut manifest.tensors[e.t as usize][e.c as usize];
            if !e.delta {
                *chain = Chain::whole(version);
            } else if chain.layers.len() < MAX_LAYERS {
                let bytes = e.range.len() as u32;
                chain.layers.push(Layer { hi: version, lo: version, bytes });
            } else {
                // (cap_chains writes a chunk whole long before: MAX_CHAIN_LAYERS)
                let message = format!("chunk {} of tensor {} has {MAX_LAYERS} layers", e.c, e.t);
                let mut engine = lock(&self.engine);
                engine.unwritten(&snap);
                return Err(ServiceError::Internal(message));
            }
        }
        let (_, classes) = binary_and_classes(&Dims::of(&self.record.spec));
        let rec = VersionRecord {
            parent: Some(head.record.version),
            created_unix_ms: now_unix_ms(),
            updates: snap.updates,
            updates_since_parent: snap.since_parent,
            reason: snap.reason.clone(),
            lineage_epoch: snap.epoch,
            workers: snap.workers.clone(),
            chunks_written: snap.chunks.len() as u64,
            bytes_written: (snap.chunks.data.len() + manifest.encoded_len()) as u64,
            steps: snap.steps,
            request: snap.request.clone(),
            progressive: snap.tally.figures(classes),
            ..VersionRecord::new(version, snap.kind)
        };
        if let Err(e) = self.store.write_version(self.record.id, &rec, &manifest, &snap.chunks) {
            let mut engine = lock(&self.engine);
            engine.unwritten(&snap);
            engine.write_failed(Instant::now(), e.to_string());
            return Err(e.into());
        }
        lock(&self.engine).committed(rec.version, Instant::now());
        let layers = self.rebase_layers.load(Ordering::Relaxed);
        if snap
            .chunks
            .chunks
            .iter()
            .any(|e| e.delta && compact::too_long(&manifest, &self.chunk_sizes, layers, e.t, e.c))
        {
            self.meters.compaction.store(true, Ordering::Release);
        }
        head.requests.note(&rec.request, rec.version, true);
        (head.record, head.manifest) = (rec.clone(), manifest);
        self.meters.commits.fetch_add(1, Ordering::Relaxed);
        self.meters.bytes_written.fetch_add(rec.bytes_written, Ordering::Relaxed);
        self.meters.commit_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.retain(head)?;
        self.emit(EventKind::of_new_version(rec.kind), rec);
        Ok(())
    }

    /// Makes a new head version holding `to`'s content, reloads the live state from it and
    /// starts a new lineage epoch. Writes a manifest and a record, no parameters. A retry
    /// (the same non-empty `request` id) is answered with the version the first made.
    pub fn rollback(&self, to: u64, why: &str, request: &str) -> Result<VersionRecord> {
        let mut head = self.head.lock();
        if let Some((rec, _)) = self.answered(&head, request)? {
            return Ok(rec);
        }
        self.write_pending(&mut head)?;
        let target = self.version(to)?;
        let manifest = self.manifest_of(to)?;
        let content = self.content_for_install(&head, &manifest, target.steps)?;
        let reason = if why.is_empty() { format!("rollback to {to}") } else { format!("rollback to {to}: {why}") };
        let content_of = if target.content_of != 0 { target.content_of } else { to };
        let new = NewHead {
            kind: VersionKind::Rollback,
            reason,
            request: request.to_string(),
            content_of,
            chunks_written: 0,
            bytes_written: 0,
            manifest,
            content,
        };
        self.install_head(&mut head, new)
    }

    /// One partition's share of a partitioned model's rollback or recovery: `to`'s
    /// content as version `at` (the same number on every partition), a new lineage epoch.
    /// A recovery (`rewind`: a partition lost updates) also takes the workers' progress
    /// back to what `to` recorded, so they rewind to its offsets and train those rows
    /// again, once; `reason` says which it is.
    pub fn install_version(&self, to: u64, at: At, reason: &str, rewind: bool, request: &str) -> Result<VersionRecord> {
        let mut head = self.head.lock();
        if let Some(rec) = Self::installed_at(&head, at, VersionKind::Rollback) {
            return Ok(rec);
        }
        if at.version <= head.record.version {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: version {} is not after this partition's version {}",
                self.name(),
                at.version,
                head.record.version
            )));
        }
        self.write_pending(&mut head)?;
        let target = self.version(to)?;
        let manifest = self.manifest_of(to)?;
        let content = self.content_for_install(&head, &manifest, target.steps)?;
        let content_of = if target.content_of != 0 { target.content_of } else { to };
        let new = NewHead {
            kind: VersionKind::Rollback,
            reason: reason.to_string(),
            request: request.to_string(),
            content_of,
            chunks_written: 0,
            bytes_written: 0,
            manifest,
            content,
        };
        self.install_head_with(&mut head, new, rewind.then_some(target.workers), at)
    }

    /// Replaces the parameters with imported ones as a new version and a new lineage epoch.
    /// A retry (the same non-empty `request` id) is answered with the version the first made.
    pub fn import(&self, params: Params, source: &str, request: &str) -> Result<VersionRecord> {
        self.import_at(params, source, request, At::default())
    }

    /// [`Self::import`] at `at` (a partitioned model's import: the same version number
    /// and lineage epoch on every partition).
    pub fn import_at(&self, params: Params, source: &str, request: &str, at: At) -> Result<VersionRecord> {
        let mut head = self.head.lock();
        if let Some((rec, _)) = self.answered(&head, request)? {
            return Ok(rec);
        }
        if let Some(rec) = Self::installed_at(&head, at, VersionKind::Import) {
            return Ok(rec);
        }
        if at.version != 0 && at.version <= head.record.version {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: version {} is not after this partition's version {}",
                self.name(),
                at.version,
                head.record.version
            )));
        }
        self.write_pending(&mut head)?;
        let version = if at.version != 0 { at.version } else { head.record.version + 1 };
        let chunks_written = write_all_chunks(&self.store, self.record.id, version, &params)?;
        let manifest = Manifest::full(&params, version);
        let bytes_written = params.tensors.iter().map(|t| (t.w.len() * 4 * (1 + t.slots.len())) as u64).sum();
        let reason = if source.is_empty() { "import".into() } else { format!("import from {source}") };
        let request = request.to_string();
        let new = NewHead {
            kind: VersionKind::Import,
            reason,
            request,
            content_of: 0,
            chunks_written,
            bytes_written,
            manifest,
            content: NewContent::Whole(params),
        };
        self.install_head_with(&mut head, new, None, At { version, ..at })
    }

    /// A coordinator's retry of an install or import at `at` that this partition already
    /// made (its answer was lost): the head it made. A coordinator never gives one `at`
    /// to two installs (the next is after every partition's newest version).
    fn installed_at(head: &Head, at: At, kind: VersionKind) -> Option<VersionRecord> {
        let r = &head.record;
        (at.version != 0 && at.epoch != 0 && r.version == at.version && r.lineage_epoch == at.epoch && r.kind == kind)
            .then(|| r.clone())
    }

    /// The version a request made, if one with this id (non-empty) was answered: a retry
    /// of a call coordinated over partitions is answered before anything is done again.
    pub fn answer_of(&self, request: &str) -> Result<Option<VersionRecord>> {
        let head = self.head.lock();
        Ok(self.answered(&head, request)?.map(|(rec, _)| rec))
    }

    /// The one tail of rollback and import: writes the new head's record (the next
    /// version, a new lineage epoch, the current counters) and manifest, swaps the content
    /// into the engine, applies retention and announces it. Pushes of the old epoch are
    /// refused from the swap on.
    fn install_head(&self, head: &mut Head, new: NewHead) -> Result<VersionRecord> {
        self.install_head_with(head, new, None, At::default())
    }

    /// [`Self::install_head`]; `rewind`: the workers' progress to go back to (a recovery).
    fn install_head_with(
        &self,
        head: &mut Head,
        new: NewHead,
        rewind: Option<Vec<accrete_core::WorkerProgress>>,
        at: At,
    ) -> Result<VersionRecord> {
        // The engine stays locked until the swap: no push lands between the counters read
        // here and the new content.
        let mut engine = lock(&self.engine);
        let status = engine.status();
        if at.epoch != 0 && at.epoch <= status.epoch {
            return Err(ServiceError::Invalid(format!(
                "model {:?}: lineage epoch {} is not after this partition's epoch {}",
                self.name(),
                at.epoch,
                status.epoch
            )));
        }
        let rec = VersionRecord {
            parent: Some(head.record.version),
            created_unix_ms: now_unix_ms(),
            updates: status.updates,
            reason: new.reason,
            lineage_epoch: if at.epoch != 0 { at.epoch } else { status.epoch + 1 },
            content_of: new.content_of,
            // Offsets say how much of each shard was consumed; replacing the parameters
            // does not un-read the data, so workers keep their positions (but a recovery
            // takes them back to the version's, whose rows it trains again).
            workers: rewind.clone().unwrap_or_else(|| engine.progress()),
            chunks_written: new.chunks_written,
            // (and the manifest: a rollback writes nothing else)
            bytes_written: new.bytes_written + new.manifest.encoded_len() as u64,
            steps: new.content.steps(),
            request: new.request,
            ..VersionRecord::new(if at.version != 0 { at.version } else { head.record.version + 1 }, new.kind)
        };
        self.store.write_version(self.record.id, &rec, &new.manifest, &ChunkBatch::default())?;
        self.swap_content(&mut engine, new.content, rec.lineage_epoch, rec.version)?;
        if let Some(workers) = &rewind {
            engine.rewind(workers);
            self.gate_restore(workers);
        }
        drop(engine);
        head.requests.note(&rec.request, rec.version, true);
        (head.record, head.manifest) = (rec.clone(), new.manifest);
        self.retain(head)?;
        self.emit(EventKind::of_new_version(rec.kind), rec.clone());
        Ok(rec)
    }

    /// Zeroed parameters in this model's layout (for imports to fill).
    pub fn empty_params(&self) -> Params {
        Params::zeros(&self.record.spec)
    }

    /// Every retained version's record, oldest first. Blocking (a store read).
    pub fn versions(&self) -> Result<Vec<VersionRecord>> {
        Ok(self.store.versions(self.record.id)?)
    }

    /// One retained version's record, or NOT_FOUND naming it.
    pub fn version(&self, v: u64) -> Result<VersionRecord> {
        let all = self.versions()?;
        match all.iter().find(|r| r.version == v) {
            Some(r) => Ok(r.clone()),
            None => Err(ServiceError::VersionNotFound {
                model: self.name().to_string(),
                version: v,
                retained: summarize(&all),
            }),
        }
    }

    fn manifest_of(&self, v: u64) -> Result<Manifest> {
        self.store.manifest(self.record.id, v, self.name())?.ok_or_else(|| ServiceError::VersionNotFound {
            model: self.name().to_string(),
            version: v,
            retained: String::new(),
        })
    }

    /// The exact parameters of a retained version, loaded from the store.
    pub fn load_version(&self, v: u64) -> Result<(VersionRecord, Params)> {
        let rec = self.version(v)?;
        // (manifest and blobs read together: a compaction may rewrite the manifest)
        let mut params = Params::zeros(&self.record.spec);
        if self.store.load_version(self.record.id, self.name(), v, &mut params)?.is_none() {
            return Err(ServiceError::VersionNotFound {
                model: self.name().to_string(),
                version: v,
                retained: String::new(),
            });
        }
        params.steps = rec.steps;
        Ok((rec, params))
    }

    /// Adds a label to a version; labels are unique within a model. Tagged versions are
    /// never dropped by retention.
    pub fn tag(&self, v: u64, label: &str) -> Result<VersionRecord> {
        if label.is_empty() || label.len() > 64 || label.chars().any(char::is_whitespace) {
            return Err(ServiceError::Invalid(format!("tag label {label:?} must be 1-64 characters without spaces")));
        }
        let _records = lock(&self.records);
        if let Some(other) = self.versions()?.iter().find(|r| r.tags.iter().any(|t| t == label)) {
            if other.version == v {
                return Ok(other.clone());
            }
            return Err(ServiceError::TagExists {
                model: self.name().to_string(),
                label: label.into(),
                version: other.version,
            });
        }
        let mut rec = self.version(v)?;
        rec.tags.push(label.to_string());
        self.store.update_version(self.record.id, &rec)?;
        self.emit(EventKind::Tagged, rec.clone());
        Ok(rec)
    }

    /// Stores evaluator metrics with a version: merged with earlier ones, or in place of
    /// them (`replace`).
    pub fn report_metrics(&self, v: u64, metrics: &BTreeMap<String, f64>, replace: bool) -> Result<VersionRecord> {
        if let Some((k, x)) = metrics.iter().find(|(k, x)| k.is_empty() || !x.is_finite()) {
            return Err(ServiceError::Invalid(format!("metric {k:?} = {x} is not a finite number with a name")));
        }
        // Names go into /metrics labels and the dashboard as they are.
        let name_ok = |k: &str| k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if let Some(k) = metrics.keys().find(|k| !name_ok(k)) {
            return Err(ServiceError::Invalid(format!(
                "metric name {k:?}: use at most 64 letters, digits and _ . : -"
            )));
        }
        let _records = lock(&self.records);
        let mut rec = self.version(v)?;
        if replace {
            rec.metrics.clear();
        }
        rec.metrics.extend(metrics.iter().map(|(k, x)| (k.clone(), *x)));
        self.store.update_version(self.record.id, &rec)?;
        self.emit(EventKind::Scored, rec.clone());
        Ok(rec)
    }

    /// Applies `--keep-last`: drops the oldest untagged versions beyond the newest K (the
    /// head and the evaluator's best are always kept), and the chunks only they referenced.
    fn retain(&self, head: &Head) -> Result<()> {
        let keep_last = self.record.spec.commit.keep_last as usize;
        // A partition (i > 0) keeps what its home's global version log keeps
        // (`retain_listed`): counting its own versions, it would drop a global version
        // the home still lists when an aborted commit left it one more.
        if keep_last == 0 || self.record.spec.partition > 0 {
            return Ok(());
        }
        // a tag that lands between the listing and the drops must not be dropped
        let _records = lock(&self.records);
        let all = self.versions()?;
        if all.len() <= keep_last {
            return Ok(());
        }
        let cut = all.len() - keep_last;
        let best = best_scored(&self.record.spec, &all);
        let (drop, keep): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, r)| {
            *i < cut && r.tags.is_empty() && r.version != head.record.version && Some(r.version) != best
        });
        let drop: Vec<u64> = drop.iter().map(|(_, r)| r.version).collect();
        let keep: Vec<u64> = keep.iter().map(|(_, r)| r.version).collect();
        let freed = self.store.drop_versions(self.record.id, self.name(), &drop, &keep)?;
        tracing::debug!(model = %self.name(), dropped = drop.len(), freed, "retention");
        Ok(())
    }

    /// A partition's retention, decided by its home: drops every version older than the
    /// newest of `keep` (the home's global version log) that `keep` does not list (the
    /// home dropped it, or an aborted commit left it here alone), and the chunks only
    /// they referenced. Versions newer than the log's newest stay: they may be this
    /// partition's head. Returns how many versions were dropped.
    pub fn retain_listed(&self, keep: &[u64]) -> Result<usize> {
        let head = self.head.lock();
        let _records = lock(&self.records);
        let newest = keep.iter().copied().max().unwrap_or(0);
        let (drop, kept): (Vec<u64>, Vec<u64>) = self
            .versions()?
            .iter()
            .map(|r| r.version)
            .partition(|v| *v < newest && !keep.contains(v) && *v != head.record.version);
        if !drop.is_empty() {
            let freed = self.store.drop_versions(self.record.id, self.name(), &drop, &kept)?;
            tracing::debug!(model = %self.name(), dropped = drop.len(), freed, "retention (the home's)");
        }
        Ok(drop.len())
    }

    /// Deletes the model's history from the store and announces it. Blocking.
    pub fn delete(&self) -> Result<u64> {
        let head = self.head.lock();
        let epoch = lock(&self.engine).status().epoch.max(head.record.lineage_epoch);
        let n = self.store.delete_model(&self.record, epoch)?;
        self.emit(EventKind::Deleted, head.record.clone());
        Ok(n)
    }
}

/// Writes every chunk of `params` under `version`, a batch at a time so a large model
/// never needs a second copy in memory. Returns the number of chunks.
pub(super) fn write_all_chunks(store: &Store, id: u64, version: u64, params: &Params) -> Result<u64> {
    const BATCH: usize = 64;
    let mut batch = ChunkBatch::default();
    let mut n = 0;
    for (t, ts) in params.tensors.iter().enumerate() {
        for c in 0..chunks_of(ts.w.len()) {
            batch.push(t as u32, c as u32, |out| params.encode_chunk(t, c, out));
            if batch.len() == BATCH {
                store.write_chunks(id, version, &batch)?;
                n += batch.len() as u64;
                batch.clear();
            }
        }
    }
    store.write_chunks(id, version, &batch)?;
    Ok(n + batch.len() as u64)
}

fn summarize(all: &[VersionRecord]) -> String {
    match (all.first(), all.last()) {
        (Some(a), Some(b)) if all.len() > 1 => format!("{} versions, {}..={}", all.len(), a.version, b.version),
        (Some(a), _) => format!("only {}", a.version),
        _ => "none".into(),
    }
}

/// The version the evaluator scored best by the model's primary metric (versions whose
/// predictions diverged excluded), which retention keeps.
fn best_scored(spec: &accrete_core::ModelSpec, all: &[VersionRecord]) -> Option<u64> {
    use accrete_core::scoring::{best_by, primary_metric, DIVERGED};
    let metric = primary_metric(&accrete_core::kinds::Dims::of(spec));
    let scored = all.iter().filter(|r| !r.metrics.contains_key(DIVERGED)).map(|r| (r.version, &r.metrics));
    best_by(metric, scored).map(|(v, _)| v)
}
