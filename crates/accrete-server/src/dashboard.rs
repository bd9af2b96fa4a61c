//! The dashboard page, rendered on the server so its first state needs no script: the
//! models (workers, push rate, updates not yet committed), one model's quality chart
//! (a metric over versions or time, its lineage, head, best version, rollbacks and
//! baseline; [`accrete_core::chart`]) and its versions. Links choose the model, the
//! metric and the x axis; a small script refreshes the page's body every 2 s.
use crate::model::ModelHandle;
use crate::registry::Registry;
use accrete_core::chart::{metrics_of, Chart, XAxis, BASELINE_PREFIX};
use accrete_core::{VersionKind, VersionRecord};
use std::fmt::Write as _;
use std::sync::Arc;

/// What the page shows: `?model=&metric=&x=version|time`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Query {
    pub model: Option<String>,
    pub metric: Option<String>,
    pub x: Option<String>,
}

const STYLE: &str = include_str!("../assets/dashboard.css");
const SCRIPT: &str = include_str!("../assets/dashboard.js");

/// The whole page.
pub fn page(reg: &Registry, q: &Query, now_ms: i64) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>accrete — models and versions</title>\
         <style>{STYLE}</style></head><body><h1>accrete</h1><div id=\"main\">{}</div><script>{SCRIPT}</script></body></html>\n",
        body(reg, q, now_ms)
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn link(model: &str, metric: Option<&str>, x: XAxis) -> String {
    let mut s = format!("?model={}", esc(model));
    if let Some(m) = metric {
        let _ = write!(s, "&amp;metric={}", esc(m));
    }
    let _ = write!(s, "&amp;x={}", x.as_str());
    s
}

/// When a model last did something: its last push, else its head version's creation.
fn last_active(h: &ModelHandle) -> i64 {
    let (_, pushed) = h.push_rate();
    pushed.unwrap_or_else(|| h.version(h.head_version()).map_or(0, |v| v.created_unix_ms))
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = ((now_ms - then_ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// The part the script refreshes.
pub fn body(reg: &Registry, q: &Query, now_ms: i64) -> String {
    let models = reg.list();
    let x = if q.x.as_deref() == Some("time") { XAxis::Time } else { XAxis::Version };
    let selected: Option<Arc<ModelHandle>> = q
        .model
        .as_deref()
        .and_then(|m| reg.get(m).ok())
        .or_else(|| models.iter().max_by_key(|h| last_active(h)).cloned());
    let mut out = String::new();
    let _ = write!(out, "<p class=\"muted\">{} models · updated {}</p>", models.len(), clock(now_ms));
    out.push_str(
        "<h2>Models</h2><table id=\"models\"><thead><tr><th>model</th><th>kind</th><th>parameters</th><th>head</th>\
         <th>versions</th><th>updates</th><th>not committed</th><th>workers</th><th>pushes/s</th><th>last push</th></tr></thead><tbody>",
    );
    for h in &models {
        let st = h.status();
        let (rate, pushed) = h.push_rate();
        let sel = selected.as_ref().is_some_and(|s| s.name() == h.name());
        let warn = if st.since_commit > 0 { " class=\"warn\"" } else { "" };
        let _ = write!(
            out,
            "<tr{}><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{warn}>{}</td>\
             <td>{}</td><td>{rate:.1}</td><td>{}</td></tr>",
            if sel { " class=\"sel\"" } else { "" },
            link(h.name(), q.metric.as_deref(), x),
            esc(h.name()),
            h.spec().kind.as_str(),
            h.layout().iter().map(|t| t.len()).sum::<u64>(),
            st.head,
            h.versions().map(|v| v.len()).unwrap_or(0),
            st.updates,
            st.since_commit,
            st.workers,
            pushed.map_or("–".to_string(), |t| ago(now_ms, t)),
        );
    }
    out.push_str("</tbody></table>");
    match selected {
        Some(h) => model_section(&mut out, &h, q, x, now_ms),
        None => out.push_str("<p>No models yet: <code>accrete model create NAME --kind …</code></p>"),
    }
    out
}

fn clock(ms: i64) -> String {
    let s = (ms / 1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s % 3600 / 60, s % 60)
}

fn model_section(out: &mut String, h: &ModelHandle, q: &Query, x: XAxis, now_ms: i64) {
    let name = h.name();
    let versions = match h.versions() {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(out, "<p class=\"warn\">{}: {}</p>", esc(name), esc(&e.to_string()));
            return;
        }
    };
    let st = h.status();
    if st.since_commit > 0 {
        let _ = write!(
            out,
            "<p class=\"warn\" id=\"uncommitted\">{} updates of {} are not in a version yet: a crash would lose them \
             (<code>accrete model commit {}</code>; a graceful stop commits them).</p>",
            st.since_commit,
            esc(name),
            esc(name)
        );
    }
    let available = metrics_of(&versions);
    let primary = accrete_core::scoring::primary_metric(&accrete_core::view::ModelView::of(h.spec()).dims);
    let metric = q
        .metric
        .clone()
        .filter(|m| available.contains(m))
        .or_else(|| available.iter().find(|m| *m == primary).cloned())
        .or_else(|| available.first().cloned());
    let _ = write!(out, "<h2 id=\"title\">{} — quality", esc(name));
    if let Some(m) = &metric {
        let _ = write!(out, ": {} by {}", esc(m), x.as_str());
    }
    out.push_str("</h2><p class=\"pick\">");
    for m in &available {
        let cls = if Some(m) == metric.as_ref() { " class=\"on\"" } else { "" };
        let _ = write!(out, "<a{cls} href=\"{}\">{}</a> ", link(name, Some(m), x), esc(m));
    }
    out.push_str(" · x: ");
    for a in [XAxis::Version, XAxis::Time] {
        let cls = if a == x { " class=\"on\"" } else { "" };
        let _ = write!(out, "<a{cls} href=\"{}\">{}</a> ", link(name, metric.as_deref(), a), a.as_str());
    }
    out.push_str("</p>");
    let chart = metric.as_deref().and_then(|m| Chart::of(&versions, m, x));
    match &chart {
        Some(c) => svg(out, c),
        None => {
            let _ = write!(
                out,
                "<p id=\"chart\" class=\"muted\">No version of {} is scored yet: <code>accrete evaluator --model {} --holdout FILE</code> scores them.</p>",
                esc(name),
                esc(name)
            );
        }
    }
    let best = chart.as_ref().and_then(|c| c.best).map(|p| p.version);
    versions_table(out, &versions, metric.as_deref(), best, now_ms);
}

/// The versions, newest first; `best` is the chart's (a diverged version never is).
fn versions_table(out: &mut String, versions: &[VersionRecord], metric: Option<&str>, best: Option<u64>, now_ms: i64) {
    let head = versions.iter().map(|v| v.version).max();
    let _ = write!(
        out,
        "<h2>Versions (lineage)</h2><table id=\"versions\"><thead><tr><th>version</th><th>parent</th><th>created</th>\
         <th>kind</th><th>epoch</th><th>updates</th><th>reason</th><th>tags</th><th>{}</th>\
         <th title=\"the version's rows from all workers, each scored before it was learned\">progressive</th></tr></thead><tbody>",
        esc(metric.unwrap_or("metrics"))
    );
    for v in versions.iter().rev() {
        let mut marks = String::new();
        if Some(v.version) == head {
            marks.push_str(" <span class=\"badge head\">head</span>");
        }
        if best == Some(v.version) {
            marks.push_str(" <span class=\"badge best\">best</span>");
        }
        let content = if v.kind == VersionKind::Rollback && v.content_of != 0 {
            format!(" (content of {})", v.content_of)
        } else {
            String::new()
        };
        // the chosen metric in the cell, all of them on hover
        let all: Vec<String> = v
            .metrics
            .iter()
            .filter(|(k, _)| !k.starts_with(BASELINE_PREFIX))
            .map(|(k, x)| format!("{}={x:.4}", esc(k)))
            .collect();
        let shown = metric.and_then(|m| v.metrics.get(m)).map_or(String::new(), |x| format!("{x:.4}"));
        let _ = write!(
            out,
            "<tr{}><td>{}{marks}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{content}</td><td>{}</td><td title=\"{}\">{shown}</td><td>{}</td></tr>",
            if v.kind == VersionKind::Rollback { " class=\"rb\"" } else { "" },
            v.version,
            v.parent.map_or("–".into(), |p| p.to_string()),
            clock(v.created_unix_ms),
            ago(now_ms, v.created_unix_ms),
            v.kind.as_str(),
            v.lineage_epoch,
            v.updates,
            esc(&v.reason),
            esc(&v.tags.join(",")),
            all.join(" "),
            v.progressive.map_or(String::new(), |f| f.summary()),
        );
    }
    out.push_str("</tbody></table>");
}

/// The chart as inline SVG.
fn svg(out: &mut String, c: &Chart) {
    const W: f64 = 1000.0;
    const H: f64 = 320.0;
    const L: f64 = 64.0;
    // the legend lives in the right margin, never over a point
    const R: f64 = 150.0;
    const T: f64 = 28.0;
    const B: f64 = 42.0;
    let px = |x: f64| L + (x - c.x.min) / (c.x.max - c.x.min).max(1e-12) * (W - L - R);
    let py = |y: f64| T + (1.0 - (y - c.y.min) / (c.y.max - c.y.min).max(1e-12)) * (H - T - B);
    let _ = write!(out, "<svg id=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">");
    for (y, label) in &c.y.ticks {
        let _ = write!(
            out,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{label}</text>",
            W - R,
            L - 6.0,
            py(*y) + 4.0,
            y0 = py(*y)
        );
    }
    for (x, label) in &c.x.ticks {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{label}</text>",
            px(*x),
            H - B + 16.0
        );
    }
    let axis = if c.x_axis == XAxis::Time { "time (UTC)" } else { "version" };
    let better = if c.lower_is_better() { "lower is better" } else { "higher is better" };
    let _ = write!(
        out,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" class=\"axis\"/>\
         <text x=\"{}\" y=\"{}\" class=\"label\" text-anchor=\"middle\">{axis}</text><text x=\"{L}\" y=\"16\" class=\"label\">{} ({better})</text>",
        H - B,
        W - R,
        H - B,
        H - B,
        (L + W - R) / 2.0,
        H - 6.0,
        esc(&c.metric)
    );
    if !c.baseline.is_empty() {
        let pts: Vec<String> = c.baseline.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(out, "<polyline class=\"baseline\" points=\"{}\"><title>baseline: always predicting the base rate</title></polyline>", pts.join(" "));
    }
    for r in &c.rollbacks {
        let x = px(r.x);
        let _ = write!(
            out,
            "<line class=\"rollback\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{T}\" y2=\"{}\"><title>version {} rolled back to version {}</title></line>\
             <text class=\"rblabel\" x=\"{:.1}\" y=\"{}\">↩ {}</text>",
            H - B,
            r.version,
            r.to,
            x + 3.0,
            T + 10.0,
            r.to,
        );
    }
    for s in &c.segments {
        let _ = write!(
            out,
            "<line class=\"{}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
            if s.rollback { "lineage jump" } else { "lineage" },
            px(s.from.x),
            py(s.from.y),
            px(s.to.x),
            py(s.to.y)
        );
    }
    for p in &c.points {
        let _ = write!(
            out,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\"><title>version {}: {} {:.4}</title></circle>",
            px(p.x),
            py(p.y),
            p.version,
            esc(&c.metric),
            p.y
        );
    }
    for (p, class, label) in
        [(c.best, "best", "best"), (c.head, "head", "head")].into_iter().filter_map(|(p, c, l)| p.map(|p| (p, c, l)))
    {
        let dy = if class == "head" { 18.0 } else { -10.0 };
        let (x, y) = (px(p.x), py(p.y));
        let _ = write!(
            out,
            "<circle class=\"mark {class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"7\"/><text class=\"marklabel {class}\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label} v{}</text>",
            y + dy,
            p.version,
        );
    }
    // the legend names only what is drawn
    let mut items = vec![("lineage", c.metric.clone())];
    if !c.baseline.is_empty() {
        items.push(("baseline", "baseline".into()));
    }
    if !c.rollbacks.is_empty() {
        items.push(("rollback", "rollback".into()));
    }
    for (i, (class, text)) in items.iter().enumerate() {
        let y = T + 4.0 + i as f64 * 16.0;
        let x = W - R + 16.0;
        let _ = write!(
            out,
            "<line class=\"key {class}\" x1=\"{x}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/><text class=\"tick\" x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            x + 28.0,
            y + 4.0,
            esc(text)
        );
    }
    out.push_str("</svg>");
}
