//! The Dice coefficient as a validation metric.
//!
//! [`compute_dice`] is the functional core (MONAI's `compute_dice`): hard Dice per sample and
//! class, on the device.

mod compute;

pub use compute::{compute_dice, DiceCounts, EmptyPolicy, Prediction, Segmentation};
