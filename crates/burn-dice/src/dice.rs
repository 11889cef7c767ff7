//! The soft Dice loss, MONAI-compatible.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::activation::Activation;
use crate::checks::{check_smoothing, check_weights, or_panic, ConfigError};
use crate::kernels::input::{Extra, ExtraSums, Terms};
use crate::numerics::{in_dtype, ln, one_minus_ratio};
use crate::reduction::{apply_class_weight, DiceReduction};
use crate::replicas::ReplicaGroup;
use crate::stats::{ClassStats, Pooling};
use crate::target::{prepare, prepare_mask, prepare_with, DiceTarget, Prepared};

const NAME: &str = "DiceLoss";

/// Configuration to create a [`DiceLoss`] using the [init function](DiceLossConfig::init).
///
/// The defaults are MONAI 1.5's `monai.losses.DiceLoss` defaults.
///
/// Serializes with serde (burn's `Config`): `config.save("dice.json")`,
/// `DiceLossConfig::load("dice.json")`.
#[derive(Config, Debug)]
pub struct DiceLossConfig {
    /// Activation applied to `input` first. Default: [`Activation::None`] (probabilities in).
    #[config(default = "Activation::None")]
    pub activation: Activation,
    /// Keep class 0. With `false`, channel 0 is dropped after the activation and the one-hot
    /// conversion, so softmax still normalizes over every class. On a single-channel input
    /// `false` is ignored (with a `log` warning), as in MONAI. Default: `true`.
    #[config(default = true)]
    pub include_background: bool,
    /// Added to the numerator `2·I`. Default: `1e-5`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added to the denominator. Keeps an empty class (and an empty prediction) finite.
    /// Default: `1e-5`.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// V-Net's denominator `Σp² + Σt²` instead of `Σp + Σt` (Milletari et al. 2016).
    /// Default: `false`.
    #[config(default = false)]
    pub squared_pred: bool,
    /// Soft Jaccard (IoU) instead of Dice: `1 − (2I + smooth_nr) / (2(P + T − I) + smooth_dr)`,
    /// MONAI's formula. Default: `false`.
    #[config(default = false)]
    pub jaccard: bool,
    /// The soft-label (semimetric) form of Wang & Blaschko, "Dice Semimetric Losses: Optimizing
    /// the Dice Score with Soft Labels", MICCAI 2023, as MONAI 1.6's `soft_label`: the
    /// intersection becomes `I = Σ (|p| + |t| − |p − t|) / 2` (`Σ min(p, t)` for `p, t ≥ 0`),
    /// `P = Σ |p|`, `T = Σ |t|`, so that `loss(t, t) = 0` (up to smoothing) for any target
    /// `t ∈ [0, 1]`, where the plain form rewards a prediction of 1 at a target of 0.5. For soft
    /// targets (label smoothing, averaged raters, a teacher's probabilities). It changes nothing
    /// with `squared_pred` (whose `I` is `Σ p·t` either way) and nothing on hard targets with
    /// `p ∈ [0, 1]`, but for the gradient where `p = t` exactly (see the type's docs).
    /// Default: `false`.
    #[config(default = false)]
    pub soft_label: bool,
    /// Sum the statistics over the batch before the ratio (one Dice per class for the whole
    /// batch, as nnU-Net's "batch Dice"). Under data parallelism the replicas' batches are
    /// summed too when the loss is given their group ([`DiceLoss::with_replicas`]).
    /// Default: `false`.
    #[config(default = false)]
    pub batch: bool,
    /// One weight per kept class (after dropping the background), multiplied into that class's
    /// loss before the reduction. The mean is a plain mean over all entries, **not** divided by
    /// `Σ weight` (MONAI's rule). As in MONAI, a weight is not applied when only one class is
    /// kept. Default: `None`.
    pub weight: Option<Vec<f32>>,
    /// Label value whose pixels are left out of every class's sums, in the prediction and in the
    /// target (MONAI 1.6's `ignore_index`). Needs a class-index target. Default: `None`.
    pub ignore_index: Option<usize>,
    /// `−ln(dice)` instead of `1 − dice` (the log-Dice of segmentation_models_pytorch).
    /// Default: `false`.
    #[config(default = false)]
    pub log_loss: bool,
    /// Reduction of the `[batch, class]` losses in `forward`. Default: [`DiceReduction::Mean`].
    #[config(default = "DiceReduction::Mean")]
    pub reduction: DiceReduction,
    /// Check the data of every call: `input` finite, dense targets in `[0, 1]` (so finite),
    /// class indices in range.
    /// Where a kernel computes the statistics (burn-ndarray, burn-flex, burn-wgpu) it makes
    /// the checks on the data it reads anyway, at almost no cost ([`crate::kernels`]). On a
    /// device backend the verdict is read back without making the call wait for the device: a
    /// failure is reported at the first call of a thread at once, later ones at a later call
    /// ([`crate::checks`]). Default: `true`.
    #[config(default = true)]
    pub check_inputs: bool,
}

impl DiceLossConfig {
    /// Initializes a [`DiceLoss`] on `device`.
    ///
    /// # Panics
    /// On a negative or non-finite smoothing term or weight, or an empty `weight` (the message
    /// of [`DiceLossConfig::validate`]'s error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> DiceLoss<B> {
        or_panic(self.try_init(device))
    }

    /// As [`init`](Self::init), with an error naming the field and its value instead of a panic
    /// (for configs read from files).
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<DiceLoss<B>, ConfigError> {
        self.validate()?;
        Ok(DiceLoss {
            activation: self.activation,
            include_background: self.include_background,
            smooth_nr: self.smooth_nr,
            smooth_dr: self.smooth_dr,
            squared_pred: self.squared_pred,
            jaccard: self.jaccard,
            soft_label: self.soft_label,
            batch: self.batch,
            weight: self
                .weight
                .as_ref()
                .map(|w| Tensor::<B, 1>::from_floats(w.as_slice(), device)),
            ignore_index: self.ignore_index,
            log_loss: self.log_loss,
            reduction: self.reduction,
            check_inputs: self.check_inputs,
            replicas: None,
        })
    }

    /// Checks every field: smoothing terms finite and `>= 0`, `weight` non-empty with finite
    /// weights `>= 0` (its length is checked against the classes at each call).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_smoothing(NAME, "smooth_nr", self.smooth_nr)?;
        check_smoothing(NAME, "smooth_dr", self.smooth_dr)?;
        if let Some(weight) = &self.weight {
            check_weights(NAME, "weight", weight)?;
        }
        Ok(())
    }
}

/// The soft Dice loss of Milletari et al., "V-Net: Fully Convolutional Neural Networks for
/// Volumetric Medical Image Segmentation", 3DV 2016, with MONAI 1.5's options and defaults.
///
/// Created with [`DiceLossConfig`].
///
/// # Formula
/// After the [activation](Activation), for every sample `b` and kept class `c`, with sums over the
/// spatial positions (and over the batch when `batch = true`):
///
/// ```text
/// I = Σ p·t,   P = Σ p  (Σ p² with squared_pred),   T = Σ t  (Σ t² with squared_pred)
/// soft_label: I = Σ (|p| + |t| − |p − t|) / 2,   P = Σ |p|,   T = Σ |t|   (not with squared_pred)
/// dice   = (2·I + smooth_nr) / (P + T + smooth_dr)
/// jaccard: (2·I + smooth_nr) / (2·(P + T − I) + smooth_dr)        (MONAI's soft-IoU form)
/// loss[b, c] = w[c] · (1 − dice)        or  w[c] · (−ln dice)  with log_loss
/// forward    = mean or sum of loss[b, c] over all entries
/// ```
///
/// The steps run in MONAI's order: activation, then one-hot of class-index targets, then
/// dropping the background channel, then the ratio and the reduction. Pixels whose label is
/// `ignore_index` are zeroed in `p` and `t` for every class before the sums.
///
/// # Soft labels
/// With a soft target the plain intersection `Σ p·t` is not a similarity: at a pixel with
/// `t = 0.5` the loss is smallest for `p = 1`, and `loss(t, t) > 0` (MONAI issue #8094).
/// `soft_label` takes the L1 form of Wang & Blaschko (MICCAI 2023), MONAI 1.6's
/// `compute_tp_fp_fn(…, ord = 1, soft_label = True)`: `I = (‖p‖₁ + ‖t‖₁ − ‖p − t‖₁) / 2`,
/// summed pixel by pixel, with `P = ‖p‖₁` and `T = ‖t‖₁`. For `p, t ∈ [0, 1]` that is
/// `I = Σ min(p, t)`, so `dice(t, t) = 1` and the loss is 0 up to smoothing. With `squared_pred`
/// MONAI takes the squared L2 norms, whose `I` is `Σ p·t` again: there the option changes
/// nothing. On hard targets it changes no value either; the gradient differs only where
/// `p = t` exactly, the kink of `|p − t|`: there we take PyTorch's subgradient, `sgn 0 = 0`,
/// so `∂I/∂p = 1/2` where the hard formula has `t = 1`.
///
/// # Smoothing and empty masks
/// Smoothing enters once in the numerator (`smooth_nr`) and once in the denominator
/// (`smooth_dr`) of each per-(sample, class) ratio, not per pixel. A class absent from the
/// ground truth (`T = 0`) scores `1 − smooth_nr / (P + smooth_dr)`: about 1 when the prediction
/// has mass there, 0 when it is empty too (with the equal default smoothing terms); always
/// finite while `smooth_dr > 0`. With `smooth_nr = smooth_dr = 0` an absent class scores exactly
/// 1 if `P > 0`, and NaN (0/0) if the prediction is exactly 0 there too (possible only without
/// an activation); `log_loss` then gives +∞ for a class with `I = 0` and `smooth_nr = 0`.
/// These are MONAI's numbers.
///
/// # Memory
/// Where a kernel computes the statistics ([`crate::kernels`]: burn-ndarray, burn-flex,
/// burn-wgpu) a forward and backward pass needs one buffer of the input's size besides the
/// `[batch, class]` sums: the gradient. On the generic burn-ops path the activation's output is
/// kept for the backward pass, and class-index targets are compared with each class index
/// inside the sums (a `[batch, class, *spatial]` one-hot mask, which a fusing backend does not
/// materialize).
#[derive(Module, Debug)]
pub struct DiceLoss<B: Backend> {
    /// Activation applied to `input` first.
    pub activation: Activation,
    /// Keep class 0.
    pub include_background: bool,
    /// Added to the numerator.
    pub smooth_nr: f64,
    /// Added to the denominator.
    pub smooth_dr: f64,
    /// `Σp² + Σt²` denominator.
    pub squared_pred: bool,
    /// Soft Jaccard instead of Dice.
    pub jaccard: bool,
    /// The soft-label (semimetric) intersection.
    pub soft_label: bool,
    /// Sum over the batch before the ratio.
    pub batch: bool,
    /// Class weights, one per kept class.
    pub weight: Option<Tensor<B, 1>>,
    /// Label value left out of the loss.
    pub ignore_index: Option<usize>,
    /// `−ln(dice)` instead of `1 − dice`.
    pub log_loss: bool,
    /// Reduction used by `forward`.
    pub reduction: DiceReduction,
    /// Per-call data checks.
    pub check_inputs: bool,
    /// The data-parallel replicas whose batch statistics are summed before the ratio (with
    /// `batch`; see [`crate::replicas`]). `None` from the config; set it with
    /// [`with_replicas`](Self::with_replicas).
    #[module(skip)]
    pub replicas: Option<ReplicaGroup>,
}

impl<B: Backend> DiceLoss<B> {
    /// This loss, its `batch` statistics summed across the replicas of `group` before the
    /// ratio, so that every replica computes the global batch Dice of all their batches,
    /// with the exact gradient (see [`crate::replicas`]). Changes nothing without `batch`.
    pub fn with_replicas(mut self, group: ReplicaGroup) -> Self {
        self.replicas = Some(group);
        self
    }

    /// Computes the reduced loss.
    ///
    /// # Shapes
    /// - input: `[batch, class, *spatial]` with 1, 2 or 3 spatial dims (rank `D` = 3, 4, 5):
    ///   logits or probabilities, as the [activation](Activation) expects.
    /// - target: a [`DiceTarget`]: `Tensor<B, D>` of the input's shape (one-hot or
    ///   probabilities), or `Tensor<B, D, Int>` of shape `[batch, 1, *spatial]` (class indices).
    /// - output: `[1]`.
    ///
    /// # Panics
    /// On a wrong rank or shape, a class index outside `0..class` (that is not `ignore_index`),
    /// NaN/infinite data or a dense target value outside `[0, 1]` (with `check_inputs`), softmax
    /// on one channel, or a `weight` whose length is not the number of kept classes.
    pub fn forward<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
    ) -> Tensor<B, 1> {
        self.reduction
            .reduce(self.forward_no_reduction(input, target))
    }

    /// Computes the unreduced loss, one value per sample and kept class.
    ///
    /// # Shapes
    /// - input, target: as in [`forward`](Self::forward).
    /// - output: `[batch, class']` (`[1, class']` when `batch = true`), where `class'` is
    ///   `class − 1` when the background is dropped.
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

    /// The reduced loss over the pixels where `mask` is 1 (MONAI's `MaskedDiceLoss`).
    ///
    /// The activation is applied to the whole input first, then the prediction and the target
    /// are multiplied by the mask, so pixels outside it count neither in `p` nor in `t` (the
    /// order of MONAI ≥ 1.5.1; MONAI 1.5.0 masked the logits before the activation, which lets
    /// masked pixels contribute `sigmoid(0) = 0.5`). Combines with `ignore_index`.
    ///
    /// With class-index targets MONAI multiplies the *labels* by the mask before its one-hot
    /// conversion, so its masked pixels still count as background in the target; here they are
    /// left out of every class, as for dense targets (the two agree on dense targets and
    /// whenever the background is dropped).
    ///
    /// # Shapes
    /// - input, target: as in [`forward`](Self::forward).
    /// - mask: `[batch, 1, *spatial]` of 0/1 values; size-1 batch or spatial dims broadcast.
    /// - output: `[1]`.
    ///
    /// # Panics
    /// As [`forward`](Self::forward), and on a mask of another shape or (with `check_inputs`)
    /// values other than 0 and 1.
    pub fn forward_masked<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
        mask: Tensor<B, D>,
    ) -> Tensor<B, 1> {
        self.reduction
            .reduce(self.forward_masked_no_reduction(input, target, mask))
    }

    /// The unreduced loss over the pixels where `mask` is 1: `[batch, class']`, see
    /// [`forward_masked`](Self::forward_masked) and
    /// [`forward_no_reduction`](Self::forward_no_reduction).
    pub fn forward_masked_no_reduction<const D: usize>(
        &self,
        input: Tensor<B, D>,
        target: impl Into<DiceTarget<B, D>>,
        mask: Tensor<B, D>,
    ) -> Tensor<B, 2> {
        let dims = input.dims();
        let dtype = input.dtype();
        let mut flat_mask = None;
        let prepared = prepare_with(
            NAME,
            input,
            target.into(),
            self.ignore_index,
            self.check_inputs,
            true,
            |checks| flat_mask = Some(prepare_mask(NAME, &dims, mask, checks)),
        );
        let mask = flat_mask.expect("the mask was prepared");
        let loss = self.loss_prepared(Prepared {
            target: prepared.target.masked(mask),
            ..prepared
        });
        in_dtype(loss, dtype)
    }

    /// The per-(sample, class) loss of checked, flattened inputs.
    pub(crate) fn loss_prepared(&self, prepared: Prepared<B>) -> Tensor<B, 2> {
        self.loss_prepared_with(prepared, &Extra::None).0
    }

    /// [`DiceLoss::loss_prepared`], with the sums of an `extra` per-pixel term (computed in
    /// the statistics' pass where a kernel can: see [`ClassStats::of_prepared_with`]).
    pub(crate) fn loss_prepared_with(
        &self,
        prepared: Prepared<B>,
        extra: &Extra<B>,
    ) -> (Tensor<B, 2>, ExtraSums<B>) {
        let channels = prepared.channels();
        let (stats, extra) = ClassStats::of_prepared_with(
            NAME,
            prepared,
            self.activation,
            Terms::new(self.squared_pred, self.soft_label),
            Pooling::new(self.batch, self.replicas.as_ref()),
            self.include_background,
            extra,
        );
        let loss = self.ratio_loss(stats);
        let loss = apply_class_weight(
            loss,
            self.weight.as_ref(),
            channels,
            self.include_background,
            NAME,
        );
        (loss, extra)
    }

    fn ratio_loss(&self, stats: ClassStats<B>) -> Tensor<B, 2> {
        let ClassStats {
            intersection,
            pred,
            target,
        } = stats;
        let numerator = intersection
            .clone()
            .mul_scalar(2.0)
            .add_scalar(self.smooth_nr);
        let denominator = if self.jaccard {
            (pred + target - intersection).mul_scalar(2.0)
        } else {
            pred + target
        }
        .add_scalar(self.smooth_dr);
        if self.log_loss {
            ln(denominator) - ln(numerator)
        } else {
            one_minus_ratio(numerator, denominator)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{autodiff, device, TestBackend};
    use burn::tensor::{Int, TensorData, Tolerance};

    type B = TestBackend;

    fn logits() -> Tensor<B, 4> {
        Tensor::from_floats(
            [
                [
                    [[2.0, -1.0], [0.5, 0.0]],
                    [[0.0, 1.5], [0.2, -2.0]],
                    [[-1.0, 0.3], [1.0, 2.5]],
                ],
                [
                    [[0.1, 0.2], [0.3, 0.4]],
                    [[1.0, -1.0], [2.0, -2.0]],
                    [[0.0, 0.0], [0.0, 3.0]],
                ],
            ],
            &device(),
        )
    }

    fn labels() -> Tensor<B, 4, Int> {
        Tensor::from_ints([[[[0, 1], [0, 2]]], [[[1, 1], [2, 2]]]], &device())
    }

    /// The same loss written out per pixel with plain `f32` loops.
    fn by_hand(include_background: bool) -> Vec<f32> {
        let x = logits().into_data().into_vec::<f32>().unwrap();
        let y = labels()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap();
        let mut out = Vec::new();
        for b in 0..2 {
            for c in (if include_background { 0 } else { 1 })..3 {
                let (mut i, mut p, mut t) = (0.0f32, 0.0f32, 0.0f32);
                for px in 0..4 {
                    let z: f32 = (0..3).map(|k| x[b * 12 + k * 4 + px].exp()).sum();
                    let prob = x[b * 12 + c * 4 + px].exp() / z;
                    let tgt = if y[b * 4 + px] == c as i64 { 1.0 } else { 0.0 };
                    i += prob * tgt;
                    p += prob;
                    t += tgt;
                }
                out.push(1.0 - (2.0 * i + 1e-5) / (p + t + 1e-5));
            }
        }
        out
    }

    #[test]
    fn matches_a_hand_written_loop() {
        for include_background in [true, false] {
            let loss = DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_include_background(include_background)
                .init::<B>(&device());
            let per_class = loss.forward_no_reduction(logits(), labels());
            let expected = by_hand(include_background);
            let kept = expected.len() / 2;
            assert_eq!(per_class.dims(), [2, kept]);
            per_class.into_data().assert_approx_eq::<f32>(
                &TensorData::new(expected.clone(), [2, kept]),
                Tolerance::default(),
            );
            let mean = loss.forward(logits(), labels()).into_scalar();
            let expected_mean = expected.iter().sum::<f32>() / expected.len() as f32;
            assert!(
                (mean - expected_mean).abs() < 1e-6,
                "{mean} vs {expected_mean}"
            );
        }
    }

    #[test]
    fn dense_one_hot_equals_class_indices() {
        let onehot: Tensor<B, 4> = labels()
            .one_hot::<5>(3)
            .squeeze_dim::<4>(1)
            .permute([0, 3, 1, 2])
            .float();
        let loss = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_squared_pred(true)
            .init::<B>(&device());
        let a = loss.forward_no_reduction(logits(), labels());
        let b = loss.forward_no_reduction(logits(), onehot);
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::default());
    }

    #[test]
    fn weight_multiplies_each_class_and_mean_is_not_normalized() {
        let device = Default::default();
        let plain = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .init::<B>(&device)
            .forward_no_reduction(logits(), labels());
        let weighted = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_weight(Some(vec![0.0, 1.0, 2.0]))
            .init::<B>(&device);
        let w = Tensor::<B, 2>::from_floats([[0.0, 1.0, 2.0]], &device);
        let expected = (plain * w).mean().into_scalar();
        let got = weighted.forward(logits(), labels()).into_scalar();
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn config_round_trips_through_json() {
        let config = DiceLossConfig::new()
            .with_activation(Activation::Sigmoid)
            .with_weight(Some(vec![1.0, 2.0]))
            .with_ignore_index(Some(255))
            .with_reduction(DiceReduction::Sum)
            .with_jaccard(true);
        let json = serde_json::to_string(&config).unwrap();
        let back: DiceLossConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.activation, Activation::Sigmoid);
        assert_eq!(back.weight, Some(vec![1.0, 2.0]));
        assert_eq!(back.ignore_index, Some(255));
        assert_eq!(back.reduction, DiceReduction::Sum);
        assert!(back.jaccard && back.include_background && !back.batch);
        assert_eq!(back.smooth_nr, 1e-5);
    }

    #[test]
    fn defaults_are_monai_defaults() {
        let c = DiceLossConfig::new();
        assert_eq!(c.activation, Activation::None);
        assert!(c.include_background && !c.squared_pred && !c.jaccard && !c.batch && !c.log_loss);
        assert_eq!((c.smooth_nr, c.smooth_dr), (1e-5, 1e-5));
        assert_eq!(c.weight, None);
        assert_eq!(c.ignore_index, None);
        assert_eq!(c.reduction, DiceReduction::Mean);
    }

    #[test]
    #[should_panic(expected = "DiceLossConfig: `smooth_nr` must be finite and >= 0, got -1")]
    fn negative_smooth_nr() {
        DiceLossConfig::new()
            .with_smooth_nr(-1.0)
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(expected = "DiceLossConfig: `smooth_dr` must be finite and >= 0, got NaN")]
    fn nan_smooth_dr() {
        DiceLossConfig::new()
            .with_smooth_dr(f64::NAN)
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(expected = "DiceLossConfig: `weight[1]` must be finite and >= 0, got -0.5")]
    fn negative_weight() {
        DiceLossConfig::new()
            .with_weight(Some(vec![1.0, -0.5]))
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(expected = "DiceLossConfig: `weight[0]` must be finite and >= 0, got inf")]
    fn infinite_weight() {
        DiceLossConfig::new()
            .with_weight(Some(vec![f32::INFINITY]))
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(expected = "got an empty list")]
    fn empty_weight() {
        DiceLossConfig::new()
            .with_weight(Some(vec![]))
            .init::<B>(&device());
    }

    #[test]
    #[should_panic(
        expected = "DiceLoss: `weight` has 3 entries but 2 class(es) are kept (input has 3 channel(s), include_background = false)"
    )]
    fn weight_length_must_match_kept_classes() {
        DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_include_background(false)
            .with_weight(Some(vec![1.0, 1.0, 1.0]))
            .init::<B>(&device())
            .forward(logits(), labels());
    }

    #[test]
    #[should_panic(expected = "DiceLoss: `input` holds NaN or infinite values")]
    fn nan_input() {
        let x = logits().slice_fill([0..1, 0..1, 0..1, 0..1], f32::NAN);
        DiceLossConfig::new()
            .init::<B>(&device())
            .forward(x, labels());
    }

    #[test]
    #[should_panic(expected = "DiceLoss: `input` must have shape [batch, class, *spatial]")]
    fn rank_two_input() {
        let x = Tensor::<B, 2>::zeros([2, 3], &device());
        let t = Tensor::<B, 2>::zeros([2, 3], &device());
        DiceLossConfig::new().init::<B>(&device()).forward(x, t);
    }

    #[test]
    #[should_panic(
        expected = "DiceLoss: `activation` = Softmax needs `input` with at least 2 channels"
    )]
    fn softmax_single_channel() {
        let x = Tensor::<B, 3>::zeros([2, 1, 4], &device());
        let t = Tensor::<B, 3, Int>::zeros([2, 1, 4], &device());
        DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .init::<B>(&device())
            .forward(x, t);
    }

    #[test]
    fn single_channel_ignores_include_background_false() {
        let device = Default::default();
        let x = Tensor::<B, 3>::from_floats([[[1.0, -1.0, 0.5, 2.0]]], &device);
        let t = Tensor::<B, 3, Int>::from_ints([[[1, 0, 0, 1]]], &device);
        let config = DiceLossConfig::new().with_activation(Activation::Sigmoid);
        let with_bg = config
            .init::<B>(&device)
            .forward(x.clone(), t.clone())
            .into_scalar();
        let without = config
            .clone()
            .with_include_background(false)
            .init::<B>(&device)
            .forward(x, t)
            .into_scalar();
        assert_eq!(with_bg, without);
    }

    #[test]
    fn unchecked_mode_skips_the_data_checks() {
        let device = Default::default();
        let x = Tensor::<B, 3>::from_floats([[[f32::NAN, 1.0]]], &device);
        let t = Tensor::<B, 3>::from_floats([[[1.0, 0.0]]], &device);
        let loss = DiceLossConfig::new()
            .with_check_inputs(false)
            .init::<B>(&device)
            .forward(x, t)
            .into_scalar();
        assert!(loss.is_nan());
    }

    /// `[1, 1, 2, 3]` probabilities or soft labels.
    fn map(values: [f32; 6]) -> Tensor<B, 4> {
        Tensor::<B, 1>::from_floats(values, &device()).reshape([1, 1, 2, 3])
    }

    const SOFT: [f32; 6] = [0.5, 0.1, 0.9, 0.3, 0.0, 0.65];

    #[test]
    fn soft_label_scores_zero_at_a_soft_target() {
        let soft = DiceLossConfig::new()
            .with_soft_label(true)
            .init::<B>(&device());
        let plain = DiceLossConfig::new().init::<B>(&device());
        for jaccard in [false, true] {
            let loss = soft.clone();
            let loss = DiceLoss { jaccard, ..loss };
            let at_target = loss.forward(map(SOFT), map(SOFT)).into_scalar();
            assert!(
                at_target.abs() < 1e-5,
                "jaccard {jaccard}: loss(t, t) = {at_target}"
            );
        }
        // The plain form: 1 − 2·Σt²/(2·Σt) = 1 − 1.5825/2.45.
        let plain_at_target = plain.forward(map(SOFT), map(SOFT)).into_scalar();
        assert!(
            (plain_at_target - (1.0 - 1.5825 / 2.45)).abs() < 1e-5,
            "{plain_at_target}"
        );
    }

    /// MONAI issue #8094: at a target of 0.5 the plain loss is smallest for a prediction of 1;
    /// the soft-label loss is smallest at 0.5.
    #[test]
    fn soft_label_is_smallest_at_the_target() {
        let target = map([0.5; 6]);
        for (soft_label, best) in [(false, 1.0f32), (true, 0.5)] {
            let loss = DiceLossConfig::new()
                .with_soft_label(soft_label)
                .init::<B>(&device());
            let at = |p: f32| loss.forward(map([p; 6]), target.clone()).into_scalar();
            let argmin = (0..=20)
                .map(|k| k as f32 / 20.0)
                .min_by(|a, b| at(*a).total_cmp(&at(*b)))
                .unwrap();
            assert_eq!(argmin, best, "soft_label {soft_label}");
        }
    }

    #[test]
    fn soft_label_changes_nothing_on_hard_targets_or_with_squared_pred() {
        let device = Default::default();
        let onehot: Tensor<B, 4> = labels()
            .one_hot::<5>(3)
            .squeeze_dim::<4>(1)
            .permute([0, 3, 1, 2])
            .float();
        let soft_target = onehot.clone().mul_scalar(0.6).add_scalar(0.1);
        for (target, squared_pred) in [
            (DiceTarget::from(labels()), false),
            (DiceTarget::from(onehot), false),
            (DiceTarget::from(soft_target), true),
        ] {
            let config = DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_squared_pred(squared_pred);
            let plain = config.init::<B>(&device);
            let soft = config.with_soft_label(true).init::<B>(&device);
            let a = plain.forward_no_reduction(logits(), target.clone());
            let b = soft.forward_no_reduction(logits(), target);
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::default());
        }
    }

    /// Where `p = t` exactly, `|p − t|` has a kink: the subgradient is PyTorch's (`sgn 0 = 0`),
    /// so `∂I/∂p = 1/2` there, on the kernels and the generic path alike.
    #[test]
    fn soft_label_subgradient_at_the_kink() {
        type A = burn_autodiff::Autodiff<B>;
        let device = autodiff();
        let loss = DiceLossConfig::new()
            .with_soft_label(true)
            .with_smooth_nr(0.0)
            .with_smooth_dr(0.0)
            .init::<A>(&device);
        // Pixel 0 at the kink (p = t = 0.5); pixel 1 with p < t.
        let p = [0.5f32, 0.2];
        let t = [0.5f32, 0.7];
        // I = 0.5 + 0.2, P = 0.7, T = 1.2; ∂L/∂p = −(2/D·∂I/∂p − N/D²), N = 2I, D = P + T.
        let (n, d) = (1.4f64, 1.9f64);
        let expected = [-(2.0 / d * 0.5 - n / (d * d)), -(2.0 / d - n / (d * d))];
        for generic in [false, true] {
            let run = || {
                let x = Tensor::<A, 3>::from_floats([[p]], &device).require_grad();
                let target = Tensor::<A, 3>::from_floats([[t]], &device);
                let grads = loss.forward(x.clone(), target).backward();
                x.grad(&grads)
                    .unwrap()
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap()
            };
            let got = if generic {
                crate::kernels::generic_only(run)
            } else {
                run()
            };
            for (g, e) in got.iter().zip(expected) {
                assert!(
                    (*g as f64 - e).abs() < 1e-6,
                    "generic {generic}: {got:?} vs {expected:?}"
                );
            }
        }
    }
}
