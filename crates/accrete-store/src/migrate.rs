//! Format 4 indexes blobs with one entry per pack (`p.{id}`); format 3 had one per blob
//! (`x.{id}`): opening a format-3 dir writes the pack entries, flushes, then drops the old
//! trees (a crash before the marker is rewritten does it again, harmlessly).
//!
//! Format 3 moved blobs out of sled into pack files. A data dir of format 1 or 2 keeps its
//! bases (tree `c.{id}`) and layers (`d.{id}`) in sled, in pieces: opening it moves every
//! blob into packs, indexes it, flushes, and only then drops the old trees. A crash
//! before the marker is rewritten runs the move again: blobs moved twice are indexed to
//! their second pack, and the first, which nothing names, goes at that open.
use crate::keys::ref_of_key;
use crate::{Ref, Result, Store};

/// The most blob bytes moved per pack.
const PACK_BYTES: usize = 64 << 20;

impl Store {
    /// Moves every blob stored in sled (formats 1 and 2) into packs. Returns how many.
    pub(crate) fn migrate_pieces(&self) -> Result<u64> {
        let g = self.inner()?;
        let mut moved = 0u64;
        let mut old = Vec::new();
        for name in g.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let Some((kind, id)) = name.split_once('.') else { continue };
            let (Some(kind @ ('c' | 'd')), Ok(id)) =
                (kind.chars().next().filter(|_| kind.len() == 1), id.parse::<u64>())
            else {
                continue;
            };
            let tree = g.db.open_tree(&name)?;
            // blobs in key order, each the concatenation of its pieces
            let (mut data, mut blobs): (Vec<u8>, Vec<(Ref, std::ops::Range<usize>)>) = (Vec::new(), Vec::new());
            for kv in tree.iter() {
                let (k, piece) = kv?;
                let Some(r) = ref_of_key(kind, &k) else { continue };
                match blobs.last_mut() {
                    Some((last, range)) if *last == r => range.end += piece.len(),
                    _ => {
                        if data.len() >= PACK_BYTES {
                            moved += self.put_moved(id, &data, &blobs)?;
                            data.clear();
                            blobs.clear();
                        }
                        blobs.push((r, data.len()..data.len() + piece.len()));
                    }
                }
                data.extend_from_slice(&piece);
            }
            moved += self.put_moved(id, &data, &blobs)?;
            old.push(name);
        }
        self.sync()?;
        for name in old {
            g.db.drop_tree(name.as_bytes())?;
        }
        self.sync()?;
        Ok(moved)
    }

    /// Rewrites format 3's per-blob index trees as pack entries. Returns how many blobs.
    pub(crate) fn migrate_blob_index(&self) -> Result<u64> {
        let g = self.inner()?;
        let mut moved = 0u64;
        let mut old = Vec::new();
        for name in g.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let Some(id) = name.strip_prefix("x.").and_then(|id| id.parse::<u64>().ok()) else { continue };
            moved += self.index_by_pack(id, &g.db.open_tree(&name)?)?;
            old.push(name);
        }
        self.sync()?;
        for name in old {
            g.db.drop_tree(name.as_bytes())?;
        }
        self.sync()?;
        Ok(moved)
    }

    fn put_moved(&self, id: u64, data: &[u8], blobs: &[(Ref, std::ops::Range<usize>)]) -> Result<u64> {
        let parts: Vec<(Ref, &[u8])> = blobs.iter().map(|(r, range)| (*r, &data[range.clone()])).collect();
        self.put_blobs(id, &parts)?;
        Ok(parts.len() as u64)
    }
}
