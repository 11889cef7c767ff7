//! The focal term of `DiceFocalLoss` (Lin et al., ICCV 2017, as MONAI's sigmoid `FocalLoss`),
//! summed in the statistics' pass (a [`PixelTerm`] of `stats.rs`): per (sample, class) the sum
//! over the pixels of `v · loss`, and the closed-form gradient added to the statistics' in
//! their backward pass.
//!
//! Per element, with `t` the per-channel target (one-hot for class indices), `v` the validity
//! weight, `s = 2t − 1`, `z = −s·x`, `ls = ln σ` (stable):
//! `bce = x − x·t − ls(x)`, `m = e^(γ·ls(z))` (`(1 − p_t)^γ`), `a = α·t + (1 − α)(1 − t)` (or 1),
//! `loss = a·m·bce`, and `∂loss/∂x = a·m·(σ(x) − t − γ·s·σ(−z)·bce)`.

use super::common::{exp, ln, load_aux, Problem, Target, BLOCK};
use super::jobs::Job;
use super::stats::PixelTerm;

/// One focal problem: the data of `base` (its activation and `terms` are not read) and
/// the options of the term.
#[derive(Debug, Clone, Copy)]
pub struct FocalProblem<'a> {
    /// The input, target and validity weights (the same as the statistics').
    pub base: Problem<'a>,
    /// `γ`, the focusing exponent.
    pub gamma: f32,
    /// `α`, the weight of the positive class, or no weighting.
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

/// Scratch space of one job: the validity weights and labels of a block.
pub(super) struct Block {
    w: [f32; BLOCK],
    labels: [f32; BLOCK],
}

/// The focal term as a term of the statistics' pass: one row, per class `Σ v·loss`.
impl PixelTerm for FocalProblem<'_> {
    const ROWS: usize = 1;
    type Scratch = Block;

    fn scratch(&self) -> Block {
        Block {
            w: [0.0; BLOCK],
            labels: [0.0; BLOCK],
        }
    }

    #[inline(always)]
    fn forward_block<const FMA: bool>(&self, s: &mut Block, (b, n0, len): Job, sums: &mut [f64]) {
        let p = &self.base;
        let (c_count, n) = (p.classes, p.pixels);
        load_aux(p, (b, n0, len), &mut s.w, &mut s.labels);
        for (c, sum) in sums.iter_mut().enumerate() {
            let x = &p.x[(b * c_count + c) * n + n0..][..len];
            let dense = dense_row(self, (b, n0, len), c);
            let mut acc = [0.0f32; BLOCK];
            for k in 0..len {
                let (a, m, bce) = terms::<FMA>(self, x[k], target_at(dense, &s.labels, c, k));
                acc[k] = a * m * bce * s.w[k];
            }
            *sum += acc[..len].iter().map(|&v| v as f64).sum::<f64>();
        }
    }

    #[inline(always)]
    fn backward_block<const FMA: bool>(
        &self,
        s: &mut Block,
        (b, n0, len): Job,
        local: usize,
        g: &impl Fn(usize, usize) -> f32,
        out: &mut [&mut [f32]],
    ) {
        let p = &self.base;
        let (c_count, n) = (p.classes, p.pixels);
        load_aux(p, (b, n0, len), &mut s.w, &mut s.labels);
        for (c, row) in out.iter_mut().enumerate() {
            let g = g(0, c);
            let x = &p.x[(b * c_count + c) * n + n0..][..len];
            let dense = dense_row(self, (b, n0, len), c);
            let o = &mut row[local..local + len];
            for k in 0..len {
                let t = target_at(dense, &s.labels, c, k);
                o[k] += g * s.w[k] * gradient::<FMA>(self, x[k], t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::Labels;
    use super::*;
    use crate::cpu::stats::{self, Term};
    use crate::Activation;
    use crate::Terms;

    /// Per (sample, class) `Σ v·loss`, `[batch, class]`: the term's row of the statistics'
    /// pass.
    fn forward(fp: &FocalProblem) -> Vec<f32> {
        let (batch, classes) = (fp.base.batch, fp.base.classes);
        let sums = stats::forward(&fp.base, &Term::Focal(*fp)).sums;
        sums[3 * batch * classes..].to_vec()
    }

    /// The input's gradient of `Σ grad[b, c]·sums[b, c]` through the statistics' backward pass
    /// (the gradient of `I`, `P`, `T` zero).
    fn backward(fp: &FocalProblem, grad: &[f32]) -> Vec<f32> {
        let (batch, classes) = (fp.base.batch, fp.base.classes);
        let mut full = vec![0.0f32; 3 * batch * classes];
        full.extend_from_slice(grad);
        stats::backward(&fp.base, &Term::Focal(*fp), &full)
    }

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
