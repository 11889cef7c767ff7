//! Data sets behind one trait, each yielding `(image, mask)` pairs, and the batcher that turns
//! them (augmented for training) into tensors.

pub mod folder;
pub mod mri;
pub mod shapes;

use std::sync::atomic::{AtomicU64, Ordering};

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

/// One grey-level image and its class-index mask, row-major, `height × width`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Intensities, roughly in `[0, 1]`.
    pub image: Vec<f32>,
    /// Class indices (or the ignore index).
    pub mask: Vec<i64>,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// The training and validation samples of a data set.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training samples.
    pub train: Vec<Sample>,
    /// Validation samples.
    pub valid: Vec<Sample>,
}

/// A segmentation data set: class names (background first) and its two splits.
pub trait SegmentationData {
    /// Short name, for logs.
    fn name(&self) -> String;
    /// Class names, the background (class 0) first; their number is the output channels.
    fn class_names(&self) -> Vec<String>;
    /// Label value left out of the loss and the metric, if any.
    fn ignore_index(&self) -> Option<usize> {
        None
    }
    /// Whether training samples are augmented by default.
    fn augment_by_default(&self) -> bool;
    /// Loads (or generates) both splits.
    fn load(&self) -> Result<Splits, String>;
}

/// A batch: images `[n, 1, h, w]` and labels `[n, 1, h, w]`.
#[derive(Debug, Clone)]
pub struct SegBatch<B: Backend> {
    /// Images.
    pub images: Tensor<B, 4>,
    /// Class indices.
    pub labels: Tensor<B, 4, Int>,
}

/// Stacks samples into a [`SegBatch`], augmenting them first when `augment` is on.
#[derive(Debug)]
pub struct SegBatcher {
    augment: bool,
    ignore_index: Option<usize>,
    calls: AtomicU64,
    seed: u64,
}

impl SegBatcher {
    /// A batcher; `seed` fixes the augmentation sequence.
    pub fn new(augment: bool, ignore_index: Option<usize>, seed: u64) -> Self {
        Self {
            augment,
            ignore_index,
            calls: AtomicU64::new(0),
            seed,
        }
    }
}

impl<B: Backend> Batcher<B, Sample, SegBatch<B>> for SegBatcher {
    fn batch(&self, items: Vec<Sample>, device: &B::Device) -> SegBatch<B> {
        let n = items.len();
        let (h, w) = (items[0].height, items[0].width);
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut images = Vec::with_capacity(n * h * w);
        let mut labels = Vec::with_capacity(n * h * w);
        for (k, item) in items.into_iter().enumerate() {
            assert!(
                item.height == h && item.width == w,
                "all samples of a batch must have one size"
            );
            let item = if self.augment {
                let mut rng = Rng::new(self.seed ^ (call << 20) ^ k as u64);
                augment(&item, &mut rng, self.ignore_index)
            } else {
                item
            };
            images.extend(item.image);
            labels.extend(item.mask);
        }
        SegBatch {
            images: Tensor::from_data(TensorData::new(images, [n, 1, h, w]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n, 1, h, w]), device),
        }
    }
}

pub use ::shapes::Rng;

/// Random flips, a rotation of up to ±10° and a shift of up to ±8 % (a crop that keeps the
/// size); bilinear for the image, nearest for the mask, outside pixels become background (or
/// the ignore index when there is one).
pub fn augment(sample: &Sample, rng: &mut Rng, ignore_index: Option<usize>) -> Sample {
    let (h, w) = (sample.height, sample.width);
    let flip_x = rng.uniform() < 0.5;
    let flip_y = rng.uniform() < 0.5;
    let angle = rng.range(-10.0, 10.0).to_radians();
    let (dy, dx) = (
        rng.range(-0.08, 0.08) * h as f32,
        rng.range(-0.08, 0.08) * w as f32,
    );
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let outside = ignore_index.map_or(0, |i| i as i64);
    let mut image = vec![0.0f32; h * w];
    let mut mask = vec![outside; h * w];
    for y in 0..h {
        for x in 0..w {
            // Output pixel → source coordinates (inverse transform).
            let (yy, xx) = (y as f32 - cy - dy, x as f32 - cx - dx);
            let mut sy = cos * yy - sin * xx + cy;
            let mut sx = sin * yy + cos * xx + cx;
            if flip_y {
                sy = h as f32 - 1.0 - sy;
            }
            if flip_x {
                sx = w as f32 - 1.0 - sx;
            }
            if sy < -0.5 || sx < -0.5 || sy > h as f32 - 0.5 || sx > w as f32 - 0.5 {
                continue;
            }
            image[y * w + x] = bilinear(&sample.image, h, w, sy, sx);
            let (ny, nx) = (
                sy.round().clamp(0.0, h as f32 - 1.0),
                sx.round().clamp(0.0, w as f32 - 1.0),
            );
            mask[y * w + x] = sample.mask[ny as usize * w + nx as usize];
        }
    }
    Sample {
        image,
        mask,
        height: h,
        width: w,
    }
}

/// Bilinear sample of a `h × w` image at `(y, x)`, clamped to the border.
pub fn bilinear(img: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let y = y.clamp(0.0, h as f32 - 1.0);
    let x = x.clamp(0.0, w as f32 - 1.0);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let top = img[y0 * w + x0] * (1.0 - fx) + img[y0 * w + x1] * fx;
    let bottom = img[y1 * w + x0] * (1.0 - fx) + img[y1 * w + x1] * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Resizes a `h × w` image to `th × tw` (bilinear, pixel centres aligned).
pub fn resize_image(img: &[f32], h: usize, w: usize, th: usize, tw: usize) -> Vec<f32> {
    let (sy, sx) = (h as f32 / th as f32, w as f32 / tw as f32);
    let mut out = Vec::with_capacity(th * tw);
    for y in 0..th {
        for x in 0..tw {
            out.push(bilinear(
                img,
                h,
                w,
                (y as f32 + 0.5) * sy - 0.5,
                (x as f32 + 0.5) * sx - 0.5,
            ));
        }
    }
    out
}

/// Resizes a `h × w` label map to `th × tw` (nearest neighbour).
pub fn resize_mask(mask: &[i64], h: usize, w: usize, th: usize, tw: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(th * tw);
    for y in 0..th {
        let sy = (((y as f32 + 0.5) * h as f32 / th as f32) as usize).min(h - 1);
        for x in 0..tw {
            let sx = (((x as f32 + 0.5) * w as f32 / tw as f32) as usize).min(w - 1);
            out.push(mask[sy * w + sx]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentation_keeps_image_and_mask_aligned() {
        // A vertical bar: image 1 exactly where the mask is 1.
        let (h, w) = (32, 32);
        let mask: Vec<i64> = (0..h * w)
            .map(|p| i64::from((8..24).contains(&(p % w))))
            .collect();
        let image: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
        let sample = Sample {
            image,
            mask,
            height: h,
            width: w,
        };
        let mut rng = Rng::new(3);
        for _ in 0..10 {
            let a = augment(&sample, &mut rng, None);
            let agree = a
                .image
                .iter()
                .zip(&a.mask)
                .filter(|(i, m)| (**i > 0.5) == (**m == 1))
                .count();
            assert!(agree as f64 > 0.95 * (h * w) as f64, "{agree}");
        }
    }

    #[test]
    fn resize_round_trip_of_a_constant() {
        let img = vec![0.25f32; 6 * 8];
        assert!(resize_image(&img, 6, 8, 12, 4)
            .iter()
            .all(|v| (v - 0.25).abs() < 1e-6));
        let m = resize_mask(&[0, 1, 2, 3], 2, 2, 4, 4);
        assert_eq!(m, vec![0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]);
    }
}
