//! Manifests: how to read each chunk of each tensor of a version. A chunk's chain is a
//! base (the chunk's whole content as of the version that wrote it; base 0 is the model's
//! init spec, never stored) and delta layers applied over it in order, each naming the
//! rows that changed between two versions.
//!
//! Encoding (written since store format 4): `u32::MAX - 1`, tensors u32, chunks u32 per
//! tensor (little-endian); then per chunk, in LEB128 varints: base, layer count, and per
//! layer its hi minus the previous layer's (the base's for the first), hi minus lo, and
//! its bytes. A 2^24-row model's manifest (1,024 chunks of up to 32 layers) is ~4 bytes
//! a layer, a fifth of format 2's fixed-width encoding, read on every retention pass.
//! Still read: format 2 (`u32::MAX`, the same header, then per chunk base u64, layers
//! u16, and per layer hi u64, lo u64, bytes u32) and format 1 (tensors u32, chunks u32 per
//! tensor, then one written-by version u64 per chunk: chains without layers).
use accrete_core::params::chunks_of;
use accrete_core::Params;

/// The longest chain a manifest can encode (commits and compaction keep chains far
/// shorter; see `accrete-server`'s commit path).
pub const MAX_LAYERS: usize = u16::MAX as usize;
const V2: u32 = u32::MAX;
const V3: u32 = u32::MAX - 1;

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

    /// The stored blobs this chain (of chunk `c` of tensor `t`) references: its base
    /// unless it is the init spec, then its layers, oldest first.
    pub fn refs(&self, t: u32, c: u32) -> impl Iterator<Item = Ref> + '_ {
        let base = (self.base > 0).then_some(Ref::Base { t, c, v: self.base });
        base.into_iter().chain(self.layers.iter().map(move |l| Ref::Delta { t, c, hi: l.hi, lo: l.lo }))
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
        self.chains().flat_map(|(t, c, ch)| ch.refs(t, c))
    }

    /// The encoded length (what a version's manifest costs on disk).
    pub fn encoded_len(&self) -> usize {
        let header = 8 + 4 * self.tensors.len();
        let chain = |ch: &Chain| {
            let mut prev = ch.base;
            let layers: usize = ch
                .layers
                .iter()
                .map(|l| {
                    let n = varint_len(l.hi.wrapping_sub(prev))
                        + varint_len(l.hi.wrapping_sub(l.lo))
                        + varint_len(l.bytes as u64);
                    prev = l.hi;
                    n
                })
                .sum();
            varint_len(ch.base) + varint_len(ch.layers.len() as u64) + layers
        };
        header + self.tensors.iter().flatten().map(chain).sum::<usize>()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&V3.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        }
        for ch in self.tensors.iter().flatten() {
            put_varint(&mut out, ch.base);
            put_varint(&mut out, ch.layers.len() as u64);
            let mut prev = ch.base;
            for l in &ch.layers {
                put_varint(&mut out, l.hi.wrapping_sub(prev));
                put_varint(&mut out, l.hi.wrapping_sub(l.lo));
                put_varint(&mut out, l.bytes as u64);
                prev = l.hi;
            }
        }
        out
    }

    /// Reads a manifest of any format; `None` when the bytes are not one.
    pub fn decode(b: &[u8]) -> Option<Manifest> {
        let mut r = Reader { b, pos: 0 };
        let first = r.u32()?;
        let (v2, v3) = (first == V2, first == V3);
        let n = if v2 || v3 { r.u32()? } else { first } as usize;
        // every tensor takes at least 4 bytes of header
        if n > b.len() / 4 {
            return None;
        }
        let lens: Vec<usize> = (0..n).map(|_| r.u32().map(|x| x as usize)).collect::<Option<_>>()?;
        let total = lens.iter().try_fold(0usize, |a, l| a.checked_add(*l))?;
        // (a chain takes at least 2 bytes, 8 in formats 1 and 2)
        if total > b.len() / if v3 { 2 } else { 8 } {
            return None;
        }
        let mut tensors = Vec::with_capacity(n);
        for len in lens {
            let mut chains = Vec::with_capacity(len);
            for _ in 0..len {
                let chain = if v3 {
                    let base = r.varint()?;
                    let k = r.varint()? as usize;
                    // (a layer takes at least 3 bytes)
                    if k > (b.len() - r.pos) / 3 {
                        return None;
                    }
                    let (mut layers, mut prev) = (Vec::with_capacity(k), base);
                    for _ in 0..k {
                        let hi = prev.wrapping_add(r.varint()?);
                        let lo = hi.wrapping_sub(r.varint()?);
                        let bytes = u32::try_from(r.varint()?).ok()?;
                        layers.push(Layer { hi, lo, bytes });
                        prev = hi;
                    }
                    Chain { base, layers }
                } else {
                    let base = r.u64()?;
                    let layers = if v2 {
                        let k = r.u16()? as usize;
                        (0..k)
                            .map(|_| Some(Layer { hi: r.u64()?, lo: r.u64()?, bytes: r.u32()? }))
                            .collect::<Option<_>>()?
                    } else {
                        Vec::new()
                    };
                    Chain { base, layers }
                };
                chains.push(chain);
            }
            tensors.push(chains);
        }
        (r.pos == b.len()).then_some(Manifest { tensors })
    }
}

fn varint_len(mut x: u64) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push(x as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
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
    /// A LEB128 varint of at most 10 bytes.
    fn varint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        for i in 0..10 {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            x |= ((byte & 0x7f) as u64).checked_shl(7 * i)?;
            if byte & 0x80 == 0 {
                return Some(x);
            }
        }
        None
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

/// Format 2's encoding, for the tests of reading old manifests.
#[cfg(test)]
pub(crate) fn encode_v2(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&V2.to_le_bytes());
    out.extend_from_slice(&(m.tensors.len() as u32).to_le_bytes());
    for t in &m.tensors {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    }
    for ch in m.tensors.iter().flatten() {
        out.extend_from_slice(&ch.base.to_le_bytes());
        out.extend_from_slice(&(ch.layers.len() as u16).to_le_bytes());
        for l in &ch.layers {
            out.extend_from_slice(&l.hi.to_le_bytes());
            out.extend_from_slice(&l.lo.to_le_bytes());
            out.extend_from_slice(&l.bytes.to_le_bytes());
        }
    }
    out
}
