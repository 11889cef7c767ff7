//! The Tversky loss (Salehi et al. 2017) and the focal Tversky loss (Abraham & Khan 2019).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::activation::Activation;
use crate::checks::{check_non_negative, check_positive, check_smoothing, or_panic, ConfigError};
use crate::kernels::input::Terms;
use crate::numerics::{in_dtype, one_minus_ratio};
use crate::reduction::DiceReduction;
use crate::replicas::ReplicaGroup;
use crate::stats::{ClassStats, Pooling};
use crate::target::{prepare, DiceTarget};

const NAME: &str = "TverskyLoss";

/// Below this, `1 − TI` is held constant before the focal power `1/γ` (whose slope is infinite
/// at 0 for `γ > 1`).
const FOCAL_FLOOR: f64 = 1e-6;

/// Configuration to create a [`TverskyLoss`] using the [init function](TverskyLossConfig::init).
/// Defaults are MONAI 1.5's `TverskyLoss`, with `gamma = 1` (no focal term).
#[derive(Config, Debug)]
pub struct TverskyLossConfig {
    /// Activation applied to `input` first. Default: [`Activation::None`].
    #[config(default = "Activation::None")]
    pub activation: Activation,
    /// Keep class 0 (ignored, with a warning, on one channel). Default: `true`.
    #[config(default = true)]
    pub include_background: bool,
    /// Weight of the false positives `Σ p·(1 − t)`. Default: `0.5`.
    #[config(default = 0.5)]
    pub alpha: f64,
    /// Weight of the false negatives `Σ (1 − p)·t`. Default: `0.5`.
    #[config(default = 0.5)]
    pub beta: f64,
    /// Focal exponent: each class's loss is `(1 − TI)^(1/γ)`. `1` is the plain Tversky loss.
    /// Default: `1.0`.
    #[config(default = 1.0)]
    pub gamma: f64,
    /// Added to the numerator. Default: `1e-5`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added to the denominator. Default: `1e-5`.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Sum over the batch before the ratio (across data-parallel replicas too, with
    /// [`TverskyLoss::with_replicas`]). Default: `false`.
    #[config(default = false)]
    pub batch: bool,
    /// The soft-label (semimetric) form of Wang & Blaschko (MICCAI 2023), as MONAI 1.6's
    /// `soft_label`: `I = Σ (|p| + |t| − |p − t|) / 2`, `P = Σ |p|`, `T = Σ |t|`, so that
    /// `loss(t, t) = 0` (up to smoothing, for `γ = 1`) for soft targets; the same values on hard targets.
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

impl TverskyLossConfig {
    /// Initializes a [`TverskyLoss`].
    ///
    /// # Panics
    /// On a negative or non-finite `alpha`, `beta` or smoothing term, or `gamma` that is not a
    /// positive finite number (the message of [`Self::validate`]'s error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> TverskyLoss<B> {
        or_panic(self.try_init(device))
    }

    /// As [`init`](Self::init), with an error naming the field and its value instead of a panic.
    pub fn try_init<B: Backend>(&self, _device: &B::Device) -> Result<TverskyLoss<B>, ConfigError> {
        self.validate()?;
        Ok(TverskyLoss {
            activation: self.activation,
            include_background: self.include_background,
            alpha: self.alpha,
            beta: self.beta,
            gamma: self.gamma,
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

    /// Checks every field: `alpha`, `beta` and the smoothing terms finite and `>= 0`, `gamma`
    /// finite and `> 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_non_negative(NAME, "alpha", self.alpha)?;
        check_non_negative(NAME, "beta", self.beta)?;
        check_smoothing(NAME, "smooth_nr", self.smooth_nr)?;
        check_smoothing(NAME, "smooth_dr", self.smooth_dr)?;
        check_positive(NAME, "gamma", self.gamma)
    }
}

/// The Tversky loss of Salehi et al., "Tversky loss function for image segmentation using 3D
/// fully convolutional deep networks", MLMI 2017 (as MONAI 1.5 computes it), with the focal
/// Tversky loss of Abraham & Khan, "A novel focal Tversky loss function with improved attention
/// U-Net for lesion segmentation", ISBI 2019.
///
/// # Formula
/// Per sample (and over the batch with `batch`) and kept class, with `I = Σ p·t`,
/// `FP = Σ p·(1 − t) = P − I`, `FN = Σ (1 − p)·t = T − I`:
///
/// ```text
/// TI   = (I + smooth_nr) / (I + α·FP + β·FN + smooth_dr)
/// loss = (1 − TI)^(1/γ)
/// ```
///
/// `α = β = 0.5` is the Dice loss (up to where smoothing enters), `α = β = 1` the soft Jaccard.
///
/// With `soft_label` (MONAI 1.6; Wang & Blaschko, "Jaccard Metric Losses", NeurIPS 2023),
/// `I = Σ (|p| + |t| − |p − t|) / 2`, `FP = Σ |p| − I`, `FN = Σ |t| − I`: for soft targets
/// `FP` and `FN` are then the parts of `Σ |p − t|` where `p > t` and where `p < t`.
///
/// # Which focal form
/// The exponent is Abraham & Khan's `1/γ`, applied to each class's `1 − TI` before the
/// reduction, so `forward_no_reduction` stays per class and `γ = 1` is exactly MONAI's Tversky
/// loss. segmentation_models_pytorch instead raises the already averaged loss to `γ`
/// (`mean(1 − TI)^γ`), which cannot be reported per class. For `γ > 1` the slope of `x^(1/γ)` is
/// infinite at `x = 0`, so `1 − TI` is held at `1e-6` below that value (a perfect prediction
/// then scores `1e-6^(1/γ)` with a zero gradient instead of an infinite one).
///
/// # Empty classes
/// A class absent from the ground truth (`T = 0`, so `I = FN = 0`) scores
/// `1 − smooth_nr / (α·P + smooth_dr)`, finite while `smooth_dr > 0`.
#[derive(Module, Debug)]
pub struct TverskyLoss<B: Backend> {
    /// Activation applied first.
    pub activation: Activation,
    /// Keep class 0.
    pub include_background: bool,
    /// False-positive weight.
    pub alpha: f64,
    /// False-negative weight.
    pub beta: f64,
    /// Focal exponent (`1/γ` is applied).
    pub gamma: f64,
    /// Numerator smoothing.
    pub smooth_nr: f64,
    /// Denominator smoothing.
    pub smooth_dr: f64,
    /// Sum over the batch before the ratio.
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

impl<B: Backend> TverskyLoss<B> {
    /// This loss, its `batch` statistics summed across the replicas of `group` before the
    /// ratio, so that every replica computes the global batch Tversky index of all their batches,
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

    /// Computes one loss per sample and kept class: `[batch, class']` (`[1, class']` with
    /// `batch`).
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
        let false_pos = pred - intersection.clone();
        let false_neg = target - intersection.clone();
        let numerator = intersection.clone().add_scalar(self.smooth_nr);
        let denominator =
            (intersection + false_pos.mul_scalar(self.alpha) + false_neg.mul_scalar(self.beta))
                .add_scalar(self.smooth_dr);
        let loss = one_minus_ratio(numerator, denominator);
        let loss = if self.gamma == 1.0 {
            loss
        } else {
            loss.clamp_min(FOCAL_FLOOR).powf_scalar(1.0 / self.gamma)
        };
        in_dtype(loss, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{device, TestBackend};
    use crate::{Activation, DiceLossConfig};
    use burn::tensor::{Distribution, Int};

    type B = TestBackend;

    #[test]
    fn half_half_with_equal_smoothing_is_dice() {
        let device = device();
        let x = Tensor::<B, 4>::random([2, 3, 5, 5], Distribution::Normal(0.0, 2.0), &device);
        let y = Tensor::<B, 4>::random([2, 1, 5, 5], Distribution::Uniform(0.0, 3.0), &device)
            .int()
            .clamp(0, 2);
        let t = TverskyLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_smooth_nr(0.0)
            .with_smooth_dr(0.0)
            .init::<B>(&device)
            .forward_no_reduction(x.clone(), y.clone());
        let d = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_smooth_nr(0.0)
            .with_smooth_dr(0.0)
            .init::<B>(&device)
            .forward_no_reduction(x, y);
        t.into_data()
            .assert_approx_eq::<f32>(&d.into_data(), burn::tensor::Tolerance::default());
    }

    #[test]
    fn focal_form_is_per_class_power() {
        let device = device();
        let p = Tensor::<B, 3>::from_floats([[[0.9, 0.2, 0.6]], [[0.1, 0.7, 0.3]]], &device);
        let y = Tensor::<B, 3, Int>::from_ints([[[1, 0, 1]], [[0, 1, 1]]], &device);
        let config = TverskyLossConfig::new().with_alpha(0.3).with_beta(0.7);
        let plain = config
            .init::<B>(&device)
            .forward_no_reduction(p.clone(), y.clone());
        let focal = config
            .clone()
            .with_gamma(4.0 / 3.0)
            .init::<B>(&device)
            .forward_no_reduction(p, y);
        let plain = plain.into_data().into_vec::<f32>().unwrap();
        let focal = focal.into_data().into_vec::<f32>().unwrap();
        for (f, p) in focal.iter().zip(&plain) {
            assert!((f - p.powf(0.75)).abs() < 1e-6, "{f} vs {p}^(3/4)");
        }
    }

    #[test]
    #[should_panic(expected = "TverskyLossConfig: `alpha` must be finite and >= 0, got -0.1")]
    fn negative_alpha() {
        TverskyLossConfig::new()
            .with_alpha(-0.1)
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(expected = "TverskyLossConfig: `gamma` must be finite and > 0, got 0")]
    fn zero_gamma() {
        TverskyLossConfig::new()
            .with_gamma(0.0)
            .init::<B>(&device());
    }
}
