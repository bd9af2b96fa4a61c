//! A snapshot's blobs, encoded into one buffer: every changed chunk whole, or as a delta
//! layer of its changed floats. A large snapshot is split over threads by bytes: a delta's
//! reads are scattered over the model (a commit of random rows misses the cache at
//! nearly every one) and independent, so more cores keep more of them in flight.
use accrete_core::params::Change;
use accrete_core::Params;
use accrete_store::{BatchEntry, ChunkBatch};

/// Below this many bytes a snapshot is encoded on the calling thread.
const PARALLEL_BYTES: usize = 1 << 20;
/// The most threads a snapshot is encoded on.
const MAX_THREADS: usize = 8;

/// Encodes the changed chunks of `p`: as a delta layer where the commit form says so
/// ([`Params::commit_form`]), whole otherwise.
pub(super) fn encode_changed(p: &Params) -> ChunkBatch {
    let mut chunks = Vec::new();
    let mut end = 0;
    for t in 0..p.tensors.len() {
        for c in p.dirty_chunks(t) {
            let (delta, bytes) = match (p.commit_form(t, c), p.change(t, c)) {
                (Some(true), Some(Change::Rows(bits))) => (true, p.delta_bytes(t, bits)),
                _ => (false, p.chunk_bytes(t, c)),
            };
            chunks.push(BatchEntry { t: t as u32, c: c as u32, delta, range: end..end + bytes });
            end += bytes;
        }
    }
    // (zeroed by the allocator: a large buffer comes as fresh pages, not a memset)
    let mut data = vec![0u8; end];
    let threads = match end >= PARALLEL_BYTES {
        true => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS).min(chunks.len()),
        false => 1,
    };
    if threads <= 1 {
        encode_part(p, &chunks, &mut data);
    } else {
        // contiguous runs of chunks of about equal bytes, each with its part of the buffer
        let mut parts = Vec::with_capacity(threads);
        let (mut rest, mut buf) = (&chunks[..], &mut data[..]);
        let mut done = 0;
        for i in 1..threads {
            let target = end * i / threads;
            let n = rest.iter().take_while(|e| e.range.end <= target).count().max(1).min(rest.len());
            let bytes = rest[..n].last().map_or(done, |e| e.range.end) - done;
            let (part, more) = rest.split_at(n);
            let (b, more_buf) = std::mem::take(&mut buf).split_at_mut(bytes);
            parts.push((part, b));
            (rest, buf, done) = (more, more_buf, done + bytes);
        }
        parts.push((rest, buf));
        std::thread::scope(|s| {
            let mut parts = parts.into_iter();
            let first = parts.next();
            let others: Vec<_> = parts.map(|(part, b)| s.spawn(move || encode_part(p, part, b))).collect();
            if let Some((part, b)) = first {
                encode_part(p, part, b);
            }
            for h in others {
                if let Err(e) = h.join() {
                    std::panic::resume_unwind(e);
                }
            }
        });
    }
    ChunkBatch { chunks, data }
}

/// Encodes a run of chunks into `out`, which holds exactly their bytes, in order.
fn encode_part(p: &Params, chunks: &[BatchEntry], out: &mut [u8]) {
    let start = chunks.first().map_or(0, |e| e.range.start);
    for e in chunks {
        let b = &mut out[e.range.start - start..e.range.end - start];
        let (t, c) = (e.t as usize, e.c as usize);
        match (e.delta, p.change(t, c)) {
            (true, Some(Change::Rows(bits))) => p.encode_delta_into(t, c, bits, b),
            _ => p.encode_chunk_into(t, c, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrete_core::{ModelKind, ModelSpec};

    /// Encoded over threads or not, a snapshot is the same bytes as chunk by chunk.
    #[test]
    fn a_large_snapshot_encodes_as_chunk_by_chunk() {
        let mut spec = ModelSpec::new("m", ModelKind::Logistic);
        spec.hash_bits = 20;
        spec.optimizer.kind = accrete_core::OptimizerKind::Adagrad;
        let mut p = Params::init(&spec);
        let h = p.tensor_index("h").unwrap();
        // 1 % of the rows touched at random (deltas), and every 7th chunk whole
        let mut rng = accrete_core::rng::SplitMix64::new(5);
        let mut keys: Vec<u64> = (0..(1u64 << 20) / 100).map(|_| rng.next_u64() % (1 << 20)).collect();
        keys.sort_unstable();
        keys.dedup();
        p.begin_update();
        p.apply_rows(h, &keys, &vec![0.5; keys.len()]);
        p.finish_update().unwrap();
        for c in (0..p.tensors[h].chunks()).step_by(7) {
            p.mark_dirty(h, c);
        }
        let batch = encode_changed(&p);
        assert!(batch.data.len() >= PARALLEL_BYTES, "{} bytes: large enough to split", batch.data.len());
        let mut want = ChunkBatch::default();
        for e in &batch.chunks {
            let (t, c) = (e.t as usize, e.c as usize);
            match (e.delta, p.change(t, c)) {
                (true, Some(Change::Rows(bits))) => want.push_blob(e.t, e.c, true, |o| p.encode_delta(t, c, bits, o)),
                _ => want.push(e.t, e.c, |o| p.encode_chunk(t, c, o)),
            }
        }
        assert_eq!(batch.chunks, want.chunks);
        assert!(batch.data == want.data, "the same bytes");
    }
}
