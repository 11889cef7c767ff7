//! The cross-entropy term of `DiceCELoss`, summed in the statistics' pass (a
//! [`PixelTerm`] of `stats.rs`): per sample the sums of the pixel losses and of their weights,
//! block by block on the data the pass has read, and the closed-form gradient added to the
//! statistics' in their backward pass.
//!
//! Per pixel, with `w` the class weights (ones without `ce_weight`), `ε` the label smoothing,
//! `C` the class count, `v` the validity weight and `log p = log_softmax(x)`:
//! - class indices `y`: `loss = −v·((1 − ε)·w_y·log p_y + ε/C · Σ_c w_c log p_c)`, `norm = v·w_y`;
//!   `∂loss/∂x_k = v·((1 − ε)·w_y·(p_k − [y = k]) + ε/C·(p_k Σ_c w_c − w_k))`;
//! - dense targets: `t' = (1 − ε)·t + ε/C`, `loss = −v·Σ_c w_c t'_c log p_c`, `norm = v`;
//!   `∂loss/∂x_k = v·(p_k Σ_c w_c t'_c − w_k t'_k)`;
//! - one channel (binary cross-entropy with logits, `π` the positive weight):
//!   `loss = −v·(π·t·log σ(x) + (1 − t)·log σ(−x))`, `norm = v`;
//!   `∂loss/∂x = v·(σ(x)·(π·t + 1 − t) − π·t)`.
//!
//! The softmax (or the sigmoid) is the statistics' own where their activation is the same:
//! `log p_c = x_c − max − ln Σ e` from the `max` and `Σ e` of their forward pass (one `ln` per
//! pixel), and `p` from their probabilities in the backward pass (nothing to recompute). With
//! another activation the term computes its own.

use macerator::Simd;

use super::common::{normalize, softmax_exps, Problem, Target, BLOCK};
use super::jobs::Job;
use super::simd::{lanes, ln, load, neg, sigmoid, splat, store, sum_f64, Logistic};
use super::term::{BlockData, PixelTerm};
use crate::Activation;

/// One cross-entropy problem: the data of `base` (its activation and `terms` are not
/// read) and the options of the term.
#[derive(Debug, Clone, Copy)]
pub struct CeProblem<'a> {
    /// The input, target and validity weights (the same as the statistics').
    pub base: Problem<'a>,
    /// One weight per class (`ce_weight`), or ones.
    pub class_weight: Option<&'a [f32]>,
    /// The weight of the positive term of the single-channel case.
    pub pos_weight: f32,
    /// `ε`: the target becomes `(1 − ε)·t + ε/C`.
    pub label_smoothing: f32,
}

/// Scratch space of one job: the term's own softmax of a block, where the statistics' is not
/// one.
pub(super) struct Block {
    /// `[class][BLOCK]`: `e^(x − max)`, then (backward) the probabilities.
    e: Vec<f32>,
    max: [f32; BLOCK],
    sum: [f32; BLOCK],
    /// `Σ_c w_c`.
    weight_total: f32,
}

/// The class weight of class `c`.
#[inline(always)]
fn class_weight(cp: &CeProblem, c: usize) -> f32 {
    cp.class_weight.map_or(1.0, |w| w[c])
}

impl CeProblem<'_> {
    /// The rows of the block: `(x of class c, dense target of class c)`.
    #[inline(always)]
    fn rows(&self, (b, n0, len): Job, c: usize) -> (&[f32], Option<&[f32]>) {
        let p = &self.base;
        let at = (b * p.classes + c) * p.pixels + n0;
        let t = match p.target {
            Target::Dense(t) => Some(&t[at..][..len]),
            Target::Indices(_) => None,
        };
        (&p.x[at..][..len], t)
    }

    /// The block's softmax into `s.e` (`e^(x − max)`), `s.max` and `s.sum`.
    #[inline(always)]
    fn own_softmax<S: Simd>(&self, s: &mut Block, block @ (_, _, len): Job) {
        let row = |c: usize| self.rows(block, c).0;
        softmax_exps::<S>(
            self.base.classes,
            len,
            row,
            &mut s.e,
            &mut s.max,
            &mut s.sum,
        );
    }
}

/// The cross-entropy as a term of the statistics' pass: row 0 the sample's `Σ loss`, row 1
/// its `Σ norm`, both in class 0 (the other classes' entries stay 0, so that a sum over the
/// classes gives them, as the CubeCL kernels' per-class rows do).
impl PixelTerm for CeProblem<'_> {
    const ROWS: usize = 2;
    type Scratch = Block;

    fn scratch(&self) -> Block {
        let classes = self.base.classes;
        Block {
            e: vec![0.0; classes * BLOCK],
            max: [0.0; BLOCK],
            sum: [0.0; BLOCK],
            weight_total: (0..classes).map(|c| class_weight(self, c)).sum(),
        }
    }

    #[inline(always)]
    fn forward_block<S: Simd>(
        &self,
        s: &mut Block,
        block @ (_, _, len): Job,
        data: &BlockData,
        sums: &mut [f64],
    ) {
        let c_count = self.base.classes;
        let (one, zero) = (splat::<S>(1.0), splat::<S>(0.0));
        let eps = splat::<S>(self.label_smoothing);
        let smooth = splat::<S>(self.label_smoothing / c_count as f32);
        let (mut loss_acc, mut norm_acc) = (zero, zero);
        if let (Target::Dense(_), 1) = (self.base.target, c_count) {
            let (x, t) = self.rows(block, 0);
            let t = t.expect("a dense target");
            let shared = data.shared(Activation::Sigmoid, 0);
            let pw = splat::<S>(self.pos_weight);
            for k in (0..len).step_by(lanes::<S>()) {
                let (xk, tk, w) = (load::<S>(x, k), load::<S>(t, k), load::<S>(data.w, k));
                let l = match shared {
                    Some(p) => Logistic::of_sigmoid(load::<S>(p, k)),
                    None => Logistic::of(xk),
                };
                let loss = (pw * tk).mul_add(l.ln_p(xk), (one - tk) * l.ln_q(xk));
                loss_acc = loss.mul_add(neg(w), loss_acc);
                norm_acc += w;
            }
        } else {
            // `max` and `Σ e` of each pixel: the statistics' softmax, or the term's own.
            let (max, sum) = match data.softmax {
                Some((max, sum)) => (&max[..len], &sum[..len]),
                None => {
                    self.own_softmax::<S>(s, block);
                    (&s.max[..len], &s.sum[..len])
                }
            };
            // `lse = max + ln Σ e`, then the per-pixel sums class by class (each loop over
            // contiguous rows), then the block's totals.
            let (mut lse, mut acc) = ([0.0f32; BLOCK], [[0.0f32; BLOCK]; 3]);
            let lse = &mut lse[..len];
            for k in (0..len).step_by(lanes::<S>()) {
                store(lse, k, load::<S>(max, k) + ln(load::<S>(sum, k)));
            }
            let [loss, norm, all] = &mut acc;
            let (loss, norm, all) = (&mut loss[..len], &mut norm[..len], &mut all[..len]);
            match self.base.target {
                Target::Dense(_) => {
                    for c in 0..c_count {
                        let (x, t) = self.rows(block, c);
                        let t = t.expect("a dense target");
                        let wc = splat::<S>(class_weight(self, c));
                        for k in (0..len).step_by(lanes::<S>()) {
                            let ts = load::<S>(t, k).mul_add(one - eps, smooth);
                            let logp = load::<S>(x, k) - load(lse, k);
                            store(loss, k, (wc * ts).mul_add(logp, load(loss, k)));
                        }
                    }
                    for k in (0..len).step_by(lanes::<S>()) {
                        let w = load::<S>(data.w, k);
                        loss_acc = load::<S>(loss, k).mul_add(neg(w), loss_acc);
                        norm_acc += w;
                    }
                }
                Target::Indices(_) => {
                    // `loss`: `Σ [y = c] w_c log p_c`, `norm`: `w_y`, `all`: `Σ_c w_c log p_c`.
                    for c in 0..c_count {
                        let x = self.rows(block, c).0;
                        let (wc, class) = (splat::<S>(class_weight(self, c)), splat(c as f32));
                        for k in (0..len).step_by(lanes::<S>()) {
                            let logp = load::<S>(x, k) - load(lse, k);
                            // Masks are not `Copy`: one comparison each (merged by the compiler).
                            let hit = || load::<S>(data.labels, k).eq(class);
                            store(loss, k, load::<S>(loss, k) + hit().select(wc * logp, zero));
                            store(norm, k, load::<S>(norm, k) + hit().select(wc, zero));
                            store(all, k, wc.mul_add(logp, load(all, k)));
                        }
                    }
                    for k in (0..len).step_by(lanes::<S>()) {
                        let w = load::<S>(data.w, k);
                        let l = (one - eps).mul_add(load(loss, k), smooth * load(all, k));
                        loss_acc = l.mul_add(neg(w), loss_acc);
                        norm_acc = load::<S>(norm, k).mul_add(w, norm_acc);
                    }
                }
            }
        }
        sums[0] += sum_f64(loss_acc);
        sums[c_count] += sum_f64(norm_acc);
    }

    #[inline(always)]
    fn backward_block<S: Simd>(
        &self,
        s: &mut Block,
        block @ (_, _, len): Job,
        data: &BlockData,
        local: usize,
        g: &impl Fn(usize, usize) -> f32,
        out: &mut [&mut [f32]],
    ) {
        let c_count = self.base.classes;
        let (one, zero) = (splat::<S>(1.0), splat::<S>(0.0));
        let eps = splat::<S>(self.label_smoothing);
        let smooth = splat::<S>(self.label_smoothing / c_count as f32);
        // The loss row's gradient (the norm does not depend on `x`).
        let g = splat::<S>(g(0, 0));
        if let (Target::Dense(_), 1) = (self.base.target, c_count) {
            let (x, t) = self.rows(block, 0);
            let t = t.expect("a dense target");
            let shared = data.shared(Activation::Sigmoid, 0);
            let pw = splat::<S>(self.pos_weight);
            let o = &mut out[0][local..local + len];
            for k in (0..len).step_by(lanes::<S>()) {
                let sigma = match shared {
                    Some(p) => load::<S>(p, k),
                    None => sigmoid(load::<S>(x, k)),
                };
                let (tk, w) = (load::<S>(t, k), load::<S>(data.w, k));
                let pt = pw * tk;
                let d = sigma.mul_add(pt + one - tk, neg(pt));
                store(o, k, (g * w).mul_add(d, load::<S>(o, k)));
            }
            return;
        }
        // The probabilities: the statistics' softmax, or the term's own.
        let own = data.shared(Activation::Softmax, 0).is_none();
        if own {
            self.own_softmax::<S>(s, block);
            normalize::<S>(c_count, len, &mut s.e, &s.sum);
        }
        let p_of = |c: usize| match data.shared(Activation::Softmax, c) {
            Some(p) => p,
            None => &s.e[c * BLOCK..c * BLOCK + len],
        };
        let weight_total = splat::<S>(s.weight_total);
        // Per pixel: `Σ_c w_c t'_c` (dense) or `w_y` (class indices), class by class; then each
        // class's gradient.
        let mut total = [0.0f32; BLOCK];
        let total = &mut total[..len];
        for c in 0..c_count {
            let (t, wc) = (self.rows(block, c).1, splat::<S>(class_weight(self, c)));
            let class = splat::<S>(c as f32);
            for k in (0..len).step_by(lanes::<S>()) {
                let add = match t {
                    Some(t) => wc * load::<S>(t, k).mul_add(one - eps, smooth),
                    None => load::<S>(data.labels, k).eq(class).select(wc, zero),
                };
                store(total, k, load::<S>(total, k) + add);
            }
        }
        for (c, row) in out.iter_mut().enumerate() {
            let (t, p, o) = (self.rows(block, c).1, p_of(c), &mut row[local..local + len]);
            let (wc, class) = (splat::<S>(class_weight(self, c)), splat::<S>(c as f32));
            for k in (0..len).step_by(lanes::<S>()) {
                let (pk, tot) = (load::<S>(p, k), load::<S>(total, k));
                let d = match t {
                    Some(t) => {
                        let ts = load::<S>(t, k).mul_add(one - eps, smooth);
                        pk.mul_add(tot, neg(wc * ts))
                    }
                    None => {
                        let hit = load::<S>(data.labels, k).eq(class).select(one, zero);
                        let main = (one - eps) * tot * (pk - hit);
                        smooth.mul_add(pk.mul_add(weight_total, neg(wc)), main)
                    }
                };
                let gw = g * load::<S>(data.w, k);
                store(o, k, gw.mul_add(d, load::<S>(o, k)));
            }
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

    /// Per sample `[Σ loss, Σ norm]`, `[2, batch]`: the term's rows of the statistics' pass,
    /// summed over the classes.
    fn forward(cp: &CeProblem) -> Vec<f32> {
        let (batch, classes) = (cp.base.batch, cp.base.classes);
        let sums = stats::forward(&cp.base, &Term::Ce(*cp)).sums;
        let at = |r: usize, b: usize| -> f32 {
            (0..classes)
                .map(|c| sums[((3 + r) * batch + b) * classes + c])
                .sum()
        };
        (0..2)
            .flat_map(|r| (0..batch).map(move |b| (r, b)))
            .map(|(r, b)| at(r, b))
            .collect()
    }

    /// The input's gradient of `Σ_b grad[b]·loss_b` through the statistics' backward pass (the
    /// gradient of `I`, `P`, `T` and of the norm zero).
    fn backward(cp: &CeProblem, grad: &[f32]) -> Vec<f32> {
        let (batch, classes) = (cp.base.batch, cp.base.classes);
        let mut full = vec![0.0f32; 5 * batch * classes];
        for b in 0..batch {
            for c in 0..classes {
                full[(3 * batch + b) * classes + c] = grad[b];
            }
        }
        stats::backward(&cp.base, &Term::Ce(*cp), &full)
    }

    /// The loss, its norm and its gradient against an `f64` computation of the formulas at
    /// the top of this module, and the gradient against finite differences of the loss.
    #[test]
    fn matches_the_formulas() {
        let (batch, classes, pixels) = (2, 3, 5);
        let x: Vec<f32> = (0..batch * classes * pixels)
            .map(|i| (i as f32 * 0.77).sin() * 3.0)
            .collect();
        let labels = [0i64, 2, 1, 1, 0, 2, 2, 0, 1, 0];
        let dense: Vec<f32> = (0..x.len()).map(|i| ((i * 7) % 5) as f32 / 4.0).collect();
        let valid = [1.0f32, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0];
        let cw = [0.5f32, 2.0, 1.5];
        let grad = [0.7f32, -1.3];
        // The statistics' softmax is shared with the term; with the sigmoid the term computes
        // its own.
        let (softmax, sigmoid) = (Activation::Softmax, Activation::Sigmoid);
        for (target, weights, eps, valid, activation) in [
            (
                Target::Indices(Labels::I64(&labels)),
                None,
                0.0,
                None,
                softmax,
            ),
            (
                Target::Indices(Labels::I64(&labels)),
                None,
                0.0,
                None,
                sigmoid,
            ),
            (
                Target::Indices(Labels::I64(&labels)),
                Some(&cw[..]),
                0.1,
                Some(&valid[..]),
                softmax,
            ),
            (Target::Dense(&dense), None, 0.0, None, sigmoid),
            (
                Target::Dense(&dense),
                Some(&cw[..]),
                0.2,
                Some(&valid[..]),
                softmax,
            ),
        ] {
            let cp = CeProblem {
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
                class_weight: weights,
                pos_weight: 1.0,
                label_smoothing: eps,
            };
            let reference = |x: &[f32]| {
                let mut out = vec![0.0f64; 2 * batch];
                for b in 0..batch {
                    for px in 0..pixels {
                        let at = |c: usize| (b * classes + c) * pixels + px;
                        let z: f64 = (0..classes).map(|c| (x[at(c)] as f64).exp()).sum();
                        let logp = |c: usize| x[at(c)] as f64 - z.ln();
                        let v = valid.map_or(1.0, |v| v[b * pixels + px] as f64);
                        let w = |c: usize| weights.map_or(1.0, |w| w[c] as f64);
                        let eps = eps as f64;
                        let (loss, norm) = match target {
                            Target::Indices(_) => {
                                let y = labels[b * pixels + px] as usize;
                                let smooth: f64 = (0..classes).map(|c| w(c) * logp(c)).sum();
                                let l =
                                    (1.0 - eps) * w(y) * logp(y) + eps / classes as f64 * smooth;
                                (-l, w(y))
                            }
                            Target::Dense(t) => {
                                let ts = |c: usize| t[at(c)] as f64 * (1.0 - eps) + eps / 3.0;
                                (
                                    -(0..classes).map(|c| w(c) * ts(c) * logp(c)).sum::<f64>(),
                                    1.0,
                                )
                            }
                        };
                        out[b] += v * loss;
                        out[batch + b] += v * norm;
                    }
                }
                out
            };
            let ours = forward(&cp);
            for (a, b) in ours.iter().zip(reference(&x)) {
                assert!((*a as f64 - b).abs() < 1e-5 * b.abs().max(1.0), "{ours:?}");
            }
            let dx = backward(&cp, &grad);
            let objective = |x: &[f32]| {
                let r = reference(x);
                grad[0] as f64 * r[0] + grad[1] as f64 * r[1]
            };
            for i in 0..x.len() {
                let h = 1e-3f32;
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (objective(&up) - objective(&down)) / (2.0 * h as f64);
                assert!(
                    (fd - dx[i] as f64).abs() < 1e-3,
                    "x[{i}]: {} vs {fd}",
                    dx[i]
                );
            }
        }
    }

    #[test]
    fn binary_matches_the_formula() {
        let x = [-30.0f32, -2.0, -0.1, 0.0, 0.4, 3.0, 25.0, 1.0];
        let t = [0.0f32, 1.0, 0.3, 1.0, 0.0, 1.0, 0.0, 1.0];
        // The statistics' sigmoid shared with the term, and the term's own.
        for activation in [Activation::Sigmoid, Activation::None] {
            let cp = CeProblem {
                base: Problem {
                    x: &x,
                    target: Target::Dense(&t),
                    valid: None,
                    batch: 2,
                    classes: 1,
                    pixels: 4,
                    activation,
                    terms: Terms::Linear,
                },
                class_weight: None,
                pos_weight: 2.5,
                label_smoothing: 0.0,
            };
            let log_sigmoid = |v: f64| -(1.0 + (-v).exp()).ln();
            let (ours, dx) = (forward(&cp), backward(&cp, &[1.0, -0.5]));
            for b in 0..2 {
                let mut loss = 0.0;
                for k in 0..4 {
                    let (v, t) = (x[b * 4 + k] as f64, t[b * 4 + k] as f64);
                    loss -= 2.5 * t * log_sigmoid(v) + (1.0 - t) * log_sigmoid(-v);
                    let sigma = 1.0 / (1.0 + (-v).exp());
                    let g = [1.0, -0.5][b] * (sigma * (2.5 * t + 1.0 - t) - 2.5 * t);
                    assert!((dx[b * 4 + k] as f64 - g).abs() < 1e-6, "{dx:?}");
                }
                assert!(
                    (ours[b] as f64 - loss).abs() < 1e-5 * loss.abs().max(1.0),
                    "{ours:?}"
                );
                assert_eq!(ours[2 + b], 4.0);
            }
        }
    }
}
