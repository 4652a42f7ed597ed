//! The picture of a startup benchmark: one horizontal box plot per
//! runtime (quartiles, median, whiskers at 1.5 IQR) on one time axis.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::report::Report;

/// Dark enough to read on white, one per runtime.
const COLOURS: [RGBColor; 7] = [
    RGBColor(200, 30, 30),
    RGBColor(20, 120, 40),
    RGBColor(30, 70, 200),
    RGBColor(150, 40, 160),
    RGBColor(210, 110, 0),
    RGBColor(0, 130, 140),
    RGBColor(60, 60, 60),
];

pub fn svg(report: &Report, file: &Path) -> Result<()> {
    let names: Vec<String> = report.runtimes.iter().map(|m| m.name.clone()).collect();
    // A log axis: the floor (well under a millisecond) and podman (over
    // a hundred) on one picture.
    let samples = || {
        report
            .runtimes
            .iter()
            .flat_map(|m| m.samples_ms.iter().copied())
    };
    // Room on the right for the last median's label.
    let top = samples().fold(0.0f64, f64::max).max(1.0) * 4.0;
    let bottom = samples()
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, top / 10.0)
        / 1.5;
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
        .y_label_area_size(200)
        .build_cartesian_2d(
            (bottom as f32..top as f32).log_scale(),
            names[..].into_segmented(),
        )
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_labels(names.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::Exact(name) | SegmentValue::CenterOf(name) => name.to_string(),
            SegmentValue::Last => String::new(),
        })
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| fail(&e))?;
    let boxes = report.runtimes.iter().enumerate().map(|(i, m)| {
        let samples: Vec<f64> = m.samples_ms.clone();
        Boxplot::new_horizontal(SegmentValue::CenterOf(&names[i]), &Quartiles::new(&samples))
            .width(24)
            .whisker_width(0.6)
            .style(COLOURS[i % COLOURS.len()].stroke_width(2))
    });
    chart.draw_series(boxes).map_err(|e| fail(&e))?;
    // Each median, to the right of its box.
    let medians = report.runtimes.iter().enumerate().map(|(i, m)| {
        let right = m.samples_ms.iter().copied().fold(0.0f64, f64::max) * 1.1;
        EmptyElement::at((right as f32, SegmentValue::CenterOf(&names[i])))
            + Text::new(
                format!("median {:.2} ms", m.median_ms),
                (4, -7),
                ("sans-serif", 13).into_font(),
            )
    });
    chart.draw_series(medians).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
