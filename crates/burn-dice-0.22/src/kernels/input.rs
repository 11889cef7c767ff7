//! What every implementation of the family's terms reads and returns: the flattened input and
//! target, the options of the cross-entropy and focal terms, and the statistics with the verdict
//! of the data checks. Plain data: nothing here calls into the losses or the kernels.

use burn::tensor::{Int, Tensor};

/// A target checked against the input and flattened to rank 3.
#[derive(Debug, Clone)]
pub(crate) enum FlatTarget {
    /// `[batch, class, pixels]`: dense targets, and the 0/1 labels of a single-channel input.
    Dense(Tensor<3>),
    /// Class indices `[batch, 1, pixels]` for an input of two or more channels; ignored pixels
    /// carry class 0 and are removed through the `valid` mask.
    Indices(Tensor<3, Int>),
}

/// The target as the losses need it.
#[derive(Debug, Clone)]
pub(crate) struct PreparedTarget {
    pub target: FlatTarget,
    /// `[batch, 1, pixels]`, 1 where the pixel counts and 0 where it is left out (its label is
    /// `ignore_index`, or a spatial mask excludes it). `None`: every pixel counts.
    pub valid: Option<Tensor<3>>,
}

impl PreparedTarget {
    /// Restricts the pixels that count to those where `mask` (`[batch, 1, pixels]`, 0/1) is 1.
    pub fn masked(mut self, mask: Tensor<3>) -> Self {
        self.valid = Some(match self.valid {
            Some(valid) => valid * mask,
            None => mask,
        });
        self
    }

    /// Whether a dense target or the mask requires a gradient: the kernels give gradients to
    /// the input only, so such targets take the generic path.
    #[cfg_attr(not(any(feature = "flex", feature = "wgpu")), allow(dead_code))]
    pub fn tracked(&self) -> bool {
        let dense = match &self.target {
            FlatTarget::Dense(t) => t.is_require_grad(),
            FlatTarget::Indices(_) => false,
        };
        dense || self.valid.as_ref().is_some_and(|v| v.is_require_grad())
    }
}

/// Which per-pixel terms the three statistics sum: see [`burn_dice_core::Terms`] (shared by both
/// release lines and every path).
pub(crate) use burn_dice_core::Terms;

/// The options of the cross-entropy term of `DiceCELoss` (formulas: `burn-dice-core/src/cpu/ce.rs`).
#[derive(Debug, Clone)]
pub(crate) struct CeOptions {
    /// One weight per class (`ce_weight`), or none.
    pub class_weight: Option<Tensor<1>>,
    /// The weight of the positive term (single channel; 1 when not set).
    pub pos_weight: f32,
    /// `ε`: the target becomes `(1 − ε)·t + ε/C`.
    pub label_smoothing: f64,
}

/// The options of the focal term of `DiceFocalLoss` (formulas: `burn-dice-core/src/cpu/focal.rs`).
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
// burn 0.22 tensors hold their primitive inline (a few hundred bytes); these values are
// built once per loss call and moved, never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Extra {
    /// The statistics alone.
    None,
    /// The cross-entropy.
    Ce(CeOptions),
    /// The focal term.
    Focal(FocalOptions),
}

/// The sums of an [`Extra`] term.
#[derive(Debug, Clone)]
// burn 0.22 tensors hold their primitive inline (a few hundred bytes); these values are
// built once per loss call and moved, never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ExtraSums {
    /// No extra term.
    None,
    /// Per sample, the summed pixel cross-entropies and the summed weights: `[batch]` each.
    Ce([Tensor<1>; 2]),
    /// Per (sample, class), the focal term summed over the pixels: `[batch, class]`.
    Focal(Tensor<2>),
}

/// The per-(sample, class) statistics and what the pass that computed them found in the data.
pub(crate) struct Stats {
    /// The three `[batch, class]` sums: intersection `I`, prediction `P`, target `T`.
    pub sums: [Tensor<2>; 3],
    /// The data checks of `check_inputs` made by the same pass, if it made them.
    pub verdict: Verdict,
    /// The sums of the [`Extra`] term, if the same pass computed them (else `None`: they are
    /// computed after the verdict is settled, so that no pass reads data that failed a check).
    pub extra: Option<ExtraSums>,
}

/// What a kernel found when it checked the data it read (finite input and dense target, class
/// indices in range).
#[allow(dead_code)]
// burn 0.22 tensors hold their primitive inline (a few hundred bytes); these values are
// built once per loss call and moved, never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Verdict {
    /// Not checked: the checks must run elsewhere.
    Unchecked,
    /// Checked on the host: whether everything passed.
    Host(bool),
    /// Checked on the device, not read back yet: `[4]` = number of non-finite input values,
    /// number of dense target values not in `[0, 1]` (NaN and infinities included), the largest and the smallest class index
    /// (both 0 for dense targets).
    Device(Tensor<1>),
}
