//! Background compaction of a model's stored versions: a chunk whose chain in the head
//! version has grown long (its delta layers weigh a whole chunk, or number
//! [`REBASE_LAYERS`]) gets a new base — its content as of one version of the chain, read
//! from the store — and every retained version whose chain starts with that prefix is
//! rewritten to start from the new base instead. No version's content changes (the
//! prefix's content is the content of the version that wrote its last layer, whichever
//! chain holds it); the layers and bases no manifest references any more are deleted.
//!
//! The version the base is taken at: the oldest retained version on the head's chain
//! that leaves the head at most half a chunk of layers over the new base. So the oldest
//! version of the keep-last window (or a tag) shares one base with everything after it,
//! and the old base and layers go at once; and a rebase folds at least half a chunk of
//! layers (a chunk is rewritten at most once per half a chunk of changes to it).
//!
//! Commits bound chains too: a delta layer that would make a chain longer than
//! [`MAX_CHAIN_LAYERS`] layers, or twice a chunk's bytes, is written as the whole chunk
//! (`cap_chains`), for when compaction lags. Kill -9 at any point loses nothing: bases
//! are flushed before a manifest names them, the manifests of a step change in one
//! atomic batch, and blobs left unreferenced by a crash are collected at open.
use super::{lock, ModelHandle};
use crate::engine::Snapshot;
use crate::error::{Result, ServiceError};
use accrete_store::{BatchEntry, Chain, ChunkBatch, Manifest, Ref};
use std::collections::HashSet;
use std::sync::atomic::Ordering;

/// A chain with this many layers gets a new base (see also its bytes, in `compact_step`).
pub const REBASE_LAYERS: usize = 32;
/// The most delta layers a commit stacks on a chunk's base (see `cap_chains`).
const MAX_CHAIN_LAYERS: usize = 64;
/// Chunks rebased per step: the `head` lock (commits wait) is held for one step.
const STEP_CHUNKS: usize = 64;

/// Is chunk `c` of tensor `t`'s chain in `m` due for a new base: its layers weigh a whole
/// chunk (`sizes`: the chunks' stored sizes), or number [`REBASE_LAYERS`]?
/// (`layers`: [`REBASE_LAYERS`], but for tests.)
pub(super) fn too_long(m: &Manifest, sizes: &[Vec<u64>], layers: usize, t: u32, c: u32) -> bool {
    let ch = &m.tensors[t as usize][c as usize];
    !ch.layers.is_empty() && (ch.layer_bytes() >= sizes[t as usize][c as usize] || ch.layers.len() >= layers)
}

/// The chunks of `m` due for a new base.
pub(super) fn long_chains<'a>(
    m: &'a Manifest,
    sizes: &'a [Vec<u64>],
    layers: usize,
) -> impl Iterator<Item = (u32, u32)> + 'a {
    m.chains().map(|(t, c, _)| (t, c)).filter(move |(t, c)| too_long(m, sizes, layers, *t, *c))
}

/// What a compaction step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Chunks given a new base.
    pub rebased: usize,
    /// Versions whose manifest was rewritten.
    pub manifests: usize,
    /// Blobs (bases and layers) deleted.
    pub freed: u64,
}

impl ModelHandle {
    /// Compacts the store's database if its file holds far more than its data
    /// ([`accrete_store::Store::reclaim_if_wasteful`]).
    pub fn reclaim_disk(&self) -> Result<()> {
        self.store.reclaim_if_wasteful()?;
        Ok(())
    }

    /// A chunk's chain in the head version is due for a new base.
    pub fn compaction_due(&self) -> bool {
        self.meters.compaction.load(Ordering::Acquire)
    }

    /// One compaction step (at most [`STEP_CHUNKS`] chunks; the flag stays up when more
    /// are due). Blocking; holds the `head` lock throughout, so no commit, rollback or
    /// retention runs meanwhile.
    pub fn compact_step(&self) -> Result<Compacted> {
        let mut head = self.head.lock();
        self.meters.compaction.store(false, Ordering::Release);
        let (id, name) = (self.record.id, self.name().to_string());
        let sizes = &self.chunk_sizes;
        let layers = self.rebase_layers.load(Ordering::Relaxed);
        let due: Vec<(u32, u32)> = long_chains(&head.manifest, sizes, layers).take(STEP_CHUNKS + 1).collect();
        if due.is_empty() {
            return Ok(Compacted::default());
        }
        if due.len() > STEP_CHUNKS {
            self.meters.compaction.store(true, Ordering::Release);
        }
        let mut retained: Vec<(u64, Manifest)> = Vec::new();
        for r in self.store.versions(id)? {
            if r.version == head.record.version {
                retained.push((r.version, head.manifest.clone()));
            } else if let Some(m) = self.store.manifest(id, r.version, &name)? {
                retained.push((r.version, m));
            }
        }
        // Per chunk: the prefix of the head's chain that becomes a base, at version `u`.
        let mut plan: Vec<(u32, u32, Chain, u64)> = Vec::new();
        let mut bases = Vec::new();
        for (t, c) in due.into_iter().take(STEP_CHUNKS) {
            let h = &head.manifest.tensors[t as usize][c as usize];
            let tops: HashSet<usize> = retained
                .iter()
                .filter_map(|(_, m)| {
                    let ch = &m.tensors[t as usize][c as usize];
                    let on_head = ch.base == h.base && !ch.layers.is_empty() && h.layers.starts_with(&ch.layers);
                    on_head.then(|| ch.layers.len() - 1)
                })
                .collect();
            // the oldest retained version that leaves the head at most half a chunk of layers
            let whole = sizes[t as usize][c as usize];
            let mut after = h.layer_bytes();
            let mut pick = h.layers.len() - 1;
            for (i, l) in h.layers.iter().enumerate() {
                after -= l.bytes as u64;
                if 2 * after <= whole && tops.contains(&i) {
                    pick = i;
                    break;
                }
            }
            let prefix = Chain { base: h.base, layers: h.layers[..=pick].to_vec() };
            let u = h.layers[pick].hi;
            let mut blob = Vec::new();
            let init = |out: &mut Vec<u8>| lock(&self.engine).encode_init_chunk(t as usize, c as usize, out);
            self.store.chunk_content(id, &name, (t, c), &prefix, init, &mut blob)?;
            bases.push((u, t, c, blob));
            plan.push((t, c, prefix, u));
        }
        self.store.write_bases(id, &bases)?;
        drop(bases);
        let mut rewritten = Vec::new();
        for (v, m) in &retained {
            let mut new = m.clone();
            let mut changed = false;
            for (t, c, prefix, u) in &plan {
                let ch = &mut new.tensors[*t as usize][*c as usize];
                if ch.base == prefix.base && ch.layers.starts_with(&prefix.layers) {
                    *ch = Chain { base: *u, layers: ch.layers[prefix.layers.len()..].to_vec() };
                    changed = true;
                }
            }
            if changed {
                rewritten.push((*v, new));
            }
        }
        self.store.rewrite_manifests(id, &rewritten)?;
        if let Some((_, m)) = rewritten.iter().find(|(v, _)| *v == head.record.version) {
            head.manifest = m.clone();
        }
        let mut old = Vec::new();
        for (t, c, prefix, _) in &plan {
            let (t, c) = (*t, *c);
            if prefix.base > 0 {
                old.push(Ref::Base { t, c, v: prefix.base });
            }
            old.extend(prefix.layers.iter().map(|l| Ref::Delta { t, c, hi: l.hi, lo: l.lo }));
        }
        let freed = self.store.delete_unreferenced(id, &old)?;
        let done = Compacted { rebased: plan.len(), manifests: rewritten.len(), freed };
        self.meters.rebased.fetch_add(plan.len() as u64, Ordering::Relaxed);
        tracing::debug!(model = %name, ?done, "compaction step");
        Ok(done)
    }

    /// A snapshot whose delta layers all fit their chunk's chain in `manifest`: a layer
    /// that would make a chain longer than [`MAX_CHAIN_LAYERS`], or its layers weigh more
    /// than twice the chunk, is written as the whole chunk instead (its content read from
    /// the store). Compaction gives long chains a new base long before; this is the bound
    /// when it lags. On failure, the snapshot comes back with the error.
    pub(super) fn cap_chains(
        &self,
        manifest: &Manifest,
        snap: Snapshot,
    ) -> std::result::Result<Snapshot, Box<(Snapshot, ServiceError)>> {
        let over = |e: &BatchEntry| {
            let ch = &manifest.tensors[e.t as usize][e.c as usize];
            let size = self.chunk_sizes[e.t as usize][e.c as usize];
            e.delta && (ch.layers.len() >= MAX_CHAIN_LAYERS || ch.layer_bytes() + e.range.len() as u64 > 2 * size)
        };
        if !snap.chunks.chunks.iter().any(over) {
            return Ok(snap);
        }
        let mut chunks = ChunkBatch::with_capacity(snap.chunks.data.len());
        for e in &snap.chunks.chunks {
            let blob = &snap.chunks.data[e.range.clone()];
            if !over(e) {
                chunks.push_blob(e.t, e.c, e.delta, |out| out.extend_from_slice(blob));
                continue;
            }
            let chain = &manifest.tensors[e.t as usize][e.c as usize];
            let init = |out: &mut Vec<u8>| lock(&self.engine).encode_init_chunk(e.t as usize, e.c as usize, out);
            let mut whole = Vec::new();
            let made = self.store.chunk_content(self.record.id, self.name(), (e.t, e.c), chain, init, &mut whole);
            let made = made.map_err(ServiceError::from).and_then(|_| {
                accrete_core::params::apply_to_whole(&mut whole, blob)
                    .map_err(|m| ServiceError::Internal(format!("chunk {} of tensor {}: {m}", e.c, e.t)))
            });
            if let Err(err) = made {
                return Err(Box::new((snap, err)));
            }
            chunks.push(e.t, e.c, |out| out.extend_from_slice(&whole));
        }
        Ok(Snapshot { chunks, ..snap })
    }
}
