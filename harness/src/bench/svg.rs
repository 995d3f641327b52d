//! `harness bench`'s SVG plot (plotters): apps/s per mode × instance count against the storage limit.

use super::*;

/// apps/s against instances, one line per mode, and the storage limit as a dashed line.
pub(super) fn plot(r: &BenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let max_n = r.runs.iter().map(|x| x.instances).max().unwrap_or(1);
    let max_y = r
        .runs
        .iter()
        .map(|x| x.apps_per_sec)
        .fold(r.limit.apps_per_sec, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} applications/s by instance count ({}, {} cores)",
                r.backend, r.machine.cpu_model, r.machine.cores
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..(f64::from(max_n) + 0.5), 0f64..max_y.max(1.0))
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("processor instances")
        .y_desc("applications/s")
        .x_labels(max_n as usize)
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
    let mut modes: Vec<&str> = Vec::new();
    for x in &r.runs {
        if !modes.contains(&x.mode.as_str()) {
            modes.push(&x.mode);
        }
    }
    for (i, m) in modes.iter().enumerate() {
        let color = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = r
            .runs
            .iter()
            .filter(|x| x.mode == *m)
            .map(|x| (f64::from(x.instances), x.apps_per_sec))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(m.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    let lim = r.limit.apps_per_sec;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.5, lim), (f64::from(max_n) + 0.5, lim)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(|e| anyhow!("plot: {e}"))?
        .label("storage limit (bulk load)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}
