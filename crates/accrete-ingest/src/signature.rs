//! Reading data the way a model was trained: the columns named on the command line,
//! checked against the model's recorded input signature, or — when none are named — the
//! recorded ones. Workers, `model predict` and the evaluator all go through [`columns_for`].
use crate::{ColumnSpec, Format, IngestError, OnBadRow, RowSource, Target};
use accrete_core::InputSignature;
use std::path::Path;

/// How data read with these columns is to be read.
#[derive(Debug, Clone)]
pub struct Columns {
    pub format: Option<Format>,
    pub spec: ColumnSpec,
    /// The columns resolved against the data (what a first worker records).
    pub signature: InputSignature,
}

/// The columns to read `path` with, for `model` whose recorded signature is `recorded`:
/// the `named` ones (and `format`) resolved against the data and refused if they differ
/// from the recorded ones, or the recorded ones when nothing is named. Training and
/// scoring (`labelled`) need a label column.
pub fn columns_for(
    path: &Path,
    format: Option<Format>,
    named: &ColumnSpec,
    recorded: Option<&InputSignature>,
    target: Target,
    (model, labelled): (&str, bool),
) -> Result<Columns, IngestError> {
    if let (true, None, Some(rec)) = (named.is_empty(), format, recorded) {
        let spec = ColumnSpec::of_signature(rec)
            .map_err(|e| IngestError::Config(format!("model {model:?}: its recorded columns: {e}")))?;
        let format = Some(if rec.format == "libsvm" { Format::Libsvm } else { Format::Csv });
        return Ok(Columns { format, spec, signature: rec.clone() });
    }
    let mut rows = RowSource::open(path, format, named, target, OnBadRow::Skip, labelled)?;
    let signature = rows.signature()?;
    if labelled && signature.format == "csv" && signature.label.is_empty() {
        return Err(IngestError::Config(format!(
            "{}: no label column: name it with --label COLUMN (or COLUMN>THRESHOLD); model {model:?} has no recorded columns yet",
            path.display()
        )));
    }
    if let Some(rec) = recorded.filter(|r| !r.same_inputs(&signature)) {
        return Err(IngestError::Config(format!(
            "model {model:?} reads its data as `{rec}`, but these flags read `{signature}`; \
             leave the column flags out to use the model's"
        )));
    }
    Ok(Columns { format, spec: named.clone(), signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_columns_are_resolved_and_checked_and_none_means_the_recorded_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "a,b,c,y\n1,2,x,1\n3,4,z,0\n").unwrap();
        let target = Target { features: 0, hash_bits: 8, classes: 0, binary: true };
        let named = ColumnSpec { label: Some("y>0".parse().unwrap()), ..Default::default() };
        let got = columns_for(&path, None, &named, None, target, ("m", true)).unwrap();
        let expected = InputSignature {
            format: "csv".into(),
            label: "y>0".into(),
            numeric: vec!["a".into(), "b".into()],
            categorical: vec!["c".into()],
            cross: vec![],
        };
        assert_eq!(got.signature, expected, "kinds guessed from the rows");
        // Nothing named: the recorded columns, whatever the file's own kinds would be.
        let got = columns_for(&path, None, &ColumnSpec::default(), Some(&expected), target, ("m", true)).unwrap();
        assert_eq!((got.spec.numeric.len(), got.spec.categorical.len()), (2, 1));
        assert_eq!(got.spec.label.unwrap().to_string(), "y>0");
        // Other columns are refused, with both signatures shown.
        let other = ColumnSpec { categorical: vec!["c".into()], ..named };
        let e = columns_for(&path, None, &other, Some(&expected), target, ("m", false)).unwrap_err().to_string();
        assert!(e.contains("--numeric a,b --categorical c") && e.contains("`csv --label y>0 --categorical c`"), "{e}");
    }
}
