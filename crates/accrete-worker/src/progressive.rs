//! A worker's progressive validation, scored before training: the lines of its
//! `--progressive-out` file and the tally each push carries.
use accrete_core::view::ModelView;

/// The progressive tally of a batch's rows, scored before training: the rows predicted
/// right, and a binary model's histogram of probabilities by label ([`accrete_core::progressive`]).
pub(crate) fn tally(view: &ModelView, labels: &[f32], predictions: &[f32]) -> (u64, Vec<u32>) {
    let (binary, _) = accrete_core::progressive::binary_and_classes(&view.dims);
    let mut t = accrete_core::progressive::Tally::default();
    t.add_rows(labels, predictions, view.dims.outputs, binary);
    (t.hits, t.hist.iter().map(|c| *c as u32).collect())
}

/// One line per row: the label, a tab, and the prediction made before training on it
/// (a value or a probability; with several classes, each class's probability,
/// comma-separated).
/// (Floats by `ryu`, the shortest text that reads back the same value, as `{}` writes,
/// in a fifth of the time: formatting was 6% of a worker's time on time-sorted flights.)
pub(crate) fn write_lines(out: &mut impl std::io::Write, labels: &[f32], p: &[f32], k: usize) -> std::io::Result<()> {
    let mut buf = ryu::Buffer::new();
    for (y, row) in labels.iter().zip(p.chunks_exact(k.max(1))) {
        if y.fract() == 0.0 && y.abs() < 1e9 {
            write!(out, "{}", *y as i64)?;
        } else {
            out.write_all(float(&mut buf, *y))?;
        }
        for (i, v) in row.iter().enumerate() {
            out.write_all(if i == 0 { b"\t" } else { b"," })?;
            out.write_all(float(&mut buf, *v))?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `v` as `ryu` writes it (`NaN`, `inf` and `-inf` when not finite).
fn float(buf: &mut ryu::Buffer, v: f32) -> &[u8] {
    buf.format(v).as_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn progressive_lines_carry_every_class_probability() {
        let mut out = Vec::new();
        super::write_lines(&mut out, &[2.0, 0.0], &[0.1, 0.2, 0.7, 0.5, 0.25, 0.25], 3).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "2\t0.1,0.2,0.7\n0\t0.5,0.25,0.25\n");
        let mut out = Vec::new();
        super::write_lines(&mut out, &[1.0], &[0.75], 1).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "1\t0.75\n");
        // a fractional label, a tiny and a non-finite prediction read back as written
        let mut out = Vec::new();
        super::write_lines(&mut out, &[2.5, -1.0], &[1e-7, f32::NAN], 1).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "2.5\t1e-7\n-1\tNaN\n");
        let first: Vec<f32> = text.lines().next().unwrap().split('\t').map(|v| v.parse().unwrap()).collect();
        assert_eq!(first, [2.5, 1e-7]);
    }
}
