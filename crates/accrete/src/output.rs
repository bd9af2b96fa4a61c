//! Rendering of client results: readable tables by default, JSON with `--json`.
use accrete_core::{ConsistencyMode, ModelInfo, ModelSpec, VersionRecord};
use serde_json::{json, Value};

pub fn version_json(model: &str, v: &VersionRecord) -> Value {
    json!({
        "model": model,
        "version": v.version,
        "kind": v.kind.as_str(),
        "parent": v.parent,
        "created_unix_ms": v.created_unix_ms,
        "updates": v.updates,
        "updates_since_parent": v.updates_since_parent,
        "reason": v.reason,
        "lineage_epoch": v.lineage_epoch,
        "content_of": if v.content_of == 0 { Value::Null } else { json!(v.content_of) },
        "tags": v.tags,
        "metrics": v.metrics.iter().map(|(k, x)| (k.clone(), json!(x))).collect::<serde_json::Map<_, _>>(),
        "chunks_written": v.chunks_written,
        "bytes_written": v.bytes_written,
        "progressive": v.progressive,
        "workers": v.workers.iter().map(|w| json!({
            "worker_id": w.worker_id, "incarnation": w.incarnation, "seq": w.seq, "shard": w.shard,
            "pass": w.pass, "offset": w.offset, "clock": w.clock, "rows": w.rows, "pushes": w.pushes,
            "loss_sum": w.loss_sum,
        })).collect::<Vec<_>>(),
    })
}

pub fn model_json(m: &ModelInfo) -> Value {
    let s = &m.spec;
    let (o, c) = (&s.optimizer, &s.commit);
    json!({
        "name": s.name,
        "kind": s.kind.as_str(),
        "features": s.features, "hash_bits": s.hash_bits, "classes": s.classes, "hidden": s.hidden, "factors": s.factors,
        "optimizer": {"kind": o.kind.as_str(), "lr": o.lr, "momentum": o.momentum, "beta1": o.beta1,
                      "beta2": o.beta2, "eps": o.eps, "l1": o.l1, "l2": o.l2},
        "init": {"seed": s.init.seed, "scale": s.init.scale},
        "ema_decay": s.ema_decay,
        "commit": {"every_updates": c.every_updates, "every_secs": c.every_secs, "keep_last": c.keep_last},
        "consistency": consistency_name(s),
        "partitions": m.partitions.iter().map(|p| json!({"index": p.index, "primary": p.primary, "rows": p.rows, "bytes": p.bytes})).collect::<Vec<_>>(),
        "tensors": m.tensors.iter().map(|t| json!({"name": t.name, "rows": t.rows, "cols": t.cols, "sparse": t.sparse, "slots": t.slots})).collect::<Vec<_>>(),
        "parameters": m.parameters,
        "head_version": m.head_version,
        "lineage_epoch": m.lineage_epoch,
        "updates": m.updates,
        "uncommitted_updates": m.uncommitted_updates,
        "versions": m.versions,
        "created_unix_ms": m.created_unix_ms,
        "signature": m.signature.as_ref().map(|s| json!({"format": s.format, "label": s.label, "numeric": s.numeric,
                     "categorical": s.categorical, "cross": s.cross})),
    })
}

pub fn consistency_name(s: &ModelSpec) -> String {
    match s.consistency {
        ConsistencyMode::Asp => "asp".into(),
        ConsistencyMode::Bsp => "bsp".into(),
        ConsistencyMode::Ssp => format!("ssp:{}", s.staleness),
    }
}

/// The widest a table cell is shown (`--json` shows everything): a long reason or a long
/// list of tags is cut with an ellipsis instead of stretching every row.
const MAX_CELL_CHARS: usize = 120;

/// A cell as a table shows it: at most [`MAX_CELL_CHARS`] characters.
/// `s` with control characters (but newlines and tabs) escaped as `\u{..}`, so text that
/// came from a file or the network (a header, a reason, a server's message) cannot move
/// the cursor, recolour or clear the terminal it is printed on.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(bad) {
        return s.into();
    }
    s.chars().map(|c| if bad(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect::<String>().into()
}

fn cell(c: &str) -> String {
    shorten(&printable(c).replace(['\n', '\t'], " "), MAX_CELL_CHARS)
}

/// `s` cut to at most `max` characters, the last an ellipsis when it was cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An optimizer as a line of text: its kind and the hyper-parameters it uses, in the
/// shortest decimal that reads back as the stored f32 (`adagrad lr 0.1 eps 1e-6`).
pub fn optimizer_line(o: &accrete_core::OptimizerSpec) -> String {
    use accrete_core::OptimizerKind as K;
    if o.kind == K::Rls {
        return "rls (no rate: the least-squares fit of every row)".to_string();
    }
    let mut s = format!("{} lr {}", o.kind.as_str(), o.lr);
    let mut add = |name: &str, v: f32, used: bool| {
        if used {
            s.push_str(&format!(" {name} {v}"));
        }
    };
    add("momentum", o.momentum, o.kind == K::Momentum);
    add("beta1", o.beta1, o.kind == K::Adam);
    add("beta2", o.beta2, matches!(o.kind, K::Adam | K::Ftrl));
    add("eps", o.eps, matches!(o.kind, K::Adam | K::Adagrad));
    add("l1", o.l1, o.l1 != 0.0);
    add("l2", o.l2, o.l2 != 0.0);
    s
}

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
}

pub fn time(ms: i64) -> String {
    let secs = ms / 1000;
    let (d, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = accrete_core::chart::civil(d);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// A version's metrics, without the baselines (`--json` has them).
pub fn metrics_cell(m: &std::collections::BTreeMap<String, f64>) -> String {
    m.iter()
        .filter(|(k, _)| !k.starts_with(accrete_core::chart::BASELINE_PREFIX))
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `model versions`: a table, or a JSON array.
pub fn print_versions(model: &str, vs: &[VersionRecord], json: bool) {
    if json {
        println!("{}", serde_json::Value::Array(vs.iter().map(|v| version_json(model, v)).collect()));
        return;
    }
    let rows: Vec<Vec<String>> = vs
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                v.parent.map_or("-".into(), |p| p.to_string()),
                time(v.created_unix_ms),
                v.kind.as_str().into(),
                v.updates.to_string(),
                v.lineage_epoch.to_string(),
                // a gate's reason runs long: the table keeps its start (--json has it all)
                shorten(&v.reason, 40),
                v.tags.join(","),
                metrics_cell(&v.metrics),
                v.progressive.map_or("-".into(), |f| f.summary()),
            ]
        })
        .collect();
    let head =
        ["VERSION", "PARENT", "CREATED (UTC)", "KIND", "UPDATES", "EPOCH", "REASON", "TAGS", "METRICS", "PROGRESSIVE"];
    table(&head, &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optimizer_reads_as_typed() {
        let o = accrete_core::OptimizerSpec::new(accrete_core::OptimizerKind::Adagrad, 0.1);
        assert_eq!(optimizer_line(&o), "adagrad lr 0.1 eps 0.000001");
        let o = accrete_core::OptimizerSpec {
            l2: 0.001,
            ..accrete_core::OptimizerSpec::new(accrete_core::OptimizerKind::Sgd, 0.01)
        };
        assert_eq!(optimizer_line(&o), "sgd lr 0.01 l2 0.001");
    }

    #[test]
    fn long_cells_are_cut_and_short_ones_kept() {
        assert_eq!(cell("policy"), "policy");
        let long = cell(&"x".repeat(70_000));
        assert_eq!(long.chars().count(), MAX_CELL_CHARS);
        assert!(long.ends_with('…'));
        // a width past u16::MAX once made the formatter panic
        table(&["REASON"], &[vec!["y".repeat(70_000)]]);
    }
}
