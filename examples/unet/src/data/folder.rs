//! `folder`: the user's own data. `--images DIR --masks DIR`, PNG or JPEG pairs matched by file
//! stem. Images are read as grey levels; masks hold class indices, or 0/255 for a binary task
//! (255 → 1). With `--ignore-index` that value is kept as is (left out of loss and metric).
//! Everything is resized to `--size` (bilinear images, nearest masks). The last
//! `--valid-fraction` of the pairs, in file-name order, is the validation split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{resize_image, resize_mask, Sample, SegmentationData, Splits};

/// A folder pair of images and masks.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Images.
    pub images: PathBuf,
    /// Masks (same stems).
    pub masks: PathBuf,
    /// Output side in pixels.
    pub size: usize,
    /// Number of classes, background included; `None`: the largest label + 1.
    pub classes: Option<usize>,
    /// Label value left out.
    pub ignore_index: Option<usize>,
    /// Fraction of the pairs held out for validation.
    pub valid_fraction: f64,
}

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn list(dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("folder: cannot read {}: {e}", dir.display()))?;
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                out.insert(stem.to_string(), path);
            }
        }
    }
    Ok(out)
}

impl Folder {
    fn pairs(&self) -> Result<Vec<(PathBuf, PathBuf)>, String> {
        let images = list(&self.images)?;
        let masks = list(&self.masks)?;
        let pairs: Vec<_> = images
            .iter()
            .filter_map(|(stem, img)| masks.get(stem).map(|m| (img.clone(), m.clone())))
            .collect();
        if pairs.len() < 2 {
            return Err(format!(
                "folder: found {} image/mask pair(s) (matched by file stem, .png/.jpg) in {} and {}; need at least 2",
                pairs.len(),
                self.images.display(),
                self.masks.display()
            ));
        }
        Ok(pairs)
    }

    fn read_pair(&self, image: &Path, mask: &Path) -> Result<(Sample, i64), String> {
        let img = image::open(image)
            .map_err(|e| format!("folder: {}: {e}", image.display()))?
            .to_luma32f();
        let msk = image::open(mask)
            .map_err(|e| format!("folder: {}: {e}", mask.display()))?
            .to_luma8();
        if img.dimensions() != msk.dimensions() {
            return Err(format!(
                "folder: {} is {:?} but its mask {} is {:?}",
                image.display(),
                img.dimensions(),
                mask.display(),
                msk.dimensions()
            ));
        }
        let (w, h) = (img.width() as usize, img.height() as usize);
        let pixels: Vec<f32> = img.into_raw();
        let raw: Vec<i64> = msk.into_raw().into_iter().map(i64::from).collect();
        let binary = raw.iter().all(|&v| v == 0 || v == 255);
        let labels: Vec<i64> = raw
            .iter()
            .map(|&v| {
                if binary && v == 255 && self.ignore_index != Some(255) {
                    1
                } else {
                    v
                }
            })
            .collect();
        let max = labels
            .iter()
            .copied()
            .filter(|&v| Some(v as usize) != self.ignore_index)
            .max()
            .unwrap_or(0);
        Ok((
            Sample {
                image: resize_image(&pixels, h, w, self.size, self.size),
                mask: resize_mask(&labels, h, w, self.size, self.size),
                height: self.size,
                width: self.size,
            },
            max,
        ))
    }

    fn detected_classes(&self) -> Result<usize, String> {
        let mut max = 0;
        for (img, m) in self.pairs()? {
            max = max.max(self.read_pair(&img, &m)?.1);
        }
        Ok(max as usize + 1)
    }
}

impl SegmentationData for Folder {
    fn name(&self) -> String {
        format!(
            "folder {} / {}",
            self.images.display(),
            self.masks.display()
        )
    }

    fn class_names(&self) -> Vec<String> {
        let n = self
            .classes
            .or_else(|| self.detected_classes().ok())
            .unwrap_or(2)
            .max(2);
        (0..n)
            .map(|c| {
                if c == 0 {
                    "background".to_string()
                } else {
                    format!("class {c}")
                }
            })
            .collect()
    }

    fn ignore_index(&self) -> Option<usize> {
        self.ignore_index
    }

    fn augment_by_default(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Splits, String> {
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return Err(format!(
                "folder: --valid-fraction must be in [0, 1), got {}",
                self.valid_fraction
            ));
        }
        let pairs = self.pairs()?;
        let n_valid =
            ((pairs.len() as f64 * self.valid_fraction).round() as usize).clamp(1, pairs.len() - 1);
        let classes = self.class_names().len() as i64;
        let mut samples = Vec::with_capacity(pairs.len());
        for (img, m) in &pairs {
            let (sample, max) = self.read_pair(img, m)?;
            if max >= classes {
                return Err(format!(
                    "folder: {} holds label {max}, but there are {classes} classes (--classes)",
                    m.display()
                ));
            }
            samples.push(sample);
        }
        let valid = samples.split_off(samples.len() - n_valid);
        Ok(Splits {
            train: samples,
            valid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_by_stem_binary_masks_and_split() {
        let dir = std::env::temp_dir().join(format!("unet-folder-{}", std::process::id()));
        let (imgs, masks) = (dir.join("images"), dir.join("masks"));
        std::fs::create_dir_all(&imgs).unwrap();
        std::fs::create_dir_all(&masks).unwrap();
        for k in 0..5u8 {
            let img = image::GrayImage::from_fn(20, 10, |x, _| image::Luma([(x * 10) as u8 + k]));
            img.save(imgs.join(format!("s{k}.png"))).unwrap();
            let m = image::GrayImage::from_fn(20, 10, |x, _| {
                image::Luma([if x < 10 { 0 } else { 255 }])
            });
            m.save(masks.join(format!("s{k}.png"))).unwrap();
        }
        // An image without a mask is skipped.
        image::GrayImage::new(20, 10)
            .save(imgs.join("lonely.png"))
            .unwrap();
        let folder = Folder {
            images: imgs,
            masks,
            size: 16,
            classes: None,
            ignore_index: None,
            valid_fraction: 0.2,
        };
        assert_eq!(folder.class_names().len(), 2);
        let splits = folder.load().unwrap();
        assert_eq!((splits.train.len(), splits.valid.len()), (4, 1));
        let s = &splits.train[0];
        assert_eq!((s.height, s.width), (16, 16));
        assert_eq!(s.mask[0], 0);
        assert_eq!(s.mask[15], 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
