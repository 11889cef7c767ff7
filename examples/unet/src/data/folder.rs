//! `folder`: the user's own data. `--images DIR --masks DIR`, PNG or JPEG pairs matched by file
//! stem. Images are read as grey levels; masks hold class indices, or 0/255 for a binary task
//! (255 → 1). With `--ignore-index` that value is kept as is (left out of loss and metric).
//! Everything is resized to `--size` (bilinear images, nearest masks). The last
//! `--valid-fraction` of the pairs, in file-name order, is the validation split.
//!
//! Nothing is dropped silently: an image without a mask (or a mask without an image), a file
//! that is not a PNG or JPEG, one that cannot be decoded, a mask of another size than its image
//! and a mask with a label not below the class count are each an error naming the file and the
//! problem, all of them listed at once. With `--skip-bad-files` they are left out instead, with
//! a warning that lists every one. Hidden files (names starting with `.`) and folders are not
//! looked at.

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
    /// Leave out the files that cannot be used (with a warning listing them) instead of failing.
    pub skip_bad_files: bool,
}

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// A file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// An image and its mask.
type Pair = (PathBuf, PathBuf);

/// The image files of `dir` by stem, and the files that are not images.
fn list(dir: &Path) -> Result<(BTreeMap<String, PathBuf>, Vec<BadFile>), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("folder: cannot read {}: {e}", dir.display()))?;
    let mut images = BTreeMap::new();
    let mut bad = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("folder: cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match (ext, path.file_stem().and_then(|s| s.to_str())) {
            (Some(ext), Some(stem)) if EXTENSIONS.contains(&ext.as_str()) => {
                if let Some(other) = images.insert(stem.to_string(), path.clone()) {
                    bad.push(BadFile {
                        path,
                        problem: format!(
                            "same stem as {}: which one to pair is ambiguous",
                            other.display()
                        ),
                    });
                }
            }
            _ => bad.push(BadFile {
                path,
                problem: "not a .png, .jpg or .jpeg file".into(),
            }),
        }
    }
    Ok((images, bad))
}

impl Folder {
    /// The image/mask pairs, matched by stem, and the files left without a partner.
    fn scan(&self) -> Result<(Vec<Pair>, Vec<BadFile>), String> {
        let (images, mut bad) = list(&self.images)?;
        let (masks, bad_masks) = list(&self.masks)?;
        bad.extend(bad_masks);
        let mut pairs = Vec::new();
        for (stem, img) in &images {
            match masks.get(stem) {
                Some(m) => pairs.push((img.clone(), m.clone())),
                None => bad.push(BadFile {
                    path: img.clone(),
                    problem: format!("no mask named {stem}.* in {}", self.masks.display()),
                }),
            }
        }
        for (stem, m) in &masks {
            if !images.contains_key(stem) {
                bad.push(BadFile {
                    path: m.clone(),
                    problem: format!("no image named {stem}.* in {}", self.images.display()),
                });
            }
        }
        Ok((pairs, bad))
    }

    fn read_pair(&self, image: &Path, mask: &Path) -> Result<(Sample, i64), BadFile> {
        let img = image::open(image)
            .map_err(|e| BadFile {
                path: image.to_path_buf(),
                problem: format!("cannot decode: {e}"),
            })?
            .to_luma32f();
        let msk = image::open(mask)
            .map_err(|e| BadFile {
                path: mask.to_path_buf(),
                problem: format!("cannot decode: {e}"),
            })?
            .to_luma8();
        if img.dimensions() != msk.dimensions() {
            return Err(BadFile {
                path: mask.to_path_buf(),
                problem: format!(
                    "mask is {:?} (width, height) but its image {} is {:?}",
                    msk.dimensions(),
                    image.display(),
                    img.dimensions()
                ),
            });
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

    /// The class count of the readable pairs: the largest label + 1 (the unreadable ones are
    /// reported by [`SegmentationData::load`]).
    fn detected_classes(&self) -> Result<usize, String> {
        let mut max = 0;
        for (img, m) in self.scan()?.0 {
            if let Ok((_, label)) = self.read_pair(&img, &m) {
                max = max.max(label);
            }
        }
        Ok(max as usize + 1)
    }

    /// Every file that cannot be used, as an error, or (with `skip_bad_files`) as a warning
    /// on stderr.
    fn report(&self, bad: &[BadFile]) -> Result<(), String> {
        if bad.is_empty() {
            return Ok(());
        }
        let list: String = bad
            .iter()
            .map(|b| format!("\n  {}: {}", b.path.display(), b.problem))
            .collect();
        if self.skip_bad_files {
            eprintln!(
                "warning: folder: leaving out {} file(s) (--skip-bad-files):{list}",
                bad.len()
            );
            Ok(())
        } else {
            Err(format!(
                "folder: {} file(s) cannot be used (fix them, or pass --skip-bad-files to train \
                 without them):{list}",
                bad.len()
            ))
        }
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
        let (pairs, mut bad) = self.scan()?;
        let classes = self.class_names().len() as i64;
        let mut samples = Vec::with_capacity(pairs.len());
        for (img, m) in &pairs {
            match self.read_pair(img, m) {
                Ok((_, max)) if max >= classes => bad.push(BadFile {
                    path: m.clone(),
                    problem: format!(
                        "holds label {max}, but there are {classes} classes (labels 0..{}; \
                         --classes)",
                        classes - 1
                    ),
                }),
                Ok((sample, _)) => samples.push(sample),
                Err(b) => bad.push(b),
            }
        }
        self.report(&bad)?;
        if samples.len() < 2 {
            return Err(format!(
                "folder: found {} usable image/mask pair(s) (matched by file stem, .png/.jpg) in \
                 {} and {}; need at least 2",
                samples.len(),
                self.images.display(),
                self.masks.display()
            ));
        }
        let n_valid = ((samples.len() as f64 * self.valid_fraction).round() as usize)
            .clamp(1, samples.len() - 1);
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
        let folder = Folder {
            images: imgs,
            masks,
            size: 16,
            classes: None,
            ignore_index: None,
            valid_fraction: 0.2,
            skip_bad_files: false,
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

    #[test]
    fn every_bad_file_is_named_or_listed_when_skipped() {
        let dir = std::env::temp_dir().join(format!("unet-folder-bad-{}", std::process::id()));
        let (imgs, masks) = (dir.join("images"), dir.join("masks"));
        std::fs::create_dir_all(&imgs).unwrap();
        std::fs::create_dir_all(&masks).unwrap();
        let grey = |w, h| image::GrayImage::from_fn(w, h, |x, _| image::Luma([x as u8]));
        let mask =
            |w, h, v| image::GrayImage::from_fn(w, h, |x, _| image::Luma([(x % 2) as u8 * v]));
        for k in 0..4 {
            grey(8, 8).save(imgs.join(format!("ok{k}.png"))).unwrap();
            mask(8, 8, 1)
                .save(masks.join(format!("ok{k}.png")))
                .unwrap();
        }
        grey(8, 8).save(imgs.join("lonely.png")).unwrap();
        mask(8, 8, 1).save(masks.join("orphan.png")).unwrap();
        grey(8, 8).save(imgs.join("corrupt.png")).unwrap();
        std::fs::write(masks.join("corrupt.png"), b"not a png").unwrap();
        grey(8, 8).save(imgs.join("small.png")).unwrap();
        mask(4, 8, 1).save(masks.join("small.png")).unwrap();
        grey(8, 8).save(imgs.join("label.png")).unwrap();
        mask(8, 8, 3).save(masks.join("label.png")).unwrap();
        std::fs::write(imgs.join("notes.txt"), b"hello").unwrap();
        std::fs::write(imgs.join(".hidden"), b"ignored").unwrap();
        let mut folder = Folder {
            images: imgs.clone(),
            masks: masks.clone(),
            size: 8,
            classes: Some(2),
            ignore_index: None,
            valid_fraction: 0.25,
            skip_bad_files: false,
        };
        let err = folder.load().unwrap_err();
        let expected = [
            ("lonely.png", "no mask named lonely.*"),
            ("orphan.png", "no image named orphan.*"),
            ("corrupt.png", "cannot decode"),
            ("small.png", "mask is (4, 8)"),
            ("label.png", "holds label 3, but there are 2 classes"),
            ("notes.txt", "not a .png, .jpg or .jpeg file"),
        ];
        assert!(err.contains("6 file(s) cannot be used"), "{err}");
        for (file, problem) in expected {
            let line = err
                .lines()
                .find(|l| l.contains(file))
                .unwrap_or_else(|| panic!("{file} not named in: {err}"));
            assert!(line.contains(problem), "{file}: {line}");
        }
        assert!(!err.contains(".hidden"), "{err}");
        // With the flag the four good pairs train, the rest are left out with a warning.
        folder.skip_bad_files = true;
        let splits = folder.load().unwrap();
        assert_eq!((splits.train.len(), splits.valid.len()), (3, 1));
        // An empty folder names both folders.
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = Folder {
            images: empty.clone(),
            masks: empty.clone(),
            ..folder
        }
        .load()
        .unwrap_err();
        assert!(
            err.contains("found 0 usable") && err.contains("empty"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
