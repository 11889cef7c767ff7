//! The entry points of the fused CPU kernels: the [`Term`] summed beside the statistics (none,
//! the cross-entropy of `ce.rs` or the focal term of `focal.rs`), chosen at run time, and the
//! statistics' pass of `stats.rs` run with it, forward and backward, at the best instruction set
//! of this CPU. The one module that names the concrete terms: the pass knows them through
//! [`PixelTerm`](super::term::PixelTerm) alone.

use super::ce::CeProblem;
use super::common::Problem;
use super::focal::FocalProblem;
use super::isa::Isa;
use super::stats::{self, Sums};
use super::term::{NoTerm, PixelTerm};

/// The term a statistics pass sums beside `I`, `P` and `T`, with its options and the same data.
#[derive(Debug, Clone, Copy)]
pub enum Term<'a> {
    /// None.
    None,
    /// The cross-entropy: 2 rows, the sample's `Σ loss` and `Σ norm` in class 0 (0 elsewhere).
    Ce(CeProblem<'a>),
    /// The focal term: 1 row, per class `Σ v·loss`.
    Focal(FocalProblem<'a>),
}

impl Term<'_> {
    /// The rows it adds to the output.
    pub fn rows(&self) -> usize {
        match self {
            Term::None => NoTerm::ROWS,
            Term::Ce(_) => CeProblem::ROWS,
            Term::Focal(_) => FocalProblem::ROWS,
        }
    }
}

/// `$body` with `$t` the [`PixelTerm`] of `$term`.
macro_rules! with_term {
    ($term:expr, $t:ident => $body:expr) => {
        match $term {
            Term::None => {
                let $t = &NoTerm;
                $body
            }
            Term::Ce($t) => $body,
            Term::Focal($t) => $body,
        }
    };
}

/// The statistics of `problem` and the sums of `term` (whose data is `problem`'s).
pub fn forward(problem: &Problem, term: &Term) -> Sums {
    forward_on(Isa::best(), problem, term)
}

/// [`forward`] compiled for `isa`, which the CPU must support.
pub(super) fn forward_on(isa: Isa, problem: &Problem, term: &Term) -> Sums {
    with_term!(term, t => stats::forward_on(isa, problem, t, None))
}

/// [`forward`], and the probabilities (the input's size), for [`backward_stored`].
pub fn forward_storing(problem: &Problem, term: &Term) -> (Sums, Vec<f32>) {
    forward_storing_on(Isa::best(), problem, term)
}

/// [`forward_storing`] compiled for `isa`, which the CPU must support.
pub(super) fn forward_storing_on(isa: Isa, problem: &Problem, term: &Term) -> (Sums, Vec<f32>) {
    with_term!(term, t => stats::forward_storing_on(isa, problem, t))
}

/// The gradient with respect to `x` of `Σ g_I·I + g_P·P + g_T·T` and of the rows of `term`,
/// for `grad` = `[3 + rows, batch, class]`, the activation recomputed from `x` (the formulas:
/// `stats::backward_on`).
pub fn backward(problem: &Problem, term: &Term, grad: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; problem.x.len()];
    backward_on(Isa::best(), problem, term, grad, &mut dx, false);
    dx
}

/// [`backward`] from the probabilities that [`forward_storing`] stored in `probs`, overwritten
/// in place by the gradient: no activation to recompute and no new buffer. `problem.x` is read
/// only by a `term`.
pub fn backward_stored(problem: &Problem, term: &Term, grad: &[f32], probs: &mut [f32]) {
    backward_on(Isa::best(), problem, term, grad, probs, true);
}

/// The backward pass compiled for `isa` (which the CPU must support) into `out`; `stored`: see
/// [`backward_stored`].
pub(super) fn backward_on(
    isa: Isa,
    problem: &Problem,
    term: &Term,
    grad: &[f32],
    out: &mut [f32],
    stored: bool,
) {
    with_term!(term, t => stats::backward_on(isa, problem, t, grad, out, stored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::common::{Labels, Target};
    use crate::{Activation, Terms};

    #[test]
    fn every_instruction_set_gives_the_same_numbers() {
        // 2 samples, 3 classes, 1000 pixels: full blocks and a partial one (not a multiple of
        // any lane count: the padded tail), for the statistics alone and with each term.
        let (batch, classes, pixels) = (2, 3, 1000);
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 4.0;
        let x: Vec<f32> = (0..batch * classes * pixels)
            .map(|i| wave(i, 0.37))
            .collect();
        let dense: Vec<f32> = (0..x.len())
            .map(|i| (wave(i, 0.11) > 0.0) as u8 as f32)
            .collect();
        // Soft targets: the focal term's general path.
        let soft: Vec<f32> = (0..x.len()).map(|i| wave(i, 0.07).abs() / 4.0).collect();
        let labels: Vec<i32> = (0..batch * pixels).map(|i| (i * 7 % 3) as i32).collect();
        let valid: Vec<f32> = (0..batch * pixels)
            .map(|i| (i % 5 != 0) as u8 as f32)
            .collect();
        let grad: Vec<f32> = (0..5 * batch * classes).map(|i| wave(i, 1.3)).collect();
        let weights = [0.5f32, 2.0, 1.0];
        for activation in [Activation::Sigmoid, Activation::Softmax] {
            for (target, valid) in [
                (Target::Dense(&dense), None),
                (Target::Dense(&soft), Some(&valid[..])),
                (Target::Indices(Labels::I32(&labels)), Some(&valid[..])),
            ] {
                let problem = Problem {
                    x: &x,
                    target,
                    valid,
                    batch,
                    classes,
                    pixels,
                    activation,
                    terms: Terms::Squared,
                };
                let terms = [
                    Term::None,
                    Term::Ce(CeProblem {
                        base: problem,
                        class_weight: Some(&weights),
                        pos_weight: 1.0,
                        label_smoothing: 0.1,
                    }),
                    Term::Focal(FocalProblem {
                        base: problem,
                        gamma: 2.0,
                        alpha: Some(0.25),
                    }),
                    Term::Focal(FocalProblem {
                        base: problem,
                        gamma: 1.5,
                        alpha: None,
                    }),
                ];
                for term in &terms {
                    let grad = &grad[..(3 + term.rows()) * batch * classes];
                    let run = |isa| {
                        let (sums, mut probs) = forward_storing_on(isa, &problem, term);
                        assert_eq!(sums, forward_on(isa, &problem, term));
                        let mut dx = vec![0.0; x.len()];
                        backward_on(isa, &problem, term, grad, &mut dx, false);
                        backward_on(isa, &problem, term, grad, &mut probs, true);
                        (sums, dx, probs)
                    };
                    let (sums, dx, from_probs) = run(Isa::Scalar);
                    assert!(sums.valid_data);
                    let what = |isa: Isa| format!("{isa:?} {activation:?} {target:?} {term:?}");
                    for isa in Isa::available() {
                        let (s, d, p) = run(isa);
                        let close = |a: &[f32], b: &[f32], tol: f32| {
                            a.iter()
                                .zip(b)
                                .all(|(a, b)| (a - b).abs() <= tol * (1.0 + b.abs()))
                        };
                        assert!(close(&s.sums, &sums.sums, 1e-5), "{} sums", what(isa));
                        assert!(close(&d, &dx, 1e-5), "{} gradient", what(isa));
                        assert!(close(&p, &from_probs, 1e-5), "{} stored", what(isa));
                        assert!(close(&p, &dx, 1e-5), "{} stored vs recomputed", what(isa));
                    }
                }
            }
        }
    }
}
