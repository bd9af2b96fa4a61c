//! The sled database's lifecycle: opening it (waiting out a lock a closed store still
//! holds), opening it again after a failed write, and compaction — a copy of the live data
//! swapped in by renames, which a crash at any point leaves whole.
use crate::{Result, Store, StoreError, FLUSH_EVERY_BYTES};
use parking_lot::MappedRwLockReadGuard;
use std::path::Path;
use std::time::{Duration, Instant};

/// The open sled database and its `models` tree.
pub(crate) struct Inner {
    pub db: sled::Db,
    pub models: sled::Tree,
}

pub(crate) type Guard<'a> = MappedRwLockReadGuard<'a, Inner>;

impl Inner {
    pub fn tree(&self, id: u64, kind: char) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("{kind}.{id}"))?)
    }
}

/// How often a store whose writes fail tries to open its database again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// The last failed write of a store: when, and what (an IO error's kind and text).
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    at: Instant,
    kind: std::io::ErrorKind,
    message: String,
}

impl Store {
    /// Runs a write. After a write failed with an IO error (a full disk), sled refuses
    /// every later write until the database is opened again: so the next write first
    /// reopens it (at most once a second; until then it fails at once with the same
    /// error, whose kind — `StorageFull` — the server answers as `RESOURCE_EXHAUSTED`).
    /// So the store recovers once the cause is gone, without a restart.
    ///
    /// Called only at the public write methods' entry, never with the database's read
    /// lock held (a reopen takes the write lock).
    pub(crate) fn writing<T>(&self, write: impl FnOnce() -> Result<T>) -> Result<T> {
        let failed = self.failed.lock().clone();
        if let Some(f) = failed {
            if f.at.elapsed() < REOPEN_EVERY {
                return Err(StoreError::Io { dir: self.dir.clone(), source: std::io::Error::new(f.kind, f.message) });
            }
            if let Err(e) = self.reopen() {
                let kind = e.io_kind().unwrap_or(f.kind);
                *self.failed.lock() = Some(Failed { at: Instant::now(), kind, message: e.to_string() });
                return Err(e);
            }
            tracing::warn!(dir = %self.dir.display(), "database opened again after a failed write");
            *self.failed.lock() = None;
        }
        let result = write();
        if let Err(e) = &result {
            self.note_failure(e);
        }
        result
    }

    fn note_failure(&self, e: &StoreError) {
        if let Some(kind) = e.io_kind() {
            *self.failed.lock() = Some(Failed { at: Instant::now(), kind, message: e.to_string() });
        }
    }

    /// Closes the database and opens it again from what is on disk: how the store recovers
    /// after a failed write (sled refuses every write after an IO error, `ENOSPC`
    /// included, until it is opened again). Writes not flushed before the failure are
    /// lost; nothing acknowledged is, as every acknowledged write was flushed, and a
    /// version's write holds the database from its first blob to its flush (so it is
    /// never split over the two). Nothing is collected here: other models' writes go on
    /// meanwhile, and what a failed write left (index entries above the last version,
    /// packs nothing names) is harmless until the next open removes it.
    pub fn reopen(&self) -> Result<()> {
        {
            let mut g = self.inner.write();
            if let Some(old) = g.take() {
                let _ = old.db.flush();
            }
            let db = open_db(&self.dir, self.cache_bytes)?;
            let models = db.open_tree("models")?;
            *g = Some(Inner { db, models });
        }
        self.reload_indexes()
    }

    /// Rewrites the database with only its live data and gives the rest of the disk back
    /// (sled reuses freed space but never shrinks its file). Copies into `db.compact`,
    /// then swaps directories by renames, so a crash at any point leaves one whole
    /// database ([`Store::open`] finishes or discards a swap). Every other store call
    /// waits meanwhile. Returns the bytes on disk before and after.
    pub fn compact(&self) -> Result<(u64, u64)> {
        let io = |e| self.io(e);
        let (live, tmp, old) = (self.dir.join("db"), self.dir.join("db.compact"), self.dir.join("db.old"));
        let mut g = self.inner.write();
        let before = disk_bytes(&live);
        {
            let Some(inner) = g.as_ref() else { return Err(StoreError::Closed(self.dir.clone())) };
            inner.db.flush()?;
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io)?;
            }
            let copy = || -> Result<()> {
                let new = sled::Config::new().path(&tmp).cache_capacity(self.cache_bytes).open()?;
                let mut copied = 0usize;
                for name in inner.db.tree_names() {
                    let (from, to) = (inner.db.open_tree(&name)?, new.open_tree(&name)?);
                    for kv in from.iter() {
                        let (k, v) = kv?;
                        copied += k.len() + v.len();
                        to.insert(k, v)?;
                        if copied >= FLUSH_EVERY_BYTES as usize {
                            new.flush()?;
                            copied = 0;
                        }
                    }
                }
                new.flush()?;
                Ok(())
            };
            if let Err(e) = copy() {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        // From here the copy is whole: the old database goes, the copy takes its place.
        g.take();
        std::fs::rename(&live, &old).map_err(io)?;
        std::fs::rename(&tmp, &live).map_err(io)?;
        std::fs::remove_dir_all(&old).map_err(io)?;
        let db = open_db(&self.dir, self.cache_bytes)?;
        let models = db.open_tree("models")?;
        *g = Some(Inner { db, models });
        Ok((before, disk_bytes(&live)))
    }

    /// Bytes the database takes on disk (allocated blocks, as `du` counts them).
    pub fn disk_bytes(&self) -> u64 {
        disk_bytes(&self.dir.join("db"))
    }
}

/// Finishes or discards a compaction a crash interrupted: a copy beside a database is
/// incomplete; a copy without one was about to take its place.
pub(crate) fn finish_compaction(dir: &Path) -> std::io::Result<()> {
    let (live, tmp, old) = (dir.join("db"), dir.join("db.compact"), dir.join("db.old"));
    if tmp.exists() {
        if live.exists() {
            std::fs::remove_dir_all(&tmp)?;
        } else {
            std::fs::rename(&tmp, &live)?;
        }
    }
    if old.exists() && live.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Allocated bytes of the files under `p`.
fn disk_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                disk_bytes(&e.path())
            } else {
                e.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
            }
        })
        .sum()
}

/// Opens the sled database of `dir`, waiting up to 3 s for a lock still held by a store
/// just closed (its flusher thread ends after the handle is dropped).
pub(crate) fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
    let config = sled::Config::new().path(dir.join("db")).cache_capacity(cache_bytes);
    // The database's lock may still be held for a moment by a store just closed (its
    // flusher thread ends after the handle is dropped); longer means another server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let db = loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|_| {
            StoreError::Damaged { dir: dir.to_path_buf(), message: "sled panicked while opening".into() }
        })?;
        match opened {
            Ok(db) => break db,
            // (sled 0.34 reports the lock as an error of kind Other with this text)
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse(dir.to_path_buf()));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                let message = format!("cannot open database: {e}");
                return Err(StoreError::Damaged { dir: dir.to_path_buf(), message });
            }
        }
    };
    Ok(db)
}
