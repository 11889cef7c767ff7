//! `shapes`: the embedded default segmentation data of burn-dice's examples, without burn.
//! Seeded synthetic grey images of overlapping ellipses (class 1), rectangles (class 2) and
//! triangles (class 3), rotated and of random size, on shaded, noisy backgrounds, blurred, with
//! intensity jitter. The class intensity ranges overlap, so a network has to tell the classes
//! apart by shape. The U-Net example (burn 0.21) and the burn 0.22 line's example draw their
//! images here, so both train on the same data.

/// The class names, background first.
pub const CLASSES: [&str; 4] = ["background", "ellipse", "rectangle", "triangle"];

/// One square grey image and its class-index mask, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Intensities, roughly in `[0, 1]`.
    pub image: Vec<f32>,
    /// Class indices `0..4`.
    pub mask: Vec<i64>,
    /// Side in pixels.
    pub size: usize,
}

/// Image `i` of split `stream` (1: training, 2: validation) of the data set `seed`.
pub fn image(size: usize, seed: u64, stream: u64, i: usize) -> Image {
    render(
        size,
        &mut Rng::new(seed.wrapping_mul(1_000_003) ^ (stream << 32) ^ i as u64),
    )
}

/// A small deterministic generator (SplitMix64), so that data sets and augmentation are
/// reproducible from a seed without extra dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_add(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// Draws one image.
pub fn render(size: usize, rng: &mut Rng) -> Image {
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
    Image { image, mask, size }
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
        let a: Vec<Image> = (0..40).map(|i| image(32, 1, 1, i)).collect();
        let b: Vec<Image> = (0..40).map(|i| image(32, 1, 1, i)).collect();
        assert_eq!(a, b, "same seed, same images");
        assert_ne!(a[0], image(32, 1, 2, 0), "the streams differ");
        for class in 0..4 {
            assert!(a.iter().any(|s| s.mask.contains(&class)), "class {class}");
        }
    }
}
