//! A model's blobs in the store: writing a commit's bases and layers, reading a version's
//! chains back into parameters, and deleting what no retained version references
//! (retention, and the leftovers of a crash found at open).
use crate::keys::{be, blob_prefix, layer_piece_key, piece_key, ref_of_key, u64_key};
use crate::{ChunkBatch, Manifest, Ref, Result, Store, StoreError, FLUSH_EVERY_BYTES, PIECE_BYTES};
use accrete_core::Params;
use std::collections::HashSet;

impl Store {
    /// Every blob stored for model `id` (bases and layers).
    fn stored_blobs(&self, id: u64) -> Result<HashSet<Ref>> {
        let g = self.inner()?;
        let mut stored = HashSet::new();
        for tree in ['c', 'd'] {
            for k in g.tree(id, tree)?.iter().keys() {
                stored.extend(ref_of_key(tree, &k?));
            }
        }
        Ok(stored)
    }

    /// Deletes blobs no retained manifest references, and drops the records of versions
    /// whose manifest names a blob that is not stored.
    pub(crate) fn collect_chunks(&self, id: u64) -> Result<()> {
        let g = self.inner()?;
        let (vtree, ftree) = (g.tree(id, 'v')?, g.tree(id, 'f')?);
        let stored = self.stored_blobs(id)?;
        let mut referenced: HashSet<Ref> = HashSet::new();
        for kv in ftree.iter() {
            let (k, v) = kv?;
            let version = u64_key(&k);
            let Some(m) = Manifest::decode(&v) else { continue };
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
            tracing::info!(
                model_id = id,
                blobs = freed,
                "removed chunks no version references (a crash during retention)"
            );
        }
        Ok(())
    }

    /// Deletes blobs' pieces; returns how many blobs had any.
    pub(crate) fn delete_blobs(&self, id: u64, blobs: &[Ref]) -> Result<u64> {
        let _no_loads = self.blobs.write();
        let g = self.inner()?;
        let (ctree, dtree) = (g.tree(id, 'c')?, g.tree(id, 'd')?);
        let mut freed = 0;
        for r in blobs {
            let (tree, prefix) = blob_prefix(r);
            let tree = if tree == 'c' { &ctree } else { &dtree };
            let mut any = false;
            for key in tree.scan_prefix(prefix).keys() {
                tree.remove(key?)?;
                any = true;
            }
            freed += any as u64;
        }
        Ok(freed)
    }

    /// Writes chunks of a version that is not written yet (big writes go in batches before
    /// [`Store::write_version`]). Neither durable nor visible until the version record is.
    pub fn write_chunks(&self, id: u64, version: u64, batch: &ChunkBatch) -> Result<()> {
        self.writing(|| self.put_chunks(id, version, batch))
    }

    pub(crate) fn put_chunks(&self, id: u64, version: u64, batch: &ChunkBatch) -> Result<()> {
        let g = self.inner()?;
        use std::sync::atomic::Ordering;
        let (ctree, dtree) = (g.tree(id, 'c')?, g.tree(id, 'd')?);
        for e in &batch.chunks {
            let blob = &batch.data[e.range.clone()];
            for (i, piece) in blob.chunks(PIECE_BYTES).enumerate() {
                if e.delta {
                    dtree.insert(layer_piece_key(version, e.t, e.c, version, i as u32), piece)?;
                } else {
                    ctree.insert(piece_key(version, e.t, e.c, i as u32), piece)?;
                }
            }
            let bytes = blob.len() as u64;
            if self.unflushed.fetch_add(bytes, Ordering::AcqRel) + bytes > FLUSH_EVERY_BYTES {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Reads a blob into `out` (cleared first); false when it has no pieces.
    pub(crate) fn read_blob(&self, trees: &(sled::Tree, sled::Tree), r: &Ref, out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        let (tree, prefix) = blob_prefix(r);
        let tree = if tree == 'c' { &trees.0 } else { &trees.1 };
        for piece in tree.scan_prefix(prefix).values() {
            out.extend_from_slice(&piece?);
        }
        Ok(!out.is_empty())
    }

    /// Loads every chunk a manifest names into `params` (whose layout must match).
    pub fn load_params(&self, id: u64, model: &str, manifest: &Manifest, params: &mut Params) -> Result<()> {
        let _loading = self.blobs.read_recursive();
        let g = self.inner()?;
        let corrupt = |message: String| StoreError::Corrupt { model: model.into(), message };
        if !manifest.matches(params) {
            return Err(corrupt("manifest does not match the model's layout".into()));
        }
        let trees = (g.tree(id, 'c')?, g.tree(id, 'd')?);
        let mut blob = Vec::new();
        for (t, c, chain) in manifest.chains() {
            let (t, c) = (t as usize, c as usize);
            let r = Ref::Base { t: t as u32, c: c as u32, v: chain.base };
            if chain.base == 0 {
                params.init_chunk(t, c);
            } else if !self.read_blob(&trees, &r, &mut blob)? {
                return Err(corrupt(format!("chunk {c} of tensor {t} (version {}) is missing", chain.base)));
            } else {
                params.decode_chunk(t, c, &blob).map_err(|e| corrupt(e.to_string()))?;
            }
            for l in &chain.layers {
                let r = Ref::Delta { t: t as u32, c: c as u32, hi: l.hi, lo: l.lo };
                if !self.read_blob(&trees, &r, &mut blob)? {
                    let what = format!("delta layer {}..={} of chunk {c} of tensor {t} is missing", l.lo, l.hi);
                    return Err(corrupt(what));
                }
                params.apply_delta(t, c, &blob).map_err(|e| corrupt(format!("layer {}..={}: {e}", l.lo, l.hi)))?;
            }
        }
        Ok(())
    }

    /// Drops versions (records, manifests, and the blobs no kept version references).
    /// Returns the number of blobs freed.
    ///
    /// Crash order: the records and manifests go first, in one atomic batch per tree,
    /// and are flushed; only then the blobs. A crash in between leaves blobs that nothing
    /// references (collected at the next open), never a listed version without its data.
    pub fn drop_versions(&self, id: u64, model: &str, drop: &[u64], keep: &[u64]) -> Result<u64> {
        self.writing(|| {
            let g = self.inner()?;
            let mut referenced = HashSet::new();
            for v in keep {
                if let Some(m) = self.manifest(id, *v, model)? {
                    referenced.extend(m.refs());
                }
            }
            let mut unreferenced = Vec::new();
            for v in drop {
                if let Some(m) = self.manifest(id, *v, model)? {
                    unreferenced.extend(m.refs().filter(|e| !referenced.contains(e)));
                }
            }
            let (mut records, mut manifests) = (sled::Batch::default(), sled::Batch::default());
            for v in drop {
                records.remove(&be(*v));
                manifests.remove(&be(*v));
            }
            g.tree(id, 'v')?.apply_batch(records)?;
            g.tree(id, 'f')?.apply_batch(manifests)?;
            self.sync()?;
            unreferenced.sort_unstable();
            unreferenced.dedup();
            let freed = self.delete_blobs(id, &unreferenced)?;
            self.sync()?;
            Ok(freed)
        })
    }
}
