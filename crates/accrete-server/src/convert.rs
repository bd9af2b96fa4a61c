//! A model's description as the service reports it (the wire conversions themselves are
//! in `accrete_proto::convert`).
use crate::model::ModelHandle;
use accrete_core::{ModelInfo, PartitionInfo, TensorInfo};

pub fn model_info(h: &ModelHandle, versions: u64) -> ModelInfo {
    let st = h.status();
    // A partitioned model's home describes the whole model; partition i > 0 describes
    // itself (its local name and partition). Either way `tensors` gives the rows this
    // partition holds, and `parameters` and `partitions` are the whole model's.
    let (own, whole) = (h.spec(), h.spec().whole());
    ModelInfo {
        tensors: TensorInfo::of_spec(own),
        parameters: accrete_core::layout(&whole).iter().map(|t| t.len()).sum(),
        partitions: PartitionInfo::of_model(&whole, &h.servers),
        spec: if own.partition == 0 { whole } else { own.clone() },
        head_version: st.head,
        lineage_epoch: st.epoch,
        updates: st.updates,
        uncommitted_updates: st.since_commit,
        versions,
        created_unix_ms: h.record.created_unix_ms,
        signature: h.signature(),
        server_instance: h.instance,
    }
}
