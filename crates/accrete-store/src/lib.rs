//! Versioned parameter storage: records and manifests in sled, chunk bytes in pack files.
//!
//! Layout of the data dir (a marker file `DATA_DIR/ACCRETE` saying the directory is ours
//! and its format; one sled `Db` under `DATA_DIR/db`; packs under `DATA_DIR/packs`):
//! - tree `models`: model name → [`ModelRecord`] (JSON);
//! - tree `v.{id}`: version (u64 BE) → [`VersionRecord`] (JSON);
//! - tree `f.{id}`: version (u64 BE) → [`Manifest`]: for every chunk of every tensor, its
//!   chain: a base and the delta layers applied over it;
//! - tree `p.{id}`: pack → the blobs it holds and where (offset, length, CRC-32), one
//!   entry per pack; in memory, blob → where (`index.rs`). A blob
//!   is a base — the chunk's whole content as of a version (weights, then optimizer
//!   slots, little-endian f32); a model's version 1 is its init spec, base 0, and is
//!   never stored — or a delta layer: the floats of the chunk changed by the commits
//!   lo..=hi, with their values as of hi (keys: `keys.rs`);
//! - `packs/{id}/{n}.pack`: the blobs' bytes, written once (`packs.rs`);
//! - tree `q.{id}`: request id → the record of the version it made;
//! - tree `i.{id}`: worker id → its latest incarnation (u64 BE), bumped at every join and
//!   flushed before the join is answered, so incarnations only grow, across restarts;
//! - tree `epochs`: model name → the last lineage epoch of a deleted model of that name
//!   (u64 BE), so a model created again under the name starts past it and a push computed
//!   against the deleted one is refused as stale.
//!
//! A commit writes the changed chunks (bases or deltas) as a pack, fsynced, and indexes
//! them under its own version number, then writes the manifest and the version record,
//! then flushes: a version is visible only once everything it references is durable.
//! Blobs indexed under a version that has no record are the leftovers of a crashed commit
//! and are removed at open, with packs nothing indexes. Rollback writes only a manifest
//! and a record.
//!
//! `DATA_DIR/ACCRETE` names the on-disk format ([`FORMAT`]). Formats 1 (no delta layers,
//! manifests of one version per chunk), 2 (blobs in sled) and 3 (an index entry per blob)
//! are migrated when opened
//! (`migrate.rs`) and the marker rewritten after; a newer format is refused.
//! The database can be reopened (after a failed write) or compacted (after a delete) while
//! the store is shared: see `db.rs`.
//! Architecture invariant: a version's chunks and manifest are never modified after the
//! version is written (compaction replaces a manifest only by one of bitwise-equal
//! content); only its record's tags and metrics change.

mod batch;
mod blobs;
mod compaction;
mod db;
mod index;
mod keys;
pub mod manifest;
mod migrate;
mod packs;
mod reclaim;
mod records;

pub use accrete_core::{VersionRecord, WorkerProgress};
pub use batch::{BatchEntry, ChunkBatch};
pub use manifest::{Chain, Layer, Manifest, Ref};
pub use records::{now_unix_ms, ModelRecord};

use db::{finish_compaction, open_db, Guard, Inner};
use keys::{be, u64_key};
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MARKER: &str = "ACCRETE";
/// The on-disk format this binary writes (and the newest it reads).
pub const FORMAT: u32 = 4;
const MARKER_PREFIX: &str = "accrete data dir, format ";

fn marker_text(format: u32) -> String {
    format!("{MARKER_PREFIX}{format}\n")
}

/// Writes the marker durably and atomically: a temp file, fsynced, renamed over it, the
/// directory fsynced.
fn write_marker(dir: &Path, format: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, marker_text(format).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(MARKER))?;
    std::fs::File::open(dir)?.sync_all()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {0} is not an accrete data dir (it is not empty and has no {MARKER} marker file)")]
    NotOurs(PathBuf),
    #[error("data dir {dir}: {message}")]
    Damaged { dir: PathBuf, message: String },
    #[error(
        "data dir {dir} was written by a newer accrete (on-disk format {found}); this binary reads formats 1 to {FORMAT}: run a newer accrete on it"
    )]
    NewerFormat { dir: PathBuf, found: u32 },
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
    /// Set when a write failed with an IO error, until the database is opened again.
    failed: Arc<parking_lot::Mutex<Option<db::Failed>>>,
    /// Held (read) by a version's load from its manifest to its last blob, and (write) by
    /// whatever deletes blobs: a load never finds a blob gone that its manifest named
    /// when it was read (compaction rewrites retained versions' manifests).
    blobs: Arc<RwLock<()>>,
    /// The live bytes last counted by [`Store::reclaim_if_wasteful`] (one looks at a time).
    reclaim: Arc<parking_lot::Mutex<u64>>,
    packs: Arc<packs::Packs>,
    /// Where each model's blobs are (`index.rs`).
    index: index::Indexes,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// The least a delete must free before the store is compacted for it.
const COMPACT_AT_BYTES: u64 = 16 << 20;

/// Bytes a compaction copies between flushes, so sled's dirty buffers stay bounded.
pub(crate) const FLUSH_EVERY_BYTES: u64 = 8 << 20;

impl Store {
    /// Opens (or initialises) the store in `dir`. Refuses a directory that is not ours and
    /// reports a damaged database as an error, never a panic.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let io = |source| StoreError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let marker = dir.join(MARKER);
        let format = match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let found = text.strip_prefix(MARKER_PREFIX).and_then(|n| n.trim_end().parse::<u32>().ok());
                match found {
                    Some(f @ 1..=FORMAT) => f,
                    Some(found) if found > FORMAT => {
                        return Err(StoreError::NewerFormat { dir: dir.to_path_buf(), found })
                    }
                    _ => {
                        let message = format!("unknown format in {}: {:?}", marker.display(), text.trim());
                        return Err(StoreError::Damaged { dir: dir.to_path_buf(), message });
                    }
                }
            }
            // (a marker's temp file alone: a first open that crashed before its rename)
            Err(_)
                if std::fs::read_dir(dir).map_err(io)?.flatten().any(|e| e.file_name() != *format!("{MARKER}.tmp")) =>
            {
                return Err(StoreError::NotOurs(dir.to_path_buf()))
            }
            Err(_) => {
                write_marker(dir, FORMAT).map_err(io)?;
                FORMAT
            }
        };
        finish_compaction(dir).map_err(io)?;
        let packs = Arc::new(packs::Packs::open(&dir.join("packs")).map_err(io)?);
        let db = open_db(dir, cache_bytes)?;
        let models = db.open_tree("models")?;
        let store = Store {
            inner: Arc::new(RwLock::new(Some(Inner { db, models }))),
            dir: dir.to_path_buf(),
            cache_bytes,
            failed: Default::default(),
            blobs: Default::default(),
            reclaim: Default::default(),
            packs,
            index: Default::default(),
        };
        if format < FORMAT {
            // (format 1's manifests decode as chains without layers, its chunks are bases)
            let moved = store.migrate()?;
            // The marker changes atomically, once the data moved (flushed); the old trees
            // go after it. A crash before the rename leaves the old format, migrated again.
            write_marker(dir, FORMAT).map_err(io)?;
            tracing::info!(dir = %dir.display(), from = format, to = FORMAT, blobs = moved, "migrated the data dir's format");
        }
        store.drop_old_trees()?;
        store.recover()?;
        store.reclaim_if_wasteful()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An IO error of this store's data dir.
    pub(crate) fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io { dir: self.dir.clone(), source }
    }

    /// Removes what a crash can leave behind: trees of models without a record; chunks
    /// and manifests written by a commit whose version record never landed; chunks that no
    /// retained manifest references (a retention pass that dropped the records, then
    /// crashed before the chunks); and, should any remain from a store written before
    /// retention dropped records first, versions whose chunks are gone (logged), so every
    /// listed version has its blobs indexed. Also the packs of models that do not exist
    /// and the packs nothing indexes. Runs at open only: nothing else runs then.
    fn recover(&self) -> Result<()> {
        let g = self.inner()?;
        let ids: HashSet<u64> = self.models()?.iter().map(|m| m.id).collect();
        for name in g.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let id = name
                .split_once('.')
                .and_then(|(p, id)| {
                    ["v", "f", "p", "x", "c", "d", "i", "q"].contains(&p).then(|| id.parse::<u64>().ok())
                })
                .flatten();
            if id.is_some_and(|id| !ids.contains(&id)) {
                g.db.drop_tree(name.as_bytes())?;
            }
        }
        for &id in &ids {
            let last = g.tree(id, 'v')?.last()?.map(|(k, _)| u64_key(&k)).unwrap_or(0);
            // (their blobs, which no manifest references now, go in collect_chunks)
            let ftree = g.tree(id, 'f')?;
            for k in ftree.range(be(last + 1)..).keys() {
                ftree.remove(k?)?;
            }
            self.collect_chunks(id)?;
        }
        for id in self.packs.models().map_err(|e| self.io(e))? {
            if !ids.contains(&id) {
                self.packs.remove_model(id).map_err(|e| self.io(e))?;
            }
        }
        self.sync()
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
                for kind in ['v', 'f', 'p', 'i', 'q'] {
                    let tree = g.tree(rec.id, kind)?;
                    freed += tree.iter().map(|kv| kv.map_or(0, |(k, v)| k.len() + v.len()) as u64).sum::<u64>();
                    g.db.drop_tree(format!("{kind}.{}", rec.id))?;
                }
                self.sync()?;
                self.packs.remove_model(rec.id).map_err(|e| self.io(e))?;
                self.forget_index(rec.id);
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

    /// Writes a version: its new chunks (keyed by this version), its manifest and record,
    /// then flushes. When this returns, the version survives `kill -9`.
    pub fn write_version(&self, id: u64, rec: &VersionRecord, manifest: &Manifest, chunks: &ChunkBatch) -> Result<()> {
        self.writing(|| {
            let written = (|| {
                // (held throughout: a reopen never falls between the blobs and the flush)
                let g = self.inner()?;
                self.put_chunks(id, rec.version, chunks)?;
                g.tree(id, 'f')?.insert(be(rec.version), manifest.encode())?;
                g.tree(id, 'v')?.insert(be(rec.version), records::encode(rec))?;
                if !rec.request.is_empty() {
                    // Outlives retention: a retried call is answered even after its version is dropped.
                    g.tree(id, 'q')?.insert(rec.request.as_bytes(), records::encode(rec))?;
                }
                self.sync()
            })();
            if written.is_err() {
                // Not acknowledged, so not listed either (until the database is opened
                // again, sled would show what it could not make durable); its blobs are
                // collected then.
                if let Ok(g) = self.inner() {
                    let _ = g.tree(id, 'v').and_then(|t| Ok(t.remove(be(rec.version))?));
                    let _ = g.tree(id, 'f').and_then(|t| Ok(t.remove(be(rec.version))?));
                    if !rec.request.is_empty() {
                        let _ = g.tree(id, 'q').and_then(|t| Ok(t.remove(rec.request.as_bytes())?));
                    }
                }
            }
            written
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
        g.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
