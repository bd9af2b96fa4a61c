//! Versioned parameter storage on sled.
//!
//! Layout of the database (one sled `Db` under `DATA_DIR/db`, a marker file
//! `DATA_DIR/ACCRETE` saying the directory is ours):
//! - tree `models`: model name → [`ModelRecord`] (JSON);
//! - tree `v.{id}`: version (u64 BE) → [`VersionRecord`] (JSON);
//! - tree `f.{id}`: version (u64 BE) → [`Manifest`]: for every chunk of every tensor, the
//!   version whose commit wrote its current content;
//! - tree `c.{id}`: (written-by version, tensor, chunk) (BE) → chunk blob (weights, then
//!   optimizer slots, little-endian f32).
//!
//! A commit writes the changed chunks under its own version number, then the manifest and
//! the version record, then flushes: a version is visible only once everything it
//! references is durable. Chunks keyed by a version that has no record are the leftovers of
//! a crashed commit and are removed at open. Rollback writes only a manifest and a record.
//! Architecture invariant: a version's chunks and manifest are never modified after the
//! version is written; only its record's tags and metrics change.

mod manifest;
mod records;

pub use manifest::Manifest;
pub use records::{now_unix_ms, ModelRecord, VersionRecord, WorkerProgress};

use accrete_core::Params;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const MARKER: &str = "ACCRETE";
const MARKER_TEXT: &str = "accrete data dir, format 1\n";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {0} is not an accrete data dir (it is not empty and has no {MARKER} marker file)")]
    NotOurs(PathBuf),
    #[error("data dir {dir}: {message}")]
    Damaged { dir: PathBuf, message: String },
    #[error("data dir {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("model {model}: stored data is damaged: {message}")]
    Corrupt { model: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The versioned store. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    models: sled::Tree,
    dir: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn chunk_key(wver: u64, t: u32, c: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&wver.to_be_bytes());
    k[8..12].copy_from_slice(&t.to_be_bytes());
    k[12..].copy_from_slice(&c.to_be_bytes());
    k
}

/// A chunk to write: (tensor index, chunk index, blob).
pub type ChunkWrite = (u32, u32, Vec<u8>);

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
        let path = dir.join("db");
        let config = sled::Config::new().path(&path).cache_capacity(cache_bytes);
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()))
            .map_err(|_| StoreError::Damaged { dir: dir.to_path_buf(), message: "sled panicked while opening".into() })?
            .map_err(|e| StoreError::Damaged {
                dir: dir.to_path_buf(),
                message: format!("cannot open database: {e}"),
            })?;
        let models = db.open_tree("models")?;
        let store = Store { db, models, dir: dir.to_path_buf() };
        store.recover()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes what a crash can leave behind: trees of models without a record, and chunks
    /// and manifests written by a commit whose version record never landed.
    fn recover(&self) -> Result<()> {
        let ids: HashSet<u64> = self.models()?.iter().map(|m| m.id).collect();
        for name in self.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let id = name
                .split_once('.')
                .and_then(|(p, id)| ["v", "f", "c"].contains(&p).then(|| id.parse::<u64>().ok()))
                .flatten();
            if id.is_some_and(|id| !ids.contains(&id)) {
                self.db.drop_tree(name.as_bytes())?;
            }
        }
        for id in ids {
            let last = self.tree(id, 'v')?.last()?.map(|(k, _)| u64_key(&k)).unwrap_or(0);
            for t in ['c', 'f'] {
                let tree = self.tree(id, t)?;
                for k in tree.range(be(last + 1)..).keys() {
                    tree.remove(k?)?;
                }
            }
        }
        self.db.flush()?;
        Ok(())
    }

    fn tree(&self, id: u64, kind: char) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("{kind}.{id}"))?)
    }

    pub fn new_model_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1)
    }

    pub fn models(&self) -> Result<Vec<ModelRecord>> {
        self.models.iter().values().map(|v| records::decode(&v?, "model record")).collect()
    }

    pub fn put_model(&self, rec: &ModelRecord) -> Result<()> {
        self.models.insert(rec.spec.name.as_bytes(), records::encode(rec))?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes a model and all its versions; returns how many versions were dropped.
    pub fn delete_model(&self, rec: &ModelRecord) -> Result<u64> {
        let n = self.tree(rec.id, 'v')?.len() as u64;
        self.models.remove(rec.spec.name.as_bytes())?;
        self.db.flush()?;
        for kind in ['v', 'f', 'c'] {
            self.db.drop_tree(format!("{kind}.{}", rec.id))?;
        }
        self.db.flush()?;
        Ok(n)
    }

    /// Writes a version: its new chunks (keyed by this version), its manifest and record,
    /// then flushes. When this returns, the version survives `kill -9`.
    pub fn write_version(
        &self,
        id: u64,
        rec: &VersionRecord,
        manifest: &Manifest,
        chunks: &[ChunkWrite],
    ) -> Result<()> {
        let ctree = self.tree(id, 'c')?;
        let mut batch = sled::Batch::default();
        for (t, c, blob) in chunks {
            batch.insert(&chunk_key(rec.version, *t, *c), blob.as_slice());
        }
        ctree.apply_batch(batch)?;
        self.tree(id, 'f')?.insert(be(rec.version), manifest.encode())?;
        self.tree(id, 'v')?.insert(be(rec.version), records::encode(rec))?;
        self.db.flush()?;
        Ok(())
    }

    /// Rewrites a version's record (tags, metrics); its content never changes.
    pub fn update_version(&self, id: u64, rec: &VersionRecord) -> Result<()> {
        self.tree(id, 'v')?.insert(be(rec.version), records::encode(rec))?;
        self.db.flush()?;
        Ok(())
    }

    /// All retained versions of a model, oldest first.
    pub fn versions(&self, id: u64) -> Result<Vec<VersionRecord>> {
        self.tree(id, 'v')?.iter().values().map(|v| records::decode(&v?, "version record")).collect()
    }

    pub fn manifest(&self, id: u64, version: u64, model: &str) -> Result<Option<Manifest>> {
        match self.tree(id, 'f')?.get(be(version))? {
            None => Ok(None),
            Some(b) => Manifest::decode(&b).map(Some).ok_or_else(|| StoreError::Corrupt {
                model: model.into(),
                message: format!("manifest of version {version}"),
            }),
        }
    }

    /// Loads every chunk a manifest names into `params` (whose layout must match).
    pub fn load_params(&self, id: u64, model: &str, manifest: &Manifest, params: &mut Params) -> Result<()> {
        let corrupt = |message: String| StoreError::Corrupt { model: model.into(), message };
        if !manifest.matches(params) {
            return Err(corrupt("manifest does not match the model's layout".into()));
        }
        let ctree = self.tree(id, 'c')?;
        for (t, chunks) in manifest.tensors.iter().enumerate() {
            for (c, wver) in chunks.iter().enumerate() {
                let key = chunk_key(*wver, t as u32, c as u32);
                let blob = ctree
                    .get(key)?
                    .ok_or_else(|| corrupt(format!("chunk {c} of tensor {t} (version {wver}) is missing")))?;
                params.decode_chunk(t, c, &blob).map_err(|e| corrupt(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Drops versions (records, manifests, and the chunks no kept version references).
    /// Returns the number of chunks freed.
    pub fn drop_versions(&self, id: u64, model: &str, drop: &[u64], keep: &[u64]) -> Result<u64> {
        let mut referenced = HashSet::new();
        for v in keep {
            if let Some(m) = self.manifest(id, *v, model)? {
                referenced.extend(m.entries());
            }
        }
        let (vtree, ftree, ctree) = (self.tree(id, 'v')?, self.tree(id, 'f')?, self.tree(id, 'c')?);
        let mut freed = 0;
        for v in drop {
            if let Some(m) = self.manifest(id, *v, model)? {
                for (t, c, wver) in m.entries().filter(|e| !referenced.contains(e)) {
                    freed += ctree.remove(chunk_key(wver, t, c))?.is_some() as u64;
                }
            }
            ftree.remove(be(*v))?;
            vtree.remove(be(*v))?;
        }
        self.db.flush()?;
        Ok(freed)
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn u64_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8.min(k.len())]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests;
