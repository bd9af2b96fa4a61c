//! The blob index: where each blob's bytes are. On disk, one sled entry per pack (tree
//! `p.{id}`: pack number, u64 BE → the blobs it holds, with offset, length and CRC-32);
//! in memory, per model, blob → [`Loc`], loaded at open and after a reopen.
//!
//! One entry per pack, not per blob: a commit indexes its layers with one insert (a
//! 2^24-row model's 1 % commit writes 1,024 layers; 1,024 inserts took 6–7 ms of its
//! ~28). A blob written again (a retried write, a compaction's base written twice) is
//! listed by its newest pack only: its older listing is rewritten without it in the same
//! batch. Loading takes the packs in order, so a later pack's listing wins anyway.
//!
//! Deleting blobs rewrites the entries of the packs that held them: a pack left without a
//! live blob goes (entry, then file); one less than half live is copied into a new pack
//! with only its live blobs (the new pack is fsynced before its entry, the old entry goes
//! in the same batch, the old file after the flush); any other keeps an entry listing what
//! is left. A crash before the flush leaves the old entries, naming blobs that no version
//! references, which the next open deletes again.
use crate::keys::{be, blob_key, ref_of_blob_key, u64_key};
use crate::packs::{Loc, Read};
use crate::{Ref, Result, Store, StoreError};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A model's index in memory.
#[derive(Debug, Default)]
pub(crate) struct ModelIndex {
    /// Every indexed blob, where it is.
    pub locs: HashMap<Ref, Loc>,
    /// Per pack with an entry: the blobs the entry lists (a blob listed elsewhere since is
    /// not live here).
    pub packs: BTreeMap<u64, Vec<Ref>>,
    /// Packs that lost blobs to a newer pack (a blob written again): the next deletion,
    /// which runs with no load in flight, deletes or rewrites them as it does the packs
    /// it frees blobs in.
    pub retouch: BTreeSet<u64>,
}

impl ModelIndex {
    /// The blobs of `pack` that are live (indexed there), but for those in `without`.
    fn live(&self, pack: u64, without: &BTreeSet<Ref>) -> Vec<(Ref, Loc)> {
        let listed = self.packs.get(&pack).map(Vec::as_slice).unwrap_or_default();
        listed
            .iter()
            .filter(|r| !without.contains(r))
            .filter_map(|r| self.locs.get(r).filter(|l| l.pack == pack).map(|l| (*r, *l)))
            .collect()
    }

    /// Records a pack's entry as written.
    fn list(&mut self, pack: u64, blobs: &[(Ref, Loc)]) {
        self.packs.insert(pack, blobs.iter().map(|(r, _)| *r).collect());
        self.locs.extend(blobs.iter().copied());
    }
}

/// A pack's blobs, each with where it is.
type Listing = Vec<(Ref, Loc)>;

/// The indexes of a store's models (each behind its own lock).
pub(crate) type Indexes = Arc<Mutex<HashMap<u64, Arc<Mutex<ModelIndex>>>>>;

/// A pack's entry: blob count (u32 LE), then per blob its key ([`blob_key`]: 17 bytes
/// for a base, 25 for a layer), offset u64, length u32, CRC-32 u32 (LE).
fn encode(blobs: &[(Ref, Loc)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + blobs.len() * 41);
    out.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for (r, loc) in blobs {
        out.extend_from_slice(&blob_key(r));
        out.extend_from_slice(&loc.off.to_le_bytes());
        out.extend_from_slice(&loc.len.to_le_bytes());
        out.extend_from_slice(&loc.crc.to_le_bytes());
    }
    out
}

/// A pack's entry; `None` when the bytes are not one.
fn decode(pack: u64, b: &[u8]) -> Option<Vec<(Ref, Loc)>> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if n > b.len() / 33 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    let mut pos = 4;
    for _ in 0..n {
        let klen = match b.get(pos + 8)? {
            0 => 17,
            _ => 25,
        };
        let r = ref_of_blob_key(b.get(pos..pos + klen)?)?;
        pos += klen;
        let f = b.get(pos..pos + 16)?;
        let off = u64::from_le_bytes(f[..8].try_into().ok()?);
        let len = u32::from_le_bytes(f[8..12].try_into().ok()?);
        let crc = u32::from_le_bytes(f[12..].try_into().ok()?);
        pos += 16;
        out.push((r, Loc { pack, off, len, crc }));
    }
    (pos == b.len()).then_some(out)
}

impl Store {
    /// Model `id`'s index (an empty one if it has none yet).
    pub(crate) fn model_index(&self, id: u64) -> Arc<Mutex<ModelIndex>> {
        self.index.lock().entry(id).or_default().clone()
    }

    /// Loads model `id`'s index from the database. An entry that does not decode is
    /// damage, named (never taken for blobs that are not stored: that would drop the
    /// versions they belong to).
    pub(crate) fn load_index(&self, id: u64) -> Result<()> {
        let g = self.inner()?;
        let ix = self.model_index(id);
        let mut ix = ix.lock();
        let mut fresh = ModelIndex::default();
        for kv in g.tree(id, 'p')?.iter() {
            let (k, v) = kv?;
            let pack = u64_key(&k);
            let Some(blobs) = decode(pack, &v).filter(|_| k.len() == 8) else {
                let message = format!("the index entry of pack {pack:016x} does not decode ({} bytes)", v.len());
                return Err(StoreError::Corrupt { model: format!("id {id}"), message });
            };
            fresh.list(pack, &blobs);
        }
        *ix = fresh;
        Ok(())
    }

    /// Loads every model's index again (after the database was opened again: what a
    /// failed write did not make durable is gone from it). A model whose index does not
    /// load keeps none (its reads report the blobs missing, naming them; the next open
    /// stops on the damage), and the others go on.
    pub(crate) fn reload_indexes(&self) -> Result<()> {
        let ids: Vec<u64> = self.models()?.iter().map(|m| m.id).collect();
        self.index.lock().retain(|id, _| ids.contains(id));
        for id in ids {
            if let Err(e) = self.load_index(id) {
                tracing::error!(model_id = id, "the blob index did not load after reopening the database: {e}");
                *self.model_index(id).lock() = ModelIndex::default();
            }
        }
        Ok(())
    }

    /// Forgets model `id`'s index (the model is deleted).
    pub(crate) fn forget_index(&self, id: u64) {
        self.index.lock().remove(&id);
    }

    /// Where blob `r` of model `id` is.
    pub(crate) fn loc(&self, id: u64, r: &Ref) -> Option<Loc> {
        self.model_index(id).lock().locs.get(r).copied()
    }

    /// Every blob indexed for model `id`, with where it is.
    pub(crate) fn indexed(&self, id: u64) -> Vec<(Ref, Loc)> {
        self.model_index(id).lock().locs.iter().map(|(r, l)| (*r, *l)).collect()
    }

    /// Writes blobs as one pack, then indexes them with one entry (not flushed: the write
    /// that names them flushes).
    pub(crate) fn put_blobs(&self, id: u64, blobs: &[(Ref, &[u8])]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let parts: Vec<&[u8]> = blobs.iter().map(|(_, b)| *b).collect();
        let pack = self.packs.write(id, &parts).map_err(|e| self.io(e))?;
        let mut off = 0u64;
        let listed: Vec<(Ref, Loc)> = blobs
            .iter()
            .map(|(r, b)| {
                let loc = Loc { pack, off, len: b.len() as u32, crc: crc32fast::hash(b) };
                off += b.len() as u64;
                (*r, loc)
            })
            .collect();
        let g = self.inner()?;
        let ix = self.model_index(id);
        let mut ix = ix.lock();
        let mut batch = sled::Batch::default();
        batch.insert(&be(pack), encode(&listed));
        // (a blob written again: its older listing goes)
        let again: BTreeSet<Ref> = listed.iter().map(|(r, _)| *r).filter(|r| ix.locs.contains_key(r)).collect();
        let older: BTreeSet<u64> = again.iter().filter_map(|r| ix.locs.get(r).map(|l| l.pack)).collect();
        let relisted: Vec<(u64, Vec<(Ref, Loc)>)> = older.into_iter().map(|p| (p, ix.live(p, &again))).collect();
        for (p, live) in &relisted {
            batch.insert(&be(*p), encode(live));
        }
        g.tree(id, 'p')?.apply_batch(batch)?;
        for (p, live) in relisted {
            ix.list(p, &live);
            ix.retouch.insert(p);
        }
        ix.list(pack, &listed);
        Ok(())
    }

    /// Deletes blobs from the index (durably), then the packs left without a live blob;
    /// packs left less than half live are rewritten with only their live blobs. Returns
    /// how many of the blobs were indexed. Runs with no load in flight.
    pub(crate) fn delete_blobs(&self, id: u64, blobs: &[Ref]) -> Result<u64> {
        let _no_loads = self.blobs.write();
        let g = self.inner()?;
        let ix = self.model_index(id);
        let mut ix = ix.lock();
        let gone: BTreeSet<Ref> = blobs.iter().filter(|r| ix.locs.contains_key(r)).copied().collect();
        if gone.is_empty() && ix.retouch.is_empty() {
            return Ok(0);
        }
        let mut touched: BTreeSet<u64> = gone.iter().filter_map(|r| ix.locs.get(r).map(|l| l.pack)).collect();
        touched.extend(std::mem::take(&mut ix.retouch).into_iter().filter(|p| ix.packs.contains_key(p)));
        let mut batch = sled::Batch::default();
        // (pack, its entry's blobs; None: the entry goes) and the packs whose files go
        let (mut lists, mut emptied): (Vec<(u64, Option<Listing>)>, Vec<u64>) = (Vec::new(), Vec::new());
        for pack in touched {
            let live = ix.live(pack, &gone);
            let bytes: u64 = live.iter().map(|(_, l)| l.len as u64).sum();
            if live.is_empty() {
                batch.remove(&be(pack));
                lists.push((pack, None));
                emptied.push(pack);
            } else if 2 * bytes < self.packs.size(id, pack) {
                match self.copy_live(id, &live)? {
                    Some((new, moved)) => {
                        batch.insert(&be(new), encode(&moved));
                        batch.remove(&be(pack));
                        lists.extend([(new, Some(moved)), (pack, None)]);
                        emptied.push(pack);
                    }
                    None => {
                        batch.insert(&be(pack), encode(&live));
                        lists.push((pack, Some(live)));
                    }
                }
            } else {
                batch.insert(&be(pack), encode(&live));
                lists.push((pack, Some(live)));
            }
        }
        g.tree(id, 'p')?.apply_batch(batch)?;
        for r in &gone {
            ix.locs.remove(r);
        }
        for (pack, list) in lists {
            match list {
                Some(live) => ix.list(pack, &live),
                None => drop(ix.packs.remove(&pack)),
            }
        }
        drop(ix);
        self.sync()?;
        for pack in emptied {
            if let Err(e) = self.packs.remove(id, pack) {
                // (nothing names it: the next open deletes it)
                tracing::warn!(model_id = id, pack, "could not delete a pack nothing names: {e}");
            }
        }
        Ok(gone.len() as u64)
    }

    /// Copies live blobs (all of one pack) into a new pack, fsynced; returns it and where
    /// each blob is in it. `None` when a blob does not read back whole (left as it is: a
    /// read of it reports the damage) or the copy could not be written (logged: the space
    /// is given back when a later deletion touches the pack again).
    fn copy_live(&self, id: u64, live: &[(Ref, Loc)]) -> Result<Option<(u64, Listing)>> {
        let mut data = Vec::with_capacity(live.iter().map(|(_, l)| l.len as usize).sum());
        let (mut buf, mut moved) = (Vec::new(), Vec::with_capacity(live.len()));
        for (r, loc) in live {
            if !matches!(self.packs.read(id, loc, &mut buf).map_err(|e| self.io(e))?, Read::Ok) {
                return Ok(None);
            }
            moved.push((*r, Loc { off: data.len() as u64, ..*loc }));
            data.extend_from_slice(&buf);
        }
        match self.packs.write(id, &[&data]) {
            Ok(new) => Ok(Some((new, moved.into_iter().map(|(r, l)| (r, Loc { pack: new, ..l })).collect()))),
            Err(e) => {
                tracing::warn!(model_id = id, "could not rewrite a pack with only its live blobs: {e}");
                Ok(None)
            }
        }
    }

    /// Removes the entries and files of packs no blob is live in (at open: packs whose
    /// blobs were all written again elsewhere).
    pub(crate) fn drop_dead_packs(&self, id: u64) -> Result<()> {
        let g = self.inner()?;
        let ix = self.model_index(id);
        let mut ix = ix.lock();
        let none = BTreeSet::new();
        let dead: Vec<u64> = ix.packs.keys().copied().filter(|p| ix.live(*p, &none).is_empty()).collect();
        if dead.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        dead.iter().for_each(|p| batch.remove(&be(*p)));
        g.tree(id, 'p')?.apply_batch(batch)?;
        self.sync()?;
        for p in dead {
            ix.packs.remove(&p);
            self.packs.remove(id, p).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Writes format 3's index (tree `x.{id}`: one entry per blob) as pack entries; the
    /// caller flushes and drops the old trees.
    pub(crate) fn index_by_pack(&self, id: u64, x: &sled::Tree) -> Result<u64> {
        let mut by_pack: BTreeMap<u64, Vec<(Ref, Loc)>> = BTreeMap::new();
        for kv in x.iter() {
            let (k, v) = kv?;
            let (Some(r), Some(loc)) = (ref_of_blob_key(&k), Loc::decode(&v)) else {
                let message = format!("blob index entry {k:02x?} does not decode ({} bytes)", v.len());
                return Err(StoreError::Corrupt { model: format!("id {id}"), message });
            };
            by_pack.entry(loc.pack).or_default().push((r, loc));
        }
        let g = self.inner()?;
        let mut batch = sled::Batch::default();
        let n = by_pack.values().map(|b| b.len() as u64).sum();
        by_pack.iter().for_each(|(p, blobs)| batch.insert(&be(*p), encode(blobs)));
        g.tree(id, 'p')?.apply_batch(batch)?;
        Ok(n)
    }

    /// Removes blob `r` from model `id`'s index (as if its entry were lost), for tests.
    #[cfg(test)]
    pub(crate) fn unindex(&self, id: u64, r: &Ref) {
        let ix = self.model_index(id);
        let mut ix = ix.lock();
        let loc = ix.locs.remove(r).unwrap();
        let live = ix.live(loc.pack, &BTreeSet::new());
        self.tree(id, 'p').unwrap().insert(be(loc.pack), encode(&live)).unwrap();
        ix.list(loc.pack, &live);
    }

    /// Replaces the entry of the pack holding blob `r` with `bytes`, for tests.
    #[cfg(test)]
    pub(crate) fn damage_index(&self, id: u64, r: &Ref, bytes: &[u8]) {
        let pack = self.loc(id, r).unwrap().pack;
        self.tree(id, 'p').unwrap().insert(be(pack), bytes).unwrap();
    }

    /// Writes model `id`'s index as format 3 kept it (`x.{id}`, one entry per blob) and
    /// drops the pack entries, for tests.
    #[cfg(test)]
    pub(crate) fn to_blob_index(&self, id: u64) {
        let x = self.tree(id, 'x').unwrap();
        for (r, loc) in self.indexed(id) {
            x.insert(blob_key(&r), &loc.encode()[..]).unwrap();
        }
        self.tree(id, 'p').unwrap().clear().unwrap();
        self.flush().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_entry_roundtrips_and_a_truncated_one_is_refused() {
        let blobs = vec![
            (Ref::Base { t: 1, c: 2, v: 3 }, Loc { pack: 9, off: 0, len: 10, crc: 7 }),
            (Ref::Delta { t: 0, c: 5, hi: 8, lo: 6 }, Loc { pack: 9, off: 10, len: 4, crc: 1 }),
        ];
        let b = encode(&blobs);
        assert_eq!(decode(9, &b), Some(blobs));
        for n in 0..b.len() {
            assert_eq!(decode(9, &b[..n]), None, "{n} bytes");
        }
        assert_eq!(decode(9, &[&b[..], &[0]].concat()), None);
    }
}
