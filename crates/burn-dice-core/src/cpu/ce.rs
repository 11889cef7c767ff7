//! The cross-entropy term of `DiceCELoss`, summed in the statistics' pass (a
//! [`PixelTerm`] of `stats.rs`): per sample the sums of the pixel losses and of their weights,
//! block by block on the data the pass has read, and the closed-form gradient added to the
//! statistics' in their backward pass, the softmax recomputed.
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

use super::common::{exp, ln, load_aux, softmax_exps, Problem, Target, BLOCK};
use super::jobs::Job;
use super::stats::PixelTerm;

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

/// Scratch space of one job.
pub(super) struct Block {
    /// `[class][BLOCK]`: the exponentials `e^(x − max)` (multi-class) or `x` (one channel).
    e: Vec<f32>,
    /// Per pixel, forward pass: `max + ln Σ e` (multi-class) or `ln(1 + e^−|x|)` (one channel).
    lse: [f32; BLOCK],
    /// Per pixel, backward pass, multi-class: `1 / Σ e`.
    inv: [f32; BLOCK],
    w: [f32; BLOCK],
    labels: [f32; BLOCK],
    /// `Σ_c w_c`.
    weight_total: f32,
}

impl Block {
    fn new(cp: &CeProblem) -> Self {
        let classes = cp.base.classes;
        Block {
            weight_total: (0..classes).map(|c| class_weight(cp, c)).sum(),
            e: vec![0.0; classes * BLOCK],
            lse: [0.0; BLOCK],
            inv: [0.0; BLOCK],
            w: [0.0; BLOCK],
            labels: [0.0; BLOCK],
        }
    }

    /// Loads pixels `n0..n0 + len` of sample `b`: `lse` for the forward pass (`forward`),
    /// `inv` for the backward pass, which needs only one of them.
    #[inline(always)]
    fn load<const FMA: bool>(&mut self, cp: &CeProblem, (b, n0, len): Job, forward: bool) {
        let p = &cp.base;
        let (c_count, n) = (p.classes, p.pixels);
        let row = |c: usize| &p.x[(b * c_count + c) * n + n0..][..len];
        load_aux(p, (b, n0, len), &mut self.w, &mut self.labels);
        if c_count == 1 {
            self.e[..len].copy_from_slice(row(0));
            if forward {
                for (l, &v) in self.lse[..len].iter_mut().zip(row(0)) {
                    *l = ln::<FMA>(1.0 + exp::<FMA>(-v.abs()));
                }
            }
            return;
        }
        let (mut max, mut sum) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
        softmax_exps::<FMA>(c_count, len, row, &mut self.e, &mut max, &mut sum);
        if forward {
            for k in 0..len {
                self.lse[k] = max[k] + ln::<FMA>(sum[k]);
            }
        } else {
            for (i, s) in self.inv[..len].iter_mut().zip(&sum) {
                *i = 1.0 / s;
            }
        }
    }
}

/// The class weight of class `c`.
#[inline(always)]
fn class_weight(cp: &CeProblem, c: usize) -> f32 {
    cp.class_weight.map_or(1.0, |w| w[c])
}

/// The cross-entropy as a term of the statistics' pass: row 0 the sample's `Σ loss`, row 1
/// its `Σ norm`, both in class 0 (the other classes' entries stay 0, so that a sum over the
/// classes gives them, as the CubeCL kernels' per-class rows do).
impl PixelTerm for CeProblem<'_> {
    const ROWS: usize = 2;
    type Scratch = Block;

    fn scratch(&self) -> Block {
        Block::new(self)
    }

    #[inline(always)]
    fn forward_block<const FMA: bool>(&self, s: &mut Block, (b, n0, len): Job, sums: &mut [f64]) {
        let p = &self.base;
        let (c_count, n) = (p.classes, p.pixels);
        let eps = self.label_smoothing;
        s.load::<FMA>(self, (b, n0, len), true);
        let (w, lse, labels) = (&s.w[..len], &s.lse[..len], &s.labels[..len]);
        let mut loss = [0.0f32; BLOCK];
        let mut norm = [0.0f32; BLOCK];
        let (loss, norm) = (&mut loss[..len], &mut norm[..len]);
        match p.target {
            Target::Dense(t) if c_count == 1 => {
                let (x, t) = (&s.e[..len], &t[b * n + n0..][..len]);
                let pw = self.pos_weight;
                for k in 0..len {
                    // log σ(x) = min(x, 0) − ln(1 + e^−|x|), log σ(−x) = min(−x, 0) − …
                    let pos = x[k].min(0.0) - lse[k];
                    let neg = (-x[k]).min(0.0) - lse[k];
                    loss[k] = -(pw * t[k] * pos + (1.0 - t[k]) * neg) * w[k];
                    norm[k] = w[k];
                }
            }
            Target::Dense(t) => {
                for c in 0..c_count {
                    let x = &p.x[(b * c_count + c) * n + n0..][..len];
                    let t = &t[(b * c_count + c) * n + n0..][..len];
                    let wc = class_weight(self, c);
                    for k in 0..len {
                        let ts = t[k] * (1.0 - eps) + eps / c_count as f32;
                        loss[k] -= wc * ts * (x[k] - lse[k]);
                    }
                }
                for (l, w) in loss.iter_mut().zip(w) {
                    *l *= w;
                }
                norm.copy_from_slice(w);
            }
            Target::Indices(_) => {
                let mut picked = [0.0f32; BLOCK];
                let mut smooth = [0.0f32; BLOCK];
                let (picked, smooth) = (&mut picked[..len], &mut smooth[..len]);
                for c in 0..c_count {
                    let x = &p.x[(b * c_count + c) * n + n0..][..len];
                    let (wc, class) = (class_weight(self, c), c as f32);
                    for k in 0..len {
                        let logp = x[k] - lse[k];
                        let hit = labels[k] == class;
                        picked[k] += if hit { wc * logp } else { 0.0 };
                        norm[k] += if hit { wc } else { 0.0 };
                        smooth[k] += wc * logp;
                    }
                }
                for k in 0..len {
                    loss[k] = -((1.0 - eps) * picked[k] + eps / c_count as f32 * smooth[k]) * w[k];
                    norm[k] *= w[k];
                }
            }
        }
        sums[0] += loss.iter().map(|&v| v as f64).sum::<f64>();
        sums[c_count] += norm.iter().map(|&v| v as f64).sum::<f64>();
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
        let eps = self.label_smoothing;
        // The loss row's gradient (the norm does not depend on `x`).
        let g = g(0, 0);
        let weight_total = s.weight_total;
        s.load::<FMA>(self, (b, n0, len), false);
        let (w, labels, inv) = (&s.w[..len], &s.labels[..len], &s.inv[..len]);
        match p.target {
            Target::Dense(t) if c_count == 1 => {
                let (x, t) = (&s.e[..len], &t[b * n + n0..][..len]);
                let pw = self.pos_weight;
                let o = &mut out[0][local..local + len];
                for k in 0..len {
                    let sigma = 1.0 / (1.0 + exp::<FMA>(-x[k]));
                    o[k] += g * w[k] * (sigma * (pw * t[k] + 1.0 - t[k]) - pw * t[k]);
                }
            }
            Target::Dense(t) => {
                // Σ_c w_c t'_c per pixel.
                let mut total = [0.0f32; BLOCK];
                let total = &mut total[..len];
                for c in 0..c_count {
                    let t = &t[(b * c_count + c) * n + n0..][..len];
                    let wc = class_weight(self, c);
                    for k in 0..len {
                        total[k] += wc * (t[k] * (1.0 - eps) + eps / c_count as f32);
                    }
                }
                for c in 0..c_count {
                    let t = &t[(b * c_count + c) * n + n0..][..len];
                    let e = &s.e[c * BLOCK..c * BLOCK + len];
                    let wc = class_weight(self, c);
                    let o = &mut out[c][local..local + len];
                    for k in 0..len {
                        let ts = t[k] * (1.0 - eps) + eps / c_count as f32;
                        o[k] += g * w[k] * (e[k] * inv[k] * total[k] - wc * ts);
                    }
                }
            }
            Target::Indices(_) => {
                // w_y per pixel.
                let mut wy = [0.0f32; BLOCK];
                let wy = &mut wy[..len];
                for c in 0..c_count {
                    let (wc, class) = (class_weight(self, c), c as f32);
                    for k in 0..len {
                        wy[k] += if labels[k] == class { wc } else { 0.0 };
                    }
                }
                let smooth = eps / c_count as f32;
                for (c, row) in out.iter_mut().enumerate() {
                    let e = &s.e[c * BLOCK..c * BLOCK + len];
                    let (wc, class) = (class_weight(self, c), c as f32);
                    let o = &mut row[local..local + len];
                    for k in 0..len {
                        let pk = e[k] * inv[k];
                        let hit = if labels[k] == class { 1.0 } else { 0.0 };
                        let main = (1.0 - eps) * wy[k] * (pk - hit);
                        o[k] += g * w[k] * (main + smooth * (pk * weight_total - wc));
                    }
                }
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
        for (target, weights, eps, valid) in [
            (Target::Indices(Labels::I64(&labels)), None, 0.0, None),
            (
                Target::Indices(Labels::I64(&labels)),
                Some(&cw[..]),
                0.1,
                Some(&valid[..]),
            ),
            (Target::Dense(&dense), None, 0.0, None),
            (Target::Dense(&dense), Some(&cw[..]), 0.2, Some(&valid[..])),
        ] {
            let cp = CeProblem {
                base: Problem {
                    x: &x,
                    target,
                    valid,
                    batch,
                    classes,
                    pixels,
                    activation: Activation::Softmax,
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
        let cp = CeProblem {
            base: Problem {
                x: &x,
                target: Target::Dense(&t),
                valid: None,
                batch: 2,
                classes: 1,
                pixels: 4,
                activation: Activation::Sigmoid,
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
