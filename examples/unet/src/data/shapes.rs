//! `shapes`: the embedded default data set, drawn by the burn-free `shapes` crate (shared with
//! the burn 0.22 line's example): seeded synthetic grey images of overlapping ellipses (class
//! 1), rectangles (class 2) and triangles (class 3) on shaded, noisy backgrounds.

use super::{Sample, SegmentationData, Splits};

/// The synthetic shapes data set.
#[derive(Debug, Clone)]
pub struct Shapes {
    /// Image side in pixels.
    pub size: usize,
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub valid: usize,
    /// Seed of the whole data set (the validation images use a different stream).
    pub seed: u64,
}

impl Default for Shapes {
    fn default() -> Self {
        Self {
            size: 64,
            train: 2048,
            valid: 256,
            seed: 7,
        }
    }
}

impl SegmentationData for Shapes {
    fn name(&self) -> String {
        format!(
            "shapes ({}×{}, {} train / {} valid)",
            self.size, self.size, self.train, self.valid
        )
    }

    fn class_names(&self) -> Vec<String> {
        ::shapes::CLASSES.map(String::from).to_vec()
    }

    fn augment_by_default(&self) -> bool {
        false
    }

    fn load(&self) -> Result<Splits, String> {
        if self.size < 16 {
            return Err(format!(
                "shapes: --size must be at least 16, got {}",
                self.size
            ));
        }
        let make = |n: usize, stream: u64| {
            (0..n)
                .map(|i| sample(::shapes::image(self.size, self.seed, stream, i)))
                .collect()
        };
        Ok(Splits {
            train: make(self.train, 1),
            valid: make(self.valid, 2),
        })
    }
}

/// A shared `shapes` image as this example's sample.
fn sample(image: ::shapes::Image) -> Sample {
    Sample {
        image: image.image,
        mask: image.mask,
        height: image.size,
        width: image.size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_every_class_present() {
        let data = Shapes {
            size: 32,
            train: 40,
            valid: 4,
            seed: 1,
        };
        let a = data.load().unwrap();
        let b = data.load().unwrap();
        assert_eq!(a.train, b.train, "same seed, same images");
        assert_ne!(a.train[0], a.valid[0]);
        for class in 0..4 {
            assert!(
                a.train.iter().any(|s| s.mask.contains(&class)),
                "class {class}"
            );
        }
    }
}
