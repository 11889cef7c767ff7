#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod checks;
pub mod dice;
pub mod dice_ce;
pub mod dice_focal;
pub mod generalized_dice;
pub mod kernels;
pub mod metric;
mod numerics;
pub mod processes;
pub mod reduction;
pub mod replicas;
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
    use burn::tensor::Device;

    /// The device of the unit tests: burn-flex.
    pub fn device() -> Device {
        Device::flex()
    }

    /// [`device`] with autodiff.
    pub fn autodiff() -> Device {
        Device::flex().autodiff()
    }
}
