//! `Export`: a version's parameters as a stream of chunk messages (a header, then each
//! tensor's weights and, if asked, its optimizer slots), produced on a blocking thread.
use super::BoxStream;
use accrete_core::Params;
use accrete_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A stock gRPC client's receive limit (4 MiB): no export message is larger, whatever the
/// server's own limit.
const STOCK_LIMIT: usize = 4 << 20;
/// Room in a message for everything but the values (tensor and slot names, offset).
const CHUNK_OVERHEAD: usize = 256;

/// Floats per chunk message of an export stream under a message limit of `limit` bytes.
pub(super) fn chunk_floats(limit: usize) -> usize {
    (limit.min(STOCK_LIMIT).saturating_sub(CHUNK_OVERHEAD) / 4).max(1)
}

/// The export stream of `params` after `header`, in messages of at most `limit` bytes
/// (and at most a stock client's 4 MiB).
pub(super) fn stream(
    header: pb::ExportHeader,
    params: Params,
    with_slots: bool,
    limit: usize,
) -> BoxStream<pb::ExportMessage> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let first = pb::ExportMessage { item: Some(pb::export_message::Item::Header(header)) };
        if tx.blocking_send(Ok(first)).is_err() {
            return;
        }
        for chunk in chunks(&params, with_slots, chunk_floats(limit)) {
            let msg = pb::ExportMessage { item: Some(pb::export_message::Item::Chunk(chunk)) };
            if tx.blocking_send(Ok(msg)).is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The chunk messages of an export: each tensor's weights, then (if asked) its slots.
fn chunks(params: &Params, with_slots: bool, per: usize) -> impl Iterator<Item = pb::TensorChunk> + '_ {
    params.tensors.iter().flat_map(move |t| {
        let n_slots = if with_slots { t.slots.len() } else { 0 };
        let vecs = std::iter::once(("", &t.w))
            .chain(params.slot_names.iter().zip(&t.slots).take(n_slots).map(|(n, v)| (*n, v)));
        vecs.flat_map(move |(slot, v)| {
            v.chunks(per).enumerate().map(move |(i, part)| pb::TensorChunk {
                tensor: t.spec.name.to_string(),
                slot: slot.to_string(),
                offset: (i * per) as u64,
                values: accrete_proto::f32s_to_bytes(part),
                ..Default::default()
            })
        })
    })
}
