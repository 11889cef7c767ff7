//! The hard Dice coefficient per sample and class, computed on the device.

use burn::config::Config;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Int, Tensor};

use crate::checks::check_input_shape;
use crate::target::flat_dims;

/// How raw network outputs become a hard segmentation. One place for this logic: the metric and
/// the example's inference use it.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Prediction {
    /// `argmax` over the class dimension: mutually exclusive classes (softmax models).
    Argmax,
    /// `sigmoid(logit) > threshold` per channel: single-channel (binary) and multi-label models.
    Threshold(f64),
}

impl Prediction {
    /// `Argmax` for two or more channels, `Threshold(0.5)` for one.
    pub fn for_channels(channels: usize) -> Self {
        if channels > 1 {
            Prediction::Argmax
        } else {
            Prediction::Threshold(0.5)
        }
    }

    /// Turns logits `[batch, class, *spatial]` into a hard [`Segmentation`]: class indices
    /// `[batch, 1, *spatial]` for `Argmax`, a per-channel mask for `Threshold`.
    pub fn apply<const D: usize>(self, logits: Tensor<D>) -> Segmentation<D> {
        match self {
            Prediction::Argmax => Segmentation::Indices(logits.argmax(1)),
            Prediction::Threshold(t) => Segmentation::Mask(sigmoid(logits).greater_elem(t)),
        }
    }
}

/// A hard segmentation: class indices or a per-channel boolean mask.
#[derive(Debug, Clone)]
pub enum Segmentation<const D: usize> {
    /// Class indices `[batch, 1, *spatial]` (for one channel: the 0/1 mask).
    Indices(Tensor<D, Int>),
    /// One-hot or multi-label mask `[batch, class, *spatial]`.
    Mask(Tensor<D, Bool>),
}

impl<const D: usize> From<Tensor<D, Int>> for Segmentation<D> {
    fn from(t: Tensor<D, Int>) -> Self {
        Segmentation::Indices(t)
    }
}

impl<const D: usize> From<Tensor<D, Bool>> for Segmentation<D> {
    fn from(t: Tensor<D, Bool>) -> Self {
        Segmentation::Mask(t)
    }
}

impl<const D: usize> From<Tensor<D>> for Segmentation<D> {
    /// A dense float target: values above 0.5 are the foreground of their channel.
    fn from(t: Tensor<D>) -> Self {
        Segmentation::Mask(t.greater_elem(0.5))
    }
}

impl<const D: usize> Segmentation<D> {
    fn dims(&self) -> [usize; D] {
        match self {
            Segmentation::Indices(t) => t.dims(),
            Segmentation::Mask(t) => t.dims(),
        }
    }
}

/// What a class absent from the ground truth of a sample scores.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum EmptyPolicy {
    /// NaN, skipped by the means (MONAI's `ignore_empty=True`, nnU-Net's choice). Default.
    NaN,
    /// 1 if the prediction is empty too, else 0 (MONAI's `ignore_empty=False`).
    One,
    /// 0.
    Zero,
}

impl From<EmptyPolicy> for burn_dice_core::metric::Empty {
    fn from(policy: EmptyPolicy) -> Self {
        match policy {
            EmptyPolicy::NaN => Self::NaN,
            EmptyPolicy::One => Self::One,
            EmptyPolicy::Zero => Self::Zero,
        }
    }
}

/// Per-(sample, class) counts of a hard segmentation against its ground truth: `|A ∩ B|`,
/// `|A|` (prediction) and `|B|` (ground truth), each `[batch, class]`, on the device.
#[derive(Debug, Clone)]
pub struct DiceCounts {
    /// `|A ∩ B|`.
    pub intersection: Tensor<2>,
    /// `|A|`, the predicted pixels.
    pub pred: Tensor<2>,
    /// `|B|`, the ground-truth pixels.
    pub target: Tensor<2>,
}

impl DiceCounts {
    /// Counts `pred` against `target` for `classes` classes. Pixels whose target label is
    /// `ignore_index` (class-index targets) count for neither.
    ///
    /// Class-index maps are compared with each class index inside the counting sums (no
    /// scatter-add, which a GPU serializes).
    ///
    /// # Panics
    /// If the shapes do not match `[batch, classes or 1, *spatial]`.
    pub fn new<const D: usize>(
        pred: impl Into<Segmentation<D>>,
        target: impl Into<Segmentation<D>>,
        classes: usize,
        ignore_index: Option<usize>,
    ) -> Self {
        let (pred, target) = (pred.into(), target.into());
        let (p_dims, t_dims) = (pred.dims(), target.dims());
        check_input_shape("compute_dice", &p_dims);
        let [b, _, s] = flat_dims(&p_dims);
        for (name, dims) in [("pred", p_dims), ("target", t_dims)] {
            let ok =
                dims[0] == b && dims[2..] == p_dims[2..] && (dims[1] == classes || dims[1] == 1);
            assert!(
                ok,
                "compute_dice: `{name}` must have shape [batch, {classes} or 1, *spatial] with the \
                 batch and spatial dims of `pred` {p_dims:?}, got {dims:?}"
            );
        }
        let flat_idx = |t: Tensor<D, Int>| t.reshape([b, 1, s]);
        let flat_mask = |t: Tensor<D, Bool>| t.reshape([b, classes, s]);
        // Ignored pixels: a mask [b, 1, s] and the labels with the ignored value replaced.
        let (target, valid) = match (target, ignore_index) {
            (Segmentation::Indices(t), Some(ii)) => {
                let t = flat_idx(t);
                let ignored = t.clone().equal_elem(ii as i64);
                (
                    FlatSeg::Indices(t.mask_fill(ignored.clone(), 0)),
                    Some(ignored.bool_not()),
                )
            }
            (Segmentation::Indices(t), None) => (FlatSeg::Indices(flat_idx(t)), None),
            (Segmentation::Mask(t), _) => (FlatSeg::Mask(flat_mask(t)), None),
        };
        let pred = match pred {
            Segmentation::Indices(t) => FlatSeg::Indices(flat_idx(t)),
            Segmentation::Mask(t) => FlatSeg::Mask(flat_mask(t)),
        };
        // Each side as a per-class mask (class indices compared with each class index), the
        // counts as sums of their products: an element-wise map and a reduction, which no
        // backend has to serialize (a scatter-add of every pixel into a few bins would be).
        let p = pred.into_mask(classes);
        let t = target.into_mask(classes);
        let (p, t) = match valid {
            Some(v) => (p.bool_and(v.clone()), t.bool_and(v)),
            None => (p, t),
        };
        let count = |m: Tensor<3, Bool>| m.float().sum_dim(2).reshape([b, classes]);
        Self {
            intersection: count(p.clone().bool_and(t.clone())),
            pred: count(p),
            target: count(t),
        }
    }

    /// The Dice coefficient `2|A ∩ B| / (|A| + |B|)`, `[batch, class']`, with class 0 dropped
    /// unless `include_background` (kept for a single channel) and `empty` for the classes
    /// absent from a sample's ground truth.
    pub fn dice(self, include_background: bool, empty: EmptyPolicy) -> Tensor<2> {
        let classes = self.pred.dims()[1];
        let keep = |t: Tensor<2>| {
            if include_background || classes == 1 {
                t
            } else {
                t.narrow(1, 1, classes - 1)
            }
        };
        let (i, p, t) = (keep(self.intersection), keep(self.pred), keep(self.target));
        let absent = t.clone().equal_elem(0.0);
        let denominator = p.clone() + t;
        let safe = denominator.clone().mask_fill(absent.clone(), 1.0);
        let dice = i.mul_scalar(2.0) / safe;
        match empty {
            EmptyPolicy::NaN => dice.mask_fill(absent, f32::NAN),
            EmptyPolicy::Zero => dice.mask_fill(absent, 0.0),
            EmptyPolicy::One => {
                let both_empty = absent.clone().bool_and(p.equal_elem(0.0));
                dice.mask_fill(absent, 0.0).mask_fill(both_empty, 1.0)
            }
        }
    }
}

enum FlatSeg {
    Indices(Tensor<3, Int>),
    Mask(Tensor<3, Bool>),
}

impl FlatSeg {
    /// `[batch, classes, pixels]` boolean mask. For one class, indices are the 0/1 mask.
    fn into_mask(self, classes: usize) -> Tensor<3, Bool> {
        match self {
            FlatSeg::Mask(m) => m,
            FlatSeg::Indices(t) if classes == 1 => t.equal_elem(1),
            FlatSeg::Indices(t) => {
                let ids = Tensor::<1, Int>::arange(0..classes as i64, &t.device())
                    .reshape([1, classes, 1]);
                t.equal(ids)
            }
        }
    }
}

/// The hard Dice coefficient per sample and class, `[batch, class']`: `2|A∩B| / (|A| + |B|)`
/// (Dice 1945), as MONAI 1.5's `compute_dice`.
///
/// `pred` and `target` are class indices `[batch, 1, *spatial]` or masks
/// `[batch, classes, *spatial]` (bool, or float thresholded at 0.5); use
/// [`Prediction::apply`] to turn logits into `pred`. `include_background = false` drops class 0
/// (ignored for one class). `empty` decides what a class absent from a sample's ground truth
/// scores.
///
/// # Panics
/// On shapes that do not agree.
pub fn compute_dice<const D: usize>(
    pred: impl Into<Segmentation<D>>,
    target: impl Into<Segmentation<D>>,
    classes: usize,
    include_background: bool,
    empty: EmptyPolicy,
) -> Tensor<2> {
    DiceCounts::new(pred, target, classes, None).dice(include_background, empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::device;

    fn vals(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn indices_and_masks_agree() {
        let device = device();
        let p = Tensor::<3, Int>::from_ints([[[0, 1, 1, 2, 0]], [[2, 2, 1, 0, 0]]], &device);
        let t = Tensor::<3, Int>::from_ints([[[0, 1, 2, 2, 0]], [[2, 2, 2, 0, 0]]], &device);
        let a = vals(compute_dice(
            p.clone(),
            t.clone(),
            3,
            true,
            EmptyPolicy::NaN,
        ));
        let pm = FlatSeg::Indices(p).into_mask(3);
        let tm = FlatSeg::Indices(t).into_mask(3);
        let b = vals(compute_dice(pm, tm, 3, true, EmptyPolicy::NaN));
        // sample 0: class 0: 2/(2+2)=1, class 1: 2·1/(2+1), class 2: 2·1/(1+2)
        // sample 1: class 0: 1, class 1: absent → NaN, class 2: 2·2/(2+3)
        let expected = [1.0, 2.0 / 3.0, 2.0 / 3.0, 1.0, f32::NAN, 0.8];
        for (k, e) in expected.iter().enumerate() {
            for got in [a[k], b[k]] {
                assert!(
                    (got.is_nan() && e.is_nan()) || (got - e).abs() < 1e-6,
                    "{k}: {got} vs {e}"
                );
            }
        }
    }

    #[test]
    fn empty_policies() {
        let device = device();
        // class 1 absent from the target in both samples; predicted in sample 0 only.
        let p = Tensor::<3, Int>::from_ints([[[1, 0]], [[0, 0]]], &device);
        let t = Tensor::<3, Int>::from_ints([[[0, 0]], [[0, 0]]], &device);
        let d = |e| vals(compute_dice(p.clone(), t.clone(), 2, false, e));
        assert!(d(EmptyPolicy::NaN).iter().all(|v| v.is_nan()));
        assert_eq!(d(EmptyPolicy::One), vec![0.0, 1.0]);
        assert_eq!(d(EmptyPolicy::Zero), vec![0.0, 0.0]);
    }

    #[test]
    fn threshold_prediction_and_ignore_index() {
        let device = device();
        let logits = Tensor::<3>::from_floats([[[2.0, -1.0, 0.5, 3.0]]], &device);
        let pred = Prediction::for_channels(1).apply(logits);
        let t = Tensor::<3, Int>::from_ints([[[1, 1, 9, 1]]], &device);
        let counts = DiceCounts::new(pred, t, 1, Some(9));
        assert_eq!(vals(counts.intersection.clone()), vec![2.0]);
        assert_eq!(vals(counts.pred.clone()), vec![2.0]);
        assert_eq!(vals(counts.target.clone()), vec![3.0]);
        assert_eq!(vals(counts.dice(true, EmptyPolicy::NaN)), vec![0.8]);
    }

    #[test]
    #[should_panic(expected = "compute_dice: `target` must have shape [batch, 3 or 1, *spatial]")]
    fn shape_mismatch() {
        let device = device();
        let p = Tensor::<3, Int>::zeros([2, 1, 5], &device);
        let t = Tensor::<3, Int>::zeros([2, 1, 4], &device);
        compute_dice(p, t, 3, true, EmptyPolicy::NaN);
    }
}
