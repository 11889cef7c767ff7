//! The generalized Dice loss of Sudre et al. 2017, MONAI-compatible.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::activation::Activation;
use crate::checks::{check_smoothing, or_panic, ConfigError};
use crate::kernels::input::Terms;
use crate::numerics::{in_dtype, one_minus_ratio};
use crate::reduction::DiceReduction;
use crate::replicas::ReplicaGroup;
use crate::stats::{ClassStats, Pooling};
use crate::target::{prepare, DiceTarget, Prepared};

const NAME: &str = "GeneralizedDiceLoss";

/// How [`GeneralizedDiceLoss`] weighs each class from its ground-truth volume `T_c = Σ t`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// `w_c = 1 / T_c²` (Sudre et al.'s choice, MONAI's default).
    Square,
    /// `w_c = 1 / T_c`.
    Simple,
    /// `w_c = 1`: plain Dice pooled over the classes.
    Uniform,
}

/// Configuration to create a [`GeneralizedDiceLoss`] using the
/// [init function](GeneralizedDiceLossConfig::init). Defaults are MONAI 1.5's.
#[derive(Config, Debug)]
pub struct GeneralizedDiceLossConfig {
    /// Activation applied to `input` first. Default: [`Activation::None`].
    #[config(default = "Activation::None")]
    pub activation: Activation,
    /// Keep class 0 (ignored, with a warning, on one channel). Default: `true`.
    #[config(default = true)]
    pub include_background: bool,
    /// Class weighting from the ground-truth volume. Default: [`WeightType::Square`].
    #[config(default = "WeightType::Square")]
    pub weight_type: WeightType,
    /// Added once to the pooled numerator. Default: `1e-5`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added once to the pooled denominator. Default: `1e-5`.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Pool the batch too: one loss for the whole batch, weights from the batch's volumes
    /// (the replicas' batches too, with [`GeneralizedDiceLoss::with_replicas`]).
    /// Default: `false`.
    #[config(default = false)]
    pub batch: bool,
    /// The soft-label (semimetric) form of Wang & Blaschko (MICCAI 2023), as MONAI 1.6's
    /// `soft_label`: `I = Σ (|p| + |t| − |p − t|) / 2`, `P = Σ |p|`, `T = Σ |t|`, so that
    /// `loss(t, t) = 0` (up to smoothing) for soft targets; the same values on hard targets.
    /// See [`DiceLoss`](crate::DiceLoss)'s "Soft labels". Default: `false`.
    #[config(default = false)]
    pub soft_label: bool,
    /// Label value whose pixels are left out (class-index targets only). Default: `None`.
    pub ignore_index: Option<usize>,
    /// Reduction in `forward`. Default: [`DiceReduction::Mean`].
    #[config(default = "DiceReduction::Mean")]
    pub reduction: DiceReduction,
    /// Per-call data checks, as in [`DiceLossConfig`](crate::DiceLossConfig). Default: `true`.
    #[config(default = true)]
    pub check_inputs: bool,
}

impl GeneralizedDiceLossConfig {
    /// Initializes a [`GeneralizedDiceLoss`].
    ///
    /// # Panics
    /// On a negative or non-finite smoothing term (the message of [`Self::validate`]'s error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> GeneralizedDiceLoss<B> {
        or_panic(self.try_init(device))
    }

    /// As [`init`](Self::init), with an error naming the field and its value instead of a panic.
    pub fn try_init<B: Backend>(
        &self,
        _device: &B::Device,
    ) -> Result<GeneralizedDiceLoss<B>, ConfigError> {
        self.validate()?;
        Ok(GeneralizedDiceLoss {
            activation: self.activation,
            include_background: self.include_background,
            weight_type: self.weight_type,
            smooth_nr: self.smooth_nr,
            smooth_dr: self.smooth_dr,
            batch: self.batch,
            soft_label: self.soft_label,
            ignore_index: self.ignore_index,
            reduction: self.reduction,
            check_inputs: self.check_inputs,
            replicas: None,
            _backend: core::marker::PhantomData,
        })
    }

    /// Checks every field: smoothing terms finite and `>= 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_smoothing(NAME, "smooth_nr", self.smooth_nr)?;
        check_smoothing(NAME, "smooth_dr", self.smooth_dr)
    }
}

/// The generalized Dice loss of Sudre et al., "Generalised Dice overlap as a deep learning loss
/// function for highly unbalanced segmentations", DLMIA 2017, as MONAI 1.5 computes it.
///
/// # Formula
/// With `I_c = Σ p·t`, `P_c = Σ p`, `T_c = Σ t` per sample (per batch with `batch`) and class:
///
/// ```text
/// w_c  = 1/T_c²  (Square) | 1/T_c (Simple) | 1 (Uniform)
/// loss = 1 − (2·Σ_c w_c·I_c + smooth_nr) / (Σ_c w_c·(P_c + T_c) + smooth_dr)
/// ```
///
/// With `soft_label`, `I_c = Σ (|p| + |t| − |p − t|) / 2`, `P_c = Σ |p|` and `T_c = Σ |t|`
/// (MONAI 1.6; the weights stay those of `Σ t`, equal for targets in `[0, 1]`).
///
/// The classes are pooled, so there is one value per sample: `forward_no_reduction` returns
/// `[batch, 1]` (`[1, 1]` with `batch`).
///
/// # Empty classes
/// A class absent from the ground truth has an infinite weight; as in MONAI it is replaced by
/// the largest finite weight of the same sample (of the batch with `batch`), and by 0 if every
/// class is empty, which then scores `1 − smooth_nr / smooth_dr` (0 with the defaults). The
/// loss is never NaN while `smooth_dr > 0`. The weights are computed from the target only and
/// carry no gradient.
#[derive(Module, Debug)]
pub struct GeneralizedDiceLoss<B: Backend> {
    /// Activation applied first.
    pub activation: Activation,
    /// Keep class 0.
    pub include_background: bool,
    /// Class weighting.
    pub weight_type: WeightType,
    /// Numerator smoothing.
    pub smooth_nr: f64,
    /// Denominator smoothing.
    pub smooth_dr: f64,
    /// Pool the batch.
    pub batch: bool,
    /// The soft-label (semimetric) intersection.
    pub soft_label: bool,
    /// Label value left out.
    pub ignore_index: Option<usize>,
    /// Reduction in `forward`.
    pub reduction: DiceReduction,
    /// Per-call data checks.
    pub check_inputs: bool,
    /// The data-parallel replicas whose batch statistics are summed before the ratio (with
    /// `batch`; see [`crate::replicas`]). `None` from the config; set it with
    /// [`with_replicas`](Self::with_replicas).
    #[module(skip)]
    pub replicas: Option<ReplicaGroup>,
    _backend: core::marker::PhantomData<B>,
}

impl<B: Backend> GeneralizedDiceLoss<B> {
    /// This loss, its `batch` statistics summed across the replicas of `group` before the
    /// ratio, so that every replica computes the global batch generalized Dice of all their batches,
    /// with the exact gradient (see [`crate::replicas`]). Changes nothing without `batch`.
    pub fn with_replicas(mut self, group: ReplicaGroup) -> Self {
        self.replicas = Some(group);
        self
    }

    /// Computes the reduced loss.
    ///
    /// # Shapes
    /// - input: `[batch, class, *spatial]`, 1 to 3 spatial dims.
    /// - target: `Tensor<B, D>` of the input's shape or `Tensor<B, D, Int>` `[batch, 1, *spatial]`.
    /// - output: `[1]`.
    pub fn forward<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 1> {
        self.reduction
            .reduce(self.forward_no_reduction(input, target))
    }

    /// Computes one loss per sample: `[batch, 1]` (`[1, 1]` with `batch`).
    pub fn forward_no_reduction<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 2> {
        let dtype = input.dtype();
        let prepared = prepare(
            NAME,
            input,
            target.into(),
            self.ignore_index,
            self.check_inputs,
            true,
        );
        in_dtype(self.loss_prepared(prepared), dtype)
    }

    fn loss_prepared(&self, prepared: Prepared<B>) -> Tensor<B, 2> {
        let ClassStats {
            intersection,
            pred,
            target,
        } = ClassStats::of_prepared(
            NAME,
            prepared,
            self.activation,
            Terms::new(false, self.soft_label),
            Pooling::new(self.batch, self.replicas.as_ref()),
            self.include_background,
        );
        let w = self.class_weights(target.clone().detach());
        let numerator = (intersection * w.clone())
            .sum_dim(1)
            .mul_scalar(2.0)
            .add_scalar(self.smooth_nr);
        let denominator = ((pred + target) * w).sum_dim(1).add_scalar(self.smooth_dr);
        one_minus_ratio(numerator, denominator)
    }

    /// `w_c` from the volumes `T` (`[rows, class]`), infinite weights replaced as in MONAI.
    fn class_weights(&self, volume: Tensor<B, 2>) -> Tensor<B, 2> {
        let raw = match self.weight_type {
            WeightType::Uniform => return volume.ones_like(),
            WeightType::Simple => volume.ones_like() / volume,
            WeightType::Square => volume.ones_like() / volume.square(),
        };
        let infinite = raw.clone().is_inf();
        let finite = raw.mask_fill(infinite.clone(), 0.0);
        // With `batch` there is a single row, so this is the batch-wide maximum.
        let largest = finite.clone().max_dim(1);
        let infinite = in_dtype(infinite.float(), finite.dtype());
        finite + infinite * largest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{device, TestBackend};
    use burn::tensor::Int;

    type B = TestBackend;

    #[test]
    fn weights_replace_infinities_by_the_largest_finite_weight() {
        let loss = GeneralizedDiceLossConfig::new().init::<B>(&device());
        let volume = Tensor::<B, 2>::from_floats([[2.0, 0.0, 4.0], [0.0, 0.0, 0.0]], &device());
        let w = loss
            .class_weights(volume)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(w, vec![0.25, 0.25, 0.0625, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn all_empty_sample_is_finite_and_zero() {
        let device = device();
        let x = Tensor::<B, 3>::from_floats([[[0.0, 0.0], [0.0, 0.0]]], &device);
        let t = Tensor::<B, 3>::zeros([1, 2, 2], &device);
        let l = GeneralizedDiceLossConfig::new()
            .init::<B>(&device)
            .forward(x, t)
            .into_scalar();
        assert_eq!(l, 0.0);
    }

    #[test]
    fn uniform_weights_pool_plain_dice() {
        let device = device();
        let p = Tensor::<B, 3>::from_floats([[[0.8, 0.2, 0.6], [0.2, 0.8, 0.4]]], &device);
        let y = Tensor::<B, 3, Int>::from_ints([[[0, 1, 0]]], &device);
        let l = GeneralizedDiceLossConfig::new()
            .with_weight_type(WeightType::Uniform)
            .with_smooth_nr(0.0)
            .with_smooth_dr(0.0)
            .init::<B>(&device)
            .forward_no_reduction(p, y)
            .into_scalar();
        // I = 0.8 + 0.6 + 0.8 = 2.2, P + T = 3 + 3
        assert!((l - (1.0 - 4.4 / 6.0)).abs() < 1e-6, "{l}");
    }

    #[test]
    #[should_panic(expected = "GeneralizedDiceLossConfig: `smooth_dr` must be finite and >= 0")]
    fn bad_smoothing() {
        GeneralizedDiceLossConfig::new()
            .with_smooth_dr(-1.0)
            .init::<B>(&device());
    }
}
