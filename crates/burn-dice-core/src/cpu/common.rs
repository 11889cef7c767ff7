//! What every CPU kernel shares: the problem as slices, the math (`exp`, `ln`, fused
//! multiply-adds), the activation and the loading of one block of pixels, and the data checks
//! made on the data a forward pass reads anyway.
//!
//! Layout: `x` is `[batch, class, pixels]` row-major; dense targets have the same layout; class
//! indices and the validity weights are `[batch, pixels]`. Every kernel walks its pixels in
//! blocks of [`BLOCK`] (see `jobs.rs`), each class of a block in a scratch row of `BLOCK`.

use crate::Activation;
use crate::Terms;

/// Pixels per block.
pub(super) const BLOCK: usize = 256;

/// Class-index labels of either integer width.
#[derive(Debug, Clone, Copy)]
pub enum Labels<'a> {
    /// 64-bit class indices.
    I64(&'a [i64]),
    /// 32-bit class indices.
    I32(&'a [i32]),
}

impl Labels<'_> {
    /// The labels of `range` as `f32` (exact for any class count below 2^24), into `out`.
    #[inline(always)]
    fn fill(&self, start: usize, out: &mut [f32]) {
        match self {
            Labels::I64(l) => {
                let len = out.len();
                for (o, &v) in out.iter_mut().zip(&l[start..start + len]) {
                    *o = v as f32;
                }
            }
            Labels::I32(l) => {
                let len = out.len();
                for (o, &v) in out.iter_mut().zip(&l[start..start + len]) {
                    *o = v as f32;
                }
            }
        }
    }
}

/// What the statistics are taken against.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `[batch, class, pixels]`.
    Dense(&'a [f32]),
    /// `[batch, pixels]`.
    Indices(Labels<'a>),
}

/// One statistics problem.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// The input, `[batch, class, pixels]` (empty for a backward pass that does not read it).
    pub x: &'a [f32],
    /// The target, dense or class indices.
    pub target: Target<'a>,
    /// `[batch, pixels]` weights (0/1: the pixels that count), or every pixel.
    pub valid: Option<&'a [f32]>,
    /// Samples.
    pub batch: usize,
    /// Classes (channels).
    pub classes: usize,
    /// Pixels (voxels) per class of a sample.
    pub pixels: usize,
    /// The activation applied to `x` before the statistics.
    pub activation: Activation,
    /// Which per-pixel terms the statistics sum.
    pub terms: Terms,
}

/// `a·b + c`, as one fused multiply-add where the caller is compiled for FMA (`FMA`), else a
/// product and a sum (a software `fma` would be slow there).
#[inline(always)]
pub(super) fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `f32`, branch-free so that loops over it vectorize: Cody-Waite range reduction
/// `x = k·ln 2 + r` and Cephes' degree-6 polynomial for `e^r` (relative error about 1 ulp on the
/// whole range; inputs are clamped to `[-87.3, 88.3]`, so `e^x` never overflows and underflows to
/// about 1e-38 instead of 0). `FMA`: see [`mul_add`].
#[inline(always)]
pub(super) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest through the float mantissa (no SSE4.1 `round` needed).
    const MAGIC: f32 = 12_582_912.0;
    // `max`/`min` rather than `clamp`: they compile to vmaxps/vminps, `clamp` did not vectorize.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.3).min(88.3);
    let shifted = mul_add::<FMA>(x, LOG2E, MAGIC);
    let k = shifted - MAGIC;
    // The integer k sits in the low mantissa bits of `shifted`: no float-to-int conversion
    // (whose saturating form does not vectorize).
    let k_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = mul_add::<FMA>(-k, LN2_LO, mul_add::<FMA>(-k, LN2_HI, x));
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    let p = mul_add::<FMA>(p, r, 8.333_452e-3);
    let p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    let p = mul_add::<FMA>(p, r, 1.666_666_5e-1);
    let p = mul_add::<FMA>(p, r, 0.5);
    let e = mul_add::<FMA>(p, r2, r + 1.0);
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    e * scale
}

/// The probabilities of the classes of pixels `n0..n0 + len` of sample `b` into
/// `probs[c * BLOCK..c * BLOCK + len]`.
#[inline(always)]
pub(super) fn activate<const FMA: bool>(
    problem: &Problem,
    b: usize,
    n0: usize,
    len: usize,
    probs: &mut [f32],
) {
    let (c_count, n) = (problem.classes, problem.pixels);
    let row = |c: usize| &problem.x[(b * c_count + c) * n + n0..][..len];
    match problem.activation {
        Activation::None => {
            for c in 0..c_count {
                probs[c * BLOCK..c * BLOCK + len].copy_from_slice(row(c));
            }
        }
        Activation::Sigmoid => {
            for c in 0..c_count {
                for (p, &v) in probs[c * BLOCK..c * BLOCK + len].iter_mut().zip(row(c)) {
                    *p = 1.0 / (1.0 + exp::<FMA>(-v));
                }
            }
        }
        Activation::Softmax => {
            let (mut max, mut sum) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
            softmax_exps::<FMA>(c_count, len, row, probs, &mut max, &mut sum);
            let sum = &mut sum[..len];
            for s in sum.iter_mut() {
                *s = 1.0 / *s;
            }
            for c in 0..c_count {
                for (p, s) in probs[c * BLOCK..c * BLOCK + len].iter_mut().zip(sum.iter()) {
                    *p *= s;
                }
            }
        }
    }
}

/// The unnormalized softmax of a block: `e[c·BLOCK + k] = e^(x_c − max)`, with the per-pixel
/// `max` and `sum = Σ_c e` (the first `len` entries of each), from the class rows `row(c)`.
#[inline(always)]
pub(super) fn softmax_exps<'x, const FMA: bool>(
    c_count: usize,
    len: usize,
    row: impl Fn(usize) -> &'x [f32],
    e: &mut [f32],
    max: &mut [f32; BLOCK],
    sum: &mut [f32; BLOCK],
) {
    let (max, sum) = (&mut max[..len], &mut sum[..len]);
    max.fill(f32::NEG_INFINITY);
    for c in 0..c_count {
        for (m, &v) in max.iter_mut().zip(row(c)) {
            *m = m.max(v);
        }
    }
    sum.fill(0.0);
    for c in 0..c_count {
        let e = &mut e[c * BLOCK..c * BLOCK + len];
        let r = &row(c)[..len];
        for k in 0..len {
            e[k] = exp::<FMA>(r[k] - max[k]);
            sum[k] += e[k];
        }
    }
}

/// The validity weights of a block (ones when every pixel counts).
#[inline(always)]
pub(super) fn weights(problem: &Problem, b: usize, n0: usize, len: usize, out: &mut [f32; BLOCK]) {
    match problem.valid {
        Some(v) => out[..len].copy_from_slice(&v[b * problem.pixels + n0..][..len]),
        None => out[..len].fill(1.0),
    }
}

/// Loads the weights and (for class indices) the labels of pixels `n0..n0 + len` of sample `b`.
#[inline(always)]
pub(super) fn load_aux(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    w: &mut [f32; BLOCK],
    labels: &mut [f32; BLOCK],
) {
    weights(problem, b, n0, len, w);
    if let Target::Indices(l) = problem.target {
        l.fill(b * problem.pixels + n0, &mut labels[..len]);
    }
}

/// `1` if a value's exponent is all ones (an infinity or a NaN), else `0`; branch-free.
#[inline(always)]
pub(super) fn non_finite(v: f32) -> u32 {
    (v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32
}

/// Marks (non-zero in `bad`, lane by lane) a non-finite input value, a dense target value
/// outside `[0, 1]` (NaN and infinities included), or a
/// class index outside `0..classes` (`labels` as loaded by [`load_aux`]) in the block: the
/// checks of `check_inputs`, done on data the forward pass reads anyway.
#[inline(always)]
pub(super) fn block_bad(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    labels: &[f32],
    bad: &mut [u32; BLOCK],
) {
    let (c_count, n) = (problem.classes, problem.pixels);
    let bad = &mut bad[..len];
    for c in 0..c_count {
        let x = &problem.x[(b * c_count + c) * n + n0..][..len];
        for k in 0..len {
            bad[k] |= non_finite(x[k]);
        }
    }
    match problem.target {
        Target::Dense(t) => {
            for c in 0..c_count {
                let t = &t[(b * c_count + c) * n + n0..][..len];
                for k in 0..len {
                    // Not in [0, 1] (NaN fails the comparison too).
                    bad[k] |= !(0.0..=1.0).contains(&t[k]) as u32;
                }
            }
        }
        Target::Indices(_) => {
            let classes = c_count as f32;
            let labels = &labels[..len];
            for k in 0..len {
                bad[k] |= !(labels[k] >= 0.0 && labels[k] < classes) as u32;
            }
        }
    }
}

/// `ln x` for finite `x ≥ 1`, branch-free: `x = m·2^e` with `m` in `[√½, √2)` and Cephes'
/// polynomial for `ln m` (about 1 ulp).
#[inline(always)]
pub(super) fn ln<const FMA: bool>(x: f32) -> f32 {
    let bits = x.to_bits();
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = ((bits >> 23) as i32 - 127 + big as i32) as f32;
    let f = m - 1.0;
    let z = f * f;
    let y = 7.037_683_6e-2_f32;
    let y = mul_add::<FMA>(y, f, -1.151_461e-1);
    let y = mul_add::<FMA>(y, f, 1.167_699_9e-1);
    let y = mul_add::<FMA>(y, f, -1.242_014_1e-1);
    let y = mul_add::<FMA>(y, f, 1.424_932_3e-1);
    let y = mul_add::<FMA>(y, f, -1.666_805_8e-1);
    let y = mul_add::<FMA>(y, f, 2.000_071_4e-1);
    let y = mul_add::<FMA>(y, f, -2.499_999_4e-1);
    let y = mul_add::<FMA>(y, f, 3.333_333e-1);
    let y = y * f * z;
    let y = mul_add::<FMA>(-2.121_944_4e-4, e, y);
    let y = mul_add::<FMA>(-0.5, z, y);
    mul_add::<FMA>(0.693_359_4, e, f + y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, std) = (exp::<false>(x), x.exp());
            let fused = exp::<true>(x);
            worst = worst.max(((fused - std) / std).abs());
            worst = worst.max(((ours - std) / std).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp::<false>(0.0), 1.0);
        assert!(exp::<false>(-1000.0) < 1e-37 && exp::<false>(-1000.0) >= 0.0);
        assert!(exp::<false>(1000.0).is_finite());
    }

    #[test]
    fn ln_is_within_two_ulp_of_std() {
        let mut worst = 0.0f32;
        let mut x = 1.0f32;
        while x < 1e6 {
            for fma in [false, true] {
                let ours = if fma { ln::<true>(x) } else { ln::<false>(x) };
                let std = x.ln();
                worst = worst.max((ours - std).abs() / std.abs().max(f32::EPSILON));
            }
            x *= 1.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(ln::<false>(1.0), 0.0);
    }
}
