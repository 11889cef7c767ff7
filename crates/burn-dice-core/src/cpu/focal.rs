//! The focal term of `DiceFocalLoss` (Lin et al., ICCV 2017, as MONAI's sigmoid `FocalLoss`),
//! summed in the statistics' pass (a [`PixelTerm`] of `stats.rs`): per (sample, class) the sum
//! over the pixels of `v · loss`, and the closed-form gradient added to the statistics' in
//! their backward pass.
//!
//! Per element, with `t` the per-channel target (one-hot for class indices), `v` the validity
//! weight, `s = 2t − 1`, `z = −s·x`, `ls = ln σ` (stable):
//! `bce = x − x·t − ls(x)`, `m = e^(γ·ls(z)) = σ(z)^γ` (`(1 − p_t)^γ`),
//! `a = α·t + (1 − α)(1 − t)` (or 1), `loss = a·m·bce`, and
//! `∂loss/∂x = a·m·(σ(x) − t − γ·s·σ(−z)·bce)`.
//!
//! At the cost of one `exp` and one `ln` per element (or one `ln` where the statistics' sigmoid
//! gave `σ(x)`): for a hard target (`t` in {0, 1}: class indices, and dense vectors whose lanes
//! are all 0 or 1) `z = ±x`, so `σ(z)`, `σ(−z)` and `ls(z)` are `σ(x)`'s and `ls(x)`'s own;
//! `σ(z)^γ` is a product for `γ` in {0, 1, 2} (MONAI's default is 2) and `e^(γ·ls(z))`
//! otherwise. Only a soft target's `z` takes its own `exp` and `ln`.

use macerator::Simd;

use super::common::{Problem, Target};
use super::jobs::Job;
use super::simd::{exp, lanes, load, neg, splat, store, sum_f64, Logistic, V};
use super::term::{BlockData, PixelTerm};
use crate::Activation;

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

/// How `σ(z)^γ` is computed.
#[derive(Clone, Copy)]
enum Power {
    /// `γ = 0`: 1.
    Zero,
    /// `γ = 1`: `σ(z)`.
    One,
    /// `γ = 2`: `σ(z)²`.
    Two,
    /// `e^(γ·ls(z))`.
    General(f32),
}

impl Power {
    fn of(gamma: f32) -> Power {
        match gamma {
            0.0 => Power::Zero,
            1.0 => Power::One,
            2.0 => Power::Two,
            g => Power::General(g),
        }
    }
}

/// What the loss and its gradient need of one vector of elements.
struct Element<S: Simd> {
    /// `a·m`.
    am: V<S>,
    /// `bce`.
    bce: V<S>,
    /// `σ(x)`.
    p: V<S>,
    /// `σ(−z)`.
    q_z: V<S>,
    /// `t`.
    t: V<S>,
}

impl FocalProblem<'_> {
    /// The pieces of one vector of elements (see the module docs): `x` the logits, `t` the
    /// targets, `shared` `σ(x)` where the statistics computed it, `hard`: every `t` is 0 or 1.
    #[inline(always)]
    fn element<S: Simd>(
        &self,
        x: V<S>,
        t: V<S>,
        shared: Option<V<S>>,
        hard: bool,
        power: Power,
    ) -> Element<S> {
        let one = splat::<S>(1.0);
        let lx = match shared {
            Some(p) => Logistic::of_sigmoid(p),
            None => Logistic::of(x),
        };
        let bce = x - x * t - lx.ln_p(x);
        // σ(z), ln σ(z) and σ(−z).
        let (p_z, ln_p_z, q_z) = if hard {
            // z = −x where t = 1, x where t = 0.
            // Masks are not `Copy`: one comparison each (the compiler merges them).
            let pos = || t.eq(one);
            (
                pos().select(lx.q, lx.p),
                pos().select(lx.ln_q(x), lx.ln_p(x)),
                pos().select(lx.p, lx.q),
            )
        } else {
            let z = neg(t.mul_add(splat(2.0), neg(one))) * x;
            let lz = Logistic::of(z);
            (lz.p, lz.ln_p(z), lz.q)
        };
        let m = match power {
            Power::Zero => one,
            Power::One => p_z,
            Power::Two => p_z * p_z,
            Power::General(g) => exp(splat::<S>(g) * ln_p_z),
        };
        let a = match self.alpha {
            Some(alpha) => splat::<S>(alpha).mul_add(t, splat::<S>(1.0 - alpha) * (one - t)),
            None => one,
        };
        Element {
            am: a * m,
            bce,
            p: lx.p,
            q_z,
            t,
        }
    }

    /// Calls `f(k, element)` for each vector of the block's class `c` (padded lanes: weight 0).
    #[inline(always)]
    fn each<S: Simd>(
        &self,
        (b, n0, len): Job,
        data: &BlockData,
        c: usize,
        mut f: impl FnMut(usize, V<S>, Element<S>),
    ) {
        let p = &self.base;
        let x = &p.x[(b * p.classes + c) * p.pixels + n0..][..len];
        let shared = data.shared(Activation::Sigmoid, c);
        let power = Power::of(self.gamma);
        let (one, class) = (splat::<S>(1.0), splat::<S>(c as f32));
        let dense = match p.target {
            Target::Dense(t) => Some(&t[(b * p.classes + c) * p.pixels + n0..][..len]),
            Target::Indices(_) => None,
        };
        for k in (0..len).step_by(lanes::<S>()) {
            let xk = load::<S>(x, k);
            let sk = shared.map(|s| load::<S>(s, k));
            let e = match dense {
                Some(t) => {
                    let t = load::<S>(t, k);
                    let hard = (t.eq(splat(0.0)) | t.eq(one)).all();
                    if hard {
                        self.element(xk, t, sk, true, power)
                    } else {
                        self.element(xk, t, sk, false, power)
                    }
                }
                None => {
                    let t = load::<S>(data.labels, k).eq(class).select(one, splat(0.0));
                    self.element(xk, t, sk, true, power)
                }
            };
            f(k, load::<S>(data.w, k), e);
        }
    }
}

/// The focal term as a term of the statistics' pass: one row, per class `Σ v·loss`.
impl PixelTerm for FocalProblem<'_> {
    const ROWS: usize = 1;
    type Scratch = ();

    fn scratch(&self) {}

    #[inline(always)]
    fn forward_block<S: Simd>(&self, _: &mut (), block: Job, data: &BlockData, sums: &mut [f64]) {
        for (c, sum) in sums.iter_mut().enumerate() {
            let mut acc = splat::<S>(0.0);
            self.each::<S>(block, data, c, |_, w, e| {
                acc = (e.am * e.bce).mul_add(w, acc)
            });
            *sum += sum_f64(acc);
        }
    }

    #[inline(always)]
    fn backward_block<S: Simd>(
        &self,
        _: &mut (),
        block @ (_, _, len): Job,
        data: &BlockData,
        local: usize,
        g: &impl Fn(usize, usize) -> f32,
        out: &mut [&mut [f32]],
    ) {
        let (gamma, one) = (splat::<S>(self.gamma), splat::<S>(1.0));
        for (c, row) in out.iter_mut().enumerate() {
            let g = splat::<S>(g(0, c));
            let o = &mut row[local..local + len];
            self.each::<S>(block, data, c, |k, w, e| {
                // a·m·(σ(x) − t − γ·s·σ(−z)·bce), s = 2t − 1.
                let s = e.t.mul_add(splat(2.0), neg(one));
                let d = e.am * ((e.p - e.t) - gamma * s * e.q_z * e.bce);
                store(o, k, (g * w).mul_add(d, load::<S>(o, k)));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::Labels;
    use super::*;
    use crate::cpu::pass::{self as stats, Term};
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
        // Hard dense targets (every vector 0/1: the fast path of dense targets).
        let hard: Vec<f32> = (0..x.len())
            .map(|i| ((i * 3) % 4 == 0) as u8 as f32)
            .collect();
        let (sigmoid, softmax) = (Activation::Sigmoid, Activation::Softmax);
        // The statistics' sigmoid is shared with the term; with the softmax the term computes
        // its own. γ = 0, 1, 2 by products, 1.5 and 3 through `exp`.
        for (target, alpha, gamma, valid, activation) in [
            (
                Target::Indices(Labels::I64(&labels)),
                None,
                2.0,
                None,
                sigmoid,
            ),
            (
                Target::Indices(Labels::I64(&labels)),
                None,
                2.0,
                None,
                softmax,
            ),
            (
                Target::Indices(Labels::I64(&labels)),
                Some(0.25),
                1.5,
                Some(&valid[..]),
                sigmoid,
            ),
            (
                Target::Indices(Labels::I64(&labels)),
                None,
                1.0,
                Some(&valid[..]),
                softmax,
            ),
            (Target::Dense(&dense), None, 2.0, None, sigmoid),
            (
                Target::Dense(&dense),
                Some(0.7),
                0.0,
                Some(&valid[..]),
                softmax,
            ),
            (Target::Dense(&hard), None, 3.0, None, sigmoid),
            (
                Target::Dense(&hard),
                Some(0.4),
                2.0,
                Some(&valid[..]),
                softmax,
            ),
        ] {
            let fp = FocalProblem {
                base: Problem {
                    x: &x,
                    target,
                    valid,
                    batch,
                    classes,
                    pixels,
                    activation,
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
