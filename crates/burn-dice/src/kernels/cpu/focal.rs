//! The focal term of `DiceFocalLoss` (Lin et al., ICCV 2017, as MONAI's sigmoid `FocalLoss`) in
//! the same layout and job structure as the Dice statistics: per (sample, class) the sum over
//! the pixels of `v · loss`, one pass forward, one pass backward with the closed-form gradient.
//!
//! Per element, with `t` the per-channel target (one-hot for class indices), `v` the validity
//! weight, `s = 2t − 1`, `z = −s·x`, `ls = ln σ` (stable):
//! `bce = x − x·t − ls(x)`, `m = e^(γ·ls(z))` (`(1 − p_t)^γ`), `a = α·t + (1 − α)(1 − t)` (or 1),
//! `loss = a·m·bce`, and `∂loss/∂x = a·m·(σ(x) − t − γ·s·σ(−z)·bce)`.

use super::common::{exp, ln, load_aux, Problem, Target, BLOCK};
use super::isa::{dispatch, kernel_job, Isa, Kernel};
use super::jobs::{blocks, map_jobs, write_jobs, Job};

/// One focal problem: the data of `base` (its activation and `terms` are not read) and
/// the options of the term.
#[derive(Debug, Clone, Copy)]
pub(super) struct FocalProblem<'a> {
    pub base: Problem<'a>,
    pub gamma: f32,
    pub alpha: Option<f32>,
}

/// `ln σ(v) = min(v, 0) − ln(1 + e^−|v|)`, stable for any finite `v`.
#[inline(always)]
fn log_sigmoid<const FMA: bool>(v: f32) -> f32 {
    v.min(0.0) - ln::<FMA>(1.0 + exp::<FMA>(-v.abs()))
}

/// The target of class `c` at pixel `k` of a block.
#[inline(always)]
fn target_at(dense: Option<&[f32]>, labels: &[f32], c: usize, k: usize) -> f32 {
    match dense {
        Some(t) => t[k],
        None => (labels[k] == c as f32) as u8 as f32,
    }
}

/// The dense target row of class `c` in a block, if the target is dense.
#[inline(always)]
fn dense_row<'a>(fp: &FocalProblem<'a>, (b, n0, len): Job, c: usize) -> Option<&'a [f32]> {
    let p = &fp.base;
    match p.target {
        Target::Dense(t) => Some(&t[(b * p.classes + c) * p.pixels + n0..][..len]),
        Target::Indices(_) => None,
    }
}

/// `(a, m, bce)` of one element, see the module docs: `loss = a·m·bce`.
#[inline(always)]
fn terms<const FMA: bool>(fp: &FocalProblem, x: f32, t: f32) -> (f32, f32, f32) {
    let bce = x - x * t - log_sigmoid::<FMA>(x);
    let m = exp::<FMA>(fp.gamma * log_sigmoid::<FMA>(-(2.0 * t - 1.0) * x));
    let a = match fp.alpha {
        Some(alpha) => alpha * t + (1.0 - alpha) * (1.0 - t),
        None => 1.0,
    };
    (a, m, bce)
}

/// `∂loss/∂x` of one element, see the module docs.
#[inline(always)]
fn gradient<const FMA: bool>(fp: &FocalProblem, x: f32, t: f32) -> f32 {
    let (a, m, bce) = terms::<FMA>(fp, x, t);
    let s = 2.0 * t - 1.0;
    let sigma_x = 1.0 / (1.0 + exp::<FMA>(-x));
    // σ(−z) with z = −s·x.
    let sigma_minus_z = 1.0 / (1.0 + exp::<FMA>(-s * x));
    a * m * (sigma_x - t - fp.gamma * s * sigma_minus_z * bce)
}

/// One job of [`forward`]: per class, `Σ v·loss` over its pixels.
#[inline(always)]
fn forward_job<const FMA: bool>(fp: &FocalProblem, (b, start, count): Job) -> Vec<f64> {
    let p = &fp.base;
    let (c_count, n) = (p.classes, p.pixels);
    let mut sums = vec![0.0f64; c_count];
    let (mut w, mut labels) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
    for (n0, len, _) in blocks(start, count) {
        load_aux(p, (b, n0, len), &mut w, &mut labels);
        for (c, sum) in sums.iter_mut().enumerate() {
            let x = &p.x[(b * c_count + c) * n + n0..][..len];
            let dense = dense_row(fp, (b, n0, len), c);
            let mut acc = [0.0f32; BLOCK];
            for k in 0..len {
                let (a, m, bce) = terms::<FMA>(fp, x[k], target_at(dense, &labels, c, k));
                acc[k] = a * m * bce * w[k];
            }
            *sum += acc[..len].iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    sums
}

/// One job of [`backward`]: `∂(Σ_{b,c} grad[b, c]·Σ_pixels v·loss)/∂x` into `out`.
#[inline(always)]
fn backward_job<const FMA: bool>(
    fp: &FocalProblem,
    grad: &[f32],
    (b, start, count): Job,
    out: &mut [&mut [f32]],
) {
    let p = &fp.base;
    let (c_count, n) = (p.classes, p.pixels);
    let (mut w, mut labels) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
    for (n0, len, local) in blocks(start, count) {
        load_aux(p, (b, n0, len), &mut w, &mut labels);
        for (c, row) in out.iter_mut().enumerate() {
            let g = grad[b * c_count + c];
            let x = &p.x[(b * c_count + c) * n + n0..][..len];
            let dense = dense_row(fp, (b, n0, len), c);
            let o = &mut row[local..local + len];
            for k in 0..len {
                o[k] = g * w[k] * gradient::<FMA>(fp, x[k], target_at(dense, &labels, c, k));
            }
        }
    }
}

/// Per (sample, class): `Σ_pixels v·loss`, `[batch, class]`.
pub(super) fn forward(fp: &FocalProblem) -> Vec<f32> {
    let isa = Isa::best();
    let c_count = fp.base.classes;
    let mut out = vec![0.0f64; fp.base.batch * c_count];
    for ((b, _, _), sums) in map_jobs(&fp.base, |job| dispatch(isa, ForwardJob { fp, job })) {
        for (c, s) in sums.into_iter().enumerate() {
            out[b * c_count + c] += s;
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// The gradient with respect to `x` of `Σ_{b,c} grad[b, c]·sums[b, c]`.
pub(super) fn backward(fp: &FocalProblem, grad: &[f32]) -> Vec<f32> {
    let isa = Isa::best();
    write_jobs(&fp.base, |job, out| {
        dispatch(isa, BackwardJob { fp, grad, job, out })
    })
}

kernel_job!(ForwardJob<'a, 'b> { fp: &'a FocalProblem<'b>, job: Job } -> Vec<f64>
    = forward_job::<FMA>(fp, job));

kernel_job!(BackwardJob<'a, 'b, 'g, 'o, 'r> {
    fp: &'a FocalProblem<'b>,
    grad: &'g [f32],
    job: Job,
    out: &'o mut [&'r mut [f32]],
} -> () = backward_job::<FMA>(fp, grad, job, out));

#[cfg(test)]
mod tests {
    use super::super::common::Labels;
    use super::*;
    use crate::activation::Activation;
    use crate::kernels::input::Terms;

    /// The sums against an `f64` computation of the formula, and the gradient against finite
    /// differences of it, for dense and index targets, with and without `alpha` and a mask.
    #[test]
    fn matches_the_formula() {
        let (batch, classes, pixels) = (2, 3, 5);
        let x: Vec<f32> = (0..batch * classes * pixels)
            .map(|i| (i as f32 * 0.77).sin() * 4.0)
            .collect();
        let labels = [0i64, 2, 1, 1, 0, 2, 2, 0, 1, 0];
        let dense: Vec<f32> = (0..x.len()).map(|i| ((i * 7) % 5) as f32 / 4.0).collect();
        let valid = [1.0f32, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0];
        let grad: Vec<f32> = (0..batch * classes).map(|i| (i as f32).cos()).collect();
        for (target, alpha, gamma, valid) in [
            (Target::Indices(Labels::I64(&labels)), None, 2.0, None),
            (
                Target::Indices(Labels::I64(&labels)),
                Some(0.25),
                1.5,
                Some(&valid[..]),
            ),
            (Target::Dense(&dense), None, 2.0, None),
            (Target::Dense(&dense), Some(0.7), 0.0, Some(&valid[..])),
        ] {
            let fp = FocalProblem {
                base: Problem {
                    x: &x,
                    target,
                    valid,
                    batch,
                    classes,
                    pixels,
                    activation: Activation::Sigmoid,
                    terms: Terms::Linear,
                },
                gamma,
                alpha,
            };
            let reference = |x: &[f32]| {
                let ls = |v: f64| -(1.0 + (-v).exp()).ln();
                let mut out = vec![0.0f64; batch * classes];
                for b in 0..batch {
                    for c in 0..classes {
                        for px in 0..pixels {
                            let i = (b * classes + c) * pixels + px;
                            let t = match target {
                                Target::Dense(t) => t[i] as f64,
                                Target::Indices(_) => {
                                    (labels[b * pixels + px] as usize == c) as u8 as f64
                                }
                            };
                            let v = valid.map_or(1.0, |v| v[b * pixels + px] as f64);
                            let xi = x[i] as f64;
                            let bce = xi - xi * t - ls(xi);
                            let m = (gamma as f64 * ls(-(2.0 * t - 1.0) * xi)).exp();
                            let a =
                                alpha.map_or(1.0, |a| a as f64 * t + (1.0 - a as f64) * (1.0 - t));
                            out[b * classes + c] += v * a * m * bce;
                        }
                    }
                }
                out
            };
            let ours = forward(&fp);
            for (a, b) in ours.iter().zip(reference(&x)) {
                assert!((*a as f64 - b).abs() < 1e-5 * b.abs().max(1.0), "{ours:?}");
            }
            let dx = backward(&fp, &grad);
            let objective = |x: &[f32]| -> f64 {
                reference(x)
                    .iter()
                    .zip(&grad)
                    .map(|(r, g)| r * *g as f64)
                    .sum()
            };
            for i in 0..x.len() {
                let h = 1e-3f32;
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (objective(&up) - objective(&down)) / (2.0 * h as f64);
                assert!(
                    (fd - dx[i] as f64).abs() < 2e-3,
                    "x[{i}]: {} vs {fd}",
                    dx[i]
                );
            }
        }
    }
}
