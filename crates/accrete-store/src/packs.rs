//! Pack files: where the bytes of bases and delta layers live, outside sled.
//!
//! A pack is a file of blobs written back to back, once: `DATA_DIR/packs/{model id}/
//! {n:016x}.pack`, `n` unique in the store. It is written whole and fsynced (with its
//! directory) before the index entry that names it (sled tree `p.{id}`, see [`Loc`]) is
//! written, so an index entry never names bytes that are not durable. A pack goes when no
//! blob in it is live, and is rewritten with only its live blobs when fewer than half of
//! its bytes are (`index.rs`; so the packs of a model hold about twice what its retained
//! versions reference at most, unless a rewrite failed: logged). Packs nothing names — a
//! commit that crashed between its pack and its index entry, a rewrite that crashed
//! before deleting the old pack — are deleted when the store opens.
//!
//! Why not in sled: sled 0.34 keeps about twice the live data on disk once values churn
//! (1.7x after a fresh copy of 8 KiB values), and its memory grows with the bytes written
//! through it; a pack costs its bytes, and reading one costs no resident memory.
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a blob's bytes are: a pack, an offset and a length, and their CRC-32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub pack: u64,
    pub off: u64,
    pub len: u32,
    pub crc: u32,
}

impl Loc {
    pub const BYTES: usize = 24;

    #[cfg(test)]
    pub fn encode(&self) -> [u8; Loc::BYTES] {
        let mut b = [0u8; Loc::BYTES];
        b[..8].copy_from_slice(&self.pack.to_le_bytes());
        b[8..16].copy_from_slice(&self.off.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Loc> {
        let b: &[u8; Loc::BYTES] = b.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        Some(Loc { pack: u64_at(0), off: u64_at(8), len: u32_at(16), crc: u32_at(20) })
    }
}

/// The packs directory of a store.
#[derive(Debug)]
pub(crate) struct Packs {
    dir: PathBuf,
    next: AtomicU64,
    /// Models whose directory is known durable in `packs/`.
    synced: parking_lot::Mutex<std::collections::HashSet<u64>>,
}

/// What reading a blob found.
pub(crate) enum Read {
    Ok,
    /// Its pack is gone or shorter than the index says (which, and the pack's path).
    Missing(String),
    /// Its bytes do not match their CRC.
    Damaged,
}

impl Packs {
    /// Opens (creating) `dir`, the store's packs directory.
    pub fn open(dir: &Path) -> std::io::Result<Packs> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| with_path(e, dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| with_path(e, parent))?;
            }
        }
        let mut last = 0;
        for id in model_dirs(dir).map_err(|e| with_path(e, dir))? {
            let sub = dir.join(id.to_string());
            last = last.max(list(&sub).map_err(|e| with_path(e, &sub))?.into_iter().max().unwrap_or(0));
        }
        Ok(Packs { dir: dir.to_path_buf(), next: AtomicU64::new(last + 1), synced: Default::default() })
    }

    /// New packs get numbers above `n` (one an index entry names, whose file may be gone).
    pub fn advance_past(&self, n: u64) {
        self.next.fetch_max(n + 1, Ordering::Relaxed);
    }

    fn model_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    pub fn path(&self, id: u64, pack: u64) -> PathBuf {
        self.model_dir(id).join(format!("{pack:016x}.pack"))
    }

    /// Writes a new pack of model `id` holding `parts` back to back, durably (file and
    /// directory fsynced). Returns its number. A failed write leaves no file.
    pub fn write(&self, id: u64, parts: &[&[u8]]) -> std::io::Result<u64> {
        let dir = self.model_dir(id);
        if !self.synced.lock().contains(&id) {
            // (every writer syncs until one has: a pack is never named before its
            // directory's entry is durable)
            std::fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir))?;
            sync_dir(&self.dir).map_err(|e| with_path(e, &self.dir))?;
            self.synced.lock().insert(id);
        }
        let pack = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.path(id, pack);
        let written = (|| {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            for p in parts {
                w.write_all(p)?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            sync_dir(&dir)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(with_path(e, &path));
        }
        Ok(pack)
    }

    /// Reads the blob at `loc` of model `id` into `out` (cleared first).
    pub fn read(&self, id: u64, loc: &Loc, out: &mut Vec<u8>) -> std::io::Result<Read> {
        out.clear();
        let path = self.path(id, loc.pack);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Read::Missing(format!("its pack {} is gone", path.display())))
            }
            Err(e) => return Err(with_path(e, &path)),
        };
        let size = f.metadata().map_err(|e| with_path(e, &path))?.len();
        if loc.off.checked_add(loc.len as u64).is_none_or(|end| end > size) {
            let what = format!("pack {} holds {size} bytes, the index names {}..+{}", path.display(), loc.off, loc.len);
            return Ok(Read::Missing(what));
        }
        out.resize(loc.len as usize, 0);
        f.read_exact_at(out, loc.off).map_err(|e| with_path(e, &path))?;
        Ok(if crc32fast::hash(out) == loc.crc { Read::Ok } else { Read::Damaged })
    }

    /// Bytes of a pack's file (0 when it is gone).
    pub fn size(&self, id: u64, pack: u64) -> u64 {
        std::fs::metadata(self.path(id, pack)).map_or(0, |m| m.len())
    }

    /// Deletes a pack (one already gone is not an error).
    pub fn remove(&self, id: u64, pack: u64) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id, pack)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes every pack of model `id`.
    pub fn remove_model(&self, id: u64) -> std::io::Result<()> {
        self.synced.lock().remove(&id);
        match std::fs::remove_dir_all(self.model_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The packs of model `id`, oldest first.
    pub fn list(&self, id: u64) -> std::io::Result<Vec<u64>> {
        list(&self.model_dir(id))
    }

    /// The models that have a packs directory.
    pub fn models(&self) -> std::io::Result<Vec<u64>> {
        model_dirs(&self.dir)
    }
}

fn model_dirs(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        if let Some(id) = e?.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            out.push(id);
        }
    }
    Ok(out)
}

fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let name = e?.file_name();
        let n = name.to_str().and_then(|n| n.strip_suffix(".pack")).and_then(|n| u64::from_str_radix(n, 16).ok());
        out.extend(n);
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An IO error that names the file it happened on.
fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_reads_back_and_a_damaged_or_short_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let (a, b) = (vec![1u8; 100], vec![2u8; 50]);
        let n = packs.write(7, &[&a, &b]).unwrap();
        let loc = Loc { pack: n, off: 100, len: 50, crc: crc32fast::hash(&b) };
        assert_eq!(Loc::decode(&loc.encode()), Some(loc));
        let mut out = Vec::new();
        assert!(matches!(packs.read(7, &loc, &mut out).unwrap(), Read::Ok));
        assert_eq!(out, b);
        let wrong = Loc { crc: loc.crc ^ 1, ..loc };
        assert!(matches!(packs.read(7, &wrong, &mut out).unwrap(), Read::Damaged));
        let past = Loc { off: 120, ..loc };
        assert!(matches!(packs.read(7, &past, &mut out).unwrap(), Read::Missing(_)));
        assert_eq!(packs.list(7).unwrap(), vec![n]);
        // numbers are not reused after a reopen
        let again = Packs::open(dir.path()).unwrap();
        assert!(again.write(7, &[&a]).unwrap() > n);
        packs.remove(7, n).unwrap();
        assert!(matches!(packs.read(7, &loc, &mut out).unwrap(), Read::Missing(_)));
        packs.remove_model(7).unwrap();
        assert_eq!(packs.models().unwrap(), Vec::<u64>::new());
    }
}
