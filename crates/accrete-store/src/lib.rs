//! Versioned parameter storage on sled.
//!
//! Layout of the database (one sled `Db` under `DATA_DIR/db`, a marker file
//! `DATA_DIR/ACCRETE` saying the directory is ours):
//! - tree `models`: model name → [`ModelRecord`] (JSON);
//! - tree `v.{id}`: version (u64 BE) → [`VersionRecord`] (JSON);
//! - tree `f.{id}`: version (u64 BE) → [`Manifest`]: for every chunk of every tensor, the
//!   version whose commit wrote its current content;
//! - tree `c.{id}`: (written-by version, tensor, chunk) (BE) → chunk blob (weights, then
//!   optimizer slots, little-endian f32);
//! - tree `i.{id}`: worker id → its latest incarnation (u64 BE), bumped at every join and
//!   flushed before the join is answered, so incarnations only grow, across restarts;
//! - tree `epochs`: model name → the last lineage epoch of a deleted model of that name
//!   (u64 BE), so a model created again under the name starts past it and a push computed
//!   against the deleted one is refused as stale.
//!
//! A commit writes the changed chunks under its own version number, then the manifest and
//! the version record, then flushes: a version is visible only once everything it
//! references is durable. Chunks keyed by a version that has no record are the leftovers of
//! a crashed commit and are removed at open. Rollback writes only a manifest and a record.
//! The database can be reopened (after a failed write) or compacted (after a delete) while
//! the store is shared: see `db.rs`.
//! Architecture invariant: a version's chunks and manifest are never modified after the
//! version is written; only its record's tags and metrics change.

mod db;
mod manifest;
mod records;

pub use accrete_core::{VersionRecord, WorkerProgress};
pub use manifest::Manifest;
pub use records::{now_unix_ms, ModelRecord};

use accrete_core::Params;
use db::{finish_compaction, open_db, Guard, Inner};
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MARKER: &str = "ACCRETE";
const MARKER_TEXT: &str = "accrete data dir, format 1\n";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {0} is not an accrete data dir (it is not empty and has no {MARKER} marker file)")]
    NotOurs(PathBuf),
    #[error("data dir {dir}: {message}")]
    Damaged { dir: PathBuf, message: String },
    #[error("data dir {0} is in use: another accrete server holds its database lock")]
    InUse(PathBuf),
    #[error("data dir {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("model {model}: stored data is damaged: {message}")]
    Corrupt { model: String, message: String },
    #[error("data dir {0}: the database could not be opened again after a write failed; restart the server")]
    Closed(PathBuf),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The kind of the IO error under this one, if it is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            StoreError::Io { source, .. } => Some(source.kind()),
            StoreError::Sled(sled::Error::Io(e)) => Some(e.kind()),
            _ => None,
        }
    }

    /// The disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self.io_kind(), Some(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }
}

/// The versioned store. Cheap to clone (the handles are shared).
#[derive(Clone)]
pub struct Store {
    /// `None` only after a reopen failed (every call then says so).
    inner: Arc<RwLock<Option<Inner>>>,
    dir: PathBuf,
    cache_bytes: u64,
    unflushed: Arc<std::sync::atomic::AtomicU64>,
    /// Set when a write failed with an IO error, until the database is opened again.
    failed: Arc<parking_lot::Mutex<Option<db::Failed>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// The key prefix of a chunk's pieces.
fn chunk_key(wver: u64, t: u32, c: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&wver.to_be_bytes());
    k[8..12].copy_from_slice(&t.to_be_bytes());
    k[12..].copy_from_slice(&c.to_be_bytes());
    k
}

fn piece_key(wver: u64, t: u32, c: u32, piece: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&chunk_key(wver, t, c));
    k[16..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// Chunk blobs are stored as pieces of at most this many bytes. sled 0.34 keeps large
/// values resident whatever its cache size (measured: RSS grows with every byte written
/// as 192 KiB values, stays near the cache size with 8 KiB ones).
const PIECE_BYTES: usize = 8 * 1024;

/// The least a delete must free before the store is compacted for it.
const COMPACT_AT_BYTES: u64 = 16 << 20;

/// Unflushed bytes after which a long write flushes, so sled's dirty buffers stay bounded.
const FLUSH_EVERY_BYTES: u64 = 8 << 20;

/// Chunks to write, encoded back to back in one buffer (one allocation per commit, so a
/// large commit's copy is returned to the OS when it is dropped).
#[derive(Debug, Default)]
pub struct ChunkBatch {
    /// (tensor, chunk, byte range in `data`).
    pub chunks: Vec<(u32, u32, std::ops::Range<usize>)>,
    pub data: Vec<u8>,
}

impl ChunkBatch {
    pub fn with_capacity(bytes: usize) -> Self {
        ChunkBatch { chunks: Vec::new(), data: Vec::with_capacity(bytes) }
    }

    /// Appends a chunk whose blob `encode` writes at the end of the buffer.
    pub fn push(&mut self, t: u32, c: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.data.len();
        encode(&mut self.data);
        self.chunks.push((t, c, start..self.data.len()));
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.data.clear();
    }
}

impl Store {
    /// Opens (or initialises) the store in `dir`. Refuses a directory that is not ours and
    /// reports a damaged database as an error, never a panic.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let io = |source| StoreError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let marker = dir.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(text) if text == MARKER_TEXT => {}
            Ok(text) => {
                let message = format!("unknown format in {}: {:?}", marker.display(), text.trim());
                return Err(StoreError::Damaged { dir: dir.to_path_buf(), message });
            }
            Err(_) if std::fs::read_dir(dir).map_err(io)?.next().is_some() => {
                return Err(StoreError::NotOurs(dir.to_path_buf()))
            }
            Err(_) => std::fs::write(&marker, MARKER_TEXT).map_err(io)?,
        }
        finish_compaction(dir).map_err(io)?;
        let db = open_db(dir, cache_bytes)?;
        let models = db.open_tree("models")?;
        let store = Store {
            inner: Arc::new(RwLock::new(Some(Inner { db, models }))),
            dir: dir.to_path_buf(),
            cache_bytes,
            unflushed: Default::default(),
            failed: Default::default(),
        };
        store.recover()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes what a crash can leave behind: trees of models without a record; chunks
    /// and manifests written by a commit whose version record never landed; chunks that no
    /// retained manifest references (a retention pass that dropped the records, then
    /// crashed before the chunks); and, should any remain from a store written before
    /// retention dropped records first, versions whose chunks are gone (logged), so every
    /// listed version can be read.
    fn recover(&self) -> Result<()> {
        let g = self.inner()?;
        let ids: HashSet<u64> = self.models()?.iter().map(|m| m.id).collect();
        for name in g.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let id = name
                .split_once('.')
                .and_then(|(p, id)| ["v", "f", "c", "i"].contains(&p).then(|| id.parse::<u64>().ok()))
                .flatten();
            if id.is_some_and(|id| !ids.contains(&id)) {
                g.db.drop_tree(name.as_bytes())?;
            }
        }
        for id in ids {
            let last = g.tree(id, 'v')?.last()?.map(|(k, _)| u64_key(&k)).unwrap_or(0);
            for t in ['c', 'f'] {
                let tree = g.tree(id, t)?;
                for k in tree.range(be(last + 1)..).keys() {
                    tree.remove(k?)?;
                }
            }
            self.collect_chunks(id)?;
        }
        self.sync()
    }

    /// Deletes chunks no retained manifest references, and drops the records of versions
    /// whose manifest names a chunk that is not stored.
    fn collect_chunks(&self, id: u64) -> Result<()> {
        let g = self.inner()?;
        let (vtree, ftree, ctree) = (g.tree(id, 'v')?, g.tree(id, 'f')?, g.tree(id, 'c')?);
        let mut stored: HashSet<(u32, u32, u64)> = HashSet::new();
        for k in ctree.iter().keys() {
            let k = k?;
            if k.len() >= 16 {
                let (w, t, c) = (u64_key(&k[..8]), u32_key(&k[8..12]), u32_key(&k[12..16]));
                stored.insert((t, c, w));
            }
        }
        let mut referenced: HashSet<(u32, u32, u64)> = HashSet::new();
        for kv in ftree.iter() {
            let (k, v) = kv?;
            let version = u64_key(&k);
            let Some(m) = Manifest::decode(&v) else { continue };
            if let Some((t, c, w)) = m.entries().find(|e| !stored.contains(e)) {
                tracing::error!(
                    model_id = id,
                    version,
                    "version dropped at open: chunk {c} of tensor {t} (written by version {w}) is missing"
                );
                vtree.remove(be(version))?;
                ftree.remove(be(version))?;
                continue;
            }
            referenced.extend(m.entries());
        }
        let mut freed = 0;
        for (t, c, w) in stored.difference(&referenced) {
            for key in ctree.scan_prefix(chunk_key(*w, *t, *c)).keys() {
                ctree.remove(key?)?;
            }
            freed += 1;
        }
        if freed > 0 {
            tracing::info!(
                model_id = id,
                chunks = freed,
                "removed chunks no version references (a crash during retention)"
            );
        }
        Ok(())
    }

    /// A tree of model `id` (tests reach into the database with it).
    #[cfg(test)]
    fn tree(&self, id: u64, kind: char) -> Result<sled::Tree> {
        self.inner()?.tree(id, kind)
    }

    /// The open database, read-locked: a method holds it for as long as it uses the
    /// database's trees, so a reopen or a compaction never swaps it under a write.
    fn inner(&self) -> Result<Guard<'_>> {
        RwLockReadGuard::try_map(self.inner.read_recursive(), |i| i.as_ref())
            .map_err(|_| StoreError::Closed(self.dir.clone()))
    }

    /// An id no model has. (A compaction starts sled's id counter again; ids of deleted
    /// models may come back, which is harmless: their trees went with them.)
    pub fn new_model_id(&self) -> Result<u64> {
        let g = self.inner()?;
        let next = g.db.generate_id()? + 1;
        Ok(next.max(self.models()?.iter().map(|m| m.id + 1).max().unwrap_or(0)))
    }

    pub fn models(&self) -> Result<Vec<ModelRecord>> {
        let g = self.inner()?;
        g.models.iter().values().map(|v| records::decode(&v?, "model record")).collect()
    }

    pub fn put_model(&self, rec: &ModelRecord) -> Result<()> {
        self.writing(|| {
            let g = self.inner()?;
            g.models.insert(rec.spec.name.as_bytes(), records::encode(rec))?;
            self.sync()
        })
    }

    /// Rewrites a model's record (to add its input signature), only while that very model
    /// exists: one deleted meanwhile is not brought back. Returns whether it was written.
    pub fn update_model(&self, rec: &ModelRecord) -> Result<bool> {
        self.writing(|| {
            let g = self.inner()?;
            let new = records::encode(rec);
            let mut written = false;
            g.models.fetch_and_update(rec.spec.name.as_bytes(), |old| {
                let old = old?;
                let same = records::decode::<ModelRecord>(old, "model record").is_ok_and(|o| o.id == rec.id);
                written = same;
                Some(if same { new.clone() } else { old.to_vec() })
            })?;
            self.sync()?;
            Ok(written)
        })
    }

    /// The last lineage epoch of any deleted model named `name` (0 when none was).
    pub fn epoch_floor(&self, name: &str) -> Result<u64> {
        let g = self.inner()?;
        Ok(g.db.open_tree("epochs")?.get(name.as_bytes())?.map_or(0, |v| u64_key(&v)))
    }

    /// Deletes a model and all its versions; returns how many versions were dropped.
    /// `last_epoch` (its live lineage epoch) becomes the name's epoch floor first.
    ///
    /// sled reuses the space it frees but never gives it back; when the deleted model held
    /// at least half of the live data (measured in records, not in sled's files, whose
    /// size depends on how lazily sled has reclaimed its segments), the store is compacted
    /// at once ([`Store::compact`]), so deleting models gives the disk back.
    pub fn delete_model(&self, rec: &ModelRecord, last_epoch: u64) -> Result<u64> {
        self.writing(|| {
            let (n, freed, rest) = {
                let g = self.inner()?;
                let n = g.tree(rec.id, 'v')?.len() as u64;
                let floor = last_epoch.max(self.epoch_floor(&rec.spec.name)?);
                g.db.open_tree("epochs")?.insert(rec.spec.name.as_bytes(), &be(floor))?;
                g.models.remove(rec.spec.name.as_bytes())?;
                g.db.flush()?;
                let mut freed = 0u64;
                for kind in ['v', 'f', 'c', 'i', 'q'] {
                    let tree = g.tree(rec.id, kind)?;
                    freed += tree.iter().map(|kv| kv.map_or(0, |(k, v)| k.len() + v.len()) as u64).sum::<u64>();
                    g.db.drop_tree(format!("{kind}.{}", rec.id))?;
                }
                self.sync()?;
                // The data that stays, counted only as far as `freed` (a bounded scan).
                let mut rest = 0u64;
                'count: for name in g.db.tree_names() {
                    for kv in g.db.open_tree(&name)?.iter() {
                        rest += kv.map_or(0, |(k, v)| k.len() + v.len()) as u64;
                        if rest > freed {
                            break 'count;
                        }
                    }
                }
                (n, freed, rest)
            };
            if freed >= COMPACT_AT_BYTES && freed >= rest {
                let (before, after) = self.compact()?;
                tracing::info!(model = %rec.spec.name, before, after, "compacted the database after a delete");
            }
            Ok(n)
        })
    }

    /// Writes chunks of a version that is not written yet (big writes go in batches before
    /// [`Store::write_version`]). Neither durable nor visible until the version record is.
    pub fn write_chunks(&self, id: u64, version: u64, batch: &ChunkBatch) -> Result<()> {
        self.writing(|| self.put_chunks(id, version, batch))
    }

    fn put_chunks(&self, id: u64, version: u64, batch: &ChunkBatch) -> Result<()> {
        let g = self.inner()?;
        use std::sync::atomic::Ordering;
        let ctree = g.tree(id, 'c')?;
        for (t, c, range) in &batch.chunks {
            let blob = &batch.data[range.clone()];
            for (i, piece) in blob.chunks(PIECE_BYTES).enumerate() {
                ctree.insert(piece_key(version, *t, *c, i as u32), piece)?;
            }
            let bytes = blob.len() as u64;
            if self.unflushed.fetch_add(bytes, Ordering::AcqRel) + bytes > FLUSH_EVERY_BYTES {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Reads a chunk's blob into `out` (cleared first); false when it has no pieces.
    fn read_chunk(&self, ctree: &sled::Tree, wver: u64, t: u32, c: u32, out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        for piece in ctree.scan_prefix(chunk_key(wver, t, c)).values() {
            out.extend_from_slice(&piece?);
        }
        Ok(!out.is_empty())
    }

    /// Writes a version: its new chunks (keyed by this version), its manifest and record,
    /// then flushes. When this returns, the version survives `kill -9`.
    pub fn write_version(&self, id: u64, rec: &VersionRecord, manifest: &Manifest, chunks: &ChunkBatch) -> Result<()> {
        self.writing(|| {
            self.put_chunks(id, rec.version, chunks)?;
            let g = self.inner()?;
            g.tree(id, 'f')?.insert(be(rec.version), manifest.encode())?;
            g.tree(id, 'v')?.insert(be(rec.version), records::encode(rec))?;
            if !rec.request.is_empty() {
                // Outlives retention: a retried call is answered even after its version is dropped.
                g.tree(id, 'q')?.insert(rec.request.as_bytes(), records::encode(rec))?;
            }
            self.sync()
        })
    }

    /// The record of the version a call with this request id made, if one did.
    pub fn request_answer(&self, id: u64, request: &str) -> Result<Option<VersionRecord>> {
        let g = self.inner()?;
        match g.tree(id, 'q')?.get(request.as_bytes())? {
            Some(b) => Ok(Some(records::decode(&b, "request answer")?)),
            None => Ok(None),
        }
    }

    /// Rewrites a version's record (tags, metrics); its content never changes.
    pub fn update_version(&self, id: u64, rec: &VersionRecord) -> Result<()> {
        self.writing(|| {
            let g = self.inner()?;
            g.tree(id, 'v')?.insert(be(rec.version), records::encode(rec))?;
            self.sync()
        })
    }

    /// All retained versions of a model, oldest first.
    pub fn versions(&self, id: u64) -> Result<Vec<VersionRecord>> {
        let g = self.inner()?;
        g.tree(id, 'v')?.iter().values().map(|v| records::decode(&v?, "version record")).collect()
    }

    pub fn manifest(&self, id: u64, version: u64, model: &str) -> Result<Option<Manifest>> {
        let g = self.inner()?;
        match g.tree(id, 'f')?.get(be(version))? {
            None => Ok(None),
            Some(b) => Manifest::decode(&b).map(Some).ok_or_else(|| StoreError::Corrupt {
                model: model.into(),
                message: format!("manifest of version {version}"),
            }),
        }
    }

    /// Loads every chunk a manifest names into `params` (whose layout must match).
    pub fn load_params(&self, id: u64, model: &str, manifest: &Manifest, params: &mut Params) -> Result<()> {
        let g = self.inner()?;
        let corrupt = |message: String| StoreError::Corrupt { model: model.into(), message };
        if !manifest.matches(params) {
            return Err(corrupt("manifest does not match the model's layout".into()));
        }
        let ctree = g.tree(id, 'c')?;
        let mut blob = Vec::new();
        for (t, chunks) in manifest.tensors.iter().enumerate() {
            for (c, wver) in chunks.iter().enumerate() {
                if !self.read_chunk(&ctree, *wver, t as u32, c as u32, &mut blob)? {
                    return Err(corrupt(format!("chunk {c} of tensor {t} (version {wver}) is missing")));
                }
                params.decode_chunk(t, c, &blob).map_err(|e| corrupt(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Drops versions (records, manifests, and the chunks no kept version references).
    /// Returns the number of chunks freed.
    ///
    /// Crash order: the records and manifests go first, in one atomic batch per tree,
    /// and are flushed; only then the chunks. A crash in between leaves chunks that nothing
    /// references (collected at the next open), never a listed version without its data.
    pub fn drop_versions(&self, id: u64, model: &str, drop: &[u64], keep: &[u64]) -> Result<u64> {
        self.writing(|| {
            let g = self.inner()?;
            let mut referenced = HashSet::new();
            for v in keep {
                if let Some(m) = self.manifest(id, *v, model)? {
                    referenced.extend(m.entries());
                }
            }
            let mut unreferenced = Vec::new();
            for v in drop {
                if let Some(m) = self.manifest(id, *v, model)? {
                    unreferenced.extend(m.entries().filter(|e| !referenced.contains(e)));
                }
            }
            let (mut records, mut manifests) = (sled::Batch::default(), sled::Batch::default());
            for v in drop {
                records.remove(&be(*v));
                manifests.remove(&be(*v));
            }
            g.tree(id, 'v')?.apply_batch(records)?;
            g.tree(id, 'f')?.apply_batch(manifests)?;
            self.sync()?;
            let ctree = g.tree(id, 'c')?;
            let mut freed = 0;
            unreferenced.sort_unstable();
            unreferenced.dedup();
            for (t, c, wver) in unreferenced {
                let mut any = false;
                for key in ctree.scan_prefix(chunk_key(wver, t, c)).keys() {
                    ctree.remove(key?)?;
                    any = true;
                }
                freed += any as u64;
            }
            self.sync()?;
            Ok(freed)
        })
    }

    /// Gives `worker` its next incarnation (1 for a new worker) and makes it durable.
    pub fn bump_incarnation(&self, id: u64, worker: &str) -> Result<u64> {
        self.writing(|| {
            let g = self.inner()?;
            let tree = g.tree(id, 'i')?;
            let next = tree.update_and_fetch(worker.as_bytes(), |old| Some(be(old.map_or(0, u64_key) + 1).to_vec()))?;
            self.sync()?;
            Ok(next.map_or(1, |v| u64_key(&v)))
        })
    }

    /// Records incarnation `n` of a worker given by its model's home (a partition of a
    /// split model): the stored one becomes at least `n`. Returns the stored one, which
    /// is above `n` when a newer incarnation joined already.
    pub fn raise_incarnation(&self, id: u64, worker: &str, n: u64) -> Result<u64> {
        self.writing(|| {
            let g = self.inner()?;
            let tree = g.tree(id, 'i')?;
            let next =
                tree.update_and_fetch(worker.as_bytes(), |old| Some(be(old.map_or(0, u64_key).max(n)).to_vec()))?;
            self.sync()?;
            Ok(next.map_or(n, |v| u64_key(&v)))
        })
    }

    /// Every worker's latest incarnation.
    pub fn incarnations(&self, id: u64) -> Result<Vec<(String, u64)>> {
        let g = self.inner()?;
        g.tree(id, 'i')?
            .iter()
            .map(|kv| kv.map(|(k, v)| (String::from_utf8_lossy(&k).to_string(), u64_key(&v))).map_err(Into::into))
            .collect()
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        let g = self.inner()?;
        Ok(g.db.size_on_disk()?)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.writing(|| self.sync())
    }

    fn sync(&self) -> Result<()> {
        let g = self.inner()?;
        self.unflushed.store(0, std::sync::atomic::Ordering::Release);
        g.db.flush()?;
        Ok(())
    }
}

fn u32_key(k: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = 4.min(k.len());
    b[..n].copy_from_slice(&k[..n]);
    u32::from_be_bytes(b)
}

fn u64_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = 8.min(k.len());
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests;
