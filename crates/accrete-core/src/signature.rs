//! A model's input signature: the data format and the columns its workers read (the
//! label, the numeric and categorical columns, the crosses), as resolved against the
//! data. Recorded with the model at create or by its first worker, so predict and the
//! evaluator read new data the way the model was trained, without the flags again.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InputSignature {
    /// `csv` or `libsvm`.
    pub format: String,
    /// The label column, with its binarisation (`arr_delay>15`); empty for LIBSVM.
    pub label: String,
    /// Numeric columns, in the order of the model's dense inputs.
    pub numeric: Vec<String>,
    pub categorical: Vec<String>,
    /// Crosses as `a:b`.
    pub cross: Vec<String>,
}

impl InputSignature {
    pub fn is_empty(&self) -> bool {
        *self == InputSignature::default()
    }

    /// Do two signatures read the same inputs? The label counts only when both name one
    /// (data to predict on may have none).
    pub fn same_inputs(&self, other: &InputSignature) -> bool {
        let labels = self.label.is_empty() || other.label.is_empty() || self.label == other.label;
        labels
            && self.format == other.format
            && self.numeric == other.numeric
            && self.categorical == other.categorical
            && self.cross == other.cross
    }
}

impl std::fmt::Display for InputSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", if self.format.is_empty() { "csv" } else { &self.format })?;
        if !self.label.is_empty() {
            write!(f, " --label {}", self.label)?;
        }
        for (flag, list) in [("numeric", &self.numeric), ("categorical", &self.categorical), ("cross", &self.cross)] {
            if !list.is_empty() {
                write!(f, " --{flag} {}", list.join(","))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_compare_inputs_and_print_as_flags() {
        let a = InputSignature {
            format: "csv".into(),
            label: "y>1".into(),
            numeric: vec!["x".into()],
            categorical: vec!["c".into()],
            cross: vec!["c:x".into()],
        };
        assert_eq!(a.to_string(), "csv --label y>1 --numeric x --categorical c --cross c:x");
        let unlabelled = InputSignature { label: String::new(), ..a.clone() };
        assert!(a.same_inputs(&unlabelled) && unlabelled.same_inputs(&a));
        assert!(!a.same_inputs(&InputSignature { label: "y".into(), ..a.clone() }));
        assert!(!a.same_inputs(&InputSignature { numeric: vec![], ..a.clone() }));
        assert!(InputSignature::default().is_empty() && !a.is_empty());
    }
}
