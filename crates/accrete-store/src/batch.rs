//! A commit's blobs, encoded back to back in one buffer before they are written.
/// Chunks to write, encoded back to back in one buffer (one allocation per commit, so a
/// large commit's copy is returned to the OS when it is dropped).
#[derive(Debug, Default)]
pub struct ChunkBatch {
    pub chunks: Vec<BatchEntry>,
    pub data: Vec<u8>,
}

/// One blob of a [`ChunkBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub t: u32,
    pub c: u32,
    /// A delta layer (over the chunk's content in the version before), not a whole chunk.
    pub delta: bool,
    /// Its bytes in the batch's `data`.
    pub range: std::ops::Range<usize>,
}

impl ChunkBatch {
    pub fn with_capacity(bytes: usize) -> Self {
        ChunkBatch { chunks: Vec::new(), data: Vec::with_capacity(bytes) }
    }

    /// Appends a whole chunk whose blob `encode` writes at the end of the buffer.
    pub fn push(&mut self, t: u32, c: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        self.push_blob(t, c, false, encode)
    }

    /// Appends a whole chunk (`delta` false) or a delta layer written by `encode`.
    pub fn push_blob(&mut self, t: u32, c: u32, delta: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.data.len();
        encode(&mut self.data);
        self.chunks.push(BatchEntry { t, c, delta, range: start..self.data.len() });
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.data.clear();
    }
}
