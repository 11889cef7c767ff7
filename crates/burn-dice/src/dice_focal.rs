//! Dice + sigmoid focal loss, MONAI-compatible.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::checks::{check_non_negative, check_unit, or_panic, ConfigError};
use crate::dice::{DiceLoss, DiceLossConfig};
use crate::kernels::input::{Extra, ExtraSums, FocalOptions};
use crate::numerics::{in_dtype, reciprocal};
use crate::reduction::apply_class_weight;
use crate::replicas::ReplicaGroup;
use crate::target::{prepare, DiceTarget};

const NAME: &str = "DiceFocalLoss";

/// Configuration to create a [`DiceFocalLoss`] using the [init function](DiceFocalLossConfig::init).
///
/// The Dice part is a full [`DiceLossConfig`]; its `include_background`, `weight`,
/// `ignore_index`, `reduction` and `check_inputs` apply to the focal part too (as in MONAI,
/// where `DiceFocalLoss` hands `include_background` and `weight` to both).
#[derive(Config, Debug)]
pub struct DiceFocalLossConfig {
    /// The Dice part. Default: `DiceLossConfig::new()`.
    #[config(default = "DiceLossConfig::new()")]
    pub dice: DiceLossConfig,
    /// Factor of the Dice part. Default: `1.0`.
    #[config(default = 1.0)]
    pub lambda_dice: f64,
    /// Factor of the focal part. Default: `1.0`.
    #[config(default = 1.0)]
    pub lambda_focal: f64,
    /// Focusing exponent `γ`. Default: `2.0`.
    #[config(default = 2.0)]
    pub gamma: f64,
    /// Balance `α` of the positives (`1 − α` for the negatives), in `[0, 1]`. Default: `None`
    /// (no balancing).
    pub alpha: Option<f64>,
}

impl DiceFocalLossConfig {
    /// Initializes a [`DiceFocalLoss`] on `device`.
    ///
    /// # Panics
    /// On a bad Dice config, negative or non-finite factors or `gamma`, or `alpha` outside
    /// `[0, 1]` (the message of [`Self::validate`]'s error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> DiceFocalLoss<B> {
        or_panic(self.try_init(device))
    }

    /// As [`init`](Self::init), with an error naming the field and its value instead of a panic.
    pub fn try_init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<DiceFocalLoss<B>, ConfigError> {
        self.validate()?;
        Ok(DiceFocalLoss {
            dice: self.dice.try_init(device)?,
            lambda_dice: self.lambda_dice,
            lambda_focal: self.lambda_focal,
            gamma: self.gamma,
            alpha: self.alpha,
        })
    }

    /// Checks every field: the Dice part (reported as `dice.<field>`), the factors and `gamma`
    /// finite and `>= 0`, `alpha` in `[0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.dice.validate().map_err(|e| e.within(NAME, "dice"))?;
        check_non_negative(NAME, "lambda_dice", self.lambda_dice)?;
        check_non_negative(NAME, "lambda_focal", self.lambda_focal)?;
        check_non_negative(NAME, "gamma", self.gamma)?;
        match self.alpha {
            Some(alpha) => check_unit(NAME, "alpha", alpha),
            None => Ok(()),
        }
    }
}

/// `lambda_dice · Dice + lambda_focal · focal`, as MONAI 1.5's `DiceFocalLoss`, with the
/// sigmoid focal loss of Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
///
/// # Formula
/// The Dice part is [`DiceLoss`] with its own config. The focal part works on the raw logits
/// `x`, element-wise over every kept channel, with `t` the per-channel target (one-hot for
/// class indices):
///
/// ```text
/// bce   = x − x·t − ln σ(x)                       (binary cross-entropy with logits)
/// focal = exp(γ·ln σ(−x·(2t − 1))) · bce          ((1 − p_t)^γ · bce, computed in log space)
///         · (α·t + (1 − α)·(1 − t))               (with alpha)
/// ```
///
/// Every logarithm is a stable log-sigmoid, never `ln(σ(x))`, so logits of ±1e4 give finite
/// values and gradients. Per (sample, kept class) the focal term is averaged over the pixels
/// that count (pixels labelled `ignore_index` are left out), then multiplied by the class
/// weight; `Mean` averages these, `Sum` adds them up (MONAI's "mean over the spatial dims, then
/// sum").
///
/// `forward_no_reduction` gives `[batch, class']`:
/// `lambda_dice·dice[b, c] + lambda_focal·focal[b, c]` (with the Dice part's `batch`, the batch
/// Dice `[1, class']` is broadcast to every sample).
///
/// # Memory and speed
/// On burn-ndarray, burn-flex and burn-wgpu the focal term comes from a fused kernel with its
/// own backward ([`crate::kernels`]): one pass, no tensor of the input's size besides the
/// gradient. On other backends it is element-wise burn ops over every channel, class-index
/// targets compared with each class index.
#[derive(Module, Debug)]
pub struct DiceFocalLoss<B: Backend> {
    /// The Dice part.
    pub dice: DiceLoss<B>,
    /// Factor of the Dice part.
    pub lambda_dice: f64,
    /// Factor of the focal part.
    pub lambda_focal: f64,
    /// Focusing exponent.
    pub gamma: f64,
    /// Balance of the positives.
    pub alpha: Option<f64>,
}

impl<B: Backend> DiceFocalLoss<B> {
    /// This loss, the `batch` statistics of its Dice part summed across the replicas of
    /// `group` before the ratio ([`DiceLoss::with_replicas`]); the focal part is
    /// unchanged. Changes nothing without `dice.batch`.
    pub fn with_replicas(mut self, group: ReplicaGroup) -> Self {
        self.dice.replicas = Some(group);
        self
    }

    /// Computes the reduced loss.
    ///
    /// # Shapes
    /// - input: logits `[batch, class, *spatial]`, 1 to 3 spatial dims.
    /// - target: `Tensor<B, D>` of the input's shape or `Tensor<B, D, Int>` `[batch, 1, *spatial]`.
    /// - output: `[1]`.
    pub fn forward<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 1> {
        let dtype = input.dtype();
        let (dice, focal) = self.dice_and_focal(input, target.into());
        let reduction = self.dice.reduction;
        let loss = reduction.reduce(dice).mul_scalar(self.lambda_dice)
            + reduction.reduce(focal).mul_scalar(self.lambda_focal);
        in_dtype(loss, dtype)
    }

    /// Computes `[batch, class']`: `lambda_dice·dice[b, c] + lambda_focal·focal[b, c]`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 2> {
        let dtype = input.dtype();
        let (dice, focal) = self.dice_and_focal(input, target.into());
        in_dtype(
            dice.mul_scalar(self.lambda_dice) + focal.mul_scalar(self.lambda_focal),
            dtype,
        )
    }

    /// The Dice loss and the focal term per (sample, kept class), `[batch, class']` each, the
    /// focal term weighted; from one pass over the data on the kernels (CPU and CubeCL; with
    /// burn ops the focal term takes a second pass): see [`crate::kernels`].
    fn dice_and_focal<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: DiceTarget<B, D>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let prepared = prepare(
            NAME,
            input,
            target,
            self.dice.ignore_index,
            self.dice.check_inputs,
            // The statistics' pass checks the data before the focal term is read.
            true,
        );
        let [b, c, s] = prepared.input.dims();
        let valid = prepared.target.valid.clone();
        let options = FocalOptions {
            gamma: self.gamma,
            alpha: self.alpha,
        };
        let (dice, extra) = self
            .dice
            .loss_prepared_with(prepared, &Extra::Focal(options));
        let ExtraSums::Focal(sums) = extra else {
            unreachable!("the focal term was asked for")
        };
        // Σ over the pixels that count, [b, c], over their number.
        let per_class = match valid {
            Some(valid) => {
                let valid = in_dtype(valid, sums.dtype());
                let counted = valid.sum_dim(2).clamp_min(1.0).reshape([b, 1]);
                sums * reciprocal(counted)
            }
            None => sums.div_scalar(s as f64),
        };
        let kept = if self.dice.include_background || c == 1 {
            per_class
        } else {
            per_class.narrow(1, 1, c - 1)
        };
        let focal = apply_class_weight(
            kept,
            self.dice.weight.as_ref(),
            c,
            self.dice.include_background,
            NAME,
        );
        (dice, focal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{autodiff, device, TestBackend};
    use burn::tensor::Int;

    type B = TestBackend;

    #[test]
    fn focal_matches_a_hand_computation() {
        let device = device();
        let x = Tensor::<B, 3>::from_floats([[[1.5, -0.5], [-2.0, 0.25]]], &device);
        let y = Tensor::<B, 3, Int>::from_ints([[[0, 1]]], &device);
        let gamma = 2.0f64;
        let alpha = 0.25f64;
        let got = DiceFocalLossConfig::new()
            .with_lambda_dice(0.0)
            .with_alpha(Some(alpha))
            .init::<B>(&device)
            .forward_no_reduction(x, y)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let xs = [[1.5f64, -0.5], [-2.0, 0.25]];
        let ts = [[1.0f64, 0.0], [0.0, 1.0]];
        for c in 0..2 {
            let mut sum = 0.0;
            for px in 0..2 {
                let (x, t) = (xs[c][px], ts[c][px]);
                let p = 1.0 / (1.0 + (-x).exp());
                let pt = if t == 1.0 { p } else { 1.0 - p };
                let a = if t == 1.0 { alpha } else { 1.0 - alpha };
                sum += -a * (1.0 - pt).powf(gamma) * pt.ln();
            }
            let expected = sum / 2.0;
            assert!(
                (got[c] as f64 - expected).abs() < 1e-6,
                "{} vs {expected}",
                got[c]
            );
        }
    }

    #[test]
    fn extreme_logits_stay_finite() {
        let device = autodiff();
        type A = burn_autodiff::Autodiff<B>;
        let x = Tensor::<A, 3>::from_floats([[[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]]], &device)
            .require_grad();
        let y = Tensor::<A, 3, Int>::from_ints([[[1, 0, 1]]], &device);
        let loss = DiceFocalLossConfig::new()
            .with_dice(DiceLossConfig::new().with_activation(crate::Activation::Softmax))
            .init::<A>(&device)
            .forward(x.clone(), y);
        let grads = loss.backward();
        let g = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }

    #[test]
    #[should_panic(expected = "DiceFocalLossConfig: `alpha` must be in [0, 1], got 1.5")]
    fn bad_alpha() {
        DiceFocalLossConfig::new()
            .with_alpha(Some(1.5))
            .init::<B>(&device());
    }
}
