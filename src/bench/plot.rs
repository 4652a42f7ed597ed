//! The picture of a startup benchmark: one horizontal box plot per
//! runtime (quartiles, median, whiskers at 1.5 IQR) on one time axis.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::report::Report;

pub fn svg(report: &Report, file: &Path) -> Result<()> {
    let names: Vec<String> = report.runtimes.iter().map(|m| m.name.clone()).collect();
    let top = report
        .runtimes
        .iter()
        .flat_map(|m| m.samples_ms.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let height = 120 + 60 * names.len() as u32;
    let root = SVGBackend::new(file, (900, height)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", file.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let caption = format!(
        "start to exit of {}, {} rounds x {} at once",
        report.program, report.runs, report.parallel
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(130)
        .build_cartesian_2d(0.0f32..top as f32, names[..].into_segmented())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_labels(names.len())
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| fail(&e))?;
    let boxes = report.runtimes.iter().enumerate().map(|(i, m)| {
        let samples: Vec<f64> = m.samples_ms.clone();
        Boxplot::new_horizontal(SegmentValue::CenterOf(&names[i]), &Quartiles::new(&samples))
            .width(24)
            .whisker_width(0.6)
            .style(Palette99::pick(i))
    });
    chart.draw_series(boxes).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
