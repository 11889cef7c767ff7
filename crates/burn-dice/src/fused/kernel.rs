//! The fused per-(sample, class) statistics over contiguous `f32` slices: one pass forward, one
//! pass backward, the activation recomputed in the backward pass instead of stored.
//!
//! Layout: `x` is `[batch, class, pixels]` row-major; dense targets have the same layout; class
//! indices and the validity weights are `[batch, pixels]`. Work is split into jobs of one sample
//! and a run of pixels; each job walks its pixels in blocks of [`BLOCK`], computes the
//! probabilities of all classes of a block into a scratch buffer and accumulates the three sums
//! in `BLOCK` independent `f32` lanes per class (so the compiler vectorizes the loops), flushed
//! into `f64` every [`FLUSH`] blocks.

use crate::activation::Activation;

/// Pixels per block.
const BLOCK: usize = 64;
/// Blocks between flushes of the `f32` lanes into the `f64` sums.
const FLUSH: usize = 16;
/// Pixels per job (per thread task).
const JOB: usize = 16 * 1024;
/// Below this many input elements everything runs on the calling thread.
const PARALLEL_MIN: usize = 64 * 1024;

/// Class-index labels of either integer width.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Labels<'a> {
    I64(&'a [i64]),
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
pub(crate) enum Target<'a> {
    /// `[batch, class, pixels]`.
    Dense(&'a [f32]),
    /// `[batch, pixels]`.
    Indices(Labels<'a>),
}

/// One statistics problem.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub x: &'a [f32],
    pub target: Target<'a>,
    /// `[batch, pixels]` weights (0/1: the pixels that count), or every pixel.
    pub valid: Option<&'a [f32]>,
    pub batch: usize,
    pub classes: usize,
    pub pixels: usize,
    pub activation: Activation,
    pub squared_pred: bool,
}

/// `e^x` for `f32`, branch-free so that loops over it vectorize: Cody-Waite range reduction
/// `x = k·ln 2 + r` and Cephes' degree-6 polynomial for `e^r` (relative error about 1 ulp on the
/// whole range; inputs are clamped to `[-87.3, 88.3]`, so `e^x` never overflows and underflows to
/// about 1e-38 instead of 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest through the float mantissa (no SSE4.1 `round` needed).
    const MAGIC: f32 = 12_582_912.0;
    // `max`/`min` rather than `clamp`: they compile to vmaxps/vminps, `clamp` did not vectorize.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.3).min(88.3);
    let shifted = x * LOG2E + MAGIC;
    let k = shifted - MAGIC;
    // The integer k sits in the low mantissa bits of `shifted`: no float-to-int conversion
    // (whose saturating form does not vectorize).
    let k_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = x - k * LN2_HI - k * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r2 + r + 1.0;
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    e * scale
}

/// The probabilities of the classes of pixels `n0..n0 + len` of sample `b` into
/// `probs[c * BLOCK..c * BLOCK + len]`.
#[inline(always)]
fn activate(problem: &Problem, b: usize, n0: usize, len: usize, probs: &mut [f32]) {
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
                    *p = 1.0 / (1.0 + exp(-v));
                }
            }
        }
        Activation::Softmax => {
            let mut max = [f32::NEG_INFINITY; BLOCK];
            let max = &mut max[..len];
            for c in 0..c_count {
                for (m, &v) in max.iter_mut().zip(row(c)) {
                    *m = m.max(v);
                }
            }
            let mut sum = [0.0f32; BLOCK];
            let sum = &mut sum[..len];
            for c in 0..c_count {
                let p = &mut probs[c * BLOCK..c * BLOCK + len];
                let r = row(c);
                for k in 0..len {
                    let e = exp(r[k] - max[k]);
                    p[k] = e;
                    sum[k] += e;
                }
            }
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

/// The validity weights of a block (ones when every pixel counts).
#[inline(always)]
fn weights(problem: &Problem, b: usize, n0: usize, len: usize, out: &mut [f32; BLOCK]) {
    match problem.valid {
        Some(v) => out[..len].copy_from_slice(&v[b * problem.pixels + n0..][..len]),
        None => out[..len].fill(1.0),
    }
}

/// Loads one block: the probabilities of every class, the weights and (for class indices)
/// the labels of pixels `n0..n0 + len` of sample `b`.
#[inline(always)]
fn load_block(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    probs: &mut [f32],
    w: &mut [f32; BLOCK],
    labels: &mut [f32; BLOCK],
) {
    activate(problem, b, n0, len, probs);
    weights(problem, b, n0, len, w);
    if let Target::Indices(l) = problem.target {
        l.fill(b * problem.pixels + n0, &mut labels[..len]);
    }
}

/// Branch-free `squared_pred`: `x·(sq·x + lin)` is `x²` for `(1, 0)` and `x` for `(0, 1)`,
/// both exact.
#[inline(always)]
fn squared_factors(problem: &Problem) -> (f32, f32) {
    if problem.squared_pred {
        (1.0, 0.0)
    } else {
        (0.0, 1.0)
    }
}

/// Jobs: `(sample, first pixel, pixel count)`.
fn jobs(problem: &Problem) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for b in 0..problem.batch {
        let mut n0 = 0;
        while n0 < problem.pixels {
            let len = JOB.min(problem.pixels - n0);
            out.push((b, n0, len));
            n0 += len;
        }
    }
    out
}

fn parallel(problem: &Problem) -> bool {
    problem.x.len() >= PARALLEL_MIN
}

/// Sums of one job: `[3][classes]` (intersection, prediction, target).
#[inline(always)]
fn forward_job(problem: &Problem, (b, start, count): (usize, usize, usize)) -> Vec<f64> {
    let c_count = problem.classes;
    let mut sums = vec![0.0f64; 3 * c_count];
    let mut probs = vec![0.0f32; c_count * BLOCK];
    let mut lanes = vec![0.0f32; 3 * c_count * BLOCK];
    let mut w = [0.0f32; BLOCK];
    let mut labels = [0.0f32; BLOCK];
    let (sq, lin) = squared_factors(problem);
    let mut blocks = 0;
    let mut n0 = start;
    while n0 < start + count {
        let len = BLOCK.min(start + count - n0);
        load_block(problem, (b, n0, len), &mut probs, &mut w, &mut labels);
        let (w, labels) = (&w[..len], &labels[..len]);
        for c in 0..c_count {
            let p = &probs[c * BLOCK..c * BLOCK + len];
            let (li, rest) = lanes[3 * c * BLOCK..3 * (c + 1) * BLOCK].split_at_mut(BLOCK);
            let (lp, lt) = rest.split_at_mut(BLOCK);
            // Every slice exactly `len` long: no bounds checks in the loops below.
            let (li, lp, lt) = (&mut li[..len], &mut lp[..len], &mut lt[..len]);
            match problem.target {
                Target::Dense(t) => {
                    let t = &t[(b * c_count + c) * problem.pixels + n0..][..len];
                    for k in 0..len {
                        // (p·w)·(t·w), as the generic path multiplies both by the mask.
                        let (pw, tw) = (p[k] * w[k], t[k] * w[k]);
                        li[k] += pw * tw;
                        lp[k] += pw * (sq * pw + lin);
                        lt[k] += tw * (sq * tw + lin);
                    }
                }
                Target::Indices(_) => {
                    let class = c as f32;
                    for k in 0..len {
                        let pw = p[k] * w[k];
                        let hit = if labels[k] == class { w[k] } else { 0.0 };
                        li[k] += p[k] * hit;
                        lp[k] += pw * (sq * pw + lin);
                        lt[k] += hit;
                    }
                }
            }
        }
        blocks += 1;
        n0 += len;
        if blocks % FLUSH == 0 || n0 >= start + count {
            for (s, lane) in sums.iter_mut().zip(lanes.chunks_exact_mut(BLOCK)) {
                // Lanes are [class][stat][BLOCK]; sums are [stat][class].
                *s += lane.iter().map(|&v| v as f64).sum::<f64>();
                lane.fill(0.0);
            }
        }
    }
    // Reorder [class][stat] into [stat][class].
    let mut out = vec![0.0f64; 3 * c_count];
    for c in 0..c_count {
        for s in 0..3 {
            out[s * c_count + c] = sums[c * 3 + s];
        }
    }
    out
}

/// The three `[batch, class]` tables, stacked: `[3, batch, class]`.
pub(crate) fn forward(problem: &Problem) -> Vec<f32> {
    let (b_count, c_count) = (problem.batch, problem.classes);
    let jobs = jobs(problem);
    let partial: Vec<Vec<f64>> = if parallel(problem) {
        use rayon::prelude::*;
        jobs.par_iter()
            .map(|&job| dispatch_forward(problem, job))
            .collect()
    } else {
        jobs.iter()
            .map(|&job| dispatch_forward(problem, job))
            .collect()
    };
    let mut out = vec![0.0f64; 3 * b_count * c_count];
    for (&(b, _, _), sums) in jobs.iter().zip(&partial) {
        for s in 0..3 {
            for c in 0..c_count {
                out[(s * b_count + b) * c_count + c] += sums[s * c_count + c];
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// The gradient with respect to `x` of `Σ g_I·I + g_P·P + g_T·T` for `grad` = `[3, batch, class]`
/// (`T` does not depend on `x`).
///
/// With `pw = p·w`: `∂I/∂p = t·w²` (dense) or `w·[label = c]` (indices), `∂P/∂p = w` or
/// `2·p·w²` (`squared_pred`); then through the activation: sigmoid `p(1 − p)`, softmax
/// `p_c (dp_c − Σ_k p_k dp_k)`.
pub(crate) fn backward(problem: &Problem, grad: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; problem.x.len()];
    let jobs = jobs(problem);
    let (c_count, n) = (problem.classes, problem.pixels);
    // Each job writes its own pixels of every class of its sample: split dx accordingly.
    let mut pieces: Vec<(usize, usize, usize, Vec<&mut [f32]>)> = Vec::with_capacity(jobs.len());
    {
        let mut rows: Vec<&mut [f32]> = dx.chunks_mut(n).collect();
        rows.reverse();
        let mut per_row: Vec<Vec<&mut [f32]>> = Vec::new();
        for _ in 0..problem.batch * c_count {
            let row = rows.pop().expect("one row per (sample, class)");
            let mut parts = Vec::new();
            let mut rest = row;
            let mut n0 = 0;
            while n0 < n {
                let len = JOB.min(n - n0);
                let (head, tail) = rest.split_at_mut(len);
                parts.push(head);
                rest = tail;
                n0 += len;
            }
            parts.reverse();
            per_row.push(parts);
        }
        for &(b, n0, len) in &jobs {
            let rows = (0..c_count)
                .map(|c| per_row[b * c_count + c].pop().expect("one part per job"))
                .collect();
            pieces.push((b, n0, len, rows));
        }
    }
    if parallel(problem) {
        use rayon::prelude::*;
        pieces
            .par_iter_mut()
            .for_each(|(b, n0, len, out)| dispatch_backward(problem, grad, (*b, *n0, *len), out));
    } else {
        for (b, n0, len, out) in &mut pieces {
            dispatch_backward(problem, grad, (*b, *n0, *len), out);
        }
    }
    dx
}

#[inline(always)]
fn backward_job(
    problem: &Problem,
    grad: &[f32],
    (b, start, count): (usize, usize, usize),
    out: &mut [&mut [f32]],
) {
    let (b_count, c_count) = (problem.batch, problem.classes);
    let g = |s: usize, c: usize| grad[(s * b_count + b) * c_count + c];
    let (sq, lin) = squared_factors(problem);
    let mut probs = vec![0.0f32; c_count * BLOCK];
    let mut dp = vec![0.0f32; c_count * BLOCK];
    let mut w = [0.0f32; BLOCK];
    let mut labels = [0.0f32; BLOCK];
    let mut n0 = start;
    while n0 < start + count {
        let len = BLOCK.min(start + count - n0);
        load_block(problem, (b, n0, len), &mut probs, &mut w, &mut labels);
        let (w, labels) = (&w[..len], &labels[..len]);
        for c in 0..c_count {
            let (gi, gp) = (g(0, c), g(1, c));
            let p = &probs[c * BLOCK..c * BLOCK + len];
            let d = &mut dp[c * BLOCK..c * BLOCK + len];
            match problem.target {
                Target::Dense(t) => {
                    let t = &t[(b * c_count + c) * problem.pixels + n0..][..len];
                    for k in 0..len {
                        let dpred = w[k] * (sq * 2.0 * p[k] * w[k] + lin);
                        d[k] = gi * t[k] * (w[k] * w[k]) + gp * dpred;
                    }
                }
                Target::Indices(_) => {
                    let class = c as f32;
                    for k in 0..len {
                        let hit = if labels[k] == class { w[k] } else { 0.0 };
                        let dpred = w[k] * (sq * 2.0 * p[k] * w[k] + lin);
                        d[k] = gi * hit + gp * dpred;
                    }
                }
            }
        }
        let local = n0 - start;
        match problem.activation {
            Activation::None => {
                for c in 0..c_count {
                    out[c][local..local + len].copy_from_slice(&dp[c * BLOCK..c * BLOCK + len]);
                }
            }
            Activation::Sigmoid => {
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    for (k, o) in out[c][local..local + len].iter_mut().enumerate() {
                        *o = d[k] * p[k] * (1.0 - p[k]);
                    }
                }
            }
            Activation::Softmax => {
                let mut dot = [0.0f32; BLOCK];
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    for k in 0..len {
                        dot[k] += p[k] * d[k];
                    }
                }
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    for (k, o) in out[c][local..local + len].iter_mut().enumerate() {
                        *o = p[k] * (d[k] - dot[k]);
                    }
                }
            }
        }
        n0 += len;
    }
}

/// Whether every value is finite (one vectorized pass; both cores on large inputs).
pub(crate) fn all_finite(x: &[f32]) -> bool {
    // An exponent of all ones is an infinity or a NaN.
    let bad = |c: &[f32]| {
        c.iter().fold(0u32, |acc, v| {
            acc | ((v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        }) != 0
    };
    if x.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        !x.par_chunks(JOB * 4).any(bad)
    } else {
        !bad(x)
    }
}

/// Whether every label is in `0..classes` or equal to `ignore`.
pub(crate) fn labels_in_range(labels: Labels, classes: usize, ignore: Option<usize>) -> bool {
    let (has_ignore, ignore) = (ignore.is_some(), ignore.unwrap_or(0) as i64);
    let n = classes as i64;
    let ok = |v: i64| (0 <= v && v < n) | (has_ignore & (v == ignore));
    match labels {
        Labels::I64(l) => l.iter().fold(true, |acc, &v| acc & ok(v)),
        Labels::I32(l) => l.iter().fold(true, |acc, &v| acc & ok(v as i64)),
    }
}

// Runtime dispatch to an AVX2 + FMA build of the same loops where the CPU has them (8 lanes
// instead of SSE2's 4); the code is identical, only the instruction set differs.

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_job_avx2(problem: &Problem, job: (usize, usize, usize)) -> Vec<f64> {
    forward_job(problem, job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_job_avx2(
    problem: &Problem,
    grad: &[f32],
    job: (usize, usize, usize),
    out: &mut [&mut [f32]],
) {
    backward_job(problem, grad, job, out)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[allow(unsafe_code)]
fn dispatch_forward(problem: &Problem, job: (usize, usize, usize)) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        return unsafe { forward_job_avx2(problem, job) };
    }
    forward_job(problem, job)
}

#[allow(unsafe_code)]
fn dispatch_backward(
    problem: &Problem,
    grad: &[f32],
    job: (usize, usize, usize),
    out: &mut [&mut [f32]],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        return unsafe { backward_job_avx2(problem, grad, job, out) };
    }
    backward_job(problem, grad, job, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, std) = (exp(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn label_range() {
        let l = [0i64, -1, 3];
        assert!(
            !labels_in_range(Labels::I64(&l), 4, None),
            "-1 without ignore_index"
        );
        assert!(labels_in_range(Labels::I64(&[0, 3, 1]), 4, None));
        assert!(!labels_in_range(Labels::I32(&[0, 4]), 4, None));
        assert!(labels_in_range(Labels::I32(&[0, 255]), 4, Some(255)));
        assert!(!labels_in_range(Labels::I32(&[0, 254]), 4, Some(255)));
        assert!(all_finite(&[0.0, -1e30, 3.0]));
        assert!(!all_finite(&[0.0, f32::NAN]) && !all_finite(&[f32::NEG_INFINITY]));
    }

    fn problem<'a>(
        x: &'a [f32],
        target: Target<'a>,
        valid: Option<&'a [f32]>,
        activation: Activation,
    ) -> Problem<'a> {
        Problem {
            x,
            target,
            valid,
            batch: 1,
            classes: 2,
            pixels: 3,
            activation,
            squared_pred: false,
        }
    }

    #[test]
    fn sums_by_hand() {
        // Two classes, three pixels, no activation: p = x.
        let x = [0.2, 0.6, 0.5, 0.8, 0.4, 0.5];
        let labels = [1i64, 0, 1];
        let sums = forward(&problem(
            &x,
            Target::Indices(Labels::I64(&labels)),
            None,
            Activation::None,
        ));
        // I: class 0 gets p0[1] = 0.6; class 1 gets p1[0] + p1[2] = 0.8 + 0.5.
        let expected = [0.6, 1.3, 1.3, 1.7, 1.0, 2.0];
        for (a, b) in sums.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{sums:?}");
        }
        // The ignored middle pixel counts nowhere.
        let valid = [1.0, 0.0, 1.0];
        let sums = forward(&problem(
            &x,
            Target::Indices(Labels::I32(&[1, 0, 1])),
            Some(&valid),
            Activation::None,
        ));
        let expected = [0.0, 1.3, 0.7, 1.3, 0.0, 2.0];
        for (a, b) in sums.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{sums:?}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = [0.3f32, -1.2, 2.0, 0.7, 0.1, -0.4];
        let dense = [1.0f32, 0.0, 0.5, 0.0, 1.0, 1.0];
        let labels = [1i64, 0, 1];
        let valid = [1.0f32, 0.0, 1.0];
        let grad = [0.7f32, -1.3, 0.2, 0.5, 0.9, -0.1];
        for activation in [Activation::None, Activation::Sigmoid, Activation::Softmax] {
            for squared_pred in [false, true] {
                for (target, valid) in [
                    (Target::Dense(&dense), None),
                    (Target::Dense(&dense), Some(&valid[..])),
                    (Target::Indices(Labels::I64(&labels)), None),
                    (Target::Indices(Labels::I64(&labels)), Some(&valid[..])),
                ] {
                    let mut p = problem(&x, target, valid, activation);
                    p.squared_pred = squared_pred;
                    let objective = |x: &[f32]| {
                        let sums = forward(&Problem { x, ..p });
                        sums.iter()
                            .zip(&grad)
                            .map(|(s, g)| (s * g) as f64)
                            .sum::<f64>()
                    };
                    let dx = backward(&p, &grad);
                    for i in 0..x.len() {
                        let h = 1e-3f32;
                        let (mut up, mut down) = (x, x);
                        up[i] += h;
                        down[i] -= h;
                        let fd = (objective(&up) - objective(&down)) / (2.0 * h as f64);
                        assert!(
                            (fd - dx[i] as f64).abs() < 2e-3,
                            "{activation:?} squared {squared_pred} {target:?} {valid:?} x[{i}]: \
                             {} vs {fd}",
                            dx[i]
                        );
                    }
                }
            }
        }
    }
}
