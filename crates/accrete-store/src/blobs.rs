//! A model's blobs in the store: writing a commit's bases and layers into a pack and its
//! index, reading a version's chains back (into parameters, or into one chunk's stored
//! form), and deleting what no retained version references (retention, compaction, and the
//! leftovers of a crash found at open), packs included.
use crate::keys::{be, u64_key};
use crate::packs::Read;
use crate::{Chain, ChunkBatch, Manifest, Ref, Result, Store, StoreError};
use accrete_core::Params;
use std::collections::{HashMap, HashSet};

impl Store {
    /// Deletes blobs no retained manifest references, and drops the records of versions
    /// whose manifest names a blob that is not stored; first the packs nothing indexes (a
    /// crash between a pack and its index entry, or in a rewrite) and those no blob is
    /// live in, and the pack counter moves past every pack named. At open only (nothing
    /// else runs then).
    pub(crate) fn collect_chunks(&self, id: u64) -> Result<()> {
        self.load_index(id)?;
        let g = self.inner()?;
        let (vtree, ftree) = (g.tree(id, 'v')?, g.tree(id, 'f')?);
        // (before any deletion below, which may rewrite a pack into a new one)
        let named: HashSet<u64> = self.model_index(id).lock().packs.keys().copied().collect();
        self.packs.advance_past(named.iter().copied().max().unwrap_or(0));
        for pack in self.packs.list(id).map_err(|e| self.io(e))? {
            if !named.contains(&pack) {
                tracing::info!(model_id = id, pack, "removed a pack nothing names (a crash)");
                self.packs.remove(id, pack).map_err(|e| self.io(e))?;
            }
        }
        self.drop_dead_packs(id)?;
        let stored: HashSet<Ref> = self.indexed(id).into_iter().map(|(r, _)| r).collect();
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

    /// Reads a blob into `out`; false when it is not stored.
    fn read_blob(&self, id: u64, model: &str, r: &Ref, out: &mut Vec<u8>) -> Result<bool> {
        let Some(loc) = self.loc(id, r) else { return Ok(false) };
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
        } else if !self.read_blob(id, model, &r, buf)? {
            return Err(corrupt(&r, "missing".into()));
        } else {
            step(Step::Base(buf)).map_err(|e| corrupt(&r, e))?;
        }
        for l in &chain.layers {
            let r = Ref::Delta { t, c, hi: l.hi, lo: l.lo };
            if !self.read_blob(id, model, &r, buf)? {
                return Err(corrupt(&r, "missing".into()));
            }
            step(Step::Layer(buf)).map_err(|e| corrupt(&r, e))?;
        }
        Ok(())
    }

    /// Loads every chunk a manifest names into `params` (whose layout must match).
    pub fn load_params(&self, id: u64, model: &str, manifest: &Manifest, params: &mut Params) -> Result<()> {
        let _loading = self.blobs.read_recursive();
        if !manifest.matches(params) {
            let message = "manifest does not match the model's layout".into();
            return Err(StoreError::Corrupt { model: model.into(), message });
        }
        let mut buf = Vec::new();
        for (t, c, chain) in manifest.chains() {
            let (tu, cu) = (t as usize, c as usize);
            self.walk_chain((id, model), (t, c), chain, &mut buf, |step| {
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
            // Per chunk, the dropped versions' blobs (a blob is only ever in its own chunk's
            // chains, so each kept chain is checked against its chunk's few candidates).
            let mut unreferenced: HashMap<(u32, u32), Vec<Ref>> = HashMap::new();
            for v in drop {
                if let Some(m) = self.manifest(id, *v, model)? {
                    for (t, c, chain) in m.chains() {
                        let mut refs = chain.refs(t, c).peekable();
                        if refs.peek().is_some() {
                            let v = unreferenced.entry((t, c)).or_default();
                            v.extend(refs);
                            v.sort_unstable();
                            v.dedup();
                        }
                    }
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
                    let mut kept = Vec::new();
                    for (t, c, chain) in m.chains() {
                        if let Some(refs) = unreferenced.get_mut(&(t, c)) {
                            kept.clear();
                            kept.extend(chain.refs(t, c));
                            kept.sort_unstable();
                            refs.retain(|r| kept.binary_search(r).is_err());
                            if refs.is_empty() {
                                unreferenced.remove(&(t, c));
                            }
                        }
                    }
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
            let mut unreferenced: Vec<Ref> = unreferenced.into_values().flatten().collect();
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
