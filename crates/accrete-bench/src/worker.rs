//! `accrete bench worker`: the worker's own cost per row (parse, hash, compact, gradient),
//! one thread, no network.
use anyhow::Result;
use std::time::Instant;

/// Rows per second of parse + hash + compact + logistic gradient, one thread, no network:
/// the worker's own cost per row.
pub(crate) fn worker_bench(input: Option<std::path::PathBuf>, batch_rows: usize) -> Result<()> {
    use accrete_core::features::Batch;
    use accrete_core::kinds::{self, Dims, Tensors};
    use accrete_ingest::ColumnSpec;
    let input = input.unwrap_or_else(crate::flights);
    let columns = ColumnSpec {
        label: Some("arr_delay>15".parse().map_err(anyhow::Error::msg)?),
        numeric: vec![],
        categorical: "carrier,origin,dest,month,day,hour,tailnum,flight".split(',').map(String::from).collect(),
        cross: vec![("carrier".into(), "hour".into()), ("origin".into(), "dest".into())],
    };
    let target = accrete_ingest::Target { features: 0, hash_bits: 20, classes: 0, binary: true };
    let dims = Dims { kind: accrete_core::ModelKind::Logistic, features: 0, outputs: 1, hidden: 0, factors: 0 };
    // Read the file once into memory (decompressed) so the figure is parsing, not gunzip.
    let mut text = Vec::new();
    {
        let mut r = accrete_ingest::source::ShardReader::open(&input)?;
        let mut line = Vec::new();
        while r.next_line(&mut line)? {
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
    }
    let tmp = tempfile::tempdir()?;
    let plain = tmp.path().join("data.csv");
    std::fs::write(&plain, &text)?;
    let mut best = f64::MAX;
    let mut rows_total = 0;
    for _ in 0..3 {
        let mut src =
            accrete_ingest::RowSource::open(&plain, None, &columns, target, accrete_ingest::OnBadRow::Skip, true)?;
        let mut batch = Batch::new(0);
        let (mut grads, mut params) = (Tensors::default(), Tensors::default());
        params.b = vec![0.0];
        let t = Instant::now();
        let mut rows = 0;
        loop {
            batch.clear();
            let n = src.fill(&mut batch, batch_rows)?;
            if n == 0 {
                break;
            }
            batch.compact();
            params.h.clear();
            params.h.resize(batch.uniq.len(), 0.0);
            kinds::train(&dims, &params.views(), &batch, &batch.local, batch.uniq.len(), &mut grads);
            rows += n;
        }
        best = best.min(t.elapsed().as_secs_f64());
        rows_total = rows;
    }
    println!(
        "worker parse + hash + gradient (logistic, 2^20 hashed rows, 10 features per row, batches of {batch_rows}), one thread: {:.2} M rows/s over {rows_total} rows (goal >= 1 M rows/s; Vowpal Wabbit ~0.38 M rows/s)",
        rows_total as f64 / best / 1e6
    );
    Ok(())
}
