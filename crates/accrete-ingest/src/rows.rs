//! Rows of a shard as batches: the format of a file, what to do with a bad row, and
//! [`RowSource`], which reads lines and parses them with the right parser (a CSV part file
//! gets the parser of its own header), counting the rows it skips.
use crate::parse::{self, header_names, ColumnSpec, CsvParser, RowError, Target};
use crate::source::{Position, ShardReader};
use crate::IngestError;
use accrete_core::features::Batch;
use accrete_core::InputSignature;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Libsvm,
}

impl Format {
    /// From the extension (`.libsvm`, `.svm`, `.svmlight`, also under `.gz`), else CSV.
    pub fn guess(path: &std::path::Path) -> Format {
        let name = path.to_string_lossy().to_lowercase();
        let name = name.trim_end_matches(".gz");
        if name.ends_with(".libsvm") || name.ends_with(".svm") || name.ends_with(".svmlight") {
            Format::Libsvm
        } else {
            Format::Csv
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRow {
    Skip,
    Fail,
}

/// Turns shard lines into batches with the right parser, counting skipped rows.
pub struct RowSource {
    reader: ShardReader,
    format: Format,
    csv: Option<CsvParser>,
    spec: ColumnSpec,
    target: Target,
    line: Vec<u8>,
    on_bad: OnBadRow,
    require_label: bool,
    pub bad_rows: u64,
    pub unlabelled: u64,
}

impl RowSource {
    pub fn open(
        path: &std::path::Path,
        format: Option<Format>,
        spec: &ColumnSpec,
        target: Target,
        on_bad: OnBadRow,
        require_label: bool,
    ) -> Result<RowSource, IngestError> {
        let reader = ShardReader::open(path).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
        let format = format.unwrap_or_else(|| Format::guess(path));
        if format == Format::Csv && spec.label.is_none() && require_label {
            return Err(IngestError::Config("CSV data needs --label COLUMN (or COLUMN>THRESHOLD)".into()));
        }
        Ok(RowSource {
            reader,
            format,
            csv: None,
            spec: spec.clone(),
            target,
            line: Vec::new(),
            on_bad,
            require_label,
            bad_rows: 0,
            unlabelled: 0,
        })
    }

    pub fn offset(&self) -> u64 {
        self.reader.offset
    }

    /// Following a growing shard: a last row still being written is not read until its
    /// newline arrives.
    pub fn set_follow(&mut self, follow: bool) {
        self.reader.follow = follow;
    }

    pub fn skip_to(&mut self, offset: u64) -> Result<(), IngestError> {
        let mut buf = Vec::new();
        self.reader
            .skip_to(offset, &mut buf)
            .map_err(|source| IngestError::Io { path: self.reader.pos.file.clone(), source })?;
        // the header of the part we landed in has been read past: build the parser from it
        if self.format == Format::Csv && self.csv.is_none() {
            let mut probe = ShardReader::open(&self.reader.pos.file)
                .map_err(|source| IngestError::Io { path: self.reader.pos.file.clone(), source })?;
            let mut header = Vec::new();
            probe
                .next_line(&mut header)
                .map_err(|source| IngestError::Io { path: self.reader.pos.file.clone(), source })?;
            let pos = Position { file: self.reader.pos.file.clone(), line: 1 };
            self.csv_header(&header, &pos)?;
        }
        Ok(())
    }

    /// The columns this source reads, resolved against its data (for a CSV file, its
    /// header and sample rows; a pipe is not read ahead: its named columns are taken as
    /// they are). Call before reading rows.
    pub fn signature(&mut self) -> Result<InputSignature, IngestError> {
        if self.format == Format::Libsvm {
            return Ok(InputSignature { format: "libsvm".into(), ..Default::default() });
        }
        if self.csv.is_none() {
            let Some(first) = self.reader.first_part().map(Path::to_path_buf) else {
                return Ok(self.spec.signature_as_named());
            };
            if !std::fs::metadata(&first).is_ok_and(|m| m.is_file()) {
                return Ok(self.spec.signature_as_named());
            }
            let mut probe =
                ShardReader::open(&first).map_err(|source| IngestError::Io { path: first.clone(), source })?;
            let mut header = Vec::new();
            if !probe.next_line(&mut header).map_err(|source| IngestError::Io { path: first.clone(), source })? {
                return Ok(self.spec.signature_as_named());
            }
            self.csv_header(&header, &Position { file: first, line: 1 })?;
        }
        Ok(self.csv.as_ref().map_or_else(|| self.spec.signature_as_named(), |p| p.signature()))
    }

    pub fn poll_new_parts(&mut self) -> Result<(), IngestError> {
        self.reader.poll_new_parts().map_err(|source| IngestError::Io { path: self.reader.pos.file.clone(), source })
    }

    /// Appends up to `n` rows to `batch`; returns how many (0 = no data now).
    pub fn fill(&mut self, batch: &mut Batch, n: usize) -> Result<usize, IngestError> {
        let start = batch.rows();
        while batch.rows() - start < n {
            let more = self
                .reader
                .next_line(&mut self.line)
                .map_err(|source| IngestError::Io { path: self.reader.pos.file.clone(), source })?;
            if !more {
                break;
            }
            if self.line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let result = match self.format {
                Format::Csv if self.reader.is_header => {
                    // each part file has its header: a part whose columns differ gets its own parser
                    if self.csv.as_ref().is_none_or(|p| !split_eq(&self.line, &p.header)) {
                        let (header, pos) = (std::mem::take(&mut self.line), self.reader.pos.clone());
                        let built = self.csv_header(&header, &pos);
                        self.line = header;
                        built?;
                    }
                    continue;
                }
                Format::Csv => match self.csv.as_mut() {
                    Some(p) => p.parse(&self.line, batch, self.require_label),
                    None => Err(RowError::Bad("no header".into())),
                },
                Format::Libsvm => parse::parse_libsvm(&self.line, self.target, batch, self.require_label),
            };
            match result {
                Ok(()) => {}
                Err(RowError::NoLabel) => {
                    batch.abandon_row();
                    self.unlabelled += 1;
                }
                Err(RowError::Bad(m)) => {
                    batch.abandon_row();
                    let msg = format!("{}: {m}", self.reader.pos);
                    if self.on_bad == OnBadRow::Fail {
                        return Err(IngestError::BadRow(msg));
                    }
                    self.bad_rows += 1;
                    if self.bad_rows <= 10 {
                        tracing::warn!("skipped bad row: {msg}");
                    }
                }
            }
        }
        Ok(batch.rows() - start)
    }

    /// Builds the CSV parser from a header line read at `pos`, sampling rows to guess kinds.
    fn csv_header(&mut self, header: &[u8], pos: &Position) -> Result<(), IngestError> {
        let mut sample = Vec::new();
        if self.spec.numeric.is_empty() && self.spec.categorical.is_empty() {
            let name = |why: &str| {
                IngestError::Config(format!(
                    "{}: cannot tell numeric from categorical columns ({why}); name them with --numeric / --categorical",
                    pos
                ))
            };
            if !std::fs::metadata(&pos.file).is_ok_and(|m| m.is_file()) {
                return Err(name("a pipe cannot be sampled"));
            }
            let mut probe =
                ShardReader::open(&pos.file).map_err(|source| IngestError::Io { path: pos.file.clone(), source })?;
            let mut buf = Vec::new();
            let _ = probe.next_line(&mut buf);
            while sample.len() < 1000 && probe.next_line(&mut buf).unwrap_or(false) {
                sample.push(buf.clone());
            }
            if sample.is_empty() {
                return Err(name("the file has no rows yet"));
            }
        }
        // Data to score may come without the label the model was trained with.
        let mut spec = self.spec.clone();
        if !self.require_label && spec.label.as_ref().is_some_and(|l| !header_names(header).contains(&l.column)) {
            spec.label = None;
        }
        let p = CsvParser::new(header, &spec, self.target, &sample)
            .map_err(|m| IngestError::Config(format!("{}: {m}", pos)))?;
        self.csv = Some(p);
        Ok(())
    }
}

/// True when a header line names the same columns as `names`.
fn split_eq(line: &[u8], names: &[String]) -> bool {
    let s = String::from_utf8_lossy(line);
    s.split(',').map(|c| c.trim().trim_matches('"')).eq(names.iter().map(|n| n.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_file_is_read_with_its_own_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("part-0.csv"), "y,c\n1,a\n").unwrap();
        std::fs::write(dir.path().join("part-1.csv"), "c,y\nb,0\n").unwrap();
        let spec =
            ColumnSpec { label: Some("y".parse().unwrap()), categorical: vec!["c".into()], ..Default::default() };
        let target = Target { features: 0, hash_bits: 8, classes: 0, binary: true };
        let mut rows = RowSource::open(dir.path(), None, &spec, target, OnBadRow::Fail, true).unwrap();
        let mut b = Batch::new(0);
        assert_eq!(rows.fill(&mut b, 10).unwrap(), 2);
        assert_eq!(b.labels, vec![1.0, 0.0]);
        let h = |s: &str| accrete_core::features::murmur3_32(s.as_bytes(), 0) & 255;
        assert_eq!(b.idx, vec![h("c=a"), h("c=b")]);
    }

    #[test]
    fn column_kinds_are_not_guessed_from_a_file_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        std::fs::write(&path, "y,c\n").unwrap();
        let spec = ColumnSpec { label: Some("y".parse().unwrap()), ..Default::default() };
        let target = Target { features: 0, hash_bits: 8, classes: 0, binary: true };
        let mut rows = RowSource::open(&path, None, &spec, target, OnBadRow::Fail, true).unwrap();
        let e = rows.fill(&mut Batch::new(0), 10).unwrap_err().to_string();
        assert!(e.contains("s.csv:1") && e.contains("no rows yet") && e.contains("--categorical"), "{e}");
    }
}
