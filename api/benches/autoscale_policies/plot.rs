//! The PNG: one row per trace, replicas on the left and invocations
//! waiting on the right, every policy in its own colour.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::sim::Sample;

/// Where a DejaVu Sans may live; ab_glyph needs a font file, and reading
/// one avoids font-kit's system lookup (and its fontconfig dependency).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the first font found as `sans-serif`; `false` if none is.
pub fn load_font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the process's life.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// One trace's series: its name and, per policy, its name and samples.
pub struct Row<'a> {
    pub trace: &'a str,
    pub policies: Vec<(&'a str, &'a [Sample])>,
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Draws `rows` into a PNG at `path`, titled `title`.
pub fn draw(path: &Path, title: &str, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let height = 60 + 300 * rows.len() as u32;
    let root = BitMapBackend::new(path, (1500, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(60);
    top.titled(title, ("sans-serif", 26))?;
    let cells = body.split_evenly((rows.len(), 2));
    for (r, row) in rows.iter().enumerate() {
        let end = row
            .policies
            .iter()
            .filter_map(|(_, s)| s.last().map(|x| x.t))
            .fold(0.0, f64::max);
        let most_replicas = row
            .policies
            .iter()
            .flat_map(|(_, s)| s.iter().map(|x| x.replicas))
            .max()
            .unwrap_or(1)
            .max(1);
        let most_pending = row
            .policies
            .iter()
            .flat_map(|(_, s)| s.iter().map(|x| x.pending))
            .max()
            .unwrap_or(1)
            .max(1);
        for (c, what) in ["replicas", "invocations waiting"].into_iter().enumerate() {
            let area = &cells[r * 2 + c];
            let top = if c == 0 {
                f64::from(most_replicas) * 1.1
            } else {
                most_pending as f64 * 1.1
            };
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{}: {what}", row.trace), ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..end, 0.0..top)?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(("sans-serif", 14))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for (i, (name, samples)) in row.policies.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let points = samples.iter().map(|s| {
                    let y = if c == 0 {
                        f64::from(s.replicas)
                    } else {
                        s.pending as f64
                    };
                    (s.t, y)
                });
                // Width 1: plotters 0.3.7 draws wider lines as polygons
                // whose near-vertical segments shot across the other panels.
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(1)))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
