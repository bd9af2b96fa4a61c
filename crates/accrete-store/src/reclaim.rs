//! Giving sled's disk space back. sled 0.34 reuses the space of deleted data lazily and
//! never shrinks its file: even a fresh sequential copy takes about 1.7x its data (8 KiB
//! values), and a database in use 2-2.5x. It now holds only records, manifests and the
//! blob index (the blobs are in pack files), but manifests are rewritten often (every
//! commit, every compaction step), so when the file has grown past twice its live data
//! plus [`SLACK`], the store is compacted ([`Store::compact`]: a copy of the live data
//! swapped in by renames; every store call waits meanwhile, so it is done only for stores
//! of at most [`AUTO_MAX`] live). A lower bound would copy again and again: the copy
//! itself lands above it; a small slack did (measured: a 2^24-row model's commits and
//! compactions copied its few MiB of records over and over, holding every commit up).
//!
//! Counting the live data reads the whole database, so it is counted only when the file
//! has outgrown the last count by that margin: the counting costs no more, over time,
//! than the writes that grew the file. A store opened looks too (sled's recovery and the
//! store's own leave garbage), unless its file is too large to count at startup.
use crate::{Result, Store};

/// Disk the file may hold beyond twice its live data.
const SLACK: u64 = 32 << 20;
/// The most live data the store compacts by itself.
const AUTO_MAX: u64 = 1 << 30;

impl Store {
    /// Bytes of keys and values in the database (what a compaction copies).
    pub fn live_bytes(&self) -> Result<u64> {
        let g = self.inner()?;
        let mut n = 0u64;
        for name in g.db.tree_names() {
            for kv in g.db.open_tree(&name)?.iter() {
                let (k, v) = kv?;
                n += (k.len() + v.len()) as u64;
            }
        }
        Ok(n)
    }

    /// Compacts the database if its file holds far more than its live data (see the
    /// module's text). Returns the bytes on disk before and after, when it did. At most
    /// one caller at a time looks; the others return at once.
    pub fn reclaim_if_wasteful(&self) -> Result<Option<(u64, u64)>> {
        let Some(mut last_live) = self.reclaim.try_lock() else { return Ok(None) };
        let disk = self.disk_bytes();
        if *last_live == 0 && disk > 2 * AUTO_MAX {
            // (at open: counting would read the whole large database before serving)
            *last_live = disk;
            return Ok(None);
        }
        if disk <= 2 * *last_live + SLACK {
            return Ok(None);
        }
        let live = self.live_bytes()?;
        *last_live = live;
        if disk <= 2 * live + SLACK {
            return Ok(None);
        }
        if live > AUTO_MAX {
            tracing::warn!(dir = %self.dir.display(), disk, live, "the database holds much more disk than data; it is too large to compact while serving");
            return Ok(None);
        }
        let (before, after) = self.writing(|| self.compact())?;
        tracing::info!(dir = %self.dir.display(), before, after, live, "compacted the database to give disk back");
        Ok(Some((before, after)))
    }
}
