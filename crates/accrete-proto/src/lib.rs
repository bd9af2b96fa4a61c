//! Wire types of accrete: the prost/tonic code generated from `proto/accrete/v1`, the file
//! descriptor set for reflection, helpers to move f32 values and u64 keys in and out of the
//! little-endian byte fields, and the conversions between wire and core types
//! ([`convert`], written once here). Only this crate, the client and the server (and the
//! benchmarks) see protobuf types.

pub mod convert;

/// Generated code, nested as the proto packages are (`accrete.v1`, `accrete.bench.v1`).
#[allow(clippy::all, missing_docs)]
pub mod accrete {
    pub mod v1 {
        tonic::include_proto!("accrete.v1");
    }
    pub mod bench {
        pub mod v1 {
            tonic::include_proto!("accrete.bench.v1");
        }
    }
}

pub use accrete::v1;

/// The benchmark-only sink service (see `proto/accrete/bench/v1/bench.proto`).
pub use accrete::bench::v1 as bench;

/// Encoded `FileDescriptorSet` of the accrete protos, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/accrete_descriptor.bin"));

/// Appends `values` as little-endian f32 bytes.
pub fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Encodes `values` as little-endian f32 bytes.
pub fn f32s_to_bytes(values: &[f32]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(values.len() * 4);
    put_f32s(&mut out, values);
    out.into()
}

/// Decodes little-endian f32 bytes into `out` (cleared first). `None` when the length is
/// not a multiple of four.
pub fn bytes_to_f32s_into(bytes: &[u8], out: &mut Vec<f32>) -> Option<()> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    out.clear();
    out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    Some(())
}

/// Decodes little-endian f32 bytes. `None` when the length is not a multiple of four.
pub fn bytes_to_f32s(bytes: &[u8]) -> Option<Vec<f32>> {
    let mut out = Vec::new();
    bytes_to_f32s_into(bytes, &mut out)?;
    Some(out)
}

/// Iterates the f32 values of a little-endian byte field (trailing bytes ignored; callers
/// validate the length first).
pub fn iter_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Appends `keys` as fixed-width little-endian u64 bytes.
pub fn put_keys(out: &mut Vec<u8>, keys: impl ExactSizeIterator<Item = u64>) {
    out.reserve(keys.len() * 8);
    for k in keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
}

/// Encodes `keys` as fixed-width little-endian u64 bytes.
pub fn keys_to_bytes(keys: &[u64]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(keys.len() * 8);
    put_keys(&mut out, keys.iter().copied());
    out.into()
}
