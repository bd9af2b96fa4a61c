//! Reading a shard line by line: a file (plain or `.gz`) or a directory of part files in
//! name order, with the file and line of every row for messages, and the byte offset
//! consumed (of the uncompressed stream, across parts) for resuming. With `follow`, the
//! reader waits for rows appended to the last file and for new part files.
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The longest line read: a file without newlines (or binary data) is refused, not loaded.
pub const MAX_LINE_BYTES: usize = 64 << 20;

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
    /// Following a growing shard: a last line without its newline is being written, and
    /// is held back (in `partial`) until the rest arrives.
    pub follow: bool,
    partial: Vec<u8>,
    /// Bytes read from the current part file (plain files: to notice one that shrinks).
    in_part: u64,
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
    let r: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
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
            follow: false,
            partial: Vec::new(),
            in_part: 0,
        })
    }

    /// The first file the shard is read from (a pipe's path, for a pipe).
    pub fn first_part(&self) -> Option<&Path> {
        self.parts.first().map(PathBuf::as_path)
    }

    /// Reads the next line into `buf` (without the line end). `Ok(false)` at the end of
    /// the data available now.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        loop {
            if self.current.is_none() {
                let Some(p) = self.parts.get(self.next_part).cloned() else { return Ok(false) };
                self.pos = Position { file: p, line: 0 };
                self.current = Some(open(&self.pos.file)?);
                self.next_part += 1;
                self.in_part = 0;
            }
            let Some(r) = self.current.as_mut() else { continue };
            buf.clear();
            buf.append(&mut self.partial);
            let room = (MAX_LINE_BYTES + 1).saturating_sub(buf.len()) as u64;
            let n = r.by_ref().take(room).read_until(b'\n', buf)?;
            self.in_part += n as u64;
            if buf.len() > MAX_LINE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "line {} is longer than {} MiB (is this a text file?)",
                        self.pos.line + 1,
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
            let last_part = self.next_part >= self.parts.len();
            if n == 0 && buf.is_empty() {
                if !last_part {
                    self.current = None;
                    continue;
                }
                self.check_not_shrunk()?;
                return Ok(false);
            }
            if self.follow && last_part && buf.last() != Some(&b'\n') {
                // a row being appended: wait for its newline
                std::mem::swap(&mut self.partial, buf);
                if n == 0 {
                    self.check_not_shrunk()?;
                }
                return Ok(false);
            }
            self.offset += buf.len() as u64;
            self.pos.line += 1;
            self.is_header = self.pos.line == 1;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            if self.is_header && buf.starts_with(b"\xef\xbb\xbf") {
                buf.drain(..3); // a UTF-8 byte order mark is not part of the first column's name
            }
            return Ok(true);
        }
    }

    /// Following a plain file that is now shorter than what was read from it (truncated,
    /// or replaced by a new file) would wait forever for rows that never come: an error.
    fn check_not_shrunk(&self) -> std::io::Result<()> {
        let plain = !self.pos.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        if self.follow && plain {
            let m = std::fs::metadata(&self.pos.file)?;
            if m.is_file() && m.len() < self.in_part {
                let len = m.len();
                return Err(std::io::Error::other(format!(
                    "the file shrank to {len} bytes after {} were read from it (truncated or replaced while followed; \
                     a growing shard must only be appended to, or get new part files)",
                    self.in_part
                )));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn following_holds_back_a_row_until_its_newline_and_drops_a_bom() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        std::fs::write(&path, b"\xef\xbb\xbfy,x\n1,a\n0,b").unwrap();
        let mut r = ShardReader::open(&path).unwrap();
        r.follow = true;
        let mut buf = Vec::new();
        assert!(r.next_line(&mut buf).unwrap());
        assert_eq!((buf.as_slice(), r.is_header), (&b"y,x"[..], true));
        assert!(r.next_line(&mut buf).unwrap());
        assert_eq!(buf, b"1,a");
        assert!(!r.next_line(&mut buf).unwrap(), "a row without its newline is still being written");
        assert_eq!(r.offset, 11);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"b\n").unwrap();
        assert!(r.next_line(&mut buf).unwrap());
        assert_eq!((buf.as_slice(), r.pos.line, r.offset), (&b"0,bb"[..], 3, 16));
        // not following, a last line without a newline is a row
        let mut r = ShardReader::open(&path).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"1,c").unwrap();
        let mut lines = Vec::new();
        while r.next_line(&mut buf).unwrap() {
            lines.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(lines, ["y,x", "1,a", "0,bb", "1,c"]);
    }

    #[test]
    fn a_followed_file_that_shrinks_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        std::fs::write(&path, b"y,x\n1,a\n0,b\n").unwrap();
        let mut r = ShardReader::open(&path).unwrap();
        r.follow = true;
        let mut buf = Vec::new();
        while r.next_line(&mut buf).unwrap() {}
        std::fs::write(&path, b"y,x\n").unwrap();
        let e = r.next_line(&mut buf).unwrap_err().to_string();
        assert!(e.contains("shrank to 4 bytes after 12"), "{e}");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        let mut data = b"y,x\n".to_vec();
        data.resize(4 + MAX_LINE_BYTES + 10, b'a');
        std::fs::write(&path, data).unwrap();
        let mut r = ShardReader::open(&path).unwrap();
        let mut buf = Vec::new();
        assert!(r.next_line(&mut buf).unwrap());
        let e = r.next_line(&mut buf).unwrap_err().to_string();
        assert!(e.contains("line 2 is longer than 64 MiB"), "{e}");
    }
}
