//! What every implementation of the family's terms reads and returns: the flattened input and
//! target, the options of the cross-entropy and focal terms, and the statistics with the verdict
//! of the data checks. Plain data: nothing here calls into the losses or the kernels.

use burn::tensor::{backend::Backend, Int, Tensor};

/// A target checked against the input and flattened to rank 3.
#[derive(Debug, Clone)]
pub(crate) enum FlatTarget<B: Backend> {
    /// `[batch, class, pixels]`: dense targets, and the 0/1 labels of a single-channel input.
    Dense(Tensor<B, 3>),
    /// Class indices `[batch, 1, pixels]` for an input of two or more channels; ignored pixels
    /// carry class 0 and are removed through the `valid` mask.
    Indices(Tensor<B, 3, Int>),
}

/// The target as the losses need it.
#[derive(Debug, Clone)]
pub(crate) struct PreparedTarget<B: Backend> {
    pub target: FlatTarget<B>,
    /// `[batch, 1, pixels]`, 1 where the pixel counts and 0 where it is left out (its label is
    /// `ignore_index`, or a spatial mask excludes it). `None`: every pixel counts.
    pub valid: Option<Tensor<B, 3>>,
}

impl<B: Backend> PreparedTarget<B> {
    /// Restricts the pixels that count to those where `mask` (`[batch, 1, pixels]`, 0/1) is 1.
    pub fn masked(mut self, mask: Tensor<B, 3>) -> Self {
        self.valid = Some(match self.valid {
            Some(valid) => valid * mask,
            None => mask,
        });
        self
    }

    /// Whether a dense target or the mask requires a gradient: the kernels give gradients to
    /// the input only, so such targets take the generic path.
    #[cfg_attr(
        not(any(feature = "ndarray", feature = "flex", feature = "cube-kernels")),
        allow(dead_code)
    )]
    pub fn tracked(&self) -> bool {
        let dense = match &self.target {
            FlatTarget::Dense(t) => t.is_require_grad(),
            FlatTarget::Indices(_) => false,
        };
        dense || self.valid.as_ref().is_some_and(|v| v.is_require_grad())
    }
}

/// Which per-pixel terms the three statistics sum: MONAI 1.6's `compute_tp_fp_fn` with its
/// `ord` (2 with `squared_pred`) and `soft_label`. With `p`, `t` the probability and target of
/// one pixel (both times its 0/1 weight):
///
/// | terms | `I` | `P` | `T` | options |
/// |---|---|---|---|---|
/// | [`Terms::Linear`] | `Σ p·t` | `Σ p` | `Σ t` | neither |
/// | [`Terms::Squared`] | `Σ p·t` | `Σ p²` | `Σ t²` | `squared_pred`, with or without `soft_label` |
/// | [`Terms::SoftL1`] | `Σ (|p| + |t| − |p − t|) / 2` | `Σ |p|` | `Σ |t|` | `soft_label` |
///
/// MONAI computes `I = (‖p‖ + ‖t‖ − ‖p − t‖) / 2` from the norms over the whole class, which
/// cancels: in f32, `(1e-20 + 1 − |1e-20 − 1|) / 2` is 0, not `min = 1e-20` (a saturated
/// softmax against a hard target). Every path here sums the pixels' terms in the exact form
/// of [`Terms::soft_intersection`]. With the squared L2 norm that `I` is `Σ p·t` exactly, so `soft_label` changes nothing under `squared_pred`;
/// with targets in `{0, 1}` and `p ∈ [0, 1]`, `(|p| + |t| − |p − t|) / 2 = min(p, t) = p·t`,
/// so it changes nothing on hard labels either (but for the subgradient where `p = t` exactly,
/// see [`Terms::d_soft`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Terms {
    /// `I = Σ p·t`, `P = Σ p`, `T = Σ t`.
    Linear,
    /// `I = Σ p·t`, `P = Σ p²`, `T = Σ t²`.
    Squared,
    /// `I = Σ (|p| + |t| − |p − t|) / 2`, `P = Σ |p|`, `T = Σ |t|`.
    SoftL1,
}

impl Terms {
    /// The terms of a loss's options.
    pub fn new(squared_pred: bool, soft_label: bool) -> Self {
        match (squared_pred, soft_label) {
            (true, _) => Terms::Squared,
            (false, true) => Terms::SoftL1,
            (false, false) => Terms::Linear,
        }
    }

    /// One pixel's [`Terms::SoftL1`] intersection `(|p| + |t| − |p − t|) / 2`, written as
    /// `p·m_p + t·m_t` with its subgradients `m_p = (sgn p − sgn(p − t))/2` and
    /// `m_t = (sgn t + sgn(p − t))/2` (the term is homogeneous of degree 1, so Euler's identity
    /// holds). Each `m` is one of 0, ±1/2, ±1, so the products are exact and the result is the
    /// exact `min(p, t)` for `p, t ≥ 0` (one rounding at `p = t`, none elsewhere).
    #[cfg_attr(not(any(feature = "ndarray", feature = "flex")), allow(dead_code))]
    #[inline(always)]
    pub fn soft_intersection(p: f32, t: f32) -> f32 {
        let s = sgn(p - t);
        p * ((sgn(p) - s) * 0.5) + t * ((sgn(t) + s) * 0.5)
    }

    /// The subgradients of the [`Terms::SoftL1`] terms of one pixel with respect to `p`:
    /// `(∂I/∂p, ∂P/∂p) = ((sgn p − sgn(p − t)) / 2, sgn p)`, with `sgn 0 = 0` as PyTorch's
    /// `sgn` and burn's `sign` (the gradient of `torch.linalg.vector_norm(·, 1)` and of burn's
    /// `abs`). Where `p = t` exactly (a hard target met exactly, as a saturated softmax can)
    /// `∂I/∂p` is `sgn(p) / 2`: half of the `t` the hard formula gives.
    #[cfg_attr(not(any(feature = "ndarray", feature = "flex")), allow(dead_code))]
    #[inline(always)]
    pub fn d_soft(p: f32, t: f32) -> (f32, f32) {
        let (sp, sd) = (sgn(p), sgn(p - t));
        ((sp - sd) * 0.5, sp)
    }
}

/// `sgn v` with `sgn 0 = 0` (and `sgn NaN = 0`), branch-free.
// The CPU kernels' (the CubeCL kernels have their own).
#[cfg_attr(not(any(feature = "ndarray", feature = "flex")), allow(dead_code))]
#[inline(always)]
pub(crate) fn sgn(v: f32) -> f32 {
    f32::from(u8::from(v > 0.0)) - f32::from(u8::from(v < 0.0))
}

/// The options of the cross-entropy term of `DiceCELoss` (formulas: `cpu/ce.rs`).
#[derive(Debug, Clone)]
pub(crate) struct CeOptions<B: Backend> {
    /// One weight per class (`ce_weight`), or none.
    pub class_weight: Option<Tensor<B, 1>>,
    /// The weight of the positive term (single channel; 1 when not set).
    pub pos_weight: f32,
    /// `ε`: the target becomes `(1 − ε)·t + ε/C`.
    pub label_smoothing: f64,
}

/// The options of the focal term of `DiceFocalLoss` (formulas: `cpu/focal.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FocalOptions {
    /// `γ`, the focusing exponent.
    pub gamma: f64,
    /// `α`, the weight of the positive class, or no weighting.
    pub alpha: Option<f64>,
}

/// A per-pixel term that a loss sums beside the statistics: `DiceCELoss`'s cross-entropy,
/// `DiceFocalLoss`'s focal term. A kernel family may compute it in the statistics' pass.
#[derive(Debug, Clone)]
pub(crate) enum Extra<B: Backend> {
    /// The statistics alone.
    None,
    /// The cross-entropy.
    Ce(CeOptions<B>),
    /// The focal term.
    Focal(FocalOptions),
}

/// The sums of an [`Extra`] term.
#[derive(Debug, Clone)]
pub(crate) enum ExtraSums<B: Backend> {
    /// No extra term.
    None,
    /// Per sample, the summed pixel cross-entropies and the summed weights: `[batch]` each.
    Ce([Tensor<B, 1>; 2]),
    /// Per (sample, class), the focal term summed over the pixels: `[batch, class]`.
    Focal(Tensor<B, 2>),
}

/// The per-(sample, class) statistics and what the pass that computed them found in the data.
pub(crate) struct Stats<B: Backend> {
    /// The three `[batch, class]` sums: intersection `I`, prediction `P`, target `T`.
    pub sums: [Tensor<B, 2>; 3],
    /// The data checks of `check_inputs` made by the same pass, if it made them.
    pub verdict: Verdict<B>,
    /// The sums of the [`Extra`] term, if the same pass computed them (else `None`: they are
    /// computed after the verdict is settled, so that no pass reads data that failed a check).
    pub extra: Option<ExtraSums<B>>,
}

/// What a kernel found when it checked the data it read (finite input and dense target, class
/// indices in range).
#[cfg_attr(
    not(all(feature = "cube-kernels", any(feature = "ndarray", feature = "flex"))),
    allow(dead_code)
)]
pub(crate) enum Verdict<B: Backend> {
    /// Not checked: the checks must run elsewhere.
    Unchecked,
    /// Checked on the host: whether everything passed.
    Host(bool),
    /// Checked on the device, not read back yet: `[4]` = number of non-finite input values,
    /// number of dense target values not in `[0, 1]` (NaN and infinities included), the largest and the smallest class index
    /// (both 0 for dense targets).
    Device(Tensor<B, 1>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_intersection_is_the_exact_min_and_its_subgradients_pytorchs() {
        // Where `(|p| + |t| − |p − t|)/2` cancels to 0 in f32.
        assert_eq!(Terms::soft_intersection(1e-20, 1.0), 1e-20);
        assert_eq!(Terms::soft_intersection(1.0, 1e-20), 1e-20);
        for (p, t) in [
            (0.3f32, 0.7f32),
            (0.7, 0.3),
            (0.5, 0.5),
            (0.0, 0.4),
            (0.2, 0.0),
        ] {
            assert_eq!(Terms::soft_intersection(p, t), p.min(t), "{p}, {t}");
        }
        // Opposite signs (possible without an activation): (|p| + |t| − |p − t|)/2 = 0.
        assert_eq!(Terms::soft_intersection(-0.3, 0.5), 0.0);
        // ∂I/∂p: 1 below the target, 0 above, 1/2 at it (sgn 0 = 0); ∂P/∂p = sgn p.
        assert_eq!(Terms::d_soft(0.2, 0.6), (1.0, 1.0));
        assert_eq!(Terms::d_soft(0.8, 0.6), (0.0, 1.0));
        assert_eq!(Terms::d_soft(0.6, 0.6), (0.5, 1.0));
        assert_eq!(Terms::d_soft(0.0, 0.0), (0.0, 0.0));
        assert_eq!(Terms::d_soft(-0.2, 0.5), (0.0, -1.0));
        assert_eq!(sgn(f32::NAN), 0.0);
    }

    #[test]
    fn terms_of_the_options() {
        assert_eq!(Terms::new(false, false), Terms::Linear);
        assert_eq!(Terms::new(true, false), Terms::Squared);
        assert_eq!(Terms::new(true, true), Terms::Squared);
        assert_eq!(Terms::new(false, true), Terms::SoftL1);
    }
}
