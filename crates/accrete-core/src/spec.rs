//! Model specifications: what a user asks for at `model create`, with validation that
//! names the offending field. Serialisable, so the store keeps it as the model's record.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Linear,
    Logistic,
    Softmax,
    Fm,
    Mlp,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Linear => "linear",
            ModelKind::Logistic => "logistic",
            ModelKind::Softmax => "softmax",
            ModelKind::Fm => "fm",
            ModelKind::Mlp => "mlp",
        }
    }
}

/// The normalized optimizer's default learning rate. Vowpal Wabbit's is 0.5; the prior
/// of two rows in a classifier's `accum` takes a little off each step, and 0.7 measured
/// as well or better on every dataset of issue 15 (see ARCHITECTURE.md, "Defaults").
pub const NORMALIZED_LR: f32 = 0.7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Momentum,
    Adagrad,
    Adam,
    Ftrl,
    /// Adaptive, normalised and scale-invariant updates (Vowpal Wabbit's default): see
    /// [`crate::local`]. Needs the rows, so it is exact only in per-row (local) training;
    /// a pushed gradient is applied by AdaGrad's rule on the same `accum` slot.
    Normalized,
    /// Recursive least squares, for a linear model's dense inputs: after each push, the
    /// least-squares fit of every row learned, solved by the server from the pushed
    /// statistics (see [`crate::lsq`]). No rate; weights or gradients are refused.
    Rls,
}

impl OptimizerKind {
    /// The CLI's default for a model: `rls` for a linear regression over dense inputs only
    /// (at most [`crate::lsq::MAX_FEATURES`]), which it fits exactly; `normalized` for
    /// the other kinds that train row by row (linear, logistic, softmax); Adam for FM and
    /// MLP, which push batch gradients (invariant to the gradient's scale, so a batch's
    /// summed gradient cannot diverge).
    pub fn default_for(kind: ModelKind, features: u32, hash_bits: u32) -> OptimizerKind {
        match kind {
            ModelKind::Linear if hash_bits == 0 && (1..=crate::lsq::MAX_FEATURES).contains(&features) => {
                OptimizerKind::Rls
            }
            ModelKind::Linear | ModelKind::Logistic | ModelKind::Softmax => OptimizerKind::Normalized,
            ModelKind::Fm | ModelKind::Mlp => OptimizerKind::Adam,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Ftrl => "ftrl",
            OptimizerKind::Normalized => "normalized",
            OptimizerKind::Rls => "rls",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyMode {
    Asp,
    Bsp,
    Ssp,
}

/// Optimizer and hyper-parameters. Zero fields take the documented defaults in
/// [`OptimizerSpec::with_defaults`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub momentum: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub l1: f32,
    pub l2: f32,
}

impl OptimizerSpec {
    pub fn new(kind: OptimizerKind, lr: f32) -> Self {
        OptimizerSpec { kind, lr, momentum: 0.0, beta1: 0.0, beta2: 0.0, eps: 0.0, l1: 0.0, l2: 0.0 }.with_defaults()
    }

    /// Fills unset (zero) hyper-parameters with the usual defaults: lr 0.01 (FTRL alpha
    /// 0.1, normalized 0.7, Adam 0.001), momentum 0.9, Adam betas 0.9/0.999, eps 1e-8 (AdaGrad and
    /// normalized 1e-6), FTRL beta 1.
    pub fn with_defaults(mut self) -> Self {
        if self.lr == 0.0 {
            self.lr = match self.kind {
                OptimizerKind::Ftrl => 0.1,
                OptimizerKind::Normalized => NORMALIZED_LR,
                OptimizerKind::Adam => 0.001,
                _ => 0.01,
            };
        }
        if self.momentum == 0.0 && self.kind == OptimizerKind::Momentum {
            self.momentum = 0.9;
        }
        if self.beta1 == 0.0 && self.kind == OptimizerKind::Adam {
            self.beta1 = 0.9;
        }
        if self.beta2 == 0.0 {
            match self.kind {
                OptimizerKind::Adam => self.beta2 = 0.999,
                OptimizerKind::Ftrl => self.beta2 = 1.0,
                _ => {}
            }
        }
        if self.eps == 0.0 {
            match self.kind {
                OptimizerKind::Adam => self.eps = 1e-8,
                OptimizerKind::Adagrad | OptimizerKind::Normalized => self.eps = 1e-6,
                _ => {}
            }
        }
        self
    }

    fn validate(&self) -> Result<(), SpecError> {
        let pos = |field: &'static str, v: f32| {
            if v > 0.0 && v <= MAX_HYPER {
                Ok(())
            } else {
                Err(SpecError::field(field, format!("must be > 0 and at most {MAX_HYPER:e}, got {v}")))
            }
        };
        let non_neg = |field: &'static str, v: f32| {
            if (0.0..=MAX_HYPER).contains(&v) {
                Ok(())
            } else {
                Err(SpecError::field(field, format!("must be >= 0 and at most {MAX_HYPER:e}, got {v}")))
            }
        };
        let unit = |field: &'static str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(SpecError::field(field, format!("must be in [0, 1), got {v}")))
            }
        };
        pos("optimizer.lr", self.lr)?;
        unit("optimizer.momentum", self.momentum)?;
        unit("optimizer.beta1", self.beta1)?;
        non_neg("optimizer.eps", self.eps)?;
        non_neg("optimizer.l1", self.l1)?;
        non_neg("optimizer.l2", self.l2)?;
        match self.kind {
            OptimizerKind::Adam => unit("optimizer.beta2", self.beta2),
            OptimizerKind::Ftrl => non_neg("optimizer.beta2 (ftrl beta)", self.beta2),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct InitSpec {
    /// 0 = zeros; otherwise weights ~ N(0, scale²) from this seed.
    pub seed: u64,
    pub scale: f32,
}

/// When the live parameters become a version, and how many versions are kept. A field
/// of 0 turns that rule off (`keep_last` 0 keeps every version), so `Default` is "on
/// request only"; [`CommitPolicy::DEFAULT`] is what a model created without a policy
/// gets. Whatever the policy, a worker that finishes asks for a commit, and a server that
/// stops gracefully commits what is left.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CommitPolicy {
    pub every_updates: u64,
    pub every_secs: f64,
    pub keep_last: u32,
}

impl CommitPolicy {
    /// The policy of a model created without one: a version every 10 s while updates
    /// arrive, the newest 100 kept (plus tagged ones). Ten seconds bounds what a crash can
    /// lose without writing versions faster than anyone looks at them; 100 versions
    /// cover the evaluator's window for rollbacks by a wide margin.
    pub const DEFAULT: CommitPolicy = CommitPolicy { every_updates: 0, every_secs: 10.0, keep_last: 100 };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    pub features: u32,
    pub hash_bits: u32,
    pub classes: u32,
    pub hidden: u32,
    pub factors: u32,
    pub optimizer: OptimizerSpec,
    pub init: InitSpec,
    pub ema_decay: f32,
    pub commit: CommitPolicy,
    pub consistency: ConsistencyMode,
    pub staleness: u32,
    /// Partitions the model's large tensors are split over (0 and 1: one, the whole
    /// model on one server); see [`crate::partition`].
    #[serde(default)]
    pub partitions: u32,
    /// Which of them this spec's model holds (a server's local model of one partition;
    /// 0 for the model as clients see it, and for the home partition).
    #[serde(default)]
    pub partition: u32,
}

/// The largest learning rate, regularisation, epsilon, FTRL beta or initial scale: far
/// above any that trains, and far enough below f32's range (3.4e38) that one step from a
/// finite gradient is not infinite by construction. A push whose result would still not
/// be finite is refused when it is applied.
pub const MAX_HYPER: f32 = 1e6;

/// The most partitions a model is split into.
pub const MAX_PARTITIONS: u32 = 1024;

/// The largest hashed table: 2^28 rows.
pub const MAX_HASH_BITS: u32 = 28;
/// The largest model accepted: 2^31 floats of weights (8 GiB).
pub const MAX_PARAMETERS: u64 = 1 << 31;
/// Weights and optimizer slots together (16 GiB of f32).
pub const MAX_FLOATS: u64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid model spec: {field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

impl SpecError {
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        SpecError { field, message: message.into() }
    }
}

impl ModelSpec {
    /// A spec with defaults for everything but the name, kind and shape fields.
    pub fn new(name: &str, kind: ModelKind) -> Self {
        ModelSpec {
            name: name.to_string(),
            kind,
            features: 0,
            hash_bits: 0,
            classes: 0,
            hidden: 0,
            factors: 0,
            optimizer: OptimizerSpec::new(OptimizerKind::Sgd, 0.01),
            init: InitSpec::default(),
            ema_decay: 0.0,
            commit: CommitPolicy::default(),
            consistency: ConsistencyMode::Asp,
            staleness: 0,
            partitions: 0,
            partition: 0,
        }
    }

    /// The number of partitions, at least 1.
    pub fn parts(&self) -> u32 {
        self.partitions.max(1)
    }

    /// The model's name as users give it: the local model of partition i > 0 is called
    /// `NAME#i` on its server ([`local_name`]).
    pub fn base_name(&self) -> &str {
        base_name(&self.name)
    }

    /// The spec of partition `part` of this (whole) model, as its server keeps it.
    pub fn partition_spec(&self, part: u32) -> ModelSpec {
        let mut s = self.clone();
        s.name = local_name(self.base_name(), part);
        s.partition = part;
        s
    }

    /// The whole model's spec, from any partition's.
    pub fn whole(&self) -> ModelSpec {
        let mut s = self.clone();
        s.name = self.base_name().to_string();
        s.partition = 0;
        s
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(self.base_name())?;
        if self.partitions > MAX_PARTITIONS {
            let message = format!("must be at most {MAX_PARTITIONS}, got {}", self.partitions);
            return Err(SpecError::field("partitions", message));
        }
        if self.partition >= self.parts() || local_name(self.base_name(), self.partition) != self.name {
            let message =
                format!("partition {} of {} does not match the name {:?}", self.partition, self.parts(), self.name);
            return Err(SpecError::field("partition", message));
        }
        self.validate_shape()?;
        self.optimizer.validate()?;
        if self.optimizer.kind == OptimizerKind::Rls {
            let max = crate::lsq::MAX_FEATURES;
            let ok = self.kind == ModelKind::Linear && self.hash_bits == 0 && (1..=max).contains(&self.features);
            if !ok {
                let message = format!(
                    "rls fits a linear model of 1 to {max} dense features and no hashed ones; this is a {} model of {} features and {} hash bits (use normalized)",
                    self.kind.as_str(),
                    self.features,
                    self.hash_bits
                );
                return Err(SpecError::field("optimizer", message));
            }
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(SpecError::field("ema_decay", format!("must be in [0, 1), got {}", self.ema_decay)));
        }
        if !(0.0..=MAX_HYPER).contains(&self.init.scale) {
            return Err(SpecError::field(
                "init.scale",
                format!("must be >= 0 and at most {MAX_HYPER:e}, got {}", self.init.scale),
            ));
        }
        let secs = self.commit.every_secs;
        if !(secs.is_finite() && (secs == 0.0 || secs >= MIN_COMMIT_SECS)) {
            let message = format!("must be 0 (off) or at least {MIN_COMMIT_SECS} seconds, got {secs}");
            return Err(SpecError::field("commit.every_secs", message));
        }
        // In u128: each tensor is at most 2^32 rows × 2^32 columns, so nothing overflows
        // whatever the request asked for.
        let params: u128 = crate::layout(self).iter().map(|t| t.rows as u128 * t.cols as u128).sum();
        if params > MAX_PARAMETERS as u128 {
            return Err(SpecError::field(
                "layout",
                format!("{params} parameters is over the limit of {MAX_PARAMETERS}"),
            ));
        }
        let slots = crate::layout::slots(self);
        let floats = params * (1 + slots.len() as u128);
        if floats > MAX_FLOATS as u128 {
            return Err(SpecError::field(
                "layout",
                format!(
                    "{params} parameters with optimizer and EMA slots ({}) hold {floats} floats, over the limit of {MAX_FLOATS}",
                    slots.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn validate_shape(&self) -> Result<(), SpecError> {
        if self.hash_bits > MAX_HASH_BITS {
            return Err(SpecError::field(
                "hash_bits",
                format!("must be at most {MAX_HASH_BITS}, got {}", self.hash_bits),
            ));
        }
        let need = |ok: bool, field: &'static str, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(SpecError::field(field, format!("{what} for kind {}", self.kind.as_str())))
            }
        };
        match self.kind {
            ModelKind::Linear | ModelKind::Logistic => {
                need(self.features > 0 || self.hash_bits > 0, "features", "features > 0 or hash_bits > 0 is required")
            }
            ModelKind::Softmax => {
                need(self.classes >= 2, "classes", "classes >= 2 is required")?;
                need(self.features > 0 || self.hash_bits > 0, "features", "features > 0 or hash_bits > 0 is required")
            }
            ModelKind::Fm => {
                need(self.hash_bits > 0, "hash_bits", "hash_bits > 0 is required")?;
                need(self.factors > 0, "factors", "factors > 0 is required")
            }
            ModelKind::Mlp => {
                need(self.features > 0, "features", "features > 0 is required")?;
                need(self.hidden > 0, "hidden", "hidden > 0 is required")
            }
        }
    }

    /// Number of model outputs: classes for softmax and multi-class MLPs, else 1.
    pub fn outputs(&self) -> u32 {
        match self.kind {
            ModelKind::Softmax => self.classes,
            ModelKind::Mlp if self.classes >= 2 => self.classes,
            _ => 1,
        }
    }
}

/// Model names are path- and URL-safe: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.`.
/// The shortest time policy: the policy task looks at the models every 100 ms, so a
/// shorter period would only pretend to be kept.
pub const MIN_COMMIT_SECS: f64 = 0.1;

pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(SpecError::field("name", format!("{name:?} is not a valid model name (1-64 of A-Z a-z 0-9 _ . -)")))
    }
}

/// The local model name of partition `part` of model `base`: `base` itself for the home
/// partition 0, `base#part` for the others (`#` is not allowed in a model's name, so no
/// user model is ever called that).
pub fn local_name(base: &str, part: u32) -> String {
    if part == 0 {
        base.to_string()
    } else {
        format!("{base}#{part}")
    }
}

/// The model a local name belongs to (`NAME#i` → `NAME`).
pub fn base_name(name: &str) -> &str {
    name.split_once('#').map_or(name, |(b, _)| b)
}

/// The partition a local name stands for (`NAME#i` → i, `NAME` → 0; a suffix that is no
/// number → 0, and the name is then no model's).
pub fn partition_of_name(name: &str) -> u32 {
    name.split_once('#').and_then(|(_, i)| i.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_policy_is_off_or_at_least_a_tenth_of_a_second() {
        let mut m = ModelSpec::new("m", ModelKind::Linear);
        m.features = 1;
        for ok in [0.0, 0.1, 60.0] {
            m.commit.every_secs = ok;
            m.validate().unwrap();
        }
        for bad in [1e-300, 0.05, -1.0, f64::NAN] {
            m.commit.every_secs = bad;
            let e = m.validate().unwrap_err();
            assert_eq!(e.field, "commit.every_secs", "{bad}: {e:?}");
        }
    }

    #[test]
    fn huge_shapes_are_refused_by_name_without_overflow() {
        let mut m = ModelSpec::new("m", ModelKind::Mlp);
        (m.features, m.hidden, m.classes) = (u32::MAX, u32::MAX - 46_342, 46_341);
        let e = m.validate().unwrap_err();
        assert_eq!(e.field, "layout", "{e:?}");
        let mut a = ModelSpec::new("a", ModelKind::Logistic);
        a.hash_bits = 28;
        a.features = 1 << 28;
        a.optimizer = OptimizerSpec::new(OptimizerKind::Adam, 0.01);
        a.ema_decay = 0.99;
        let e = a.validate().unwrap_err();
        assert!(e.message.contains("m, v, ema"), "{e:?}");
    }

    #[test]
    fn rls_is_the_default_for_dense_linear_regression_and_only_fits_that() {
        assert_eq!(OptimizerKind::default_for(ModelKind::Linear, 8, 0), OptimizerKind::Rls);
        assert_eq!(OptimizerKind::default_for(ModelKind::Linear, 8, 10), OptimizerKind::Normalized);
        assert_eq!(OptimizerKind::default_for(ModelKind::Linear, 257, 0), OptimizerKind::Normalized);
        assert_eq!(OptimizerKind::default_for(ModelKind::Logistic, 8, 0), OptimizerKind::Normalized);
        let mut s = ModelSpec::new("m", ModelKind::Linear);
        s.features = 8;
        s.optimizer = OptimizerSpec::new(OptimizerKind::Rls, 0.0);
        s.validate().unwrap();
        assert_eq!(crate::layout(&s).last().map(|t| (t.name, t.rows, t.cols)), Some(("cov", 11, 9)));
        for (kind, features, bits) in
            [(ModelKind::Logistic, 8, 0), (ModelKind::Linear, 8, 4), (ModelKind::Linear, 300, 0)]
        {
            (s.kind, s.features, s.hash_bits) = (kind, features, bits);
            let e = s.validate().unwrap_err();
            assert!(e.field == "optimizer" && e.message.contains("rls fits a linear model"), "{e:?}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = ModelSpec::new("m", ModelKind::Linear);
        assert_eq!(s.validate().unwrap_err().field, "features");
        s.features = 3;
        s.validate().unwrap();
        s.optimizer.lr = f32::NAN;
        assert_eq!(s.validate().unwrap_err().field, "optimizer.lr");
        for (lr, ok) in [(1e38, false), (f32::INFINITY, false), (1e6, true), (1.5e6, false)] {
            s.optimizer.lr = lr;
            assert_eq!(s.validate().is_ok(), ok, "lr {lr}");
        }
        s.optimizer.lr = 0.1;
        s.optimizer.l2 = 1e30;
        assert_eq!(s.validate().unwrap_err().field, "optimizer.l2");
        s.optimizer.l2 = 0.0;
        s.init.scale = 3e38;
        assert_eq!(s.validate().unwrap_err().field, "init.scale");
        s.init.scale = 0.0;
        s.optimizer.lr = 0.1;
        s.hash_bits = 40;
        assert_eq!(s.validate().unwrap_err().field, "hash_bits");
        s.hash_bits = 0;
        s.name = "a/b".into();
        assert_eq!(s.validate().unwrap_err().field, "name");
    }

    #[test]
    fn a_partition_is_named_after_its_model_and_index() {
        let mut s = ModelSpec::new("fl", ModelKind::Logistic);
        s.hash_bits = 12;
        s.partitions = 3;
        s.validate().unwrap();
        let p2 = s.partition_spec(2);
        assert_eq!((p2.name.as_str(), p2.base_name(), p2.partition), ("fl#2", "fl", 2));
        p2.validate().unwrap();
        assert_eq!(p2.whole(), s);
        assert_eq!(s.partition_spec(0).name, "fl");
        let mut bad = p2.clone();
        bad.partition = 1;
        assert_eq!(bad.validate().unwrap_err().field, "partition");
        bad.partition = 3;
        assert_eq!(bad.validate().unwrap_err().field, "partition");
        bad.name = "f#l".into();
        bad.partition = 0;
        assert_eq!(bad.validate().unwrap_err().field, "partition");
        s.partitions = MAX_PARTITIONS + 1;
        assert_eq!(s.validate().unwrap_err().field, "partitions");
        assert!(validate_name("a#1").is_err(), "users cannot name a model like a partition");
    }

    #[test]
    fn defaults_fill_only_unset_fields() {
        let o = OptimizerSpec::new(OptimizerKind::Adam, 0.5);
        assert_eq!((o.lr, o.beta1, o.beta2, o.eps), (0.5, 0.9, 0.999, 1e-8));
        let f = OptimizerSpec::new(OptimizerKind::Ftrl, 0.0);
        assert_eq!((f.lr, f.beta2), (0.1, 1.0));
    }
}
