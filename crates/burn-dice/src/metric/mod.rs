//! The Dice coefficient as a validation metric.
//!
//! [`compute_dice`] is the functional core (MONAI's `compute_dice`): hard Dice per sample and
//! class, on the device. With the `train` feature (on by default), [`DiceMetric`] plugs it into
//! burn-train's `Learner`, fed by [`SegmentationOutput`]: the per-sample mean (MONAI's) or,
//! with [`DiceMetric::global`], the global Dice of the epoch (nnU-Net's pseudo Dice).
//! [`DiceTotals`] is that sum for a custom loop, and sums it across replicas.

mod compute;
#[cfg(feature = "train")]
mod train;

pub use burn_dice_core::metric::DiceTotals;
pub use compute::{compute_dice, DiceCounts, EmptyPolicy, Prediction, Segmentation};
#[cfg(feature = "train")]
pub use train::{DiceMetric, DiceMetricInput, SegmentationOutput, SegmentationOutputSync};
