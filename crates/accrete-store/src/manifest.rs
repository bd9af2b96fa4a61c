//! Manifests: how to read each chunk of each tensor of a version. A chunk's chain is a
//! base (the chunk's whole content as of the version that wrote it; base 0 is the model's
//! init spec, never stored) and delta layers applied over it in order, each naming the
//! rows that changed between two versions.
//!
//! Encoding (format 2): `u32::MAX`, tensors u32, chunks u32 per tensor; then per chunk
//! base u64, layers u16, and per layer hi u64, lo u64, bytes u32. Little-endian. A format-1
//! manifest (tensors u32, chunks u32 per tensor, then one written-by version u64 per
//! chunk) reads as chains without layers.
use accrete_core::params::chunks_of;
use accrete_core::Params;

/// The longest chain a manifest can encode (commits and compaction keep chains far
/// shorter; see `accrete-server`'s commit path).
pub const MAX_LAYERS: usize = u16::MAX as usize;
const V2: u32 = u32::MAX;

/// One delta layer: the rows of a chunk changed by the commits `lo..=hi` along this
/// chain, with their values as of `hi` (a commit's own layer has `lo == hi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Layer {
    pub hi: u64,
    pub lo: u64,
    /// The layer blob's length.
    pub bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Chain {
    /// The version whose whole content of the chunk is the base (0: the init spec).
    pub base: u64,
    pub layers: Vec<Layer>,
}

impl Chain {
    pub fn whole(base: u64) -> Chain {
        Chain { base, layers: Vec::new() }
    }

    /// Bytes of the layers' blobs.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes as u64).sum()
    }
}

/// A blob a manifest references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// Chunk `c` of tensor `t`, whole, as of version `v` (> 0).
    Base {
        t: u32,
        c: u32,
        v: u64,
    },
    Delta {
        t: u32,
        c: u32,
        hi: u64,
        lo: u64,
    },
}

impl Ref {
    /// The version in the blob's key: no blob of a version newer than the last is visible.
    pub fn version(&self) -> u64 {
        match self {
            Ref::Base { v, .. } => *v,
            Ref::Delta { hi, .. } => *hi,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Per tensor (layout order), per chunk: its chain.
    pub tensors: Vec<Vec<Chain>>,
}

impl Manifest {
    /// A manifest for `params` where every chunk was written whole by `version`.
    pub fn full(params: &Params, version: u64) -> Self {
        Manifest { tensors: params.tensors.iter().map(|t| vec![Chain::whole(version); t.chunks()]).collect() }
    }

    /// A model's first version: every chunk as its init spec makes it (nothing stored).
    pub fn init(params: &Params) -> Self {
        Self::full(params, 0)
    }

    /// Both manifests have the same tensors of the same numbers of chunks.
    pub fn matches_layout(&self, other: &Manifest) -> bool {
        self.tensors.len() == other.tensors.len()
            && self.tensors.iter().zip(&other.tensors).all(|(a, b)| a.len() == b.len())
    }

    pub fn matches(&self, params: &Params) -> bool {
        self.tensors.len() == params.tensors.len()
            && self.tensors.iter().zip(&params.tensors).all(|(m, t)| m.len() == chunks_of(t.w.len()))
    }

    /// Every (tensor, chunk, chain).
    pub fn chains(&self) -> impl Iterator<Item = (u32, u32, &Chain)> + '_ {
        self.tensors
            .iter()
            .enumerate()
            .flat_map(|(t, cs)| cs.iter().enumerate().map(move |(c, ch)| (t as u32, c as u32, ch)))
    }

    /// Every stored blob this manifest references.
    pub fn refs(&self) -> impl Iterator<Item = Ref> + '_ {
        self.chains().flat_map(|(t, c, ch)| {
            let base = (ch.base > 0).then_some(Ref::Base { t, c, v: ch.base });
            base.into_iter().chain(ch.layers.iter().map(move |l| Ref::Delta { t, c, hi: l.hi, lo: l.lo }))
        })
    }

    /// The encoded length (what a version's manifest costs on disk).
    pub fn encoded_len(&self) -> usize {
        let header = 8 + 4 * self.tensors.len();
        header + self.tensors.iter().flatten().map(|ch| 10 + 20 * ch.layers.len()).sum::<usize>()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&V2.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        }
        for ch in self.tensors.iter().flatten() {
            out.extend_from_slice(&ch.base.to_le_bytes());
            debug_assert!(ch.layers.len() <= MAX_LAYERS);
            out.extend_from_slice(&(ch.layers.len().min(MAX_LAYERS) as u16).to_le_bytes());
            for l in ch.layers.iter().take(MAX_LAYERS) {
                out.extend_from_slice(&l.hi.to_le_bytes());
                out.extend_from_slice(&l.lo.to_le_bytes());
                out.extend_from_slice(&l.bytes.to_le_bytes());
            }
        }
        out
    }

    /// Reads a manifest of either format; `None` when the bytes are not one.
    pub fn decode(b: &[u8]) -> Option<Manifest> {
        let mut r = Reader { b, pos: 0 };
        let first = r.u32()?;
        let v2 = first == V2;
        let n = if v2 { r.u32()? } else { first } as usize;
        // every tensor takes at least 4 bytes of header
        if n > b.len() / 4 {
            return None;
        }
        let lens: Vec<usize> = (0..n).map(|_| r.u32().map(|x| x as usize)).collect::<Option<_>>()?;
        let total = lens.iter().try_fold(0usize, |a, l| a.checked_add(*l))?;
        if total > b.len() / 8 {
            return None;
        }
        let mut tensors = Vec::with_capacity(n);
        for len in lens {
            let mut chains = Vec::with_capacity(len);
            for _ in 0..len {
                let base = r.u64()?;
                let layers = if v2 {
                    let k = r.u16()? as usize;
                    (0..k)
                        .map(|_| Some(Layer { hi: r.u64()?, lo: r.u64()?, bytes: r.u32()? }))
                        .collect::<Option<_>>()?
                } else {
                    Vec::new()
                };
                chains.push(Chain { base, layers });
            }
            tensors.push(chains);
        }
        (r.pos == b.len()).then_some(Manifest { tensors })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.b.get(self.pos..self.pos.checked_add(N)?)?;
        self.pos += N;
        s.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

/// Format 1's encoding, for the tests of migration.
#[cfg(test)]
pub(crate) fn encode_v1(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(m.tensors.len() as u32).to_le_bytes());
    for t in &m.tensors {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    }
    for ch in m.tensors.iter().flatten() {
        out.extend_from_slice(&ch.base.to_le_bytes());
    }
    out
}
