//! Export and import of whole models as safetensors files (readable by `safetensors` for
//! numpy/PyTorch, and by any reader of its simple layout: an 8-byte little-endian header
//! size, a JSON header naming each tensor's dtype, shape and byte range, then the data).
//!
//! Each weight tensor is stored under its layout name (`w`, `h`, `b`, `w1`, …) with shape
//! `[rows, cols]`, dtype F32; with optimizer state, slots follow as `{tensor}.{slot}`
//! (`h.accum`, `w.m`, …). `__metadata__` records the model, kind, version and epoch.
use crate::{Client, ClientError, Result};
use accrete_core::VersionRecord;
use accrete_proto::v1 as pb;
use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio_stream::StreamExt;

/// Floats per import chunk message (4 MiB).
pub(crate) const IMPORT_CHUNK_FLOATS: usize = 1 << 20;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io { path: path.to_path_buf(), source }
}

fn format_err(path: &Path, message: impl Into<String>) -> ClientError {
    ClientError::Format { path: path.to_path_buf(), message: message.into() }
}

/// One entry of the file, in data order.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub tensor: String,
    pub slot: String,
    pub rows: u64,
    pub cols: u64,
    pub begin: u64,
    pub end: u64,
}

impl Entry {
    pub fn name(&self) -> String {
        if self.slot.is_empty() {
            self.tensor.clone()
        } else {
            format!("{}.{}", self.tensor, self.slot)
        }
    }
}

fn header_bytes(entries: &[Entry], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut h = serde_json::Map::new();
    h.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    for e in entries {
        let v = serde_json::json!({"dtype": "F32", "shape": [e.rows, e.cols], "data_offsets": [e.begin, e.end]});
        h.insert(e.name(), v);
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(h)).unwrap_or_default();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    json
}

/// Streams a version (head when `version` is None) into `out`; returns the version written.
/// An export cut by a server's restart is started again (a partial file is never renamed
/// into place).
pub async fn export(
    client: &mut Client,
    model: &str,
    version: Option<u64>,
    with_slots: bool,
    out: &Path,
) -> Result<VersionRecord> {
    let c = &*client;
    c.retry
        .run(|| {
            let mut c = c.clone();
            async move { export_once(&mut c, model, version, with_slots, out).await }
        })
        .await
}

async fn export_once(
    client: &mut Client,
    model: &str,
    version: Option<u64>,
    with_slots: bool,
    out: &Path,
) -> Result<VersionRecord> {
    let req = pb::ExportRequest { model: model.to_string(), version, optimizer_state: with_slots };
    let mut stream = client.at_home(model).models.export(req).await?.into_inner();
    let header = match stream.next().await.transpose()?.and_then(|m| m.item) {
        Some(pb::export_message::Item::Header(h)) => h,
        _ => return Err(ClientError::Protocol("export did not start with a header".into())),
    };
    let (info, ver) = (header.model.unwrap_or_default(), header.version.unwrap_or_default());
    let mut entries = Vec::new();
    let mut pos = 0u64;
    for t in &info.tensors {
        let slots = if with_slots { t.slots.clone() } else { vec![] };
        for slot in std::iter::once(String::new()).chain(slots) {
            let bytes = t.rows * t.cols as u64 * 4;
            entries.push(Entry {
                tensor: t.name.clone(),
                slot,
                rows: t.rows,
                cols: t.cols as u64,
                begin: pos,
                end: pos + bytes,
            });
            pos += bytes;
        }
    }
    let spec = info.spec.unwrap_or_default();
    let metadata = BTreeMap::from([
        ("accrete.model".to_string(), model.to_string()),
        (
            "accrete.kind".to_string(),
            pb::ModelKind::try_from(spec.kind).map(|k| k.as_str_name().to_string()).unwrap_or_default(),
        ),
        ("accrete.version".to_string(), ver.version.to_string()),
        ("accrete.lineage_epoch".to_string(), ver.lineage_epoch.to_string()),
    ]);
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let header = header_bytes(&entries, &metadata);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err(&tmp))?;
    w.write_all(&header).map_err(io_err(&tmp))?;
    let (mut idx, mut within) = (0usize, 0u64);
    while let Some(msg) = stream.next().await.transpose()? {
        let Some(pb::export_message::Item::Chunk(c)) = msg.item else {
            return Err(ClientError::Protocol("unexpected header inside an export".into()));
        };
        while idx < entries.len() && within == entries[idx].end - entries[idx].begin {
            (idx, within) = (idx + 1, 0);
        }
        let e =
            entries.get(idx).ok_or_else(|| ClientError::Protocol("export sent more data than its layout".into()))?;
        if c.tensor != e.tensor || c.slot != e.slot || c.offset * 4 != within {
            return Err(ClientError::Protocol(format!(
                "export chunk {}.{} at {} is out of order",
                c.tensor, c.slot, c.offset
            )));
        }
        w.write_all(&c.values).map_err(io_err(&tmp))?;
        within += c.values.len() as u64;
    }
    let complete = entries.last().is_none_or(|last| idx == entries.len() - 1 && within == last.end - last.begin);
    if !complete {
        return Err(ClientError::Protocol("export stream ended early".into()));
    }
    w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(ver.into())
}

/// Reads and checks a safetensors header: every entry F32, byte ranges inside the file,
/// contiguous and in order. Returns the entries and where the data starts.
pub fn read_header(path: &Path) -> Result<(Vec<Entry>, u64, BTreeMap<String, String>)> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| format_err(path, "not a safetensors file (shorter than 8 bytes)"))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || 8 + n > file_len {
        return Err(format_err(
            path,
            format!("not a safetensors file (header size {n} for a file of {file_len} bytes)"),
        ));
    }
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json).map_err(io_err(path))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| format_err(path, format!("header is not a JSON object: {e}")))?;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, v) in &header {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                metadata = m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect();
            }
            continue;
        }
        entries.push(parse_entry(path, name, v)?);
    }
    entries.sort_by_key(|e| e.begin);
    let data_len = file_len - 8 - n;
    let mut pos = 0;
    for e in &entries {
        if e.begin != pos || e.end > data_len {
            return Err(format_err(
                path,
                format!("tensor {:?}: byte range {}..{} is not contiguous within the data", e.name(), e.begin, e.end),
            ));
        }
        pos = e.end;
    }
    Ok((entries, 8 + n, metadata))
}

fn parse_entry(path: &Path, name: &str, v: &serde_json::Value) -> Result<Entry> {
    let bad = |m: &str| format_err(path, format!("tensor {name:?}: {m}"));
    if v.get("dtype").and_then(|d| d.as_str()) != Some("F32") {
        return Err(bad("dtype must be F32"));
    }
    let nums = |key: &str| -> Option<Vec<u64>> { v.get(key)?.as_array()?.iter().map(|x| x.as_u64()).collect() };
    let shape = nums("shape").ok_or_else(|| bad("shape is missing"))?;
    let offs =
        nums("data_offsets").filter(|o| o.len() == 2 && o[0] <= o[1]).ok_or_else(|| bad("data_offsets are invalid"))?;
    let bytes = shape.iter().try_fold(4u64, |a, d| a.checked_mul(*d));
    if bytes != Some(offs[1] - offs[0]) {
        return Err(bad(&format!("shape {shape:?} does not match {} data bytes", offs[1] - offs[0])));
    }
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        [n] => (1, *n),
        [] => (1, 1),
        _ => return Err(bad(&format!("shape {shape:?}: only 0-D, 1-D and 2-D tensors are read"))),
    };
    let (tensor, slot) = name.split_once('.').unwrap_or((name, ""));
    Ok(Entry { tensor: tensor.to_string(), slot: slot.to_string(), rows, cols, begin: offs[0], end: offs[1] })
}

/// Imports a safetensors file into `model` as a new version. Every entry's shape is
/// checked against the model's layout first (a vector may come as a row or a column); the server checks that every weight tensor is complete. If the file cannot be
/// read to its end, the server is made to refuse the upload, so nothing is committed.
/// An upload cut by a server's restart is sent again under the same request id: the
/// server makes one version of it, however many times it arrives.
pub async fn import(client: &mut Client, model: &str, path: &Path) -> Result<VersionRecord> {
    let request_id = crate::request_id();
    let c = &*client;
    c.retry
        .run(|| {
            let (mut c, id) = (c.clone(), request_id.as_str());
            async move { import_once(&mut c, model, path, id).await }
        })
        .await
}

async fn import_once(client: &mut Client, model: &str, path: &Path, request_id: &str) -> Result<VersionRecord> {
    let (entries, data_start, _) = read_header(path)?;
    let mut client = client.at_home(model);
    let info = client.models.get_model_info(pb::ModelRef { name: model.into() }).await?.into_inner();
    for e in &entries {
        let Some(t) = info.tensors.iter().find(|t| t.name == e.tensor) else { continue }; // the server names it
        let (rows, cols) = (t.rows, t.cols as u64);
        // a vector may come as a row or a column
        let vector = |r: u64, c: u64| r == 1 || c == 1;
        let fits = (e.rows, e.cols) == (rows, cols)
            || vector(e.rows, e.cols) && vector(rows, cols) && e.rows * e.cols == rows * cols;
        if !fits {
            return Err(format_err(
                path,
                format!("tensor {:?} is {}x{}, model {model:?} has it {rows}x{cols}", e.name(), e.rows, e.cols),
            ));
        }
    }
    let source = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportMessage>(4);
    let header = pb::ImportMessage {
        item: Some(pb::import_message::Item::Header(pb::ImportHeader {
            model: model.into(),
            source,
            request_id: request_id.into(),
            at_version: 0,
            lineage_epoch: 0,
        })),
    };
    let path_buf: PathBuf = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let path = path_buf.as_path();
        if tx.blocking_send(header).is_err() {
            return Ok(());
        }
        let result = send_entries(path, data_start, &entries, &tx);
        if result.is_err() {
            // The upload must not end as if complete (the server would take what it got):
            // a message that is not a chunk makes the server refuse the whole import.
            let _ = tx.blocking_send(pb::ImportMessage { item: None });
        }
        result
    });
    let result = client.models.import(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    reader.await.map_err(|e| ClientError::Protocol(format!("file reader failed: {e}")))??;
    Ok(result?.into_inner().into())
}

/// Streams the entries' data, in chunks, as import messages.
fn send_entries(
    path: &Path,
    data_start: u64,
    entries: &[Entry],
    tx: &tokio::sync::mpsc::Sender<pb::ImportMessage>,
) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(data_start)).map_err(io_err(path))?;
    for e in entries {
        let mut left = e.end - e.begin;
        let mut offset = 0u64;
        while left > 0 {
            let n = left.min(IMPORT_CHUNK_FLOATS as u64 * 4);
            let mut buf = vec![0u8; n as usize];
            f.read_exact(&mut buf).map_err(io_err(path))?;
            let chunk = pb::TensorChunk {
                tensor: e.tensor.clone(),
                slot: e.slot.clone(),
                offset,
                values: buf.into(),
                ..Default::default()
            };
            if tx.blocking_send(pb::ImportMessage { item: Some(pb::import_message::Item::Chunk(chunk)) }).is_err() {
                return Ok(()); // the call ended; its result says why
            }
            offset += n / 4;
            left -= n;
        }
    }
    Ok(())
}
