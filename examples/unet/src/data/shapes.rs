//! `shapes`: the embedded default data set. Seeded synthetic grey images of overlapping
//! ellipses (class 1), rectangles (class 2) and triangles (class 3), rotated and of random
//! size, on shaded, noisy backgrounds, blurred, with intensity jitter. The class intensity
//! ranges overlap, so the network has to tell the classes apart by shape.

use super::{Rng, Sample, SegmentationData, Splits};

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
        ["background", "ellipse", "rectangle", "triangle"]
            .map(String::from)
            .to_vec()
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
                .map(|i| {
                    render(
                        self.size,
                        &mut Rng::new(
                            self.seed.wrapping_mul(1_000_003) ^ (stream << 32) ^ i as u64,
                        ),
                    )
                })
                .collect()
        };
        Ok(Splits {
            train: make(self.train, 1),
            valid: make(self.valid, 2),
        })
    }
}

/// Draws one image.
pub fn render(size: usize, rng: &mut Rng) -> Sample {
    let n = size * size;
    let s = size as f32;
    // Shaded background: a random linear ramp plus a faint blob.
    let (g0, gy, gx) = (
        rng.range(0.05, 0.3),
        rng.range(-0.15, 0.15),
        rng.range(-0.15, 0.15),
    );
    let (by, bx, br, bi) = (
        rng.range(0.0, s),
        rng.range(0.0, s),
        rng.range(0.2, 0.6) * s,
        rng.range(-0.1, 0.15),
    );
    let mut image: Vec<f32> = (0..n)
        .map(|p| {
            let (y, x) = ((p / size) as f32, (p % size) as f32);
            let d2 = ((y - by).powi(2) + (x - bx).powi(2)) / (br * br);
            g0 + gy * y / s + gx * x / s + bi * (-d2).exp()
        })
        .collect();
    let mut mask = vec![0i64; n];
    let shapes = 1 + (rng.next_u64() % 4) as usize;
    for _ in 0..shapes {
        let class = 1 + (rng.next_u64() % 3) as i64;
        // Overlapping intensity ranges per class.
        let intensity = match class {
            1 => rng.range(0.45, 0.95),
            2 => rng.range(0.35, 0.85),
            _ => rng.range(0.40, 0.90),
        };
        let (cy, cx) = (rng.range(0.15, 0.85) * s, rng.range(0.15, 0.85) * s);
        let (a, b) = (rng.range(0.10, 0.24) * s, rng.range(0.10, 0.24) * s);
        let theta = rng.range(0.0, std::f32::consts::PI);
        let (sin, cos) = theta.sin_cos();
        // Corners near 90°, 210° and 330° on the unit circle: no slivers, which even a
        // perfect model could not tell from a thin rectangle once blurred.
        let corner = |deg: f32, rng: &mut Rng| {
            let t = (deg + rng.range(-20.0, 20.0)).to_radians();
            (t.cos(), t.sin())
        };
        let tri = [corner(90.0, rng), corner(210.0, rng), corner(330.0, rng)];
        for p in 0..n {
            let (y, x) = ((p / size) as f32 - cy, (p % size) as f32 - cx);
            // Shape frame: rotated by theta, scaled by (a, b).
            let u = (cos * x + sin * y) / a;
            let v = (-sin * x + cos * y) / b;
            let inside = match class {
                1 => u * u + v * v <= 1.0,
                2 => u.abs() <= 1.0 && v.abs() <= 0.8,
                _ => in_triangle((u, v), tri),
            };
            if inside {
                mask[p] = class;
                image[p] = intensity + 0.03 * rng.normal();
            }
        }
    }
    // Blur (3×3 box), then noise and a global gain/offset jitter.
    image = box_blur(&image, size);
    let (gain, offset) = (rng.range(0.8, 1.2), rng.range(-0.1, 0.1));
    for v in &mut image {
        *v = (*v * gain + offset + 0.06 * rng.normal()).clamp(-0.2, 1.2);
    }
    Sample {
        image,
        mask,
        height: size,
        width: size,
    }
}

fn in_triangle(p: (f32, f32), t: [(f32, f32); 3]) -> bool {
    let sign = |a: (f32, f32), b: (f32, f32), c: (f32, f32)| {
        (a.0 - c.0) * (b.1 - c.1) - (b.0 - c.0) * (a.1 - c.1)
    };
    let d1 = sign(p, t[0], t[1]);
    let d2 = sign(p, t[1], t[2]);
    let d3 = sign(p, t[2], t[0]);
    let neg = d1 < 0.0 || d2 < 0.0 || d3 < 0.0;
    let pos = d1 > 0.0 || d2 > 0.0 || d3 > 0.0;
    !(neg && pos)
}

fn box_blur(img: &[f32], size: usize) -> Vec<f32> {
    let mut out = vec![0.0; img.len()];
    for y in 0..size {
        for x in 0..size {
            let (mut sum, mut n) = (0.0, 0.0);
            for yy in y.saturating_sub(1)..=(y + 1).min(size - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(size - 1) {
                    sum += img[yy * size + xx];
                    n += 1.0;
                }
            }
            out[y * size + x] = sum / n;
        }
    }
    out
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
