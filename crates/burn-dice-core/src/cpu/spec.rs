//! A kernel call described by owned values: what each release line's glue hands through its
//! backend (an autodiff node's state, a backend extension's arguments) and turns into a
//! borrowed [`Problem`] and [`Term`] where the data is at hand.

use super::{CeProblem, FocalProblem, Problem, Target, Term};
use crate::{Activation, Terms};

/// The per-pixel term summed beside the statistics, with its options owned.
#[derive(Debug, Clone, PartialEq)]
pub enum TermSpec {
    /// The statistics alone.
    None,
    /// The cross-entropy of `DiceCELoss` (see [`CeProblem`]).
    Ce {
        /// One weight per class, or none.
        class_weight: Option<Vec<f32>>,
        /// The weight of the positive term (single channel).
        pos_weight: f32,
        /// `ε`: the target becomes `(1 − ε)·t + ε/C`.
        label_smoothing: f32,
    },
    /// The focal term of `DiceFocalLoss` (see [`FocalProblem`]).
    Focal {
        /// `γ`, the focusing exponent.
        gamma: f32,
        /// `α`, the weight of the positive class, or no weighting.
        alpha: Option<f32>,
    },
}

/// Everything a kernel call needs besides the data.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// `[batch, class, pixels]`.
    pub dims: [usize; 3],
    /// The activation applied to the input first.
    pub activation: Activation,
    /// Which per-pixel terms the statistics sum.
    pub terms: Terms,
    /// The term summed in the same pass.
    pub term: TermSpec,
}

impl Spec {
    /// The problem of `x` (empty for a backward pass that does not read it) against `target`,
    /// counting the pixels of `valid` (`[batch, pixels]`, or every pixel).
    pub fn problem<'a>(
        &self,
        x: &'a [f32],
        target: Target<'a>,
        valid: Option<&'a [f32]>,
    ) -> Problem<'a> {
        let [batch, classes, pixels] = self.dims;
        Problem {
            x,
            target,
            valid,
            batch,
            classes,
            pixels,
            activation: self.activation,
            terms: self.terms,
        }
    }

    /// The term of `base` (the term reads `base`'s data).
    pub fn term<'a>(&'a self, base: &Problem<'a>) -> Term<'a> {
        match &self.term {
            TermSpec::None => Term::None,
            TermSpec::Ce {
                class_weight,
                pos_weight,
                label_smoothing,
            } => Term::Ce(CeProblem {
                base: *base,
                class_weight: class_weight.as_deref(),
                pos_weight: *pos_weight,
                label_smoothing: *label_smoothing,
            }),
            TermSpec::Focal { gamma, alpha } => Term::Focal(FocalProblem {
                base: *base,
                gamma: *gamma,
                alpha: *alpha,
            }),
        }
    }
}
