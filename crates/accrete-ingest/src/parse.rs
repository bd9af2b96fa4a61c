//! Turning lines into batch rows: CSV with a header (label column by name, numeric columns
//! as dense features, other columns hashed as `column=value`, crosses `a=va^b=vb`) and
//! LIBSVM (`label idx:val …`, 1-based indices). Nothing is allocated per row: fields are
//! byte ranges of the line, hashed keys are built in a reused buffer.
#[cfg(test)]
use accrete_core::features::murmur3_32;
use accrete_core::features::{Batch, Murmur3};

/// How the label is read: a column, optionally binarised by a threshold
/// (`arr_delay>15`, `y<=0`, `class=3`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpec {
    pub column: String,
    pub test: Option<(Cmp, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl std::str::FromStr for LabelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        for (op, cmp) in
            [(">=", Cmp::Ge), ("<=", Cmp::Le), (">", Cmp::Gt), ("<", Cmp::Lt), ("==", Cmp::Eq), ("=", Cmp::Eq)]
        {
            if let Some((col, v)) = s.split_once(op) {
                let t: f64 =
                    v.trim().parse().map_err(|_| format!("label spec {s:?}: threshold {v:?} is not a number"))?;
                return Ok(LabelSpec { column: col.trim().to_string(), test: Some((cmp, t)) });
            }
        }
        if s.trim().is_empty() {
            return Err("label spec is empty".into());
        }
        Ok(LabelSpec { column: s.trim().to_string(), test: None })
    }
}

/// The spec as it is written: `y`, `arr_delay>15`.
impl std::fmt::Display for LabelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((cmp, t)) = self.test else { return write!(f, "{}", self.column) };
        let op = match cmp {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Eq => "=",
        };
        write!(f, "{}{op}{t}", self.column)
    }
}

impl LabelSpec {
    fn apply(&self, v: f64) -> f32 {
        match self.test {
            None => v as f32,
            Some((c, t)) => {
                let hit = match c {
                    Cmp::Gt => v > t,
                    Cmp::Ge => v >= t,
                    Cmp::Lt => v < t,
                    Cmp::Le => v <= t,
                    Cmp::Eq => v == t,
                };
                hit as u8 as f32
            }
        }
    }
}

/// Which CSV columns are features.
#[derive(Debug, Clone, Default)]
pub struct ColumnSpec {
    pub label: Option<LabelSpec>,
    pub numeric: Vec<String>,
    pub categorical: Vec<String>,
    pub cross: Vec<(String, String)>,
}

impl ColumnSpec {
    /// No column named: the model's recorded columns are used.
    pub fn is_empty(&self) -> bool {
        self.label.is_none() && self.numeric.is_empty() && self.categorical.is_empty() && self.cross.is_empty()
    }

    /// The columns as named, unresolved (a CSV read from a pipe cannot be sampled ahead).
    pub fn signature_as_named(&self) -> accrete_core::InputSignature {
        accrete_core::InputSignature {
            format: "csv".into(),
            label: self.label.as_ref().map(|l| l.to_string()).unwrap_or_default(),
            numeric: self.numeric.clone(),
            categorical: self.categorical.clone(),
            cross: self.cross.iter().map(|(a, b)| format!("{a}:{b}")).collect(),
        }
    }

    /// The columns a model recorded, to read new data the same way.
    pub fn of_signature(s: &accrete_core::InputSignature) -> Result<ColumnSpec, String> {
        let label = if s.label.is_empty() { None } else { Some(s.label.parse()?) };
        let cross = s
            .cross
            .iter()
            .map(|c| c.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("recorded crosses {:?} are not all a:b", s.cross))?;
        Ok(ColumnSpec { label, numeric: s.numeric.clone(), categorical: s.categorical.clone(), cross })
    }
}

/// What the model wants: dense inputs (`features`, 0 = none) and a hashed table.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub features: usize,
    pub hash_bits: u32,
    /// Labels are class indices below this (softmax); 0 = not a classifier of classes.
    pub classes: usize,
    /// A binary classifier (logistic, FM): labels are 0/1, and -1 means 0.
    pub binary: bool,
}

impl Target {
    /// Checks a parsed label against the model: finite; a class index for classifiers of
    /// classes; 0/1 (or -1/+1) for binary ones.
    pub fn check_label(&self, label: f32) -> Result<f32, RowError> {
        if label.is_nan() {
            return Ok(label); // no label: the caller decides
        }
        if !label.is_finite() {
            return Err(RowError::Bad(format!("label {label} is not a finite number")));
        }
        if self.classes > 0 && (label < 0.0 || label as usize >= self.classes || label.fract() != 0.0) {
            return Err(RowError::Bad(format!("label {label} is not a class in 0..{}", self.classes)));
        }
        if self.binary {
            return match label {
                1.0 => Ok(1.0),
                0.0 | -1.0 => Ok(0.0),
                _ => Err(RowError::Bad(format!("label {label} is not 0 or 1 (or -1/+1) for a binary model"))),
            };
        }
        Ok(label)
    }

    /// Keeps the low `hash_bits` bits of a hash: its row of the hashed table.
    pub fn hash_mask(&self) -> u32 {
        1u32.checked_shl(self.hash_bits).map_or(u32::MAX, |b| b - 1)
    }
}

/// What went wrong with a row; the caller adds file:line.
#[derive(Debug, Clone, PartialEq)]
pub enum RowError {
    Bad(String),
    NoLabel,
}

fn missing(v: &[u8]) -> bool {
    v.is_empty() || v == b"NA" || v == b"NaN" || v == b"nan" || v == b"null"
}

fn parse_f64(v: &[u8]) -> Option<f64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// A CSV row parser for one header.
#[derive(Debug, Clone)]
pub struct CsvParser {
    pub header: Vec<String>,
    label: Option<(usize, LabelSpec)>,
    dense: Vec<usize>,
    /// Numeric columns hashed by name: (column, masked hash of the name).
    hashed_numeric: Vec<(usize, u32)>,
    /// (column, the hash state after `name=`).
    categorical: Vec<(usize, Murmur3)>,
    /// (column a, column b, the hash state after `a=`, the bytes `^b=`).
    cross: Vec<(usize, usize, Murmur3, Vec<u8>)>,
    target: Target,
    fields: Vec<(usize, usize)>,
}

/// The column names of a CSV header line.
pub(crate) fn header_names(header: &[u8]) -> Vec<String> {
    let mut f = Vec::new();
    split_fields(header, &mut f);
    f.iter().map(|(a, b)| String::from_utf8_lossy(&header[*a..*b]).trim().to_string()).collect()
}

/// Splits a CSV line into field byte ranges (quotes honoured; `""` inside quotes kept).
fn split_fields(line: &[u8], out: &mut Vec<(usize, usize)>) {
    out.clear();
    if memchr::memchr(b'"', line).is_none() {
        // The common case: no quotes, so every comma separates fields.
        let mut start = 0;
        for i in memchr::memchr_iter(b',', line) {
            out.push((start, i));
            start = i + 1;
        }
        out.push((start, line.len()));
        return;
    }
    let (mut start, mut quoted, mut i) = (0, false, 0);
    while i < line.len() {
        match line[i] {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push((start, line.len()));
    for f in out.iter_mut() {
        if f.1 >= f.0 + 2 && line[f.0] == b'"' && line[f.1 - 1] == b'"' {
            *f = (f.0 + 1, f.1 - 1);
        }
    }
}

impl CsvParser {
    /// Builds the parser from the header line. With no `--numeric`/`--categorical`, the
    /// kinds are guessed from `sample` rows: a column whose values all parse as numbers is
    /// numeric, any other is categorical.
    pub fn new(header: &[u8], spec: &ColumnSpec, target: Target, sample: &[Vec<u8>]) -> Result<CsvParser, String> {
        let names = header_names(header);
        if let Some((i, n)) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
            return Err(format!(
                "column {n:?} appears twice in the header (columns {} and {})",
                names.iter().position(|m| m == n).unwrap_or(0) + 1,
                i + 1
            ));
        }
        let find = |c: &str| {
            names
                .iter()
                .position(|n| n == c)
                .ok_or_else(|| format!("column {c:?} is not in the header ({})", names.join(",")))
        };
        let label = match &spec.label {
            Some(l) => Some((find(&l.column)?, l.clone())),
            None => None,
        };
        let label_col = label.as_ref().map(|l| l.0);
        let (numeric, categorical): (Vec<usize>, Vec<usize>) = if spec.numeric.is_empty() && spec.categorical.is_empty()
        {
            let mut fields = Vec::new();
            let cols: Vec<usize> = (0..names.len()).filter(|c| Some(*c) != label_col).collect();
            cols.into_iter().partition(|c| {
                sample.iter().all(|row| {
                    split_fields(row, &mut fields);
                    fields.get(*c).is_none_or(|(a, b)| missing(&row[*a..*b]) || parse_f64(&row[*a..*b]).is_some())
                })
            })
        } else {
            (
                spec.numeric.iter().map(|c| find(c)).collect::<Result<_, _>>()?,
                spec.categorical.iter().map(|c| find(c)).collect::<Result<_, _>>()?,
            )
        };
        let cross = spec.cross.iter().map(|(a, b)| Ok((find(a)?, find(b)?))).collect::<Result<Vec<_>, String>>()?;
        let (dense, hashed_numeric) = if target.features == 0 {
            (Vec::new(), numeric)
        } else if target.features == numeric.len() {
            (numeric, Vec::new())
        } else {
            return Err(format!(
                "the model has {} dense features but the data has {} numeric columns ({})",
                target.features,
                numeric.len(),
                numeric.iter().map(|c| names[*c].as_str()).collect::<Vec<_>>().join(",")
            ));
        };
        if target.hash_bits == 0 && !(categorical.is_empty() && cross.is_empty() && hashed_numeric.is_empty()) {
            return Err("the model has no hashed table (--hash-bits) for categorical columns".into());
        }
        let mask = target.hash_mask();
        let prefix = |c: usize| Murmur3::new(0).write(names[c].as_bytes()).write(b"=");
        Ok(CsvParser {
            hashed_numeric: hashed_numeric
                .into_iter()
                .map(|c| (c, Murmur3::new(0).write(names[c].as_bytes()).finish() & mask))
                .collect(),
            categorical: categorical.into_iter().map(|c| (c, prefix(c))).collect(),
            cross: cross.into_iter().map(|(a, b)| (a, b, prefix(a), format!("^{}=", names[b]).into_bytes())).collect(),
            header: names,
            label,
            dense,
            target,
            fields: Vec::new(),
        })
    }

    /// The columns this parser reads, by name: what a model trained through it records.
    pub fn signature(&self) -> accrete_core::InputSignature {
        let name = |c: &usize| self.header[*c].clone();
        let numeric = if self.dense.is_empty() {
            self.hashed_numeric.iter().map(|(c, _)| name(c)).collect()
        } else {
            self.dense.iter().map(name).collect()
        };
        accrete_core::InputSignature {
            format: "csv".into(),
            label: self.label.as_ref().map(|(_, l)| l.to_string()).unwrap_or_default(),
            numeric,
            categorical: self.categorical.iter().map(|(c, _)| name(c)).collect(),
            cross: self.cross.iter().map(|(a, b, ..)| format!("{}:{}", name(a), name(b))).collect(),
        }
    }

    /// Parses one line into `batch`; `require_label` skips rows without one.
    pub fn parse(&mut self, line: &[u8], batch: &mut Batch, require_label: bool) -> Result<(), RowError> {
        split_fields(line, &mut self.fields);
        if self.fields.len() != self.header.len() {
            return Err(RowError::Bad(format!("expected {} fields, found {}", self.header.len(), self.fields.len())));
        }
        let label = match &self.label {
            Some((c, spec)) => {
                let (a, b) = self.fields[*c];
                let v = &line[a..b];
                if missing(v) {
                    if require_label {
                        return Err(RowError::NoLabel);
                    }
                    f32::NAN
                } else {
                    let x = parse_f64(v).ok_or_else(|| {
                        RowError::Bad(format!(
                            "label column {:?}: {:?} is not a number",
                            spec.column,
                            String::from_utf8_lossy(v)
                        ))
                    })?;
                    spec.apply(x)
                }
            }
            None if require_label => return Err(RowError::NoLabel),
            None => f32::NAN,
        };
        // (rows read only to be scored keep whatever label they have)
        let label = if require_label { self.target.check_label(label)? } else { label };
        for i in 0..self.dense.len() {
            let (a, b) = self.fields[self.dense[i]];
            let v = &line[a..b];
            let x = if missing(v) { f32::NAN } else { self.number(i, v, true)? };
            batch.dense.push(x);
        }
        let mask = self.target.hash_mask();
        for (i, &(c, h)) in self.hashed_numeric.iter().enumerate() {
            let (a, b) = self.fields[c];
            if missing(&line[a..b]) {
                continue;
            }
            let x = self.number(i, &line[a..b], false)?;
            batch.idx.push(h);
            batch.val.push(x);
        }
        for &(c, prefix) in &self.categorical {
            let (a, b) = self.fields[c];
            batch.idx.push(prefix.write(&line[a..b]).finish() & mask);
            batch.val.push(1.0);
        }
        for (ca, cb, prefix, mid) in &self.cross {
            let ((a0, a1), (b0, b1)) = (self.fields[*ca], self.fields[*cb]);
            batch.idx.push(prefix.write(&line[a0..a1]).write(mid).write(&line[b0..b1]).finish() & mask);
            batch.val.push(1.0);
        }
        batch.finish_row(label);
        Ok(())
    }

    fn number(&self, i: usize, v: &[u8], dense: bool) -> Result<f32, RowError> {
        let c = if dense { self.dense[i] } else { self.hashed_numeric[i].0 };
        parse_f64(v).map(|x| x as f32).filter(|x| x.is_finite()).ok_or_else(|| {
            RowError::Bad(format!("column {:?}: {:?} is not a number", self.header[c], String::from_utf8_lossy(v)))
        })
    }
}

/// Parses a LIBSVM line (`label idx:val …`, indices 1-based): indices up to `features`
/// are dense inputs; with a hashed table, indices are taken modulo its size instead.
pub fn parse_libsvm(line: &[u8], target: Target, batch: &mut Batch, require_label: bool) -> Result<(), RowError> {
    let text = std::str::from_utf8(line).map_err(|_| RowError::Bad("line is not UTF-8".into()))?;
    let mut tokens = text.split_ascii_whitespace();
    let label = match tokens.next() {
        None if require_label => return Err(RowError::NoLabel),
        None => f32::NAN,
        Some(t) => t.parse::<f32>().map_err(|_| RowError::Bad(format!("label {t:?} is not a number")))?,
    };
    let label = if require_label { target.check_label(label)? } else { label };
    let start = batch.dense.len();
    batch.dense.resize(start + target.features, 0.0);
    for tok in tokens {
        let bad = || RowError::Bad(format!("token {tok:?} is not idx:value with a 1-based index"));
        let (i, v) = tok.split_once(':').ok_or_else(bad)?;
        let i: u64 = i.parse().map_err(|_| bad())?;
        let v: f32 = v.parse().map_err(|_| bad())?;
        if i == 0 || !v.is_finite() {
            return Err(bad());
        }
        if target.features > 0 {
            if i as usize > target.features {
                return Err(RowError::Bad(format!("index {i} is beyond the model's {} features", target.features)));
            }
            batch.dense[start + i as usize - 1] = v;
        } else if target.hash_bits > 0 {
            batch.idx.push(((i - 1) & ((1 << target.hash_bits) - 1)) as u32);
            batch.val.push(v);
        }
    }
    batch.finish_row(label);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_specs_parse_and_binarise() {
        let l: LabelSpec = "arr_delay>15".parse().unwrap();
        assert_eq!((l.column.as_str(), l.apply(16.0), l.apply(15.0)), ("arr_delay", 1.0, 0.0));
        let l: LabelSpec = "y".parse().unwrap();
        assert_eq!(l.apply(2.5), 2.5);
        assert!("x>abc".parse::<LabelSpec>().unwrap_err().contains("abc"));
    }

    #[test]
    fn csv_rows_hash_categories_and_crosses() {
        let spec = ColumnSpec {
            label: Some("d>15".parse().unwrap()),
            numeric: vec![],
            categorical: vec!["c".into(), "o".into()],
            cross: vec![("c".into(), "o".into())],
        };
        let t = Target { features: 0, hash_bits: 20, classes: 0, binary: false };
        let mut p = CsvParser::new(b"d,c,o", &spec, t, &[]).unwrap();
        let mut b = Batch::new(0);
        p.parse(b"20,UA,EWR", &mut b, true).unwrap();
        let h = |s: &str| murmur3_32(s.as_bytes(), 0) & ((1 << 20) - 1);
        assert_eq!(b.idx, vec![h("c=UA"), h("o=EWR"), h("c=UA^o=EWR")]);
        assert_eq!(b.labels, vec![1.0]);
        assert_eq!(p.parse(b"NA,UA,EWR", &mut b, true), Err(RowError::NoLabel));
        assert!(matches!(p.parse(b"1,UA", &mut b, true), Err(RowError::Bad(m)) if m.contains("expected 3 fields")));
        assert!(matches!(p.parse(b"x,UA,EWR", &mut b, true), Err(RowError::Bad(m)) if m.contains("not a number")));
    }

    #[test]
    fn csv_guesses_numeric_columns_and_checks_the_model_shape() {
        let spec = ColumnSpec { label: Some("y".parse().unwrap()), ..Default::default() };
        let t = Target { features: 1, hash_bits: 0, classes: 0, binary: false };
        let mut p = CsvParser::new(b"x,y", &spec, t, &[b"1,2".to_vec()]).unwrap();
        let mut b = Batch::new(1);
        p.parse(b"3,6", &mut b, true).unwrap();
        assert_eq!((b.dense.clone(), b.labels.clone()), (vec![3.0], vec![6.0]));
        let e = CsvParser::new(b"x,z,y", &spec, t, &[b"1,2,3".to_vec()]).unwrap_err();
        assert!(e.contains("1 dense features") && e.contains("2 numeric columns"), "{e}");
        let e = CsvParser::new(b"x,y,x", &spec, t, &[b"1,2,3".to_vec()]).unwrap_err();
        assert!(e.contains("\"x\" appears twice in the header (columns 1 and 3)"), "{e}");
    }

    #[test]
    fn libsvm_rows_fill_dense_inputs() {
        let t = Target { features: 4, hash_bits: 0, classes: 10, binary: false };
        let mut b = Batch::new(4);
        parse_libsvm(b"3 1:0.5 4:2", t, &mut b, true).unwrap();
        assert_eq!((b.dense.clone(), b.labels.clone()), (vec![0.5, 0.0, 0.0, 2.0], vec![3.0]));
        assert!(matches!(parse_libsvm(b"3 0:1", t, &mut b, true), Err(RowError::Bad(_))));
        assert!(matches!(parse_libsvm(b"3 x", t, &mut b, true), Err(RowError::Bad(_))));
        assert!(matches!(parse_libsvm(b"12 1:1", t, &mut b, true), Err(RowError::Bad(m)) if m.contains("class")));
    }

    #[test]
    fn labels_must_be_finite_and_binary_models_take_0_1_or_minus_1_plus_1() {
        let bin = Target { features: 0, hash_bits: 8, classes: 0, binary: true };
        let mut b = Batch::new(0);
        for (line, want) in [(&b"+1 3:1"[..], 1.0), (b"-1 3:1", 0.0), (b"0 3:1", 0.0), (b"1 3:1", 1.0)] {
            b.clear();
            parse_libsvm(line, bin, &mut b, true).unwrap();
            assert_eq!(b.labels, vec![want], "{}", String::from_utf8_lossy(line));
        }
        assert!(matches!(parse_libsvm(b"2 3:1", bin, &mut b, true), Err(RowError::Bad(m)) if m.contains("0 or 1")));
        let reg = Target { binary: false, ..bin };
        for line in [&b"inf 3:1"[..], b"1e999 3:1", b"-Infinity 3:1"] {
            let r = parse_libsvm(line, reg, &mut b, true);
            assert!(matches!(&r, Err(RowError::Bad(m)) if m.contains("not a finite number")), "{r:?}");
        }
        let spec =
            ColumnSpec { label: Some("y".parse().unwrap()), categorical: vec!["c".into()], ..Default::default() };
        let mut p = CsvParser::new(b"y,c", &spec, reg, &[]).unwrap();
        assert!(matches!(p.parse(b"inf,a", &mut b, true), Err(RowError::Bad(m)) if m.contains("not a finite number")));
    }
}
