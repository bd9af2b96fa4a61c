//! Pulls as a client asks for them and gets them back: slices of tensors (whole, a dense
//! range, or rows by key) of the live parameters or of a version.

/// Part of a tensor to pull.
#[derive(Debug, Clone, PartialEq)]
pub enum Slice {
    Whole(String),
    /// `len` floats from `offset` (0 = to the end).
    Range {
        tensor: String,
        offset: u64,
        len: u64,
    },
    /// Rows by key; the answer holds `cols` floats per key, in the keys' order.
    Rows {
        tensor: String,
        keys: Vec<u64>,
    },
}

impl Slice {
    pub fn tensor(&self) -> &str {
        match self {
            Slice::Whole(t) | Slice::Range { tensor: t, .. } | Slice::Rows { tensor: t, .. } => t,
        }
    }
}

/// A pull. A joined worker gives its id and clock, so SSP/BSP can hold it at the barrier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullRequest {
    pub model: String,
    /// `None` = the live parameters.
    pub version: Option<u64>,
    /// Empty = every tensor, whole.
    pub slices: Vec<Slice>,
    /// Serve the EMA of the weights instead.
    pub ema: bool,
    pub worker_id: String,
    pub clock: u64,
    /// Also each slice's optimizer slots (every slot but the EMA).
    pub slots: bool,
}

/// Pulled values, one entry per requested slice, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pulled {
    /// The version read, or the head the live state descends from.
    pub version: u64,
    pub lineage_epoch: u64,
    pub updates: u64,
    pub tensors: Vec<(String, Vec<f32>)>,
    /// With [`PullRequest::slots`]: (tensor, slot, values) for each slice and slot.
    pub slots: Vec<(String, String, Vec<f32>)>,
}

impl Pulled {
    /// The values of the first slice of `tensor`.
    pub fn get(&self, tensor: &str) -> Option<&[f32]> {
        self.tensors.iter().find(|(n, _)| n == tensor).map(|(_, v)| &v[..])
    }

    /// Slot `slot` of the first slice of `tensor`.
    pub fn slot(&self, tensor: &str, slot: &str) -> Option<&[f32]> {
        self.slots.iter().find(|(n, s, _)| n == tensor && s == slot).map(|(_, _, v)| &v[..])
    }
}

/// Where a worker stands after joining a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Joined {
    /// Heartbeat well within this, or leave the barrier.
    pub lease_ms: u64,
    pub lineage_epoch: u64,
    /// The clock this worker id last pushed (0 = new).
    pub clock: u64,
    /// Shard bytes consumed, as recorded for this worker id, and the shard they refer to.
    pub offset: u64,
    /// The pass over the shard `offset` is in.
    pub pass: u64,
    pub shard: String,
    pub live_workers: u32,
    /// This worker's new incarnation: its pushes carry it; older ones are refused.
    pub incarnation: u64,
    /// The server process's instance: another one means a restart lost what was not committed.
    pub server_instance: u64,
}

/// Scores of feature rows: `outputs` values per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    pub version: u64,
    pub outputs: u32,
    pub values: Vec<f32>,
}
