//! Data ingest, shared by the worker, the evaluator and `model predict`: shard sources
//! (files, part directories, pipes, gzip, follow), CSV and LIBSVM parsing into batches
//! without per-row allocation, feature hashing, label specs, and guessing which CSV
//! columns are numeric. No network: rows in, [`accrete_core::features::Batch`]es out.

pub mod parse;
pub mod rows;
pub mod signature;
pub mod source;

pub use parse::{ColumnSpec, LabelSpec, Target};
pub use rows::{Format, OnBadRow, RowSource};
pub use signature::{columns_for, Columns};

use accrete_core::view::ModelView;
use accrete_core::ModelKind;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Flags or data that cannot work together (no label column, unknown columns, …).
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A bad row under `--on-bad-row fail`, with its file and line.
    #[error("{0}")]
    BadRow(String),
}

impl Target {
    /// What rows must produce for a model: its dense inputs, hashed table, classes, and
    /// whether labels are binary.
    pub fn of(view: &ModelView) -> Target {
        Target {
            features: view.spec.features as usize,
            hash_bits: view.spec.hash_bits,
            classes: view.dims.classes(),
            binary: matches!(view.spec.kind, ModelKind::Logistic | ModelKind::Fm),
        }
    }
}
