//! `curves.png` (loss and Dice per epoch) and prediction overlays.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::data::Sample;
use crate::training::EpochRow;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Registered once for the whole process; `sans-serif` is plotters' default family.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Class colours (class 0, the background, is not drawn).
pub const PALETTE: [[u8; 3]; 8] = [
    [0, 0, 0],
    [230, 60, 50],
    [60, 180, 75],
    [50, 110, 230],
    [240, 200, 40],
    [170, 60, 200],
    [40, 200, 200],
    [250, 130, 30],
];

/// A chart over epochs on `area`, its mesh drawn, for one panel of `curves.png`.
fn epoch_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    epochs: usize,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let err = |e: &dyn std::fmt::Display| format!("curves.png: {e}");
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(epochs)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(chart)
}

/// Draws the training curves: losses (left) and validation Dice, mean and per class (right).
pub fn curves(path: &Path, rows: &[EpochRow], class_names: &[String]) -> Result<(), String> {
    ensure_font();
    let err = |e: &dyn std::fmt::Display| format!("curves.png: {e}");
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(500);
    let n = rows.len().max(2) as f64;
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let max_loss = rows
        .iter()
        .flat_map(|r| [finite(r.train_loss), finite(r.valid_loss)])
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let epochs = rows.len().clamp(2, 10);
    let mut chart = epoch_chart(&left, "loss", 1f64..n, 0f64..max_loss, epochs)?;
    for (label, color, pick) in [
        (
            "train",
            BLUE,
            (|r: &EpochRow| r.train_loss) as fn(&EpochRow) -> f64,
        ),
        ("valid", RED, |r: &EpochRow| r.valid_loss),
    ] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.epoch as f64, finite(pick(r))))
            .collect();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let mut chart = epoch_chart(&right, "validation Dice", 1f64..n, 0f64..1f64, epochs)?;
    chart
        .draw_series(
            rows.iter()
                .map(|r| Circle::new((r.epoch as f64, finite(r.valid_dice)), 3, BLACK.filled())),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.epoch as f64, finite(r.valid_dice))),
            BLACK.stroke_width(3),
        ))
        .map_err(|e| err(&e))?
        .label("mean")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
    for c in 1..class_names.len() {
        let [r, g, b] = PALETTE[c % PALETTE.len()];
        let color = RGBColor(r, g, b);
        chart
            .draw_series(LineSeries::new(
                rows.iter()
                    .map(|row| (row.epoch as f64, finite(row.valid_dice_per_class[c - 1]))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(class_names[c].clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Image | ground truth (if any) | prediction, side by side, classes coloured over the image.
pub fn overlay(
    path: &Path,
    sample: &Sample,
    truth: Option<&[i64]>,
    pred: &[i64],
    classes: usize,
) -> Result<(), String> {
    let (h, w) = (sample.height, sample.width);
    // Small images are magnified (nearest) so that each panel is at least 192 pixels wide.
    let zoom = (192 / w.max(h)).max(1);
    let panels = if truth.is_some() { 3 } else { 2 };
    let (lo, hi) = sample
        .image
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let grey = |p: usize| (((sample.image[p] - lo) / (hi - lo).max(1e-6)) * 255.0) as u8;
    let mut img = image::RgbImage::new(
        ((w * zoom) * panels + 4 * (panels - 1)) as u32,
        (h * zoom) as u32,
    );
    let draw = |img: &mut image::RgbImage, panel: usize, labels: Option<&[i64]>| {
        for y in 0..h {
            for x in 0..w {
                let p = y * w + x;
                let g = grey(p) as f32;
                let mut rgb = [g, g, g];
                if let Some(l) = labels {
                    let c = l[p];
                    if c > 0 && (c as usize) < classes.max(PALETTE.len()) {
                        let col = PALETTE[c as usize % PALETTE.len()];
                        for k in 0..3 {
                            rgb[k] = 0.45 * rgb[k] + 0.55 * col[k] as f32;
                        }
                    }
                }
                for dy in 0..zoom {
                    for dx in 0..zoom {
                        let px = (panel * (w * zoom + 4) + x * zoom + dx) as u32;
                        img.put_pixel(px, (y * zoom + dy) as u32, image::Rgb(rgb.map(|v| v as u8)));
                    }
                }
            }
        }
    };
    draw(&mut img, 0, None);
    if let Some(t) = truth {
        draw(&mut img, 1, Some(t));
    }
    draw(&mut img, panels - 1, Some(pred));
    img.save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
