//! What a push carries besides its gradients, and the gradients as a client hands them over.

/// Who sent a push and how far it got. `incarnation` and `seq` identify the push: a worker
/// gets a new incarnation each time it joins (a server refuses pushes of an older one),
/// and numbers its pushes within it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushMeta {
    pub worker_id: String,
    /// 0 = not a joined worker's push (nothing to fence).
    pub incarnation: u64,
    pub seq: u64,
    pub shard: String,
    /// Shard bytes consumed after the rows of this push.
    pub offset: u64,
    /// The pass over the shard (epoch, from 0) those rows are from.
    pub pass: u64,
    pub clock: u64,
    /// Rows behind this gradient.
    pub rows: u64,
    /// Progressive-validation loss of those rows, before training.
    pub loss_sum: f64,
    /// The whole push carries values, even where this part carries none (a partitioned
    /// model's progress mark): it counts as one update and one optimizer step on every
    /// partition, so the policy's count and Adam's bias correction do not depend on how
    /// the rows fell. A push without values anywhere only marks progress.
    pub update: bool,
    /// The values are what a worker's per-row training changed (weights and optimizer
    /// slots, merged by [`crate::optim::Merge`]), not gradients for the optimizer.
    pub changes: bool,
    /// A push of changes: the model's update count at the pull its rows trained on (0 =
    /// unknown); the server averages the weights' change with the concurrent pushes'.
    pub base_updates: u64,
    /// Of `rows`: those predicted right before training (classification).
    pub hits: u64,
    /// A binary model's rows by predicted probability before training: 256 counts of
    /// negatives, then 256 of positives ([`crate::progressive`]); empty otherwise.
    pub hist: Vec<u32>,
}

/// One gradient of a push, borrowed from the worker's buffers (the client encodes it
/// straight into the request): a dense range from `offset` (no keys), or rows by key
/// (`values` then holds the tensor's `cols` floats per key).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gradient<'a> {
    pub tensor: &'a str,
    /// "" = the weights; in a push of changes, an optimizer slot's change.
    pub slot: &'a str,
    pub offset: u64,
    pub keys: &'a [u32],
    pub values: &'a [f32],
}

/// A push: the gradients of one batch, against a lineage epoch (0 = don't check).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Push<'a> {
    pub model: &'a str,
    pub lineage_epoch: u64,
    pub grads: Vec<Gradient<'a>>,
    pub meta: Option<PushMeta>,
}

/// What the server says after applying a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushAck {
    pub lineage_epoch: u64,
    pub head_version: u64,
    /// Applied pushes, all time, after this one.
    pub updates: u64,
}
