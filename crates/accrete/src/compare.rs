//! The quickstart's story in numbers: the continuously learning model beside the same
//! model frozen after its first month, both scored on each next month's held-out rows
//! before any of that month is learned, and the two series drawn on one plot.
use accrete_client::Client;
use accrete_core::view::ModelView;
use accrete_evaluator::{score_version, EvaluatorConfig, Holdout};
use accrete_ingest::ColumnSpec;
use anyhow::Result;
use std::path::Path;

/// One month's scores: the month (1–12), then AUC and logloss of the continuous and the
/// frozen model on that month's held-out rows.
#[derive(Debug, Clone, Copy)]
pub struct MonthScore {
    pub month: usize,
    pub live: (f64, f64),
    pub frozen: (f64, f64),
}

/// Scores versions `live` and `frozen` of `model` on the held-out rows in `holdout`.
pub async fn score_month(
    c: &mut Client,
    model: &str,
    columns: &ColumnSpec,
    holdout: &Path,
    month: usize,
    (live, frozen): (u64, u64),
) -> Result<MonthScore> {
    let view = ModelView::of(&c.model_info(model).await?.spec);
    let config = EvaluatorConfig { once: true, ..EvaluatorConfig::new(model, holdout, columns.clone()) };
    let mut h = Holdout::load(&config, &view)?;
    let of = |m: &std::collections::BTreeMap<String, f64>| {
        (m.get("auc").copied().unwrap_or(f64::NAN), m.get("logloss").copied().unwrap_or(f64::NAN))
    };
    let l = score_version(c, &view, &mut h, live).await?;
    let f = score_version(c, &view, &mut h, frozen).await?;
    Ok(MonthScore { month, live: of(&l), frozen: of(&f) })
}

/// The mean AUC of the continuous and the frozen model over the months scored.
pub fn mean_auc(scores: &[MonthScore]) -> (f64, f64) {
    let n = scores.len().max(1) as f64;
    (scores.iter().map(|s| s.live.0).sum::<f64>() / n, scores.iter().map(|s| s.frozen.0).sum::<f64>() / n)
}

/// Draws both models' AUC by month into a PNG.
pub fn plot(scores: &[MonthScore], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{}: {e:?}", out.display());
    crate::eval_cmd::register_font();
    let root = BitMapBackend::new(out, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ys = scores.iter().flat_map(|s| [s.live.0, s.frozen.0]).filter(|y| y.is_finite());
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo <= hi { (lo - 0.01, hi + 0.01) } else { (0.5, 1.0) };
    let mut chart = ChartBuilder::on(&root)
        .caption("AUC on each month's held-out rows, before the month is learned", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(1.5f64..12.5, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("month of 2013")
        .y_desc("AUC (higher is better)")
        .x_labels(11)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    let series = [("learning continuously", BLUE, true), ("frozen after January", RED, false)];
    for (name, color, live) in series {
        let points: Vec<(f64, f64)> =
            scores.iter().map(|s| (s.month as f64, if live { s.live.0 } else { s.frozen.0 })).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
