//! Manifests: which commit wrote the current content of each chunk of each tensor.
use accrete_core::params::chunks_of;
use accrete_core::Params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Per tensor (layout order), per chunk: the version whose chunk holds the content.
    pub tensors: Vec<Vec<u64>>,
}

impl Manifest {
    /// A manifest for `params` where every chunk was written by `version`.
    pub fn full(params: &Params, version: u64) -> Self {
        Manifest { tensors: params.tensors.iter().map(|t| vec![version; t.chunks()]).collect() }
    }

    pub fn matches(&self, params: &Params) -> bool {
        self.tensors.len() == params.tensors.len()
            && self.tensors.iter().zip(&params.tensors).all(|(m, t)| m.len() == chunks_of(t.w.len()))
    }

    /// Every (tensor, chunk, written-by version) entry.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
        self.tensors
            .iter()
            .enumerate()
            .flat_map(|(t, cs)| cs.iter().enumerate().map(move |(c, v)| (t as u32, c as u32, *v)))
    }

    /// `[tensors u32][chunks u32 per tensor][versions u64 ...]`, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self.tensors.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(4 + 4 * self.tensors.len() + 8 * n);
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        }
        for v in self.tensors.iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Manifest> {
        let u32_at = |i: usize| b.get(i..i + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
        let n = u32_at(0)?;
        let lens: Vec<usize> = (0..n).map(|i| u32_at(4 + 4 * i)).collect::<Option<_>>()?;
        let mut pos = 4 + 4 * n;
        if b.len() != pos + 8 * lens.iter().sum::<usize>() {
            return None;
        }
        let mut tensors = Vec::with_capacity(n);
        for len in lens {
            let vs =
                b[pos..pos + 8 * len].chunks_exact(8).map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()));
            tensors.push(vs.collect());
            pos += 8 * len;
        }
        Some(Manifest { tensors })
    }
}
