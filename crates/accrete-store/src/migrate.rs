//! Migrating older data dirs to format 4 at open. Format 4 indexes blobs with one entry
//! per pack (`p.{id}`); format 3 had one per blob (`x.{id}`); formats 1 and 2 kept the
//! blobs themselves in sled, in pieces (bases in `c.{id}`, layers in `d.{id}`).
//!
//! Order: every blob of formats 1 and 2 is moved into packs and indexed, format 3's index
//! entries are written as pack entries, everything is flushed; then the marker is
//! rewritten; only then are the old trees dropped ([`Store::drop_old_trees`], which every
//! open runs, so a crash after the marker leaves nothing behind). A crash before the
//! marker runs the migration again (the old trees are all still there, so the previous
//! binary could still read the dir): blobs moved twice are listed by their newest pack,
//! and the first packs, in which nothing is live, go at that open.
use crate::keys::ref_of_key;
use crate::{Ref, Result, Store};
use std::collections::HashSet;

/// The most blob bytes moved per pack.
const PACK_BYTES: usize = 64 << 20;

/// The old trees a migration leaves for [`Store::drop_old_trees`]: `c.{id}`, `d.{id}`
/// (formats 1 and 2) and `x.{id}` (format 3).
fn old_tree(name: &str) -> Option<(char, u64)> {
    let (kind, id) = name.split_once('.')?;
    let kind = match kind {
        "c" => 'c',
        "d" => 'd',
        "x" => 'x',
        _ => return None,
    };
    Some((kind, id.parse().ok()?))
}

impl Store {
    /// Moves every blob stored in sled (formats 1 and 2) into packs, and indexes format
    /// 3's blobs by pack, for the models that exist; flushed. Returns how many blobs.
    pub(crate) fn migrate(&self) -> Result<u64> {
        let g = self.inner()?;
        let ids: HashSet<u64> = self.models()?.iter().map(|m| m.id).collect();
        let mut moved = 0u64;
        for name in g.db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let Some((kind, id)) = old_tree(&name).filter(|(_, id)| ids.contains(id)) else { continue };
            let tree = g.db.open_tree(&name)?;
            if kind == 'x' {
                moved += self.index_by_pack(id, &tree)?;
                continue;
            }
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
        }
        self.sync()?;
        Ok(moved)
    }

    /// Drops the trees older formats kept blobs or their index in (after the marker says
    /// the dir is format 4). Returns how many.
    pub(crate) fn drop_old_trees(&self) -> Result<usize> {
        let g = self.inner()?;
        let old: Vec<String> =
            g.db.tree_names()
                .iter()
                .map(|n| String::from_utf8_lossy(n).to_string())
                .filter(|n| old_tree(n).is_some())
                .collect();
        for name in &old {
            g.db.drop_tree(name.as_bytes())?;
        }
        if !old.is_empty() {
            self.sync()?;
        }
        Ok(old.len())
    }

    fn put_moved(&self, id: u64, data: &[u8], blobs: &[(Ref, std::ops::Range<usize>)]) -> Result<u64> {
        let parts: Vec<(Ref, &[u8])> = blobs.iter().map(|(r, range)| (*r, &data[range.clone()])).collect();
        self.put_blobs(id, &parts)?;
        Ok(parts.len() as u64)
    }
}
