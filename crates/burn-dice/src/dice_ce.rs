//! Dice + cross-entropy (nnU-Net's loss), MONAI-compatible.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::checks::{check_non_negative, check_unit, check_weights, or_panic, ConfigError};
use crate::dice::{DiceLoss, DiceLossConfig};
use crate::kernels::input::{CeOptions, Extra, ExtraSums};
use crate::numerics::{in_dtype, reciprocal};
use crate::reduction::DiceReduction;
use crate::replicas::ReplicaGroup;
use crate::target::{prepare, DiceTarget};

const NAME: &str = "DiceCELoss";

/// Configuration to create a [`DiceCELoss`] using the [init function](DiceCELossConfig::init).
///
/// The Dice part is a full [`DiceLossConfig`]: for the usual multi-class set-up give it
/// `Activation::Softmax` (MONAI's default, like ours, is no activation). Its `ignore_index`,
/// `reduction` and `check_inputs` apply to the cross-entropy too.
#[derive(Config, Debug)]
pub struct DiceCELossConfig {
    /// The Dice part. Default: `DiceLossConfig::new()`.
    #[config(default = "DiceLossConfig::new()")]
    pub dice: DiceLossConfig,
    /// Factor of the Dice part. Default: `1.0`.
    #[config(default = 1.0)]
    pub lambda_dice: f64,
    /// Factor of the cross-entropy part. Default: `1.0`.
    #[config(default = 1.0)]
    pub lambda_ce: f64,
    /// Cross-entropy class weights, one per channel **including** the background (PyTorch's
    /// `weight`); multi-class inputs only. MONAI's single `weight` corresponds to `ce_weight =
    /// w` and `dice.weight = w` (or `w[1..]` without the background). Default: `None`.
    pub ce_weight: Option<Vec<f32>>,
    /// Label smoothing `ε` of the multi-class cross-entropy (PyTorch's `label_smoothing`):
    /// the target becomes `(1 − ε)·t + ε/C`. Default: `0.0`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Weight of the positive term of the binary cross-entropy (PyTorch's `pos_weight`);
    /// single-channel inputs only. Default: `None`.
    pub pos_weight: Option<f32>,
}

impl DiceCELossConfig {
    /// Initializes a [`DiceCELoss`] on `device`.
    ///
    /// # Panics
    /// On a bad Dice config, negative or non-finite factors or weights, or a label smoothing
    /// outside `[0, 1]` (the message of [`Self::validate`]'s error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> DiceCELoss<B> {
        or_panic(self.try_init(device))
    }

    /// As [`init`](Self::init), with an error naming the field and its value instead of a panic.
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<DiceCELoss<B>, ConfigError> {
        self.validate()?;
        Ok(DiceCELoss {
            dice: self.dice.try_init(device)?,
            lambda_dice: self.lambda_dice,
            lambda_ce: self.lambda_ce,
            ce_weight: self
                .ce_weight
                .as_ref()
                .map(|w| Tensor::<B, 1>::from_floats(w.as_slice(), device)),
            label_smoothing: self.label_smoothing,
            pos_weight: self.pos_weight,
        })
    }

    /// Checks every field: the Dice part (reported as `dice.<field>`), the factors finite and
    /// `>= 0`, `ce_weight` non-empty, finite and `>= 0`, `pos_weight` finite and `>= 0`,
    /// `label_smoothing` in `[0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.dice.validate().map_err(|e| e.within(NAME, "dice"))?;
        check_non_negative(NAME, "lambda_dice", self.lambda_dice)?;
        check_non_negative(NAME, "lambda_ce", self.lambda_ce)?;
        if let Some(w) = &self.ce_weight {
            check_weights(NAME, "ce_weight", w)?;
        }
        if let Some(w) = self.pos_weight {
            check_non_negative(NAME, "pos_weight", w as f64)?;
        }
        check_unit(NAME, "label_smoothing", self.label_smoothing)
    }
}

/// `lambda_dice · Dice + lambda_ce · cross-entropy`, as MONAI 1.5's `DiceCELoss`: the loss of
/// nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
/// biomedical image segmentation", Nature Methods 2021).
///
/// # Formula
/// The Dice part is [`DiceLoss`] with its own config. The cross-entropy works on the raw
/// logits, whatever the Dice part's activation:
///
/// ```text
/// C > 1, class indices:  ce_i = −(1 − ε)·w_y·ln softmax(x)_y − (ε/C)·Σ_c w_c·ln softmax(x)_c
///                        mean = Σ_i ce_i / Σ_i w_y   (PyTorch's weighted mean)
/// C > 1, dense target:   ce_i = −Σ_c w_c·t'_c·ln softmax(x)_c,  t' = (1 − ε)·t + ε/C,  mean over pixels
/// C = 1:                 ce_i = −[pos_weight·t·ln σ(x) + (1 − t)·ln σ(−x)],  mean over pixels
/// ```
///
/// `include_background` and the Dice `weight` apply to the Dice part only: the cross-entropy
/// always sees every class. Pixels labelled `ignore_index` are left out of both parts (PyTorch's
/// `ignore_index` for the cross-entropy: out of the sum and of the normalization). `Sum` sums
/// the cross-entropy over the pixels, as PyTorch's `reduction="sum"`. When no pixel counts
/// (every one ignored, or only classes of weight 0), the mean cross-entropy is 0, where
/// PyTorch and MONAI give NaN (0/0); the same holds per sample in `forward_no_reduction`.
///
/// On burn-ndarray, burn-flex and burn-wgpu the cross-entropy comes from a fused kernel with its
/// own backward ([`crate::kernels`]): per sample, the summed pixel losses and weights in one
/// pass.
///
/// `forward_no_reduction` gives `[batch, class']`: `lambda_dice·dice[b, c] + lambda_ce·ce[b]`,
/// with `ce[b]` sample `b`'s own (weighted) mean cross-entropy; without class weights and
/// ignored pixels its mean is `forward`'s value. With the Dice part's `batch`, the batch Dice
/// `[1, class']` is broadcast to every sample.
#[derive(Module, Debug)]
pub struct DiceCELoss<B: Backend> {
    /// The Dice part.
    pub dice: DiceLoss<B>,
    /// Factor of the Dice part.
    pub lambda_dice: f64,
    /// Factor of the cross-entropy part.
    pub lambda_ce: f64,
    /// Cross-entropy class weights (all classes).
    pub ce_weight: Option<Tensor<B, 1>>,
    /// Label smoothing of the multi-class cross-entropy.
    pub label_smoothing: f64,
    /// Positive weight of the binary cross-entropy.
    pub pos_weight: Option<f32>,
}

/// A cross-entropy normalizer that is never 0: a normalizer of 0 means no pixel counted (all
/// ignored, or all of zero-weight classes), and then the summed loss is 0 too, so the mean is
/// 0 instead of PyTorch's 0/0 = NaN. Found by the property tests (a sample whose only pixel
/// was `ignore_index` made `forward_no_reduction` NaN).
fn nonzero<B: Backend>(norm: Tensor<B, 1>) -> Tensor<B, 1> {
    // 0 becomes 1, not a tiny number: the backward multiplies by 1/norm before the pixels'
    // zero weights, and 1/1e-38 overflows there (inf · 0 = NaN).
    let zero = norm.clone().equal_elem(0.0).float();
    let zero = in_dtype(zero, norm.dtype());
    norm + zero
}

/// Per sample, the summed pixel cross-entropies and their normalizer (the summed weights),
/// `[batch]` each.
struct SampleCe<B: Backend> {
    loss: Tensor<B, 1>,
    norm: Tensor<B, 1>,
}

impl<B: Backend> DiceCELoss<B> {
    /// This loss, the `batch` statistics of its Dice part summed across the replicas of
    /// `group` before the ratio ([`DiceLoss::with_replicas`]); the cross-entropy part is
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
    ///
    /// # Panics
    /// As [`DiceLoss::forward`], and when `ce_weight` does not have one weight per channel, or
    /// `ce_weight` / `pos_weight` is given for the wrong number of channels.
    pub fn forward<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 1> {
        let dtype = input.dtype();
        let (dice, ce) = self.dice_and_ce(input, target.into());
        let dice = self.dice.reduction.reduce(dice);
        let ce = match self.dice.reduction {
            DiceReduction::Mean => ce.loss.sum() * reciprocal(nonzero(ce.norm.sum())),
            DiceReduction::Sum => ce.loss.sum(),
        };
        in_dtype(
            dice.mul_scalar(self.lambda_dice) + ce.mul_scalar(self.lambda_ce),
            dtype,
        )
    }

    /// Computes `[batch, class']`: `lambda_dice·dice[b, c] + lambda_ce·ce[b]`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 2> {
        let dtype = input.dtype();
        let (dice, ce) = self.dice_and_ce(input, target.into());
        let b = ce.loss.dims()[0];
        let per_sample = (ce.loss * reciprocal(nonzero(ce.norm))).reshape([b, 1]);
        in_dtype(
            dice.mul_scalar(self.lambda_dice) + per_sample.mul_scalar(self.lambda_ce),
            dtype,
        )
    }

    /// The Dice loss `[batch, class']` and the cross-entropy sums of every sample, from one
    /// pass over the data on the kernels (CPU and CubeCL; with burn ops the cross-entropy takes
    /// a second pass): see [`crate::kernels`].
    fn dice_and_ce<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: DiceTarget<B, D>,
    ) -> (Tensor<B, 2>, SampleCe<B>) {
        let prepared = prepare(
            NAME,
            input,
            target,
            self.dice.ignore_index,
            self.dice.check_inputs,
            // The statistics' pass checks the data before the cross-entropy is read.
            true,
        );
        let options = self.ce_options(prepared.channels());
        let (dice, extra) = self.dice.loss_prepared_with(prepared, &Extra::Ce(options));
        let ExtraSums::Ce([loss, norm]) = extra else {
            unreachable!("the cross-entropy was asked for")
        };
        (dice, SampleCe { loss, norm })
    }

    /// The options of the cross-entropy for an input of `c` channels, checked against it.
    fn ce_options(&self, c: usize) -> CeOptions<B> {
        if c == 1 {
            assert!(
                self.ce_weight.is_none(),
                "{NAME}: `ce_weight` needs a multi-class input, got 1 channel (use `pos_weight`)"
            );
        } else {
            assert!(
                self.pos_weight.is_none(),
                "{NAME}: `pos_weight` needs a single-channel input, got {c} channels"
            );
            if let Some(w) = &self.ce_weight {
                let given = w.dims()[0];
                assert!(
                    given == c,
                    "{NAME}: `ce_weight` has {given} entries, expected one per channel ({c}, \
                     background included)"
                );
            }
        }
        CeOptions {
            class_weight: self.ce_weight.clone(),
            pos_weight: self.pos_weight.unwrap_or(1.0),
            label_smoothing: self.label_smoothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{autodiff, device, TestBackend};
    use crate::Activation;
    use burn::tensor::Int;

    type B = TestBackend;

    fn logits() -> Tensor<B, 3> {
        Tensor::from_floats(
            [[[2.0, -1.0, 0.5], [0.0, 1.5, 0.2], [-1.0, 0.3, 1.0]]],
            &device(),
        )
    }

    fn labels() -> Tensor<B, 3, Int> {
        Tensor::from_ints([[[0, 1, 2]]], &device())
    }

    /// −ln softmax(x)_y by hand, averaged over the pixels.
    fn ce_by_hand(weights: [f64; 3]) -> f64 {
        let x = [[2.0f64, -1.0, 0.5], [0.0, 1.5, 0.2], [-1.0, 0.3, 1.0]];
        let (mut num, mut den) = (0.0, 0.0);
        for (px, y) in [0usize, 1, 2].into_iter().enumerate() {
            let z: f64 = (0..3).map(|c| x[c][px].exp()).sum();
            num += -weights[y] * (x[y][px].exp() / z).ln();
            den += weights[y];
        }
        num / den
    }

    #[test]
    fn lambda_dice_zero_is_weighted_cross_entropy() {
        let device = Default::default();
        for w in [[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]] {
            let loss = DiceCELossConfig::new()
                .with_lambda_dice(0.0)
                .with_ce_weight(Some(w.iter().map(|&v| v as f32).collect()))
                .init::<B>(&device)
                .forward(logits(), labels())
                .into_scalar() as f64;
            let expected = ce_by_hand(w);
            assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        }
    }

    #[test]
    fn include_background_applies_to_the_dice_part_only() {
        let device = Default::default();
        let ce_only = |include_background| {
            DiceCELossConfig::new()
                .with_dice(
                    DiceLossConfig::new()
                        .with_activation(Activation::Softmax)
                        .with_include_background(include_background),
                )
                .with_lambda_dice(0.0)
                .init::<B>(&device)
                .forward(logits(), labels())
                .into_scalar()
        };
        assert_eq!(ce_only(true), ce_only(false));
    }

    #[test]
    #[should_panic(
        expected = "DiceCELoss: `ce_weight` has 2 entries, expected one per channel (3, background included)"
    )]
    fn ce_weight_length() {
        DiceCELossConfig::new()
            .with_ce_weight(Some(vec![1.0, 2.0]))
            .init::<B>(&device())
            .forward(logits(), labels());
    }

    #[test]
    #[should_panic(
        expected = "DiceCELoss: `pos_weight` needs a single-channel input, got 3 channels"
    )]
    fn pos_weight_on_multiclass() {
        DiceCELossConfig::new()
            .with_pos_weight(Some(2.0))
            .init::<B>(&device())
            .forward(logits(), labels());
    }

    #[test]
    #[should_panic(expected = "DiceCELossConfig: `label_smoothing` must be in [0, 1], got 1.5")]
    fn bad_label_smoothing() {
        DiceCELossConfig::new()
            .with_label_smoothing(1.5)
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(expected = "DiceCELossConfig: `lambda_ce` must be finite and >= 0, got -1")]
    fn negative_lambda() {
        DiceCELossConfig::new()
            .with_lambda_ce(-1.0)
            .init::<B>(&device());
    }

    #[test]
    fn a_sample_with_every_pixel_ignored_has_a_cross_entropy_of_0() {
        type A = burn_autodiff::Autodiff<TestBackend>;
        let device = autodiff();
        let x =
            Tensor::<A, 3>::from_floats([[[0.5], [-1.0], [2.0]], [[1.0], [0.3], [-0.2]]], &device)
                .require_grad();
        let y = Tensor::<A, 3, Int>::from_ints([[[9]], [[2]]], &device);
        let loss = DiceCELossConfig::new()
            .with_lambda_dice(0.0)
            .with_dice(DiceLossConfig::new().with_ignore_index(Some(9)))
            .init::<A>(&device);
        let per_sample = loss.forward_no_reduction(x.clone(), y.clone());
        let grads = per_sample.clone().sum().backward();
        let v: Vec<f32> = per_sample.into_data().to_vec().unwrap();
        assert_eq!(v[..3], [0.0; 3], "{v:?}");
        assert!(v[3..].iter().all(|l| l.is_finite() && *l > 0.0), "{v:?}");
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        assert_eq!(g[..3], [0.0; 3]);
        // Every pixel of the batch ignored: 0, where PyTorch gives 0/0 = NaN.
        let all = Tensor::<A, 3, Int>::from_ints([[[9]], [[9]]], &device);
        assert_eq!(loss.forward(x, all).into_scalar(), 0.0);
    }
}
