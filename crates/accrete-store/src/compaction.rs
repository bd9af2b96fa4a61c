//! What background compaction needs of the store: a version loaded with its manifest in
//! one piece (no compaction deletes a blob between the two), a chunk's content as of a
//! prefix of its chain, new bases written and flushed before any manifest names them,
//! retained manifests rewritten atomically to equal content, and the blobs no manifest
//! references any more deleted.
use crate::blobs::Step;
use crate::keys::be;
use crate::{Chain, Manifest, Ref, Result, Store};
use accrete_core::Params;
use std::collections::HashSet;

impl Store {
    /// Loads version `version`'s content into `params`; returns its manifest, or `None`
    /// when the version is not stored.
    pub fn load_version(&self, id: u64, model: &str, version: u64, params: &mut Params) -> Result<Option<Manifest>> {
        let _loading = self.blobs.read_recursive();
        let Some(m) = self.manifest(id, version, model)? else { return Ok(None) };
        self.load_params(id, model, &m, params)?;
        Ok(Some(m))
    }

    /// The whole stored form of chunk `c` of tensor `t` as `chain` makes it, into `out`;
    /// `init` writes the chunk's initial content (for base 0).
    pub fn chunk_content(
        &self,
        id: u64,
        model: &str,
        (t, c): (u32, u32),
        chain: &Chain,
        init: impl FnOnce(&mut Vec<u8>),
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let _loading = self.blobs.read_recursive();
        out.clear();
        let mut init = Some(init);
        self.walk_chain((id, model), (t, c), chain, &mut Vec::new(), |step| match step {
            Step::Init => {
                init.take().into_iter().for_each(|f| f(out));
                Ok(())
            }
            Step::Base(b) => {
                out.extend_from_slice(b);
                Ok(())
            }
            Step::Layer(l) => accrete_core::params::apply_to_whole(out, l),
        })
    }

    /// Writes bases — (version, tensor, chunk, whole blob): the chunk's content as of
    /// that version — as one pack, indexed and flushed. Nothing names them yet.
    pub fn write_bases(&self, id: u64, bases: &[(u64, u32, u32, Vec<u8>)]) -> Result<()> {
        self.writing(|| {
            // (held throughout: a reopen never falls between the blobs and the flush)
            let _held = self.inner()?;
            let blobs: Vec<(Ref, &[u8])> =
                bases.iter().map(|(v, t, c, blob)| (Ref::Base { t: *t, c: *c, v: *v }, &blob[..])).collect();
            self.put_blobs(id, &blobs)?;
            self.sync()
        })
    }

    /// Replaces retained versions' manifests (each with one of equal content), all or
    /// none, and flushes. Versions no longer stored are skipped (retention dropped them).
    pub fn rewrite_manifests(&self, id: u64, manifests: &[(u64, Manifest)]) -> Result<()> {
        self.writing(|| {
            let g = self.inner()?;
            let ftree = g.tree(id, 'f')?;
            let mut batch = sled::Batch::default();
            for (v, m) in manifests {
                if ftree.contains_key(be(*v))? {
                    batch.insert(&be(*v), m.encode());
                }
            }
            ftree.apply_batch(batch)?;
            self.sync()
        })
    }

    /// Deletes those of `candidates` no stored manifest references; returns how many
    /// blobs went. Call it with no commit in flight (a commit's blobs are written before
    /// its manifest).
    pub fn delete_unreferenced(&self, id: u64, candidates: &[Ref]) -> Result<u64> {
        self.writing(|| {
            let referenced: HashSet<Ref> = {
                let g = self.inner()?;
                let mut all = HashSet::new();
                for kv in g.tree(id, 'f')?.iter() {
                    if let Some(m) = Manifest::decode(&kv?.1) {
                        all.extend(m.refs());
                    }
                }
                all
            };
            let gone: Vec<Ref> = candidates.iter().filter(|r| !referenced.contains(r)).copied().collect();
            let freed = self.delete_blobs(id, &gone)?;
            self.sync()?;
            Ok(freed)
        })
    }
}
