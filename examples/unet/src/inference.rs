//! `eval` and `predict`: a trained model from its output folder, per-class Dice tables, mask
//! and overlay images.

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::record::CompactRecorder;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use burn_dice::metric::{DiceCounts, DiceMetricInput, EmptyPolicy, Prediction};
use serde::{Deserialize, Serialize};

use crate::data::{resize_image, resize_mask, Sample};
use crate::model::UNet;
use crate::plot;
use crate::training::{SegModel, TrainConfig};

/// Loads `config.json` and the trained weights (`model.mpk`, or the checkpoint of `epoch`)
/// from a run's output folder.
pub fn load<B: Backend>(
    out: &Path,
    epoch: Option<usize>,
    device: &B::Device,
) -> Result<(TrainConfig, SegModel<B>), String> {
    let config = TrainConfig::load(out.join("config.json"))
        .map_err(|e| format!("cannot read {}: {e}", out.join("config.json").display()))?;
    let weights = match epoch {
        Some(e) => out.join("checkpoint").join(format!("model-{e}")),
        None => out.join("model"),
    };
    let model = SegModel::<B>::new(&config, device)
        .load_file(&weights, &CompactRecorder::new(), device)
        .map_err(|e| format!("cannot load {}.mpk: {e}", weights.display()))?;
    Ok((config, model))
}

/// The argmax class of every pixel of one sample.
pub fn predict_sample<B: Backend>(unet: &UNet<B>, sample: &Sample, device: &B::Device) -> Vec<i64> {
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(sample.image.clone(), [1, 1, sample.height, sample.width]),
        device,
    );
    let logits = unet.forward(x);
    let labels = logits.argmax(1);
    labels
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("integer labels")
}

/// Per-class Dice of a data set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Class names, background first.
    pub class_names: Vec<String>,
    /// Mean Dice per foreground class over the samples whose ground truth has it.
    pub per_class: Vec<Option<f64>>,
    /// Samples per class that were scored.
    pub samples_per_class: Vec<usize>,
    /// The mean over samples of the mean over the foreground classes present (the training
    /// metric's definition).
    pub mean_dice: f64,
    /// Images evaluated.
    pub images: usize,
}

/// Evaluates `model` on `samples` in batches of `batch_size`.
pub fn evaluate<B: Backend>(
    model: &SegModel<B>,
    samples: &[Sample],
    class_names: &[String],
    batch_size: usize,
    device: &B::Device,
) -> EvalReport {
    let classes = class_names.len();
    let mut sums = vec![(0.0, 0usize); classes];
    let mut mean = (0.0, 0usize);
    for chunk in samples.chunks(batch_size.max(1)) {
        let (h, w) = (chunk[0].height, chunk[0].width);
        let images: Vec<f32> = chunk.iter().flat_map(|s| s.image.clone()).collect();
        let labels: Vec<i64> = chunk.iter().flat_map(|s| s.mask.clone()).collect();
        let images =
            Tensor::<B, 4>::from_data(TensorData::new(images, [chunk.len(), 1, h, w]), device);
        let labels =
            Tensor::<B, 4, Int>::from_data(TensorData::new(labels, [chunk.len(), 1, h, w]), device);
        let pred = Prediction::Argmax.apply(model.unet.forward(images));
        let counts = DiceCounts::new(pred, labels, classes, model.ignore_index);
        let scores = DiceMetricInput::from_counts(counts).scores(true, EmptyPolicy::NaN);
        for row in scores {
            let fg: Vec<f64> = row[1..].iter().copied().filter(|v| !v.is_nan()).collect();
            if !fg.is_empty() {
                mean.0 += fg.iter().sum::<f64>() / fg.len() as f64;
                mean.1 += 1;
            }
            for (c, v) in row.iter().enumerate() {
                if !v.is_nan() {
                    sums[c].0 += v;
                    sums[c].1 += 1;
                }
            }
        }
    }
    EvalReport {
        class_names: class_names.to_vec(),
        per_class: sums[1..]
            .iter()
            .map(|(s, n)| (*n > 0).then(|| s / *n as f64))
            .collect(),
        samples_per_class: sums[1..].iter().map(|(_, n)| *n).collect(),
        mean_dice: if mean.1 > 0 {
            mean.0 / mean.1 as f64
        } else {
            f64::NAN
        },
        images: samples.len(),
    }
}

impl EvalReport {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut out = format!("{:<20} {:>8} {:>8}\n", "class", "Dice", "images");
        for (c, (d, n)) in self
            .per_class
            .iter()
            .zip(&self.samples_per_class)
            .enumerate()
        {
            let d = d.map_or("-".to_string(), |d| format!("{d:.4}"));
            out.push_str(&format!(
                "{:<20} {:>8} {:>8}\n",
                self.class_names[c + 1],
                d,
                n
            ));
        }
        out.push_str(&format!(
            "{:<20} {:>8.4} {:>8}\n",
            "mean (foreground)", self.mean_dice, self.images
        ));
        out
    }
}

/// Segments image files: writes `<stem>_mask.png` (class indices as grey values, ×255 for a
/// binary model) and `<stem>_overlay.png` (image and prediction side by side) into `out_dir`.
pub fn predict_files<B: Backend>(
    model: &SegModel<B>,
    config: &TrainConfig,
    inputs: &[PathBuf],
    out_dir: &Path,
    device: &B::Device,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let size = config.image_size;
    let classes = config.class_names.len();
    let mut written = Vec::new();
    for input in inputs {
        let img = image::open(input)
            .map_err(|e| format!("cannot read {}: {e}", input.display()))?
            .to_luma32f();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let pixels = img.into_raw();
        let sample = Sample {
            image: resize_image(&pixels, h, w, size, size),
            mask: vec![0; size * size],
            height: size,
            width: size,
        };
        let pred = predict_sample(&model.unet, &sample, device);
        let full = resize_mask(&pred, size, size, h, w);
        let scale = if classes == 2 { 255 } else { 1 };
        let mask = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([(full[y as usize * w + x as usize] * scale).clamp(0, 255) as u8])
        });
        let stem = input
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("image");
        let mask_path = out_dir.join(format!("{stem}_mask.png"));
        mask.save(&mask_path)
            .map_err(|e| format!("cannot write {}: {e}", mask_path.display()))?;
        let overlay_path = out_dir.join(format!("{stem}_overlay.png"));
        let original = Sample {
            image: pixels,
            mask: vec![0; h * w],
            height: h,
            width: w,
        };
        plot::overlay(&overlay_path, &original, None, &full, classes)?;
        written.push(mask_path);
        written.push(overlay_path);
    }
    Ok(written)
}
