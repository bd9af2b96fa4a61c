//! A model's blobs in the store: writing a commit's bases and layers into a pack and its
//! index, reading a version's chains back (into parameters, or into one chunk's stored
//! form), and deleting what no retained version references (retention, compaction, and the
//! leftovers of a crash found at open), packs included.
use crate::keys::{be, blob_key, ref_of_blob_key, u64_key};
use crate::packs::{Loc, Read};
use crate::{Chain, ChunkBatch, Manifest, Ref, Result, Store, StoreError};
use accrete_core::Params;
use std::collections::{HashMap, HashSet};

impl Store {
    /// Every blob indexed for model `id`, with where it is.
    /// An entry that does not decode is damage, named (never taken for a blob that is not
    /// stored: that would drop the versions it belongs to).
    pub(crate) fn indexed(&self, id: u64) -> Result<Vec<(Ref, Loc)>> {
        let g = self.inner()?;
        let mut out = Vec::new();
        for kv in g.tree(id, 'x')?.iter() {
            let (k, v) = kv?;
            match (ref_of_blob_key(&k), Loc::decode(&v)) {
                (Some(r), Some(loc)) => out.push((r, loc)),
                _ => {
                    let message =
                        format!("blob index entry {k:02x?} of model id {id} does not decode ({} bytes)", v.len());
                    return Err(StoreError::Corrupt { model: format!("id {id}"), message });
                }
            }
        }
        Ok(out)
    }

    /// Deletes blobs no retained manifest references, and drops the records of versions
    /// whose manifest names a blob that is not stored; first the packs nothing indexes (a
    /// crash between a pack and its index entries, or in a rewrite), and the pack counter
    /// moves past every pack named. At open only (nothing else runs then).
    pub(crate) fn collect_chunks(&self, id: u64) -> Result<()> {
        let g = self.inner()?;
        let (vtree, ftree) = (g.tree(id, 'v')?, g.tree(id, 'f')?);
        let indexed = self.indexed(id)?;
        // (before any deletion below, which may rewrite a pack into a new one)
        let named: HashSet<u64> = indexed.iter().map(|(_, loc)| loc.pack).collect();
        self.packs.advance_past(named.iter().copied().max().unwrap_or(0));
        for pack in self.packs.list(id).map_err(|e| self.io(e))? {
            if !named.contains(&pack) {
                tracing::info!(model_id = id, pack, "removed a pack nothing names (a crash)");
                self.packs.remove(id, pack).map_err(|e| self.io(e))?;
            }
        }
        let stored: HashSet<Ref> = indexed.iter().map(|(r, _)| *r).collect();
        let mut referenced: HashSet<Ref> = HashSet::new();
        for kv in ftree.iter() {
            let (k, v) = kv?;
            let version = u64_key(&k);
            if !vtree.contains_key(&k)? {
                // (a retention pass's unflushed drop that landed for the record only)
                ftree.remove(&k)?;
                continue;
            }
            let Some(m) = Manifest::decode(&v) else {
                let message = format!("manifest of version {version} (model id {id}) does not decode");
                return Err(StoreError::Corrupt { model: format!("id {id}"), message });
            };
            if let Some(r) = m.refs().find(|r| !stored.contains(r)) {
                tracing::error!(model_id = id, version, "version dropped at open: its {r:?} is missing");
                vtree.remove(be(version))?;
                ftree.remove(be(version))?;
                continue;
            }
            referenced.extend(m.refs());
        }
        let unreferenced: Vec<Ref> = stored.difference(&referenced).copied().collect();
        let freed = self.delete_blobs(id, &unreferenced)?;
        if freed > 0 {
            tracing::info!(model_id = id, blobs = freed, "removed blobs no version references (a crash)");
        }
        Ok(())
    }

    /// Deletes blobs from the index (durably), then the packs left without a live blob;
    /// packs left less than half live are rewritten with only their live blobs. Returns
    /// how many blobs were indexed.
    pub(crate) fn delete_blobs(&self, id: u64, blobs: &[Ref]) -> Result<u64> {
        let _no_loads = self.blobs.write();
        let g = self.inner()?;
        let x = g.tree(id, 'x')?;
        let (mut batch, mut touched, mut freed) = (sled::Batch::default(), HashSet::new(), 0);
        for r in blobs {
            let k = blob_key(r);
            if let Some(v) = x.get(&k)? {
                touched.extend(Loc::decode(&v).map(|l| l.pack));
                batch.remove(k);
                freed += 1;
            }
        }
        if freed == 0 {
            return Ok(0);
        }
        x.apply_batch(batch)?;
        self.sync()?;
        if let Err(e) = self.tidy_packs(id, &x, &touched) {
            // (the index is consistent: what is left is disk, given back when a later
            // deletion touches the pack again)
            tracing::warn!(model_id = id, "could not give back the space of deleted blobs: {e}");
        }
        Ok(freed)
    }

    /// Deletes or rewrites the `touched` packs by what the index still names in them.
    /// Runs with no load in flight (under the `blobs` write lock).
    fn tidy_packs(&self, id: u64, x: &sled::Tree, touched: &HashSet<u64>) -> Result<()> {
        let mut live: HashMap<u64, Vec<(sled::IVec, Loc)>> = touched.iter().map(|p| (*p, Vec::new())).collect();
        for kv in x.iter() {
            let (k, v) = kv?;
            if let Some(loc) = Loc::decode(&v) {
                if let Some(blobs) = live.get_mut(&loc.pack) {
                    blobs.push((k, loc));
                }
            }
        }
        for (pack, blobs) in live {
            let bytes: u64 = blobs.iter().map(|(_, l)| l.len as u64).sum();
            if blobs.is_empty() {
                self.packs.remove(id, pack).map_err(|e| self.io(e))?;
            } else if 2 * bytes < self.packs.size(id, pack) {
                self.rewrite_pack(id, x, pack, &blobs)?;
            }
        }
        Ok(())
    }

    /// Copies a pack's live blobs into a new pack, points their index entries at it
    /// (durably), then deletes the old one. A crash before the flush leaves entries
    /// naming either pack, both kept; after it, the old pack unnamed, deleted at the
    /// next open.
    fn rewrite_pack(&self, id: u64, x: &sled::Tree, pack: u64, blobs: &[(sled::IVec, Loc)]) -> Result<()> {
        let mut data = Vec::with_capacity(blobs.iter().map(|(_, l)| l.len as usize).sum());
        let mut buf = Vec::new();
        let mut moved = Vec::with_capacity(blobs.len());
        for (_, loc) in blobs {
            if !matches!(self.packs.read(id, loc, &mut buf).map_err(|e| self.io(e))?, Read::Ok) {
                // (left as it is: a read of it reports the damage)
                return Ok(());
            }
            moved.push(Loc { off: data.len() as u64, ..*loc });
            data.extend_from_slice(&buf);
        }
        let new = self.packs.write(id, &[&data]).map_err(|e| self.io(e))?;
        for ((k, old), loc) in blobs.iter().zip(moved) {
            let new = Loc { pack: new, ..loc };
            // (Err: the entry changed meanwhile — its blob written again — and names
            // another pack)
            let _changed = x.compare_and_swap(k, Some(&old.encode()[..]), Some(&new.encode()[..]))?;
        }
        self.sync()?;
        self.packs.remove(id, pack).map_err(|e| self.io(e))
    }

    /// Writes chunks of a version that is not written yet (big writes go in batches before
    /// [`Store::write_version`]). Neither durable nor visible until the version record is.
    ///
    /// Flushed before it returns: a reopen between two batches (after another write
    /// failed) must not lose the index entries of the first.
    pub fn write_chunks(&self, id: u64, version: u64, batch: &ChunkBatch) -> Result<()> {
        self.writing(|| {
            let _held = self.inner()?;
            self.put_chunks(id, version, batch)?;
            self.sync()
        })
    }

    /// Writes a batch's blobs as one pack (durable before anything names it) and indexes
    /// them under `version`.
    pub(crate) fn put_chunks(&self, id: u64, version: u64, batch: &ChunkBatch) -> Result<()> {
        let blobs: Vec<(Ref, &[u8])> = batch
            .chunks
            .iter()
            .map(|e| {
                let r = match e.delta {
                    true => Ref::Delta { t: e.t, c: e.c, hi: version, lo: version },
                    false => Ref::Base { t: e.t, c: e.c, v: version },
                };
                (r, &batch.data[e.range.clone()])
            })
            .collect();
        self.put_blobs(id, &blobs)
    }

    /// Writes blobs as one pack, then indexes each (not flushed: the write that names
    /// them flushes).
    pub(crate) fn put_blobs(&self, id: u64, blobs: &[(Ref, &[u8])]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let parts: Vec<&[u8]> = blobs.iter().map(|(_, b)| *b).collect();
        let pack = self.packs.write(id, &parts).map_err(|e| self.io(e))?;
        let g = self.inner()?;
        let (mut index, mut off) = (sled::Batch::default(), 0u64);
        for (r, b) in blobs {
            let loc = Loc { pack, off, len: b.len() as u32, crc: crc32fast::hash(b) };
            index.insert(blob_key(r), &loc.encode()[..]);
            off += b.len() as u64;
        }
        g.tree(id, 'x')?.apply_batch(index)?;
        Ok(())
    }

    /// Reads a blob into `out`; false when it is not stored.
    fn read_blob(&self, x: &sled::Tree, id: u64, model: &str, r: &Ref, out: &mut Vec<u8>) -> Result<bool> {
        let Some(v) = x.get(blob_key(r))? else { return Ok(false) };
        let Some(loc) = Loc::decode(&v) else {
            let message = format!("{}: its index entry does not decode ({} bytes)", describe(r), v.len());
            return Err(StoreError::Corrupt { model: model.into(), message });
        };
        match self.packs.read(id, &loc, out).map_err(|e| self.io(e))? {
            Read::Ok => Ok(true),
            Read::Missing(why) => {
                Err(StoreError::Corrupt { model: model.into(), message: format!("{}: {why}", describe(r)) })
            }
            Read::Damaged => Err(StoreError::Corrupt {
                model: model.into(),
                message: format!("{} in pack {:016x} does not match its checksum", describe(r), loc.pack),
            }),
        }
    }

    /// Reads chunk (t, c) as `chain` makes it, giving `step` its base, then each layer,
    /// oldest first. A blob that is missing, or that `step` refuses, is reported as damage
    /// naming it. The caller holds the `blobs` read lock.
    pub(crate) fn walk_chain(
        &self,
        x: &sled::Tree,
        (id, model): (u64, &str),
        (t, c): (u32, u32),
        chain: &Chain,
        buf: &mut Vec<u8>,
        mut step: impl FnMut(Step<'_>) -> Result<(), String>,
    ) -> Result<()> {
        let corrupt =
            |r: &Ref, e: String| StoreError::Corrupt { model: model.into(), message: format!("{}: {e}", describe(r)) };
        let r = Ref::Base { t, c, v: chain.base };
        if chain.base == 0 {
            step(Step::Init).map_err(|e| corrupt(&r, e))?;
        } else if !self.read_blob(x, id, model, &r, buf)? {
            return Err(corrupt(&r, "missing".into()));
        } else {
            step(Step::Base(buf)).map_err(|e| corrupt(&r, e))?;
        }
        for l in &chain.layers {
            let r = Ref::Delta { t, c, hi: l.hi, lo: l.lo };
            if !self.read_blob(x, id, model, &r, buf)? {
                return Err(corrupt(&r, "missing".into()));
            }
            step(Step::Layer(buf)).map_err(|e| corrupt(&r, e))?;
        }
        Ok(())
    }

    /// Loads every chunk a manifest names into `params` (whose layout must match).
    pub fn load_params(&self, id: u64, model: &str, manifest: &Manifest, params: &mut Params) -> Result<()> {
        let _loading = self.blobs.read_recursive();
        let g = self.inner()?;
        if !manifest.matches(params) {
            let message = "manifest does not match the model's layout".into();
            return Err(StoreError::Corrupt { model: model.into(), message });
        }
        let x = g.tree(id, 'x')?;
        let mut buf = Vec::new();
        for (t, c, chain) in manifest.chains() {
            let (tu, cu) = (t as usize, c as usize);
            self.walk_chain(&x, (id, model), (t, c), chain, &mut buf, |step| {
                match step {
                    Step::Init => params.init_chunk(tu, cu),
                    Step::Base(b) => params.decode_chunk(tu, cu, b).map_err(|e| e.to_string())?,
                    Step::Layer(l) => params.apply_delta(tu, cu, l).map_err(|e| e.to_string())?,
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Drops versions (records, manifests, and the blobs no kept version references).
    /// Returns the number of blobs freed.
    ///
    /// Crash order: the records and manifests go first, in one atomic batch per tree,
    /// and are flushed; only then the blobs (their index entries, flushed, then the
    /// packs). A crash in between leaves blobs that nothing references (collected at the
    /// next open), never a listed version without its data.
    pub fn drop_versions(&self, id: u64, model: &str, drop: &[u64], keep: &[u64]) -> Result<u64> {
        self.writing(|| {
            let g = self.inner()?;
            let mut unreferenced = HashSet::new();
            for v in drop {
                if let Some(m) = self.manifest(id, *v, model)? {
                    unreferenced.extend(m.refs());
                }
            }
            // Oldest kept first: retention drops the oldest versions, whose blobs the next
            // kept ones mostly share (chains grow by layers), so the set empties early.
            let mut keep = keep.to_vec();
            keep.sort_unstable();
            for v in keep {
                if unreferenced.is_empty() {
                    break;
                }
                if let Some(m) = self.manifest(id, v, model)? {
                    m.refs().for_each(|r| {
                        unreferenced.remove(&r);
                    });
                }
            }
            let (mut records, mut manifests) = (sled::Batch::default(), sled::Batch::default());
            for v in drop {
                records.remove(&be(*v));
                manifests.remove(&be(*v));
            }
            g.tree(id, 'v')?.apply_batch(records)?;
            g.tree(id, 'f')?.apply_batch(manifests)?;
            if unreferenced.is_empty() {
                // Not flushed: a crash brings the versions back whole, and retention drops
                // them again. (Any later deletion of blobs flushes this first.)
                return Ok(0);
            }
            self.sync()?;
            let mut unreferenced: Vec<Ref> = unreferenced.into_iter().collect();
            unreferenced.sort_unstable();
            self.delete_blobs(id, &unreferenced)
        })
    }
}

/// One link of a chain, as [`Store::walk_chain`] reads it.
pub(crate) enum Step<'a> {
    /// Base 0: the chunk's initial content (the init spec; nothing is stored).
    Init,
    /// A base's blob: the chunk's whole stored form.
    Base(&'a [u8]),
    /// A delta layer's blob.
    Layer(&'a [u8]),
}

/// A blob as an error message names it.
fn describe(r: &Ref) -> String {
    match *r {
        Ref::Base { t, c, v } => format!("chunk {c} of tensor {t} (version {v})"),
        Ref::Delta { t, c, hi, lo } => format!("delta layer {lo}..={hi} of chunk {c} of tensor {t}"),
    }
}
