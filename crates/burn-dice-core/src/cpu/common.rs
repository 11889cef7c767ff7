//! What every CPU kernel shares: the problem as slices, the activation and the loading of one
//! block of pixels, and the data checks made on the data a forward pass reads anyway (the vector
//! math itself is in `simd.rs`).
//!
//! Layout: `x` is `[batch, class, pixels]` row-major; dense targets have the same layout; class
//! indices and the validity weights are `[batch, pixels]`. Every kernel walks its pixels in
//! blocks of [`BLOCK`] (see `jobs.rs`), each class of a block in a scratch row of `BLOCK`.

use macerator::Simd;

use super::simd::{exp, lanes, load, sigmoid, splat, store};
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
    /// The labels from `start` as `f32` into `out`, each clamped to `[−1, classes]` first: a
    /// label in `0..classes` is exact (below 2^24), any other stays outside that range for
    /// [`block_bad`], and the clamp keeps the conversion in 32-bit lanes (AVX2 has no 64-bit
    /// integer to float conversion).
    #[inline(always)]
    fn fill(&self, start: usize, classes: usize, out: &mut [f32]) {
        let len = out.len();
        match self {
            Labels::I64(l) => {
                let hi = classes as i64;
                for (o, &v) in out.iter_mut().zip(&l[start..start + len]) {
                    *o = v.clamp(-1, hi) as i32 as f32;
                }
            }
            Labels::I32(l) => {
                let hi = classes.min(i32::MAX as usize) as i32;
                for (o, &v) in out.iter_mut().zip(&l[start..start + len]) {
                    *o = v.clamp(-1, hi) as f32;
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

/// The probabilities of the classes of pixels `n0..n0 + len` of sample `b` into
/// `probs[c * BLOCK..c * BLOCK + len]`; for the softmax also each pixel's `max` over the classes
/// and `sum = Σ_c e^(x_c − max)` (read by the cross-entropy term, which shares them).
#[inline(always)]
pub(super) fn activate<S: Simd>(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    probs: &mut [f32],
    max: &mut [f32; BLOCK],
    sum: &mut [f32; BLOCK],
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
                let (x, p) = (row(c), &mut probs[c * BLOCK..c * BLOCK + len]);
                for k in (0..len).step_by(lanes::<S>()) {
                    store(p, k, sigmoid(load::<S>(x, k)));
                }
            }
        }
        Activation::Softmax => {
            softmax_exps::<S>(c_count, len, row, probs, max, sum);
            normalize::<S>(c_count, len, probs, sum);
        }
    }
}

/// The unnormalized softmax of a block: `e[c·BLOCK + k] = e^(x_c − max)`, with the per-pixel
/// `max` and `sum = Σ_c e` (the first `len` entries of each), from the class rows `row(c)`.
/// Class by class, each loop over one contiguous row.
#[inline(always)]
pub(super) fn softmax_exps<'x, S: Simd>(
    c_count: usize,
    len: usize,
    row: impl Fn(usize) -> &'x [f32],
    e: &mut [f32],
    max: &mut [f32; BLOCK],
    sum: &mut [f32; BLOCK],
) {
    let (max, sum) = (&mut max[..len], &mut sum[..len]);
    max.copy_from_slice(row(0));
    for c in 1..c_count {
        let x = row(c);
        for k in (0..len).step_by(lanes::<S>()) {
            store(max, k, load::<S>(max, k).max(load(x, k)));
        }
    }
    sum.fill(0.0);
    for c in 0..c_count {
        let (x, e) = (row(c), &mut e[c * BLOCK..c * BLOCK + len]);
        for k in (0..len).step_by(lanes::<S>()) {
            let v = exp(load::<S>(x, k) - load(max, k));
            store(e, k, v);
            store(sum, k, load::<S>(sum, k) + v);
        }
    }
}

/// The softmax from [`softmax_exps`]' output: each class row of `e` (`[class][BLOCK]`, `len`
/// pixels) scaled by `1 / Σ e`.
#[inline(always)]
pub(super) fn normalize<S: Simd>(c_count: usize, len: usize, e: &mut [f32], sum: &[f32; BLOCK]) {
    let mut inv = [0.0f32; BLOCK];
    let inv = &mut inv[..len];
    for k in (0..len).step_by(lanes::<S>()) {
        store(inv, k, splat::<S>(1.0) / load::<S>(&sum[..len], k));
    }
    for c in 0..c_count {
        let p = &mut e[c * BLOCK..c * BLOCK + len];
        for k in (0..len).step_by(lanes::<S>()) {
            store(p, k, load::<S>(p, k) * load(inv, k));
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
        l.fill(b * problem.pixels + n0, problem.classes, &mut labels[..len]);
    }
}

/// Whether the block holds a non-finite input value, a dense target value outside `[0, 1]`
/// (NaN and infinities included), or a class index outside `0..classes` (`labels` as loaded by
/// [`load_aux`]): the checks of `check_inputs`, done on data the forward pass reads anyway.
#[inline(always)]
pub(super) fn block_bad<S: Simd>(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    labels: &[f32],
) -> bool {
    let (c_count, n) = (problem.classes, problem.pixels);
    let mut bad = splat::<S>(0.0).ne(splat(0.0));
    // `|x| <= f32::MAX` fails exactly for the infinities and NaN.
    let finite = splat::<S>(f32::MAX);
    for c in 0..c_count {
        let x = &problem.x[(b * c_count + c) * n + n0..][..len];
        for k in (0..len).step_by(lanes::<S>()) {
            bad = bad | !load::<S>(x, k).abs().le(finite);
        }
    }
    match problem.target {
        Target::Dense(t) => {
            let (zero, one) = (splat::<S>(0.0), splat::<S>(1.0));
            for c in 0..c_count {
                let t = &t[(b * c_count + c) * n + n0..][..len];
                for k in (0..len).step_by(lanes::<S>()) {
                    let v = load::<S>(t, k);
                    // Not in [0, 1] (NaN fails both comparisons).
                    bad = bad | !(v.ge(zero) & v.le(one));
                }
            }
        }
        Target::Indices(_) => {
            let (zero, classes) = (splat::<S>(0.0), splat::<S>(c_count as f32));
            let labels = &labels[..len];
            for k in (0..len).step_by(lanes::<S>()) {
                let l = load::<S>(labels, k);
                bad = bad | !(l.ge(zero) & l.lt(classes));
            }
        }
    }
    bad.any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_outside_the_classes_stay_outside() {
        let mut out = [0.0f32; 6];
        Labels::I64(&[0, 3, -1, 4, 1 << 40, -(1 << 40)]).fill(0, 4, &mut out);
        assert_eq!(out, [0.0, 3.0, -1.0, 4.0, 4.0, -1.0]);
        Labels::I32(&[2, i32::MAX, i32::MIN, 5, 0, 1]).fill(0, 4, &mut out);
        assert_eq!(out, [2.0, 4.0, -1.0, 4.0, 0.0, 1.0]);
    }
}
