//! `accrete evaluator` and `accrete model plot`: quality across versions.
use crate::conn::ServerConn;
use crate::worker_cmd::DataArgs;
use accrete_client::Client;
use accrete_core::scoring::primary_metric;
use accrete_core::VersionKind;
use accrete_evaluator::{EvaluatorConfig, Gate};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvaluatorArgs {
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
    /// Quality gate METRIC:MARGIN (e.g. auc:0.01, logloss:0.02): roll back to the best
    /// recent version when a new one is worse by more than the margin.
    #[arg(long)]
    gate: Option<Gate>,
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
    #[command(flatten)]
    server: ServerConn,
}

pub async fn evaluator(a: EvaluatorArgs) -> Result<()> {
    let config = EvaluatorConfig {
        model: a.model.clone(),
        holdout: a.holdout.clone(),
        format: a.data.format(),
        columns: a.data.columns()?,
        once: a.once,
        gate: a.gate.clone(),
        dry_run: a.dry_run,
        gate_window: a.gate_window,
        holdout_follow: a.holdout_follow,
        window: a.window,
    };
    let client = a.server.connect().await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let r = accrete_evaluator::run(config, client, shutdown).await?;
    for (v, m) in &r.scored {
        let line: Vec<String> = m.iter().map(|(k, x)| format!("{k}={x:.4}")).collect();
        println!("{} version {v}: {}", a.model, line.join(" "));
    }
    for (bad, to, why) in &r.rollbacks {
        println!("rolled back after version {bad} to version {to}: {why}");
    }
    println!("scored {} versions", r.scored.len());
    Ok(())
}

#[derive(Args)]
pub struct PlotArgs {
    name: String,
    /// Output file: .png or .svg.
    #[arg(long)]
    out: PathBuf,
    /// Metric to draw (default: the model's primary metric).
    #[arg(long)]
    metric: Option<String>,
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Draws a metric over versions, marking rollbacks.
pub async fn plot(a: PlotArgs, server: &ServerConn) -> Result<()> {
    let mut c = server.connect().await?;
    plot_to(&mut c, &a.name, a.metric.clone(), &a.out).await
}

/// Writes the plot of `name`'s versions to `out` (.png or .svg).
pub async fn plot_to(c: &mut Client, name: &str, metric: Option<String>, out: &std::path::Path) -> Result<()> {
    use plotters::prelude::IntoDrawingArea;
    let a = PlotArgs { name: name.to_string(), out: out.to_path_buf(), metric };
    let view = c.model_view(&a.name).await?;
    let metric = a.metric.clone().unwrap_or_else(|| primary_metric(&view.dims).to_string());
    let versions = c.versions(&a.name).await?;
    let points: Vec<(f64, f64)> =
        versions.iter().filter_map(|v| v.metrics.get(&metric).map(|x| (v.version as f64, *x))).collect();
    if points.is_empty() {
        anyhow::bail!("model {:?} has no version scored with {metric:?} yet (run accrete evaluator)", a.name);
    }
    let rollbacks: Vec<f64> =
        versions.iter().filter(|v| v.kind == VersionKind::Rollback).map(|v| v.version as f64).collect();
    let ext = a.out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let title = format!("{}: {metric} by version", a.name);
    match ext.as_str() {
        "svg" => {
            let root = plotters::prelude::SVGBackend::new(&a.out, (1000, 560)).into_drawing_area();
            draw(root, &title, &metric, &points, &rollbacks)?;
        }
        "png" => {
            let root = plotters::prelude::BitMapBackend::new(&a.out, (1000, 560)).into_drawing_area();
            draw(root, &title, &metric, &points, &rollbacks)?;
        }
        _ => anyhow::bail!("--out {}: use a .png or .svg file name", a.out.display()),
    }
    println!("wrote {} ({} versions, {} rollbacks marked)", a.out.display(), points.len(), rollbacks.len());
    Ok(())
}

fn draw<B: plotters::prelude::DrawingBackend>(
    root: plotters::prelude::DrawingArea<B, plotters::coord::Shift>,
    title: &str,
    metric: &str,
    points: &[(f64, f64)],
    rollbacks: &[f64],
) -> Result<()>
where
    B::ErrorType: 'static,
{
    use plotters::prelude::*;
    // A bundled font: no fontconfig or system fonts needed.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // every scored version and every rollback in view
    let xs = || points.iter().map(|p| p.0).chain(rollbacks.iter().copied());
    let (x0, x1) = (xs().fold(f64::MAX, f64::min), xs().fold(f64::MIN, f64::max));
    let (y0, y1) =
        (points.iter().map(|p| p.1).fold(f64::MAX, f64::min), points.iter().map(|p| p.1).fold(f64::MIN, f64::max));
    let pad = ((y1 - y0) * 0.1).max(1e-3);
    // room above the data for the legend (top right), so it never hides a point
    let top = y1 + 3.0 * pad;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 - 0.5)..(x1 + 0.5), (y0 - pad)..top)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("version")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(metric)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(points.iter().copied(), blue.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .label(metric)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 4, blue.filled())))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(
            rollbacks.iter().map(|x| PathElement::new(vec![(*x, y0 - pad), (*x, y1 + pad)], red.stroke_width(2))),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .label("rollback")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().with_context(|| "writing the plot".to_string())?;
    Ok(())
}
