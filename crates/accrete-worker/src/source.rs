//! Reading a shard line by line: a file (plain or `.gz`) or a directory of part files in
//! name order, with the file and line of every row for messages, and the byte offset
//! consumed (of the uncompressed stream, across parts) for resuming. With `follow`, the
//! reader waits for rows appended to the last file and for new part files.
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Where a line came from, for messages.
#[derive(Debug, Clone, Default)]
pub struct Position {
    pub file: PathBuf,
    pub line: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

pub struct ShardReader {
    parts: Vec<PathBuf>,
    next_part: usize,
    current: Option<BufReader<Box<dyn Read + Send>>>,
    dir: Option<PathBuf>,
    pub pos: Position,
    /// Bytes consumed across parts (uncompressed).
    pub offset: u64,
    /// The first line of the current part (a CSV header) is handed out with `is_header`.
    pub is_header: bool,
}

/// The part files of a shard: the file itself, or a directory's visible files by name.
pub fn parts_of(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        parts.sort();
        Ok(parts)
    } else {
        // A regular file is opened to report a missing or unreadable one now; a pipe
        // (`/dev/stdin`, a FIFO) is not, since opening it is reading from it.
        if std::fs::metadata(path)?.is_file() {
            File::open(path)?;
        }
        Ok(vec![path.to_path_buf()])
    }
}

fn open(path: &Path) -> std::io::Result<BufReader<Box<dyn Read + Send>>> {
    let f = File::open(path)?;
    let r: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(BufReader::with_capacity(1 << 20, r))
}

impl ShardReader {
    pub fn open(path: &Path) -> std::io::Result<ShardReader> {
        let parts = parts_of(path)?;
        let dir = path.is_dir().then(|| path.to_path_buf());
        Ok(ShardReader {
            parts,
            next_part: 0,
            current: None,
            dir,
            pos: Position::default(),
            offset: 0,
            is_header: false,
        })
    }

    /// Reads the next line into `buf` (without the line end). `Ok(false)` at the end of
    /// the data available now.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        loop {
            if self.current.is_none() {
                let Some(p) = self.parts.get(self.next_part).cloned() else { return Ok(false) };
                self.current = Some(open(&p)?);
                self.pos = Position { file: p, line: 0 };
                self.next_part += 1;
            }
            let Some(r) = self.current.as_mut() else { continue };
            buf.clear();
            let n = r.read_until(b'\n', buf)?;
            if n == 0 {
                if self.next_part < self.parts.len() {
                    self.current = None;
                    continue;
                }
                return Ok(false);
            }
            self.offset += n as u64;
            self.pos.line += 1;
            self.is_header = self.pos.line == 1;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
    }

    /// Follow mode: looks for new part files in a shard directory (the current file's
    /// appended rows are picked up by the next `next_line`).
    pub fn poll_new_parts(&mut self) -> std::io::Result<()> {
        if let Some(dir) = &self.dir {
            for p in parts_of(dir)? {
                if !self.parts.contains(&p) {
                    self.parts.push(p);
                }
            }
        }
        Ok(())
    }

    /// Skips `bytes` of the stream (resuming at a recorded offset).
    pub fn skip_to(&mut self, bytes: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
        while self.offset < bytes {
            if !self.next_line(buf)? {
                break;
            }
        }
        Ok(())
    }
}
