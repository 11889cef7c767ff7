//! The Dice coefficient as a validation metric.
//!
//! [`compute_dice`] is the functional core (MONAI's `compute_dice`): hard Dice per sample and
//! class, on the device. With the `train` feature (on by default), [`DiceMetric`] plugs it into
//! burn-train's `Learner`, fed by [`SegmentationOutput`].

mod compute;
#[cfg(feature = "train")]
mod train;

pub use compute::{compute_dice, DiceCounts, EmptyPolicy, Prediction, Segmentation};
#[cfg(feature = "train")]
pub use train::{DiceMetric, DiceMetricInput, SegmentationOutput};
