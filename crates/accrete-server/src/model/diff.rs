//! Rollback by difference: installing a version that shares most of its chunks with the
//! head costs time in proportion to the chunks that differ, not to the model. A chunk
//! whose chain is the same in both manifests holds the same content (a chain determines
//! its content); the live state differs from the head only in the chunks changed since
//! (dirty, or in a snapshot not written yet). So only those chunks' content is read from
//! the store — most of them before the engine is locked, and those changed meanwhile
//! under the lock — and written over the live parameters. When more than half the chunks
//! differ, the whole version is loaded instead (one allocation, and the engine lock is
//! held only for the swap).
use super::{lock, Head, ModelHandle};
use crate::engine::Engine;
use crate::error::Result;
use accrete_core::Params;
use accrete_store::{ChunkBatch, Manifest};
use std::collections::BTreeSet;
use std::time::Instant;

/// The content an install puts in place of the live state.
pub(super) enum NewContent {
    /// A whole model's parameters (an import, or a version that differs in most chunks).
    Whole(Params),
    /// The version's manifest and optimizer steps, and its content of the chunks that
    /// differ from the live state's as far as known before the engine was locked.
    Chunks { manifest: Manifest, steps: u64, batch: ChunkBatch },
}

impl NewContent {
    pub(super) fn steps(&self) -> u64 {
        match self {
            NewContent::Whole(p) => p.steps,
            NewContent::Chunks { steps, .. } => *steps,
        }
    }
}

impl ModelHandle {
    /// Version content (its `manifest`, `steps`) to install over the live state, read as
    /// far as it differs from it.
    pub(super) fn content_for_install(&self, head: &Head, manifest: &Manifest, steps: u64) -> Result<NewContent> {
        let mut differ: BTreeSet<(u32, u32)> = manifest
            .chains()
            .zip(head.manifest.chains())
            .filter(|((_, _, a), (_, _, b))| a != b)
            .map(|((t, c, _), _)| (t, c))
            .collect();
        differ.extend(lock(&self.engine).changed_since_head());
        let total: usize = manifest.tensors.iter().map(Vec::len).sum();
        if !manifest.matches_layout(&head.manifest) || 2 * differ.len() > total {
            let mut params = Params::zeros(&self.record.spec);
            self.store.load_params(self.record.id, self.name(), manifest, &mut params)?;
            params.steps = steps;
            return Ok(NewContent::Whole(params));
        }
        let init = |t: usize, c: usize, out: &mut Vec<u8>| lock(&self.engine).encode_init_chunk(t, c, out);
        let batch = self.chunks_of(manifest, &differ, &init)?;
        Ok(NewContent::Chunks { manifest: manifest.clone(), steps, batch })
    }

    /// `manifest`'s content of `chunks`, whole.
    fn chunks_of(
        &self,
        manifest: &Manifest,
        chunks: &BTreeSet<(u32, u32)>,
        init: &dyn Fn(usize, usize, &mut Vec<u8>),
    ) -> Result<ChunkBatch> {
        let mut batch = ChunkBatch::default();
        let mut blob = Vec::new();
        for &(t, c) in chunks {
            let chain = &manifest.tensors[t as usize][c as usize];
            self.store.chunk_content(
                self.record.id,
                self.name(),
                (t, c),
                chain,
                |out| init(t as usize, c as usize, out),
                &mut blob,
            )?;
            batch.push(t, c, |out| out.extend_from_slice(&blob));
        }
        Ok(batch)
    }

    /// Puts `content` in place of the live state as version `head` of lineage `epoch`
    /// (under the engine lock: `engine`). The chunks changed since the content was read
    /// are read now.
    pub(super) fn swap_content(&self, engine: &mut Engine, content: NewContent, epoch: u64, head: u64) -> Result<()> {
        let now = Instant::now();
        match content {
            NewContent::Whole(params) => engine.install(params, epoch, head, now),
            NewContent::Chunks { manifest, steps, mut batch } => {
                let read: BTreeSet<(u32, u32)> = batch.chunks.iter().map(|e| (e.t, e.c)).collect();
                let late: BTreeSet<(u32, u32)> = engine.changed_since_head().difference(&read).copied().collect();
                if !late.is_empty() {
                    let init = |t: usize, c: usize, out: &mut Vec<u8>| engine.encode_init_chunk(t, c, out);
                    let more = self.chunks_of(&manifest, &late, &init)?;
                    for e in &more.chunks {
                        batch.push(e.t, e.c, |out| out.extend_from_slice(&more.data[e.range.clone()]));
                    }
                }
                engine.install_chunks(&batch, steps, epoch, head, now)?;
            }
        }
        Ok(())
    }
}
