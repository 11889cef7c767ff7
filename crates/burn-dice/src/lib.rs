#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod checks;
pub mod dice;
pub mod dice_ce;
pub mod dice_focal;
#[cfg(any(feature = "ndarray", feature = "flex", feature = "cube-kernels"))]
mod downcast;
pub mod generalized_dice;
pub mod kernels;
pub mod metric;
mod numerics;
pub mod processes;
pub mod reduction;
pub mod replicas;
mod reshape;
mod stats;
mod target;
pub mod tversky;

pub use activation::Activation;
pub use checks::{wait_for_checks, ConfigError};
pub use dice::{DiceLoss, DiceLossConfig};
pub use dice_ce::{DiceCELoss, DiceCELossConfig};
pub use dice_focal::{DiceFocalLoss, DiceFocalLossConfig};
pub use generalized_dice::{GeneralizedDiceLoss, GeneralizedDiceLossConfig, WeightType};
pub use kernels::KernelPath;
pub use reduction::DiceReduction;
pub use replicas::{GradientCombine, ProcessSum, ReplicaGroup};
pub use target::DiceTarget;
pub use tversky::{TverskyLoss, TverskyLossConfig};

#[cfg(test)]
pub(crate) mod tests {
    /// The backend of the unit tests.
    pub type TestBackend = burn_ndarray::NdArray<f32>;
}
