//! `accrete evaluator` and `accrete model plot`: quality across versions.
use crate::conn::ServerConn;
use crate::worker_cmd::DataArgs;
use accrete_client::Client;
use accrete_core::chart::{Chart, XAxis};
use accrete_core::scoring::primary_metric;
use accrete_evaluator::{EvaluatorConfig, Event, Gate, Progress};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvaluatorArgs {
    /// The model whose versions to score.
    #[arg(long, env = "ACCRETE_MODEL")]
    model: String,
    /// Holdout rows (CSV or LIBSVM, plain or .gz) with labels.
    #[arg(long, env = "ACCRETE_HOLDOUT")]
    holdout: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Score every version that has no score yet, then exit.
    #[arg(long)]
    once: bool,
    /// Quality gate METRIC:MARGIN (e.g. auc:0.01, logloss:0.02; repeat it, or separate
    /// with commas, to gate on several metrics): a version worse than the best recent one
    /// by more than a margin fails. Then, if the model's head fails too, the newest recent
    /// version that beats the head on every gate's metric is restored; the versions
    /// rolled back are never judged or restored again.
    #[arg(long, value_delimiter = ',')]
    gate: Vec<Gate>,
    /// Report what the gate would do without rolling back.
    #[arg(long)]
    dry_run: bool,
    /// Recent scored versions the gate compares with.
    #[arg(long, default_value_t = 10)]
    gate_window: usize,
    /// Keep reading rows appended to the holdout (delayed labels arriving).
    #[arg(long)]
    holdout_follow: bool,
    /// Score on the most recent N labelled rows of the holdout (0 = all).
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Score every retained version again and replace its stored metrics (after scoring
    /// with the wrong holdout or columns); the gate judges only later versions.
    #[arg(long)]
    rescore: bool,
    /// One JSON object per line: each score and rollback as it happens, then a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerConn,
}

pub async fn evaluator(a: EvaluatorArgs) -> Result<()> {
    let (model, json) = (a.model.clone(), a.json);
    let progress = Progress::new(move |e| print_event(&model, e, json));
    let config = EvaluatorConfig {
        model: a.model.clone(),
        holdout: a.holdout.clone(),
        format: a.data.format(),
        columns: a.data.columns()?,
        once: a.once,
        gates: a.gate.clone(),
        dry_run: a.dry_run,
        gate_window: a.gate_window,
        holdout_follow: a.holdout_follow,
        window: a.window,
        rescore: a.rescore,
        progress,
    };
    let client = a.server.connect().await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let r = accrete_evaluator::run(config, client, shutdown).await?;
    if json {
        println!("{}", serde_json::json!({"model": a.model, "scored": r.scored.len(), "rollbacks": r.rollbacks.len()}));
    } else {
        println!("scored {} versions, {} rollbacks", r.scored.len(), r.rollbacks.len());
    }
    Ok(())
}

/// One line per event, as it happens (stdout: the evaluator's results; logs: stderr).
fn print_event(model: &str, e: &Event, json: bool) {
    use serde_json::json;
    match (e, json) {
        (Event::Scored { version, metrics, rescored }, true) => {
            let m: serde_json::Map<String, serde_json::Value> =
                metrics.iter().map(|(k, x)| (k.clone(), if x.is_finite() { json!(x) } else { json!(null) })).collect();
            println!(
                "{}",
                json!({"event": "scored", "model": model, "version": version, "metrics": m, "rescored": rescored})
            );
        }
        (Event::Scored { version, metrics, rescored }, false) => {
            let again = if *rescored { " (rescored)" } else { "" };
            println!("{model} version {version}{again}: {}", crate::output::metrics_cell(metrics));
        }
        (Event::RolledBack { after, to, head, why }, true) => println!(
            "{}",
            json!({"event": "rolled_back", "model": model, "after": after, "to": to, "head": head, "reason": why})
        ),
        (Event::RolledBack { after, to, head, why }, false) => {
            println!("{model}: rolled back after version {after} to version {to}'s content, as version {head}: {why}")
        }
        (Event::WouldRollBack { after, to, why }, true) => {
            println!("{}", json!({"event": "would_roll_back", "model": model, "after": after, "to": to, "reason": why}))
        }
        (Event::WouldRollBack { after, to, why }, false) => {
            println!("{model}: dry run: would roll back after version {after} to version {to}: {why}")
        }
        (Event::Held { after, why }, true) => {
            println!("{}", json!({"event": "held", "model": model, "after": after, "reason": why}))
        }
        (Event::Held { why, .. }, false) => println!("{model}: {why}"),
    }
}

#[derive(Args)]
pub struct PlotArgs {
    /// The model's name.
    name: String,
    /// Output file: .png or .svg.
    #[arg(long)]
    out: PathBuf,
    /// Metric to draw (default: the model's primary metric).
    #[arg(long)]
    metric: Option<String>,
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the bundled font as "sans-serif": no fontconfig or system fonts needed.
pub(crate) fn register_font() {
    let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
}

/// Draws a metric over versions, marking rollbacks.
pub async fn plot(a: PlotArgs, server: &ServerConn, json: bool) -> Result<()> {
    let mut c = server.connect().await?;
    let chart = plot_to(&mut c, &a.name, a.metric.clone(), &a.out).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"model": a.name, "metric": chart.metric, "out": a.out, "points": chart.points.len(),
                               "rollbacks": chart.rollbacks.len(), "best": chart.best.map(|p| p.version),
                               "head": chart.head.map(|p| p.version)})
        );
    } else {
        println!(
            "wrote {} ({} scored versions, {} rollbacks marked)",
            a.out.display(),
            chart.points.len(),
            chart.rollbacks.len()
        );
    }
    Ok(())
}

/// Writes the plot of `name`'s versions to `out` (.png or .svg): the chart the dashboard
/// draws ([`Chart`]): lineage lines, head and best marked, rollbacks labelled with their
/// targets, the baseline.
pub async fn plot_to(c: &mut Client, name: &str, metric: Option<String>, out: &std::path::Path) -> Result<Chart> {
    use plotters::prelude::IntoDrawingArea;
    let view = c.model_view(name).await?;
    let metric = metric.unwrap_or_else(|| primary_metric(&view.dims).to_string());
    let versions = c.versions(name).await?;
    let Some(chart) = Chart::of(&versions, &metric, XAxis::Version) else {
        anyhow::bail!("model {name:?} has no version scored with {metric:?} yet (run accrete evaluator)");
    };
    let ext = out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let title = format!("{name}: {metric} by version");
    match ext.as_str() {
        "svg" => draw(plotters::prelude::SVGBackend::new(out, (1000, 560)).into_drawing_area(), &title, &chart)?,
        "png" => draw(plotters::prelude::BitMapBackend::new(out, (1000, 560)).into_drawing_area(), &title, &chart)?,
        _ => anyhow::bail!("--out {}: use a .png or .svg file name", out.display()),
    }
    Ok(chart)
}

fn draw<B: plotters::prelude::DrawingBackend>(
    root: plotters::prelude::DrawingArea<B, plotters::coord::Shift>,
    title: &str,
    c: &Chart,
) -> Result<()>
where
    B::ErrorType: 'static,
{
    use plotters::prelude::*;
    let err = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow::anyhow!("{e:?}");
    register_font();
    root.fill(&WHITE).map_err(err)?;
    let (x_ticks, y_ticks) = (c.x.ticks.len().max(2), c.y.ticks.len().max(2));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(c.x.min..c.x.max, c.y.min..c.y.max)
        .map_err(err)?;
    let better = if c.lower_is_better() { "lower is better" } else { "higher is better" };
    chart
        .configure_mesh()
        .x_desc("version")
        .x_labels(x_ticks)
        .y_labels(y_ticks)
        .x_label_formatter(&|x| if x.fract().abs() < 1e-9 { format!("{x:.0}") } else { String::new() })
        .y_desc(format!("{} ({better})", c.metric))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let (blue, red, grey, green) =
        (RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(136, 136, 136), RGBColor(44, 160, 44));
    if !c.baseline.is_empty() {
        chart
            .draw_series(LineSeries::new(c.baseline.iter().copied(), grey.stroke_width(2)))
            .map_err(err)?
            .label("baseline (base rate)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    }
    // the lineage: each scored version from its predecessor; a rollback from its target
    for s in &c.segments {
        let colour = if s.rollback { red } else { blue };
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(s.from.x, s.from.y), (s.to.x, s.to.y)],
                colour.stroke_width(2),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(c.points.iter().map(|p| Circle::new((p.x, p.y), 4, blue.filled())))
        .map_err(err)?
        .label(c.metric.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    if !c.rollbacks.is_empty() {
        let top = c.y.max;
        chart
            .draw_series(
                c.rollbacks.iter().map(|r| PathElement::new(vec![(r.x, c.y.min), (r.x, top)], red.stroke_width(1))),
            )
            .map_err(err)?
            .label("rollback (to the labelled version)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
        let dy = (c.y.max - c.y.min) * 0.04;
        chart
            .draw_series(c.rollbacks.iter().map(|r| {
                Text::new(format!("to v{}", r.to), (r.x, top - dy), ("sans-serif", 14).into_font().color(&red))
            }))
            .map_err(err)?;
    }
    for (p, label, colour) in [(c.best, "best", green), (c.head, "head", BLACK)] {
        if let Some(p) = p {
            chart.draw_series(std::iter::once(Circle::new((p.x, p.y), 8, colour.stroke_width(2)))).map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{label} v{}", p.version),
                    (p.x, p.y),
                    ("sans-serif", 14).into_font().color(&colour),
                )))
                .map_err(err)?;
        }
    }
    // the legend goes where the recent points are not
    let recent = &c.points[c.points.len() * 2 / 3..];
    let high = recent.iter().map(|p| p.y).sum::<f64>() / recent.len().max(1) as f64 > (c.y.min + c.y.max) / 2.0;
    chart
        .configure_series_labels()
        .position(if high { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().with_context(|| "writing the plot".to_string())?;
    Ok(())
}
